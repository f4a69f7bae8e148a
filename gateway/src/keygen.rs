//! `tollgate keygen`: a new Ed25519 issuer key pair, in every form its two users need.
//!
//! The signer (a wallet, a payment provider) keeps the private half, as PKCS#8 PEM or a JWK; the
//! gateway needs only the public half, either inline (`[[issuers]] keys = [...]`, the JWK) or as a
//! file (`[[issuers]] pem_file`, the SPKI PEM). The paste-ready `[[issuers]]` block is written
//! from the same key, so what is printed is what `tollgate check` accepts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tollgate_middleware::issuer::GeneratedKey;

/// File names written by `--out-dir`, from the key id.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The private key, PKCS#8 PEM (mode 0600).
    pub private_pem: PathBuf,
    /// The private JWK (mode 0600).
    pub private_jwk: PathBuf,
    /// The public key, SPKI PEM: what `pem_file` names.
    pub public_pem: PathBuf,
    /// The public JWK, as a JWKS (`{"keys": [...]}`) an issuer can serve at its `jwks_url`.
    pub public_jwks: PathBuf,
}

impl KeyFiles {
    /// `<dir>/<kid>.key.pem`, `<kid>.jwk.json`, `<kid>.pub.pem`, `<kid>.jwks.json`.
    pub fn in_dir(dir: &Path, kid: &str) -> Self {
        KeyFiles {
            private_pem: dir.join(format!("{kid}.key.pem")),
            private_jwk: dir.join(format!("{kid}.jwk.json")),
            public_pem: dir.join(format!("{kid}.pub.pem")),
            public_jwks: dir.join(format!("{kid}.jwks.json")),
        }
    }

    /// Write the four files; refuses to overwrite any that exists (a key is not replaced by
    /// accident).
    pub fn write(&self, key: &GeneratedKey) -> std::io::Result<()> {
        let jwks = serde_json::json!({ "keys": [key.public_jwk] });
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        for p in [
            &self.private_pem,
            &self.private_jwk,
            &self.public_pem,
            &self.public_jwks,
        ] {
            if p.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists; not overwritten", p.display()),
                ));
            }
        }
        if let Some(dir) = self.private_pem.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_file(&self.private_pem, &key.private_pem, true)?;
        write_file(&self.private_jwk, &(pretty(&key.private_jwk) + "\n"), true)?;
        write_file(&self.public_pem, &key.public_pem, false)?;
        write_file(&self.public_jwks, &(pretty(&jwks) + "\n"), false)
    }
}

fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?
        .write_all(text.as_bytes())
}

/// A TOML string literal (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The `[[issuers]]` block for this key: `keys = [ <the public JWK> ]` inline, or, when the public
/// PEM was written to a file, `pem_file` and `kid`.
pub fn issuer_block(issuer: &str, key: &GeneratedKey, pem_file: Option<&Path>) -> String {
    let mut out = String::from("[[issuers]]\n");
    let _ = writeln!(
        out,
        "id = {}  # the exact `iss` the signer writes in its receipts",
        toml_str(issuer)
    );
    match pem_file {
        Some(path) => {
            let _ = writeln!(
                out,
                "pem_file = {}  # relative to the config file's folder",
                toml_str(&path.display().to_string())
            );
            if let Some(kid) = key.public_jwk.get("kid").and_then(|k| k.as_str()) {
                let _ = writeln!(out, "kid = {}", toml_str(kid));
            }
        }
        None => {
            let members: Vec<String> = key
                .public_jwk
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k} = {}", toml_str(v))))
                .collect();
            let _ = writeln!(out, "keys = [{{ {} }}]", members.join(", "));
        }
    }
    out
}

/// What `tollgate keygen` prints: every form of the key, labelled, then the `[[issuers]]` block.
pub fn render(issuer: &str, key: &GeneratedKey, files: Option<&KeyFiles>) -> String {
    let compact = |v: &serde_json::Value| serde_json::to_string(v).unwrap_or_default();
    let kid = key
        .public_jwk
        .get("kid")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# A new Ed25519 issuer key, kid {kid:?}. The signer (wallet) keeps the PRIVATE key;\n\
         # the gateway needs only the PUBLIC key, inline (keys = [...]) or as a file (pem_file).\n"
    );
    match files {
        Some(f) => {
            let _ = writeln!(
                out,
                "# Written:\n#   {}  private key, PKCS#8 PEM (mode 0600; for the signer)\n\
                 #   {}  private JWK (mode 0600; for the signer)\n\
                 #   {}  public key, SPKI PEM (for [[issuers]] pem_file)\n\
                 #   {}  public JWKS (serve it at the issuer's jwks_url)\n",
                f.private_pem.display(),
                f.private_jwk.display(),
                f.public_pem.display(),
                f.public_jwks.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# Public key, SPKI PEM (save as a file for [[issuers]] pem_file):\n{}",
                key.public_pem
            );
            let _ = writeln!(
                out,
                "# Public JWK (for [[issuers]] keys = [...], or the issuer's JWKS):\n{}\n",
                compact(&key.public_jwk)
            );
            let _ = writeln!(
                out,
                "# PRIVATE key, PKCS#8 PEM (for the signer only; never in the gateway's config):\n{}",
                key.private_pem
            );
            let _ = writeln!(
                out,
                "# PRIVATE JWK (for the signer only):\n{}\n",
                compact(&key.private_jwk)
            );
        }
    }
    let _ = writeln!(out, "# Paste into tollgate.toml:");
    out.push_str(&issuer_block(
        issuer,
        key,
        files.map(|f| f.public_pem.as_path()),
    ));
    out
}

/// The machine-readable form (`--json`): every field of [`GeneratedKey`] plus the block.
pub fn render_json(issuer: &str, key: &GeneratedKey) -> String {
    let mut v = serde_json::to_value(key).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert(
            "issuer_toml".into(),
            serde_json::Value::String(issuer_block(issuer, key, None)),
        );
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_block_is_valid_config() {
        let (key, _) = tollgate_middleware::issuer::generate_ed25519("k \"1\"").unwrap();
        let block = issuer_block("https://wallet.example", &key, None);
        let cfg = format!("merchant = \"m\"\n{block}\n[[routes]]\nid = \"f\"\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\nprice = \"free\"\n");
        let parsed = crate::config::Config::from_str(&cfg).unwrap();
        let v = parsed.validate(Path::new(".")).unwrap();
        assert_eq!(v.issuers.len(), 1);
        assert_eq!(v.issuers[0].0, "https://wallet.example");
    }
}

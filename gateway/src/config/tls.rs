//! `[tls]` (the TLS listener), `[upstream_tls]` and `routes[].upstream_ca_file` (whom
//! `https://` upstreams must prove to be). Files are read and parsed here, at validation, so
//! `tollgate check` reports what `tollgate run` would refuse; errors name the field and the
//! path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, within, ConfigError};
use crate::tls::{read_file, ListenerTls, ListenerTlsError, Roots, TrustError, UpstreamTrust};

/// `[tls]`: serve the public listener over TLS (deployments without a load balancer or TLS
/// terminator in front). Read at start-up; a new certificate needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (relative to the config file's folder).
    pub cert_file: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Time allowed for a client's TLS handshake (seconds); a stalled one is disconnected.
    #[serde(default = "super::n64::<10>")]
    pub handshake_timeout_secs: u64,
}

/// `[upstream_tls]`: the trust store of every `https://` upstream without its own
/// `upstream_ca_file`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// `"webpki"` (default: the Mozilla roots compiled in), `"system"` (the OS store) or
    /// `"none"` (only `ca_file`).
    #[serde(default)]
    pub roots: Roots,
    /// Extra CA certificates (PEM) trusted beside the roots, e.g. a company CA.
    pub ca_file: Option<PathBuf>,
}

/// A path from the file, relative to the config file's folder unless absolute.
fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        base_dir.join(p)
    } else {
        p.to_owned()
    }
}

/// `[tls]`, read and checked.
pub(super) fn validate_listener_tls(
    tls: Option<&TlsConfig>,
    base_dir: &Path,
) -> Result<Option<ListenerTls>, ConfigError> {
    let Some(t) = tls else {
        return Ok(None);
    };
    within(
        "tls.handshake_timeout_secs",
        t.handshake_timeout_secs,
        1,
        300,
    )?;
    let cert_path = resolve(base_dir, &t.cert_file);
    let key_path = resolve(base_dir, &t.key_file);
    let chain = read_file(&cert_path).map_err(|m| invalid("tls.cert_file", m))?;
    let key = read_file(&key_path).map_err(|m| invalid("tls.key_file", m))?;
    let timeout = Duration::from_secs(t.handshake_timeout_secs);
    ListenerTls::new(&chain, &key, timeout)
        .map(Some)
        .map_err(|e| match e {
            ListenerTlsError::Cert(m) => {
                invalid("tls.cert_file", format!("{}: {m}", cert_path.display()))
            }
            ListenerTlsError::Key(m) => {
                invalid("tls.key_file", format!("{}: {m}", key_path.display()))
            }
        })
}

/// `[upstream_tls]`, read and checked.
pub(super) fn validate_upstream_tls(
    u: &UpstreamTlsConfig,
    base_dir: &Path,
) -> Result<Arc<UpstreamTrust>, ConfigError> {
    let ca = match &u.ca_file {
        Some(p) => {
            let path = resolve(base_dir, p);
            let pem = read_file(&path).map_err(|m| invalid("upstream_tls.ca_file", m))?;
            Some((path, pem))
        }
        None => None,
    };
    let pem = ca.as_ref().map(|(_, pem)| pem.as_slice());
    UpstreamTrust::new(u.roots, pem)
        .map(Arc::new)
        .map_err(|e| match (e, &ca) {
            (TrustError::CaFile(m), Some((path, _))) => {
                invalid("upstream_tls.ca_file", format!("{}: {m}", path.display()))
            }
            (e, _) => invalid("upstream_tls.roots", e),
        })
}

/// A route's own `upstream_ca_file`: its upstream must present a certificate from one of
/// these CAs (and only these: an internal service's private CA).
pub(super) fn validate_route_ca(
    field: String,
    ca_file: &Path,
    base_dir: &Path,
) -> Result<Arc<UpstreamTrust>, ConfigError> {
    let path = resolve(base_dir, ca_file);
    let pem = read_file(&path).map_err(|m| invalid(field.clone(), m))?;
    UpstreamTrust::new(Roots::None, Some(&pem))
        .map(Arc::new)
        .map_err(|m| invalid(field, format!("{}: {m}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::Config;
    use std::path::Path;

    const BASE: &str = r#"
merchant = "m"
[[routes]]
id = "free"
path = "/"
upstream = "UPSTREAM"
price = "free"
"#;

    /// The validation error of `BASE` with `upstream` and extra TOML, or "ok".
    fn err(upstream: &str, route_extra: &str, top: &str, dir: &Path) -> String {
        let text = format!(
            "{}{route_extra}\n{top}\n",
            BASE.replace("UPSTREAM", upstream)
        );
        match Config::from_str(&text).and_then(|c| c.validate(dir)) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn starts(e: &str, prefix: &str) {
        assert!(e.starts_with(prefix), "{e}");
    }

    #[track_caller]
    fn has(e: &str, part: &str) {
        assert!(e.contains(part), "{e}");
    }

    /// A CA and a leaf for `localhost` signed by it, written as PEM files into `dir`:
    /// `ca.pem`, `leaf.pem`, `leaf.key`, and a second, unrelated key `other.key`.
    fn write_certs(dir: &Path) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("leaf.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("leaf.key"), key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
        std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
    }

    #[test]
    fn https_upstreams_are_accepted_and_bad_hosts_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(err("https://api.example.com", "", "", d), "ok");
        assert_eq!(err("https://10.0.0.1:8443/v1", "", "", d), "ok");
        assert_eq!(err("https://[::1]:8443", "", "", d), "ok");
        let e = err("https://bad-.example", "", "", d);
        starts(&e, "routes[0].upstream: \"bad-.example\" is not a name");
        let e = err("ftp://x", "", "", d);
        has(&e, "must be http://host:port[/base] or https://");
    }

    #[test]
    fn ca_files_are_read_and_named_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_certs(d);
        let up = "https://localhost:8443";
        let top = "[upstream_tls]\nca_file = \"ca.pem\"";
        assert_eq!(err(up, "", top, d), "ok");
        assert_eq!(err(up, "upstream_ca_file = \"ca.pem\"", "", d), "ok");
        let e = err(up, "", "[upstream_tls]\nca_file = \"missing.pem\"", d);
        let missing = d.join("missing.pem");
        starts(
            &e,
            &format!("upstream_tls.ca_file: cannot read {}", missing.display()),
        );
        let e = err(up, "", "[upstream_tls]\nca_file = \"junk.pem\"", d);
        assert!(
            e.starts_with("upstream_tls.ca_file: ") && e.contains("junk.pem: no certificate"),
            "{e}"
        );
        let e = err(up, "upstream_ca_file = \"junk.pem\"", "", d);
        assert!(
            e.starts_with("routes[0].upstream_ca_file: ") && e.contains("junk.pem"),
            "{e}"
        );
        let e = err(
            "http://localhost:8080",
            "upstream_ca_file = \"ca.pem\"",
            "",
            d,
        );
        starts(
            &e,
            "routes[0].upstream_ca_file: set only on a route with an https://",
        );
        let e = err(up, "", "[upstream_tls]\nroots = \"none\"", d);
        starts(&e, "upstream_tls.roots: \"none\" trusts nothing");
        assert_eq!(
            err(
                up,
                "",
                "[upstream_tls]\nroots = \"none\"\nca_file = \"ca.pem\"",
                d
            ),
            "ok"
        );
        // The system store: found where the OS has a CA bundle, else an error naming the roots.
        let system = err(up, "", "[upstream_tls]\nroots = \"system\"", d);
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            assert_eq!(system, "ok");
        } else {
            starts(&system, "upstream_tls.roots: \"system\"");
        }
        let e = err(up, "", "[upstream_tls]\nroots = \"mozilla\"", d);
        starts(&e, "upstream_tls.roots: unknown variant `mozilla`");
    }

    #[test]
    fn the_listener_certificate_and_key_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_certs(d);
        let up = "http://127.0.0.1:9";
        let tls =
            |cert: &str, key: &str| format!("[tls]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"");
        assert_eq!(err(up, "", &tls("leaf.pem", "leaf.key"), d), "ok");
        let e = err(up, "", &tls("nope.pem", "leaf.key"), d);
        assert!(
            e.starts_with("tls.cert_file: cannot read ") && e.contains("nope.pem"),
            "{e}"
        );
        let e = err(up, "", &tls("junk.pem", "leaf.key"), d);
        assert!(
            e.starts_with("tls.cert_file: ") && e.contains("no certificate"),
            "{e}"
        );
        let e = err(up, "", &tls("leaf.pem", "junk.pem"), d);
        assert!(
            e.starts_with("tls.key_file: ") && e.contains("no private key"),
            "{e}"
        );
        let e = err(up, "", &tls("leaf.pem", "other.key"), d);
        assert!(
            e.starts_with("tls.key_file: ") && e.contains("cannot be used with the certificate"),
            "{e}"
        );
        let e = err(
            up,
            "",
            &format!(
                "{}\nhandshake_timeout_secs = 0",
                tls("leaf.pem", "leaf.key")
            ),
            d,
        );
        starts(&e, "tls.handshake_timeout_secs: must be 1 to 300");
        let e = err(
            up,
            "",
            &format!("{}\ncert_fil = \"x\"", tls("leaf.pem", "leaf.key")),
            d,
        );
        starts(&e, "tls.cert_fil: unknown field");
        let e = err(
            up,
            "",
            "[admin]\nlisten = \"127.0.0.1:8403\"\ntls = true",
            d,
        );
        starts(&e, "admin.tls: needs a [tls] table");
    }
}

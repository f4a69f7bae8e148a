//! `[[issuers]]`: whose receipts are trusted, and where their keys come from.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tollgate_middleware::jwk::Jwk;
use tollgate_middleware::IssuerKey;

use super::{invalid, within, ConfigError};

/// `[[issuers]]`: exactly one of `jwks_url`, `keys`, `pem_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub id: String,
    /// URL of the issuer's JWKS (fetched, cached, refetched on unknown `kid`).
    pub jwks_url: Option<String>,
    /// Inline public JWKs.
    pub keys: Option<Vec<toml::Value>>,
    /// A PEM (SPKI) public key file, relative to the config file.
    pub pem_file: Option<PathBuf>,
    /// The `kid` of the PEM key, if receipts name one.
    pub kid: Option<String>,
    /// URL of the issuer's mandate revocation list (`{"revoked": ["<mandate id>", ...]}`),
    /// polled every `mandate_revocations_poll_secs`.
    pub mandate_revocations_url: Option<String>,
    /// Poll interval of the revocation list (seconds, 1 to 3600).
    #[serde(default = "super::n64::<30>")]
    pub mandate_revocations_poll_secs: u64,
}

/// Where an issuer's keys come from, after validation.
#[derive(Debug, Clone)]
pub enum IssuerSource {
    /// Fetched from a JWKS URL.
    Jwks(String),
    /// Given in config.
    Static(Vec<IssuerKey>),
}

/// Every `[[issuers]]` entry: unique ids, exactly one key source each.
pub(super) fn validate_issuers(
    all: &[IssuerConfig],
    base_dir: &Path,
) -> Result<Vec<(String, IssuerSource)>, ConfigError> {
    let mut issuers = Vec::new();
    for (i, iss) in all.iter().enumerate() {
        let f = |k: &str| format!("issuers[{i}].{k}");
        if iss.id.is_empty() {
            return Err(invalid(f("id"), "must not be empty"));
        }
        if all[..i].iter().any(|o| o.id == iss.id) {
            return Err(invalid(f("id"), format!("duplicate issuer {:?}", iss.id)));
        }
        let n = usize::from(iss.jwks_url.is_some())
            + usize::from(iss.keys.is_some())
            + usize::from(iss.pem_file.is_some());
        if n != 1 {
            return Err(invalid(
                format!("issuers[{i}]"),
                "set exactly one of jwks_url, keys, pem_file",
            ));
        }
        let source = if let Some(url) = &iss.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(f("jwks_url"), "must be an http(s) URL"));
            }
            IssuerSource::Jwks(url.clone())
        } else if let Some(keys) = &iss.keys {
            if keys.is_empty() {
                return Err(invalid(f("keys"), "must list at least one key"));
            }
            let mut parsed = Vec::new();
            for (k, v) in keys.iter().enumerate() {
                let json = serde_json::to_value(v)
                    .map_err(|e| invalid(format!("issuers[{i}].keys[{k}]"), e.to_string()))?;
                let jwk: Jwk = serde_json::from_value(json).map_err(|e| {
                    invalid(format!("issuers[{i}].keys[{k}]"), format!("not a JWK: {e}"))
                })?;
                parsed.push(
                    IssuerKey::from_jwk(&jwk)
                        .map_err(|m| invalid(format!("issuers[{i}].keys[{k}]"), m))?,
                );
            }
            IssuerSource::Static(parsed)
        } else if let Some(pem) = &iss.pem_file {
            let path = base_dir.join(pem);
            let bytes = std::fs::read(&path).map_err(|e| {
                invalid(
                    f("pem_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let key = IssuerKey::from_pem(&bytes, iss.kid.clone())
                .map_err(|m| invalid(f("pem_file"), m))?;
            IssuerSource::Static(vec![key])
        } else {
            return Err(invalid(format!("issuers[{i}]"), "no key source"));
        };
        if let Some(url) = &iss.mandate_revocations_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    f("mandate_revocations_url"),
                    "must be an http(s) URL",
                ));
            }
        }
        within(
            f("mandate_revocations_poll_secs"),
            iss.mandate_revocations_poll_secs,
            1,
            3600,
        )?;
        issuers.push((iss.id.clone(), source));
    }
    Ok(issuers)
}

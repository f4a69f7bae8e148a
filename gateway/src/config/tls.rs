//! `[tls]` (the TLS listener), `[upstream_tls]` and `routes[].upstream_ca_file` (whom
//! `https://` upstreams must prove to be). Files are read and parsed here, at validation, so
//! `tollgate check` reports what `tollgate run` would refuse; errors name the field and the
//! path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};
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
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

fn default_handshake_timeout() -> u64 {
    10
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
    #[serde(default)]
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
    if t.handshake_timeout_secs == 0 || t.handshake_timeout_secs > 300 {
        return Err(invalid("tls.handshake_timeout_secs", "must be 1 to 300"));
    }
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

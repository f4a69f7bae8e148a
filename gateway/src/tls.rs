//! TLS, both ways, with rustls and its `ring` provider (the one the gateway's HTTP client
//! already uses, so there is one crypto stack):
//!
//! - **upstreams**: whom an `https://` upstream must prove to be. An [`UpstreamTrust`] is a set
//!   of trust anchors (the compiled-in Mozilla roots, the system store, and/or CA files) and
//!   the client configuration built from it; SNI and the name checked are the upstream's host,
//!   ALPN offers `h2` and `http/1.1` (see [`crate::proxy`]).
//! - **the listener**: a [`ListenerTls`] serves the public (and optionally the admin) listener
//!   over TLS, ALPN `h2` and `http/1.1`, each handshake bounded in time (see [`crate::server`]).
//!
//! Both are built while the configuration is validated, so `tollgate check` refuses the same
//! unreadable or invalid files as `tollgate run`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider of every TLS configuration here (explicit, so no process-wide default
/// has to be installed, and another provider compiled in by a dependency cannot change it).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the trust anchors of `https://` upstreams come from (`[upstream_tls] roots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Roots {
    /// The Mozilla root programme's CAs, compiled in (`webpki-roots`): the same everywhere,
    /// including minimal container images without a CA bundle.
    #[default]
    Webpki,
    /// The operating system's store (`/etc/ssl/certs` and friends), read at start-up.
    System,
    /// None: only the CAs of `ca_file`.
    None,
}

/// Whom `https://` upstreams must prove to be: trust anchors and the client configuration
/// built from them. Two trusts with the same anchors are equal (a reload that keeps them
/// keeps the upstream connection pools).
#[derive(Clone)]
pub struct UpstreamTrust {
    /// What the anchors came from.
    roots: Roots,
    /// The anchors beside the compiled-in roots (system store and CA files), for equality.
    anchors: Vec<CertificateDer<'static>>,
    /// The client configuration (no ALPN: the connector sets it).
    config: Arc<ClientConfig>,
}

impl PartialEq for UpstreamTrust {
    fn eq(&self, other: &Self) -> bool {
        self.roots == other.roots && self.anchors == other.anchors
    }
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("roots", &self.roots)
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl UpstreamTrust {
    /// Trust `roots` and the CAs in `ca_pem` (PEM text, `-----BEGIN CERTIFICATE-----`).
    pub fn new(roots: Roots, ca_pem: Option<&[u8]>) -> Result<Self, TrustError> {
        let mut store = RootCertStore::empty();
        let mut anchors = Vec::new();
        match roots {
            Roots::Webpki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = store.add_parsable_certificates(found.certs.clone());
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    return Err(TrustError::Roots(format!(
                        "\"system\": no usable CA certificate in the system store{why} \
                         (install the CA bundle, e.g. ca-certificates, or use \"webpki\")"
                    )));
                }
                anchors.extend(found.certs);
            }
            Roots::None => {}
        }
        if let Some(pem) = ca_pem {
            let certs = pem_certificates(pem).map_err(TrustError::CaFile)?;
            for (n, cert) in certs.iter().enumerate() {
                store.add(cert.clone()).map_err(|e| {
                    TrustError::CaFile(format!("certificate {} is not a usable CA: {e}", n + 1))
                })?;
            }
            anchors.extend(certs);
        }
        if store.is_empty() {
            return Err(TrustError::Roots(
                "\"none\" trusts nothing without a ca_file: set ca_file, or use \"webpki\" or \"system\"".into(),
            ));
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Roots(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(UpstreamTrust {
            roots,
            anchors,
            config: Arc::new(config),
        })
    }

    /// The client configuration (without ALPN).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}

/// Why a trust store cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The roots are unusable (an empty system store, `"none"` without a CA file).
    #[error("{0}")]
    Roots(String),
    /// The CA file is not PEM, holds no certificate, or one that is not a usable CA.
    #[error("{0}")]
    CaFile(String),
}

/// Every certificate of a PEM text; none is an error.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE----- blocks)".into());
    }
    Ok(certs)
}

/// The TLS side of a listener: certificate, key, ALPN (`h2`, `http/1.1`) and how long a
/// handshake may take.
#[derive(Clone)]
pub struct ListenerTls {
    /// The rustls server configuration.
    pub(crate) config: Arc<ServerConfig>,
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a listener certificate or key cannot be used: which of the two, and why.
#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    /// The certificate chain file is unusable.
    #[error("{0}")]
    Cert(String),
    /// The key file is unusable (or does not match the certificate).
    #[error("{0}")]
    Key(String),
}

impl ListenerTls {
    /// From PEM texts: the chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
    pub fn new(
        chain_pem: &[u8],
        key_pem: &[u8],
        handshake_timeout: Duration,
    ) -> Result<Self, ListenerTlsError> {
        let chain = pem_certificates(chain_pem).map_err(ListenerTlsError::Cert)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            ListenerTlsError::Key(format!(
                "no private key in it ({e}; expected a PKCS#8, PKCS#1 or SEC1 PEM block)"
            ))
        })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ListenerTlsError::Cert(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                ListenerTlsError::Key(format!(
                    "cannot be used with the certificate of cert_file: {e}"
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ListenerTls {
            config: Arc::new(config),
            handshake_timeout,
        })
    }

    /// The acceptor for one listener.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Read a file named by a config field: the error names the path.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

//! What the TLS tests stand on: a certificate authority made in the test (rcgen), TLS upstreams
//! (Python's `http.server` wrapped in `ssl` for HTTP/1.1; hyper over tokio-rustls for HTTP/2;
//! a tungstenite WebSocket echo, plain or TLS), clients that trust the test CA, and the
//! gateway's warnings captured so a test can read why an upstream was refused.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tollgate_e2e::python::PythonServer;

/// A test certificate authority and a `localhost` server certificate it signed, as PEM files
/// in a temporary folder.
pub(crate) struct TestPki {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub(crate) ca_pem: String,
}

impl TestPki {
    /// A new CA, and a leaf for `localhost` (DNS name only: not valid for `127.0.0.1`).
    pub(crate) fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Tollgate test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("localhost.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("localhost.key"), key.serialize_pem()).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            dir,
        }
    }

    /// `ca.pem`, `localhost.pem` or `localhost.key`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `path` as a TOML string.
    pub(crate) fn toml_path(&self, name: &str) -> String {
        format!("{:?}", self.path(name).display().to_string())
    }

    /// A `[tls]` table serving the `localhost` certificate.
    pub(crate) fn tls_table(&self) -> String {
        format!(
            "[tls]\ncert_file = {}\nkey_file = {}\nhandshake_timeout_secs = 1",
            self.toml_path("localhost.pem"),
            self.toml_path("localhost.key")
        )
    }

    /// A rustls server configuration with the `localhost` certificate, offering `alpn`.
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let chain = CertificateDer::pem_file_iter(self.path("localhost.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path("localhost.key")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A rustls client trusting only the test CA, offering `alpn`.
    pub(crate) fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// A reqwest client trusting the test CA, reaching `localhost` at `addr`.
    pub(crate) fn client(&self, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        let b = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .resolve("localhost", addr);
        let b = if http1_only { b.http1_only() } else { b };
        b.build().unwrap()
    }
}

/// The Python upstream: `http.server` behind `ssl` (ALPN `http/1.1`), answering every GET with
/// what it saw as JSON: path, HTTP version, `Host`, `X-Forwarded-Proto`, and the SNI name.
const PYTHON_UPSTREAM: &str = r#"
import http.server, json, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.set_alpn_protocols(["http/1.1"])
def sni(sock, name, _ctx):
    sock.sni = name
ctx.sni_callback = sni
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({
            "path": self.path,
            "version": self.request_version,
            "host": self.headers.get("Host"),
            "proto": self.headers.get("X-Forwarded-Proto"),
            "sni": getattr(self.connection, "sni", None),
            "alpn": self.connection.selected_alpn_protocol(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Start the Python TLS upstream with the `localhost` certificate of `pki` (killed on drop).
pub(crate) fn python_upstream(pki: &TestPki) -> PythonServer {
    PythonServer::start([
        OsStr::new("-c"),
        OsStr::new(PYTHON_UPSTREAM),
        pki.path("localhost.pem").as_os_str(),
        pki.path("localhost.key").as_os_str(),
    ])
}

/// An in-process TLS upstream on hyper (ALPN `h2` and `http/1.1`): answers with the HTTP
/// version it served, the `Host` and `X-Forwarded-Proto` it saw, and counts requests by version.
pub(crate) struct H2Upstream {
    pub(crate) port: u16,
    /// The HTTP version of every request served, in order.
    pub(crate) versions: Arc<Mutex<Vec<http::Version>>>,
}

pub(crate) async fn h2_upstream(pki: &TestPki) -> H2Upstream {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let acceptor = TlsAcceptor::from(pki.server_config(&[b"h2", b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let seen = versions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    seen.lock().unwrap().push(req.version());
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let body = json!({
                        "version": format!("{:?}", req.version()),
                        "authority": req.uri().authority().map(|a| a.to_string()),
                        "host": header("host"),
                        "proto": header("x-forwarded-proto"),
                        "path": req.uri().path(),
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body.to_string())),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    H2Upstream { port, versions }
}

/// A WebSocket echo upstream (text and binary messages come back as sent), over TLS with
/// the `localhost` certificate (ALPN `h2` and `http/1.1`) when `tls` is given.
pub(crate) async fn ws_echo(tls: Option<&TestPki>) -> SocketAddr {
    let acceptor = tls.map(|p| TlsAcceptor::from(p.server_config(&[b"h2", b"http/1.1"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(tcp).await {
                            echo(tls).await;
                        }
                    }
                    None => echo(tcp).await,
                }
            });
        }
    });
    addr
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            return;
        }
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// Open a TLS connection to `localhost` at `addr`, trusting the test CA, offering `alpn`.
pub(crate) async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    pki.connector(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// The gateway's log lines (warnings and above), captured for every test of this file: the
/// first call installs the subscriber, before any gateway starts.
pub(crate) fn logs() -> String {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn")
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

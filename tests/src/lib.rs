//! Test support for Tollgate's end-to-end suites: real `redis-server` processes, real HTTP
//! upstreams and gateways on `127.0.0.1:0`, real signatures.
//!
//! ```ignore
//! let redis = RedisServer::start();
//! let upstream = upstream().await;
//! let wallet = TestIssuer::ed25519("wallet");
//! let gw = gateway().issuer(&wallet).redis(&redis).route(paid("compute", "/v1/echo", &upstream, "0.01")).start().await;
//! ```

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate::config::Config;
use tollgate::Gateway;
use tollgate_middleware::issuer::ReceiptSigner;
use tollgate_middleware::jsonwebtoken::jwk::Jwk;
use tollgate_middleware::jsonwebtoken::{Algorithm, EncodingKey};
use tollgate_middleware::Paywall;

pub mod engine;
pub mod facilitator;
pub mod fixtures;
pub mod postgres;
pub mod process;
pub mod python;
mod redis_servers;
pub mod tools;
pub mod webhook_receiver;

pub use redis_servers::{RedisCluster, RedisServer};

/// A running upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
}

impl TestUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Start the demo upstream on `127.0.0.1:0`.
pub async fn upstream() -> TestUpstream {
    serve_router(example_upstream::app()).await
}

/// Serve any router on `127.0.0.1:0`.
pub async fn serve_router(router: axum::Router) -> TestUpstream {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    TestUpstream { addr }
}

/// A closed port: nothing listens there.
pub fn dead_upstream() -> TestUpstream {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    TestUpstream { addr }
}

/// An issuer with a key generated in the test.
#[derive(Clone)]
pub struct TestIssuer {
    pub signer: ReceiptSigner,
    pub id: String,
}

impl TestIssuer {
    /// Ed25519.
    pub fn ed25519(id: &str) -> Self {
        TestIssuer {
            signer: ReceiptSigner::generate_ed25519(id, "k1").unwrap(),
            id: id.into(),
        }
    }

    /// Ed25519 with a chosen kid.
    pub fn ed25519_kid(id: &str, kid: &str) -> Self {
        TestIssuer {
            signer: ReceiptSigner::generate_ed25519(id, kid).unwrap(),
            id: id.into(),
        }
    }

    /// ES256 (P-256).
    pub fn es256(id: &str) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut jwk: Value = serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
        jwk["kid"] = json!("p1");
        let jwk: Jwk = serde_json::from_value(jwk).unwrap();
        TestIssuer {
            signer: ReceiptSigner::new(id, Some("p1".into()), Algorithm::ES256, key, jwk),
            id: id.into(),
        }
    }

    /// The public JWK as a TOML inline table.
    pub fn jwk_toml(&self) -> String {
        let v = serde_json::to_value(self.signer.public_jwk()).unwrap();
        let fields: Vec<String> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k} = {}", v))
            .collect();
        format!("{{ {} }}", fields.join(", "))
    }

    /// Default valid claims for `merchant`, paying `amount` USD.
    pub fn claims(&self, merchant: &str, payer: &str, amount: &str) -> Value {
        let now = now_secs();
        json!({
            "iss": self.id, "sub": payer, "aud": merchant, "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now, "exp": now + 300, "amount": amount, "currency": "USD", "kind": "payment",
        })
    }

    /// Sign any JSON claims.
    pub fn sign(&self, claims: &Value) -> String {
        self.signer.sign_json(claims).unwrap()
    }

    /// A valid receipt.
    pub fn receipt(&self, merchant: &str, payer: &str, amount: &str) -> String {
        self.sign(&self.claims(merchant, payer, amount))
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// How a route is written into the test config.
pub struct RouteSpec {
    pub toml: String,
}

/// A route priced at `amount` USD.
pub fn paid(id: &str, path: &str, upstream: &TestUpstream, amount: &str) -> RouteSpec {
    RouteSpec {
        toml: format!(
            "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\nupstream = \"{}\"\nprice = {{ amount = \"{amount}\", currency = \"USD\" }}\n",
            upstream.url()
        ),
    }
}

/// A free route.
pub fn free(id: &str, path: &str, upstream: &TestUpstream) -> RouteSpec {
    RouteSpec {
        toml: format!(
            "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\nupstream = \"{}\"\nprice = \"free\"\n",
            upstream.url()
        ),
    }
}

impl RouteSpec {
    /// Add a field to the route's (metered) price table, e.g. `on_missing = "zero"`.
    pub fn with_price_option(mut self, field: &str) -> Self {
        if let Some(pos) = self.toml.rfind("] }") {
            self.toml.insert_str(pos + 1, &format!(", {field}"));
        }
        self
    }

    /// Append raw TOML lines to the route (e.g. `timeout_ms = 200`).
    pub fn with(mut self, line: &str) -> Self {
        self.toml.push_str(line);
        self.toml.push('\n');
        self
    }
}

/// A metered route in USD: `meters` are `(unit, usage source, price per unit)`.
pub fn metered(
    id: &str,
    path: &str,
    upstream: &TestUpstream,
    reserve: &str,
    meters: &[(&str, &str, &str)],
) -> RouteSpec {
    let meters: Vec<String> = meters
        .iter()
        .map(|(u, s, p)| format!("{{ unit = \"{u}\", usage = \"{s}\", price = \"{p}\" }}"))
        .collect();
    RouteSpec {
        toml: format!(
            "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\nupstream = \"{}\"\nprice = {{ currency = \"USD\", reserve = \"{reserve}\", meters = [{}] }}\n",
            upstream.url(),
            meters.join(", ")
        ),
    }
}

/// Builds a gateway for a test.
pub struct GatewayBuilder {
    usd: String,
    admin_token: Option<String>,
    merchant: String,
    issuers: Vec<String>,
    store: String,
    routes: Vec<String>,
    extra: String,
    secret: Vec<u8>,
}

/// Log to the test's captured output (shown for failing tests).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Start describing a gateway (merchant `m`, memory store).
pub fn gateway() -> GatewayBuilder {
    init_logs();
    GatewayBuilder {
        usd: "[currencies.USD]\nscale = 6\ntopup_suggested = \"5\"\n".into(),
        admin_token: None,
        merchant: "m".into(),
        issuers: Vec::new(),
        store: "[store]\nkind = \"memory\"\n".into(),
        routes: Vec::new(),
        extra: String::new(),
        secret: b"test-secret-test-secret-test-secret!".to_vec(),
    }
}

impl GatewayBuilder {
    pub fn merchant(mut self, m: &str) -> Self {
        self.merchant = m.into();
        self
    }
    /// Trust an issuer with inline keys.
    pub fn issuer(mut self, i: &TestIssuer) -> Self {
        self.issuers.push(format!(
            "[[issuers]]\nid = \"{}\"\nkeys = [{}]\n",
            i.id,
            i.jwk_toml()
        ));
        self
    }
    /// Trust an issuer by JWKS URL.
    pub fn issuer_jwks(mut self, id: &str, url: &str) -> Self {
        self.issuers.push(format!(
            "[[issuers]]\nid = \"{id}\"\njwks_url = \"{url}\"\n"
        ));
        self
    }
    /// Trust an issuer described by raw TOML (`[[issuers]]` table).
    pub fn issuer_toml(mut self, toml: &str) -> Self {
        self.issuers.push(toml.to_owned());
        self
    }
    /// Use a Redis Cluster as the store.
    pub fn redis_cluster(mut self, c: &RedisCluster) -> Self {
        self.store = format!(
            "[store]\nkind = \"redis\"\ncluster = true\nurl = \"{}\"\ntimeout_ms = 5000\n",
            c.url()
        );
        self
    }
    pub fn redis(self, r: &RedisServer) -> Self {
        self.redis_timeout(r, 2000)
    }
    /// Redis with a chosen per-call timeout (ms).
    pub fn redis_timeout(mut self, r: &RedisServer, ms: u64) -> Self {
        self.store = format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout_ms = {ms}\n",
            r.url()
        );
        self
    }
    pub fn route(mut self, r: RouteSpec) -> Self {
        self.routes.push(r.toml);
        self
    }
    /// Top-level TOML lines (before any table).
    pub fn top(mut self, line: &str) -> Self {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }
    /// Serve the admin API too, with this token.
    pub fn admin(mut self, token: &str) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    pub fn secret(mut self, s: &[u8]) -> Self {
        self.secret = s.to_vec();
        self
    }

    pub fn toml(&self) -> String {
        format!(
            "merchant = \"{}\"\n{}\n{}\n{}\n{}\n{}",
            self.merchant,
            self.extra,
            self.usd,
            self.issuers.join("\n"),
            self.store,
            self.routes.join("\n")
        )
    }

    pub async fn start(self) -> TestGateway {
        let toml = self.toml();
        let cfg = Config::from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let v = cfg
            .validate(std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        // The config is also written to a file, so tests can reload it.
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let gw = Gateway::build(v, &self.secret)
            .await
            .unwrap()
            .with_config_path(&config_path);
        let paywall = gw.paywall().clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let admin_addr = match &self.admin_token {
            Some(token) => {
                let al = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let a = al.local_addr().unwrap();
                tokio::spawn(
                    gw.clone()
                        .serve_admin(al, token.clone(), std::future::pending()),
                );
                Some(a)
            }
            None => None,
        };
        let task = tokio::spawn(gw.serve(l, async move {
            let _ = rx.await;
        }));
        TestGateway {
            config_path,
            _config_dir: dir,
            addr,
            admin_addr,
            paywall,
            stop: Some(tx),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }
}

/// A running gateway.
pub struct TestGateway {
    /// The config file it was started from (rewrite it and reload).
    pub config_path: PathBuf,
    _config_dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub paywall: Paywall,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub http: reqwest::Client,
}

impl TestGateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin_addr.expect("admin not started")
        )
    }

    /// `GET path` on the public listener, as JSON (the catalog, `/openapi.json`...).
    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} ({status}): {e}: {text}"))
    }

    /// `GET path` on the admin listener with the admin `token`, as JSON.
    pub async fn admin_json(&self, path: &str, token: &str) -> Value {
        let text = self.admin_text(path, token).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// `GET path` on the admin listener with the admin `token`, as text (NDJSON, CSV, metrics).
    pub async fn admin_text(&self, path: &str, token: &str) -> String {
        self.http
            .get(self.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Top up `amount` USD for `payer` with a fresh top-up receipt; returns the access token.
    pub async fn topup(&self, issuer: &TestIssuer, payer: &str, amount: &str) -> String {
        let mut c = issuer.claims("m", payer, amount);
        c["kind"] = "topup".into();
        let res = self
            .http
            .post(self.url("/tollgate/v1/topup"))
            .header("authorization", format!("Payment {}", issuer.sign(&c)))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "top-up refused");
        let body: Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn with_token(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("authorization", format!("Bearer {token}"))
    }

    /// `GET path` with an access token.
    pub async fn token_get(&self, path: &str, token: &str) -> reqwest::Response {
        self.with_token(reqwest::Method::GET, path, token)
            .send()
            .await
            .unwrap()
    }

    /// The prepaid balance view (`GET /tollgate/v1/balance`).
    pub async fn balance(&self, token: &str) -> Value {
        self.with_token(reqwest::Method::GET, "/tollgate/v1/balance", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until no hold is in flight for the token's payer (deferred settlements done).
    pub async fn settled(&self, token: &str) -> Value {
        for _ in 0..200 {
            let b = self.balance(token).await;
            if b["holds"] == 0 {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("holds still in flight");
    }

    /// GET with `Authorization: Payment <receipt>`.
    pub async fn pay_get(&self, path: &str, receipt: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("authorization", format!("Payment {receipt}"))
            .send()
            .await
            .unwrap()
    }

    /// Stop accepting, wait for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Decode a base64 JSON header.
pub fn b64_json(v: &str) -> Value {
    serde_json::from_slice(&STANDARD.decode(v).expect("base64")).expect("json")
}

/// Send every request at once; each outcome is `"ok"` for a 200, else the problem's `code`.
pub async fn outcomes(requests: Vec<reqwest::RequestBuilder>) -> Vec<String> {
    futures_util::future::join_all(requests.into_iter().map(|r| async move {
        let res = r.send().await.unwrap();
        if res.status() == 200 {
            "ok".to_owned()
        } else {
            code_of(res).await.1
        }
    }))
    .await
}

/// How many outcomes are `"ok"`; any refusal other than `allowed` fails the test.
pub fn count_ok(outcomes: &[String], allowed: &str) -> usize {
    for o in outcomes {
        assert!(o == "ok" || o == allowed, "unexpected refusal {o}");
    }
    outcomes.iter().filter(|o| *o == "ok").count()
}

/// The problem body's `code`.
pub async fn code_of(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert!(
        ct.starts_with("application/problem+json"),
        "status {status}: content-type {ct}, body {body}"
    );
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

/// `PAYMENT-SIGNATURE` for a receipt (x402 v2 payload).
pub fn payment_signature(receipt: &str) -> String {
    STANDARD.encode(
        json!({"x402Version": 2, "accepted": {"scheme": "tollgate-receipt", "network": "tollgate:receipts"}, "payload": {"receipt": receipt}})
            .to_string(),
    )
}

/// Send raw bytes on a fresh connection and read the whole answer (the connection is closed
/// by `Connection: close` in the request). For requests a normal client would refuse to send.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Record one line of the guarantees report (`target/guarantees/<name>.json`), printed as the
/// "Guarantees" tables of docs/guarantees.md by `tests/guarantees.sh`.
pub fn report(name: &str, fields: Value) {
    let dir = target_dir().join("guarantees");
    let _ = std::fs::create_dir_all(&dir);
    let mut v = fields;
    v["name"] = name.into();
    let _ = std::fs::write(dir.join(format!("{name}.json")), v.to_string());
    println!("GUARANTEE {v}");
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// The `tollgate` binary, built if needed (tests of real processes: SIGTERM, restarts).
pub fn tollgate_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "tollgate", "--bin", "tollgate"])
        .status()
        .expect("cargo build -p tollgate");
    assert!(status.success(), "building the tollgate binary failed");
    target_dir().join("debug").join("tollgate")
}

/// The decoded `PAYMENT-RESPONSE` of a response (panics if absent).
pub fn payment_response(res: &reqwest::Response) -> Value {
    b64_json(res.headers()["payment-response"].to_str().unwrap())
}

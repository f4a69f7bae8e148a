//! TLS both ways and WebSocket pass-through, end to end: `https://` upstreams (a Python
//! `http.server` behind `ssl` for HTTP/1.1, hyper over rustls for HTTP/2) with certificates
//! made here by a test CA, the gateway's own TLS listener, and WebSocket echoes through free
//! routes (refused, uncharged, on a paid one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tollgate_e2e::*;

#[path = "tls/support.rs"]
mod support;
use support::*;

/// A route to `upstream` at `price` (TOML: `"free"` or an inline table), with `extra` lines.
fn route(id: &str, path: &str, upstream: &str, price: &str, extra: &str) -> RouteSpec {
    RouteSpec {
        toml: format!(
            "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\nupstream = \"{upstream}\"\nprice = {price}\n{extra}\n"
        ),
    }
}

const FREE: &str = "\"free\"";
const PAID: &str = "{ amount = \"0.01\", currency = \"USD\" }";

/// `upstream_ca_file` naming the test CA.
fn own_ca(pki: &TestPki) -> String {
    format!("upstream_ca_file = {}", pki.toml_path("ca.pem"))
}

async fn json(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_http1_with_sni_and_its_own_ca() {
    logs();
    let pki = TestPki::new();
    let py = python_upstream(&pki);
    let upstream = format!("https://localhost:{}", py.port);
    let gw = gateway()
        .route(route("py", "/py", &upstream, FREE, &own_ca(&pki)))
        .start()
        .await;
    let seen = json(gw.http.get(gw.url("/py/hello?x=1")).send().await.unwrap()).await;
    assert_eq!(seen["path"], "/py/hello?x=1");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["alpn"], "http/1.1");
    assert_eq!(seen["sni"], "localhost");
    assert_eq!(seen["host"], format!("localhost:{}", py.port));
    assert_eq!(seen["proto"], "http");
}

#[tokio::test]
async fn an_https_upstream_that_offers_h2_is_reached_over_http2() {
    logs();
    let pki = TestPki::new();
    let up = h2_upstream(&pki).await;
    // The CA trusted for every https upstream, beside the compiled-in roots.
    let gw = gateway()
        .top(&format!(
            "[upstream_tls]\nca_file = {}",
            pki.toml_path("ca.pem")
        ))
        .route(route(
            "h2",
            "/h2",
            &format!("https://localhost:{}", up.port),
            FREE,
            "",
        ))
        .start()
        .await;
    for _ in 0..3 {
        let seen = json(gw.http.get(gw.url("/h2/x")).send().await.unwrap()).await;
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["authority"], format!("localhost:{}", up.port));
        assert_eq!(seen["host"], format!("localhost:{}", up.port));
        assert_eq!(seen["path"], "/h2/x");
    }
    assert_eq!(*up.versions.lock().unwrap(), vec![http::Version::HTTP_2; 3]);
}

/// A free route `id` to `upstream` (with `extra` lines) answers 502 `upstream_unavailable`,
/// and the warning that names the route says `reason`.
async fn refused(id: &str, upstream: &str, extra: &str, reason: &str) {
    let gw = gateway()
        .route(route(id, "/r", upstream, FREE, extra))
        .start()
        .await;
    let res = gw.http.get(gw.url("/r")).send().await.unwrap();
    assert_eq!(code_of(res).await, (502, "upstream_unavailable".into()));
    let line = logs()
        .lines()
        .find(|l| l.contains(&format!("route={id} ")))
        .map(str::to_owned)
        .expect("a warning names the route");
    assert!(line.contains(reason), "{line}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_and_the_log_says_why() {
    logs();
    let pki = TestPki::new();
    let py = python_upstream(&pki);
    // The default roots (webpki) do not know the test CA.
    let upstream = format!("https://localhost:{}", py.port);
    let reason = "invalid peer certificate: UnknownIssuer";
    refused("untrusted-ca", &upstream, "", reason).await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    logs();
    let pki = TestPki::new();
    let py = python_upstream(&pki);
    // Trusted CA, but the certificate names `localhost`, not `127.0.0.1`.
    let upstream = format!("https://127.0.0.1:{}", py.port);
    let reason = "certificate not valid for name \"127.0.0.1\"";
    refused("wrong-name", &upstream, &own_ca(&pki), reason).await;
}

#[tokio::test]
async fn a_paid_request_over_an_https_upstream_is_charged_once() {
    logs();
    let pki = TestPki::new();
    let up = h2_upstream(&pki).await;
    let wallet = TestIssuer::ed25519("wallet");
    let upstream = format!("https://localhost:{}", up.port);
    let gw = gateway()
        .issuer(&wallet)
        .route(route("paid", "/v1", &upstream, PAID, &own_ca(&pki)))
        .start()
        .await;
    let token = gw.topup(&wallet, "alice", "1").await;
    let res = gw.token_get("/v1/chat", &token).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(
        (pr["amount"].as_str(), pr["balance"].as_str()),
        (Some("0.01"), Some("0.99"))
    );
    assert_eq!(json(res).await["version"], "HTTP/2.0");
    let b = gw.balance(&token).await;
    assert_eq!(b["balances"]["USD"]["captured"], "0.01", "{b}");
    assert_eq!(up.versions.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_tls_listener_serves_http1_and_h2_and_says_https_upstream() {
    logs();
    let pki = TestPki::new();
    let up = h2_upstream(&pki).await;
    let upstream = format!("https://localhost:{}", up.port);
    let gw = gateway()
        .top(&pki.tls_table())
        .route(route("h2", "/", &upstream, FREE, &own_ca(&pki)))
        .start()
        .await;
    let url = format!("https://localhost:{}/x", gw.addr.port());
    for (http1_only, version) in [
        (true, http::Version::HTTP_11),
        (false, http::Version::HTTP_2),
    ] {
        let res = pki
            .client(gw.addr, http1_only)
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(res.version(), version);
        assert_eq!(json(res).await["proto"], "https");
    }
    // Plain HTTP on the TLS port gets no answer.
    let plain = format!("http://127.0.0.1:{}/x", gw.addr.port());
    assert!(gw.http.get(&plain).send().await.is_err());
}

#[tokio::test]
async fn the_admin_listener_serves_tls_when_asked() {
    logs();
    let pki = TestPki::new();
    let up = upstream().await;
    let gw = gateway()
        .top(&format!("{}\n[admin]\ntls = true", pki.tls_table()))
        .admin("admin-token-admin-token")
        .route(free("free", "/", &up))
        .start()
        .await;
    let admin = gw.admin_addr.unwrap();
    let url = format!("https://localhost:{}/admin/v1/summary", admin.port());
    let res = pki
        .client(admin, false)
        .get(&url)
        .bearer_auth("admin-token-admin-token");
    let res = res.send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), res.version()),
        (200, http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped() {
    logs();
    let pki = TestPki::new();
    let up = upstream().await;
    let gw = gateway()
        .top(&pki.tls_table())
        .route(free("free", "/", &up))
        .start()
        .await;
    // Connect and say nothing: the gateway hangs up after handshake_timeout_secs = 1.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // Others are served meanwhile and after.
    let url = format!("https://localhost:{}/healthz", gw.addr.port());
    let res = pki.client(gw.addr, false).get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// Send a text and a binary message on `ws` and get them back.
async fn echoes<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for msg in [
        Message::text("hello through tollgate"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_websocket_on_a_free_route_is_spliced_to_the_upstream() {
    logs();
    let echo = ws_echo(None).await;
    let gw = gateway()
        .route(route("ws", "/ws", &format!("http://{echo}"), FREE, ""))
        .start()
        .await;
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{}/ws/chat", gw.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    echoes(&mut ws).await;
}

#[tokio::test]
async fn a_websocket_crosses_the_tls_listener_to_an_https_upstream_offering_h2() {
    logs();
    let pki = TestPki::new();
    // The upstream offers h2 too: the upgrade must still go over HTTP/1.1.
    let echo = ws_echo(Some(&pki)).await;
    let upstream = format!("https://localhost:{}", echo.port());
    let gw = gateway()
        .top(&pki.tls_table())
        .route(route("wss", "/ws", &upstream, FREE, &own_ca(&pki)))
        .start()
        .await;
    let tls = tls_connect(&pki, gw.addr, &[b"http/1.1"]).await;
    let (mut ws, res) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    echoes(&mut ws).await;
}

#[tokio::test]
async fn an_upgrade_on_a_paid_route_is_refused_and_nothing_is_charged() {
    logs();
    let echo = ws_echo(None).await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .route(route("paid-ws", "/ws", &format!("http://{echo}"), PAID, ""))
        .start()
        .await;
    let token = gw.topup(&wallet, "alice", "1").await;
    let upgrade = |token: Option<&str>, protocol: &str| {
        let req = gw
            .http
            .get(gw.url("/ws"))
            .header("connection", "Upgrade")
            .header("upgrade", protocol)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
        .send()
    };
    for token in [Some(token.as_str()), None] {
        let res = upgrade(token, "websocket").await.unwrap();
        assert_eq!(code_of(res).await, (400, "upgrade_not_supported".into()));
    }
    // A client library sees the refusal too.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 400),
        other => panic!("expected a 400, got {:?}", other.map(|(_, r)| r.status())),
    }
    let b = gw.balance(&token).await;
    assert_eq!(b["balances"]["USD"]["captured"], "0", "{b}");
    // Another upgrade token (h2c) is stripped as before: the request is an ordinary paid one.
    let res = upgrade(None, "h2c").await.unwrap();
    assert_eq!(code_of(res).await, (402, "payment_required".into()));
}

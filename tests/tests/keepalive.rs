//! A refused request whose body arrives after its head must not silently cost the client its
//! connection: the gateway drains a small, prompt body and keeps the connection (the paid retry
//! goes on the same socket), or says `Connection: close` -- for every refusal, from the payment
//! layer (402) and from the gateway's routing (400, 404, 405, 413). Raw HTTP/1.1 over one
//! `TcpStream`, written by hand, so the reuse is certain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_e2e::*;

const PRICE: &str = "0.01";
/// Long enough for the refusal to be decided before the body is there.
const PAUSE: Duration = Duration::from_millis(300);

async fn setup() -> (TestIssuer, TestUpstream, TestGateway) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .route(free("small", "/v1/small", &up).with("methods = [\"POST\"]\nmax_body_bytes = 8"))
        // Served by the upstream's echo (`/free` -> `/v1/echo/free`).
        .route(RouteSpec {
            toml: format!(
                "[[routes]]\nid = \"free\"\npath = \"/free\"\nupstream = \"{}/v1/echo\"\nprice = \"free\"\n",
                up.url()
            ),
        })
        .start()
        .await;
    (wallet, up, gw)
}

/// One response read off a connection that stays open.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A hand-written HTTP/1.1 client on one connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Conn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// More bytes into `buf`; false at end of stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within 10 s"),
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection ended inside a response");
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(at + 2).await;
                return String::from_utf8_lossy(&line[..at]).into_owned();
            }
            assert!(self.fill().await, "connection ended inside a response");
        }
    }

    /// The next response (Content-Length or chunked body).
    async fn answer(&mut self) -> Answer {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(n) = answer.header("content-length") {
            let n: usize = n.parse().unwrap();
            answer.body = self.take(n).await;
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(self.line().await.trim(), 16).unwrap();
                let chunk = self.take(size + 2).await;
                if size == 0 {
                    break;
                }
                answer.body.extend_from_slice(&chunk[..size]);
            }
        }
        answer
    }

    /// Whether the gateway ends the connection (end of stream or reset) within `within`.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let mut rest = [0u8; 64 * 1024];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut rest)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

fn post(path: &str, extra: &str, len: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n{extra}\r\n")
}

/// After a refusal kept the connection, the same socket serves the next request.
async fn still_serves(c: &mut Conn) {
    c.send(b"GET /free HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let next = c.answer().await;
    assert_eq!(next.status, 200, "{}", String::from_utf8_lossy(&next.body));
}

#[tokio::test]
async fn a_402_whose_body_comes_late_keeps_the_connection_for_the_paid_retry() {
    let (wallet, _up, gw) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(post("/v1/echo", "", 5).as_bytes()).await;
    tokio::time::sleep(PAUSE).await;
    c.send(b"hello").await;
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(!refused.closes(), "{:?}", refused.headers);
    // The paid retry, on the same connection.
    let receipt = wallet.receipt("m", "agent-1", PRICE);
    let auth = format!("Authorization: Payment {receipt}\r\n");
    c.send(post("/v1/echo", &auth, 5).as_bytes()).await;
    c.send(b"hello").await;
    let paid = c.answer().await;
    assert_eq!(paid.status, 200, "{}", String::from_utf8_lossy(&paid.body));
    assert!(paid.header("payment-response").is_some());
    let echo: serde_json::Value = serde_json::from_slice(&paid.body).unwrap();
    assert_eq!(echo["body_bytes"], 5, "{echo}");
}

#[tokio::test]
async fn every_gateway_refusal_with_a_late_body_keeps_the_connection() {
    let (_up_wallet, _up, gw) = setup().await;
    // (request head, expected status): routing refusals before any payment step.
    let cases = [
        (post("/v1/../v1/echo", "", 5), 400),
        (post("/nowhere", "", 5), 404),
        (post("/v1/small", "", 5).replace("POST", "PUT"), 405),
        (post("/v1/small", "", 12), 413),
        (
            post("/v1/echo", "Authorization: Payment not-a-receipt\r\n", 5),
            402,
        ),
        (post("/v1/echo", "Payment-Signature: %%%\r\n", 5), 400),
    ];
    let mut c = Conn::open(gw.addr).await;
    for (head, status) in cases {
        let len: usize = head
            .split("Content-Length: ")
            .nth(1)
            .and_then(|r| r.split("\r\n").next())
            .unwrap()
            .parse()
            .unwrap();
        c.send(head.as_bytes()).await;
        tokio::time::sleep(PAUSE).await;
        c.send(&vec![b'x'; len]).await;
        let refused = c.answer().await;
        assert_eq!(refused.status, status, "{head}");
        assert!(!refused.closes(), "{head}: {:?}", refused.headers);
        still_serves(&mut c).await;
    }
}

#[tokio::test]
async fn a_chunked_body_is_drained_too() {
    let (_wallet, _up, gw) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    tokio::time::sleep(PAUSE).await;
    c.send(b"5\r\nhello\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"6\r\n world\r\n0\r\n\r\n").await;
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(!refused.closes());
    still_serves(&mut c).await;
}

#[tokio::test]
async fn a_body_over_the_bound_gets_connection_close_and_the_connection_ends() {
    let (_wallet, _up, gw) = setup().await;
    // Declared too large: not read at all.
    let mut c = Conn::open(gw.addr).await;
    let started = Instant::now();
    c.send(post("/v1/echo", "", 1024 * 1024).as_bytes()).await;
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(refused.closes(), "{:?}", refused.headers);
    assert!(c.ends_within(Duration::from_secs(3)).await);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for a body it would not read"
    );
    // Chunked, found too large while draining: at most the bound is read.
    let mut c = Conn::open(gw.addr).await;
    c.send(b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
    for _ in 0..5 {
        c.send(chunk.as_bytes()).await;
    }
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(refused.closes(), "{:?}", refused.headers);
    assert!(c.ends_within(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_slow_body_is_not_waited_for_beyond_the_deadline() {
    let (_wallet, _up, gw) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    let started = Instant::now();
    c.send(post("/v1/echo", "", 10).as_bytes()).await;
    c.send(b"hello").await; // ... and the other half never comes.
    let refused = c.answer().await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 402);
    assert!(refused.closes(), "{:?}", refused.headers);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    assert!(c.ends_within(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn expect_100_continue_is_refused_without_inviting_the_body() {
    let (_wallet, _up, gw) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(post("/v1/echo", "Expect: 100-continue\r\n", 5).as_bytes())
        .await;
    // The first answer is the refusal itself, not `100 Continue`.
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(refused.closes(), "{:?}", refused.headers);
    assert!(c.ends_within(Duration::from_secs(3)).await);
    // Where the body is read (a free route), hyper invites it as usual.
    let mut c = Conn::open(gw.addr).await;
    c.send(post("/free", "Expect: 100-continue\r\n", 5).as_bytes())
        .await;
    let go_on = c.answer().await;
    assert_eq!(go_on.status, 100);
    c.send(b"hello").await;
    let served = c.answer().await;
    assert_eq!(served.status, 200);
    assert!(!served.closes());
}

#[tokio::test]
async fn http_1_0_refusals_answer_and_close_or_keep_alive_as_asked() {
    let (_wallet, _up, gw) = setup().await;
    let head = "POST /v1/echo HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\n";
    // Plain HTTP/1.0: one request per connection.
    let mut c = Conn::open(gw.addr).await;
    c.send(format!("{head}\r\n").as_bytes()).await;
    tokio::time::sleep(PAUSE).await;
    c.send(b"hello").await;
    assert_eq!(c.answer().await.status, 402);
    assert!(c.ends_within(Duration::from_secs(3)).await);
    // HTTP/1.0 keep-alive: kept after the drain.
    let mut c = Conn::open(gw.addr).await;
    c.send(format!("{head}Connection: keep-alive\r\n\r\n").as_bytes())
        .await;
    tokio::time::sleep(PAUSE).await;
    c.send(b"hello").await;
    let refused = c.answer().await;
    assert_eq!(refused.status, 402);
    assert!(!refused.closes(), "{:?}", refused.headers);
    c.send(b"GET /free HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(c.answer().await.status, 200);
}

#[tokio::test]
async fn an_admin_refusal_with_a_late_body_keeps_the_connection() {
    let up = upstream().await;
    let gw = gateway()
        .admin("admin-token-0123456789")
        .route(free("free", "/free", &up))
        .start()
        .await;
    let mut c = Conn::open(gw.admin_addr.unwrap()).await;
    // A credit without the admin token: 401, decided before the body arrives.
    let body = br#"{"amount":"1","currency":"USD"}"#;
    c.send(
        post(
            "/admin/v1/payers/p1/credits",
            "Content-Type: application/json\r\n",
            body.len(),
        )
        .as_bytes(),
    )
    .await;
    tokio::time::sleep(PAUSE).await;
    c.send(body).await;
    let refused = c.answer().await;
    assert_eq!(refused.status, 401);
    assert!(!refused.closes(), "{:?}", refused.headers);
    // The same connection still answers.
    c.send(b"GET /admin/v1/openapi.json HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer admin-token-0123456789\r\n\r\n")
        .await;
    assert_eq!(c.answer().await.status, 200);
}

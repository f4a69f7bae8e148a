//! A metered event stream that runs dry pauses for a top-up (`on_exhausted = "pause"`):
//! a real gateway over loopback HTTP in front of the demo upstream's SSE stream, on the
//! sqlite store and on a real Redis. The top-up arrives (on this replica, or -- Redis -- on
//! another one sharing the store), never arrives, arrives twice; the client leaves while
//! paused. In every case the ledger balances to the unit: one usage event charging exactly
//! the upstream bytes delivered, `credited - captured = available + held`, no hold left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rust_decimal::prelude::ToPrimitive as _;
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_e2e::{gateway, metered, upstream, RedisServer, TestGateway, TestIssuer};

/// 0.00001 USD (10 atomic units) per byte delivered.
const PER_BYTE: i64 = 10;
/// The demo stream: 40 events `data: {"chunk":N}\n\n`, 19 bytes for N < 10, 20 after.
const CHUNKS: usize = 40;
const STREAM_BYTES: i64 = 10 * 19 + 30 * 20;
/// The first top-up: 0.002 USD, 200 bytes' worth.
const FIRST_MINOR: i64 = 2_000;

enum Backend {
    Sqlite,
    Redis(RedisServer),
}

impl Backend {
    fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }
}

async fn start(backend: &Backend, timeout_secs: u64) -> (TestGateway, TestIssuer) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let route = metered(
        "stream",
        "/v1/stream",
        &up,
        "0.001",
        &[("byte", "response_bytes", "0.00001")],
    )
    .with_price_option(&format!(
        "cutoff = true, on_exhausted = \"pause\", pause_timeout_secs = {timeout_secs}"
    ));
    let mut gw = gateway().issuer(&wallet).route(route);
    if let Backend::Redis(r) = backend {
        gw = gw.redis(r);
    }
    (gw.start().await, wallet)
}

/// A second gateway on the same Redis (another replica).
async fn replica(redis: &RedisServer, wallet: &TestIssuer) -> TestGateway {
    let up = upstream().await;
    let route = metered(
        "stream",
        "/v1/stream",
        &up,
        "0.001",
        &[("byte", "response_bytes", "0.00001")],
    );
    gateway()
        .issuer(wallet)
        .redis(redis)
        .route(route)
        .start()
        .await
}

/// A decimal string of USD as atomic units (exact: at most 6 decimals).
fn minor(v: &Value) -> i64 {
    let d: Decimal = v.as_str().unwrap().parse().unwrap();
    let atomic = d * Decimal::from(1_000_000);
    assert!(atomic.fract().is_zero(), "{v}");
    atomic.to_i64().unwrap()
}

/// The upstream's own events in what the client received (the gateway's events and comments
/// taken out), and their bytes.
fn upstream_events(text: &str) -> (Vec<String>, i64) {
    let events: Vec<String> = text
        .split_inclusive("\n\n")
        .filter(|e| e.starts_with("data: {\"chunk\""))
        .map(str::to_owned)
        .collect();
    let bytes = events.iter().map(|e| e.len() as i64).sum();
    (events, bytes)
}

/// The gateway's events (`event: <name>` with their JSON data), in order.
fn gateway_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|e| {
            let name = e.strip_prefix("event: ")?.lines().next()?.to_owned();
            let data = e.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect()
}

/// Read the stream until the text so far satisfies `until` (or it ends); the response is
/// kept so the caller can read on or drop it.
struct Reader {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    text: String,
}

impl Reader {
    async fn open(gw: &TestGateway, token: &str) -> Self {
        let res = gw
            .token_get(&format!("/v1/stream?chunks={CHUNKS}&delay_ms=5"), token)
            .await;
        Self::of(res)
    }

    /// A streamed chat completion of `tokens` tokens (usage in its last event).
    async fn chat(gw: &TestGateway, token: &str, tokens: u64) -> Self {
        let body = serde_json::json!({"messages": [{"role": "user", "content": "hi"}],
            "stream": true, "max_tokens": tokens, "delay_ms": 2});
        let res = gw
            .with_token(reqwest::Method::POST, "/v1/chat/completions", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::of(res)
    }

    fn of(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Reader {
            stream: res.bytes_stream().boxed(),
            text: String::new(),
        }
    }

    /// Read until `marker` has appeared `n` times; `false` if the stream ended first.
    async fn until(&mut self, marker: &str, n: usize) -> bool {
        let read = async {
            while self.text.matches(marker).count() < n {
                match self.stream.next().await {
                    Some(chunk) => self
                        .text
                        .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
                    None => return false,
                }
            }
            true
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .unwrap()
    }

    async fn read_to_end(&mut self) {
        assert!(!self.until("\u{0}never", 1).await);
    }
}

const NEED: &str = "event: payment-need-topup\n";
const TIMEOUT: &str = "event: session-timeout\n";

/// `tollgate_stream_pauses_total{route="stream", outcome}` in this process (every test here
/// runs its gateway in it: a test can only see it grow).
fn pauses(outcome: &str) -> u64 {
    tollgate_middleware::metrics::global()
        .stream_pauses
        .with_label_values(&["stream", outcome])
        .get()
}

/// The payer's account and the ledger agree to the unit: nothing held, one usage event
/// charging `bytes` bytes, `credited - captured = available`.
async fn assert_ledger(gw: &TestGateway, token: &str, credited: i64, bytes: i64) {
    let b = gw.settled(token).await;
    let usd = &b["balances"]["USD"];
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1, "exactly one ledger entry: {events:?}");
    let e = &events[0];
    assert_eq!(
        e.units["byte"],
        u64::try_from(bytes).unwrap(),
        "charged what was delivered"
    );
    assert_eq!(e.amount_minor, u64::try_from(bytes * PER_BYTE).unwrap());
    assert_eq!(e.uncharged_minor, 0);
    assert_eq!(minor(&usd["held"]), 0);
    assert_eq!(minor(&usd["credited"]), credited);
    assert_eq!(minor(&usd["captured"]), bytes * PER_BYTE);
    assert_eq!(minor(&usd["available"]), credited - bytes * PER_BYTE);
}

/// The need event: what is needed, in the route's currency, the top-up offer, the deadline.
fn check_need(need: &Value, delivered: i64, timeout_secs: u64) {
    assert_eq!(need["code"], "balance_insufficient");
    assert_eq!(need["currency"], "USD");
    assert_eq!(need["decimals"], 6);
    let needed = minor(&need["needed"]);
    assert_eq!(need["neededAtomic"], needed.to_string());
    // All 0.002 is held by then: the need is what the next chunk (19 or 20 bytes) costs
    // beyond it.
    assert!(needed > 0 && needed <= 20 * PER_BYTE, "{need}");
    assert!((delivered + 20) * PER_BYTE > FIRST_MINOR);
    assert_eq!(
        needed,
        needed.min((delivered + 20) * PER_BYTE - FIRST_MINOR)
    );
    let offer = &need["accepts"][0];
    assert_eq!(offer["scheme"], "tollgate-receipt");
    assert_eq!(offer["extra"]["kind"], "topup");
    assert!(offer["extra"]["topupUrl"]
        .as_str()
        .unwrap()
        .ends_with("/tollgate/v1/topup"));
    assert_eq!(need["topupUrl"], offer["extra"]["topupUrl"]);
    // The suggested top-up (5 USD) covers the need, so it is the offer's amount.
    assert_eq!(offer["amount"], "5000000");
    assert_eq!(need["timeoutSecs"], timeout_secs);
    let deadline = need["deadline"].as_i64().unwrap();
    let now = tollgate_e2e::now_secs();
    assert!(deadline >= now && deadline <= now + i64::try_from(timeout_secs).unwrap() + 1);
}

/// The top-up arrives (through the agent API of `topup_on`): the kept chunk and the rest of
/// the stream are delivered, every byte charged.
async fn topup_arrives(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let other = match &backend {
        Backend::Redis(r) => Some(replica(r, &wallet).await),
        Backend::Sqlite => None,
    };
    let token = gw.topup(&wallet, "ann", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await, "the stream pauses: {}", r.text);
    let (_, delivered) = upstream_events(&r.text);
    assert!(
        delivered <= FIRST_MINOR / PER_BYTE && delivered > 150,
        "{delivered}"
    );
    let (name, need) = gateway_events(&r.text).pop().unwrap();
    assert_eq!(name, "payment-need-topup");
    check_need(&need, delivered, 10);
    // Paused: nothing more arrives (the upstream is not read).
    let quiet = tokio::time::timeout(Duration::from_millis(700), r.stream.next()).await;
    assert!(quiet.is_err(), "a paused stream sends nothing: {quiet:?}");
    let paused_at = Instant::now();
    // On Redis, topped up on another replica: the paused one finds it by polling the store.
    other
        .as_ref()
        .unwrap_or(&gw)
        .topup(&wallet, "ann", "1")
        .await;
    r.read_to_end().await;
    let waited = paused_at.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "resumed within a poll: {waited:?}"
    );
    assert!(!r.text.contains(TIMEOUT));
    let (events, bytes) = upstream_events(&r.text);
    assert_eq!(
        events.len(),
        CHUNKS,
        "every chunk, the kept one too, in order"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e, &format!("data: {{\"chunk\":{i}}}\n\n"));
    }
    assert_eq!(bytes, STREAM_BYTES);
    assert_eq!(gateway_events(&r.text).len(), 1);
    assert_ledger(&gw, &token, FIRST_MINOR + 1_000_000, STREAM_BYTES).await;
}

/// No top-up: `session-timeout` after the pause timeout, charged what was delivered.
async fn topup_never_arrives(backend: Backend) {
    let (gw, wallet) = start(&backend, 1).await;
    let timed_out = pauses("timed_out");
    let token = gw.topup(&wallet, "bo", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await);
    let paused_at = Instant::now();
    r.read_to_end().await;
    let waited = paused_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let events = gateway_events(&r.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["payment-need-topup", "session-timeout"]);
    assert_eq!(events[1].1["code"], "session_timeout");
    assert!(r.text.ends_with("\n\n") && r.text.rsplit_once(TIMEOUT).is_some());
    // Nothing of the upstream after the pause: the kept chunk was never delivered.
    let after_pause = r.text.split(NEED).nth(1).unwrap();
    assert!(!after_pause.contains("data: {\"chunk\""));
    let (_, delivered) = upstream_events(&r.text);
    assert!(delivered > 150 && delivered <= FIRST_MINOR / PER_BYTE);
    assert_ledger(&gw, &token, FIRST_MINOR, delivered).await;
    assert!(pauses("timed_out") > timed_out);
}

/// Two top-ups at one need: both credits count; the hold grows once, the stream goes on
/// to its end without pausing again.
async fn topup_arrives_twice(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let token = gw.topup(&wallet, "cy", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await);
    let (a, b) = tokio::join!(
        gw.topup(&wallet, "cy", "0.003"),
        gw.topup(&wallet, "cy", "0.003")
    );
    assert!(!a.is_empty() && !b.is_empty());
    r.read_to_end().await;
    let events = gateway_events(&r.text);
    assert_eq!(events.len(), 1, "one need, one pause: {events:?}");
    let (chunks, bytes) = upstream_events(&r.text);
    assert_eq!((chunks.len(), bytes), (CHUNKS, STREAM_BYTES));
    assert_ledger(&gw, &token, FIRST_MINOR + 6_000, STREAM_BYTES).await;
}

/// A top-up short of the need is held for the stream too; it waits on for the rest.
async fn topup_short_of_the_need(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let token = gw.topup(&wallet, "flo", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await);
    let needed = minor(&gateway_events(&r.text)[0].1["needed"]);
    assert!(needed > 10, "{needed}");
    gw.topup(&wallet, "flo", "0.00001").await;
    // Still paused: nothing arrives, not even a second need event.
    let quiet = tokio::time::timeout(Duration::from_millis(1_200), r.stream.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    let b = gw.balance(&token).await;
    assert_eq!(
        minor(&b["balances"]["USD"]["available"]),
        0,
        "the 0.00001 is held"
    );
    gw.topup(&wallet, "flo", "1").await;
    r.read_to_end().await;
    assert_eq!(gateway_events(&r.text).len(), 1);
    let (chunks, bytes) = upstream_events(&r.text);
    assert_eq!((chunks.len(), bytes), (CHUNKS, STREAM_BYTES));
    assert_ledger(&gw, &token, FIRST_MINOR + 10 + 1_000_000, STREAM_BYTES).await;
}

/// A stream that needs a top-up several times pauses once per need.
async fn paused_again_and_again(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let token = gw.topup(&wallet, "di", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    let mut topups = 0;
    // 0.0015 buys 150 bytes at a time: the 790-byte stream needs several.
    while r.until(NEED, topups + 1).await {
        topups += 1;
        assert!(topups < 10, "{}", r.text);
        gw.topup(&wallet, "di", "0.0015").await;
    }
    assert!(topups >= 2, "{topups}");
    assert_eq!(gateway_events(&r.text).len(), topups);
    let (chunks, bytes) = upstream_events(&r.text);
    assert_eq!((chunks.len(), bytes), (CHUNKS, STREAM_BYTES));
    let credited = FIRST_MINOR + 1_500 * i64::try_from(topups).unwrap();
    assert_ledger(&gw, &token, credited, STREAM_BYTES).await;
}

/// The payer is blocked while paused: the stream ends at the next look at the store (not at
/// the timeout), charged what was delivered.
async fn payer_blocked_while_paused(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let token = gw.topup(&wallet, "gil", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await);
    let (_, delivered) = upstream_events(&r.text);
    let blocked_at = Instant::now();
    gw.paywall.store().set_blocked("gil", true).await.unwrap();
    r.read_to_end().await;
    assert!(blocked_at.elapsed() < Duration::from_secs(3));
    let events = gateway_events(&r.text);
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[1].0.as_str(), &events[1].1["code"]),
        ("session-timeout", &Value::from("payer_blocked"))
    );
    assert_eq!(upstream_events(&r.text).1, delivered);
    gw.paywall.store().set_blocked("gil", false).await.unwrap();
    assert_ledger(&gw, &token, FIRST_MINOR, delivered).await;
}

/// The client leaves while paused: charged what was delivered, the rest released.
async fn client_leaves_while_paused(backend: Backend) {
    let (gw, wallet) = start(&backend, 10).await;
    let token = gw.topup(&wallet, "ed", "0.002").await;
    let mut r = Reader::open(&gw, &token).await;
    assert!(r.until(NEED, 1).await);
    let (_, delivered) = upstream_events(&r.text);
    let gone = pauses("client_gone");
    drop(r);
    assert_ledger(&gw, &token, FIRST_MINOR, delivered).await;
    // Settled well before the pause timeout.
    let b = gw.balance(&token).await;
    assert_eq!(b["holds"], 0);
    assert!(pauses("client_gone") > gone);
}

/// An OpenAI-style stream priced by the usage in its last event (`sse:`): 50 completion
/// tokens at 0.0001 cost 0.005, more than the 0.002 topped up -- the stream pauses on the
/// event that reports the usage.
async fn start_chat(backend: &Backend) -> (TestGateway, TestIssuer) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let route = metered(
        "chat",
        "/v1/chat/completions",
        &up,
        "0.001",
        &[("completion_token", "sse:/usage/completion_tokens", "0.0001")],
    )
    .with_price_option("cutoff = true, on_exhausted = \"pause\", pause_timeout_secs = 1");
    let mut gw = gateway().issuer(&wallet).route(route);
    if let Backend::Redis(r) = backend {
        gw = gw.redis(r);
    }
    (gw.start().await, wallet)
}

/// `sse:` usage: topped up while paused on the usage event, the whole answer is charged.
async fn sse_usage_paused_then_paid(backend: Backend) {
    let (gw, wallet) = start_chat(&backend).await;
    let token = gw.topup(&wallet, "fay", "0.002").await;
    let mut r = Reader::chat(&gw, &token, 50).await;
    assert!(r.until(NEED, 1).await);
    let need = gateway_events(&r.text).pop().unwrap().1;
    // Everything held (0.002); the usage event reports 0.005.
    assert_eq!(
        (need["needed"].as_str(), need["neededAtomic"].as_str()),
        (Some("0.003"), Some("3000"))
    );
    assert!(
        !r.text.contains("\"usage\""),
        "the usage event is kept back"
    );
    gw.topup(&wallet, "fay", "0.01").await;
    r.read_to_end().await;
    assert!(r.text.contains("\"completion_tokens\":50") && r.text.ends_with("data: [DONE]\n\n"));
    let b = gw.settled(&token).await;
    let usd = &b["balances"]["USD"];
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].units["completion_token"], events[0].amount_minor),
        (50, 5_000)
    );
    assert_eq!(minor(&usd["captured"]), 5_000);
    assert_eq!(minor(&usd["available"]), 12_000 - 5_000);
    assert_eq!(minor(&usd["held"]), 0);
}

/// `sse:` usage: never topped up, the usage event was never delivered -- its usage is not
/// charged (the kept chunk is forgotten with the values read from it).
async fn sse_usage_never_delivered_is_not_charged(backend: Backend) {
    let (gw, wallet) = start_chat(&backend).await;
    let token = gw.topup(&wallet, "gus", "0.002").await;
    let mut r = Reader::chat(&gw, &token, 50).await;
    r.read_to_end().await;
    let names: Vec<String> = gateway_events(&r.text)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["payment-need-topup", "session-timeout"]);
    assert!(!r.text.contains("\"usage\""));
    let b = gw.settled(&token).await;
    let usd = &b["balances"]["USD"];
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].units["completion_token"], events[0].amount_minor),
        (0, 0)
    );
    assert_eq!(
        (
            minor(&usd["available"]),
            minor(&usd["held"]),
            minor(&usd["captured"])
        ),
        (2_000, 0, 0)
    );
}

/// The same stream with `on_exhausted = "cut"`: cut on the usage event, which was never
/// delivered -- its usage is not charged either (the cut chunk is forgotten with the values
/// read from it, as a paused one is).
async fn sse_usage_cut_is_not_charged(backend: Backend) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let route = metered(
        "chat",
        "/v1/chat/completions",
        &up,
        "0.001",
        &[("completion_token", "sse:/usage/completion_tokens", "0.0001")],
    )
    .with_price_option("cutoff = true");
    let mut gw = gateway().issuer(&wallet).route(route);
    if let Backend::Redis(r) = &backend {
        gw = gw.redis(r);
    }
    let gw = gw.start().await;
    let token = gw.topup(&wallet, "hal", "0.002").await;
    let mut r = Reader::chat(&gw, &token, 50).await;
    r.read_to_end().await;
    assert!(r.text.contains("event: tollgate"), "{}", r.text);
    assert!(!r.text.contains("\"usage\""));
    let b = gw.settled(&token).await;
    let usd = &b["balances"]["USD"];
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].units["completion_token"], events[0].amount_minor),
        (0, 0)
    );
    assert_eq!((minor(&usd["available"]), minor(&usd["held"])), (2_000, 0));
}

macro_rules! both_stores {
    ($($body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $body() {
                    super::$body(super::Backend::Sqlite).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $body() {
                    super::$body(super::Backend::redis()).await;
                }
            )*
        }
    };
}

both_stores!(
    topup_arrives,
    topup_never_arrives,
    topup_arrives_twice,
    topup_short_of_the_need,
    paused_again_and_again,
    client_leaves_while_paused,
    payer_blocked_while_paused,
    sse_usage_paused_then_paid,
    sse_usage_never_delivered_is_not_charged,
    sse_usage_cut_is_not_charged,
);

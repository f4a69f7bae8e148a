//! A metered stream that outlives its hold's lifetime is still captured, exactly, on both
//! stores: the hold in use is renewed while the body streams, so the account reads made during
//! the stream (which give expired holds back) never take it.
//!
//! The hold here lasts 600 ms (route timeout 300 ms + hold margin 300 ms) and the stream five
//! times as long, with the payer's account read every 100 ms throughout -- the shape of the
//! audit's 60 s stream, scaled down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use serde_json::{json, Value};
use tollgate_e2e::engine::{engine_builder, usd};
use tollgate_e2e::{RedisServer, TestIssuer};
use tollgate_middleware::meter::{Meter, Metered, OnMissing, UsageSource};
use tollgate_middleware::{
    PaymentLayer, Paywall, Price, PricedRoute, RedisStore, RedisStoreOptions, SqliteStore, Store,
    SystemClock,
};
use tower::{Layer as _, ServiceExt as _};

const EVENTS: u64 = 30;
const EVENT_EVERY: Duration = Duration::from_millis(100);
const TOKENS: u64 = 400;

fn engine(store: Arc<dyn Store>, issuer: &TestIssuer) -> Paywall {
    engine_builder(store, Arc::new(SystemClock), issuer)
        .hold_margin(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// 0.0001 USD per token read from the answer's `usage.total_tokens` (`sse:` or `json:`),
/// 0.01 reserved.
fn route(source: UsageSource) -> PricedRoute {
    let metered = Metered {
        currency: usd(),
        meters: vec![Meter {
            unit: "token".into(),
            source,
            price: "0.0001".parse().unwrap(),
        }],
        reserve: "0.01".parse().unwrap(),
        on_missing: OnMissing::Zero,
        cutoff: false,
        on_exhausted: Default::default(),
    };
    PricedRoute::new("chat", Price::Metered(metered)).timeout(Duration::from_millis(300))
}

/// A slow upstream: `/sse` sends `EVENTS` events, one every `EVENT_EVERY`, the last one
/// carrying the usage; `/json` trickles one JSON answer in as many pieces at the same pace.
async fn slow_upstream(req: Request<String>) -> Result<Response<StreamBodyT>, Infallible> {
    let sse = req.uri().path() == "/sse";
    let json_answer =
        json!({"id": "r1", "text": "word ".repeat(20), "usage": {"total_tokens": TOKENS}})
            .to_string()
            .into_bytes();
    let piece = json_answer.len().div_ceil(usize::try_from(EVENTS).unwrap());
    let events = futures_util::stream::iter(1..=EVENTS).then(move |i| {
        let json_answer = json_answer.clone();
        async move {
            tokio::time::sleep(EVENT_EVERY).await;
            let chunk = if sse {
                let data = if i == EVENTS {
                    json!({"choices": [], "usage": {"total_tokens": TOKENS}})
                } else {
                    json!({"choices": [{"delta": {"content": "word "}}]})
                };
                Bytes::from(format!("data: {data}\n\n"))
            } else {
                let start = (usize::try_from(i).unwrap() - 1) * piece;
                let end = (start + piece).min(json_answer.len());
                Bytes::copy_from_slice(&json_answer[start.min(end)..end])
            };
            Ok::<_, Infallible>(Frame::data(chunk))
        }
    });
    let body: StreamBodyT = StreamBody::new(Box::pin(events));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json"
    };
    Ok(Response::builder()
        .header("content-type", content_type)
        .body(body)
        .unwrap())
}

type StreamBodyT = StreamBody<
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>,
>;

async fn topup_token(paywall: &Paywall, issuer: &TestIssuer, payer: &str) -> String {
    let mut c = issuer.claims("m", payer, "10");
    c["kind"] = "topup".into();
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Payment {}", issuer.sign(&c))).unwrap(),
    );
    let res = paywall
        .agent_api(&Method::POST, "/tollgate/v1/topup", &h)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

async fn usd_balance(store: &Arc<dyn Store>, payer: &str) -> (i64, i64) {
    let account = store.account(payer).await.unwrap();
    let b = account.balances["USD"];
    (b.available, b.held)
}

async fn stream_outlives_its_hold(store: Arc<dyn Store>, sse: bool) {
    let issuer = TestIssuer::ed25519("wallet");
    let paywall = engine(store.clone(), &issuer);
    let token = topup_token(&paywall, &issuer, "agent").await;
    let (path, source) = if sse {
        ("/sse", UsageSource::Sse("/usage/total_tokens".into()))
    } else {
        ("/json", UsageSource::Json("/usage/total_tokens".into()))
    };
    let svc =
        PaymentLayer::new(paywall, Arc::new(route(source))).layer(tower::service_fn(slow_upstream));

    let req = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    // Account reads all through the stream: each one gives expired holds back. (A `json:`
    // answer is read whole before the response head is released: the reads start now.)
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            // From the moment the hold is placed, 22 reads over 2.2 s (the answer takes 3 s).
            while usd_balance(&store, "agent").await.1 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut held_seen = Vec::new();
            for _ in 0..22 {
                held_seen.push(usd_balance(&store, "agent").await.1);
                tokio::time::sleep(EVENT_EVERY).await;
            }
            held_seen
        })
    };
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    if sse {
        let delivered = body.windows(6).filter(|w| w == b"data: ").count();
        assert_eq!(delivered, usize::try_from(EVENTS).unwrap());
    } else {
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["usage"]["total_tokens"], TOKENS);
    }
    let held_seen = reader.await.unwrap();
    // While the answer was served, the hold was never given back.
    assert!(
        held_seen.iter().all(|h| *h == 10_000),
        "the hold was swept while in use: {held_seen:?}"
    );

    // Settled in the background once the body ended: exactly one capture, of every token.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = store.usage_events().await.unwrap();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].units.get("token"), Some(&TOKENS));
    assert_eq!(events[0].amount_minor, TOKENS * 100);
    assert_eq!(events[0].uncharged_minor, 0);
    let charged = i64::try_from(TOKENS * 100).unwrap();
    assert_eq!(
        usd_balance(&store, "agent").await,
        (10_000_000 - charged, 0)
    );
}

#[tokio::test]
async fn memory_store_captures_a_stream_longer_than_its_hold() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(SystemClock)).unwrap());
    stream_outlives_its_hold(store, true).await;
}

#[tokio::test]
async fn memory_store_captures_a_json_answer_slower_than_its_hold() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(SystemClock)).unwrap());
    stream_outlives_its_hold(store, false).await;
}

async fn redis_store(redis: &RedisServer) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url: redis.url(),
        cluster: false,
        prefix: "t".into(),
        timeout: Duration::from_millis(2000),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

#[tokio::test]
async fn redis_captures_a_stream_longer_than_its_hold() {
    let redis = RedisServer::start();
    stream_outlives_its_hold(redis_store(&redis).await, true).await;
}

#[tokio::test]
async fn redis_captures_a_json_answer_slower_than_its_hold() {
    let redis = RedisServer::start();
    stream_outlives_its_hold(redis_store(&redis).await, false).await;
}

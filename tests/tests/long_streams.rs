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
use tollgate_e2e::{RedisServer, TestIssuer};
use tollgate_middleware::meter::{Meter, Metered, OnMissing, UsageSource};
use tollgate_middleware::receipt::{Issuer, IssuerKey, StaticKeys};
use tollgate_middleware::{
    Currency, MemoryStore, PaymentLayer, Paywall, Price, PricedRoute, RedisStore,
    RedisStoreOptions, Store, SystemClock,
};
use tower::{Layer as _, ServiceExt as _};

const EVENTS: u64 = 30;
const EVENT_EVERY: Duration = Duration::from_millis(100);
const TOKENS: u64 = 400;

fn usd() -> Currency {
    Currency::try_new("USD", 6).unwrap()
}

fn engine(store: Arc<dyn Store>, issuer: &TestIssuer) -> Paywall {
    let key = IssuerKey::from_jwk(issuer.signer.public_jwk()).unwrap();
    Paywall::builder("m", vec![7u8; 32])
        .store(store)
        .clock(Arc::new(SystemClock))
        .currency(usd(), None)
        .hold_margin(Duration::from_millis(300))
        .issuer(Issuer {
            id: issuer.id.clone(),
            keys: Arc::new(StaticKeys(vec![key])),
        })
        .build()
        .unwrap()
}

/// 0.0001 USD per token read from the stream's `usage.total_tokens`, 0.01 reserved.
fn route() -> PricedRoute {
    let metered = Metered {
        currency: usd(),
        meters: vec![Meter {
            unit: "token".into(),
            source: UsageSource::Sse("/usage/total_tokens".into()),
            price: "0.0001".parse().unwrap(),
        }],
        reserve: "0.01".parse().unwrap(),
        on_missing: OnMissing::Zero,
        cutoff: false,
    };
    PricedRoute::new("chat", Price::Metered(metered)).timeout(Duration::from_millis(300))
}

/// An SSE upstream: `EVENTS` events, one every `EVENT_EVERY`, the last one carrying the usage.
async fn sse_upstream(_: Request<String>) -> Result<Response<StreamBodyT>, Infallible> {
    let events = futures_util::stream::iter(1..=EVENTS).then(|i| async move {
        tokio::time::sleep(EVENT_EVERY).await;
        let data = if i == EVENTS {
            json!({"choices": [], "usage": {"total_tokens": TOKENS}})
        } else {
            json!({"choices": [{"delta": {"content": "word "}}]})
        };
        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {data}\n\n"))))
    });
    let body: StreamBodyT = StreamBody::new(Box::pin(events));
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
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

async fn stream_outlives_its_hold(store: Arc<dyn Store>) {
    let issuer = TestIssuer::ed25519("wallet");
    let paywall = engine(store.clone(), &issuer);
    let token = topup_token(&paywall, &issuer, "agent").await;
    let svc = PaymentLayer::new(paywall, Arc::new(route())).layer(tower::service_fn(sse_upstream));

    let req = Request::builder()
        .uri("/v1/chat")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);

    // Account reads all through the stream: each one gives expired holds back.
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut held_seen = Vec::new();
            for _ in 0..(EVENTS + 2) {
                held_seen.push(usd_balance(&store, "agent").await.1);
                tokio::time::sleep(EVENT_EVERY).await;
            }
            held_seen
        })
    };
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let delivered = body.windows(6).filter(|w| w == b"data: ").count();
    assert_eq!(delivered, usize::try_from(EVENTS).unwrap());
    let held_seen = reader.await.unwrap();
    // While the stream was served (its first 25 reads), the hold was never given back.
    assert!(
        held_seen[..25].iter().all(|h| *h == 10_000),
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
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
    stream_outlives_its_hold(store).await;
}

#[tokio::test]
async fn redis_captures_a_stream_longer_than_its_hold() {
    let redis = RedisServer::start();
    let opts = RedisStoreOptions {
        url: redis.url(),
        cluster: false,
        prefix: "t".into(),
        timeout: Duration::from_millis(2000),
    };
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(opts).await.unwrap());
    stream_outlives_its_hold(store).await;
}

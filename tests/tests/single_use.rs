//! Single use of a receipt, in time and in identity, on every store (memory, one redis-server,
//! a 3-master Redis Cluster), through the engine with an injected clock:
//!
//! - **time**: a spent receipt's record outlives every instant at which the receipt can be
//!   accepted -- tried at the last millisecond of acceptance (a payment and a top-up), and
//!   refused as expired one millisecond later;
//! - **identity**: single use is per (iss, jti), whatever the `sub`: the same (iss, jti) signed
//!   for payers in different buckets (so different Redis hash slots) is spent once, across
//!   payment, top-up and subscribe receipts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::{json, Value};
use tollgate_e2e::engine::{engine_builder, usd};
use tollgate_e2e::{RedisCluster, RedisServer, TestIssuer};
use tollgate_middleware::store::bucket_of;
use tollgate_middleware::{
    Clock, Head, ManualClock, Money, Paywall, Price, PricedRoute, RedisStore, RedisStoreOptions,
    SqliteStore, Store, SystemClock,
};

/// The gateway's default clock skew (seconds).
const SKEW: i64 = 30;

fn engine(store: Arc<dyn Store>, clock: &ManualClock, issuer: &TestIssuer) -> Paywall {
    engine_builder(store, Arc::new(clock.clone()), issuer)
        .build()
        .unwrap()
}

fn route() -> Arc<PricedRoute> {
    let p = Price::fixed(Money {
        amount: "0.01".parse().unwrap(),
        currency: usd(),
    })
    .unwrap();
    Arc::new(PricedRoute::new("compute", p))
}

fn auth(receipt: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Payment {receipt}")).unwrap(),
    );
    h
}

/// A receipt of `kind` for `payer` with this `jti`, expiring at `exp`.
fn receipt(
    issuer: &TestIssuer,
    payer: &str,
    jti: &str,
    kind: &str,
    amount: &str,
    exp: i64,
) -> String {
    issuer.sign(&json!({
        "iss": issuer.id, "sub": payer, "aud": "m", "jti": jti,
        "iat": exp - 600, "exp": exp, "amount": amount, "currency": "USD", "kind": kind,
    }))
}

/// Pay one request with `receipt`: `Ok(())` when served and captured, else the refusal's code.
async fn pay(paywall: &Paywall, receipt: &str) -> Result<(), String> {
    match paywall
        .admit(
            &route(),
            &Method::GET,
            &Uri::from_static("/v1/compute"),
            &auth(receipt),
        )
        .await
    {
        Ok(Some(a)) => {
            a.settle(Some(200), None).await.unwrap();
            Ok(())
        }
        Ok(None) => panic!("the route is free"),
        Err(refused) => {
            let head = Head {
                method: &Method::GET,
                uri: &Uri::from_static("/v1/compute"),
                headers: &auth(receipt),
            };
            let res = paywall.render(&refused, Some((&route(), head)));
            let body: Value = serde_json::from_slice(res.body()).unwrap();
            Err(body["code"].as_str().unwrap().to_owned())
        }
    }
}

/// Top up with `receipt`: the answer's status and body.
async fn topup(paywall: &Paywall, receipt: &str) -> (u16, Value) {
    let res = paywall
        .agent_api(&Method::POST, "/tollgate/v1/topup", &auth(receipt))
        .await
        .unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(res.body()).unwrap(),
    )
}

async fn balance_minor(store: &Arc<dyn Store>, payer: &str) -> u64 {
    let account = store.account(payer).await.unwrap();
    account
        .balances
        .get("USD")
        .map_or(0, |b| u64::try_from(b.available).unwrap())
}

async fn captures(store: &Arc<dyn Store>) -> usize {
    store.usage_events().await.unwrap().len()
}

/// Two payer ids in different buckets (so, on Redis, in different hash slots).
fn payers_in_two_buckets() -> (String, String) {
    let a = "agent-a".to_owned();
    let b = (0..)
        .map(|i| format!("agent-b{i}"))
        .find(|b| bucket_of(b) != bucket_of(&a))
        .unwrap();
    (a, b)
}

async fn redis_store(url: String, cluster: bool) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url,
        cluster,
        prefix: "t".into(),
        timeout: Duration::from_millis(2000),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// Time: the last millisecond of acceptance
// ---------------------------------------------------------------------------------------------

/// A receipt whose acceptance ends at the end of the current second of `clock`: spent once,
/// then presented again at the last millisecond at which it is accepted (replayed), then one
/// millisecond later (expired). With `wait_real`, real time passes first so a record whose
/// lifetime was computed on the store's own clock (Redis) would have expired if it ended where
/// acceptance ends.
async fn replay_at_the_last_accepted_millisecond(
    store: Arc<dyn Store>,
    clock: ManualClock,
    wait_real: bool,
) {
    let issuer = TestIssuer::ed25519("wallet");
    let paywall = engine(store.clone(), &clock, &issuer);
    let now_s = clock.now_secs();
    // Accepted while now <= exp + skew (in seconds): until the end of second `now_s`.
    let exp = now_s - SKEW;
    let last_ms = (now_s + 1) * 1000 - 1;

    let pay_r = receipt(
        &issuer,
        "agent",
        &uuid::Uuid::new_v4().to_string(),
        "payment",
        "0.01",
        exp,
    );
    let top_r = receipt(
        &issuer,
        "agent",
        &uuid::Uuid::new_v4().to_string(),
        "topup",
        "5",
        exp,
    );
    assert_eq!(pay(&paywall, &pay_r).await, Ok(()));
    let (status, first) = topup(&paywall, &top_r).await;
    assert_eq!(
        (status, first["duplicate"].clone()),
        (200, json!(false)),
        "{first}"
    );
    assert_eq!(balance_minor(&store, "agent").await, 5_000_000);

    if wait_real {
        // The store's clock (Redis TIME) cannot be injected: let the rest of this real second
        // pass, so a record kept only until (exp + skew) s would be gone.
        let into_second = SystemClock.now_ms().rem_euclid(1000);
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(1100 - into_second).unwrap(),
        ))
        .await;
    }
    clock.advance_ms(last_ms - clock.now_ms());
    assert_eq!(clock.now_ms(), last_ms);
    assert_eq!(pay(&paywall, &pay_r).await, Err("receipt_replayed".into()));
    let (status, again) = topup(&paywall, &top_r).await;
    assert_eq!(
        (status, again["duplicate"].clone()),
        (200, json!(true)),
        "{again}"
    );
    assert_eq!(
        balance_minor(&store, "agent").await,
        5_000_000,
        "credited once"
    );
    assert_eq!(captures(&store).await, 1, "captured once");

    // One millisecond later the receipt is refused on its own: expired.
    clock.advance_ms(1);
    assert_eq!(pay(&paywall, &pay_r).await, Err("receipt_expired".into()));
    let (status, late) = topup(&paywall, &top_r).await;
    assert_eq!(
        (status, late["code"].clone()),
        (402, json!("receipt_expired")),
        "{late}"
    );
    assert_eq!(balance_minor(&store, "agent").await, 5_000_000);
}

#[tokio::test]
async fn memory_store_remembers_a_receipt_for_as_long_as_it_is_accepted() {
    // Early in a second, so the test clock's whole second is exercised.
    let clock = ManualClock::at_ms(1_800_000_000_000);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(clock.clone())).unwrap());
    replay_at_the_last_accepted_millisecond(store, clock, false).await;
}

#[tokio::test]
async fn redis_remembers_a_receipt_for_as_long_as_it_is_accepted() {
    let redis = RedisServer::start();
    let store = redis_store(redis.url(), false).await;
    replay_at_the_last_accepted_millisecond(store, ManualClock::now(), true).await;
}

// ---------------------------------------------------------------------------------------------
// Identity: per (iss, jti), whatever the sub
// ---------------------------------------------------------------------------------------------

/// One (iss, jti), signed for two payers in different buckets and for every receipt kind:
/// spent exactly once.
async fn one_jti_two_payers(store: Arc<dyn Store>) {
    let clock = ManualClock::now();
    let issuer = TestIssuer::ed25519("wallet");
    let paywall = engine(store.clone(), &clock, &issuer);
    let (a, b) = payers_in_two_buckets();
    let exp = clock.now_secs() + 300;

    // A payment receipt spent by A; the same (iss, jti) for B, as payment and as top-up.
    let jti = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        pay(
            &paywall,
            &receipt(&issuer, &a, &jti, "payment", "0.01", exp)
        )
        .await,
        Ok(())
    );
    assert_eq!(
        pay(
            &paywall,
            &receipt(&issuer, &b, &jti, "payment", "0.01", exp)
        )
        .await,
        Err("receipt_replayed".into())
    );
    let (status, body) = topup(&paywall, &receipt(&issuer, &b, &jti, "topup", "5", exp)).await;
    assert_eq!(body["code"], "receipt_replayed", "{status} {body}");
    assert_eq!(balance_minor(&store, &b).await, 0);
    assert_eq!(captures(&store).await, 1);

    // A top-up receipt credited to A; the same (iss, jti) for B, as top-up and as payment.
    let jti = uuid::Uuid::new_v4().to_string();
    let (status, body) = topup(&paywall, &receipt(&issuer, &a, &jti, "topup", "5", exp)).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let (status, body) = topup(&paywall, &receipt(&issuer, &b, &jti, "topup", "5", exp)).await;
    assert_eq!(body["code"], "receipt_replayed", "{status} {body}");
    assert_eq!(
        pay(
            &paywall,
            &receipt(&issuer, &b, &jti, "payment", "0.01", exp)
        )
        .await,
        Err("receipt_replayed".into())
    );
    assert_eq!(balance_minor(&store, &a).await, 5_000_000);
    assert_eq!(balance_minor(&store, &b).await, 0);
    assert_eq!(captures(&store).await, 1);

    // A payment receipt held by A's request in flight: B's copy is refused too, and stays
    // refused after A's request is refused upstream and its hold released.
    let jti = uuid::Uuid::new_v4().to_string();
    let held = paywall
        .admit(
            &route(),
            &Method::GET,
            &Uri::from_static("/v1/compute"),
            &auth(&receipt(&issuer, &a, &jti, "payment", "0.01", exp)),
        )
        .await
        .unwrap()
        .unwrap();
    let b_copy = receipt(&issuer, &b, &jti, "payment", "0.01", exp);
    assert!(pay(&paywall, &b_copy)
        .await
        .is_err_and(|c| c == "receipt_replayed"));
    held.settle(Some(500), None).await.unwrap();
    assert_eq!(pay(&paywall, &b_copy).await, Err("receipt_replayed".into()));
    // A keeps its receipt: its retry is served.
    assert_eq!(
        pay(
            &paywall,
            &receipt(&issuer, &a, &jti, "payment", "0.01", exp)
        )
        .await,
        Ok(())
    );
    assert_eq!(captures(&store).await, 2);
}

#[tokio::test]
async fn memory_store_spends_one_jti_once_across_payers() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(SystemClock)).unwrap());
    one_jti_two_payers(store).await;
}

#[tokio::test]
async fn redis_spends_one_jti_once_across_payers() {
    let redis = RedisServer::start();
    one_jti_two_payers(redis_store(redis.url(), false).await).await;
}

#[tokio::test]
async fn redis_cluster_spends_one_jti_once_across_payers() {
    let cluster = RedisCluster::start();
    one_jti_two_payers(redis_store(cluster.url(), true).await).await;
}

/// Two replicas whose clocks differ by 59 s (inside the 60 s margin) share one store that keeps
/// time like the replica ahead: a receipt spent on the replica behind is still refused there at
/// the last millisecond at which it accepts it, although the store's clock is then 59 s later
/// (the record outlives acceptance by the margin, judged on the store's clock).
#[tokio::test]
async fn replicas_with_clocks_apart_inside_the_margin_still_refuse_a_replay() {
    let ahead = ManualClock::at_ms(1_800_000_000_000);
    let behind = ManualClock::at_ms(1_800_000_000_000 - 59_000);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(ahead.clone())).unwrap());
    let issuer = TestIssuer::ed25519("wallet");
    let fast = engine(store.clone(), &ahead, &issuer);
    let slow = engine(store.clone(), &behind, &issuer);
    // Accepted by the slow replica until the end of its current second.
    let exp = behind.now_secs() + 10 - SKEW;
    let r = receipt(&issuer, "agent", "j-replicas", "payment", "0.01", exp);
    assert_eq!(
        pay(&fast, &r).await,
        Err("receipt_expired".into()),
        "the fast one is past it"
    );
    // Spent on the slow replica early, then presented to it at its last accepted millisecond.
    assert_eq!(pay(&slow, &r).await, Ok(()));
    let last_ms = (behind.now_secs() + 10 + 1) * 1000 - 1;
    let step = last_ms - behind.now_ms();
    behind.advance_ms(step);
    ahead.advance_ms(step);
    assert_eq!(pay(&slow, &r).await, Err("receipt_replayed".into()));
    assert_eq!(captures(&store).await, 1);
}

//! Capture at admission (`capture = "admission"` on a fixed-price route): one store round trip
//! for a served request, a void for one that was not served, and the ledger still balancing to
//! the unit under concurrency -- on a private redis-server and on the embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::Value;
use tollgate_e2e::*;
use tollgate_middleware::UsageEvent;

struct Fixture {
    _redis: Option<RedisServer>,
    redis_conn: Option<redis::Connection>,
    wallet: TestIssuer,
    gw: TestGateway,
}

/// `/v1/echo` at 0.01 USD captured at admission (the echo upstream answers `?status=N`).
async fn fixture(on_redis: bool) -> Fixture {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let redis = on_redis.then(RedisServer::start);
    let mut b = gateway().issuer(&wallet);
    if let Some(r) = &redis {
        b = b.redis(r);
    }
    let gw = b
        .route(paid("echo", "/v1/echo", &up, "0.01").with("capture = \"admission\""))
        .start()
        .await;
    let redis_conn = redis.as_ref().map(RedisServer::conn);
    Fixture {
        _redis: redis,
        redis_conn,
        wallet,
        gw,
    }
}

/// `INFO commandstats` calls of EVALSHA and EVAL (top-level script round trips).
fn script_calls(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Today's aggregates (all payers).
async fn usage(gw: &TestGateway) -> Vec<tollgate_middleware::store::DailyUsage> {
    let today = tollgate_middleware::store::utc_day(now_secs() * 1000);
    gw.paywall
        .store()
        .usage(None, &today, &today)
        .await
        .unwrap()
}

async fn events(gw: &TestGateway) -> Vec<UsageEvent> {
    gw.paywall.store().usage_events().await.unwrap()
}

/// Sum of charges minus voids (minor units), and the number of live charges.
fn net(events: &[UsageEvent]) -> (i64, i64) {
    events.iter().fold((0, 0), |(sum, n), e| match e.voids {
        Some(_) => (sum - e.amount_minor as i64, n - 1),
        None => (sum + e.amount_minor as i64, n + 1),
    })
}

async fn receipt_round_trip_and_void(on_redis: bool) {
    let mut f = fixture(on_redis).await;
    // Warm up (scripts loaded), then count the round trips of one served request.
    let r0 = f.wallet.receipt("m", "agent", "0.01");
    assert_eq!(f.gw.pay_get("/v1/echo?status=500", &r0).await.status(), 500);
    assert_eq!(f.gw.pay_get("/v1/echo", &r0).await.status(), 200);
    let before = f.redis_conn.as_mut().map(script_calls);
    let r1 = f.wallet.receipt("m", "agent", "0.01");
    let res = f.gw.pay_get("/v1/echo", &r1).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(pr["success"], true);
    assert_eq!(pr["amount"], "0.01");
    let charged_id = pr["eventId"].as_str().unwrap().to_owned();
    if let (Some(c), Some(b)) = (f.redis_conn.as_mut(), before) {
        assert_eq!(
            script_calls(c) - b,
            1,
            "one store round trip for a served request"
        );
    }
    // Spent: a replay is refused.
    let (status, code) = code_of(f.gw.pay_get("/v1/echo", &r1).await).await;
    assert_eq!((status, code.as_str()), (402, "receipt_replayed"));

    // Not served (upstream 500): charged at admission, then voided -- the receipt works again.
    let r2 = f.wallet.receipt("m", "agent", "0.01");
    let before = f.redis_conn.as_mut().map(script_calls);
    let res = f.gw.pay_get("/v1/echo?status=500", &r2).await;
    assert_eq!(res.status(), 500);
    assert!(res.headers().get("payment-response").is_none());
    if let (Some(c), Some(b)) = (f.redis_conn.as_mut(), before) {
        assert_eq!(script_calls(c) - b, 2, "charge + void for a failed request");
    }
    let res = f.gw.pay_get("/v1/echo", &r2).await;
    assert_eq!(res.status(), 200, "a voided receipt is usable again");

    let ev = events(&f.gw).await;
    let voids: Vec<&UsageEvent> = ev.iter().filter(|e| e.voids.is_some()).collect();
    assert_eq!(voids.len(), 2);
    assert_eq!(voids[1].upstream_status, 500);
    assert_eq!(voids[1].amount_minor, 10_000);
    // Exported: a charge at admission has no upstream status (it was written before the
    // upstream answered) and says when it was captured; its void has the failure's status.
    let charge = ev.iter().find(|e| e.voids.is_none()).unwrap();
    let exported = tollgate::dashboard::events::event_json(charge);
    assert_eq!(exported["upstream_status"], serde_json::Value::Null);
    assert_eq!(exported["captured"], "admission");
    let exported = tollgate::dashboard::events::event_json(voids[1]);
    assert_eq!(exported["upstream_status"], 500);
    assert_eq!(exported["captured"], serde_json::Value::Null);
    let voided = voids[1].voids.clone().unwrap();
    assert!(ev.iter().any(|e| e.id == voided && e.voids.is_none()));
    assert!(ev.iter().any(|e| e.id == charged_id));
    // r0, r1, r2 (served once) = 3 served requests; 0.03 USD.
    assert_eq!(net(&ev), (30_000, 3));
    let usage = usage(&f.gw).await;
    let requests: u64 = usage.iter().map(|d| d.requests).sum();
    assert_eq!(requests, 3, "aggregates moved back by the void: {usage:?}");
    report(
        &format!(
            "capture_admission_receipt_{}",
            if on_redis { "redis" } else { "memory" }
        ),
        serde_json::json!({"round_trips_served": 1, "round_trips_failed": 2, "net_minor": 30_000}),
    );
}

#[tokio::test]
async fn receipts_take_one_round_trip_and_a_failed_request_is_voided_redis() {
    receipt_round_trip_and_void(true).await;
}

#[tokio::test]
async fn receipts_take_one_round_trip_and_a_failed_request_is_voided_memory() {
    receipt_round_trip_and_void(false).await;
}

/// 30 parallel uses of one receipt: exactly one served; the rest refused as replayed (or in
/// use while a failed one is being voided); exactly one charge in the ledger.
async fn one_receipt_in_parallel(on_redis: bool) {
    let f = fixture(on_redis).await;
    let r = f.wallet.receipt("m", "agent", "0.01");
    let results = join_all((0..30).map(|_| f.gw.pay_get("/v1/echo", &r))).await;
    let ok = results.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, 1);
    assert!(results
        .iter()
        .all(|r| r.status() == 200 || r.status() == 402));
    assert_eq!(net(&events(&f.gw).await), (10_000, 1));
}

#[tokio::test]
async fn one_receipt_in_parallel_is_served_once_redis() {
    one_receipt_in_parallel(true).await;
}

#[tokio::test]
async fn one_receipt_in_parallel_is_served_once_memory() {
    one_receipt_in_parallel(false).await;
}

/// A balance of 0.50 USD; 80 parallel requests at 0.01, every third one failing upstream:
/// the served ones are charged, the failed ones voided, and balance, ledger and aggregates
/// agree to the unit. Then exactly as many as the balance covers are served.
async fn balance_in_parallel(on_redis: bool) {
    let f = fixture(on_redis).await;
    let token = f.gw.topup(&f.wallet, "agent", "0.50").await;
    let results = join_all((0..80).map(|i| {
        let path = if i % 3 == 0 {
            "/v1/echo?status=503"
        } else {
            "/v1/echo"
        };
        let gw = &f.gw;
        let token = token.clone();
        async move { gw.token_get(path, &token).await.status().as_u16() }
    }))
    .await;
    let served = results.iter().filter(|s| **s == 200).count() as i64;
    let failed = results.iter().filter(|s| **s == 503).count() as i64;
    let refused = results.iter().filter(|s| **s == 402).count() as i64;
    assert_eq!(served + failed + refused, 80, "{results:?}");
    let ev = events(&f.gw).await;
    let (net_minor, net_n) = net(&ev);
    assert_eq!(net_n, served);
    assert_eq!(net_minor, served * 10_000);
    let ids: BTreeSet<&str> = ev.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), ev.len(), "event ids are unique");
    let balance = f.gw.balance(&token).await;
    let available: Decimal = balance["balances"]["USD"]["available"]
        .as_str()
        .or_else(|| balance["available"].as_str())
        .unwrap_or_else(|| panic!("balance view {balance}"))
        .parse()
        .unwrap();
    assert_eq!(
        available,
        Decimal::new(50, 2) - Decimal::new(served, 2),
        "balance = top-up - served charges: {balance}"
    );
    // Spend the rest: exactly as many served as it covers.
    let left = (available * Decimal::new(100, 0))
        .normalize()
        .to_string()
        .parse::<usize>()
        .unwrap();
    let results = join_all((0..left + 10).map(|_| f.gw.token_get("/v1/echo", &token))).await;
    let ok = results.iter().filter(|r| r.status() == 200).count();
    assert_eq!(ok, left);
    let usage = usage(&f.gw).await;
    let requests: i64 = usage.iter().map(|d| d.requests as i64).sum();
    assert_eq!(requests, served + left as i64);
    let _: Value = f.gw.settled(&token).await;
    report(
        &format!(
            "capture_admission_balance_{}",
            if on_redis { "redis" } else { "memory" }
        ),
        serde_json::json!({"requests": 80, "served": served, "failed": failed, "refused": refused, "then_served": left}),
    );
}

#[tokio::test]
async fn balance_charges_and_voids_balance_to_the_unit_redis() {
    balance_in_parallel(true).await;
}

#[tokio::test]
async fn balance_charges_and_voids_balance_to_the_unit_memory() {
    balance_in_parallel(false).await;
}

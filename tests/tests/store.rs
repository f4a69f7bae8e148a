//! The store state machine, one test body run against both stores: the embedded memory store
//! and a real `redis-server` started for this suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tollgate_e2e::{RedisCluster, RedisServer};
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    bucket_of, AuthorizeOutcome, IdempotencyClaim, Reservation, SettleOutcome, Settlement,
};
use tollgate_middleware::{
    ManualClock, MemoryStore, RedisStore, RedisStoreOptions, Store, UsageEvent,
};

fn reservation(payer: &str, jti: &str) -> Reservation {
    Reservation {
        id: uuid::Uuid::new_v4().to_string(),
        payer: payer.into(),
        issuer: "iss".into(),
        receipt_id: jti.into(),
        hold: Duration::from_secs(60),
        spent_until_ms: (tollgate_e2e::now_secs() + 600) * 1000,
        mandate: None,
    }
}

fn event(r: &Reservation) -> UsageEvent {
    UsageEvent {
        id: String::new(),
        time_ms: 1,
        payer: r.payer.clone(),
        route: "compute".into(),
        method: "POST".into(),
        units: [("request".to_owned(), 1)].into(),
        unit_prices: Default::default(),
        amount_minor: 10_000,
        uncharged_minor: 0,
        currency: "USD".into(),
        scale: 6,
        credential: format!("receipt:iss:{}", r.receipt_id),
        reservation: r.id.clone(),
        upstream_status: 200,
        voids: None,
    }
}

async fn cluster_store(cluster: &RedisCluster) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url: cluster.url(),
        cluster: true,
        prefix: "t".into(),
        timeout: Duration::from_millis(2000),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

async fn redis_store(redis: &RedisServer) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url: redis.url(),
        cluster: false,
        prefix: "t".into(),
        timeout: Duration::from_millis(500),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

async fn single_use_lifecycle(store: Arc<dyn Store>) {
    let r = reservation("alice", "j1");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    // A second request with the same receipt while the first is in flight.
    let r2 = Reservation {
        id: "other".into(),
        ..r.clone()
    };
    assert_eq!(store.authorize(&r2).await.unwrap(), AuthorizeOutcome::InUse);
    // Released: usable again.
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::Released
    );
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::NotHeld
    );
    assert_eq!(
        store.authorize(&r2).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    // The loser cannot capture or release the winner's hold.
    assert_eq!(
        store
            .settle(&r, &Settlement::Capture(Box::new(event(&r))))
            .await
            .unwrap(),
        SettleOutcome::Conflict
    );
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::NotHeld
    );
    let SettleOutcome::Captured { event_id } = store
        .settle(&r2, &Settlement::Capture(Box::new(event(&r2))))
        .await
        .unwrap()
    else {
        panic!("capture failed")
    };
    // Settling twice never appends twice.
    assert_eq!(
        store
            .settle(&r2, &Settlement::Capture(Box::new(event(&r2))))
            .await
            .unwrap(),
        SettleOutcome::AlreadyCaptured {
            event_id: event_id.clone()
        }
    );
    assert_eq!(
        store.authorize(&reservation("alice", "j1")).await.unwrap(),
        AuthorizeOutcome::Replayed
    );
    // The same jti from another issuer is another receipt.
    let other_issuer = Reservation {
        issuer: "iss2".into(),
        ..reservation("alice", "j1")
    };
    assert_eq!(
        store.authorize(&other_issuer).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    let events = store.usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.id, event_id);
    // The day's per-payer totals (the admin payer listing) moved in the same step, once.
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let alice = totals.iter().find(|p| p.payer == "alice").unwrap();
    assert_eq!((alice.requests, alice.amount_minor["USD"]), (1, 10_000));
    assert_eq!(
        (
            e.payer.as_str(),
            e.amount_minor,
            e.amount().to_string().as_str()
        ),
        ("alice", 10_000, "0.01")
    );
    assert_eq!(e.reservation, r2.id);
}

async fn blocked_payer(store: Arc<dyn Store>) {
    store.set_blocked("mallory", true).await.unwrap();
    assert_eq!(
        store
            .authorize(&reservation("mallory", "b1"))
            .await
            .unwrap(),
        AuthorizeOutcome::PayerBlocked
    );
    store.set_blocked("mallory", false).await.unwrap();
    assert_eq!(
        store
            .authorize(&reservation("mallory", "b1"))
            .await
            .unwrap(),
        AuthorizeOutcome::Reserved
    );
}

async fn concurrent_authorize(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = reservation("bob", "race");
            let out = s.authorize(&r).await.unwrap();
            if out == AuthorizeOutcome::Reserved {
                s.settle(&r, &Settlement::Capture(Box::new(event(&r))))
                    .await
                    .unwrap();
            }
            out
        }));
    }
    let mut reserved = 0;
    for t in tasks {
        if t.await.unwrap() == AuthorizeOutcome::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 1);
    let n = store
        .usage_events()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.payer == "bob")
        .count();
    assert_eq!(n, 1);
}

/// x402 `deferred`: one job per captured authorization, leased claims, retry, failure that
/// blocks the payer, resolution that unblocks it.
async fn deferred_queue(store: Arc<dyn Store>) {
    use tollgate_middleware::store::JobOutcome;
    let lease = Duration::from_secs(60);
    let r1 = reservation("0xdeferred1", "n1");
    let r2 = reservation("0xdeferred2", "n2");
    for r in [&r1, &r2] {
        assert_eq!(
            store.authorize(r).await.unwrap(),
            AuthorizeOutcome::Reserved
        );
        let first = store
            .capture_deferred(r, &event(r), "{\"job\":1}")
            .await
            .unwrap();
        let SettleOutcome::Captured { event_id } = first else {
            panic!("{first:?}")
        };
        // A retried capture learns the first outcome and queues nothing more.
        assert_eq!(
            store
                .capture_deferred(r, &event(r), "{\"job\":2}")
                .await
                .unwrap(),
            SettleOutcome::AlreadyCaptured { event_id }
        );
    }
    let jobs = store.claim_settlements(10, lease).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs
        .iter()
        .all(|j| j.body == "{\"job\":1}" && j.attempts == 0));
    // Leased: nobody else gets them now.
    assert!(store.claim_settlements(10, lease).await.unwrap().is_empty());
    let j1 = jobs.iter().find(|j| j.payer == "0xdeferred1").unwrap();
    let j2 = jobs.iter().find(|j| j.payer == "0xdeferred2").unwrap();
    store
        .finish_settlement(
            j1,
            &JobOutcome::Retry {
                after: Duration::ZERO,
                error: "timeout".into(),
            },
        )
        .await
        .unwrap();
    store
        .finish_settlement(
            j2,
            &JobOutcome::Failed {
                error: "insufficient_funds".into(),
            },
        )
        .await
        .unwrap();
    // A retry is due at least 1 ms later (the store's resolution).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let again = store.claim_settlements(10, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (j1.id.as_str(), 1)
    );
    store
        .finish_settlement(&again[0], &JobOutcome::Done)
        .await
        .unwrap();
    let failed = store.failed_settlements().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].payer.as_str(), failed[0].error.as_str()),
        ("0xdeferred2", "insufficient_funds")
    );
    // The failed payer is blocked.
    let r3 = reservation("0xdeferred2", "n3");
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::PayerBlocked
    );
    assert!(store.resolve_settlement(&failed[0].id).await.unwrap());
    assert!(!store.resolve_settlement(&failed[0].id).await.unwrap());
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert!(store.failed_settlements().await.unwrap().is_empty());
    assert!(store.claim_settlements(10, lease).await.unwrap().is_empty());
}

/// Request `Idempotency-Key`s: claim, in flight, done with the event, mismatch, forget, and
/// only the claiming token may finish a claim.
async fn request_idempotency(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(60);
    let claim = |payer: &'static str, key: &'static str, fp: &'static str, token: &'static str| {
        let store = store.clone();
        async move {
            store
                .idempotency_claim(payer, key, fp, token, ttl)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        claim("p1", "k", "fp", "t1").await,
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        claim("p1", "k", "fp", "t2").await,
        IdempotencyClaim::InFlight
    );
    assert_eq!(
        claim("p1", "k", "other", "t2").await,
        IdempotencyClaim::Mismatch
    );
    // Another payer's same key is its own.
    assert_eq!(
        claim("p2", "k", "fp", "t3").await,
        IdempotencyClaim::Claimed
    );
    // A foreign token changes nothing.
    store
        .idempotency_finish("p1", "k", "t2", Some(("e-9", 9)))
        .await
        .unwrap();
    store
        .idempotency_finish("p1", "k", "t2", None)
        .await
        .unwrap();
    assert_eq!(
        claim("p1", "k", "fp", "t2").await,
        IdempotencyClaim::InFlight
    );
    store
        .idempotency_finish(
            "p1",
            "k",
            "t1",
            Some(("1795370240883-0", 1_795_370_240_883)),
        )
        .await
        .unwrap();
    let done = IdempotencyClaim::Done {
        event_id: "1795370240883-0".into(),
        time_ms: 1_795_370_240_883,
    };
    assert_eq!(claim("p1", "k", "fp", "t4").await, done);
    // Done is final: forgetting it is refused.
    store
        .idempotency_finish("p1", "k", "t1", None)
        .await
        .unwrap();
    assert_eq!(claim("p1", "k", "fp", "t4").await, done);
    // Forgotten (not charged): free again.
    store
        .idempotency_finish("p2", "k", "t3", None)
        .await
        .unwrap();
    assert_eq!(
        claim("p2", "k", "fp", "t5").await,
        IdempotencyClaim::Claimed
    );
    // Concurrent claims of one key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .idempotency_claim("p3", "race", "fp", &format!("t{i}"), ttl)
                .await
                .unwrap()
        }));
    }
    let mut claimed = 0;
    for t in tasks {
        if t.await.unwrap() == IdempotencyClaim::Claimed {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn memory_request_idempotency() {
    request_idempotency(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_request_idempotency() {
    let redis = RedisServer::start();
    request_idempotency(redis_store(&redis).await).await;
    // One hash per (payer, key), in the payer's bucket, every one with its TTL.
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:ridem:*").query(&mut c).unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in keys {
        assert!(k.contains(":{b") && k.contains("}:ridem:"), "{k}");
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{k}: {ttl}");
    }
}

#[tokio::test]
async fn memory_deferred_queue() {
    deferred_queue(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_deferred_queue() {
    let redis = RedisServer::start();
    deferred_queue(redis_store(&redis).await).await;
}

#[tokio::test]
async fn memory_single_use_lifecycle() {
    single_use_lifecycle(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_single_use_lifecycle() {
    let redis = RedisServer::start();
    single_use_lifecycle(redis_store(&redis).await).await;
}

#[tokio::test]
async fn memory_blocked_payer() {
    blocked_payer(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_blocked_payer() {
    let redis = RedisServer::start();
    blocked_payer(redis_store(&redis).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_authorize() {
    concurrent_authorize(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrent_authorize() {
    let redis = RedisServer::start();
    concurrent_authorize(redis_store(&redis).await).await;
}

#[tokio::test]
async fn memory_hold_expires_with_the_clock() {
    let clock = ManualClock::at_ms(1_000_000);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let r = Reservation {
        hold: Duration::from_secs(90),
        spent_until_ms: 2_000_000,
        ..reservation("carol", "h1")
    };
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    clock.advance_ms(89_000);
    assert_eq!(store.authorize(&r).await.unwrap(), AuthorizeOutcome::InUse);
    clock.advance_ms(2_000);
    // The holder died without settling: after the hold the receipt is usable again.
    assert_eq!(
        store
            .authorize(&Reservation {
                id: "n".into(),
                ..r.clone()
            })
            .await
            .unwrap(),
        AuthorizeOutcome::Reserved
    );
}

#[tokio::test]
async fn redis_keys_share_one_hash_tag_and_expire() {
    let redis = RedisServer::start();
    let store = redis_store(&redis).await;
    let r = reservation("dave", "k1");
    store.authorize(&r).await.unwrap();
    store
        .settle(&r, &Settlement::Capture(Box::new(event(&r))))
        .await
        .unwrap();
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("t:*").query(&mut c).unwrap();
    // Receipt state, ledger, payer and bucket aggregates, the bucket's per-payer day totals --
    // and the receipt's owner key, in the receipt's own slot (single use across payers).
    assert_eq!(keys.len(), 6, "{keys:?}");
    let tag = format!("{{b{:02}}}", r.bucket());
    let owner_tag = format!("{{b{:02}}}", bucket_of(&r.fingerprint()));
    let owner_key = format!("t:{owner_tag}:ro:{}", r.fingerprint());
    assert!(keys.contains(&owner_key), "{keys:?} holds {owner_key}");
    assert!(
        keys.iter()
            .filter(|k| **k != owner_key)
            .all(|k| k.contains(&tag)),
        "{keys:?} all carry {tag}"
    );
    // Both remembered until the reservation's spent-until (600 s here), not forever.
    for k in [keys.iter().find(|k| k.contains(":r:")).unwrap(), &owner_key] {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut c).unwrap();
        assert!(ttl > 500_000 && ttl <= 600_000, "{k}: ttl {ttl}");
    }
    // Every aggregate expires after 400 days (only the ledger is kept forever).
    for k in keys.iter().filter(|k| k.contains(":agg")) {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query(&mut c).unwrap();
        assert!(
            ttl > 399 * 86_400_000 && ttl <= 400 * 86_400_000,
            "{k}: ttl {ttl}"
        );
    }
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_pass() {
    let mut redis = RedisServer::start();
    let store = redis_store(&redis).await;
    redis.kill();
    let err = store.authorize(&reservation("erin", "d1")).await;
    assert!(err.is_err(), "{err:?}");
    redis.restart();
    // Recovers by itself.
    let mut ok = false;
    for _ in 0..50 {
        if store.authorize(&reservation("erin", "d2")).await == Ok(AuthorizeOutcome::Reserved) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "store did not reconnect");
}

fn hold(payer: &str, amount: u64) -> tollgate_middleware::store::Hold {
    tollgate_middleware::store::Hold {
        id: uuid::Uuid::new_v4().to_string(),
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor: amount,
        ttl: Duration::from_secs(60),
        mandate: None,
        plan: None,
    }
}

fn topup(payer: &str, amount: i64, key: &str) -> tollgate_middleware::store::Credit {
    tollgate_middleware::store::Credit {
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor: amount,
        idempotency: tollgate_middleware::store::Idempotency::Key(key.into()),
        keep_until_ms: (tollgate_e2e::now_secs() + 600) * 1000,
        reason: "test".into(),
        source: "admin".into(),
    }
}

async fn balance_lifecycle(store: Arc<dyn Store>) {
    use tollgate_middleware::store::{CreditOutcome, HoldOutcome, HoldSettleOutcome};
    let applied = store.credit(&topup("pat", 1_000, "t1")).await.unwrap();
    let CreditOutcome::Applied {
        credit_id,
        balance_minor: 1_000,
    } = applied
    else {
        panic!("{applied:?}")
    };
    // The same key applies once.
    assert_eq!(
        store.credit(&topup("pat", 1_000, "t1")).await.unwrap(),
        CreditOutcome::Duplicate {
            credit_id,
            balance_minor: 1_000
        }
    );
    assert_eq!(
        store.credit(&topup("pat", -5_000, "d1")).await.unwrap(),
        CreditOutcome::Insufficient {
            balance_minor: 1_000
        }
    );
    let h1 = hold("pat", 300);
    assert_eq!(
        store.hold(&h1).await.unwrap(),
        HoldOutcome::Held { balance_minor: 700 }
    );
    assert_eq!(
        store.hold(&hold("pat", 800)).await.unwrap(),
        HoldOutcome::Insufficient { balance_minor: 700 }
    );
    let acct = store.account("pat").await.unwrap();
    assert_eq!(
        (
            acct.balances["USD"].available,
            acct.balances["USD"].held,
            acct.holds
        ),
        (700, 300, 1)
    );
    // Capture less than held: the rest returns.
    let mut e = event(&reservation("pat", "x"));
    e.amount_minor = 0;
    let out = store.capture_hold(&h1, 120, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 120,
        uncharged_minor: 0,
        balance_minor: 880,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let again = store.capture_hold(&h1, 120, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 120,
        balance_minor: 880,
        ..
    } = again
    else {
        panic!("{again:?}")
    };
    assert_eq!(
        again, out,
        "a retried capture learns the first outcome, never charges twice"
    );
    // Capture more than held: taken from the balance as far as it goes, never negative.
    let h2 = hold("pat", 100);
    store.hold(&h2).await.unwrap();
    let out = store.capture_hold(&h2, 5_000, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 880,
        uncharged_minor: 4_120,
        balance_minor: 0,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    // Release returns everything.
    store.credit(&topup("pat", 50, "t2")).await.unwrap();
    let h3 = hold("pat", 50);
    store.hold(&h3).await.unwrap();
    assert_eq!(
        store.release_hold(&h3).await.unwrap(),
        HoldSettleOutcome::Released
    );
    assert_eq!(
        store.release_hold(&h3).await.unwrap(),
        HoldSettleOutcome::NotHeld
    );
    let acct = store.account("pat").await.unwrap();
    let b = acct.balances["USD"];
    assert_eq!(
        (b.available, b.held, b.credited, b.captured, acct.holds),
        (50, 0, 1_050, 1_000, 0)
    );
    let events: Vec<_> = store
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payer == "pat")
        .collect();
    assert_eq!(
        events.iter().map(|e| e.amount_minor).collect::<Vec<_>>(),
        [120, 880]
    );
    assert_eq!(events[1].uncharged_minor, 4_120);
    // Aggregates were updated in the same steps.
    let day = tollgate_middleware::store::utc_day(e.time_ms);
    let rows = store.usage(Some("pat"), &day, &day).await.unwrap();
    assert_eq!((rows[0].requests, rows[0].amount_minor["USD"]), (2, 1_000));
    let totals = store.payer_totals(&day, &day).await.unwrap();
    let pat = totals.iter().find(|p| p.payer == "pat").unwrap();
    assert_eq!((pat.requests, pat.amount_minor["USD"]), (2, 1_000));
    // A blocked payer cannot hold.
    store.set_blocked("pat", true).await.unwrap();
    assert_eq!(
        store.hold(&hold("pat", 1)).await.unwrap(),
        HoldOutcome::PayerBlocked
    );
    // Its account still reads (the admin API shows it), and says it is blocked.
    let acct = store.account("pat").await.unwrap();
    assert!(acct.blocked);
    assert_eq!(acct.balances["USD"].available, 50);
    store.set_blocked("pat", false).await.unwrap();
    assert!(!store.account("pat").await.unwrap().blocked);
}

#[tokio::test]
async fn memory_balance_lifecycle() {
    balance_lifecycle(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_balance_lifecycle() {
    let redis = RedisServer::start();
    balance_lifecycle(redis_store(&redis).await).await;
}

#[tokio::test]
async fn memory_expired_holds_are_given_back() {
    use tollgate_middleware::store::HoldOutcome;
    let clock = ManualClock::at_ms(5_000_000);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    store.credit(&topup("quinn", 100, "t")).await.unwrap();
    let h = tollgate_middleware::store::Hold {
        ttl: Duration::from_secs(90),
        ..hold("quinn", 100)
    };
    store.hold(&h).await.unwrap();
    assert_eq!(
        store.hold(&hold("quinn", 100)).await.unwrap(),
        HoldOutcome::Insufficient { balance_minor: 0 }
    );
    clock.advance_ms(91_000);
    // The holder died without settling: the next hold gets the money back first.
    assert_eq!(
        store.hold(&hold("quinn", 100)).await.unwrap(),
        HoldOutcome::Held { balance_minor: 0 }
    );
}

#[tokio::test]
async fn redis_event_export_resumes_across_buckets() {
    let redis = RedisServer::start();
    let store = redis_store(&redis).await;
    // Payers in many buckets, so ids interleave across streams.
    for i in 0..40 {
        let r = reservation(&format!("payer-{i}"), &format!("j{i}"));
        store.authorize(&r).await.unwrap();
        store
            .settle(&r, &Settlement::Capture(Box::new(event(&r))))
            .await
            .unwrap();
    }
    let all = store.events_after(None, 1000).await.unwrap();
    assert_eq!(all.len(), 40);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.events_after(after.as_deref(), 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.id.clone());
        paged.extend(page);
    }
    assert_eq!(
        paged.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        all.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
}

/// The same state machines on a real 3-master Redis Cluster (every script keeps its keys in
/// one hash slot; a cross-slot script would fail with CROSSSLOT here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_runs_every_script_unchanged() {
    let cluster = RedisCluster::start();
    let store = cluster_store(&cluster).await;
    single_use_lifecycle(store.clone()).await;
    deferred_queue(store.clone()).await;
    request_idempotency(store.clone()).await;
    blocked_payer(store.clone()).await;
    concurrent_authorize(store.clone()).await;
    balance_lifecycle(store.clone()).await;
    // Payers spread over many slots (and so over all three masters).
    for i in 0..32 {
        let r = reservation(&format!("spread-{i}"), &format!("s{i}"));
        assert_eq!(
            store.authorize(&r).await.unwrap(),
            AuthorizeOutcome::Reserved
        );
        store
            .settle(&r, &Settlement::Capture(Box::new(event(&r))))
            .await
            .unwrap();
    }
    let events = store.usage_events().await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.payer.starts_with("spread-"))
            .count(),
        32
    );
    assert!(
        cluster.keys_per_node().iter().all(|n| *n > 0),
        "keys on every master: {:?}",
        cluster.keys_per_node()
    );
}

#[tokio::test]
async fn memory_rate_limit_is_gcra() {
    use tollgate_middleware::store::RateLimit;
    let clock = ManualClock::at_ms(10_000_000);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    let limit = RateLimit {
        per_second: 2,
        burst: 2,
    };
    assert_eq!(store.rate("p", "r", limit).await.unwrap(), None);
    assert_eq!(store.rate("p", "r", limit).await.unwrap(), None);
    // Burst used: the next cell is due in one interval (500 ms).
    assert_eq!(
        store.rate("p", "r", limit).await.unwrap(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(store.rate("p", "other-route", limit).await.unwrap(), None);
    clock.advance_ms(500);
    assert_eq!(store.rate("p", "r", limit).await.unwrap(), None);
    assert!(store.rate("p", "r", limit).await.unwrap().is_some());
}

#[tokio::test]
async fn redis_rate_limit_allows_the_burst_then_refuses() {
    use tollgate_middleware::store::RateLimit;
    let redis = RedisServer::start();
    let store = redis_store(&redis).await;
    let limit = RateLimit {
        per_second: 1,
        burst: 3,
    };
    for _ in 0..3 {
        assert_eq!(store.rate("p", "r", limit).await.unwrap(), None);
    }
    let retry = store.rate("p", "r", limit).await.unwrap().unwrap();
    assert!(
        retry > Duration::from_millis(900) && retry <= Duration::from_millis(1000),
        "{retry:?}"
    );
}

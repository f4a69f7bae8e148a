//! Backend-specific store tests: Redis key layout and expiry, a server going down, event
//! export across buckets, the cluster's spread, and the sqlite store under a manual clock.
//! The state machines every backend shares are the conformance suite's
//! (`tests/conformance/`), run there on sqlite, Redis and a Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tollgate_e2e::fixtures::{event, reservation};
use tollgate_e2e::{RedisCluster, RedisServer};
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{bucket_of, AuthorizeOutcome, EventPage, Reservation, Settlement};
use tollgate_middleware::{Clock, ManualClock, RedisStore, RedisStoreOptions, SqliteStore, Store};

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

#[tokio::test]
async fn sqlite_hold_expires_with_the_clock() {
    let clock = ManualClock::at_ms(1_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
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

#[tokio::test]
async fn sqlite_expired_holds_are_given_back() {
    use tollgate_middleware::store::HoldOutcome;
    let clock = ManualClock::at_ms(5_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
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
    let all = store
        .events(EventPage::After {
            after: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 40);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .events(EventPage::After {
                after: after.as_deref(),
                limit: 7,
            })
            .await
            .unwrap();
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

/// Payers spread over a real 3-master Redis Cluster (every script keeps its keys in one hash
/// slot; a cross-slot script would fail with CROSSSLOT here). The state machines themselves
/// run on the cluster in the conformance suite (`tests/conformance/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_runs_every_script_unchanged() {
    let cluster = RedisCluster::start();
    let store = cluster_store(&cluster).await;
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
async fn sqlite_rate_limit_is_gcra() {
    use tollgate_middleware::store::RateLimit;
    let clock = ManualClock::at_ms(10_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
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

/// Expired holds are swept only when a balance looks short (as `hold.lua`): a hold that
/// expired but was not swept can still be captured; once swept it is gone.
#[tokio::test]
async fn sqlite_expired_holds_wait_for_a_short_balance() {
    use tollgate_middleware::store::{HoldOutcome, HoldSettleOutcome};
    let clock = ManualClock::at_ms(5_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
    store.credit(&topup("sam", 100, "t")).await.unwrap();
    let h = hold("sam", 40);
    store.hold(&h).await.unwrap();
    clock.advance_ms(61_000);
    // Covered without the expired hold's money: nothing swept.
    assert_eq!(
        store.hold(&hold("sam", 60)).await.unwrap(),
        HoldOutcome::Held { balance_minor: 0 }
    );
    let e = event(&reservation("sam", "x"));
    assert!(matches!(
        store.capture_hold(&h, 40, &e).await.unwrap(),
        HoldSettleOutcome::Captured {
            charged_minor: 40,
            ..
        }
    ));
    // A blocked payer's account is read as it is (not swept), as on Redis.
    let h2 = hold("sam", 0);
    store.hold(&h2).await.unwrap();
    clock.advance_ms(61_000);
    store.set_blocked("sam", true).await.unwrap();
    assert_eq!(store.account("sam").await.unwrap().holds, 2);
    store.set_blocked("sam", false).await.unwrap();
    assert_eq!(store.account("sam").await.unwrap().holds, 0);
}

/// A receipt hold that expired is not renewed back to life (Redis: its key expired).
#[tokio::test]
async fn sqlite_expired_receipt_holds_are_not_renewed() {
    use tollgate_middleware::store::Renewal;
    let clock = ManualClock::at_ms(1_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
    let r = Reservation {
        spent_until_ms: 9_000_000,
        ..reservation("rita", "r1")
    };
    store.authorize(&r).await.unwrap();
    assert!(store
        .renew(Renewal::Receipt(&r), Duration::from_secs(60))
        .await
        .unwrap());
    clock.advance_ms(61_000);
    assert!(!store
        .renew(Renewal::Receipt(&r), Duration::from_secs(60))
        .await
        .unwrap());
}

/// A balance charge at admission can be voided while its marker lives -- the hold time plus
/// 60 s, as the Redis marker -- and not after.
#[tokio::test]
async fn sqlite_admission_charge_void_window() {
    use tollgate_middleware::store::{void_event, ChargeOutcome, VoidOutcome};
    let clock = ManualClock::at_ms(1_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
    store.credit(&topup("val", 100, "t")).await.unwrap();
    let h = hold("val", 10);
    let mut e = event(&reservation("val", "x"));
    e.amount_minor = 10;
    let ChargeOutcome::Charged { event_id, .. } = store
        .charge_at_admission(ChargeFrom::Balance(&h), &e)
        .await
        .unwrap()
    else {
        panic!("not charged")
    };
    e.id = event_id;
    clock.advance_ms(120_001);
    assert_eq!(
        store
            .void_admission(
                ChargeFrom::Balance(&h),
                &e,
                &void_event(&e, clock.now_ms(), 0)
            )
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
}

/// Ledger ids never go back in time, so the ledger pages in id order even when writers reach
/// the store in another order than they read the clock (they read it before the lock).
#[tokio::test]
async fn sqlite_ledger_ids_never_go_back() {
    let clock = ManualClock::at_ms(1_000_000);
    let store = SqliteStore::memory(Arc::new(clock.clone())).unwrap();
    let first = reservation("lia", "l1");
    store
        .settle(&first, &Settlement::Capture(Box::new(event(&first))))
        .await
        .unwrap();
    clock.advance_ms(-500);
    let second = reservation("lia", "l2");
    store
        .settle(&second, &Settlement::Capture(Box::new(event(&second))))
        .await
        .unwrap();
    let all = store
        .events(EventPage::After {
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let after_first = store
        .events(EventPage::After {
            after: Some(&all[0].id),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(after_first.len(), 1, "{all:?}");
    assert_eq!(after_first[0].reservation, second.id);
}

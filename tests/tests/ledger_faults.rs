//! The drainer under faults, with a real redis-server and a real PostgreSQL: killed between
//! insert and trim, two drainers at once, PostgreSQL stopped for 10 s under paid load.
//! Afterwards every entry is in the ledger exactly once and the sums equal what was captured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::fixtures::{event, reservation};
use tollgate_e2e::postgres::PostgresServer;
use tollgate_e2e::*;
use tollgate_middleware::ledger::{Drainer, DrainerOptions, LedgerOptions, PgLedger};
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    AuthorizeOutcome, Credit, CreditOutcome, Idempotency, SettleOutcome, Settlement,
};
use tollgate_middleware::{RedisStore, RedisStoreOptions};

async fn redis_store(redis: &RedisServer) -> Arc<RedisStore> {
    let opts = RedisStoreOptions {
        url: redis.url(),
        timeout: Duration::from_secs(2),
        ..RedisStoreOptions::default()
    };
    Arc::new(
        RedisStore::connect(opts)
            .await
            .unwrap()
            .with_ledger_of_record(),
    )
}

fn pg_ledger(pg: &PostgresServer) -> Arc<PgLedger> {
    let mut options = LedgerOptions::new(pg.url().parse().unwrap());
    options.scales = [("USD".to_owned(), 6)].into();
    Arc::new(PgLedger::new(options))
}

/// Capture `n` receipt-paid requests spread over `payers` (0.01 USD each); returns their count.
async fn captures(store: &RedisStore, payers: &[&str], n: usize, tag: &str) -> usize {
    for i in 0..n {
        let r = reservation(payers[i % payers.len()], &format!("{tag}-{i}"));
        assert_eq!(
            store.authorize(&r).await.unwrap(),
            AuthorizeOutcome::Reserved
        );
        let s = Settlement::Capture(Box::new(event(&r)));
        assert!(matches!(
            store.settle(&r, &s).await.unwrap(),
            SettleOutcome::Captured { .. }
        ));
    }
    n
}

async fn credit(store: &RedisStore, payer: &str, key: &str, amount_minor: i64) {
    let c = Credit {
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor,
        idempotency: Idempotency::Key(key.into()),
        keep_until_ms: (now_secs() + 600) * 1000,
        reason: "test".into(),
        source: "admin".into(),
    };
    assert!(matches!(
        store.credit(&c).await.unwrap(),
        CreditOutcome::Applied { .. }
    ));
}

async fn one_number(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Drain with `d` until Redis holds nothing more (at most 30 s).
async fn drain_all(store: &RedisStore, d: &mut Drainer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = d.drain_once().await;
        if store.ledger_backlog().await.unwrap().entries == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "backlog not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_drainer_killed_between_insert_and_trim_loses_nothing_and_duplicates_nothing() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let store = redis_store(&redis).await;
    let ledger = pg_ledger(&pg);
    let payers = ["p1", "p2", "p3", "p4", "p5"];
    let n = captures(&store, &payers, 40, "kill").await;
    for p in &payers[..4] {
        credit(&store, p, &format!("c-{p}"), 250_000).await;
    }
    assert_eq!(store.ledger_backlog().await.unwrap().entries, 44);

    // Drainer A inserts one batch, then "dies" before trimming it.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let a = Drainer::new(store.clone(), ledger.clone())
        .options(DrainerOptions {
            batch: 5,
            lease: Duration::from_millis(300),
            ..DrainerOptions::default()
        })
        .stall_after_insert(tx);
    let task = tokio::spawn(a.run());
    rx.await.unwrap();
    task.abort();
    let _ = task.await;
    let db = pg.client().await;
    let inserted = one_number(&db, "SELECT count(*) FROM ledger_events").await
        + one_number(&db, "SELECT count(*) FROM ledger_credits").await;
    assert!((1..=5).contains(&inserted), "{inserted}");
    // Nothing was trimmed: the batch it inserted is still in Redis.
    assert_eq!(store.ledger_backlog().await.unwrap().entries, 44);

    // Drainer B (once A's lease lapsed) drains everything, A's batch included.
    let mut b = Drainer::new(store.clone(), ledger.clone()).options(DrainerOptions {
        batch: 7,
        ..DrainerOptions::default()
    });
    drain_all(&store, &mut b).await;
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_events").await,
        i64::try_from(n).unwrap()
    );
    assert_eq!(
        one_number(&db, "SELECT count(DISTINCT reservation) FROM ledger_events").await,
        40
    );
    assert_eq!(
        one_number(&db, "SELECT sum(amount_minor)::INT8 FROM ledger_events").await,
        400_000
    );
    assert_eq!(
        one_number(&db, "SELECT sum(amount_minor)::INT8 FROM ledger_credits").await,
        1_000_000
    );
    // B inserted exactly what A had not.
    assert_eq!(i64::try_from(b.status().drained()).unwrap(), 44 - inserted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drainers_at_once_insert_every_entry_exactly_once() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let store = redis_store(&redis).await;
    let ledger = pg_ledger(&pg);
    // Leases of a few ms lapse between batches: the two drainers overlap on buckets.
    let options = |id: &str| DrainerOptions {
        id: id.into(),
        batch: 3,
        lease: Duration::from_millis(3),
        idle: Duration::from_millis(5),
        ..DrainerOptions::default()
    };
    let a = Drainer::new(store.clone(), ledger.clone()).options(options("a"));
    let b = Drainer::new(store.clone(), ledger.clone()).options(options("b"));
    let (sa, sb) = (a.status(), b.status());
    let ta = tokio::spawn(a.run());
    let tb = tokio::spawn(b.run());
    let payers = ["q1", "q2", "q3", "q4", "q5", "q6", "q7"];
    let mut n = 0;
    for round in 0..10 {
        n += captures(&store, &payers, 15, &format!("two-{round}")).await;
        credit(&store, payers[round % 7], &format!("k-{round}"), 1_000).await;
    }
    assert_eq!(n, 150);
    let db = pg.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sa.drained() + sb.drained() < 160 || store.ledger_backlog().await.unwrap().entries > 0 {
        assert!(Instant::now() < deadline, "not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ta.abort();
    tb.abort();
    // Each entry was new to the ledger exactly once, whichever drainer inserted it.
    assert_eq!(sa.drained() + sb.drained(), 160);
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_events").await,
        150
    );
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_credits").await,
        10
    );
    assert_eq!(
        one_number(&db, "SELECT sum(amount_minor)::INT8 FROM ledger_events").await,
        1_500_000
    );
    assert_eq!(
        one_number(&db, "SELECT count(DISTINCT payer) FROM ledger_events").await,
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_10_s_under_load_stops_no_paid_request_and_drains_after() {
    let redis = RedisServer::start();
    // A server that acknowledges commits before they are on disk: the ledger's own session
    // asks for durable commits, so no batch trimmed from Redis is lost when it crashes.
    let mut pg = PostgresServer::start_with("-c synchronous_commit=off");
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .top(&format!(
            "[ledger]\nurl = \"{}\"\ntimeout_ms = 1000\n",
            pg.url()
        ))
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = gw.topup(&wallet, "loaded", "100").await;
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (served, stop) = (served.clone(), stop.clone());
        let (http, url, token) = (gw.http.clone(), gw.url("/v1/echo"), token.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let res = http.get(&url).bearer_auth(&token).send().await.unwrap();
                if res.status() == 200 {
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.stop();
    let at_stop = served.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = served.load(std::sync::atomic::Ordering::Relaxed) - at_stop;
    // Paid traffic went on, and its events wait in Redis.
    assert!(
        during > 50,
        "only {during} requests served while PostgreSQL was down"
    );
    let store = redis_store(&redis).await;
    let waiting = store.ledger_backlog().await.unwrap();
    assert!(waiting.entries >= during, "{waiting:?} < {during}");
    assert!(
        waiting.oldest_ms.unwrap() <= now_secs() * 1000 - 9_000,
        "{waiting:?}"
    );
    pg.start_again();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load.await.unwrap(), 0, "paid requests refused");
    let total = i64::try_from(served.load(std::sync::atomic::Ordering::Relaxed)).unwrap();
    let db = pg.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while one_number(&db, "SELECT count(*) FROM ledger_events").await < total {
        assert!(
            Instant::now() < deadline,
            "not drained after the restart: {} of {total}, {:?} waiting",
            one_number(&db, "SELECT count(*) FROM ledger_events").await,
            store.ledger_backlog().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_events").await,
        total
    );
    assert_eq!(
        one_number(&db, "SELECT sum(amount_minor)::INT8 FROM ledger_events").await,
        total * 10_000
    );
    let account = store.account("loaded").await.unwrap();
    let usd = &account.balances["USD"];
    assert_eq!(usd.captured, total * 10_000);
    let row = db
        .query_one(
            "SELECT credited_minor::INT8, captured_minor::INT8, balance_minor::INT8
             FROM payer_balance_equation WHERE payer = 'loaded'",
            &[],
        )
        .await
        .unwrap();
    let (credited, captured, balance): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(credited, 100_000_000);
    assert_eq!(captured, usd.captured);
    assert_eq!(balance, usd.available + usd.held);
}

#[tokio::test]
async fn an_unreadable_stream_entry_is_kept_apart_and_does_not_stall_the_drain() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let store = redis_store(&redis).await;
    let ledger = pg_ledger(&pg);
    // A well-formed capture on each side of an entry that lacks most fields.
    captures(&store, &["p1"], 1, "before").await;
    let key = redis::cmd("KEYS")
        .arg("tollgate:*:events")
        .query::<Vec<String>>(&mut redis.conn())
        .unwrap()
        .remove(0);
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("payer")
        .arg("p1")
        .query(&mut redis.conn())
        .unwrap();
    captures(&store, &["p1"], 1, "after").await;
    let mut d = Drainer::new(store.clone(), ledger);
    drain_all(&store, &mut d).await;
    let db = pg.client().await;
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_events").await,
        2
    );
    assert_eq!(
        one_number(&db, "SELECT count(*) FROM ledger_rejects").await,
        1
    );
    let row = db
        .query_one("SELECT fields->>'payer', error FROM ledger_rejects", &[])
        .await
        .unwrap();
    let (payer, error): (String, String) = (row.get(0), row.get(1));
    assert_eq!(payer, "p1");
    assert!(error.contains("lacks"), "{error}");
    assert_eq!(d.status().drained(), 2);
}

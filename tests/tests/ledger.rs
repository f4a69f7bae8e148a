//! The PostgreSQL ledger of record with a real redis-server and a real PostgreSQL (each test
//! starts its own): migrations, paid requests drained exactly once, the admin API reading
//! the ledger, and what Redis keeps afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tollgate_e2e::postgres::PostgresServer;
use tollgate_e2e::*;
use tollgate_middleware::ledger::schema;

const ADMIN: &str = "admin-token-0123456789";

/// Per payer: (events net of voids, captured minor units).
async fn ledger_by_payer(db: &tokio_postgres::Client) -> BTreeMap<String, (i64, i64)> {
    db.query(
        "SELECT payer, sum(sign)::INT8, sum(signed_amount_minor)::INT8
         FROM ledger_events_signed GROUP BY payer",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Wait until the ledger holds `events` usage events and `credits` credits (at most 30 s;
/// the tables appear when the drainer first connects and migrates).
async fn wait_for(db: &tokio_postgres::Client, events: i64, credits: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = |t: &str| format!("SELECT count(*) FROM {t}");
        let (e, c) = match (
            db.query_one(&n("ledger_events"), &[]).await,
            db.query_one(&n("ledger_credits"), &[]).await,
        ) {
            (Ok(e), Ok(c)) => (e.get::<_, i64>(0), c.get::<_, i64>(0)),
            _ => (-1, -1),
        };
        if e == events && c == credits {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ledger has {e} events and {c} credits, want {events} and {credits}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Entries left in every ledger stream (they are trimmed once drained).
fn stream_entries(redis: &RedisServer) -> u64 {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:*:events")
        .query::<Vec<String>>(&mut c)
        .unwrap()
        .into_iter()
        .chain(
            redis::cmd("KEYS")
                .arg("tollgate:*:credits")
                .query::<Vec<String>>(&mut c)
                .unwrap(),
        )
        .collect();
    keys.iter()
        .map(|k| redis::cmd("XLEN").arg(k).query::<u64>(&mut c).unwrap())
        .sum()
}

#[tokio::test]
async fn an_empty_database_migrates_to_current_and_a_rerun_is_a_no_op() {
    let pg = PostgresServer::start();
    let mut db = pg.client().await;
    let first = schema::migrate(&mut db).await.unwrap();
    assert_eq!(first.from, 0);
    assert_eq!(first.applied, vec![1, 2, 3, 4, 5]);
    let again = schema::migrate(&mut db).await.unwrap();
    assert_eq!(again.from, schema::CURRENT);
    assert_eq!(again.applied, Vec::<i32>::new());
    assert_eq!(count(&db, "schema_migrations").await, 5);
    // Every documented view exists and answers (empty).
    for view in [
        "revenue_daily_route",
        "revenue_daily_payer",
        "usage_units_daily",
        "credits_daily",
        "payer_balance_equation",
        "refunds_daily",
    ] {
        assert_eq!(count(&db, view).await, 0, "{view}");
    }
    // A newer Tollgate migrated it: refused, naming both versions.
    db.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (6, 'from the future')",
        &[],
    )
    .await
    .unwrap();
    let err = schema::migrate(&mut db).await.unwrap_err().to_string();
    assert!(
        err.contains("version 6, newer than this Tollgate knows (5)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_gateway_refuses_a_ledger_database_at_a_newer_schema_naming_ledger_url() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let mut db = pg.client().await;
    schema::migrate(&mut db).await.unwrap();
    db.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (9, 'newer')",
        &[],
    )
    .await
    .unwrap();
    let up = upstream().await;
    let toml = gateway()
        .issuer(&TestIssuer::ed25519("wallet"))
        .redis(&redis)
        .top(&format!("[ledger]\nurl = \"{}\"\n", pg.url()))
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .toml();
    let cfg = tollgate::config::Config::from_str(&toml).unwrap();
    let v = cfg.validate(std::path::Path::new(".")).unwrap();
    let err = tollgate::Gateway::build(v, &[7u8; 32])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("ledger.url: "), "{err}");
    assert!(err.contains("version 9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_requests_reach_the_ledger_exactly_once_and_redis_keeps_no_aggregates() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .top(&format!("[ledger]\nurl = \"{}\"\nbatch = 4\n", pg.url()))
        .issuer(&wallet)
        .admin(ADMIN)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let payers = ["alice", "bob", "carol"];
    let mut served = 0;
    let mut tokens = Vec::new();
    for (i, payer) in payers.iter().enumerate() {
        let token = gw.topup(&wallet, payer, "1").await;
        tokens.push(token.clone());
        for _ in 0..(5 + i) {
            let res = gw.token_get("/v1/echo", &token).await;
            assert_eq!(res.status(), 200);
            served += 1;
        }
    }
    assert_eq!(served, 18);
    let db = pg.client().await;
    wait_for(&db, 18, 3).await;
    let by_payer = ledger_by_payer(&db).await;
    assert_eq!(by_payer["alice"], (5, 50_000));
    assert_eq!(by_payer["bob"], (6, 60_000));
    assert_eq!(by_payer["carol"], (7, 70_000));
    // Each agent's bill comes from the ledger database: its own events only, newest first.
    for (payer, token, n) in [("alice", &tokens[0], 5), ("bob", &tokens[1], 6)] {
        let res = gw.token_get("/tollgate/v1/usage?limit=100", token).await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let bill: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(bill.len(), n, "{payer}: {text}");
        assert!(bill
            .iter()
            .all(|e| e["payer"] == payer && e["amount"] == "0.01"));
        let ids: Vec<&str> = bill.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| tollgate_middleware::store::event_order(id));
        sorted.reverse();
        assert_eq!(ids, sorted, "newest first");
    }
    // No event twice: one per reservation, and ids are the primary key.
    let distinct: i64 = db
        .query_one("SELECT count(DISTINCT reservation) FROM ledger_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 18);
    // The balance equation matches the store's own account, payer by payer.
    for payer in payers {
        let row = db
            .query_one(
                "SELECT credited_minor::INT8, captured_minor::INT8, balance_minor::INT8
                 FROM payer_balance_equation WHERE payer = $1 AND currency = 'USD'",
                &[&payer],
            )
            .await
            .unwrap();
        let (credited, captured, balance): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let account = gw.paywall.store().account(payer).await.unwrap();
        let usd = &account.balances["USD"];
        assert_eq!(credited, 1_000_000);
        assert_eq!(credited, usd.credited);
        assert_eq!(captured, usd.captured);
        assert_eq!(balance, usd.available + usd.held);
    }
    // The views answer in exact decimals.
    let revenue: String = db
        .query_one(
            "SELECT amount::TEXT FROM revenue_daily_route WHERE route = 'echo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revenue, "0.18000000000000000000");
    let units: String = db
        .query_one(
            "SELECT sum(units)::TEXT FROM usage_units_daily WHERE unit = 'request'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(units, "18");
    // The admin API reads the ledger: today's usage and the event export.
    let today = tollgate_middleware::store::utc_day(now_secs() * 1000);
    let usage = gw
        .admin_json(&format!("/admin/v1/usage?from={today}&to={today}"), ADMIN)
        .await;
    assert_eq!(usage["rows"][0]["requests"], 18, "{usage}");
    assert_eq!(usage["rows"][0]["amount"]["USD"], "0.18", "{usage}");
    let bob = gw.admin_json("/admin/v1/payers/bob", ADMIN).await;
    assert_eq!(bob["usage_30d"][0]["requests"], 6, "{bob}");
    let export = gw.admin_text("/admin/v1/events?limit=100", ADMIN).await;
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 18, "{export}");
    assert_eq!(
        events
            .iter()
            .map(|e| e["amount_minor"].as_u64().unwrap())
            .sum::<u64>(),
        180_000,
        "{export}"
    );
    // The drain's metrics are on the admin listener's /metrics.
    let metrics = gw
        .http
        .get(gw.admin_url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tollgate_ledger_backlog_events ",
        "tollgate_ledger_backlog_age_seconds ",
        "tollgate_ledger_backlog_over_bound 0",
        "tollgate_ledger_drained_events_total{stream=\"events\"}",
        "tollgate_ledger_drained_events_total{stream=\"credits\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // Redis: the streams were trimmed once drained, and no aggregate was written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream_entries(&redis) > 0 {
        assert!(Instant::now() < deadline, "streams not trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = redis.conn();
    let aggregates: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:*:agg*")
        .query(&mut c)
        .unwrap();
    assert_eq!(aggregates, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_drain_one_redis_into_one_ledger_exactly_once() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let replica = || {
        gateway()
            .redis(&redis)
            .top(&format!("[ledger]\nurl = \"{}\"\nbatch = 2\n", pg.url()))
            .issuer(&wallet)
            .route(paid("echo", "/v1/echo", &up, "0.01"))
            .start()
    };
    let (a, b) = (replica().await, replica().await);
    let token = a.topup(&wallet, "shared", "1").await;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    let db = pg.client().await;
    wait_for(&db, 30, 1).await;
    assert_eq!(ledger_by_payer(&db).await["shared"], (30, 300_000));
    let account = a.paywall.store().account("shared").await.unwrap();
    assert_eq!(account.balances["USD"].captured, 300_000);
    assert_eq!(account.balances["USD"].available, 700_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_reaches_the_ledger_as_a_void_and_the_sums_net_it_out() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .top(&format!("[ledger]\nurl = \"{}\"\n", pg.url()))
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01").with("capture = \"admission\""))
        .start()
        .await;
    let token = gw.topup(&wallet, "dana", "1").await;
    assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    // Not served (upstream 500): charged at admission, then voided.
    assert_eq!(
        gw.token_get("/v1/echo?status=500", &token).await.status(),
        500
    );
    let db = pg.client().await;
    wait_for(&db, 3, 1).await;
    let kinds: Vec<(String, i64)> = db
        .query(
            "SELECT kind, amount_minor::INT8 FROM ledger_events ORDER BY id_ms, id_seq, id_bucket",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let charges = kinds.iter().filter(|(k, _)| k == "charge").count();
    assert_eq!((charges, kinds.len()), (2, 3), "{kinds:?}");
    let voided: i64 = db
        .query_one(
            "SELECT count(*) FROM ledger_events v JOIN ledger_events c ON v.voids = c.id
             WHERE v.kind = 'void' AND c.kind = 'charge' AND v.amount_minor = c.amount_minor",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(voided, 1);
    assert_eq!(ledger_by_payer(&db).await["dana"], (1, 10_000));
    let usd = gw.paywall.store().account("dana").await.unwrap().balances["USD"];
    assert_eq!(usd.captured, 10_000);
    let balance: i64 = db
        .query_one(
            "SELECT balance_minor::INT8 FROM payer_balance_equation WHERE payer = 'dana'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, usd.available + usd.held);
    assert_eq!(balance, 990_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_database_down_at_start_up_is_not_fatal_and_is_filled_once_it_is_up() {
    let redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    pg.stop();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .top(&format!(
            "[ledger]\nurl = \"{}\"\ntimeout_ms = 500\n",
            pg.url()
        ))
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = gw.topup(&wallet, "erin", "1").await;
    for _ in 0..4 {
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    assert_eq!(stream_entries(&redis), 5);
    pg.start_again();
    let db = pg.client().await;
    wait_for(&db, 4, 1).await;
    assert_eq!(ledger_by_payer(&db).await["erin"], (4, 40_000));
}

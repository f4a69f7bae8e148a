//! The Redis memory a paid request leaves behind, with a real redis-server and a real
//! PostgreSQL: run by `bench/ledger_memory.sh` (ignored in the normal test run: it waits for
//! the settled markers to expire). The load drives the store API the engine calls for a
//! token-paid request (`hold` then `capture_hold`, the same keys and arguments), not the HTTP
//! path: on 2 shared cores the gateway would take minutes for 100,000 requests and add nothing
//! to Redis that the store calls do not.
//!
//! Knobs: `LEDGER_BENCH_REQUESTS` (100000), `LEDGER_BENCH_RECEIPTS` (20000),
//! `LEDGER_BENCH_WAIT_SECS` (120: after the drain, before measuring), `LEDGER_BENCH_OUT` (a
//! JSON file for the results), `LEDGER_BENCH_NO_LEDGER=1` (the store without a ledger of
//! record and no drainer: the aggregates written, the streams never trimmed -- the comparison).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_e2e::fixtures::{event, reservation};
use tollgate_e2e::postgres::PostgresServer;
use tollgate_e2e::*;
use tollgate_middleware::ledger::{Drainer, DrainerOptions, LedgerOptions, PgLedger};
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    Credit, Hold, HoldOutcome, HoldSettleOutcome, Idempotency, Settlement, UsageEvent,
};
use tollgate_middleware::{RedisStore, RedisStoreOptions};

const PAYERS: usize = 200;
const TASKS: usize = 16;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn used_memory(redis: &RedisServer) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Commands Redis executed so far (INFO commandstats; those run inside scripts included).
fn commands(redis: &RedisServer) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<i64>().ok())
        .sum()
}

fn keys(redis: &RedisServer) -> i64 {
    redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap()
}

/// The token-paid request: hold 0.001 USD, capture it with its usage event.
async fn token_request(store: &RedisStore, payer: &str) {
    let hold = Hold {
        id: uuid::Uuid::new_v4().to_string(),
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor: 1_000,
        ttl: Duration::from_secs(30),
        mandate: None,
        plan: None,
    };
    assert!(matches!(
        store.hold(&hold).await.unwrap(),
        HoldOutcome::Held { .. }
    ));
    let e = UsageEvent {
        id: String::new(),
        time_ms: now_secs() * 1000,
        payer: payer.into(),
        route: "echo".into(),
        method: "GET".into(),
        units: [("request".to_owned(), 1)].into(),
        unit_prices: Default::default(),
        currency: "USD".into(),
        scale: 6,
        amount_minor: 1_000,
        uncharged_minor: 0,
        credential: format!("token:{payer}"),
        reservation: hold.id.clone(),
        upstream_status: 200,
        voids: None,
    };
    assert!(matches!(
        store.capture_hold(&hold, 1_000, &e).await.unwrap(),
        HoldSettleOutcome::Captured { .. }
    ));
}

/// `n` requests from `TASKS` concurrent tasks, payers round robin.
async fn load(store: &Arc<RedisStore>, n: u64, receipts: bool) -> Duration {
    let started = Instant::now();
    let per_task = n / TASKS as u64;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let payer = format!("payer-{}", (t as u64 * per_task + i) % PAYERS as u64);
                if receipts {
                    let r = reservation(&payer, &format!("jti-{t}-{i}"));
                    store.authorize(&r).await.unwrap();
                    let s = Settlement::Capture(Box::new(event(&r)));
                    store.settle(&r, &s).await.unwrap();
                } else {
                    token_request(&store, &payer).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

async fn wait_drained(store: &RedisStore, with_ledger: bool) -> Duration {
    let started = Instant::now();
    if !with_ledger {
        return Duration::ZERO;
    }
    while store.ledger_backlog().await.unwrap().entries > 0 {
        assert!(started.elapsed() < Duration::from_secs(600), "not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (minutes): bash bench/ledger_memory.sh"]
async fn redis_bytes_retained_per_paid_request() {
    let requests = knob("LEDGER_BENCH_REQUESTS", 100_000);
    let receipt_requests = knob("LEDGER_BENCH_RECEIPTS", 20_000);
    let wait = Duration::from_secs(knob("LEDGER_BENCH_WAIT_SECS", 120));
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let opts = RedisStoreOptions {
        url: redis.url(),
        timeout: Duration::from_secs(5),
        ..RedisStoreOptions::default()
    };
    let with_ledger = std::env::var("LEDGER_BENCH_NO_LEDGER").is_err();
    let store = RedisStore::connect(opts.clone()).await.unwrap();
    let store = Arc::new(if with_ledger {
        store.with_ledger_of_record()
    } else {
        store
    });
    let mut options = LedgerOptions::new(pg.url().parse().unwrap());
    options.scales = [("USD".to_owned(), 6)].into();
    let ledger = Arc::new(PgLedger::new(options));
    let drain_store = Arc::new(RedisStore::connect(opts).await.unwrap());
    // One drainer identity, as a replica restarted under the same name: the catch-up below
    // does not wait for the first drainer's leases to lapse.
    let drain_options = || DrainerOptions {
        id: "bench-drainer".into(),
        ..DrainerOptions::default()
    };
    let drainer = Drainer::new(drain_store.clone(), ledger.clone()).options(drain_options());
    let status = drainer.status();
    let (drain_store2, ledger2) = (drain_store.clone(), ledger.clone());
    let drain_task = tokio::spawn(async move {
        if with_ledger {
            drainer.run().await;
        }
    });

    // Every payer's account exists (credited) and every stream was written and drained once.
    for p in 0..PAYERS {
        let c = Credit {
            payer: format!("payer-{p}"),
            currency: "USD".into(),
            amount_minor: 1_000_000_000_000,
            idempotency: Idempotency::Key(format!("seed-{p}")),
            keep_until_ms: (now_secs() + 30) * 1000,
            reason: "bench".into(),
            source: "admin".into(),
        };
        store.credit(&c).await.unwrap();
    }
    load(&store, 1_600, false).await;
    wait_drained(&store, with_ledger).await;
    // The seed credits' idempotency keys (30 s) and the warm-up's settled markers (90 s)
    // expire before the baseline.
    tokio::time::sleep(Duration::from_secs(95)).await;
    let (mem0, keys0) = (used_memory(&redis), keys(&redis));
    let drained0 = status.drained();
    let cmds0 = commands(&redis);

    let took = load(&store, requests, false).await;
    let cmds = commands(&redis) - cmds0;
    let (mem_loaded, keys_loaded) = (used_memory(&redis), keys(&redis));
    let drain_wait = wait_drained(&store, with_ledger).await;
    let drained = status.drained() - drained0;
    let (mem_drained, keys_drained) = (used_memory(&redis), keys(&redis));
    tokio::time::sleep(wait).await;
    let (mem_after, keys_after) = (used_memory(&redis), keys(&redis));
    let per = |m: i64| (m - mem0) as f64 / requests as f64;

    // Receipts: the single-use marker (state key + owner key) lives until exp + skew.
    let (mem_r0, keys_r0) = (used_memory(&redis), keys(&redis));
    load(&store, receipt_requests, true).await;
    wait_drained(&store, with_ledger).await;
    let (mem_r, keys_r) = (used_memory(&redis), keys(&redis));
    drain_task.abort();

    // Catch-up: a backlog built with no drainer running, then drained by a fresh one.
    let backlog = requests / 2;
    let mut drain_secs = 0.0;
    if with_ledger {
        load(&store, backlog, false).await;
        let fresh = Drainer::new(drain_store2, ledger2).options(drain_options());
        let started = Instant::now();
        let task = tokio::spawn(fresh.run());
        wait_drained(&store, true).await;
        drain_secs = started.elapsed().as_secs_f64();
        task.abort();
    }

    let results = json!({
        "ledger": with_ledger,
        "requests": requests,
        "load_secs": took.as_secs_f64(),
        "requests_per_sec": requests as f64 / took.as_secs_f64(),
        "drained_events": drained,
        "redis_commands_per_request_with_drainer": cmds as f64 / requests as f64,
        "drain_wait_after_load_secs": drain_wait.as_secs_f64(),
        "used_memory_baseline": mem0,
        "keys_baseline": keys0,
        "bytes_per_request_at_end_of_load": per(mem_loaded),
        "keys_at_end_of_load": keys_loaded - keys0,
        "bytes_per_request_drained": per(mem_drained),
        "keys_drained": keys_drained - keys0,
        "wait_secs": wait.as_secs(),
        "bytes_per_request_after_wait": per(mem_after),
        "keys_after_wait": keys_after - keys0,
        "catch_up_backlog": backlog,
        "catch_up_secs": drain_secs,
        "catch_up_events_per_sec": if drain_secs > 0.0 { backlog as f64 / drain_secs } else { 0.0 },
        "receipt_requests": receipt_requests,
        "receipt_marker_bytes_per_request": (mem_r - mem_r0) as f64 / receipt_requests as f64,
        "receipt_marker_keys_per_request": (keys_r - keys_r0) as f64 / receipt_requests as f64,
    });
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    if let Ok(path) = std::env::var("LEDGER_BENCH_OUT") {
        std::fs::write(path, results.to_string()).unwrap();
    }
    if with_ledger {
        assert_eq!(drained, requests);
    }
}

/// `used_memory` over a long load at a fixed rate, with the drainer keeping up: run by
/// `SOAK=1 bash bench/ledger_memory.sh`. Knobs: `LEDGER_SOAK_SECS` (1200),
/// `LEDGER_SOAK_RATE` (500 requests/s), `LEDGER_SOAK_SAMPLE_SECS` (30). Samples taken once the
/// settled markers reached their steady state (from 180 s: their 90 s lifetime, plus the first
/// seconds' catch-up burst of the paced tasks) are compared with their mean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (20 minutes): SOAK=1 bash bench/ledger_memory.sh"]
async fn redis_memory_is_flat_under_a_fixed_rate() {
    let secs = knob("LEDGER_SOAK_SECS", 1200);
    let rate = knob("LEDGER_SOAK_RATE", 500).max(8);
    let sample = Duration::from_secs(knob("LEDGER_SOAK_SAMPLE_SECS", 30));
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let opts = RedisStoreOptions {
        url: redis.url(),
        timeout: Duration::from_secs(5),
        ..RedisStoreOptions::default()
    };
    let store = Arc::new(
        RedisStore::connect(opts.clone())
            .await
            .unwrap()
            .with_ledger_of_record(),
    );
    let mut options = LedgerOptions::new(pg.url().parse().unwrap());
    options.scales = [("USD".to_owned(), 6)].into();
    let drainer = Drainer::new(
        Arc::new(RedisStore::connect(opts).await.unwrap()),
        Arc::new(PgLedger::new(options)),
    );
    let status = drainer.status();
    let drain_task = tokio::spawn(drainer.run());
    for p in 0..PAYERS {
        let c = Credit {
            payer: format!("payer-{p}"),
            currency: "USD".into(),
            amount_minor: 1_000_000_000_000,
            idempotency: Idempotency::Key(format!("seed-{p}")),
            keep_until_ms: (now_secs() + 30) * 1000,
            reason: "bench".into(),
            source: "admin".into(),
        };
        store.credit(&c).await.unwrap();
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    const SOAK_TASKS: u64 = 8;
    for t in 0..SOAK_TASKS {
        let (store, sent) = (store.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 * SOAK_TASKS / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let payer = format!("payer-{}", (t + i * SOAK_TASKS) % PAYERS as u64);
                token_request(&store, &payer).await;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() + sample <= end {
        tokio::time::sleep(sample).await;
        let t = started.elapsed().as_secs();
        let backlog = store.ledger_backlog().await.unwrap().entries;
        samples.push(json!({"t_secs": t, "used_memory": used_memory(&redis), "keys": keys(&redis), "backlog": backlog}));
        println!("{}", samples.last().unwrap());
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_drained(&store, true).await;
    drain_task.abort();
    let steady: Vec<f64> = samples
        .iter()
        .filter(|s| s["t_secs"].as_u64().unwrap_or(0) >= 180)
        .map(|s| s["used_memory"].as_f64().unwrap_or(0.0))
        .collect();
    let mean = steady.iter().sum::<f64>() / steady.len().max(1) as f64;
    let worst = steady
        .iter()
        .map(|m| (m - mean).abs() / mean)
        .fold(0.0, f64::max);
    let total = sent.load(std::sync::atomic::Ordering::Relaxed);
    let results = json!({
        "soak_secs": secs,
        "target_rate": rate,
        "requests": total,
        "achieved_rate": total as f64 / secs as f64,
        "drained_events": status.drained(),
        "steady_samples": steady.len(),
        "steady_mean_used_memory": mean,
        "steady_max_deviation": worst,
        "samples": samples,
    });
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    if let Ok(path) = std::env::var("LEDGER_BENCH_OUT") {
        std::fs::write(path, results.to_string()).unwrap();
    }
    // Every request's event, and the seed credits.
    assert_eq!(status.drained(), total + PAYERS as u64);
}

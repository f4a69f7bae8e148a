//! The differential test: seeded random operation sequences run on the sqlite store in memory
//! (the reference), a sqlite file, a real `redis-server` and a 3-master Redis Cluster, compared
//! result by result and in final state.
//!
//! Each payer gets its own sequence (holds, captures beyond the hold, releases, renewals,
//! hold extensions, credits and debits with repeated keys, top-up receipts, receipts authorized, captured,
//! released and replayed, captures at admission and their voids, x402 deferred captures,
//! plans, mandates, request idempotency keys, blocks, revocations -- and invalid steps:
//! unknown holds, double captures, replays, over-balance debits, voids of the wrong charge).
//! The sequences run concurrently, one task per payer, on every backend; since no payer's
//! steps touch another's state, each payer's results are deterministic and compared one by
//! one (ledger and credit ids normalised to the order they were first seen). Then a final
//! state comparison (accounts, plan periods, mandate windows, daily usage, payer totals, the
//! ledger), the x402 queue drained on each, and a phase where many tasks hit one payer at
//! once, where only conservation is checked (to the unit).
//!
//! `TOLLGATE_DIFF_SEED=<n>` replays a run; the seed is printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "differential/ops.rs"]
mod ops;
#[path = "differential/run.rs"]
mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate_e2e::{RedisCluster, RedisServer};
use tollgate_middleware::clock::SystemClock;
use tollgate_middleware::store::SqliteOptions;
use tollgate_middleware::store::{
    void_event, ChargeFrom, ChargeOutcome, Credit, CreditOutcome, Hold, HoldOutcome,
    HoldSettleOutcome, Idempotency, JobOutcome, VoidOutcome,
};
use tollgate_middleware::{RedisStore, RedisStoreOptions, SqliteStore, Store, UsageEvent};

use self::ops::{generate, Op};
use self::run::{event, Run, World};

const PAYERS: usize = 8;
const OPS_PER_PAYER: usize = 1_250;
pub(crate) const DAY: &str = "19700101";
const DEFAULT_SEED: u64 = 0x7011_6a7e_2026;

fn seed() -> u64 {
    std::env::var("TOLLGATE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// One payer's run: its results, its final state, and its ids (as normalised).
type PayerRun = (Vec<String>, Vec<String>, HashMap<String, usize>);

/// Run every payer's sequence concurrently on `store`: each payer's results and final state.
async fn run_all(
    store: Arc<dyn Store>,
    world: Arc<World>,
    plans: Arc<Vec<Vec<Op>>>,
) -> Vec<PayerRun> {
    let mut tasks = Vec::new();
    for (i, _) in plans.iter().enumerate() {
        let (store, world, plans) = (store.clone(), world.clone(), plans.clone());
        tasks.push(tokio::spawn(async move {
            let mut run = Run::new(store, &world, format!("payer-{i}"));
            let mut results = Vec::with_capacity(plans[i].len());
            for op in &plans[i] {
                results.push(run.step(op).await);
            }
            let state = run.final_state().await;
            (results, state, run.ids)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The x402 queue drained the same way on a backend: what was claimed, what failed, what was
/// claimed again after retries, which payers ended blocked.
async fn drain_queue(store: &Arc<dyn Store>, ids: &[HashMap<String, usize>]) -> Vec<String> {
    let lease = Duration::from_secs(60);
    let norm = |job: &tollgate_middleware::store::SettlementJob| {
        let payer: usize = job.payer.trim_start_matches("payer-").parse().unwrap();
        let id = ids[payer].get(&job.id).copied();
        format!(
            "{} #{id:?} {} {} {} {}",
            job.payer, job.body, job.attempts, job.status, job.error
        )
    };
    let mut out = Vec::new();
    let mut jobs = store.claim_settlements(10_000, lease).await.unwrap();
    jobs.sort_by_key(|j| norm(j));
    out.extend(jobs.iter().map(|j| format!("claimed {}", norm(j))));
    for (i, job) in jobs.iter().enumerate() {
        let outcome = match i % 3 {
            0 => JobOutcome::Done,
            1 => JobOutcome::Retry {
                after: Duration::ZERO,
                error: "timeout".into(),
            },
            _ => JobOutcome::Failed {
                error: "insufficient_funds".into(),
            },
        };
        store.finish_settlement(job, &outcome).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut again = store.claim_settlements(10_000, lease).await.unwrap();
    again.sort_by_key(|j| norm(j));
    out.extend(again.iter().map(|j| format!("again {}", norm(j))));
    let mut failed = store.failed_settlements().await.unwrap();
    failed.sort_by_key(|j| norm(j));
    out.extend(failed.iter().map(|j| format!("failed {}", norm(j))));
    for job in failed.iter().step_by(2) {
        out.push(format!(
            "resolved {}",
            store.resolve_settlement(&job.id).await.unwrap()
        ));
    }
    for i in 0..PAYERS {
        out.push(format!(
            "payer-{i} blocked {}",
            store.account(&format!("payer-{i}")).await.unwrap().blocked
        ));
    }
    out
}

/// Many tasks on one payer at once: only conservation is comparable. Returns the payer's
/// final (available, held, credited, captured) after checking every unit is accounted for.
async fn hot_payer(store: Arc<dyn Store>, seed: u64) -> (i64, i64, i64, i64) {
    let payer = "hot";
    store
        .credit(&Credit {
            payer: payer.into(),
            currency: "USD".into(),
            amount_minor: 20_000,
            idempotency: Idempotency::Key("seed".into()),
            keep_until_ms: i64::MAX / 2,
            reason: "diff".into(),
            source: "admin".into(),
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (t + 1).wrapping_mul(0x9e37_79b9));
            // (credited, charged) as the task saw them applied.
            let (mut credited, mut charged) = (0i64, 0i64);
            for i in 0..150 {
                let h = Hold {
                    id: format!("hot-{t}-{i}"),
                    payer: payer.into(),
                    currency: "USD".into(),
                    amount_minor: rng.gen_range(0..900),
                    ttl: Duration::from_secs(600),
                    mandate: None,
                    plan: None,
                };
                match rng.gen_range(0..4) {
                    0 | 1 => {
                        if let HoldOutcome::Held { .. } = store.hold(&h).await.unwrap() {
                            if rng.gen_bool(0.7) {
                                let actual = rng.gen_range(0..1_500);
                                let e = event(payer, "hot", &h.id, 0, 0);
                                if let HoldSettleOutcome::Captured {
                                    charged_minor,
                                    uncharged_minor,
                                    ..
                                } = store.capture_hold(&h, actual, &e).await.unwrap()
                                {
                                    assert_eq!(charged_minor + uncharged_minor, actual);
                                    charged += i64::try_from(charged_minor).unwrap();
                                }
                            } else {
                                store.release_hold(&h).await.unwrap();
                            }
                        }
                    }
                    2 => {
                        let e = event(payer, "hot-fixed", &h.id, h.amount_minor, 0);
                        if let ChargeOutcome::Charged { event_id, .. } = store
                            .charge_at_admission(ChargeFrom::Balance(&h), &e)
                            .await
                            .unwrap()
                        {
                            charged += i64::try_from(h.amount_minor).unwrap();
                            if rng.gen_bool(0.3) {
                                let charge = UsageEvent { id: event_id, ..e };
                                let void = void_event(&charge, 1, 0);
                                if let VoidOutcome::Voided { .. } = store
                                    .void_admission(ChargeFrom::Balance(&h), &charge, &void)
                                    .await
                                    .unwrap()
                                {
                                    charged -= i64::try_from(h.amount_minor).unwrap();
                                }
                            }
                        }
                    }
                    _ => {
                        let amount = rng.gen_range(-800..1_000);
                        let c = Credit {
                            payer: payer.into(),
                            currency: "USD".into(),
                            amount_minor: amount,
                            idempotency: Idempotency::Key(format!("hot-{t}-{i}")),
                            keep_until_ms: i64::MAX / 2,
                            reason: "diff".into(),
                            source: "admin".into(),
                        };
                        if let CreditOutcome::Applied { .. } = store.credit(&c).await.unwrap() {
                            credited += amount;
                        }
                    }
                }
            }
            (credited, charged)
        }));
    }
    let (mut credited, mut charged) = (20_000i64, 0i64);
    for t in tasks {
        let (c, ch) = t.await.unwrap();
        credited += c;
        charged += ch;
    }
    let b = store.account(payer).await.unwrap().balances["USD"];
    let replay = format!("replay with TOLLGATE_DIFF_SEED={seed}");
    assert_eq!(
        (b.held, b.credited, b.captured),
        (0, credited, charged),
        "{b:?}; {replay}"
    );
    assert_eq!(
        b.credited - b.captured,
        b.available + b.held,
        "{b:?}; {replay}"
    );
    assert!(b.available >= 0, "{b:?}; {replay}");
    // The ledger says the same: charges less voids.
    let events: Vec<UsageEvent> = store
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payer == payer)
        .collect();
    let ledger: i64 = events
        .iter()
        .map(|e| i64::try_from(e.amount_minor).unwrap() * if e.voids.is_some() { -1 } else { 1 })
        .sum();
    assert_eq!(ledger, charged, "{replay}");
    (b.available, b.held, b.credited, b.captured)
}

/// The first difference between two result lists (the reference's and `other`'s), with its step.
fn first_difference(
    what: &str,
    other: &str,
    ops: Option<&[Op]>,
    a: &[String],
    b: &[String],
) -> Option<String> {
    let n = a.len().max(b.len());
    (0..n).find(|i| a.get(*i) != b.get(*i)).map(|i| {
        let op = ops
            .and_then(|o| o.get(i))
            .map(|o| format!("{o:?}"))
            .unwrap_or_default();
        let from = i.saturating_sub(3);
        let ctx: Vec<String> = (from..i)
            .map(|j| {
                format!(
                    "    {j}: {:?} -> {:?}",
                    ops.and_then(|o| o.get(j)),
                    a.get(j)
                )
            })
            .collect();
        format!(
            "{what}: step {i} {op}\n  reference: {:?}\n  {other}: {:?}\n  before:\n{}",
            a.get(i),
            b.get(i),
            ctx.join("\n")
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_backend_agrees_on_random_operations() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let plans: Arc<Vec<Vec<Op>>> = Arc::new(
        (0..PAYERS)
            .map(|_| generate(&mut rng, OPS_PER_PAYER))
            .collect(),
    );
    let total: usize = plans.iter().map(Vec::len).sum();
    assert!(total >= 10_000, "{total} operations");
    let world = Arc::new(World::new());
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let connect = |url: String, cluster: bool| async move {
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::connect(RedisStoreOptions {
                url,
                cluster,
                prefix: "d".into(),
                timeout: Duration::from_millis(5_000),
            })
            .await
            .unwrap(),
        );
        store
    };
    let base: Arc<dyn Store> = Arc::new(SqliteStore::memory(Arc::new(SystemClock)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(SqliteOptions::new(
            dir.path().join("d.db").to_string_lossy(),
        ))
        .unwrap(),
    );
    let others = [
        ("redis", connect(server.url(), false).await),
        ("cluster", connect(cluster.url(), true).await),
        ("sqlite", sqlite),
    ];
    let started = std::time::Instant::now();
    let (on_base, on_redis, on_cluster, on_sqlite) = tokio::join!(
        run_all(base.clone(), world.clone(), plans.clone()),
        run_all(others[0].1.clone(), world.clone(), plans.clone()),
        run_all(others[1].1.clone(), world.clone(), plans.clone()),
        run_all(others[2].1.clone(), world.clone(), plans.clone())
    );
    let totals = |s: Arc<dyn Store>| async move {
        vec![
            format!("{:?}", s.payer_totals(DAY, DAY).await.unwrap()),
            format!("{:?}", s.usage(None, DAY, DAY).await.unwrap()),
        ]
    };
    let base_totals = totals(base.clone()).await;
    let mut diffs = Vec::new();
    for ((name, store), runs) in others.iter().zip([&on_redis, &on_cluster, &on_sqlite]) {
        for (i, ((mr, ms, _), (rr, rs, _))) in on_base.iter().zip(runs.iter()).enumerate() {
            let what = format!("payer-{i} results");
            diffs.extend(first_difference(&what, name, Some(&plans[i]), mr, rr));
            let what = format!("payer-{i} final state");
            diffs.extend(first_difference(&what, name, None, ms, rs));
        }
        let theirs = totals(store.clone()).await;
        diffs.extend(first_difference(
            "totals",
            name,
            None,
            &base_totals,
            &theirs,
        ));
    }
    let ids = |runs: &[PayerRun]| -> Vec<_> { runs.iter().map(|r| r.2.clone()).collect() };
    let (mi, ri, ci, si) = (
        ids(&on_base),
        ids(&on_redis),
        ids(&on_cluster),
        ids(&on_sqlite),
    );
    let (mq, rq, cq, sq) = tokio::join!(
        drain_queue(&base, &mi),
        drain_queue(&others[0].1, &ri),
        drain_queue(&others[1].1, &ci),
        drain_queue(&others[2].1, &si)
    );
    diffs.extend(first_difference("x402 queue", "redis", None, &mq, &rq));
    diffs.extend(first_difference("x402 queue", "cluster", None, &mq, &cq));
    diffs.extend(first_difference("x402 queue", "sqlite", None, &mq, &sq));
    let (mh, rh, ch, sh) = tokio::join!(
        hot_payer(base.clone(), seed),
        hot_payer(others[0].1.clone(), seed),
        hot_payer(others[1].1.clone(), seed),
        hot_payer(others[2].1.clone(), seed)
    );
    // What the sequences exercised (outcome kinds, on the reference), so a change that makes most
    // steps refusals shows.
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for r in on_base.iter().flat_map(|(results, _, _)| results) {
        let kind = r.split(['(', ' ', '{']).next().unwrap_or_default();
        *kinds.entry(kind).or_default() += 1;
    }
    println!(
        "differential: seed {seed}, {total} operations per backend (sqlite in memory: the \
         reference; redis, cluster, sqlite file), hot payer {mh:?} / {rh:?} / {ch:?} / {sh:?}, {:?}\noutcomes: {kinds:?}",
        started.elapsed()
    );
    assert!(
        diffs.is_empty(),
        "the backends disagree (replay with TOLLGATE_DIFF_SEED={seed}):\n{}",
        diffs.join("\n\n")
    );
}

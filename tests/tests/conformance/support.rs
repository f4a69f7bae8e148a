//! What every body builds with: backends, reservations, events, holds, credits.

use std::sync::Arc;
use std::time::Duration;

use tollgate_e2e::{RedisCluster, RedisServer};
use tollgate_middleware::store::{
    Credit, CreditOutcome, Hold, Idempotency, MandateCharge, PlanUse,
};
use tollgate_middleware::{RedisStore, RedisStoreOptions, SqliteStore, Store, UsageEvent};

/// A fresh in-memory sqlite store on the system clock.
pub(crate) fn sqlite() -> Arc<dyn Store> {
    let clock = Arc::new(tollgate_middleware::clock::SystemClock);
    Arc::new(SqliteStore::memory(clock).unwrap())
}

/// A sqlite store in a file of `dir` (durable: the same code path as production).
pub(crate) fn sqlite_file(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let path = dir.path().join("tollgate.db");
    let opts = tollgate_middleware::store::SqliteOptions::new(path.to_string_lossy());
    Arc::new(SqliteStore::open(opts).unwrap())
}

/// A store on `server` under `prefix`.
pub(crate) async fn redis(server: &RedisServer, prefix: &str) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url: server.url(),
        cluster: false,
        prefix: prefix.into(),
        timeout: Duration::from_millis(2000),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

/// A store on `cluster` under `prefix`.
pub(crate) async fn cluster(cluster: &RedisCluster, prefix: &str) -> Arc<dyn Store> {
    let opts = RedisStoreOptions {
        url: cluster.url(),
        cluster: true,
        prefix: prefix.into(),
        timeout: Duration::from_millis(2000),
    };
    Arc::new(RedisStore::connect(opts).await.unwrap())
}

/// Now (unix ms, the system clock: Redis and the sqlite store both run on it here).
pub(crate) fn now_ms() -> i64 {
    tollgate_e2e::now_secs() * 1000
}

pub(crate) use tollgate_e2e::fixtures::{event, reservation};

/// An event of `payer` on `route` for `amount_minor` (as a balance capture sends it: the
/// store decides the amount).
pub(crate) fn balance_event(payer: &str, route: &str, amount_minor: u64) -> UsageEvent {
    UsageEvent {
        route: route.into(),
        amount_minor,
        credential: format!("token:{payer}"),
        ..event(&reservation(payer, "-"))
    }
}

pub(crate) fn hold(payer: &str, amount: u64) -> Hold {
    Hold {
        id: uuid::Uuid::new_v4().to_string(),
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor: amount,
        ttl: Duration::from_secs(60),
        mandate: None,
        plan: None,
    }
}

pub(crate) fn topup(payer: &str, amount: i64, key: &str) -> Credit {
    Credit {
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor: amount,
        idempotency: Idempotency::Key(key.into()),
        keep_until_ms: (tollgate_e2e::now_secs() + 600) * 1000,
        reason: "test".into(),
        source: "admin".into(),
    }
}

/// Credit `amount` to `payer` and check it applied.
pub(crate) async fn fund(store: &Arc<dyn Store>, payer: &str, amount: i64) {
    let key = uuid::Uuid::new_v4().to_string();
    let out = store.credit(&topup(payer, amount, &key)).await.unwrap();
    assert!(matches!(out, CreditOutcome::Applied { .. }), "{out:?}");
}

/// A plan use of `plan` judged now.
pub(crate) fn plan_use(plan: &str, deny: bool, route_price: bool, unit: Option<&str>) -> PlanUse {
    PlanUse {
        plan: plan.into(),
        deny,
        route_price,
        unit: unit.map(str::to_owned),
        overage_minor: 30,
        now_ms: now_ms(),
        covered: false,
    }
}

/// A day-window mandate `key` of `budget`, reserving `amount` for this payment.
pub(crate) fn mandate(key: &str, budget: u64, amount: u64) -> MandateCharge {
    let (start, end) = tollgate_middleware::mandate::Window::Day.bounds(now_ms());
    MandateCharge {
        key: key.into(),
        budget_minor: budget,
        amount_minor: amount,
        window_start_ms: start,
        window_end_ms: end,
        summary: serde_json::json!({"id": key, "window": "day"}).to_string(),
    }
}

/// Available, held, credited, captured of `payer`'s USD account, and its holds.
pub(crate) async fn usd(store: &Arc<dyn Store>, payer: &str) -> (i64, i64, i64, i64, u64) {
    let a = store.account(payer).await.unwrap();
    let b = a.balances.get("USD").copied().unwrap_or_default();
    (b.available, b.held, b.credited, b.captured, a.holds)
}

/// The usage events of `payer`, in id order.
pub(crate) async fn events_of(store: &Arc<dyn Store>, payer: &str) -> Vec<UsageEvent> {
    store
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payer == payer)
        .collect()
}

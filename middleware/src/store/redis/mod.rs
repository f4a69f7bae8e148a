//! The Redis store: each operation is one Lua script (EVALSHA, reloaded on NOSCRIPT), so the
//! check-and-hold of a receipt is atomic across every gateway process sharing the server.
//!
//! The connection is a [`ConnectionManager`] (reconnects by itself) with bounded connect and
//! response timeouts. If Redis is down at start-up the store starts anyway, disconnected, and
//! retries on use: paid routes answer `store_unavailable` until it is back (fail closed).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::sync::Mutex;

mod balances;
mod charge;
mod control;
mod extend;
mod idempotency;
mod lease;
mod ledger;
mod mandates;
mod owner;
mod plans;
mod queue;
mod receipts;
mod refunds;
mod risk;
mod scripts;
mod webhook;

use self::scripts::Scripts;

pub use ledger::{Backlog, CreditRecord, LedgerEntry, LedgerStream, StreamBatch};

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    bucket_of, days_between, event_order, fold_aggregates, fold_payer_totals, utc_day, Account,
    AuthorizeOutcome, Balance, BalanceStore, Columns, Credit, CreditOutcome, DailyUsage,
    FromColumns, Hold, HoldExtended, HoldExtension, HoldOutcome, HoldSettleOutcome, Idempotency,
    IdempotencyClaim, IdempotencyStore, JobOutcome, KeyClaim, LedgerStore, MandateCharge,
    MandateStore, MandateUse, PayerControl, PayerSpend, PlanPeriod, PlanStore, ReceiptStore,
    Renewal, Reservation, SettleOutcome, Settlement, SettlementJob, SettlementQueue, StoreError,
    SubscribeOutcome, Subscription, UsageEvent, BUCKETS,
};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// `redis://host:port/db`, `rediss://...` or `unix:///path/to/redis.sock`; with `cluster`,
    /// a comma-separated list of seed nodes.
    pub url: String,
    /// Connect to a Redis Cluster (every script keeps its keys in one hash slot).
    pub cluster: bool,
    /// Key prefix (no braces).
    pub prefix: String,
    /// Bound on every command (and on connecting).
    pub timeout: Duration,
}

/// The default of [`RedisStore::settled_keep`]: the longest settle retry window
/// (60 s) plus 30 s for the reconciler's first attempts.
pub const DEFAULT_SETTLED_KEEP: Duration = Duration::from_secs(90);

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            prefix: "tollgate".into(),
            timeout: Duration::from_millis(500),
        }
    }
}

/// A single server or a cluster.
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to either; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The production store.
pub struct RedisStore {
    client: Client,
    options: RedisStoreOptions,
    /// `None` until the first successful connection.
    conn: Mutex<Option<Conn>>,
    /// Last failed connection attempt, to avoid a connect storm while Redis is down.
    last_attempt: Mutex<Option<Instant>>,
    scripts: Scripts,
    /// Move the daily aggregates and payer totals inside the capture scripts (the admin API
    /// reads them from here). Off ([`RedisStore::with_ledger_of_record`]) when a ledger of
    /// record (PostgreSQL, fed by the drainer) derives them: each capture is a few commands
    /// cheaper and leaves nothing per day and payer behind.
    aggregates: bool,
    /// How long a settled marker (`done:<reservation>`) is kept: a capture retried because
    /// its first reply was lost, or the reconciler, learns the outcome from it. It must
    /// outlast the settle retry window (at most 60 s) and give the reconciler time to ask;
    /// with the ledger drained it is the only per-request key a token-paid request leaves.
    settled_keep: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Build the store and try to connect once; a failure is logged, not fatal.
    pub async fn connect(options: RedisStoreOptions) -> Result<Self, StoreError> {
        if options.prefix.contains(['{', '}']) || options.prefix.is_empty() {
            return Err(StoreError::Protocol(
                "prefix must be non-empty and without braces".into(),
            ));
        }
        let invalid =
            |e: redis::RedisError| StoreError::Protocol(format!("invalid Redis URL: {e}"));
        let client = if options.cluster {
            let nodes: Vec<&str> = options
                .url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .retries(2)
                .build()
                .map_err(invalid)?;
            Client::Cluster(client)
        } else {
            Client::Single(redis::Client::open(options.url.as_str()).map_err(invalid)?)
        };
        let store = RedisStore {
            client,
            options,
            conn: Mutex::new(None),
            last_attempt: Mutex::new(None),
            aggregates: true,
            settled_keep: DEFAULT_SETTLED_KEEP,
            scripts: Scripts::load(),
        };
        if let Err(e) = store.connection().await {
            // The URL without its credentials (`redis://user:secret@host` -> `redis://host`).
            let url = store
                .options
                .url
                .split(',')
                .map(|u| match (u.split_once("://"), u.rsplit_once('@')) {
                    (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
                    _ => u.trim().to_owned(),
                })
                .collect::<Vec<_>>()
                .join(",");
            tracing::warn!(url = %url, error = %e, "Redis not reachable at start-up; paid routes fail closed until it is");
        }
        Ok(store)
    }

    /// A ledger of record derives the daily aggregates and payer totals (the gateway's
    /// `[ledger]`): the capture scripts stop moving them, and [`LedgerStore::usage`] and
    /// [`LedgerStore::payer_totals`] of this store answer only what was recorded before.
    /// Read them from the ledger database instead (`ledger::PgLedger`, feature `postgres`).
    #[must_use]
    pub fn with_ledger_of_record(mut self) -> Self {
        self.aggregates = false;
        self
    }

    /// Keep settled markers this long ([`DEFAULT_SETTLED_KEEP`] by default; at least 1 s).
    #[must_use]
    pub fn settled_keep(mut self, keep: Duration) -> Self {
        self.settled_keep = keep.max(Duration::from_secs(1));
        self
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.lock().await.as_ref() {
            return Ok(c.clone());
        }
        let mut last = self.last_attempt.lock().await;
        if let Some(c) = self.conn.lock().await.as_ref() {
            return Ok(c.clone());
        }
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return Err(StoreError::Unavailable("not connected (retrying)".into()));
        }
        *last = Some(Instant::now());
        let connect = async {
            match &self.client {
                Client::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(self.options.timeout)
                        .set_response_timeout(self.options.timeout)
                        .set_number_of_retries(1)
                        .set_max_delay(1000);
                    ConnectionManager::new_with_config(client.clone(), config)
                        .await
                        .map(Conn::Single)
                }
                Client::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let cm = tokio::time::timeout(self.options.timeout * 4, connect)
            .await
            .map_err(|_| StoreError::Unavailable("connect timed out".into()))?
            .map_err(unavailable)?;
        *self.conn.lock().await = Some(cm.clone());
        Ok(cm)
    }

    fn key(&self, bucket: u64, rest: &str) -> String {
        format!("{}:{{b{:02}}}:{}", self.options.prefix, bucket, rest)
    }

    fn receipt_key(&self, r: &Reservation) -> String {
        self.key(r.bucket(), &format!("r:{}", r.fingerprint()))
    }

    fn account_key(&self, payer: &str) -> String {
        self.key(bucket_of(payer), &format!("acct:{payer}"))
    }

    fn holds_key(&self, payer: &str) -> String {
        self.key(bucket_of(payer), &format!("holds:{payer}"))
    }

    fn payer_agg_key(&self, payer: &str, day: &str) -> String {
        self.key(bucket_of(payer), &format!("agg:{payer}:{day}"))
    }

    fn bucket_agg_key(&self, bucket: u64, day: &str) -> String {
        self.key(bucket, &format!("aggb:{day}"))
    }

    fn payer_totals_key(&self, bucket: u64, day: &str) -> String {
        self.key(bucket, &format!("aggp:{day}"))
    }

    /// Stream ids are per bucket; the ledger id appends the bucket so ids are unique.
    fn ledger_id(bucket: u64, stream_id: &str) -> String {
        format!("{stream_id}-{bucket}")
    }

    fn events_key(&self, bucket: u64) -> String {
        self.key(bucket, "events")
    }

    /// A payer's request `Idempotency-Key` (the key's charset has no `:`, so key first keeps
    /// `(key, payer)` pairs apart).
    fn request_idempotency_key(&self, payer: &str, key: &str) -> String {
        self.key(bucket_of(payer), &format!("ridem:{key}:{payer}"))
    }

    fn blocked_key(&self, payer: &str) -> String {
        self.key(bucket_of(payer), &format!("blocked:{payer}"))
    }

    fn window_key(&self, payer: &str, m: &MandateCharge) -> String {
        self.key(
            bucket_of(payer),
            &format!("mw:{}:{}", m.key, m.window_start_ms),
        )
    }

    fn mandate_revoked_key(&self, bucket: u64, mandate: &str) -> String {
        self.key(bucket, &format!("mrev:{mandate}"))
    }

    fn subscription_key(&self, payer: &str, plan: &str) -> String {
        self.key(bucket_of(payer), &format!("sub:{plan}:{payer}"))
    }

    fn done_key(&self, h: &Hold) -> String {
        self.key(h.bucket(), &format!("done:{}", h.id))
    }

    fn mandate_index_key(&self, payer: &str) -> String {
        self.key(bucket_of(payer), &format!("mandates:{payer}"))
    }

    /// Keys and arguments of a reservation under a mandate (authorize and hold scripts).
    fn mandate_keys(&self, inv: &mut redis::ScriptInvocation<'_>, payer: &str, m: &MandateCharge) {
        inv.key(self.window_key(payer, m))
            .key(self.mandate_revoked_key(bucket_of(payer), &m.key))
            .key(self.mandate_index_key(payer));
    }

    fn mandate_args(inv: &mut redis::ScriptInvocation<'_>, m: &MandateCharge) {
        inv.arg(m.budget_minor)
            .arg(
                m.window_end_ms
                    .saturating_add(crate::mandate::WINDOW_KEEP_MS),
            )
            .arg(&m.key)
            .arg(&m.summary);
    }

    /// The store's options, first among the arguments of a script that records usage
    /// (`totals.lua` takes them off; after `owner.lua`'s, which [`RedisStore::claim_owner`]
    /// puts first).
    fn usage_options(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(if self.aggregates { "1" } else { "0" })
            .arg(ms(self.settled_keep));
    }

    /// Event fields, then the aggregate pairs (the amount's included) of `event`.
    fn usage_args(
        inv: &mut redis::ScriptInvocation<'_>,
        event: &UsageEvent,
        aggregates: &UsageEvent,
    ) {
        let fields = event.to_fields(true);
        inv.arg(fields.len());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        inv.arg(aggregates.amount_field())
            .arg(aggregates.amount_minor);
        for (k, v) in aggregates.aggregate_fields() {
            inv.arg(k).arg(v);
        }
    }

    /// A capture script's `(status, stream id)` answer (`capture.lua`, `capture_deferred.lua`).
    fn captured(
        script: &str,
        bucket: u64,
        status: &str,
        id: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let event_id = || Self::ledger_id(bucket, id);
        match status {
            "captured" => Ok(SettleOutcome::Captured {
                event_id: event_id(),
            }),
            "duplicate" => Ok(SettleOutcome::AlreadyCaptured {
                event_id: event_id(),
            }),
            "conflict" => Ok(SettleOutcome::Conflict),
            other => Err(StoreError::Protocol(format!("{script} replied {other:?}"))),
        }
    }

    /// Run a release script (its keys so far, then the mandate window if any; the hold or
    /// reservation id as its one argument): whether something was held.
    async fn release_with(
        &self,
        mut inv: redis::ScriptInvocation<'_>,
        payer: &str,
        mandate: Option<&MandateCharge>,
        id: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        if let Some(m) = mandate {
            inv.key(self.window_key(payer, m));
        }
        inv.arg(id);
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// `HGETALL key`, bounded.
    async fn hgetall<V: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        key: &str,
    ) -> Result<Vec<(String, V)>, StoreError> {
        self.bounded(redis::cmd("HGETALL").arg(key).query_async(conn))
            .await
    }

    /// Run a command with the store's timeout (the manager's own timeout covers the
    /// response; this also bounds a reconnect in progress).
    async fn bounded<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        tokio::time::timeout(self.options.timeout * 2, f)
            .await
            .map_err(|_| StoreError::Unavailable("timed out".into()))?
            .map_err(unavailable)
    }
}

/// The units a covered call counts against a unit plan (0 for a call plan).
fn plan_units(h: &Hold, event: &UsageEvent) -> u64 {
    h.plan
        .as_ref()
        .and_then(|p| p.unit.as_ref())
        .and_then(|u| event.units.get(u).copied())
        .unwrap_or(0)
}

/// A job as stored (`{payer, body, attempts, status, error}`), with its public id.
fn parse_job(id: String, raw: &str) -> Result<SettlementJob, StoreError> {
    let v: serde_json::Value = serde_json::from_str(raw)
        .map_err(|_| StoreError::Protocol(format!("settlement job {id} is not JSON")))?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let attempts = v
        .get("attempts")
        .and_then(|x| x.as_f64())
        .map_or(0, |f| f.max(0.0).min(f64::from(u32::MAX)) as u32);
    Ok(SettlementJob {
        id,
        payer: s("payer"),
        body: s("body"),
        attempts,
        status: s("status"),
        error: s("error"),
    })
}

/// A job id's stream id and bucket.
fn split_job_id(id: &str) -> Result<(&str, u64), StoreError> {
    let bucket = super::bucket_of_id(id)
        .ok_or_else(|| StoreError::Protocol(format!("not a settlement id: {id:?}")))?;
    let stream = id
        .rsplit_once('-')
        .map(|(s, _)| s)
        .ok_or_else(|| StoreError::Protocol(format!("not a settlement id: {id:?}")))?;
    Ok((stream, bucket))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn parse_balances(fields: Vec<(String, i64)>) -> BTreeMap<String, Balance> {
    let mut balances: BTreeMap<String, Balance> = BTreeMap::new();
    for (f, v) in fields {
        let Some((kind, cur)) = f.split_once(':') else {
            continue;
        };
        // Other fields of the account hash (a balance lease's `lseq:<lease id>`) are not
        // balances.
        let set: fn(&mut Balance, i64) = match kind {
            "bal" => |b, v| b.available = v,
            "held" => |b, v| b.held = v,
            "credited" => |b, v| b.credited = v,
            "captured" => |b, v| b.captured = v,
            _ => continue,
        };
        set(balances.entry(cur.to_owned()).or_default(), v);
    }
    balances
}

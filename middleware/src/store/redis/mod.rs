//! The Redis store: each operation is one Lua script (EVALSHA, reloaded on NOSCRIPT), so the
//! check-and-hold of a receipt is atomic across every gateway process sharing the server.
//!
//! The connection is a [`ConnectionManager`] (reconnects by itself) with bounded connect and
//! response timeouts. If Redis is down at start-up the store starts anyway, disconnected, and
//! retries on use: paid routes answer `store_unavailable` until it is back (fail closed).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::Mutex;

mod charge;
mod owner;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    bucket_of, days_between, event_order, fold_aggregates, fold_payer_totals, utc_day, Account,
    AuthorizeOutcome, Balance, BalanceStore, ChargeOutcome, Credit, CreditOutcome, DailyUsage,
    Hold, HoldOutcome, HoldSettleOutcome, Idempotency, IdempotencyClaim, IdempotencyStore,
    JobOutcome, LedgerStore, MandateCharge, MandateStore, MandateUse, PayerControl, PayerSpend,
    PlanPeriod, PlanStore, ReceiptStore, Renewal, Reservation, SettleOutcome, Settlement,
    SettlementJob, SettlementQueue, StoreError, SubscribeOutcome, Subscription, UsageEvent,
    VoidOutcome, BUCKETS,
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

#[derive(Debug)]
struct Scripts {
    authorize: Script,
    capture: Script,
    release: Script,
    hold: Script,
    capture_hold: Script,
    release_hold: Script,
    credit: Script,
    rate: Script,
    subscribe: Script,
    plan_capture: Script,
    plan_release: Script,
    capture_deferred: Script,
    claim_settlements: Script,
    finish_settlement: Script,
    resolve_settlement: Script,
    authorize_capture: Script,
    void: Script,
    hold_capture: Script,
    void_hold: Script,
    idempotency: Script,
    claim_owner: Script,
    renew: Script,
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
            scripts: Scripts {
                authorize: Script::new(concat!(
                    include_str!("../lua/owner.lua"),
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/authorize.lua")
                )),
                capture: Script::new(concat!(
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/capture.lua")
                )),
                release: Script::new(concat!(
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/release.lua")
                )),
                hold: Script::new(concat!(
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/holds.lua"),
                    include_str!("../lua/hold.lua")
                )),
                capture_hold: Script::new(concat!(
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/capture_hold.lua")
                )),
                release_hold: Script::new(concat!(
                    include_str!("../lua/mandate.lua"),
                    include_str!("../lua/release_hold.lua")
                )),
                credit: Script::new(concat!(
                    include_str!("../lua/owner.lua"),
                    include_str!("../lua/credit.lua")
                )),
                rate: Script::new(include_str!("../lua/rate.lua")),
                subscribe: Script::new(concat!(
                    include_str!("../lua/owner.lua"),
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/subscribe.lua")
                )),
                plan_capture: Script::new(concat!(
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/plan_capture.lua")
                )),
                plan_release: Script::new(include_str!("../lua/plan_release.lua")),
                capture_deferred: Script::new(concat!(
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/capture_deferred.lua")
                )),
                claim_settlements: Script::new(include_str!("../lua/claim_settlements.lua")),
                finish_settlement: Script::new(include_str!("../lua/finish_settlement.lua")),
                resolve_settlement: Script::new(include_str!("../lua/resolve_settlement.lua")),
                authorize_capture: Script::new(concat!(
                    include_str!("../lua/owner.lua"),
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/authorize_capture.lua")
                )),
                void: Script::new(concat!(
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/void.lua")
                )),
                hold_capture: Script::new(concat!(
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/holds.lua"),
                    include_str!("../lua/hold_capture.lua")
                )),
                void_hold: Script::new(concat!(
                    include_str!("../lua/totals.lua"),
                    include_str!("../lua/void_hold.lua")
                )),
                idempotency: Script::new(include_str!("../lua/idempotency.lua")),
                claim_owner: Script::new(include_str!("../lua/claim_owner.lua")),
                renew: Script::new(include_str!("../lua/renew.lua")),
            },
        };
        if let Err(e) = store.connection().await {
            tracing::warn!(error = %e, "Redis not reachable at start-up; paid routes fail closed until it is");
        }
        Ok(store)
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

#[async_trait]
impl ReceiptStore for RedisStore {
    async fn authorize_capture(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_receipt(r, event).await
    }

    async fn void_receipt(
        &self,
        r: &Reservation,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(Some(r), None, charge, void).await
    }

    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.authorize.prepare_invoke();
        let (payer, until) = (&r.payer, r.spent_until_ms);
        if self
            .claim_owner(&mut conn, &mut inv, payer, &r.issuer, &r.receipt_id, until)
            .await?
        {
            return Ok(AuthorizeOutcome::Replayed);
        }
        inv.key(self.receipt_key(r)).key(self.blocked_key(&r.payer));
        if let Some(m) = &r.mandate {
            self.mandate_keys(&mut inv, &r.payer, m);
        }
        inv.arg(&r.id).arg(ms(r.hold));
        if let Some(m) = &r.mandate {
            inv.arg(m.amount_minor);
            Self::mandate_args(&mut inv, m);
        }
        let (reply, room): (String, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        match reply.as_str() {
            "reserved" => Ok(AuthorizeOutcome::Reserved),
            "blocked" => Ok(AuthorizeOutcome::PayerBlocked),
            "replayed" => Ok(AuthorizeOutcome::Replayed),
            "in_use" => Ok(AuthorizeOutcome::InUse),
            "revoked" => Ok(AuthorizeOutcome::Revoked),
            "mandate_revoked" => Ok(AuthorizeOutcome::MandateRevoked),
            "mandate_exceeded" => Ok(AuthorizeOutcome::MandateExceeded {
                room_minor: u64::try_from(room).unwrap_or(0),
            }),
            other => Err(StoreError::Protocol(format!("authorize replied {other:?}"))),
        }
    }

    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        match s {
            Settlement::Release => {
                let mut inv = self.scripts.release.prepare_invoke();
                inv.key(self.receipt_key(r));
                if let Some(m) = &r.mandate {
                    inv.key(self.window_key(&r.payer, m));
                }
                inv.arg(&r.id);
                let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
                Ok(if n == 1 {
                    SettleOutcome::Released
                } else {
                    SettleOutcome::NotHeld
                })
            }
            Settlement::Capture(event) => {
                let day = utc_day(event.time_ms);
                let fields = event.to_fields(true);
                let mut inv = self.scripts.capture.prepare_invoke();
                inv.key(self.receipt_key(r))
                    .key(self.events_key(r.bucket()))
                    .key(self.payer_agg_key(&r.payer, &day))
                    .key(self.bucket_agg_key(r.bucket(), &day))
                    .key(self.payer_totals_key(r.bucket(), &day));
                if let Some(m) = &r.mandate {
                    inv.key(self.window_key(&r.payer, m));
                }
                inv.arg(&r.id).arg(r.spent_until_ms).arg(fields.len());
                for (k, v) in fields {
                    inv.arg(k).arg(v);
                }
                inv.arg(event.amount_field()).arg(event.amount_minor);
                for (k, v) in event.aggregate_fields() {
                    inv.arg(k).arg(v);
                }
                let (status, id): (String, String) =
                    self.bounded(inv.invoke_async(&mut conn)).await?;
                let b = r.bucket();
                match status.as_str() {
                    "captured" => Ok(SettleOutcome::Captured {
                        event_id: Self::ledger_id(b, &id),
                    }),
                    "duplicate" => Ok(SettleOutcome::AlreadyCaptured {
                        event_id: Self::ledger_id(b, &id),
                    }),
                    "conflict" => Ok(SettleOutcome::Conflict),
                    other => Err(StoreError::Protocol(format!("capture replied {other:?}"))),
                }
            }
        }
    }

    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        let mut unused = true;
        for b in 0..BUCKETS {
            // NX: a receipt held or spent keeps its state (its payer's bucket has it).
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(b, &format!("r:{fp}")))
                .arg("revoked")
                .arg("NX")
                .arg("PX")
                .arg(super::REVOKED_RECEIPT_KEEP_MS);
            let set: Value = self.bounded(cmd.query_async(&mut conn)).await?;
            if matches!(set, Value::Nil) {
                unused = false;
            }
        }
        Ok(unused)
    }
}

#[async_trait]
impl BalanceStore for RedisStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.renew.prepare_invoke();
        let (payer, id, mandate) = match held {
            Renewal::Receipt(r) => {
                inv.key(self.receipt_key(r)).arg("receipt");
                (&r.payer, &r.id, r.mandate.as_ref())
            }
            Renewal::Balance(h) => {
                inv.key(self.holds_key(&h.payer)).arg("hold");
                (&h.payer, &h.id, h.mandate.as_ref())
            }
        };
        if let Some(m) = mandate {
            inv.key(self.window_key(payer, m));
        }
        inv.arg(id).arg(ms(ttl));
        let live: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(live == 1)
    }

    async fn hold_capture(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_balance(h, event).await
    }

    async fn void_hold(
        &self,
        h: &Hold,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(None, Some(h), charge, void).await
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.blocked_key(&h.payer));
        match (&h.mandate, &h.plan) {
            (Some(m), _) => self.mandate_keys(&mut inv, &h.payer, m),
            (None, Some(_)) => {
                // Placeholders in the same slot: the script reads them only with a mandate.
                let a = self.account_key(&h.payer);
                inv.key(&a).key(&a).key(&a);
            }
            (None, None) => {}
        }
        if let Some(p) = &h.plan {
            inv.key(self.subscription_key(&h.payer, &p.plan));
        }
        inv.arg(&h.id)
            .arg(&h.currency)
            .arg(h.amount_minor)
            .arg(ms(h.ttl));
        match (&h.mandate, &h.plan) {
            (Some(m), _) => Self::mandate_args(&mut inv, m),
            (None, Some(_)) => {
                inv.arg("").arg("").arg("").arg("");
            }
            (None, None) => {}
        }
        if let Some(p) = &h.plan {
            inv.arg(if p.deny {
                "deny"
            } else if p.route_price {
                "route"
            } else {
                "overage"
            })
            .arg(p.now_ms)
            .arg(p.overage_minor)
            .arg(if p.unit.is_some() { "units" } else { "calls" });
        }
        let (status, bal): (String, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        let balance_minor = u64::try_from(bal).unwrap_or(0);
        match status.as_str() {
            "held" => Ok(HoldOutcome::Held { balance_minor }),
            "insufficient" => Ok(HoldOutcome::Insufficient { balance_minor }),
            "blocked" => Ok(HoldOutcome::PayerBlocked),
            "mandate_revoked" => Ok(HoldOutcome::MandateRevoked),
            "mandate_exceeded" => Ok(HoldOutcome::MandateExceeded {
                room_minor: balance_minor,
            }),
            "plan" => Ok(HoldOutcome::Plan {
                calls_left: u64::try_from(bal).ok(),
            }),
            "plan_exhausted" => Ok(HoldOutcome::PlanExhausted { period_end_ms: bal }),
            "overage" => Ok(HoldOutcome::Overage { balance_minor }),
            other => Err(StoreError::Protocol(format!("hold replied {other:?}"))),
        }
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let day = utc_day(event.time_ms);
        if h.plan.as_ref().is_some_and(|p| p.covered) {
            let fields = event.to_fields(true);
            let mut inv = self.scripts.plan_capture.prepare_invoke();
            inv.key(self.done_key(h))
                .key(self.events_key(h.bucket()))
                .key(self.payer_agg_key(&h.payer, &day))
                .key(self.bucket_agg_key(h.bucket(), &day))
                .key(self.payer_totals_key(h.bucket(), &day))
                .key(
                    self.subscription_key(
                        &h.payer,
                        h.plan.as_ref().map_or("", |p| p.plan.as_str()),
                    ),
                )
                .arg(plan_units(h, event))
                .arg(fields.len());
            for (k, v) in fields {
                inv.arg(k).arg(v);
            }
            for (k, v) in event.aggregate_fields() {
                inv.arg(k).arg(v);
            }
            let (status, id): (String, String) = self.bounded(inv.invoke_async(&mut conn)).await?;
            return match status.as_str() {
                "captured" => Ok(HoldSettleOutcome::Captured {
                    event_id: Self::ledger_id(h.bucket(), &id),
                    charged_minor: 0,
                    uncharged_minor: 0,
                    balance_minor: 0,
                }),
                "not_held" => Ok(HoldSettleOutcome::NotHeld),
                other => Err(StoreError::Protocol(format!(
                    "plan_capture replied {other:?}"
                ))),
            };
        }
        let fields = event.to_fields(false);
        let mut inv = self.scripts.capture_hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.events_key(h.bucket()))
            .key(self.payer_agg_key(&h.payer, &day))
            .key(self.bucket_agg_key(h.bucket(), &day))
            .key(self.key(h.bucket(), &format!("done:{}", h.id)))
            .key(self.payer_totals_key(h.bucket(), &day));
        if let Some(m) = &h.mandate {
            inv.key(self.window_key(&h.payer, m));
        }
        inv.arg(&h.id)
            .arg(actual_minor)
            .arg(event.amount_field())
            .arg(fields.len());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        for (k, v) in event.aggregate_fields() {
            inv.arg(k).arg(v);
        }
        let (status, id, charged, uncharged, bal): (String, String, i64, i64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "captured" => Ok(HoldSettleOutcome::Captured {
                event_id: Self::ledger_id(h.bucket(), &id),
                charged_minor: u64::try_from(charged).unwrap_or(0),
                uncharged_minor: u64::try_from(uncharged).unwrap_or(0),
                balance_minor: u64::try_from(bal).unwrap_or(0),
            }),
            "not_held" => Ok(HoldSettleOutcome::NotHeld),
            other => Err(StoreError::Protocol(format!(
                "capture_hold replied {other:?}"
            ))),
        }
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            let mut inv = self.scripts.plan_release.prepare_invoke();
            inv.key(self.done_key(h))
                .key(self.subscription_key(&h.payer, &p.plan))
                .arg(if p.unit.is_some() { "units" } else { "calls" });
            let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
            return Ok(if n == 1 {
                HoldSettleOutcome::Released
            } else {
                HoldSettleOutcome::NotHeld
            });
        }
        let mut inv = self.scripts.release_hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer));
        if let Some(m) = &h.mandate {
            inv.key(self.window_key(&h.payer, m));
        }
        inv.arg(&h.id);
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(if n == 1 {
            HoldSettleOutcome::Released
        } else {
            HoldSettleOutcome::NotHeld
        })
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let bucket = bucket_of(&c.payer);
        let idem_key = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => self.receipt_key(&Reservation {
                id: String::new(),
                payer: c.payer.clone(),
                issuer: issuer.clone(),
                receipt_id: receipt_id.clone(),
                hold: Duration::ZERO,
                spent_until_ms: 0,
                mandate: None,
            }),
            Idempotency::Key(k) => {
                let mut h = Sha256::new();
                h.update(c.payer.as_bytes());
                h.update([0]);
                h.update(k.as_bytes());
                let hex: String = h.finalize()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                self.key(bucket, &format!("idem:{hex}"))
            }
        };
        let keep =
            (c.keep_until_ms - crate::clock::Clock::now_ms(&crate::clock::SystemClock)).max(1000);
        let mut inv = self.scripts.credit.prepare_invoke();
        let owned_by_other = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => {
                let until = c.keep_until_ms;
                self.claim_owner(&mut conn, &mut inv, &c.payer, issuer, receipt_id, until)
                    .await?
            }
            Idempotency::Key(_) => {
                inv.arg("@none");
                false
            }
        };
        if owned_by_other {
            return Ok(CreditOutcome::ReceiptUsed);
        }
        inv.key(self.account_key(&c.payer))
            .key(idem_key)
            .key(self.key(bucket, "credits"))
            .arg(&c.currency)
            .arg(c.amount_minor)
            .arg(keep);
        for (k, v) in [
            ("payer", c.payer.clone()),
            ("currency", c.currency.clone()),
            ("amount_minor", c.amount_minor.to_string()),
            ("reason", c.reason.clone()),
            ("source", c.source.clone()),
        ] {
            inv.arg(k).arg(v);
        }
        let (status, id, bal): (String, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let balance_minor = u64::try_from(bal).unwrap_or(0);
        match status.as_str() {
            "applied" => Ok(CreditOutcome::Applied {
                credit_id: Self::ledger_id(bucket, &id),
                balance_minor,
            }),
            "duplicate" => Ok(CreditOutcome::Duplicate {
                credit_id: Self::ledger_id(bucket, &id),
                balance_minor,
            }),
            "insufficient" => Ok(CreditOutcome::Insufficient { balance_minor }),
            "in_use" => Ok(CreditOutcome::ReceiptUsed),
            other => Err(StoreError::Protocol(format!("credit replied {other:?}"))),
        }
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        // The hold script with no currency gives back expired holds and reads the account.
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.account_key(payer))
            .key(self.holds_key(payer))
            .key(self.blocked_key(payer))
            .arg("read")
            .arg("")
            .arg(0)
            .arg(1);
        // `{'blocked', 0}` has two elements, `{'swept', holds, fields}` three.
        let reply: Vec<Value> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let blocked = match reply.first() {
            Some(Value::BulkString(s)) => s.as_slice() == b"blocked",
            Some(Value::SimpleString(s)) => s == "blocked",
            _ => false,
        };
        if blocked {
            // Blocked payers are not swept; read plainly.
            let fields: Vec<(String, i64)> = self
                .bounded(
                    redis::cmd("HGETALL")
                        .arg(self.account_key(payer))
                        .query_async(&mut conn),
                )
                .await?;
            let holds: u64 = self
                .bounded(
                    redis::cmd("HLEN")
                        .arg(self.holds_key(payer))
                        .query_async(&mut conn),
                )
                .await?;
            return Ok(Account {
                balances: parse_balances(fields),
                holds,
                blocked: true,
            });
        }
        let (_, holds, fields): (String, u64, Vec<(String, i64)>) =
            redis::from_redis_value(&Value::Array(reply))
                .map_err(|e| StoreError::Protocol(format!("account read replied {e}")))?;
        Ok(Account {
            balances: parse_balances(fields),
            holds,
            blocked: false,
        })
    }
}

#[async_trait]
impl LedgerStore for RedisStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut rows = BTreeMap::new();
        for day in &days {
            let keys: Vec<String> = match payer {
                Some(p) => vec![self.payer_agg_key(p, day)],
                None => (0..BUCKETS).map(|b| self.bucket_agg_key(b, day)).collect(),
            };
            for key in keys {
                let fields: Vec<(String, i64)> = self
                    .bounded(redis::cmd("HGETALL").arg(key).query_async(&mut conn))
                    .await?;
                fold_aggregates(day, &fields, &mut rows);
            }
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut out = BTreeMap::new();
        for day in &days {
            for bucket in 0..BUCKETS {
                let fields: Vec<(String, i64)> = self
                    .bounded(
                        redis::cmd("HGETALL")
                            .arg(self.payer_totals_key(bucket, day))
                            .query_async(&mut conn),
                    )
                    .await?;
                fold_payer_totals(&fields, &mut out);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let mut conn = self.connection().await?;
        let cursor = after.map(event_order);
        let mut out = Vec::new();
        for bucket in 0..BUCKETS {
            // Within a bucket, stream ids order events; across buckets the bucket breaks ties.
            let start = match cursor {
                None => "-".to_owned(),
                Some((ms, seq, b)) if bucket > b => format!("{ms}-{seq}"),
                Some((ms, seq, _)) => format!("({ms}-{seq}"),
            };
            let page: Vec<(String, Vec<(String, String)>)> = self
                .bounded(
                    redis::cmd("XRANGE")
                        .arg(self.events_key(bucket))
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?;
            for (id, fields) in page {
                out.push(UsageEvent::from_fields(
                    Self::ledger_id(bucket, &id),
                    &fields,
                )?);
            }
        }
        out.sort_by_key(|e| event_order(&e.id));
        out.truncate(limit);
        Ok(out)
    }
}

#[async_trait]
impl PayerControl for RedisStore {
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: super::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.rate.prepare_invoke();
        inv.key(self.key(bucket_of(payer), &format!("rl:{route}:{payer}")))
            .arg(limit.interval_ms())
            .arg(limit.tolerance_ms());
        let (allowed, retry_ms): (i64, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok((allowed == 0).then(|| Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0))))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let pong: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!("PING replied {pong:?}")))
        }
    }

    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let key = self.blocked_key(payer);
        let mut cmd = if blocked {
            redis::cmd("SET")
        } else {
            redis::cmd("DEL")
        };
        cmd.arg(&key);
        if blocked {
            cmd.arg("1");
        }
        let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }
}

#[async_trait]
impl MandateStore for RedisStore {
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError> {
        // Scripts read the marker in the payer's bucket; the payer is not known here, so the
        // marker goes to every bucket (16 small keys, once per revocation).
        let mut conn = self.connection().await?;
        for b in 0..BUCKETS {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.mandate_revoked_key(b, key))
                .arg("1")
                .arg("PX")
                .arg(super::REVOKED_MANDATE_KEEP_MS);
            let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError> {
        let mut conn = self.connection().await?;
        let index: Vec<(String, String)> = self
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.mandate_index_key(payer))
                    .query_async(&mut conn),
            )
            .await?;
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let mut out = Vec::new();
        for (key, summary) in index {
            let summary: serde_json::Value = serde_json::from_str(&summary).unwrap_or_default();
            let start = super::mandate_window_start(&summary, now_ms);
            let window: Vec<(String, String)> = self
                .bounded(
                    redis::cmd("HGETALL")
                        .arg(self.key(bucket_of(payer), &format!("mw:{key}:{start}")))
                        .query_async(&mut conn),
                )
                .await?;
            let mut usage = MandateUse {
                spent_minor: 0,
                held_minor: 0,
                revoked: false,
            };
            for (f, v) in window {
                if f == "spent" {
                    usage.spent_minor = v.parse().unwrap_or(0);
                } else if f.starts_with("h:") {
                    let mut p = v.split('|');
                    let amount: u64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let until: i64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    if until > now {
                        usage.held_minor += amount;
                    }
                }
            }
            let revoked: i64 = self
                .bounded(
                    redis::cmd("EXISTS")
                        .arg(self.mandate_revoked_key(bucket_of(payer), &key))
                        .query_async(&mut conn),
                )
                .await?;
            usage.revoked = revoked == 1;
            out.push((summary, usage));
        }
        Ok(out)
    }
}

#[async_trait]
impl PlanStore for RedisStore {
    async fn subscribe(&self, s: &Subscription) -> Result<SubscribeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let b = bucket_of(&s.payer);
        let day = utc_day(s.event.time_ms);
        let r = Reservation {
            payer: s.payer.clone(),
            issuer: s.issuer.clone(),
            receipt_id: s.receipt_id.clone(),
            ..Reservation::empty()
        };
        let fields = s.event.to_fields(true);
        let mut inv = self.scripts.subscribe.prepare_invoke();
        let until = s.keep_until_ms.max(s.now_ms + 1000);
        if self
            .claim_owner(
                &mut conn,
                &mut inv,
                &s.payer,
                &s.issuer,
                &s.receipt_id,
                until,
            )
            .await?
        {
            return Ok(SubscribeOutcome::ReceiptUsed);
        }
        inv.key(self.receipt_key(&r))
            .key(self.subscription_key(&s.payer, &s.plan))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&s.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day))
            .arg(s.now_ms)
            .arg(s.period_ms)
            .arg(s.calls.map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX)))
            .arg(s.keep_until_ms.max(s.now_ms + 1000))
            .arg(fields.len());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        inv.arg(s.event.amount_field()).arg(s.event.amount_minor);
        for (k, v) in s.event.aggregate_fields() {
            inv.arg(k).arg(v);
        }
        let (status, id, end): (String, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "subscribed" => Ok(SubscribeOutcome::Subscribed {
                event_id: Self::ledger_id(b, &id),
                period_end_ms: end,
            }),
            "duplicate" => Ok(SubscribeOutcome::Duplicate {
                event_id: Self::ledger_id(b, &id),
                period_end_ms: end,
            }),
            "used" => Ok(SubscribeOutcome::ReceiptUsed),
            other => Err(StoreError::Protocol(format!("subscribe replied {other:?}"))),
        }
    }

    async fn subscription(
        &self,
        payer: &str,
        plan: &str,
    ) -> Result<Option<PlanPeriod>, StoreError> {
        let mut conn = self.connection().await?;
        let v: Vec<Option<i64>> = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.subscription_key(payer, plan))
                    .arg("start")
                    .arg("end")
                    .arg("calls")
                    .arg("used")
                    .query_async(&mut conn),
            )
            .await?;
        let get = |i: usize| v.get(i).copied().flatten();
        Ok(get(1).map(|end_ms| PlanPeriod {
            start_ms: get(0).unwrap_or(0),
            end_ms,
            calls: get(2).and_then(|c| u64::try_from(c).ok()),
            used: get(3).and_then(|u| u64::try_from(u).ok()).unwrap_or(0),
        }))
    }
}

#[async_trait]
impl SettlementQueue for RedisStore {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let b = r.bucket();
        let day = utc_day(event.time_ms);
        let fields = event.to_fields(true);
        let mut inv = self.scripts.capture_deferred.prepare_invoke();
        inv.key(self.receipt_key(r))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&r.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:due"))
            .key(self.payer_totals_key(b, &day))
            .arg(&r.id)
            .arg(r.spent_until_ms)
            .arg(&r.payer)
            .arg(body)
            .arg(fields.len());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        inv.arg(event.amount_field()).arg(event.amount_minor);
        for (k, v) in event.aggregate_fields() {
            inv.arg(k).arg(v);
        }
        let (status, id): (String, String) = self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "captured" => Ok(SettleOutcome::Captured {
                event_id: Self::ledger_id(b, &id),
            }),
            "duplicate" => Ok(SettleOutcome::AlreadyCaptured {
                event_id: Self::ledger_id(b, &id),
            }),
            "conflict" => Ok(SettleOutcome::Conflict),
            other => Err(StoreError::Protocol(format!(
                "capture_deferred replied {other:?}"
            ))),
        }
    }

    async fn claim_settlements(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            if out.len() >= limit {
                break;
            }
            let mut inv = self.scripts.claim_settlements.prepare_invoke();
            inv.key(self.key(b, "x402:due"))
                .key(self.key(b, "x402:jobs"))
                .arg(ms(lease))
                .arg(limit - out.len());
            let reply: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
            for pair in reply.chunks(2) {
                if let [id, raw] = pair {
                    out.push(parse_job(Self::ledger_id(b, id), raw)?);
                }
            }
        }
        Ok(out)
    }

    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let (stream, b) = split_job_id(&job.id)?;
        let (kind, delay, error) = match outcome {
            JobOutcome::Done => ("done", 0, ""),
            JobOutcome::Retry { after, error } => ("retry", ms(*after), error.as_str()),
            JobOutcome::Failed { error } => ("failed", 0, error.as_str()),
        };
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.finish_settlement.prepare_invoke();
        inv.key(self.key(b, "x402:due"))
            .key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:failed"))
            .key(self.blocked_key(&job.payer))
            .arg(stream)
            .arg(kind)
            .arg(delay)
            .arg(error);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let ids: Vec<String> = self
                .bounded(
                    redis::cmd("SMEMBERS")
                        .arg(self.key(b, "x402:failed"))
                        .query_async(&mut conn),
                )
                .await?;
            for id in ids {
                let raw: Option<String> = self
                    .bounded(
                        redis::cmd("HGET")
                            .arg(self.key(b, "x402:jobs"))
                            .arg(&id)
                            .query_async(&mut conn),
                    )
                    .await?;
                if let Some(raw) = raw {
                    out.push(parse_job(Self::ledger_id(b, &id), &raw)?);
                }
            }
        }
        out.sort_by_key(|j| event_order(&j.id));
        Ok(out)
    }

    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        let (stream, b) = split_job_id(id)?;
        let mut conn = self.connection().await?;
        let raw: Option<String> = self
            .bounded(
                redis::cmd("HGET")
                    .arg(self.key(b, "x402:jobs"))
                    .arg(stream)
                    .query_async(&mut conn),
            )
            .await?;
        let Some(raw) = raw else {
            return Ok(false);
        };
        let job = parse_job(id.to_owned(), &raw)?;
        let mut inv = self.scripts.resolve_settlement.prepare_invoke();
        inv.key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:failed"))
            .key(self.blocked_key(&job.payer))
            .arg(stream)
            .arg(&job.payer);
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn idempotency_claim(
        &self,
        payer: &str,
        key: &str,
        fingerprint: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(payer, key))
            .arg("claim")
            .arg(fingerprint)
            .arg(token)
            .arg(ms(ttl));
        let r: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        match r.first().map(String::as_str) {
            Some("claimed") => Ok(IdempotencyClaim::Claimed),
            Some("in_flight") => Ok(IdempotencyClaim::InFlight),
            Some("mismatch") => Ok(IdempotencyClaim::Mismatch),
            Some("done") => Ok(IdempotencyClaim::Done {
                event_id: r.get(1).cloned().unwrap_or_default(),
                time_ms: r.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
            }),
            _ => Err(StoreError::Protocol(format!(
                "idempotency script answered {r:?}"
            ))),
        }
    }

    async fn idempotency_finish(
        &self,
        payer: &str,
        key: &str,
        token: &str,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(payer, key));
        match done {
            Some((event_id, time_ms)) => inv.arg("done").arg(token).arg(event_id).arg(time_ms),
            None => inv.arg("forget").arg(token),
        };
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

fn parse_balances(fields: Vec<(String, i64)>) -> BTreeMap<String, Balance> {
    let mut balances: BTreeMap<String, Balance> = BTreeMap::new();
    for (f, v) in fields {
        let Some((kind, cur)) = f.split_once(':') else {
            continue;
        };
        let b = balances.entry(cur.to_owned()).or_default();
        match kind {
            "bal" => b.available = v,
            "held" => b.held = v,
            "credited" => b.credited = v,
            "captured" => b.captured = v,
            _ => {}
        }
    }
    balances
}

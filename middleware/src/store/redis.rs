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

use super::{
    AuthorizeOutcome, Reservation, SettleOutcome, Settlement, Store, StoreError, UsageEvent,
    BUCKETS,
};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// `redis://host:port/db`, `rediss://...` or `unix:///path/to/redis.sock`.
    pub url: String,
    /// Key prefix (no braces).
    pub prefix: String,
    /// Bound on every command (and on connecting).
    pub timeout: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            url: "redis://127.0.0.1:6379".into(),
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
}

/// The production store.
pub struct RedisStore {
    client: redis::Client,
    options: RedisStoreOptions,
    /// `None` until the first successful connection.
    conn: Mutex<Option<ConnectionManager>>,
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
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| StoreError::Protocol(format!("invalid Redis URL: {e}")))?;
        let store = RedisStore {
            client,
            options,
            conn: Mutex::new(None),
            last_attempt: Mutex::new(None),
            scripts: Scripts {
                authorize: Script::new(include_str!("lua/authorize.lua")),
                capture: Script::new(include_str!("lua/capture.lua")),
                release: Script::new(include_str!("lua/release.lua")),
            },
        };
        if let Err(e) = store.connection().await {
            tracing::warn!(error = %e, "Redis not reachable at start-up; paid routes fail closed until it is");
        }
        Ok(store)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.options.timeout)
            .set_response_timeout(self.options.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let cm = tokio::time::timeout(
            self.options.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
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

    fn events_key(&self, bucket: u64) -> String {
        self.key(bucket, "events")
    }

    fn blocked_key(&self, payer: &str) -> String {
        self.key(super::bucket_of(payer), &format!("blocked:{payer}"))
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

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

#[async_trait]
impl Store for RedisStore {
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.authorize.prepare_invoke();
        inv.key(self.receipt_key(r))
            .key(self.blocked_key(&r.payer))
            .arg(&r.id)
            .arg(ms(r.hold));
        let reply: String = self.bounded(inv.invoke_async(&mut conn)).await?;
        match reply.as_str() {
            "reserved" => Ok(AuthorizeOutcome::Reserved),
            "blocked" => Ok(AuthorizeOutcome::PayerBlocked),
            "replayed" => Ok(AuthorizeOutcome::Replayed),
            "in_use" => Ok(AuthorizeOutcome::InUse),
            other => Err(StoreError::Protocol(format!("authorize replied {other:?}"))),
        }
    }

    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        match s {
            Settlement::Release => {
                let mut inv = self.scripts.release.prepare_invoke();
                inv.key(self.receipt_key(r)).arg(&r.id);
                let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
                Ok(if n == 1 {
                    SettleOutcome::Released
                } else {
                    SettleOutcome::NotHeld
                })
            }
            Settlement::Capture(event) => {
                let mut inv = self.scripts.capture.prepare_invoke();
                inv.key(self.receipt_key(r))
                    .key(self.events_key(r.bucket()))
                    .arg(&r.id)
                    .arg(r.spent_until_ms);
                for (k, v) in event.to_fields() {
                    inv.arg(k).arg(v);
                }
                let (status, id): (String, String) =
                    self.bounded(inv.invoke_async(&mut conn)).await?;
                match status.as_str() {
                    "captured" => Ok(SettleOutcome::Captured { event_id: id }),
                    "duplicate" => Ok(SettleOutcome::AlreadyCaptured { event_id: id }),
                    "conflict" => Ok(SettleOutcome::Conflict),
                    other => Err(StoreError::Protocol(format!("capture replied {other:?}"))),
                }
            }
        }
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

    async fn usage_events(&self) -> Result<Vec<UsageEvent>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for bucket in 0..BUCKETS {
            let key = self.events_key(bucket);
            let mut start = "-".to_owned();
            loop {
                let page: Vec<(String, Vec<(String, String)>)> = self
                    .bounded(
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg(&start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn),
                    )
                    .await?;
                let n = page.len();
                for (id, fields) in page {
                    start = format!("({id}");
                    out.push(UsageEvent::from_fields(id, &fields)?);
                }
                if n < 1000 {
                    break;
                }
            }
        }
        Ok(out)
    }
}

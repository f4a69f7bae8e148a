//! [`Drainer`]: moves the Redis store's ledger streams into PostgreSQL, then trims them.
//!
//! # How replicas share the work: leased buckets
//! Each bucket's streams are drained by the holder of that bucket's lease (a Redis key with a
//! TTL, taken or renewed before each batch), so N replicas split the buckets between them and
//! one that dies is replaced when its leases lapse. Leases rather than consumer groups:
//! nothing per consumer or per pending entry lives in Redis (no PEL to claim back after a
//! crash, no consumer names to garbage-collect), the stream itself is the queue (its head is
//! the oldest undrained entry), and a drainer that crashed between insert and trim is simply
//! followed by one that reads the same head again. Two drainers on one bucket (a lease that
//! lapsed under a slow database) insert the same entries twice, which the insert's
//! `ON CONFLICT (id) DO NOTHING` turns into exactly once.
//!
//! # Order of a batch
//! renew the bucket's lease and read the head of its three streams (one script: `XRANGE - +
//! COUNT n` each) -> insert (one statement per stream) -> trim (`XTRIM MINID`). An idle pass
//! is one call per bucket.
//! A crash before the trim leaves the entries in Redis to be inserted again; nothing is
//! trimmed that the ledger does not hold.
//!
//! # PostgreSQL down or slow
//! Paid traffic does not wait for the drainer: entries accumulate in the streams and the
//! drainer retries with exponential backoff (to [`DrainerOptions::max_backoff`]). Past
//! [`DrainerOptions::max_backlog`] entries it says so loudly (an error log each minute,
//! `tollgate_ledger_backlog_over_bound` = 1) but does not refuse traffic: the bound is the
//! operator's alarm for Redis memory, and refusing (or turning every replica unready, since
//! they share the backlog) would turn a reporting outage into a payment outage.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{LedgerError, PgLedger};
use crate::clock::{Clock, SystemClock};
use crate::store::{RedisStore, StoreError, BUCKETS};

/// Drainer settings.
#[derive(Debug, Clone)]
pub struct DrainerOptions {
    /// This drainer's id (the lease holder's name); unique per replica.
    pub id: String,
    /// Entries per batch (one INSERT statement).
    pub batch: usize,
    /// A bucket lease's lifetime (renewed before each batch).
    pub lease: Duration,
    /// Pause between passes when nothing waited.
    pub idle: Duration,
    /// Longest pause between attempts while Redis or PostgreSQL fail.
    pub max_backoff: Duration,
    /// Entries waiting past which the drainer alarms.
    pub max_backlog: u64,
}

impl Default for DrainerOptions {
    fn default() -> Self {
        DrainerOptions {
            id: uuid::Uuid::new_v4().to_string(),
            batch: 1000,
            lease: Duration::from_secs(15),
            idle: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_backlog: 1_000_000,
        }
    }
}

/// What the drainer last saw (shared with whoever reports on it).
#[derive(Debug, Default)]
pub struct DrainStatus {
    backlog: AtomicU64,
    oldest_age_ms: AtomicU64,
    over_bound: AtomicBool,
    drained: AtomicU64,
    healthy: AtomicBool,
}

impl DrainStatus {
    /// Entries waiting in Redis at the last look.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
    /// Age of the oldest waiting entry at the last look.
    pub fn oldest_age(&self) -> Duration {
        Duration::from_millis(self.oldest_age_ms.load(Ordering::Relaxed))
    }
    /// Whether the backlog is past the bound.
    pub fn over_bound(&self) -> bool {
        self.over_bound.load(Ordering::Relaxed)
    }
    /// Entries this drainer inserted (new to the ledger) since it started.
    pub fn drained(&self) -> u64 {
        self.drained.load(Ordering::Relaxed)
    }
    /// Whether the last pass reached both Redis and PostgreSQL.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Why a drain pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Redis did not answer.
    #[error("drain: Redis: {0}")]
    Store(#[from] StoreError),
    /// PostgreSQL did not answer or refused.
    #[error("drain: {0}")]
    Ledger(#[from] LedgerError),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Entries read and inserted (new or already there) and trimmed.
    pub moved: u64,
    /// Entries new to the ledger.
    pub inserted: u64,
    /// A batch was full: more may wait.
    pub more: bool,
}

/// Drains one Redis store's ledger streams into one ledger database. See the module docs.
pub struct Drainer {
    /// Read and trimmed (its own connection: draining never queues behind paid traffic).
    store: Arc<RedisStore>,
    ledger: Arc<PgLedger>,
    options: DrainerOptions,
    status: Arc<DrainStatus>,
    /// Fault injection: after the next insert, signal and stop forever before trimming.
    stall_after_insert: Option<tokio::sync::oneshot::Sender<()>>,
}

debug_fields!(Drainer { options });

impl Drainer {
    /// A drainer with default options.
    pub fn new(store: Arc<RedisStore>, ledger: Arc<PgLedger>) -> Self {
        Drainer {
            store,
            ledger,
            options: DrainerOptions::default(),
            status: Arc::new(DrainStatus::default()),
            stall_after_insert: None,
        }
    }

    /// Set the options.
    #[must_use]
    pub fn options(mut self, options: DrainerOptions) -> Self {
        self.options = options;
        self
    }

    /// What it last saw.
    pub fn status(&self) -> Arc<DrainStatus> {
        self.status.clone()
    }

    /// Fault injection for tests: after the next batch is inserted, send on `signal` and
    /// hang before trimming (abort the task to "kill" the drainer mid-batch).
    #[doc(hidden)]
    #[must_use]
    pub fn stall_after_insert(mut self, signal: tokio::sync::oneshot::Sender<()>) -> Self {
        self.stall_after_insert = Some(signal);
        self
    }

    /// One pass over every bucket whose lease this drainer holds (or takes): one batch per
    /// stream, inserted and then trimmed.
    pub async fn drain_once(&mut self) -> Result<Pass, DrainError> {
        let mut pass = Pass::default();
        for bucket in 0..BUCKETS {
            let Some(batches) = self
                .store
                .lease_and_read(
                    bucket,
                    &self.options.id,
                    self.options.lease,
                    self.options.batch,
                )
                .await?
            else {
                continue;
            };
            for batch in batches.iter().filter(|b| !b.is_empty()) {
                let inserted = self.ledger.insert_batch(batch).await?;
                if let Some(signal) = self.stall_after_insert.take() {
                    let _ = signal.send(());
                    std::future::pending::<()>().await;
                }
                // Counted once inserted (a failed trim leaves them to be inserted again,
                // which adds nothing new).
                self.status.drained.fetch_add(inserted, Ordering::Relaxed);
                crate::metrics::global()
                    .ledger_drained
                    .with_label_values(&[batch.stream.name()])
                    .inc_by(inserted);
                self.store.trim_ledger(batch).await?;
                pass.moved += u64::try_from(batch.entries.len()).unwrap_or(u64::MAX);
                pass.inserted += inserted;
                pass.more |= batch.entries.len() >= self.options.batch;
            }
        }
        Ok(pass)
    }

    /// Look at what waits in Redis: the status and the backlog metrics.
    pub async fn observe_backlog(&self) -> Result<(), DrainError> {
        let backlog = self.store.ledger_backlog().await?;
        let age_ms = backlog
            .oldest_ms
            .map_or(0, |t| u64::try_from(SystemClock.now_ms() - t).unwrap_or(0));
        let over = backlog.entries > self.options.max_backlog;
        self.status
            .backlog
            .store(backlog.entries, Ordering::Relaxed);
        self.status.oldest_age_ms.store(age_ms, Ordering::Relaxed);
        self.status.over_bound.store(over, Ordering::Relaxed);
        let m = crate::metrics::global();
        m.ledger_backlog_events
            .set(i64::try_from(backlog.entries).unwrap_or(i64::MAX));
        // Seconds for display, not money: a float is the metric's own type.
        m.ledger_backlog_age_seconds
            .set(Duration::from_millis(age_ms).as_secs_f64());
        m.ledger_backlog_over_bound.set(i64::from(over));
        Ok(())
    }

    /// Drain until the task is dropped: passes back to back while entries wait, a pause of
    /// [`DrainerOptions::idle`] when none did, exponential backoff while Redis or PostgreSQL
    /// fail. The backlog is looked at about once a second.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut last_look: Option<Instant> = None;
        let mut last_alarm: Option<Instant> = None;
        loop {
            if last_look.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_look = Some(Instant::now());
                match self.observe_backlog().await {
                    Ok(()) if self.status.over_bound() => {
                        if last_alarm.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            last_alarm = Some(Instant::now());
                            tracing::error!(
                                backlog = self.status.backlog(),
                                max_backlog = self.options.max_backlog,
                                oldest_age_secs = self.status.oldest_age().as_secs(),
                                "ledger backlog past ledger.max_backlog: the ledger database is not keeping up; Redis memory grows until it catches up (paid traffic is still served)"
                            );
                        }
                    }
                    Ok(()) => {}
                    Err(e) => tracing::debug!(error = %e, "ledger backlog not observed"),
                }
            }
            match self.drain_once().await {
                Ok(pass) => {
                    self.status.healthy.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    if !pass.more {
                        tokio::time::sleep(self.options.idle).await;
                    }
                }
                Err(e) => {
                    self.status.healthy.store(false, Ordering::Relaxed);
                    let stage = match e {
                        DrainError::Store(_) => "redis",
                        DrainError::Ledger(_) => "postgres",
                    };
                    crate::metrics::global()
                        .ledger_drain_errors
                        .with_label_values(&[stage])
                        .inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis(), "ledger drain failed; entries wait in Redis");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }
}

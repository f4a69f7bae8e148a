//! Balance leases: a replica holds a slice of a payer's balance in the store (one script),
//! admits the payer's token-paid requests from it in process, and records their charges in
//! batches -- so a prepaid agent's request costs no store round trip at all.
//!
//! The rules, and why they keep money exact:
//! - A draw is admitted only while the replica's view of the payer is at most
//!   [`LeaseConfig::staleness`] old (else it syncs first): a block or a top-up takes effect
//!   within that bound.
//! - A draw is admitted only from the lease's free room (`granted - reserved - spent`), so the
//!   charges a replica records never exceed what it held, except metered overruns, which the
//!   store takes from the balance as far as it goes (never below zero).
//! - Every served request's charge is recorded by the next sync (every
//!   [`LeaseConfig::sync_every`], or sooner when a batch is full), exactly once: each batch has
//!   a sequence number the store checks, so a retry after a lost reply is skipped.
//! - A replica that dies loses the charges drawn since its last sync (the provider's loss: the
//!   payer keeps that money); its lease lapses after [`LeaseConfig::ttl`] and the store gives
//!   it back to the balance like any expired hold. A replica that finds its own lease lapsed
//!   (a pause longer than the ttl) still records its charges, from the balance, and counts
//!   the lapse (`tollgate_lease_lapsed_total`).
//! - An unused lease is returned after [`LeaseConfig::idle`]; [`super::Paywall::close`]
//!   returns every lease at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::store::{
    utc_day, HoldOutcome, LeaseResize, LeaseStatus, LeaseStore, LeaseSync, StoreError, UsageEvent,
};

/// How balance leases behave ([`super::PaywallBuilder::leases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Room a lease keeps for new draws, in requests at the latest draw's amount (default 64).
    pub requests: u32,
    /// How often charges are recorded and busy leases renewed (default 100 ms).
    pub sync_every: Duration,
    /// The oldest view of a payer (blocked, balance) a draw may be admitted on (default
    /// 250 ms): the bound within which a block or a top-up takes effect.
    pub staleness: Duration,
    /// How long a lease lasts unsynced in the store (default 10 s): a dead replica's lease is
    /// given back to the payer after this.
    pub ttl: Duration,
    /// An unused lease is returned to the balance after this (default 2 s).
    pub idle: Duration,
    /// Most charges recorded by one sync (default 512).
    pub batch_max: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            requests: 64,
            sync_every: Duration::from_millis(100),
            staleness: Duration::from_millis(250),
            ttl: Duration::from_secs(10),
            idle: Duration::from_secs(2),
            batch_max: 512,
        }
    }
}

/// Every lease of one replica.
#[derive(Debug)]
pub(super) struct LeaseBook {
    store: Arc<dyn LeaseStore>,
    config: LeaseConfig,
    /// This replica's id in lease ids (random per process).
    replica: String,
    next_id: AtomicU64,
    /// By payer, then currency (looked up by `&str`: no allocation per draw).
    cells: Mutex<HashMap<String, HashMap<String, Arc<Cell>>>>,
    wake: Arc<tokio::sync::Notify>,
    started: AtomicBool,
    closed: AtomicBool,
    /// How long a sync whose outcome is unknown is retried before giving up for this round.
    retry: Duration,
}

/// One payer's lease in one currency.
#[derive(Debug)]
pub(super) struct Cell {
    id: String,
    payer: String,
    currency: String,
    state: Mutex<State>,
    /// Syncs of one lease run one at a time.
    sync: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// What the lease held after the last sync.
    granted: u64,
    /// Draws being served.
    reserved: u64,
    /// Charges not yet recorded (pending and unsent).
    spent: u64,
    pending: Vec<UsageEvent>,
    /// A batch sent whose outcome is unknown: sent again, with its sequence, before anything.
    unsent: Option<(u64, Vec<UsageEvent>)>,
    seq: u64,
    /// The balance outside every hold, as of the last sync.
    balance: u64,
    blocked: bool,
    synced: Option<Instant>,
    used: Option<Instant>,
    /// The latest draw's amount: the lease keeps room for `requests` of these.
    hint: u64,
    /// Being returned: draws wait for the next sync.
    returning: bool,
    /// Taken out of the book: a draw looks the payer up again.
    evicted: bool,
    syncs: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the numbers half-updated (each update is a
    // few integer assignments), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    fn fresh(&self, staleness: Duration) -> bool {
        !self.returning && self.synced.is_some_and(|t| t.elapsed() <= staleness)
    }

    fn room(&self) -> u64 {
        self.granted
            .saturating_sub(self.reserved.saturating_add(self.spent))
    }
}

/// A request drawn from a lease: settled with [`Draw::settle`] or given back with
/// [`Draw::give_back`].
#[derive(Debug, Clone)]
pub(super) struct Draw {
    book: Arc<LeaseBook>,
    cell: Arc<Cell>,
    amount_minor: u64,
}

impl Draw {
    /// A served request: its charge (`event.amount_minor`) is recorded by the lease's next
    /// sync. Returns the payer's balance as this replica sees it now (lease room + balance).
    pub(super) fn settle(&self, event: UsageEvent) -> u64 {
        let (full, balance) = {
            let mut s = lock(&self.cell.state);
            s.reserved = s.reserved.saturating_sub(self.amount_minor);
            s.spent = s.spent.saturating_add(event.amount_minor);
            s.pending.push(event);
            (
                s.pending.len() >= self.book.config.batch_max,
                s.room().saturating_add(s.balance),
            )
        };
        if full {
            self.book.wake.notify_one();
        }
        balance
    }

    /// A request not served: its draw goes back to the lease's room.
    pub(super) fn give_back(&self) {
        let mut s = lock(&self.cell.state);
        s.reserved = s.reserved.saturating_sub(self.amount_minor);
    }
}

impl LeaseBook {
    pub(super) fn new(store: Arc<dyn LeaseStore>, config: LeaseConfig, retry: Duration) -> Self {
        LeaseBook {
            store,
            config,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            next_id: AtomicU64::new(1),
            cells: Mutex::new(HashMap::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            retry,
        }
    }

    fn cell(&self, payer: &str, currency: &str) -> Arc<Cell> {
        let mut cells = self
            .cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cell) = cells.get(payer).and_then(|c| c.get(currency)) {
            return cell.clone();
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(Cell {
            id: format!("lease:{}:{n}:{currency}", self.replica),
            payer: payer.to_owned(),
            currency: currency.to_owned(),
            state: Mutex::new(State::default()),
            sync: tokio::sync::Mutex::new(()),
        });
        cells
            .entry(payer.to_owned())
            .or_default()
            .insert(currency.to_owned(), cell.clone());
        cell
    }

    /// Start the background sync once (needs a Tokio runtime: the first draw is in one).
    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (weak, wake) = (Arc::downgrade(self), self.wake.clone());
        let every = self.config.sync_every;
        tokio::spawn(async move { run(weak, wake, every).await });
    }

    /// Draw `amount_minor` for one request. `Ok(Err(..))`: refused (blocked, insufficient)
    /// as a hold would be; `Err`: the store could not be reached to renew the lease.
    pub(super) async fn draw(
        self: &Arc<Self>,
        payer: &str,
        currency: &str,
        amount_minor: u64,
    ) -> Result<Result<(Draw, u64), HoldOutcome>, StoreError> {
        self.start();
        let staleness = self.config.staleness;
        for attempt in 0..4 {
            let cell = self.cell(payer, currency);
            let seen = {
                let mut s = lock(&cell.state);
                if s.evicted {
                    continue;
                }
                s.used = Some(Instant::now());
                s.hint = amount_minor;
                if s.fresh(staleness) {
                    if s.blocked {
                        return Ok(Err(HoldOutcome::PayerBlocked));
                    }
                    let room = s.room();
                    if room >= amount_minor {
                        s.reserved += amount_minor;
                        let balance = (room - amount_minor).saturating_add(s.balance);
                        drop(s);
                        let draw = Draw {
                            book: self.clone(),
                            cell,
                            amount_minor,
                        };
                        return Ok(Ok((draw, balance)));
                    }
                    if attempt > 0 {
                        return Ok(Err(HoldOutcome::Insufficient {
                            balance_minor: room.saturating_add(s.balance),
                        }));
                    }
                }
                s.syncs
            };
            self.sync(&cell, Some(seen), LeaseResize::Grow).await?;
        }
        Err(StoreError::Unavailable(
            "the payer's balance lease is busy; retry".into(),
        ))
    }

    /// One sync of `cell`: record a batch of its charges and resize it. `seen`: skip it if
    /// another sync completed since (the caller's view is fresh again).
    async fn sync(
        &self,
        cell: &Arc<Cell>,
        seen: Option<u64>,
        resize: LeaseResize,
    ) -> Result<(), StoreError> {
        let _one = cell.sync.lock().await;
        let (seq, batch, reserved, target) = {
            let mut s = lock(&cell.state);
            if seen.is_some_and(|n| n != s.syncs) && s.fresh(self.config.staleness) {
                return Ok(());
            }
            if resize == LeaseResize::Fit {
                if s.reserved > 0 || !s.pending.is_empty() || s.unsent.is_some() {
                    return Ok(());
                }
                s.returning = true;
            }
            let (seq, batch) = match s.unsent.take() {
                Some(b) => b,
                None if s.pending.is_empty() => (0, Vec::new()),
                None => {
                    let n = batch_len(&s.pending, self.config.batch_max);
                    s.seq += 1;
                    (s.seq, s.pending.drain(..n).collect())
                }
            };
            let target = match resize {
                LeaseResize::Fit => 0,
                LeaseResize::Grow => s.hint.saturating_mul(u64::from(self.config.requests)),
            };
            (seq, batch, s.reserved, target)
        };
        let sync = LeaseSync {
            lease_id: &cell.id,
            payer: &cell.payer,
            currency: &cell.currency,
            seq,
            reserved_minor: reserved,
            target_minor: target,
            resize,
            ttl: self.config.ttl,
            charges: &batch,
        };
        let outcome = super::reconcile::retry_unknown(self.retry, || {
            crate::metrics::timed("lease_sync", self.store.lease_sync(&sync))
        })
        .await;
        let m = crate::metrics::global();
        let mut s = lock(&cell.state);
        s.returning = false;
        let r = match outcome {
            Ok(r) => r,
            Err(e) => {
                if !batch.is_empty() {
                    s.unsent = Some((seq, batch));
                }
                m.lease_syncs.with_label_values(&["error"]).inc();
                return Err(e);
            }
        };
        let recorded: u64 = batch.iter().map(|e| e.amount_minor).sum();
        s.spent = s.spent.saturating_sub(recorded);
        if !r.had_lease && s.granted > 0 {
            tracing::warn!(payer = %cell.payer, lease = %cell.id, held = s.granted, "the balance lease lapsed before it was synced (a pause longer than its ttl): its charges are taken from the balance");
            m.lease_lapsed.inc();
        }
        if !r.short.is_empty() {
            tracing::warn!(payer = %cell.payer, uncharged_minor = r.uncharged_minor(), "usage beyond the lease and the balance was not charged");
        }
        for (i, u) in &r.short {
            if let Some(e) = batch.get(*i) {
                m.uncharged_minor
                    .with_label_values(&[e.route.as_str(), e.currency.as_str()])
                    .inc_by(*u);
            }
        }
        s.granted = r.lease_minor;
        s.balance = r.balance_minor;
        s.blocked = r.status == LeaseStatus::Blocked;
        s.synced = Some(Instant::now());
        s.syncs += 1;
        let label = match r.status {
            LeaseStatus::Ok => "ok",
            LeaseStatus::Blocked => "blocked",
            LeaseStatus::Duplicate => "duplicate",
        };
        m.lease_syncs.with_label_values(&[label]).inc();
        m.lease_charges.inc_by(batch.len() as u64);
        Ok(())
    }

    /// One round of the background sync: record pending charges, keep busy leases fresh,
    /// return idle ones, forget long-unused payers.
    async fn tick(&self) {
        let cells = self.all_cells();
        let c = &self.config;
        for cell in cells {
            enum Do {
                Sync,
                Return,
                Evict,
                Nothing,
            }
            let action = {
                let s = lock(&cell.state);
                let idle = s.used.is_none_or(|t| t.elapsed() > c.idle);
                let age = s.synced.map_or(Duration::MAX, |t| t.elapsed());
                if s.unsent.is_some() || !s.pending.is_empty() {
                    Do::Sync
                } else if s.granted > 0 && s.reserved == 0 && idle {
                    Do::Return
                } else if s.granted > 0 && age > c.staleness / 2 {
                    Do::Sync
                } else if s.granted == 0 && s.reserved == 0 && idle && age > c.idle * 30 {
                    Do::Evict
                } else {
                    Do::Nothing
                }
            };
            let result = match action {
                Do::Sync => self.sync(&cell, None, LeaseResize::Grow).await,
                Do::Return => self.sync(&cell, None, LeaseResize::Fit).await,
                Do::Evict => {
                    self.evict(&cell);
                    Ok(())
                }
                Do::Nothing => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, payer = %cell.payer, "balance lease sync failed; retried next round");
            }
        }
    }

    fn all_cells(&self) -> Vec<Arc<Cell>> {
        self.cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flat_map(|c| c.values().cloned())
            .collect()
    }

    fn evict(&self, cell: &Arc<Cell>) {
        let mut cells = self
            .cells
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut s = lock(&cell.state);
        if s.granted == 0 && s.reserved == 0 && s.pending.is_empty() && s.unsent.is_none() {
            s.evicted = true;
            if let Some(of_payer) = cells.get_mut(&cell.payer) {
                of_payer.remove(&cell.currency);
                if of_payer.is_empty() {
                    cells.remove(&cell.payer);
                }
            }
        }
    }

    /// Record every pending charge and return every lease (shutdown, or the paywall replaced
    /// by a reload). Draws still in flight keep their lease until the next round.
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let cells = self.all_cells();
        for cell in cells {
            for _ in 0..64 {
                let more = {
                    let s = lock(&cell.state);
                    s.unsent.is_some() || !s.pending.is_empty()
                };
                if !more {
                    break;
                }
                if let Err(e) = self.sync(&cell, None, LeaseResize::Grow).await {
                    tracing::error!(error = %e, payer = %cell.payer, "charges of a balance lease could not be recorded at shutdown");
                    break;
                }
            }
            if let Err(e) = self.sync(&cell, None, LeaseResize::Fit).await {
                tracing::warn!(error = %e, payer = %cell.payer, "a balance lease could not be returned; it lapses after its ttl");
            }
        }
    }
}

/// How many of the pending charges the next batch takes: at most `max`, all of the first one's
/// UTC day (a batch's aggregates are one day's).
fn batch_len(pending: &[UsageEvent], max: usize) -> usize {
    let day = pending.first().map(|e| utc_day(e.time_ms));
    pending
        .iter()
        .take(max)
        .take_while(|e| Some(utc_day(e.time_ms)) == day)
        .count()
}

/// The background sync: every `every`, or at once when a batch is full; ends with the book.
async fn run(book: Weak<LeaseBook>, wake: Arc<tokio::sync::Notify>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        {
            // Held only for the round: the book ends with its paywall.
            let Some(b) = book.upgrade() else {
                return;
            };
            if b.closed.load(Ordering::Acquire) {
                return;
            }
            b.tick().await;
        }
        tokio::select! {
            _ = interval.tick() => {}
            () = wake.notified() => {}
        }
    }
}

impl super::Paywall {
    /// Admit a token-paid request from the payer's balance lease: refused as a balance hold
    /// would be (blocked, insufficient: a 402 with the standing), 503 if the lease cannot be
    /// renewed.
    pub(super) async fn admit_lease(
        &self,
        book: &Arc<LeaseBook>,
        route: &Arc<crate::price::PricedRoute>,
        payer: &str,
        currency: &crate::money::Currency,
        amount_minor: u64,
        cap_minor: Option<u64>,
    ) -> Result<(super::Payment, super::admission::Secured), super::Refusal> {
        let drawn = book
            .draw(payer, currency.code(), amount_minor)
            .await
            .map_err(|e| super::Refusal::store_down(e, "lease"))?;
        let hold = crate::store::Hold {
            id: uuid::Uuid::new_v4().to_string(),
            payer: payer.to_owned(),
            currency: currency.code().to_owned(),
            amount_minor,
            ttl: self.hold_time(route),
            mandate: None,
            plan: None,
        };
        let (draw, balance_minor) = match drawn {
            Ok(d) => d,
            Err(refused) => {
                return Err(self
                    .hold_outcome(refused, &hold, route)
                    .err()
                    .unwrap_or_else(super::Refusal::internal))
            }
        };
        let payment = super::Payment {
            payer: payer.to_owned(),
            charge: crate::money::Money {
                amount: currency.from_minor(amount_minor),
                currency: currency.clone(),
            },
            credential: format!("token:{payer}"),
            metered: matches!(route.price, crate::price::Price::Metered(_)),
        };
        let held = super::admission::BalanceHold {
            hold,
            cap_minor,
            balance_minor,
            new_token: None,
            fixed_charge: None,
        };
        Ok((payment, super::admission::Secured::Lease(held, draw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time_ms: i64) -> UsageEvent {
        UsageEvent {
            id: String::new(),
            time_ms,
            payer: "p".into(),
            route: "r".into(),
            method: "GET".into(),
            units: Default::default(),
            unit_prices: Default::default(),
            currency: "USD".into(),
            scale: 6,
            amount_minor: 1,
            uncharged_minor: 0,
            credential: "token:p".into(),
            reservation: String::new(),
            upstream_status: 200,
            voids: None,
        }
    }

    #[test]
    fn a_batch_never_spans_midnight_nor_its_bound() {
        let midnight = 1_764_633_600_000; // 2025-12-02T00:00:00Z
        assert_eq!(batch_len(&[], 8), 0);
        // Up to the last millisecond of the day, then the next day starts a batch of its own.
        let pending = [
            at(midnight - 2),
            at(midnight - 1),
            at(midnight),
            at(midnight + 1),
        ];
        assert_eq!(batch_len(&pending, 8), 2);
        assert_eq!(batch_len(&pending[2..], 8), 2);
        assert_eq!(batch_len(&pending, 1), 1);
        let same_day: Vec<_> = (0..10).map(|i| at(midnight + i)).collect();
        assert_eq!(batch_len(&same_day, 4), 4);
        assert_eq!(batch_len(&same_day, 64), 10);
    }
}

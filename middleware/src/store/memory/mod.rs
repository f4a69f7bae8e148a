//! The embedded store: one process, no Redis. Same state machine as the Redis scripts, under
//! one mutex (each method is one critical section, so it is as atomic as a script).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    days_between, event_order, fold_aggregates, utc_day, Account, AuthorizeOutcome, Balance,
    BalanceStore, ChargeOutcome, Credit, CreditOutcome, DailyUsage, Hold, HoldOutcome,
    HoldSettleOutcome, Idempotency, IdempotencyClaim, IdempotencyStore, JobOutcome, LedgerStore,
    MandateCharge, MandateStore, MandateUse, PayerControl, PayerSpend, PlanPeriod, PlanStore,
    ReceiptStore, Renewal, Reservation, SettleOutcome, Settlement, SettlementJob, SettlementQueue,
    StoreError, SubscribeOutcome, Subscription, UsageEvent, VoidOutcome,
};
use crate::clock::{Clock, SystemClock};

mod balances;
mod charge;
mod control;
mod idempotency;
mod ledger;
mod mandates;
mod plans;
mod queue;
mod receipts;

#[derive(Debug)]
enum ReceiptState {
    Held {
        reservation: String,
        until_ms: i64,
    },
    Spent {
        reservation: String,
        event_id: String,
        until_ms: i64,
    },
    Credited {
        credit_id: String,
        until_ms: i64,
    },
    Revoked {
        until_ms: i64,
    },
}

impl ReceiptState {
    fn until(&self) -> i64 {
        match self {
            ReceiptState::Held { until_ms, .. }
            | ReceiptState::Spent { until_ms, .. }
            | ReceiptState::Credited { until_ms, .. }
            | ReceiptState::Revoked { until_ms } => *until_ms,
        }
    }
}

#[derive(Debug)]
struct HoldEntry {
    payer: String,
    currency: String,
    amount: i64,
    until_ms: i64,
}

#[derive(Debug, Default)]
struct State {
    /// Receipt and idempotency states by key; expired entries are treated as absent.
    receipts: HashMap<String, ReceiptState>,
    /// The first payer to present each receipt, by (iss, jti) fingerprint, with its keep-until
    /// (unix ms): a receipt is single use per (iss, jti), whatever its `sub` (as the Redis
    /// store's owner keys).
    owners: HashMap<String, (String, i64)>,
    /// Blocked payers.
    blocked: HashSet<String>,
    /// Accounts by (payer, currency).
    accounts: HashMap<(String, String), Balance>,
    /// Holds in flight by reservation id.
    holds: HashMap<String, HoldEntry>,
    /// The usage ledger, in id order.
    events: Vec<UsageEvent>,
    /// Aggregates by (day, payer) -> field -> value.
    aggregates: HashMap<(String, String), BTreeMap<String, i64>>,
    /// Settled balance holds: reservation -> (event id, charged, uncharged), so a retried
    /// capture learns the first outcome.
    settled: HashMap<String, (String, u64, u64)>,
    /// When each `settled` entry was written (oldest first): entries are forgotten after a day,
    /// as the Redis store's markers expire, so the map stays bounded.
    settled_at: std::collections::VecDeque<(i64, String)>,
    /// GCRA theoretical arrival times by (payer, route).
    rates: HashMap<(String, String), i64>,
    /// Sequence for ledger ids.
    seq: u64,
    /// Mandate windows by (mandate key, window start).
    windows: HashMap<(String, i64), MandateWindow>,
    /// Revoked mandate keys.
    revoked_mandates: HashSet<String>,
    /// Mandates each payer used: payer -> mandate key -> summary (JSON).
    mandates: HashMap<String, BTreeMap<String, String>>,
    /// Plan periods by (payer, plan).
    subs: HashMap<(String, String), PlanPeriod>,
    /// Plan-covered calls given back (reservation ids).
    plan_released: HashSet<String>,
    /// Queued and failed x402 settlements by job id, with their due time (ms).
    jobs: BTreeMap<String, (SettlementJob, i64)>,
    /// Request idempotency keys by (payer, key).
    idempotency: HashMap<(String, String), IdempotencyEntry>,
}

/// A claimed request `Idempotency-Key`.
#[derive(Debug)]
struct IdempotencyEntry {
    fingerprint: String,
    token: String,
    /// The usage event and its time once served and charged.
    done: Option<(String, i64)>,
    until_ms: i64,
}

#[derive(Debug, Default)]
struct MandateWindow {
    spent: u64,
    /// Reservation -> (amount, until ms).
    holds: HashMap<String, (u64, i64)>,
}

/// Why a mandate refused a reservation.
enum MandateRefusal {
    Revoked,
    Exceeded(u64),
}

impl State {
    /// Claim (issuer, receipt id) for `payer`; true when another payer presented it first.
    /// x402 nonces are not claimed (single use under the payer's address by definition).
    fn owned_by_other(
        &mut self,
        payer: &str,
        issuer: &str,
        receipt_id: &str,
        until_ms: i64,
        now: i64,
    ) -> bool {
        if issuer == crate::x402::STORE_ISSUER {
            return false;
        }
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        match self.owners.get(&fp) {
            Some((owner, until)) if *until > now => owner != payer,
            _ => {
                if self.owners.len() % 1024 == 1023 {
                    self.owners.retain(|_, (_, until)| *until > now);
                }
                self.owners.insert(fp, (payer.to_owned(), until_ms));
                false
            }
        }
    }

    /// Room left in a mandate window (expired reservations dropped), not counting `except`.
    fn mandate_room(&mut self, m: &MandateCharge, now: i64, except: Option<&str>) -> i64 {
        let w = self
            .windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default();
        w.holds.retain(|_, (_, until)| *until > now);
        let held: u64 = w
            .holds
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .map(|(_, (a, _))| *a)
            .sum();
        i64::try_from(m.budget_minor).unwrap_or(i64::MAX)
            - i64::try_from(w.spent.saturating_add(held)).unwrap_or(i64::MAX)
    }

    /// Check a mandate can take `m.amount_minor` (not reserving yet).
    fn mandate_check(&mut self, m: &MandateCharge, now: i64) -> Result<(), MandateRefusal> {
        if self.revoked_mandates.contains(&m.key) {
            return Err(MandateRefusal::Revoked);
        }
        let room = self.mandate_room(m, now, None);
        if i64::try_from(m.amount_minor).unwrap_or(i64::MAX) > room {
            return Err(MandateRefusal::Exceeded(u64::try_from(room).unwrap_or(0)));
        }
        Ok(())
    }

    fn mandate_reserve(&mut self, payer: &str, m: &MandateCharge, reservation: &str, until: i64) {
        self.windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default()
            .holds
            .insert(reservation.to_owned(), (m.amount_minor, until));
        self.mandates
            .entry(payer.to_owned())
            .or_default()
            .insert(m.key.clone(), m.summary.clone());
    }

    fn mandate_settle(&mut self, m: &MandateCharge, reservation: &str, charge: u64) {
        let w = self
            .windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default();
        w.holds.remove(reservation);
        w.spent = w.spent.saturating_add(charge);
    }
}

/// The in-process store. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

fn minor(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl MemoryStore {
    /// An empty store using `clock` for expiry.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State::default())),
            clock,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store poisoned".into()))
    }

    fn receipt_key(r: &Reservation) -> String {
        format!("r:{}:{}", r.bucket(), r.fingerprint())
    }

    fn live<'a>(state: &'a State, key: &str, now: i64) -> Option<&'a ReceiptState> {
        state.receipts.get(key).filter(|s| s.until() > now)
    }

    fn next_id(s: &mut State, now: i64) -> String {
        s.seq += 1;
        format!("{}-{}-0", now.max(0), s.seq)
    }

    fn record(
        s: &mut State,
        now: i64,
        mut event: UsageEvent,
        amount: u64,
        uncharged: u64,
    ) -> String {
        let id = Self::next_id(s, now);
        event.id = id.clone();
        event.amount_minor = amount;
        event.uncharged_minor = uncharged;
        let day = utc_day(event.time_ms);
        let agg = s.aggregates.entry((day, event.payer.clone())).or_default();
        *agg.entry(event.amount_field()).or_default() += i64::try_from(amount).unwrap_or(i64::MAX);
        for (f, n) in event.aggregate_fields() {
            *agg.entry(f).or_default() += i64::try_from(n).unwrap_or(i64::MAX);
        }
        s.events.push(event);
        id
    }

    /// Record how a balance request was settled (kept a day).
    fn remember_settled(s: &mut State, now: i64, id: &str, outcome: (String, u64, u64)) {
        const KEEP_MS: i64 = 86_400_000;
        while s
            .settled_at
            .front()
            .is_some_and(|(t, _)| *t <= now.saturating_sub(KEEP_MS))
        {
            if let Some((_, old)) = s.settled_at.pop_front() {
                s.settled.remove(&old);
            }
        }
        if s.settled.insert(id.to_owned(), outcome).is_none() {
            s.settled_at.push_back((now, id.to_owned()));
        }
    }

    /// Give back the payer's expired holds.
    fn sweep(s: &mut State, payer: &str, now: i64) {
        let expired: Vec<String> = s
            .holds
            .iter()
            .filter(|(_, h)| h.payer == payer && h.until_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(h) = s.holds.remove(&id) {
                let acct = s.accounts.entry((h.payer, h.currency)).or_default();
                acct.held -= h.amount;
                acct.available += h.amount;
            }
        }
    }
}

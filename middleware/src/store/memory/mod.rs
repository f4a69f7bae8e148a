//! The embedded store: one process, no Redis. Same state machine as the Redis scripts, under
//! one mutex (each method is one critical section, so it is as atomic as a script).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::rules::{self, minor};
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
    /// A top-up receipt or an admin idempotency key, applied (`spent:credit:<id>` on Redis).
    Credited {
        credit_id: String,
        until_ms: i64,
    },
    /// A subscribe receipt, spent on a plan period (`spent:sub:<id>` on Redis).
    Subscribed {
        event_id: String,
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
            | ReceiptState::Subscribed { until_ms, .. }
            | ReceiptState::Revoked { until_ms } => *until_ms,
        }
    }
}

/// How a balance request was settled: the Redis store's `done:<reservation>` marker, so a
/// retried capture learns the first outcome and a void finds what it undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settled {
    /// Captured, or charged at admission (`<event id>|<charged>|<uncharged>|<currency>`).
    Charged {
        event_id: String,
        charged: u64,
        uncharged: u64,
        currency: String,
    },
    /// A plan-covered call recorded (`<event id>`).
    Plan { event_id: String },
    /// A plan-covered call given back (`released`).
    Released,
    /// A charge at admission undone (`void|<id>`).
    Voided,
}

#[derive(Debug)]
struct HoldEntry {
    payer: String,
    currency: String,
    amount: u64,
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
    /// Settled balance requests by reservation, with their keep-until (unix ms): forgotten
    /// when the Redis store's markers expire (a day; a charge at admission: the hold time +
    /// 60 s).
    settled: HashMap<String, (Settled, i64)>,
    /// `settled` entries by expiry (soonest first, a min-heap), so forgetting them is cheap
    /// and the map stays bounded.
    settled_expiry: std::collections::BinaryHeap<std::cmp::Reverse<(i64, String)>>,
    /// GCRA theoretical arrival times by (payer, route).
    rates: HashMap<(String, String), i64>,
    /// Sequence for ledger ids.
    seq: u64,
    /// The time part of the last ledger id: ids never go back in time, so the ledger (kept in
    /// append order) is in id order, which `events_after` pages by -- callers read the clock
    /// before taking the lock, so two writers can reach it in the other order.
    last_id_ms: i64,
    /// Mandate windows by (mandate key, window start).
    windows: HashMap<(String, i64), MandateWindow>,
    /// Revoked mandate keys.
    revoked_mandates: HashSet<String>,
    /// Mandates each payer used: payer -> mandate key -> summary (JSON).
    mandates: HashMap<String, BTreeMap<String, String>>,
    /// Plan periods by (payer, plan).
    subs: HashMap<(String, String), PlanPeriod>,
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
    /// The budget written by the last reservation (a capture clamps to it, as Redis's window
    /// hash `budget` field).
    budget: u64,
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

    /// Room left in a mandate window of `budget` (expired reservations dropped), not counting
    /// `except`.
    fn mandate_room(
        &mut self,
        m: &MandateCharge,
        budget: u64,
        now: i64,
        except: Option<&str>,
    ) -> i64 {
        let w = self
            .windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default();
        w.holds.retain(|_, (_, until)| *until > now);
        let held = w
            .holds
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .fold(0u64, |sum, (_, (a, _))| sum.saturating_add(*a));
        rules::mandate_room(budget, w.spent, held)
    }

    /// Check a mandate can take `amount` (not reserving yet).
    fn mandate_check(
        &mut self,
        m: &MandateCharge,
        amount: u64,
        now: i64,
    ) -> Result<(), MandateRefusal> {
        if self.revoked_mandates.contains(&m.key) {
            return Err(MandateRefusal::Revoked);
        }
        let room = self.mandate_room(m, m.budget_minor, now, None);
        rules::mandate_admits(room, amount).map_err(MandateRefusal::Exceeded)
    }

    /// Reserve `amount` of the window for `reservation` until `until` (after
    /// [`State::mandate_check`] said yes, in the same critical section).
    fn mandate_reserve(
        &mut self,
        payer: &str,
        m: &MandateCharge,
        amount: u64,
        reservation: &str,
        until: i64,
    ) {
        let w = self
            .windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default();
        w.budget = m.budget_minor;
        w.holds.insert(reservation.to_owned(), (amount, until));
        self.mandates
            .entry(payer.to_owned())
            .or_default()
            .insert(m.key.clone(), m.summary.clone());
    }

    /// The reservation leaves the window; `charge` (0 for a release) is spent in it.
    fn mandate_settle(&mut self, m: &MandateCharge, reservation: &str, charge: u64) {
        let w = self
            .windows
            .entry((m.key.clone(), m.window_start_ms))
            .or_default();
        w.holds.remove(reservation);
        w.spent = w.spent.saturating_add(charge);
    }

    /// A payer's account in one currency (zero when it has none).
    fn balance(&self, payer: &str, currency: &str) -> Balance {
        self.accounts
            .get(&(payer.to_owned(), currency.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Write a payer's account in one currency.
    fn set_balance(&mut self, payer: &str, currency: &str, b: Balance) {
        self.accounts
            .insert((payer.to_owned(), currency.to_owned()), b);
    }

    /// How reservation `id` was settled, while remembered.
    fn settled(&self, id: &str, now: i64) -> Option<&Settled> {
        self.settled
            .get(id)
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s)
    }

    /// Remember how reservation `id` was settled until `until` (forgetting what expired).
    fn remember_settled(&mut self, now: i64, id: &str, outcome: Settled, until: i64) {
        while let Some(std::cmp::Reverse((t, old))) = self.settled_expiry.peek().cloned() {
            if t > now {
                break;
            }
            self.settled_expiry.pop();
            if self.settled.get(&old).is_some_and(|(_, u)| *u <= now) {
                self.settled.remove(&old);
            }
        }
        self.settled.insert(id.to_owned(), (outcome, until));
        self.settled_expiry
            .push(std::cmp::Reverse((until, id.to_owned())));
    }

    /// Replace the outcome of a remembered settlement, keeping its expiry (Redis `KEEPTTL`).
    fn restate_settled(&mut self, id: &str, outcome: Settled) {
        if let Some((s, _)) = self.settled.get_mut(id) {
            *s = outcome;
        }
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

/// How long a capture's settled marker is kept (as Redis's `done:` keys).
const SETTLED_KEEP_MS: i64 = 86_400_000;

fn rule(e: rules::RuleError) -> StoreError {
    StoreError::Protocol(e.to_string())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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
        s.last_id_ms = s.last_id_ms.max(now);
        format!("{}-{}-0", s.last_id_ms.max(0), s.seq)
    }

    /// Append `event` as given (its amount and uncharged usage are the caller's, as the
    /// scripts that record `to_fields(true)`) and move the day's aggregates by it.
    fn record(s: &mut State, now: i64, event: UsageEvent) -> String {
        let amount = event.amount_minor;
        Self::record_with(s, now, event, Some(amount))
    }

    /// Append `event` and move the day's aggregates: `amount` is added to the amount field
    /// (`None`: a plan-covered call, which counts the request and its units only, as
    /// `plan_capture.lua`).
    fn record_with(s: &mut State, now: i64, mut event: UsageEvent, amount: Option<u64>) -> String {
        let id = Self::next_id(s, now);
        event.id = id.clone();
        let day = utc_day(event.time_ms);
        let agg = s.aggregates.entry((day, event.payer.clone())).or_default();
        if let Some(amount) = amount {
            let f = agg.entry(event.amount_field()).or_default();
            *f = f.saturating_add(i64::try_from(amount).unwrap_or(i64::MAX));
        }
        for (f, n) in event.aggregate_fields() {
            let f = agg.entry(f).or_default();
            *f = f.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        }
        s.events.push(event);
        id
    }

    /// Give back the payer's expired holds (`holds.lua`'s `sweep_holds`).
    fn sweep(s: &mut State, payer: &str, now: i64) -> Result<(), StoreError> {
        let expired: Vec<String> = s
            .holds
            .iter()
            .filter(|(_, h)| h.payer == payer && h.until_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(h) = s.holds.remove(&id) {
                let b = rules::release_hold(&s.balance(&h.payer, &h.currency), h.amount)
                    .map_err(rule)?;
                s.set_balance(&h.payer, &h.currency, b);
            }
        }
        Ok(())
    }
}

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

mod charge;

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

#[async_trait]
impl ReceiptStore for MemoryStore {
    async fn authorize_capture(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_receipt(r, event)
    }

    async fn void_receipt(
        &self,
        r: &Reservation,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(Some(r), None, charge, void)
    }

    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.owned_by_other(&r.payer, &r.issuer, &r.receipt_id, r.spent_until_ms, now) {
            return Ok(AuthorizeOutcome::Replayed);
        }
        if s.blocked.contains(&r.payer) {
            return Ok(AuthorizeOutcome::PayerBlocked);
        }
        let key = Self::receipt_key(r);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Spent { .. } | ReceiptState::Credited { .. }) => {
                return Ok(AuthorizeOutcome::Replayed)
            }
            Some(ReceiptState::Held { .. }) => return Ok(AuthorizeOutcome::InUse),
            Some(ReceiptState::Revoked { .. }) => return Ok(AuthorizeOutcome::Revoked),
            None => {}
        }
        let hold_ms = i64::try_from(r.hold.as_millis()).unwrap_or(i64::MAX);
        if let Some(m) = &r.mandate {
            match s.mandate_check(m, now) {
                Ok(()) => s.mandate_reserve(&r.payer, m, &r.id, now.saturating_add(hold_ms)),
                Err(MandateRefusal::Revoked) => return Ok(AuthorizeOutcome::MandateRevoked),
                Err(MandateRefusal::Exceeded(room_minor)) => {
                    return Ok(AuthorizeOutcome::MandateExceeded { room_minor })
                }
            }
        }
        s.receipts.insert(
            key,
            ReceiptState::Held {
                reservation: r.id.clone(),
                until_ms: now.saturating_add(hold_ms),
            },
        );
        Ok(AuthorizeOutcome::Reserved)
    }

    async fn settle(
        &self,
        r: &Reservation,
        settlement: &Settlement,
    ) -> Result<SettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let key = Self::receipt_key(r);
        let current = Self::live(&s, &key, now);
        match settlement {
            Settlement::Release => match current {
                Some(ReceiptState::Held { reservation, .. }) if *reservation == r.id => {
                    s.receipts.remove(&key);
                    if let Some(m) = &r.mandate {
                        s.mandate_settle(m, &r.id, 0);
                    }
                    Ok(SettleOutcome::Released)
                }
                _ => Ok(SettleOutcome::NotHeld),
            },
            Settlement::Capture(event) => {
                match current {
                    Some(ReceiptState::Spent {
                        reservation,
                        event_id,
                        ..
                    }) if *reservation == r.id => {
                        return Ok(SettleOutcome::AlreadyCaptured {
                            event_id: event_id.clone(),
                        });
                    }
                    Some(ReceiptState::Held { reservation, .. }) if *reservation == r.id => {}
                    None => {}
                    Some(_) => return Ok(SettleOutcome::Conflict),
                }
                let event_id = Self::record(&mut s, now, (**event).clone(), event.amount_minor, 0);
                if let Some(m) = &r.mandate {
                    s.mandate_settle(m, &r.id, event.amount_minor);
                }
                s.receipts.insert(
                    key,
                    ReceiptState::Spent {
                        reservation: r.id.clone(),
                        event_id: event_id.clone(),
                        until_ms: r.spent_until_ms,
                    },
                );
                // Forget expired entries now and then, so memory stays bounded.
                if s.seq % 1024 == 0 {
                    s.receipts.retain(|_, st| st.until() > now);
                }
                Ok(SettleOutcome::Captured { event_id })
            }
        }
    }

    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let r = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        };
        // Like the Redis store: the revoked state goes to every bucket where the receipt has
        // no state (its payer's bucket is unknown here); a receipt held or spent stays so.
        let fp = r.fingerprint();
        let mut unused = true;
        for b in 0..super::BUCKETS {
            let key = format!("r:{b}:{fp}");
            if Self::live(&s, &key, now).is_some() {
                unused = false;
                continue;
            }
            s.receipts.insert(
                key,
                ReceiptState::Revoked {
                    until_ms: now.saturating_add(super::REVOKED_RECEIPT_KEEP_MS),
                },
            );
        }
        Ok(unused)
    }
}

#[async_trait]
impl BalanceStore for MemoryStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut s = self.lock()?;
        let (id, mandate) = match held {
            Renewal::Receipt(r) => {
                let key = Self::receipt_key(r);
                match s.receipts.get_mut(&key) {
                    Some(ReceiptState::Held {
                        reservation,
                        until_ms,
                    }) if *reservation == r.id => *until_ms = until,
                    _ => return Ok(false),
                }
                (&r.id, r.mandate.as_ref())
            }
            Renewal::Balance(h) => {
                match s.holds.get_mut(&h.id) {
                    Some(entry) => entry.until_ms = until,
                    None => return Ok(false),
                }
                (&h.id, h.mandate.as_ref())
            }
        };
        if let Some(m) = mandate {
            if let Some(w) = s.windows.get_mut(&(m.key.clone(), m.window_start_ms)) {
                if let Some(r) = w.holds.get_mut(id) {
                    r.1 = until;
                }
            }
        }
        Ok(true)
    }

    async fn hold_capture(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_balance(h, event)
    }

    async fn void_hold(
        &self,
        h: &Hold,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(None, Some(h), charge, void)
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&h.payer) {
            return Ok(HoldOutcome::PayerBlocked);
        }
        Self::sweep(&mut s, &h.payer, now);
        let mut amount = i64::try_from(h.amount_minor)
            .map_err(|_| StoreError::Protocol("amount too large".into()))?;
        let mut overage = false;
        if let Some(p) = &h.plan {
            if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                if period.end_ms > p.now_ms {
                    // Unit plans count at capture; call plans count here.
                    let step = u64::from(p.unit.is_none());
                    match period.calls {
                        None => {
                            period.used += step;
                            return Ok(HoldOutcome::Plan { calls_left: None });
                        }
                        Some(calls) if period.used < calls => {
                            period.used += step;
                            return Ok(HoldOutcome::Plan {
                                calls_left: Some(calls - period.used),
                            });
                        }
                        Some(_) if p.deny => {
                            return Ok(HoldOutcome::PlanExhausted {
                                period_end_ms: period.end_ms,
                            })
                        }
                        Some(_) if p.route_price => {}
                        Some(_) => {
                            amount = i64::try_from(p.overage_minor).unwrap_or(i64::MAX);
                            overage = true;
                        }
                    }
                }
            }
        }
        let available = s
            .accounts
            .get(&(h.payer.clone(), h.currency.clone()))
            .map_or(0, |a| a.available);
        if available < amount {
            return Ok(HoldOutcome::Insufficient {
                balance_minor: minor(available),
            });
        }
        let ttl = i64::try_from(h.ttl.as_millis()).unwrap_or(i64::MAX);
        if let Some(m) = &h.mandate {
            match s.mandate_check(m, now) {
                Ok(()) => s.mandate_reserve(&h.payer, m, &h.id, now.saturating_add(ttl)),
                Err(MandateRefusal::Revoked) => return Ok(HoldOutcome::MandateRevoked),
                Err(MandateRefusal::Exceeded(room_minor)) => {
                    return Ok(HoldOutcome::MandateExceeded { room_minor })
                }
            }
        }
        let acct = s
            .accounts
            .entry((h.payer.clone(), h.currency.clone()))
            .or_default();
        acct.available -= amount;
        acct.held += amount;
        let left = minor(acct.available);
        let hold_amount = amount;
        s.holds.insert(
            h.id.clone(),
            HoldEntry {
                payer: h.payer.clone(),
                currency: h.currency.clone(),
                amount: hold_amount,
                until_ms: now.saturating_add(ttl),
            },
        );
        if overage {
            return Ok(HoldOutcome::Overage {
                balance_minor: left,
            });
        }
        Ok(HoldOutcome::Held {
            balance_minor: left,
        })
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if h.plan.as_ref().is_some_and(|p| p.covered) && !s.settled.contains_key(&h.id) {
            if s.plan_released.contains(&h.id) {
                return Ok(HoldSettleOutcome::NotHeld);
            }
            let event_id = Self::record(&mut s, now, event.clone(), 0, 0);
            Self::remember_settled(&mut s, now, &h.id, (event_id.clone(), 0, 0));
            if let Some(p) = &h.plan {
                let add = p
                    .unit
                    .as_ref()
                    .and_then(|u| event.units.get(u).copied())
                    .unwrap_or(0);
                if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                    period.used += add;
                }
            }
            let balance = s
                .accounts
                .get(&(h.payer.clone(), h.currency.clone()))
                .map_or(0, |a| minor(a.available));
            return Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: 0,
                uncharged_minor: 0,
                balance_minor: balance,
            });
        }
        if let Some((event_id, charged, uncharged)) = s.settled.get(&h.id).cloned() {
            let balance = s
                .accounts
                .get(&(h.payer.clone(), h.currency.clone()))
                .map(|a| minor(a.available))
                .unwrap_or(0);
            return Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: charged,
                uncharged_minor: uncharged,
                balance_minor: balance,
            });
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let mut actual = i64::try_from(actual_minor).unwrap_or(i64::MAX);
        let mut beyond_mandate = 0;
        if let Some(m) = &h.mandate {
            // Never beyond the mandate's window budget: the rest is recorded as uncharged.
            let room = s.mandate_room(m, now, Some(&h.id)).max(0);
            if actual > room {
                beyond_mandate = actual - room;
                actual = room;
            }
        }
        let acct = s
            .accounts
            .entry((entry.payer.clone(), entry.currency.clone()))
            .or_default();
        let (charge, uncharged) = if actual > entry.amount + acct.available {
            (
                entry.amount + acct.available,
                actual - entry.amount - acct.available + beyond_mandate,
            )
        } else {
            (actual, beyond_mandate)
        };
        acct.held -= entry.amount;
        acct.available += entry.amount - charge;
        acct.captured += charge;
        let balance = minor(acct.available);
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, minor(charge));
        }
        let event_id = Self::record(&mut s, now, event.clone(), minor(charge), minor(uncharged));
        Self::remember_settled(
            &mut s,
            now,
            &h.id,
            (event_id.clone(), minor(charge), minor(uncharged)),
        );
        Ok(HoldSettleOutcome::Captured {
            event_id,
            charged_minor: minor(charge),
            uncharged_minor: minor(uncharged),
            balance_minor: balance,
        })
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        let mut s = self.lock()?;
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            if s.settled.contains_key(&h.id) || !s.plan_released.insert(h.id.clone()) {
                return Ok(HoldSettleOutcome::NotHeld);
            }
            if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                if p.unit.is_none() {
                    period.used = period.used.saturating_sub(1);
                }
            }
            return Ok(HoldSettleOutcome::Released);
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let acct = s.accounts.entry((entry.payer, entry.currency)).or_default();
        acct.held -= entry.amount;
        acct.available += entry.amount;
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, 0);
        }
        Ok(HoldSettleOutcome::Released)
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let key = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => {
                if s.owned_by_other(&c.payer, issuer, receipt_id, c.keep_until_ms, now) {
                    return Ok(CreditOutcome::ReceiptUsed);
                }
                let r = Reservation {
                    id: String::new(),
                    payer: c.payer.clone(),
                    issuer: issuer.clone(),
                    receipt_id: receipt_id.clone(),
                    hold: std::time::Duration::ZERO,
                    spent_until_ms: 0,
                    mandate: None,
                };
                Self::receipt_key(&r)
            }
            Idempotency::Key(k) => format!("idem:{}:{k}", c.payer),
        };
        let available = s
            .accounts
            .get(&(c.payer.clone(), c.currency.clone()))
            .map(|a| a.available)
            .unwrap_or(0);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Credited { credit_id, .. }) => {
                return Ok(CreditOutcome::Duplicate {
                    credit_id: credit_id.clone(),
                    balance_minor: minor(available),
                });
            }
            Some(_) => return Ok(CreditOutcome::ReceiptUsed),
            None => {}
        }
        if c.amount_minor < 0 && available + c.amount_minor < 0 {
            return Ok(CreditOutcome::Insufficient {
                balance_minor: minor(available),
            });
        }
        let credit_id = Self::next_id(&mut s, now);
        let acct = s
            .accounts
            .entry((c.payer.clone(), c.currency.clone()))
            .or_default();
        acct.available += c.amount_minor;
        acct.credited += c.amount_minor;
        let balance = minor(acct.available);
        s.receipts.insert(
            key,
            ReceiptState::Credited {
                credit_id: credit_id.clone(),
                until_ms: c.keep_until_ms,
            },
        );
        Ok(CreditOutcome::Applied {
            credit_id,
            balance_minor: balance,
        })
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        Self::sweep(&mut s, payer, now);
        let balances = s
            .accounts
            .iter()
            .filter(|((p, _), _)| p == payer)
            .map(|((_, c), b)| (c.clone(), *b))
            .collect();
        let holds = s.holds.values().filter(|h| h.payer == payer).count() as u64;
        Ok(Account {
            balances,
            holds,
            blocked: s.blocked.contains(payer),
        })
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let days = days_between(from, to)?;
        let s = self.lock()?;
        let mut rows = BTreeMap::new();
        for ((day, p), fields) in &s.aggregates {
            if days.contains(day) && payer.is_none_or(|want| want == p) {
                let f: Vec<(String, i64)> = fields.iter().map(|(k, v)| (k.clone(), *v)).collect();
                fold_aggregates(day, &f, &mut rows);
            }
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let days = days_between(from, to)?;
        let s = self.lock()?;
        let mut out = BTreeMap::new();
        for ((day, p), fields) in &s.aggregates {
            if !days.contains(day) {
                continue;
            }
            let mut rows = BTreeMap::new();
            let f: Vec<(String, i64)> = fields.iter().map(|(k, v)| (k.clone(), *v)).collect();
            fold_aggregates(day, &f, &mut rows);
            let total = out.entry(p.clone()).or_insert_with(|| PayerSpend {
                payer: p.clone(),
                ..Default::default()
            });
            for row in rows.into_values() {
                total.requests += row.requests;
                for (c, m) in row.amount_minor {
                    *total.amount_minor.entry(c).or_default() += m;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let s = self.lock()?;
        let from = after.map(event_order);
        Ok(s.events
            .iter()
            .filter(|e| from.is_none_or(|f| event_order(&e.id) > f))
            .take(limit)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl PayerControl for MemoryStore {
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: super::RateLimit,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let interval = i64::try_from(limit.interval_ms()).unwrap_or(i64::MAX);
        let tolerance = i64::try_from(limit.tolerance_ms()).unwrap_or(i64::MAX);
        let tat = s
            .rates
            .get(&(payer.to_owned(), route.to_owned()))
            .copied()
            .unwrap_or(0)
            .max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat - interval - tolerance;
        if allow_at > now {
            return Ok(Some(std::time::Duration::from_millis(
                u64::try_from(allow_at - now).unwrap_or(0),
            )));
        }
        s.rates
            .insert((payer.to_owned(), route.to_owned()), new_tat);
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if blocked {
            s.blocked.insert(payer.to_owned());
        } else {
            s.blocked.remove(payer);
        }
        Ok(())
    }
}

#[async_trait]
impl MandateStore for MemoryStore {
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError> {
        self.lock()?.revoked_mandates.insert(key.to_owned());
        Ok(())
    }

    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError> {
        let now = self.clock.now_ms();
        let s = self.lock()?;
        let mut out = Vec::new();
        for (key, summary) in s.mandates.get(payer).into_iter().flatten() {
            let summary: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
            let start = super::mandate_window_start(&summary, now_ms);
            let (spent, held) = s
                .windows
                .get(&(key.clone(), start))
                .map(|w| {
                    let held = w
                        .holds
                        .values()
                        .filter(|(_, until)| *until > now)
                        .map(|(a, _)| *a)
                        .sum();
                    (w.spent, held)
                })
                .unwrap_or((0, 0));
            out.push((
                summary,
                MandateUse {
                    spent_minor: spent,
                    held_minor: held,
                    revoked: s.revoked_mandates.contains(key),
                },
            ));
        }
        Ok(out)
    }
}

#[async_trait]
impl PlanStore for MemoryStore {
    async fn subscribe(&self, sub: &Subscription) -> Result<SubscribeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let r = Reservation {
            payer: sub.payer.clone(),
            issuer: sub.issuer.clone(),
            receipt_id: sub.receipt_id.clone(),
            ..Reservation::empty()
        };
        let until = sub.keep_until_ms.max(now + 1000);
        if s.owned_by_other(&sub.payer, &sub.issuer, &sub.receipt_id, until, now) {
            return Ok(SubscribeOutcome::ReceiptUsed);
        }
        let key = Self::receipt_key(&r);
        let period_key = (sub.payer.clone(), sub.plan.clone());
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Credited { credit_id, .. }) if credit_id.starts_with("sub:") => {
                return Ok(SubscribeOutcome::Duplicate {
                    event_id: credit_id["sub:".len()..].to_owned(),
                    period_end_ms: s.subs.get(&period_key).map_or(0, |p| p.end_ms),
                });
            }
            Some(_) => return Ok(SubscribeOutcome::ReceiptUsed),
            None => {}
        }
        let period = match s.subs.get(&period_key) {
            Some(p) if p.end_ms > sub.now_ms => PlanPeriod {
                end_ms: p.end_ms + sub.period_ms,
                calls: p.calls.zip(sub.calls).map(|(a, b)| a + b),
                ..*p
            },
            _ => PlanPeriod {
                start_ms: sub.now_ms,
                end_ms: sub.now_ms + sub.period_ms,
                calls: sub.calls,
                used: 0,
            },
        };
        let period_end_ms = period.end_ms;
        s.subs.insert(period_key, period);
        let event_id = Self::record(&mut s, now, sub.event.clone(), sub.event.amount_minor, 0);
        s.receipts.insert(
            key,
            ReceiptState::Credited {
                credit_id: format!("sub:{event_id}"),
                until_ms: sub.keep_until_ms,
            },
        );
        Ok(SubscribeOutcome::Subscribed {
            event_id,
            period_end_ms,
        })
    }

    async fn subscription(
        &self,
        payer: &str,
        plan: &str,
    ) -> Result<Option<PlanPeriod>, StoreError> {
        Ok(self
            .lock()?
            .subs
            .get(&(payer.to_owned(), plan.to_owned()))
            .copied())
    }
}

#[async_trait]
impl SettlementQueue for MemoryStore {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let outcome = self
            .settle(r, &Settlement::Capture(Box::new(event.clone())))
            .await?;
        if let SettleOutcome::Captured { event_id } = &outcome {
            // Same critical section in spirit: no other caller can capture this reservation
            // again (it is spent), so exactly one job is queued for it.
            let mut s = self.lock()?;
            s.jobs.insert(
                event_id.clone(),
                (
                    SettlementJob {
                        id: event_id.clone(),
                        payer: r.payer.clone(),
                        body: body.to_owned(),
                        attempts: 0,
                        status: "queued".into(),
                        error: String::new(),
                    },
                    now,
                ),
            );
        }
        Ok(outcome)
    }

    async fn claim_settlements(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        let now = self.clock.now_ms();
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut s = self.lock()?;
        let mut out = Vec::new();
        for (job, due) in s.jobs.values_mut() {
            if out.len() >= limit {
                break;
            }
            if job.status == "queued" && *due <= now {
                *due = now.saturating_add(lease);
                out.push(job.clone());
            }
        }
        Ok(out)
    }

    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let block = match s.jobs.get_mut(&job.id) {
            None => false,
            Some(_) if *outcome == JobOutcome::Done => {
                s.jobs.remove(&job.id);
                false
            }
            Some((j, due)) => {
                j.attempts += 1;
                match outcome {
                    JobOutcome::Retry { after, error } => {
                        j.error = error.clone();
                        *due = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(0));
                        false
                    }
                    JobOutcome::Failed { error } => {
                        j.error = error.clone();
                        j.status = "failed".into();
                        true
                    }
                    JobOutcome::Done => false,
                }
            }
        };
        if block {
            s.blocked.insert(job.payer.clone());
        }
        Ok(())
    }

    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        let s = self.lock()?;
        let mut out: Vec<SettlementJob> = s
            .jobs
            .values()
            .filter(|(j, _)| j.status == "failed")
            .map(|(j, _)| j.clone())
            .collect();
        out.sort_by_key(|j| event_order(&j.id));
        Ok(out)
    }

    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let payer = match s.jobs.get(id) {
            Some((j, _)) if j.status == "failed" => j.payer.clone(),
            _ => return Ok(false),
        };
        s.jobs.remove(id);
        let other = s
            .jobs
            .values()
            .any(|(j, _)| j.status == "failed" && j.payer == payer);
        if !other {
            s.blocked.remove(&payer);
        }
        Ok(true)
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn idempotency_claim(
        &self,
        payer: &str,
        key: &str,
        fingerprint: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let k = (payer.to_owned(), key.to_owned());
        if let Some(e) = s.idempotency.get(&k).filter(|e| e.until_ms > now) {
            return Ok(if e.fingerprint != fingerprint {
                IdempotencyClaim::Mismatch
            } else if let Some((event_id, time_ms)) = &e.done {
                IdempotencyClaim::Done {
                    event_id: event_id.clone(),
                    time_ms: *time_ms,
                }
            } else {
                IdempotencyClaim::InFlight
            });
        }
        s.idempotency.retain(|_, e| e.until_ms > now);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        s.idempotency.insert(
            k,
            IdempotencyEntry {
                fingerprint: fingerprint.to_owned(),
                token: token.to_owned(),
                done: None,
                until_ms: now.saturating_add(ttl_ms),
            },
        );
        Ok(IdempotencyClaim::Claimed)
    }

    async fn idempotency_finish(
        &self,
        payer: &str,
        key: &str,
        token: &str,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let k = (payer.to_owned(), key.to_owned());
        let ours = s
            .idempotency
            .get(&k)
            .is_some_and(|e| e.token == token && e.done.is_none());
        if !ours {
            return Ok(());
        }
        match done {
            Some((event_id, time_ms)) => {
                if let Some(e) = s.idempotency.get_mut(&k) {
                    e.done = Some((event_id.to_owned(), time_ms));
                }
            }
            None => {
                s.idempotency.remove(&k);
            }
        }
        Ok(())
    }
}

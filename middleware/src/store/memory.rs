//! The embedded store: one process, no Redis. Same state machine as the Redis scripts, under
//! one mutex (each method is one critical section, so it is as atomic as a script).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    days_between, event_order, fold_aggregates, utc_day, Account, AuthorizeOutcome, Balance,
    Credit, CreditOutcome, DailyUsage, Hold, HoldOutcome, HoldSettleOutcome, Idempotency,
    JobOutcome, Reservation, SettleOutcome, Settlement, SettlementJob, Store, StoreError,
    UsageEvent,
};
use crate::clock::{Clock, SystemClock};

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
}

impl ReceiptState {
    fn until(&self) -> i64 {
        match self {
            ReceiptState::Held { until_ms, .. }
            | ReceiptState::Spent { until_ms, .. }
            | ReceiptState::Credited { until_ms, .. } => *until_ms,
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
    /// GCRA theoretical arrival times by (payer, route).
    rates: HashMap<(String, String), i64>,
    /// Sequence for ledger ids.
    seq: u64,
    /// Queued and failed x402 settlements by job id, with their due time (ms).
    jobs: BTreeMap<String, (SettlementJob, i64)>,
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
impl Store for MemoryStore {
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

    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&r.payer) {
            return Ok(AuthorizeOutcome::PayerBlocked);
        }
        let key = Self::receipt_key(r);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Spent { .. } | ReceiptState::Credited { .. }) => {
                return Ok(AuthorizeOutcome::Replayed)
            }
            Some(ReceiptState::Held { .. }) => return Ok(AuthorizeOutcome::InUse),
            None => {}
        }
        let hold_ms = i64::try_from(r.hold.as_millis()).unwrap_or(i64::MAX);
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

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&h.payer) {
            return Ok(HoldOutcome::PayerBlocked);
        }
        Self::sweep(&mut s, &h.payer, now);
        let amount = i64::try_from(h.amount_minor)
            .map_err(|_| StoreError::Protocol("amount too large".into()))?;
        let acct = s
            .accounts
            .entry((h.payer.clone(), h.currency.clone()))
            .or_default();
        if acct.available < amount {
            return Ok(HoldOutcome::Insufficient {
                balance_minor: minor(acct.available),
            });
        }
        acct.available -= amount;
        acct.held += amount;
        let left = minor(acct.available);
        let ttl = i64::try_from(h.ttl.as_millis()).unwrap_or(i64::MAX);
        s.holds.insert(
            h.id.clone(),
            HoldEntry {
                payer: h.payer.clone(),
                currency: h.currency.clone(),
                amount,
                until_ms: now.saturating_add(ttl),
            },
        );
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
        let acct = s
            .accounts
            .entry((entry.payer.clone(), entry.currency.clone()))
            .or_default();
        let actual = i64::try_from(actual_minor).unwrap_or(i64::MAX);
        let (charge, uncharged) = if actual > entry.amount + acct.available {
            (
                entry.amount + acct.available,
                actual - entry.amount - acct.available,
            )
        } else {
            (actual, 0)
        };
        acct.held -= entry.amount;
        acct.available += entry.amount - charge;
        acct.captured += charge;
        let balance = minor(acct.available);
        let event_id = Self::record(&mut s, now, event.clone(), minor(charge), minor(uncharged));
        s.settled.insert(
            h.id.clone(),
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
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let acct = s.accounts.entry((entry.payer, entry.currency)).or_default();
        acct.held -= entry.amount;
        acct.available += entry.amount;
        Ok(HoldSettleOutcome::Released)
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let key = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => {
                let r = Reservation {
                    id: String::new(),
                    payer: c.payer.clone(),
                    issuer: issuer.clone(),
                    receipt_id: receipt_id.clone(),
                    hold: std::time::Duration::ZERO,
                    spent_until_ms: 0,
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
        Ok(Account { balances, holds })
    }

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

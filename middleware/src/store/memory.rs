//! The embedded store: one process, no Redis. Same state machine as the Redis scripts, under
//! one mutex (each method is one critical section, so it is as atomic as a script).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    AuthorizeOutcome, Reservation, SettleOutcome, Settlement, Store, StoreError, UsageEvent,
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
}

#[derive(Debug, Default)]
struct State {
    /// Receipt states by (bucket, fingerprint); expired entries are treated as absent.
    receipts: HashMap<String, ReceiptState>,
    /// Blocked payers.
    blocked: HashSet<String>,
    /// The ledger.
    events: Vec<UsageEvent>,
    /// Sequence for event ids (`<ms>-<seq>`, like stream ids).
    seq: u64,
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

    fn key(r: &Reservation) -> String {
        format!("{}:{}", r.bucket(), r.fingerprint())
    }

    fn live<'a>(state: &'a State, key: &str, now: i64) -> Option<&'a ReceiptState> {
        state.receipts.get(key).filter(|s| match s {
            ReceiptState::Held { until_ms, .. } | ReceiptState::Spent { until_ms, .. } => {
                *until_ms > now
            }
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&r.payer) {
            return Ok(AuthorizeOutcome::PayerBlocked);
        }
        let key = Self::key(r);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Spent { .. }) => return Ok(AuthorizeOutcome::Replayed),
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
        let key = Self::key(r);
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
                s.seq += 1;
                let event_id = format!("{}-{}", now.max(0), s.seq);
                let mut e = (**event).clone();
                e.id = event_id.clone();
                s.events.push(e);
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
                    s.receipts.retain(|_, st| match st {
                        ReceiptState::Held { until_ms, .. }
                        | ReceiptState::Spent { until_ms, .. } => *until_ms > now,
                    });
                }
                Ok(SettleOutcome::Captured { event_id })
            }
        }
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

    async fn usage_events(&self) -> Result<Vec<UsageEvent>, StoreError> {
        Ok(self.lock()?.events.clone())
    }
}

//! Recent traffic of this process, one slot per minute: paid (captured) requests, revenue, and
//! payment refusals by code -- the provider dashboard's "paid vs 402 vs refusals" view.
//!
//! Kept in memory, not in the store, on purpose: issuing a 402 must write nothing anywhere (a
//! flood of unpaid requests cannot fill Redis), and these counts are a live view, not a ledger.
//! The last [`MINUTES`] minutes are kept (a ring of fixed size; older minutes are overwritten).
//! Each gateway replica counts its own requests and starts from zero when it starts; the
//! fleet-wide, durable figures are the store's daily aggregates (paid requests, revenue, units)
//! and the Prometheus counters (`tollgate_payment_required_total`, `tollgate_credentials_total`).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use crate::error::ErrorCode;

/// How many minutes are kept (24 hours).
pub const MINUTES: usize = 1440;

const MINUTE_MS: i64 = 60_000;

/// What happened during one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MinuteTraffic {
    /// Start of the minute, unix ms.
    pub minute_ms: i64,
    /// Requests served and charged (one per usage event this process recorded).
    pub paid: u64,
    /// Revenue captured by this process, minor units per currency.
    pub revenue_minor: BTreeMap<String, u64>,
    /// Refusals answered with status 402 (any code, `payment_required` included).
    pub status_402: u64,
    /// Every payment refusal (402, 401, 403, 409, 429, 503, ...) by its stable code.
    pub refused: BTreeMap<String, u64>,
}

/// The per-minute ring.
#[derive(Debug)]
pub struct Traffic {
    /// Slot `minute % MINUTES`; a slot whose `minute_ms` is not the minute asked for is stale.
    slots: Mutex<Vec<MinuteTraffic>>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

impl Traffic {
    /// An empty ring.
    pub fn new() -> Self {
        Traffic {
            slots: Mutex::new(vec![MinuteTraffic::default(); MINUTES]),
        }
    }

    /// Update the slot of `now_ms`'s minute (reset first if it holds an older minute). A
    /// poisoned lock drops the count: this view must never fail a request.
    fn with_slot(&self, now_ms: i64, f: impl FnOnce(&mut MinuteTraffic)) {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let idx = usize::try_from(minute.rem_euclid(MINUTES as i64)).unwrap_or(0);
        let Some(slot) = slots.get_mut(idx) else {
            return;
        };
        if slot.minute_ms != minute * MINUTE_MS {
            *slot = MinuteTraffic {
                minute_ms: minute * MINUTE_MS,
                ..Default::default()
            };
        }
        f(slot);
    }

    /// Count one served, charged request.
    pub fn record_paid(&self, now_ms: i64, currency: &str, amount_minor: u64) {
        self.with_slot(now_ms, |s| {
            s.paid += 1;
            *s.revenue_minor.entry(currency.to_owned()).or_default() += amount_minor;
        });
    }

    /// Count one payment refusal.
    pub fn record_refusal(&self, now_ms: i64, code: ErrorCode, status: u16) {
        self.with_slot(now_ms, |s| {
            if status == 402 {
                s.status_402 += 1;
            }
            *s.refused.entry(code.as_str().to_owned()).or_default() += 1;
        });
    }

    /// The last `minutes` minutes up to and including `now_ms`'s, oldest first, one entry per
    /// minute (minutes without traffic are zeros). At most [`MINUTES`].
    pub fn last(&self, now_ms: i64, minutes: usize) -> Vec<MinuteTraffic> {
        let minutes = minutes.clamp(1, MINUTES);
        let current = now_ms.div_euclid(MINUTE_MS);
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        let first = current - (minutes as i64) + 1;
        (first..=current)
            .map(|m| {
                let idx = usize::try_from(m.rem_euclid(MINUTES as i64)).unwrap_or(0);
                match slots.get(idx) {
                    Some(s) if s.minute_ms == m * MINUTE_MS => s.clone(),
                    _ => MinuteTraffic {
                        minute_ms: m * MINUTE_MS,
                        ..Default::default()
                    },
                }
            })
            .collect()
    }
}

/// The process's traffic ring.
pub fn global() -> &'static Traffic {
    static TRAFFIC: OnceLock<Traffic> = OnceLock::new();
    TRAFFIC.get_or_init(Traffic::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_minute_and_forgets_after_a_day() {
        let t = Traffic::new();
        let t0 = 1_795_370_400_000; // a minute boundary
        t.record_paid(t0 + 1, "USD", 10_000);
        t.record_paid(t0 + 59_999, "USD", 5);
        t.record_refusal(t0 + 60_000, ErrorCode::PaymentRequired, 402);
        t.record_refusal(t0 + 60_001, ErrorCode::PayerBlocked, 403);
        let last = t.last(t0 + 60_002, 3);
        assert_eq!(last.len(), 3);
        assert_eq!(last[0].minute_ms, t0 - 60_000);
        assert_eq!(last[0].paid, 0);
        assert_eq!(last[1].paid, 2);
        assert_eq!(last[1].revenue_minor["USD"], 10_005);
        assert_eq!(last[2].status_402, 1);
        assert_eq!(last[2].refused["payment_required"], 1);
        assert_eq!(last[2].refused["payer_blocked"], 1);
        // The same slot a day later starts from zero; the old minute is gone.
        let later = t0 + 60_000 * MINUTES as i64;
        t.record_paid(later, "USD", 1);
        assert_eq!(t.last(later, 1)[0].paid, 1);
        assert_eq!(t.last(later, 1)[0].revenue_minor["USD"], 1);
        assert!(t
            .last(later, MINUTES)
            .iter()
            .all(|m| m.minute_ms >= t0 + 60_000));
        assert_eq!(t.last(later, 10_000).len(), MINUTES);
    }
}

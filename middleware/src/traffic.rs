//! Recent traffic of this process, one slot per minute: paid (captured) requests, revenue,
//! 402 challenges, payment refusals by code, and per route the same plus what the upstream did
//! (answers, 5xx, unreachable, timeouts, latency) -- the provider dashboard's live view.
//!
//! Kept in memory, not in the store, on purpose: issuing a 402 must write nothing anywhere (a
//! flood of unpaid requests cannot fill Redis), and these counts are a live view, not a ledger.
//! The last [`MINUTES`] minutes are kept (a ring of fixed size; older minutes are overwritten).
//! Each gateway replica counts its own requests and starts from zero when it starts; the
//! fleet-wide, durable figures are the store's daily aggregates (paid requests, revenue, units)
//! and the Prometheus counters (`tollgate_payment_required_total`, `tollgate_credentials_total`).
//!
//! A **challenge** is a request that came without any credential and was answered 402 with the
//! payment requirements (`payment_required`); every other refusal (a replayed receipt, a
//! blocked payer, a rate limit, ...) is counted apart, so the two figures never overlap.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::ErrorCode;

/// How many minutes are kept (24 hours).
pub const MINUTES: usize = 1440;

const MINUTE_MS: i64 = 60_000;

/// Upper bounds of the latency buckets, microseconds (the last one catches everything).
pub const LATENCY_BOUNDS_US: [u64; 28] = [
    250,
    500,
    1_000,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
    75_000,
    100_000,
    150_000,
    200_000,
    300_000,
    500_000,
    750_000,
    1_000_000,
    1_500_000,
    2_000_000,
    3_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    u64::MAX,
];

/// A latency histogram over [`LATENCY_BOUNDS_US`]: small and mergeable, so a window of minutes
/// sums exactly; a quantile is the upper bound of the bucket it falls in (or the slowest
/// observation, when that is lower).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Latency {
    /// Count per bucket (same index as [`LATENCY_BOUNDS_US`]).
    pub counts: [u64; 28],
    /// The slowest observation, microseconds.
    pub max_us: u64,
}

impl Latency {
    /// Count one observation.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.max_us = self.max_us.max(us);
    }

    /// Add another histogram's counts.
    pub fn add(&mut self, other: &Latency) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.max_us = self.max_us.max(other.max_us);
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (`0 < q <= 1`), microseconds, as an upper bound: at least a fraction
    /// `q` of the observations took at most this long (the bound of the bucket it falls in, or
    /// the slowest observation when lower). `None` without observations.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        // The rank of the observation the quantile names, 1-based (ceil(q * n), at least 1).
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bound, c) in LATENCY_BOUNDS_US.iter().zip(self.counts.iter()) {
            seen += c;
            if seen >= rank {
                return Some((*bound).min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

/// What the upstream did with one forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// It answered (the response head arrived) with this status.
    Answered(u16),
    /// It could not be reached (connection refused, reset, DNS, ...).
    Unreachable,
    /// It did not answer within the route's timeout.
    TimedOut,
}

/// What the upstream of one route did during one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamTraffic {
    /// Responses received (any status).
    pub answered: u64,
    /// Of those, answered with a 5xx status.
    pub status_5xx: u64,
    /// Requests that could not reach it.
    pub unreachable: u64,
    /// Requests it did not answer in time.
    pub timeouts: u64,
    /// Time to the response head of the answered ones.
    pub latency: Latency,
}

impl UpstreamTraffic {
    /// Add another minute's counts.
    pub fn add(&mut self, o: &UpstreamTraffic) {
        self.answered += o.answered;
        self.status_5xx += o.status_5xx;
        self.unreachable += o.unreachable;
        self.timeouts += o.timeouts;
        self.latency.add(&o.latency);
    }

    /// 5xx answers, unreachable and timed out, together.
    pub fn errors(&self) -> u64 {
        self.status_5xx + self.unreachable + self.timeouts
    }
}

/// What happened on one route during one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteTraffic {
    /// Requests served and charged.
    pub paid: u64,
    /// Revenue captured, minor units per currency.
    pub revenue_minor: BTreeMap<String, u64>,
    /// 402 challenges (no credential: answered with the payment requirements).
    pub challenges: u64,
    /// Every other payment refusal.
    pub refused_other: u64,
    /// What the upstream did.
    pub upstream: UpstreamTraffic,
}

impl RouteTraffic {
    /// Add another minute's counts.
    pub fn add(&mut self, o: &RouteTraffic) {
        self.paid += o.paid;
        for (c, m) in &o.revenue_minor {
            *self.revenue_minor.entry(c.clone()).or_default() += m;
        }
        self.challenges += o.challenges;
        self.refused_other += o.refused_other;
        self.upstream.add(&o.upstream);
    }
}

/// What happened during one minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MinuteTraffic {
    /// Start of the minute, unix ms.
    pub minute_ms: i64,
    /// Requests served and charged (one per usage event this process recorded).
    pub paid: u64,
    /// Revenue captured by this process, minor units per currency.
    pub revenue_minor: BTreeMap<String, u64>,
    /// 402 challenges: refusals with code `payment_required` (the request carried no
    /// credential). Also counted in `status_402` and `refused`.
    pub challenges: u64,
    /// Refusals answered with status 402 (any code, `payment_required` included).
    pub status_402: u64,
    /// Every payment refusal (402, 401, 403, 409, 429, 503, ...) by its stable code.
    pub refused: BTreeMap<String, u64>,
    /// The same per route id, with the upstream's answers.
    pub routes: BTreeMap<String, RouteTraffic>,
}

impl MinuteTraffic {
    /// Update `route`'s counts (no allocation for a route already seen this minute).
    fn with_route(&mut self, route: &str, f: impl FnOnce(&mut RouteTraffic)) {
        if let Some(r) = self.routes.get_mut(route) {
            f(r);
            return;
        }
        let mut r = RouteTraffic::default();
        f(&mut r);
        self.routes.insert(route.to_owned(), r);
    }
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

    /// Count one served, charged request on `route`.
    pub fn record_paid(&self, now_ms: i64, route: &str, currency: &str, amount_minor: u64) {
        self.with_slot(now_ms, |s| {
            s.paid += 1;
            *s.revenue_minor.entry(currency.to_owned()).or_default() += amount_minor;
            s.with_route(route, |r| {
                r.paid += 1;
                *r.revenue_minor.entry(currency.to_owned()).or_default() += amount_minor;
            });
        });
    }

    /// Count one payment refusal on `route` (a challenge when `code` is `payment_required`).
    pub fn record_refusal(&self, now_ms: i64, route: &str, code: ErrorCode, status: u16) {
        let challenge = code == ErrorCode::PaymentRequired;
        self.with_slot(now_ms, |s| {
            if status == 402 {
                s.status_402 += 1;
            }
            if challenge {
                s.challenges += 1;
            }
            *s.refused.entry(code.as_str().to_owned()).or_default() += 1;
            s.with_route(route, |r| {
                if challenge {
                    r.challenges += 1;
                } else {
                    r.refused_other += 1;
                }
            });
        });
    }

    /// Count one request forwarded to `route`'s upstream: how it ended and, when it answered,
    /// the time to its response head.
    pub fn record_upstream(
        &self,
        now_ms: i64,
        route: &str,
        outcome: UpstreamOutcome,
        latency: Duration,
    ) {
        self.with_slot(now_ms, |s| {
            s.with_route(route, |r| {
                let u = &mut r.upstream;
                match outcome {
                    UpstreamOutcome::Answered(status) => {
                        u.answered += 1;
                        if status >= 500 {
                            u.status_5xx += 1;
                        }
                        u.latency.record(latency);
                    }
                    UpstreamOutcome::Unreachable => u.unreachable += 1,
                    UpstreamOutcome::TimedOut => u.timeouts += 1,
                }
            });
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

/// Per route, the sum over `minutes` (e.g. from [`Traffic::last`]).
pub fn by_route(minutes: &[MinuteTraffic]) -> BTreeMap<String, RouteTraffic> {
    let mut out: BTreeMap<String, RouteTraffic> = BTreeMap::new();
    for m in minutes {
        for (route, t) in &m.routes {
            out.entry(route.clone()).or_default().add(t);
        }
    }
    out
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
        t.record_paid(t0 + 1, "echo", "USD", 10_000);
        t.record_paid(t0 + 59_999, "echo", "USD", 5);
        t.record_refusal(t0 + 60_000, "echo", ErrorCode::PaymentRequired, 402);
        t.record_refusal(t0 + 60_001, "echo", ErrorCode::PayerBlocked, 403);
        t.record_refusal(t0 + 60_002, "tiny", ErrorCode::ReceiptReplayed, 402);
        let last = t.last(t0 + 60_002, 3);
        assert_eq!(last.len(), 3);
        assert_eq!(last[0].minute_ms, t0 - 60_000);
        assert_eq!(last[0].paid, 0);
        assert_eq!(last[1].paid, 2);
        assert_eq!(last[1].revenue_minor["USD"], 10_005);
        assert_eq!(last[1].routes["echo"].revenue_minor["USD"], 10_005);
        // A challenge and two other refusals: the counts do not overlap.
        assert_eq!(last[2].challenges, 1);
        assert_eq!(last[2].status_402, 2);
        assert_eq!(last[2].refused["payment_required"], 1);
        assert_eq!(last[2].refused["payer_blocked"], 1);
        assert_eq!(last[2].refused.values().sum::<u64>(), 3);
        let routes = by_route(&last);
        assert_eq!(
            (
                routes["echo"].paid,
                routes["echo"].challenges,
                routes["echo"].refused_other
            ),
            (2, 1, 1)
        );
        assert_eq!(
            (routes["tiny"].challenges, routes["tiny"].refused_other),
            (0, 1)
        );
        // The same slot a day later starts from zero; the old minute is gone.
        let later = t0 + 60_000 * MINUTES as i64;
        t.record_paid(later, "echo", "USD", 1);
        assert_eq!(t.last(later, 1)[0].paid, 1);
        assert_eq!(t.last(later, 1)[0].revenue_minor["USD"], 1);
        assert!(t
            .last(later, MINUTES)
            .iter()
            .all(|m| m.minute_ms >= t0 + 60_000));
        assert_eq!(t.last(later, 10_000).len(), MINUTES);
    }

    #[test]
    fn upstream_errors_and_latency_per_route() {
        let t = Traffic::new();
        let t0 = 1_795_370_400_000;
        let ms = Duration::from_millis;
        for d in [1, 2, 2, 4, 9, 40, 40, 40, 40, 900] {
            t.record_upstream(t0, "echo", UpstreamOutcome::Answered(200), ms(d));
        }
        t.record_upstream(t0 + 60_000, "echo", UpstreamOutcome::Answered(503), ms(3));
        t.record_upstream(t0 + 60_000, "echo", UpstreamOutcome::Unreachable, ms(1));
        t.record_upstream(t0 + 60_000, "echo", UpstreamOutcome::TimedOut, ms(5000));
        let u = &by_route(&t.last(t0 + 60_000, 2))["echo"].upstream;
        assert_eq!(
            (u.answered, u.status_5xx, u.unreachable, u.timeouts),
            (11, 1, 1, 1)
        );
        assert_eq!(u.errors(), 3);
        // Answered only: 1 2 2 3 4 9 40 40 40 40 900 (ms) -> the 6th is 9 ms, the 11th 900 ms.
        assert_eq!(u.latency.count(), 11);
        assert_eq!(u.latency.quantile_us(0.5), Some(10_000));
        // The 11th is in the 750 ms - 1 s bucket, and the slowest: 900 ms exactly.
        assert_eq!(u.latency.quantile_us(0.95), Some(900_000));
        assert_eq!(u.latency.quantile_us(0.01), Some(1_000));
        assert_eq!(Latency::default().quantile_us(0.5), None);
        let mut slow = Latency::default();
        slow.record(Duration::from_secs(3600));
        assert_eq!(slow.quantile_us(0.5), Some(3_600_000_000));
    }
}

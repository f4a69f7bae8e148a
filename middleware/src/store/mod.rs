//! The payment store: where single use, holds and the usage ledger live.
//!
//! Two implementations of one [`Store`] trait: [`RedisStore`] (replicas; every operation is
//! one Lua script, atomic across any number of gateway processes) and [`SqliteStore`] (the
//! embedded, persistent default for one process; in memory for engine tests). Both follow the
//! same state machine for a receipt:
//!
//! ```text
//!   (absent) --authorize--> held:<reservation>  (expires after the hold time)
//!   held     --capture----> spent:<reservation>:<event id>  (+ one usage event appended)
//!   held     --release----> (absent)            (the receipt can be used again)
//! ```
//!
//! A fixed-price route with `capture = "admission"` takes both steps in one script
//! ([`AdmissionStore::charge_at_admission`]: `(absent) -> spent:<reservation>:<event id>`), and
//! undoes them with [`AdmissionStore::void_admission`] when the request is not served
//! (`spent -> (absent)` and a void event); a balance ([`ChargeFrom::Balance`]) works the same.
//!
//! The money arithmetic and decisions both follow (a charge clamped to hold + balance and to
//! the mandate's room, plan coverage and overage, credits and debits, ...) are written once,
//! in [`rules`]: the memory store (and any other non-Lua backend) calls it, the Lua scripts
//! mirror it, and the conformance suite (`tests/tests/conformance/`) and the differential test
//! (`tests/tests/differential.rs`) keep the backends equal.
//!
//! # Key layout (Redis)
//! Every key a script touches carries the payer's bucket as its hash tag (but the receipt owner
//! key, claimed in the same script on one server and by a call of its own on a cluster), so each script runs
//! unchanged on Redis Cluster: `<prefix>:{b<NN>}:...` with `NN = fnv1a64(payer) % 16`.
//! - `<prefix>:{bNN}:r:<fingerprint>` receipt state; fingerprint = hex SHA-256(iss, jti)[..32];
//!   kept 60 s past the last instant the receipt can be accepted
//!   ([`crate::receipt::ReceiptPolicy::single_use_until_ms`]), then it expires (a replay after
//!   that fails the `exp` check instead).
//! - `<prefix>:{bMM}:ro:<fingerprint>` the first payer to present (iss, jti), in the slot
//!   `MM = fnv1a64(fingerprint) % 16` -- the one key outside the payer's slot: single use is per
//!   (iss, jti) whatever the `sub` (`redis/owner.rs`); same lifetime.
//! - `<prefix>:{bNN}:blocked:<payer>` present while a payer is blocked.
//! - `<prefix>:{bNN}:events` the usage ledger (a Redis Stream, never trimmed).
//! - `<prefix>:{bNN}:acct:<payer>` prepaid account (hash): per currency `bal:<C>` available,
//!   `held:<C>` held by requests in flight, `credited:<C>` total credited (top-ups and
//!   adjustments), `captured:<C>` total charged. Invariant: `credited - captured = bal + held`.
//! - `<prefix>:{bNN}:holds:<payer>` holds in flight (hash: reservation -> `currency|amount|expiry
//!   ms`); expired holds are given back by the next hold for that payer that finds the balance
//!   short, and by every account read.
//! - `<prefix>:{bNN}:done:<reservation>` how a balance request was settled
//!   (`<event id>|<charged>|<uncharged>|<currency>`, or `void|...` once voided): a retried
//!   capture learns the first outcome; kept a day (capture at admission: the hold time + 60 s).
//! - `<prefix>:{bNN}:idem:<hash>` idempotency keys of admin credits; top-ups use the receipt's
//!   state key, so a top-up receipt credits exactly once.
//! - `<prefix>:{bNN}:credits` the credit ledger (top-ups and adjustments; a Redis Stream).
//! - `<prefix>:{bNN}:agg:<payer>:<yyyymmdd>` and `<prefix>:{bNN}:aggb:<yyyymmdd>` daily
//!   aggregates per payer and per bucket (all payers), fields `<route>|requests`,
//!   `<route>|amount|<C>`, `<route>|units|<unit>`; kept 400 days.
//! - `<prefix>:{bNN}:aggp:<yyyymmdd>` the day's totals of each payer of the bucket, fields
//!   `<payer>|requests`, `<payer>|amount|<C>` (the admin API's payer listing); kept 400 days.
//! - `<prefix>:{bNN}:x402:jobs` queued x402 settlements (`deferred` mode; hash: job id ->
//!   JSON `{payer, body, attempts, status, error}`), `<prefix>:{bNN}:x402:due` their schedule
//!   (sorted set: job id -> due time, ms; a claimed job is pushed one lease ahead, so two
//!   settlers never work on one job at once), `<prefix>:{bNN}:x402:failed` failed job ids (set).
//!
//! Lua numbers are doubles: amounts in minor units are exact up to 2^53 - 1, which
//! [`crate::money::Currency::to_minor`] enforces.

mod capability;
mod charge;
mod columns;
mod event;
mod hold;
mod lease;
mod redis;
pub mod refund;
pub mod rules;
mod sqlite;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use self::charge::{void_event, ChargeOutcome, VoidOutcome};
pub use self::redis::{
    Backlog, CreditRecord, LedgerEntry, LedgerStream, RedisStore, RedisStoreOptions, StreamBatch,
    DEFAULT_SETTLED_KEEP,
};
pub use self::sqlite::{OpenError, SqliteOptions, SqliteStore, Synchronous, SCHEMA_VERSION};
use crate::money::{Amount, Currency};

pub use self::capability::{
    prelude, AdmissionStore, BalanceStore, ChargeFrom, EventPage, IdempotencyStore, LedgerStore,
    MandateStore, PayerControl, PlanStore, ReceiptStore, RefundStore, RiskStore, SettlementQueue,
    Store, PAYER_SCAN_MAX,
};
pub(crate) use self::columns::{Columns, FromColumns};
pub use self::event::{event_order, iso_time, utc_day, UsageEvent};
pub use self::hold::{HoldExtended, HoldExtension, HoldSettleOutcome};
pub use self::lease::{LeaseResize, LeaseStatus, LeaseStore, LeaseSync, LeaseSynced};
pub use self::refund::{RefundOutcome, RefundQuery, RefundRecord, RefundRequest, RefundTarget};
pub use self::webhook::{WebhookDelivery, WebhookOutbox};

/// Number of payer buckets (hash tags). Changing it re-homes every key: never change it on a
/// live deployment.
pub const BUCKETS: u64 = 16;

/// The store could not answer: paid routes must fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out, or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Answered something this version does not understand.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

/// One request's claim on one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique per request attempt (UUID v4).
    pub id: String,
    /// The payer (`sub`).
    pub payer: String,
    /// The receipt's issuer (`iss`).
    pub issuer: String,
    /// The receipt's id (`jti`).
    pub receipt_id: String,
    /// How long the hold lasts if the gateway dies before settling.
    pub hold: Duration,
    /// Until when a spent receipt is remembered (unix ms): its `exp` plus clock skew.
    pub spent_until_ms: i64,
    /// The mandate this payment counts against, if any.
    pub mandate: Option<MandateCharge>,
}

/// One payment counted against a mandate's window budget (see [`crate::mandate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateCharge {
    /// The mandate key ([`crate::mandate::mandate_key`]).
    pub key: String,
    /// The budget per window (minor units).
    pub budget_minor: u64,
    /// What this payment reserves (minor units).
    pub amount_minor: u64,
    /// The window's start (unix ms; names the window's counters).
    pub window_start_ms: i64,
    /// The window's end (unix ms, exclusive).
    pub window_end_ms: i64,
    /// The mandate's summary (JSON), recorded for the provider.
    pub summary: String,
}

/// A mandate's use in its current window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MandateUse {
    /// Captured in the window (minor units).
    pub spent_minor: u64,
    /// Reserved by requests in flight (minor units).
    pub held_minor: u64,
    /// Revoked.
    pub revoked: bool,
}

impl Reservation {
    /// A placeholder for a reservation already handed off (never sent to a store).
    pub fn empty() -> Self {
        Reservation {
            id: String::new(),
            payer: String::new(),
            issuer: String::new(),
            receipt_id: String::new(),
            hold: Duration::ZERO,
            spent_until_ms: 0,
            mandate: None,
        }
    }

    /// The payer's bucket, 0..[`BUCKETS`].
    pub fn bucket(&self) -> u64 {
        bucket_of(&self.payer)
    }

    /// A fixed-length fingerprint of (issuer, receipt id): the replay key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update((self.issuer.len() as u64).to_be_bytes());
        h.update(self.issuer.as_bytes());
        h.update(self.receipt_id.as_bytes());
        let digest = h.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// FNV-1a 64 of the payer id, modulo [`BUCKETS`]. Stable forever (it names Redis keys).
pub fn bucket_of(payer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in payer.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % BUCKETS
}

/// What authorizing a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// Held for this request.
    Reserved,
    /// The payer is blocked.
    PayerBlocked,
    /// The receipt was spent already.
    Replayed,
    /// Another request holds the receipt right now.
    InUse,
    /// The provider revoked the receipt.
    Revoked,
    /// The mandate was revoked.
    MandateRevoked,
    /// The mandate's window budget does not cover the payment.
    MandateExceeded {
        /// Room left in the window (minor units).
        room_minor: u64,
    },
}

/// An amount of a payer's balance held for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Reservation id (unique per request).
    pub id: String,
    /// Whose balance.
    pub payer: String,
    /// Currency code.
    pub currency: String,
    /// How much, in minor units.
    pub amount_minor: u64,
    /// How long before an unsettled hold is given back.
    pub ttl: Duration,
    /// The mandate this hold counts against, if any.
    pub mandate: Option<MandateCharge>,
    /// The plan that may cover this call, if the route's group is sold in one.
    pub plan: Option<PlanUse>,
}

/// A call that a plan may cover (see [`crate::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanUse {
    /// Plan id.
    pub plan: String,
    /// Past the included calls: refuse (`true`) or charge the overage price.
    pub deny: bool,
    /// Past the included usage: hold the route's own price (instead of `overage_minor`).
    pub route_price: bool,
    /// Count this unit of the usage event instead of calls (the included amount is in it).
    pub unit: Option<String>,
    /// Overage price per call (minor units).
    pub overage_minor: u64,
    /// Now (gateway clock, unix ms): periods are judged by it.
    pub now_ms: i64,
    /// Set by the engine when the store answered [`HoldOutcome::Plan`]: the call is covered
    /// (settling it records an event of amount 0, or gives the call back).
    pub covered: bool,
}

/// One period of a plan bought with a `subscribe` receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Who.
    pub payer: String,
    /// Plan id.
    pub plan: String,
    /// Period length (ms).
    pub period_ms: i64,
    /// Calls included (`None`: a pass).
    pub calls: Option<u64>,
    /// Now (gateway clock, unix ms).
    pub now_ms: i64,
    /// The receipt's issuer and id (single use).
    pub issuer: String,
    /// `jti`.
    pub receipt_id: String,
    /// Until when the receipt is remembered (unix ms).
    pub keep_until_ms: i64,
    /// The purchase, recorded in the usage ledger (amount = the price).
    pub event: UsageEvent,
}

/// What buying a period did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// Bought now.
    Subscribed {
        /// Ledger id of the purchase.
        event_id: String,
        /// End of the (possibly extended) period, unix ms.
        period_end_ms: i64,
    },
    /// Bought earlier with the same receipt.
    Duplicate {
        /// Ledger id of the purchase.
        event_id: String,
        /// End of the period, unix ms.
        period_end_ms: i64,
    },
    /// The receipt was used for something else.
    ReceiptUsed,
}

/// A payer's period of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanPeriod {
    /// Start, unix ms.
    pub start_ms: i64,
    /// End, unix ms (exclusive).
    pub end_ms: i64,
    /// Calls included (`None`: a pass).
    pub calls: Option<u64>,
    /// Calls used.
    pub used: u64,
}

impl Hold {
    /// The payer's bucket.
    pub fn bucket(&self) -> u64 {
        bucket_of(&self.payer)
    }
}

/// What placing a hold found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Held; the balance left available.
    Held {
        /// Available balance after the hold (minor units).
        balance_minor: u64,
    },
    /// The balance does not cover the amount.
    Insufficient {
        /// Available balance (minor units).
        balance_minor: u64,
    },
    /// The payer is blocked.
    PayerBlocked,
    /// The mandate was revoked.
    MandateRevoked,
    /// The mandate's window budget does not cover the amount.
    MandateExceeded {
        /// Room left in the window (minor units).
        room_minor: u64,
    },
    /// The plan covers the call (nothing held from the balance).
    Plan {
        /// Calls left in the period after this one (`None`: a pass).
        calls_left: Option<u64>,
    },
    /// The plan's calls for this period are used up and it denies more.
    PlanExhausted {
        /// When the period ends (unix ms).
        period_end_ms: i64,
    },
    /// The plan's calls are used up: the overage price is held from the balance.
    Overage {
        /// Available balance after the hold (minor units).
        balance_minor: u64,
    },
}

/// What makes a credit apply once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// A top-up receipt (the receipt's single-use state).
    Receipt {
        /// `iss`.
        issuer: String,
        /// `jti`.
        receipt_id: String,
    },
    /// An admin idempotency key.
    Key(String),
}

/// One request's claim of a payer's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// Whose key (keys of different payers never meet).
    pub payer: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// This claim's unique token: finishing it never touches a later claim of the same key.
    pub token: String,
}

impl KeyClaim {
    /// The claim `token` of `payer`'s `key`.
    pub fn new(payer: impl Into<String>, key: impl Into<String>, token: impl Into<String>) -> Self {
        KeyClaim {
            payer: payer.into(),
            key: key.into(),
            token: token.into(),
        }
    }
}

/// What claiming a request `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key was free: it is now this request's.
    Claimed,
    /// Another request with this key (and the same fingerprint) is in flight.
    InFlight,
    /// A request with this key was served and charged: the usage event and its time.
    Done {
        /// The original request's usage event id.
        event_id: String,
        /// When it was captured (unix ms).
        time_ms: i64,
    },
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// A credit to (or, negative, a debit from) a payer's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// Whose balance.
    pub payer: String,
    /// Currency code.
    pub currency: String,
    /// Signed amount in minor units.
    pub amount_minor: i64,
    /// Applies once per this.
    pub idempotency: Idempotency,
    /// Until when the idempotency record is kept (unix ms).
    pub keep_until_ms: i64,
    /// Why (`topup`, or the admin's reason).
    pub reason: String,
    /// Who: `receipt:<iss>:<jti>` or `admin`.
    pub source: String,
}

/// What a credit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditOutcome {
    /// Applied now.
    Applied {
        /// Credit ledger id.
        credit_id: String,
        /// Available balance afterwards.
        balance_minor: u64,
    },
    /// Applied earlier with the same idempotency (nothing changed now).
    Duplicate {
        /// Credit ledger id of the earlier credit.
        credit_id: String,
        /// Available balance.
        balance_minor: u64,
    },
    /// A debit larger than the available balance.
    Insufficient {
        /// Available balance.
        balance_minor: u64,
    },
    /// The receipt is held or spent as a payment.
    ReceiptUsed,
}

/// One currency of a payer's account (minor units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Balance {
    /// Available to spend.
    pub available: i64,
    /// Held by requests in flight.
    pub held: i64,
    /// Total credited (top-ups and adjustments).
    pub credited: i64,
    /// Total charged.
    pub captured: i64,
}

/// A payer's prepaid account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Per currency.
    pub balances: BTreeMap<String, Balance>,
    /// Holds in flight.
    pub holds: u64,
    /// Whether the payer is blocked (its tokens and receipts are refused).
    pub blocked: bool,
}

/// What one payer spent over a range of days (the admin API's payer listing).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PayerSpend {
    /// The payer.
    pub payer: String,
    /// Served requests.
    pub requests: u64,
    /// Amount charged per currency (minor units).
    pub amount_minor: BTreeMap<String, u64>,
}

/// Fold per-payer day totals (`<payer>|requests`, `<payer>|amount|<C>`) into `out`. Payer ids
/// may contain `|`, so fields are split from the right (currency codes never contain it).
fn fold_payer_totals(fields: &[(String, i64)], out: &mut BTreeMap<String, PayerSpend>) {
    for (f, v) in fields {
        let v = u64::try_from(*v).unwrap_or(0);
        let (payer, currency) = if let Some(p) = f.strip_suffix("|requests") {
            (p, None)
        } else {
            let Some((rest, cur)) = f.rsplit_once('|') else {
                continue;
            };
            let Some(p) = rest.strip_suffix("|amount") else {
                continue;
            };
            (p, Some(cur))
        };
        let row = out.entry(payer.to_owned()).or_insert_with(|| PayerSpend {
            payer: payer.to_owned(),
            ..Default::default()
        });
        match currency {
            None => row.requests += v,
            Some(c) => *row.amount_minor.entry(c.to_owned()).or_default() += v,
        }
    }
}

/// Usage aggregated per UTC day and route.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyUsage {
    /// `yyyymmdd`.
    pub day: String,
    /// Route id.
    pub route: String,
    /// Served requests.
    pub requests: u64,
    /// Amount charged per currency (minor units).
    pub amount_minor: BTreeMap<String, u64>,
    /// Units per unit.
    pub units: BTreeMap<String, u64>,
}

/// Fold `<route>|requests`, `<route>|amount|<C>`, `<route>|units|<u>` fields into rows.
pub(crate) fn fold_aggregates(
    day: &str,
    fields: &[(String, i64)],
    out: &mut BTreeMap<(String, String), DailyUsage>,
) {
    for (f, v) in fields {
        let mut parts = f.splitn(3, '|');
        let (Some(route), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let row = out
            .entry((day.to_owned(), route.to_owned()))
            .or_insert_with(|| DailyUsage {
                day: day.to_owned(),
                route: route.to_owned(),
                ..Default::default()
            });
        let v = u64::try_from(*v).unwrap_or(0);
        match (kind, parts.next()) {
            ("requests", None) => row.requests += v,
            ("amount", Some(c)) => *row.amount_minor.entry(c.to_owned()).or_default() += v,
            ("units", Some(u)) => *row.units.entry(u.to_owned()).or_default() += v,
            _ => {}
        }
    }
}

/// How a reservation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Served: spend the receipt and append this event.
    Capture(Box<UsageEvent>),
    /// Not served: give the receipt back.
    Release,
}

/// What settling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Spent; the event got this id.
    Captured {
        /// Ledger id of the usage event.
        event_id: String,
    },
    /// Already captured by an earlier call for the same reservation (no second event).
    AlreadyCaptured {
        /// Ledger id of the earlier event.
        event_id: String,
    },
    /// Released.
    Released,
    /// Nothing to release (the hold had expired or was not ours).
    NotHeld,
    /// Capture refused: another reservation holds or spent the receipt.
    Conflict,
}

/// A queued x402 settlement (`deferred` mode): captured (its usage event recorded) and waiting
/// for the facilitator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettlementJob {
    /// The usage event's ledger id (one job per captured authorization).
    pub id: String,
    /// Who pays (blocked if the settlement fails for good).
    pub payer: String,
    /// What to send to the facilitator: JSON `{"payload", "requirements"}`.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// `queued` or `failed`.
    pub status: String,
    /// The last attempt's error.
    #[serde(default)]
    pub error: String,
}

/// How a settlement attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Settled on chain: the job is removed.
    Done,
    /// Try again after this long.
    Retry {
        /// Backoff.
        after: Duration,
        /// Why this attempt failed.
        error: String,
    },
    /// Failed for good: the job is kept as failed and its payer blocked until resolved.
    Failed {
        /// Why.
        error: String,
    },
}

/// The bucket named by the last segment of a ledger / job id (`<ms>-<seq>-<bucket>`).
pub fn bucket_of_id(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok().filter(|b| *b < BUCKETS)
}

/// A rate limit: `per_second` sustained, `burst` at once (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second (> 0).
    pub per_second: u32,
    /// Requests allowed at once (>= 1).
    pub burst: u32,
}

impl RateLimit {
    /// Milliseconds between requests at the sustained rate.
    pub fn interval_ms(&self) -> u64 {
        1000 / u64::from(self.per_second.max(1)).max(1)
    }

    /// How far ahead the theoretical arrival time may run (ms).
    pub fn tolerance_ms(&self) -> u64 {
        self.interval_ms() * u64::from(self.burst.max(1) - 1)
    }
}

/// A hold whose request is still being served (a metered response streaming), to renew.
#[derive(Debug, Clone, Copy)]
pub enum Renewal<'a> {
    /// A receipt held single-use for its request.
    Receipt(&'a Reservation),
    /// An amount held from a prepaid balance.
    Balance(&'a Hold),
}

/// How long a revoked receipt is remembered (longer than any receipt lifetime allowed).
pub const REVOKED_RECEIPT_KEEP_MS: i64 = 7 * 86_400_000;

/// How long a mandate revocation is remembered (mandates live at most this long).
pub const REVOKED_MANDATE_KEEP_MS: i64 = 400 * 86_400_000;

/// The start of the window containing `now_ms` for a mandate summary (its `window` field).
pub fn mandate_window_start(summary: &serde_json::Value, now_ms: i64) -> i64 {
    serde_json::from_value::<crate::mandate::Window>(summary["window"].clone())
        .map(|w| w.bounds(now_ms).0)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a `yyyymmdd` day.
fn day_number(s: &str) -> Option<i64> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = s.get(..4)?.parse().ok()?;
    let m: i64 = s.get(4..6)?.parse().ok()?;
    let d: i64 = s.get(6..)?.parse().ok()?;
    Some(crate::mandate::days_from_civil(y, m, d))
}

/// The day `n` days after (negative: before) a `yyyymmdd` day.
pub fn add_days(day: &str, n: i64) -> Result<String, StoreError> {
    let d = day_number(day).ok_or_else(|| StoreError::Protocol("days must be yyyymmdd".into()))?;
    Ok(utc_day((d + n) * 86_400_000))
}

/// Days `from..=to` (`yyyymmdd`), at most 400.
pub fn days_between(from: &str, to: &str) -> Result<Vec<String>, StoreError> {
    let (Some(a), Some(b)) = (day_number(from), day_number(to)) else {
        return Err(StoreError::Protocol("days must be yyyymmdd".into()));
    };
    if b < a || b - a > 400 {
        return Err(StoreError::Protocol(
            "the day range must be 0 to 400 days".into(),
        ));
    }
    Ok((a..=b).map(|d| utc_day(d * 86_400_000)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "19700101");
        assert_eq!(utc_day(951_782_400_000), "20000229");
        assert_eq!(utc_day(1_795_370_240_883), "20261122");
        assert_eq!(
            days_between("20240227", "20240301").unwrap(),
            ["20240227", "20240228", "20240229", "20240301"]
        );
        assert!(days_between("20240301", "20240227").is_err());
        assert!(days_between("2024031", "20240327").is_err());
        assert_eq!(add_days("20240301", -1).unwrap(), "20240229");
        assert_eq!(add_days("20241231", 1).unwrap(), "20250101");
    }

    #[test]
    fn payer_totals_split_from_the_right() {
        let mut out = BTreeMap::new();
        let f = |k: &str, v: i64| (k.to_owned(), v);
        fold_payer_totals(
            &[
                f("a|requests", 2),
                f("a|amount|USD", 30),
                f("x|amount|requests", 1),
                f("x|amount|amount|EUR", 7),
                f("garbage", 9),
            ],
            &mut out,
        );
        fold_payer_totals(&[f("a|amount|USD", 5)], &mut out);
        assert_eq!(out["a"].requests, 2);
        assert_eq!(out["a"].amount_minor["USD"], 35);
        assert_eq!(out["x|amount"].requests, 1);
        assert_eq!(out["x|amount"].amount_minor["EUR"], 7);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn event_ids_order_numerically() {
        assert!(event_order("10-2-3") < event_order("10-10-0"));
        assert!(event_order("9-9-15") < event_order("10-0-0"));
        assert!(event_order("10-0-1") < event_order("10-0-2"));
    }

    #[test]
    fn buckets_and_fingerprints_are_stable() {
        // These values name Redis keys in live deployments: they must never change.
        assert_eq!(bucket_of(""), 0xcbf2_9ce4_8422_2325 % BUCKETS);
        assert_eq!(bucket_of("agent-1"), bucket_of("agent-1"));
        let r = Reservation {
            id: "r".into(),
            payer: "p".into(),
            issuer: "i".into(),
            receipt_id: "j".into(),
            hold: Duration::from_secs(1),
            spent_until_ms: 0,
            mandate: None,
        };
        assert_eq!(r.fingerprint().len(), 32);
        let other = Reservation {
            issuer: "ij".into(),
            receipt_id: "".into(),
            ..r.clone()
        };
        assert_ne!(r.fingerprint(), other.fingerprint());
    }
}

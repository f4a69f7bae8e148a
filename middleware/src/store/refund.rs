//! Refunds: money given back for a charge, in full or in part, by the provider
//! ([`super::RefundStore`]). A refund is its own ledger entry ([`RefundRecord`]: a stable id, the
//! charge's id, amount, currency, payer, reason), linked to the charge it refunds; the sum of a
//! charge's refunds never exceeds what it charged, to the unit, decided in the same atomic step
//! that writes the refund ([`crate::store::rules::refund`]; one Lua script on Redis, one
//! transaction on sqlite), also under concurrent refunds from several replicas.
//!
//! Where the money goes depends on how the charge was paid: a charge paid with an x402
//! authorization (settled on chain, `credential` `x402:...`) is refunded as **owed** to the
//! payer's address (recorded and listed; no chain transfer, no balance credit); every other
//! charge (a prepaid balance, a receipt, a plan purchase) is credited to the payer's balance,
//! with a credit entry (`source` `refund:<event id>`) in the same step.
//!
//! A refund moves the charge's day aggregates' amount back by it (not its request count or
//! units: the request was served). A charge taken at admission that was voided cannot be
//! refunded (the void gave it back), and one refunded (even in part) can no longer be voided.

use super::UsageEvent;

/// How long after a charge it can be refunded (365 days): the store keeps each refunded
/// charge's running total ([`REFUND_STATE_KEEP_MS`]) beyond it, so a later refund always sees
/// every earlier one.
pub const REFUND_WINDOW_MS: i64 = 365 * 86_400_000;

/// How long a refunded charge's running total and its refunds' idempotency keys are kept
/// (400 days from the last refund: longer than [`REFUND_WINDOW_MS`]).
pub const REFUND_STATE_KEEP_MS: i64 = 400 * 86_400_000;

/// How long the marker a void leaves for refunds lives (2 days). A void follows its charge
/// within the request's time; older voids are found in the ledger ([`super::RefundStore::void_recorded`]),
/// the marker closes the race between that look-up and the refund's own step.
pub const VOID_MARK_KEEP_MS: i64 = 2 * 86_400_000;

/// How far after a charge the ledger is searched for its void (1 day: far beyond any
/// request's time).
pub const VOID_SEARCH_MS: i64 = 86_400_000;

/// A charge to refund, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundTarget {
    /// The ledger entry (a charge, or a void -- which cannot be refunded).
    pub event: UsageEvent,
    /// Whether a void of it is recorded.
    pub voided: bool,
}

/// One refund to make (the caller looked the charge up, [`super::RefundStore::refund_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The charge, as the ledger records it (`id` set, `voids` unset).
    pub charge: UsageEvent,
    /// Whether the ledger records a void of it (the store checks its own marker too).
    pub voided: bool,
    /// How much (minor units); `None`: all that remains refundable.
    pub amount_minor: Option<u64>,
    /// Why (required, recorded).
    pub reason: String,
    /// The request's `Idempotency-Key`: a second refund with it is answered from the first.
    pub key: String,
    /// What the key was used for (the charge, the amount asked, the reason): the same key for
    /// another refund is [`RefundOutcome::KeyReused`].
    pub fingerprint: String,
    /// Now (gateway clock, unix ms).
    pub time_ms: i64,
}

impl RefundRequest {
    /// Where the money goes: `Some(address)` when it is owed to an x402 payer's address (paid
    /// on chain), `None` when it is credited to the payer's balance.
    pub fn owed_to(&self) -> Option<String> {
        owed_to(&self.charge)
    }
}

/// Where a refund of `charge` goes: `Some(address)` for a charge paid on chain with x402 (owed
/// to the payer's address, which is its `payer`), `None` for every other (the balance).
pub fn owed_to(charge: &UsageEvent) -> Option<String> {
    charge
        .credential
        .starts_with("x402:")
        .then(|| charge.payer.clone())
}

/// One refund, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefundRecord {
    /// Its own ledger id, `<ms>-<seq>-<bucket>` (stable: webhooks and the bill name it).
    pub id: String,
    /// When it was made, unix ms.
    pub time_ms: i64,
    /// The charge it refunds.
    pub event_id: String,
    /// When that charge was made, unix ms (its day's aggregates moved back).
    pub charge_time_ms: i64,
    /// Who is refunded.
    pub payer: String,
    /// The charge's route.
    pub route: String,
    /// The charge's credential (what paid).
    pub credential: String,
    /// Currency code.
    pub currency: String,
    /// The currency's atomic scale.
    pub scale: u32,
    /// Amount refunded, minor units (> 0).
    pub amount_minor: u64,
    /// Why.
    pub reason: String,
    /// The x402 payer's address the refund is owed to (no balance credit); `None`: credited to
    /// the payer's balance.
    pub owed_to: Option<String>,
    /// The balance credit it made (`None` when owed).
    pub credit_id: Option<String>,
    /// What remained refundable of the charge after it (minor units).
    pub remaining_minor: u64,
}

impl RefundRecord {
    /// The record of `r` applied as ledger id `id` with `amount` (`remaining` left after it).
    pub fn of(
        r: &RefundRequest,
        id: String,
        amount: u64,
        remaining: u64,
        credit_id: Option<String>,
    ) -> Self {
        RefundRecord {
            id,
            time_ms: r.time_ms,
            event_id: r.charge.id.clone(),
            charge_time_ms: r.charge.time_ms,
            payer: r.charge.payer.clone(),
            route: r.charge.route.clone(),
            credential: r.charge.credential.clone(),
            currency: r.charge.currency.clone(),
            scale: r.charge.scale,
            amount_minor: amount,
            reason: r.reason.clone(),
            owed_to: r.owed_to(),
            credit_id,
            remaining_minor: remaining,
        }
    }
}

/// What a refund did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Refunded now.
    Refunded(RefundRecord),
    /// Refunded earlier with the same key and the same request: nothing moved now.
    Duplicate(RefundRecord),
    /// The key was used for another refund.
    KeyReused,
    /// More than remains refundable was asked for (nothing moved).
    Exceeds {
        /// What may still be refunded (minor units; 0: refunded in full).
        refundable_minor: u64,
    },
    /// A zero amount, or a charge of 0.
    Zero,
    /// The charge was voided (given back already).
    Voided,
    /// The charge is older than [`REFUND_WINDOW_MS`].
    WindowClosed,
}

/// Which refunds to list ([`super::RefundStore::refunds`]), newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundQuery {
    /// Only this payer's.
    pub payer: Option<String>,
    /// Only owed ones (`Some(true)`), only balance credits (`Some(false)`), or all.
    pub owed: Option<bool>,
    /// Only those with ids before this one.
    pub before: Option<String>,
    /// At most this many.
    pub limit: usize,
}

impl RefundQuery {
    /// Whether `r` passes the filters (the cursor and limit aside).
    pub fn admits(&self, r: &RefundRecord) -> bool {
        self.payer.as_ref().is_none_or(|p| *p == r.payer)
            && self.owed.is_none_or(|o| o == r.owed_to.is_some())
    }
}

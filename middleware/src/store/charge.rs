//! Capture at admission: the outcomes of charging a fixed price in the same step that
//! authorizes it, and of undoing such a charge when the request is not served.

use super::{AuthorizeOutcome, HoldOutcome, UsageEvent};

/// How long a balance charge's settled marker is kept beyond the hold time, on every backend:
/// a void comes at the latest when the request's time is up.
pub(crate) const MARKER_MARGIN_MS: i64 = 60_000;

/// What charging at admission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Charged: the usage event was appended.
    Charged {
        /// Ledger id of the charge.
        event_id: String,
        /// Available balance after the charge (minor units; 0 for a receipt).
        balance_minor: u64,
    },
    /// A receipt was refused (never [`AuthorizeOutcome::Reserved`]).
    Refused(AuthorizeOutcome),
    /// A balance charge was refused (blocked or insufficient).
    Declined(HoldOutcome),
}

/// What voiding a charge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidOutcome {
    /// Undone now: the void event's ledger id.
    Voided {
        /// Ledger id of the void event.
        event_id: String,
    },
    /// Nothing to undo: voided already, or never charged by this reservation.
    NotCharged,
}

/// The void event of a charge: same payer, route, units and amount (they count negatively),
/// `voids` = the charge's id, the upstream's status, time now.
pub fn void_event(charge: &UsageEvent, time_ms: i64, upstream_status: u16) -> UsageEvent {
    UsageEvent {
        id: String::new(),
        time_ms,
        upstream_status,
        voids: Some(charge.id.clone()),
        ..charge.clone()
    }
}

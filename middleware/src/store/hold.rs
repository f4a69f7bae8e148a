//! What settling a balance hold did, and the hold's extension while its request is still
//! served: a stream paused for a top-up (`on_exhausted = "pause"`, see [`crate::pause`])
//! moves the payer's available balance -- the top-up that arrived meanwhile -- into the hold
//! it already has, in one atomic step (`lua/extend_hold.lua`; one sqlite transaction), so the
//! money is reserved for the stream before one more chunk is delivered.

use async_trait::async_trait;

use super::{Hold, StoreError};

/// What settling a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldSettleOutcome {
    /// Charged (possibly less than the usage, see `uncharged_minor`) and recorded.
    Captured {
        /// Ledger id of the usage event.
        event_id: String,
        /// Amount charged (minor units).
        charged_minor: u64,
        /// Usage not charged because the balance ran out (minor units).
        uncharged_minor: u64,
        /// Available balance afterwards (minor units).
        balance_minor: u64,
    },
    /// Released: the held amount is available again.
    Released,
    /// No such hold (already settled, or expired and given back).
    NotHeld,
}

/// What extending a hold did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldExtended {
    /// `moved_minor` (possibly 0: nothing available) went from the available balance into
    /// the hold.
    Extended {
        /// Moved into the hold by this step (minor units).
        moved_minor: u64,
        /// What the hold holds now (minor units).
        held_minor: u64,
        /// Available balance afterwards (minor units).
        balance_minor: u64,
    },
    /// No such hold (settled, or swept as expired): nothing moved.
    NotHeld,
    /// The payer is blocked: nothing moved.
    PayerBlocked,
}

/// Holds that grow while their request is served.
#[async_trait]
pub trait HoldExtension: Send + Sync + std::fmt::Debug + 'static {
    /// Move `min(available, want_minor)` of the payer's balance into the live hold `h` (its
    /// id names it; its amount is the store's, not `h.amount_minor`), atomically: available
    /// goes down and held up by the same amount, so `credited - captured = available + held`
    /// holds throughout. The hold's expiry is left alone (the request's keepalive renews it).
    /// A blocked payer's hold does not grow.
    async fn extend_hold(&self, h: &Hold, want_minor: u64) -> Result<HoldExtended, StoreError>;
}

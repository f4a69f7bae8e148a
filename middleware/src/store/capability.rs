//! What a store can do, one capability trait per concern (receipts, balances, the ledger,
//! payer controls, mandates, plans, the x402 settlement queue, request idempotency). Every one
//! is required of a backend: [`Store`] is their composition, implemented for every type that
//! has them all, so a backend missing one does not compile (rather than failing at run time).

use std::time::Duration;

use async_trait::async_trait;

use super::*;

/// Receipts held single use for a request, spent, voided or revoked.
#[async_trait]
pub trait ReceiptStore: Send + Sync + std::fmt::Debug + 'static {
    /// Check the payer is not blocked and the receipt unused, and hold it -- atomically.
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError>;

    /// Capture (spend + append one usage event) or release a receipt hold -- atomically.
    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError>;

    /// Revoke a receipt: it can no longer pay (a hold in flight finishes). Returns whether it
    /// was still unused.
    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError>;
}

/// Prepaid balances: holds in flight, their capture or release, credits, the account.
#[async_trait]
pub trait BalanceStore: Send + Sync + std::fmt::Debug + 'static {
    /// Extend a hold whose request is still being served to `ttl` from now, with its mandate
    /// reservation: a hold in use is never swept (given back as expired) however long its
    /// response streams. `Ok(false)` when it is no longer held (settled, or swept before).
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError>;

    /// Check the payer is not blocked and the balance covers the amount, and hold it.
    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError>;

    /// Charge `actual_minor` against a hold (the rest returns to the balance; usage beyond the
    /// hold is taken from the balance as far as it goes) and append one usage event.
    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError>;

    /// Give a hold back.
    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError>;

    /// Credit or debit a balance, once per idempotency key.
    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError>;

    /// A payer's account (expired holds given back first).
    async fn account(&self, payer: &str) -> Result<Account, StoreError>;
}

/// The most stream entries a Redis store looks at to answer one
/// [`EventPage::Payer`] read (the events of the payer's bucket, newest first).
pub const PAYER_SCAN_MAX: usize = 20_000;

/// Capture at admission (fixed price, no mandate, no plan), from a receipt or a balance: the
/// charge in the step that authorizes it, and its void for a request that was not served.
#[async_trait]
pub trait AdmissionStore: Send + Sync + std::fmt::Debug + 'static {
    /// Check the payer is not blocked and the receipt unused (spend it) or the balance covers
    /// `h.amount_minor` (take it), and append `event` -- one atomic step. A receipt's refusal
    /// is [`ChargeOutcome::Refused`] with what [`ReceiptStore::authorize`] would have said; a
    /// balance's is [`ChargeOutcome::Declined`] with what [`BalanceStore::hold`] would have
    /// said.
    async fn charge_at_admission(
        &self,
        from: ChargeFrom<'_>,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError>;

    /// Undo [`AdmissionStore::charge_at_admission`] for a request that was not served: the
    /// receipt is usable again or the amount returns to the balance, a void event (`voids` =
    /// `charge.id`; built by [`void_event`]) is appended and the aggregates of the charge's day
    /// move back. Only the reservation or hold that made the charge may void it, in full; a
    /// second void does nothing ([`VoidOutcome::NotCharged`]).
    async fn void_admission(
        &self,
        from: ChargeFrom<'_>,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError>;
}

/// What a charge at admission is taken from.
#[derive(Debug, Clone, Copy)]
pub enum ChargeFrom<'a> {
    /// A receipt, held single use by this reservation.
    Receipt(&'a Reservation),
    /// The payer's balance, under this hold's id and amount.
    Balance(&'a Hold),
}

/// Which usage events [`LedgerStore::events`] reads: at most `limit` of them, from a cursor
/// (an event id; `None`: from the start or the newest end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventPage<'a> {
    /// Ids after `after`, in id order.
    After {
        /// The last id already read.
        after: Option<&'a str>,
        /// At most this many.
        limit: usize,
    },
    /// One payer bucket's events with ids after `after`, in id order: a complete,
    /// append-only sequence per bucket (an event is never inserted before one already read),
    /// which the webhook dispatcher follows with one cursor per bucket. A backend with a
    /// single sequence (sqlite) answers it as bucket 0.
    Bucket {
        /// The payer bucket.
        bucket: u64,
        /// The last id already read.
        after: Option<&'a str>,
        /// At most this many.
        limit: usize,
    },
    /// Ids before `before`, newest first: the admin API's recent payments, answered from
    /// the backend's index.
    Before {
        /// The oldest id already read.
        before: Option<&'a str>,
        /// At most this many.
        limit: usize,
    },
    /// One payer's events with ids before `before`, newest first: the agent's own bill
    /// (`GET <agent api>/usage`). Answered from a per-payer index (sqlite, the ledger
    /// database); on Redis from the payer's bucket stream, looking at no more than
    /// [`PAYER_SCAN_MAX`] entries per call.
    Payer {
        /// Whose.
        payer: &'a str,
        /// The oldest id already read.
        before: Option<&'a str>,
        /// At most this many.
        limit: usize,
    },
}

/// The usage ledger and what is derived from it.
#[async_trait]
pub trait LedgerStore: Send + Sync + std::fmt::Debug + 'static {
    /// Daily usage of one payer, or of all payers when `payer` is `None`, for UTC days
    /// `from..=to` (`yyyymmdd`).
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError>;

    /// Every payer with served requests on UTC days `from..=to` (`yyyymmdd`), with its totals,
    /// in payer order.
    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError>;

    /// A page of usage events (see [`EventPage`]).
    async fn events(&self, page: EventPage<'_>) -> Result<Vec<UsageEvent>, StoreError>;

    /// Every usage event in the ledger, in id order (tests and small exports).
    async fn usage_events(&self) -> Result<Vec<UsageEvent>, StoreError> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map(|e: &UsageEvent| e.id.as_str());
            let page = self.events(EventPage::After { after, limit: 1000 }).await?;
            let n = page.len();
            out.extend(page);
            if n < 1000 {
                return Ok(out);
            }
        }
    }
}

/// Per-payer controls: rate limits, blocks, and the store's own health.
#[async_trait]
pub trait PayerControl: Send + Sync + std::fmt::Debug + 'static {
    /// Count one request of `payer` on `route` against a rate limit: `Ok(None)` allowed,
    /// `Ok(Some(retry_after))` refused.
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: RateLimit,
    ) -> Result<Option<Duration>, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Block or unblock a payer.
    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError>;

    /// Record a one-time id (a DPoP proof's key thumbprint and `jti`) for `ttl`: `Ok(true)`
    /// the first time, `Ok(false)` while it is recorded -- atomically, so of two replicas
    /// shown the same proof one accepts it.
    async fn claim_once(&self, id: &str, ttl: Duration) -> Result<bool, StoreError>;
}

/// Risk rules: the check that counts a request, and the log of decisions.
#[async_trait]
pub trait RiskStore: Send + Sync + std::fmt::Debug + 'static {
    /// Check a request against risk rules and count it, in one atomic step per slot (see
    /// [`crate::risk`]): when the most severe hit refuses or blocks, no payer counter moves
    /// (and `block` blocks the payer); otherwise every counter moves. A new payer within its
    /// issuer's cap is counted whatever the other rules say. Each hit is logged. A blocked
    /// payer gets no hits and counts nothing (its block refuses it).
    async fn risk(
        &self,
        c: &crate::risk::RiskCheck<'_>,
    ) -> Result<crate::risk::RiskOutcome, StoreError>;

    /// The latest risk decisions, newest first, at most `limit`.
    async fn risk_decisions(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::risk::RiskDecision>, StoreError>;
}

/// Mandates: revocation and the payer's mandates with their window use.
#[async_trait]
pub trait MandateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Revoke a mandate (by [`crate::mandate::mandate_key`]): every later reservation under
    /// it is refused, in every bucket.
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError>;

    /// The mandates a payer used, with their summaries (JSON) and use in the window that
    /// contains `now_ms`.
    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError>;
}

/// Plans: buying periods and reading them.
#[async_trait]
pub trait PlanStore: Send + Sync + std::fmt::Debug + 'static {
    /// Buy one period of a plan (single use of the receipt; the purchase is one usage event).
    async fn subscribe(&self, s: &Subscription) -> Result<SubscribeOutcome, StoreError>;

    /// A payer's current (or last) period of a plan.
    async fn subscription(&self, payer: &str, plan: &str)
        -> Result<Option<PlanPeriod>, StoreError>;
}

/// The x402 `deferred` settlement queue.
#[async_trait]
pub trait SettlementQueue: Send + Sync + std::fmt::Debug + 'static {
    /// x402 `deferred`: capture an authorization's hold (spend + one usage event, like
    /// [`ReceiptStore::settle`]) and queue its settlement (`body`), atomically -- exactly one job per
    /// captured authorization. The job id is the event id.
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError>;

    /// Claim up to `limit` due settlements; each is not handed out again for `lease`.
    async fn claim_settlements(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SettlementJob>, StoreError>;

    /// Record how a settlement attempt ended (a failure blocks the payer).
    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError>;

    /// Settlements that failed for good (the admin API lists them).
    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError>;

    /// How many settlements wait (queued or being attempted; failed ones not counted): the
    /// dashboard's queue depth.
    async fn queued_settlements(&self) -> Result<u64, StoreError>;

    /// Mark a failed settlement resolved (settled by other means, or written off): it is
    /// forgotten and its payer unblocked when no other failed settlement remains. `false`: no
    /// such failed settlement.
    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError>;
}

/// Request `Idempotency-Key` claims.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claim a payer's request `Idempotency-Key` for the request `fingerprint`, atomically;
    /// the record lives `ttl` (see [`IdempotencyClaim`]).
    async fn idempotency_claim(
        &self,
        c: &KeyClaim,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// End the claim `c`: `Some((event id, time ms))` records the request as served and
    /// charged (kept until the claim's expiry); `None` forgets the key (nothing was charged: a
    /// retry runs again). A claim that is no longer `c.token`'s is left alone.
    async fn idempotency_finish(
        &self,
        c: &KeyClaim,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError>;
}

/// Refunds of charges, full or partial ([`super::refund`]).
#[async_trait]
pub trait RefundStore: Send + Sync + std::fmt::Debug + 'static {
    /// The ledger entry `id` as this store holds it, and whether a void of it is recorded;
    /// `None` when it holds no such entry (on Redis with a ledger of record, an entry drained
    /// and trimmed: the ledger database has it).
    async fn refund_target(&self, id: &str) -> Result<Option<RefundTarget>, StoreError>;

    /// Whether this store records a void of `charge` (searched up to
    /// [`super::refund::VOID_SEARCH_MS`] after it).
    async fn void_recorded(&self, charge: &UsageEvent) -> Result<bool, StoreError>;

    /// Refund (part of) a charge, atomically: the idempotency key, the void, what remains
    /// refundable ([`super::rules::refund`]), the refund entry, the balance credit (or the
    /// amount owed) and the aggregates, in one step.
    async fn refund(&self, r: &RefundRequest) -> Result<RefundOutcome, StoreError>;

    /// Refunds newest first (on Redis with a ledger of record, those not drained yet).
    async fn refunds(&self, q: &RefundQuery) -> Result<Vec<RefundRecord>, StoreError>;
}

/// Declares `Store` as the composition of the capability traits, and implements it for
/// every type that implements them all.
macro_rules! store_of {
    ($(#[$doc:meta])* $first:path $(, $cap:path)* $(,)?) => {
        $(#[$doc])*
        pub trait Store: $first $(+ $cap)* {}
        impl<T: $first $(+ $cap)*> Store for T {}
    };
}

store_of!(
    /// Where payment state lives: every capability, each required of a backend (a backend
    /// that lacks one does not compile, rather than failing in production). Every method is
    /// one atomic step. Implemented for every type that implements the capabilities.
    ReceiptStore,
    AdmissionStore,
    BalanceStore,
    LedgerStore,
    PayerControl,
    RiskStore,
    MandateStore,
    PlanStore,
    SettlementQueue,
    IdempotencyStore,
    RefundStore,
    super::LeaseStore,
    super::HoldExtension,
    super::WebhookOutbox,
    super::WebhookDelivery,
);

/// Every capability trait, to call store methods on a concrete store (`use
/// tollgate_middleware::store::prelude::*`); through `dyn Store` they need no import.
pub mod prelude {
    pub use super::super::{HoldExtension, LeaseStore, WebhookDelivery, WebhookOutbox};
    pub use super::{
        AdmissionStore, BalanceStore, ChargeFrom, IdempotencyStore, LedgerStore, MandateStore,
        PayerControl, PlanStore, ReceiptStore, RefundStore, RiskStore, SettlementQueue, Store,
    };
}

//! The webhook outbox (see `crate::webhooks`): messages waiting for delivery, each endpoint's
//! place in them, and the dispatcher's own state. This is the store's side.
//!
//! Messages live per payer bucket, in the order they were written; an endpoint is delivered a
//! bucket's messages in that order (so in order per payer) and keeps its own position in each
//! bucket (`done`), moved forward only by the holder of its claim. The dispatcher turns ledger
//! events into messages and moves its ledger cursor in the same atomic step
//! ([`WebhookOutbox::webhook_advance`]): a crash between the two cannot lose or repeat a
//! message.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::StoreError;

/// One webhook message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct WebhookMessage {
    /// Its Standard Webhooks id (`webhook-id`), the same on every retry and replay: receivers
    /// deduplicate by it.
    pub id: String,
    /// The event type (`balance.low`, ...).
    pub kind: String,
    /// The payer it is about (empty for a batch of several payers).
    pub payer: String,
    /// When the event happened, unix ms.
    pub time_ms: i64,
    /// The JSON payload, as delivered.
    pub body: String,
    /// Deliver to this endpoint only (a replay); `None`: to every endpoint subscribed to it.
    pub only: Option<String>,
    /// Its place in the outbox, assigned by the store (empty until written). Opaque; ordered
    /// within a bucket.
    #[serde(default)]
    pub seq: String,
}

/// One step of the dispatcher on a bucket: the messages made from the ledger events after
/// `expected` up to `cursor`, and the dispatcher's state changes, written together.
#[derive(Debug, Clone, Default)]
pub struct OutboxAdvance {
    /// The payer bucket.
    pub bucket: u64,
    /// The cursor the messages were made from (`None`: the start); the step is refused when
    /// the stored cursor is another (a second dispatcher got there first).
    pub expected: Option<String>,
    /// The new cursor: the last ledger event id these messages account for.
    pub cursor: String,
    /// State keys to set.
    pub set: Vec<(String, String)>,
    /// State keys to remove.
    pub clear: Vec<String>,
    /// The messages, in order.
    pub messages: Vec<WebhookMessage>,
    /// Messages to hold until a time (unix ms): listed by [`WebhookOutbox::webhook_due`] from
    /// then on, until unscheduled. A message scheduled again (same id) replaces the first.
    pub schedule: Vec<(i64, WebhookMessage)>,
    /// Scheduled messages to forget (by id).
    pub unschedule: Vec<String>,
}

/// What [`WebhookDelivery::webhook_claim`] hands an endpoint's deliverer for a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryHead {
    /// The endpoint's position (the last message it was given or skipped; empty: none).
    pub done: String,
    /// Failed attempts at the first message so far.
    pub attempts: u32,
    /// The next messages after `done`, in order (at most the claim's `max`).
    pub messages: Vec<WebhookMessage>,
}

/// A claim of one endpoint's delivery in one bucket.
#[derive(Debug, Clone)]
pub struct DeliveryClaim<'a> {
    /// Endpoint id.
    pub endpoint: &'a str,
    /// The payer bucket.
    pub bucket: u64,
    /// Who claims (a replica's id); the claim lasts `lock_ms`.
    pub holder: &'a str,
    /// Now, unix ms.
    pub now_ms: i64,
    /// How long the claim lasts.
    pub lock_ms: i64,
    /// At most this many messages.
    pub max: usize,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The receiver answered 2xx: move past the message.
    Delivered,
    /// Not for this endpoint (type not subscribed, or a replay for another): move past it.
    Skipped,
    /// Failed; try the same message again at `next_ms`.
    Retry {
        /// When to try again, unix ms.
        next_ms: i64,
        /// What went wrong.
        error: String,
    },
    /// Failed for the last time: keep it among the failures (replayable) and move past it.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// The end of one delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryFinish<'a> {
    /// Endpoint id.
    pub endpoint: &'a str,
    /// The payer bucket.
    pub bucket: u64,
    /// The claim's holder: only it may move the position.
    pub holder: &'a str,
    /// The position the claim was given ([`DeliveryHead::done`]).
    pub done: &'a str,
    /// The message attempted (or the last one skipped).
    pub message: &'a WebhookMessage,
    /// Attempts at it so far, this one included.
    pub attempts: u32,
    /// Now, unix ms.
    pub now_ms: i64,
    /// How it ended.
    pub result: DeliveryResult,
}

/// A message that could not be delivered to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    /// Endpoint id.
    pub endpoint: String,
    /// The message.
    pub message: WebhookMessage,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it was given up, unix ms.
    pub failed_ms: i64,
}

/// An endpoint's backlog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxBacklog {
    /// Messages after its position, in every bucket (for it or not).
    pub pending: u64,
    /// When the oldest of them was written, unix ms.
    pub oldest_ms: Option<i64>,
}

/// A store that keeps the webhook outbox.
#[async_trait]
pub trait WebhookOutbox: Send + Sync + std::fmt::Debug + 'static {
    /// The dispatcher's ledger cursor for `bucket` (`None`: it has not started) and the
    /// values of the state `keys` that are set.
    async fn webhook_state(
        &self,
        bucket: u64,
        keys: &[String],
    ) -> Result<(Option<String>, BTreeMap<String, String>), StoreError>;

    /// Write a dispatcher step (messages, state, cursor) in one atomic step. `false`: the
    /// stored cursor is not `a.expected` (nothing written).
    async fn webhook_advance(&self, a: &OutboxAdvance) -> Result<bool, StoreError>;

    /// Append messages to `bucket` directly (events that are not in the ledger: a block, a
    /// failed settlement). Returns them with their `seq`.
    async fn webhook_enqueue(
        &self,
        bucket: u64,
        messages: &[WebhookMessage],
    ) -> Result<Vec<WebhookMessage>, StoreError>;

    /// Each endpoint's backlog (by id, in the order given).
    async fn webhook_backlog(&self, endpoints: &[String])
        -> Result<Vec<OutboxBacklog>, StoreError>;

    /// Remove the messages of `bucket` that every one of `endpoints` is past; the number
    /// removed.
    async fn webhook_trim(&self, bucket: u64, endpoints: &[String]) -> Result<u64, StoreError>;

    /// The messages of `bucket` scheduled for `now_ms` or earlier, earliest first, at most
    /// `limit`, with their times (they stay scheduled until a step unschedules them).
    async fn webhook_due(
        &self,
        bucket: u64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, WebhookMessage)>, StoreError>;

    /// Set (`Some`) or remove a state key of `bucket` (a payer's balance threshold).
    async fn webhook_set(
        &self,
        bucket: u64,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// A store that delivers the webhook outbox: each endpoint's claim and position, and the
/// failures.
#[async_trait]
pub trait WebhookDelivery: Send + Sync + std::fmt::Debug + 'static {
    /// Claim an endpoint's delivery in a bucket and read what follows its position. `None`:
    /// another holder's claim is live, or the next message is waiting for its retry time.
    /// An empty `messages`: nothing to deliver.
    async fn webhook_claim(
        &self,
        c: &DeliveryClaim<'_>,
    ) -> Result<Option<DeliveryHead>, StoreError>;

    /// Record an attempt's end (moving the position, scheduling a retry or keeping a
    /// failure) and release the claim. `false`: the claim was no longer `f.holder`'s, or the
    /// position had moved (nothing written).
    async fn webhook_finish(&self, f: &DeliveryFinish<'_>) -> Result<bool, StoreError>;

    /// The failed deliveries, newest first, at most `limit`.
    async fn webhook_failures(&self, limit: usize) -> Result<Vec<FailedDelivery>, StoreError>;

    /// Deliver a failed message again, to its endpoint only (same id): it is appended to its
    /// bucket and removed from the failures, in one step. `None`: no such failure.
    async fn webhook_replay(
        &self,
        endpoint: &str,
        message_id: &str,
    ) -> Result<Option<WebhookMessage>, StoreError>;
}

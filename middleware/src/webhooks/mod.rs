//! Signed webhooks: events a provider wants pushed (a payer's balance running low, a block, a
//! failed settlement, batches of charges), delivered at least once, in order per payer, signed
//! per the Standard Webhooks spec ([`sign`]).
//!
//! # Where a message comes from
//! - **From the ledger** ([`dispatch`]): a dispatcher follows each payer bucket's usage events
//!   with a cursor, turns them into messages (`balance.low`, `balance.depleted`,
//!   `charge.captured`) and writes the messages, its state and the new cursor in one atomic
//!   store step ([`crate::store::WebhookOutbox::webhook_advance`]). The ledger entry is written
//!   in the same step as the money change, so nothing between the money change and the
//!   delivery can be lost: a crash leaves the cursor where it was and the same messages are
//!   made again (same ids). Two replicas' dispatchers race on the cursor; one wins, the other
//!   reads again.
//! - **Directly** ([`Webhooks::notify`]): events that are not ledger entries (`payer.blocked`,
//!   `settlement.failed`) are appended once the change they report is stored.
//!
//! # Delivery
//! [`deliver`]: for each endpoint and bucket, one claim at a time takes the next message (a
//! claim is a short lock in the store, so replicas do not send the same message at once), sends
//! it (`webhook-id`, `webhook-timestamp`, `webhook-signature`), and on a 2xx moves past it. A
//! failure is retried with exponential backoff, and the endpoint's later messages in that bucket
//! wait (order per payer); after `max_attempts` the message is kept among the failures
//! (replayable through the admin API) and delivery moves on. The id is the same on every retry
//! and replay: a receiver that deduplicates by `webhook-id` sees each event exactly once.

pub mod deliver;
mod derived;
pub mod dispatch;
pub mod sign;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::money::Currency;
use crate::store::webhook::{FailedDelivery, OutboxBacklog, WebhookMessage};
use crate::store::{bucket_of, LedgerStore, Store, StoreError};

/// An event type a webhook endpoint can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A payer's available balance fell below its threshold.
    BalanceLow,
    /// A payer's available balance reached zero, or a charge could not be taken in full.
    BalanceDepleted,
    /// A payer was blocked (by the admin API).
    PayerBlocked,
    /// An x402 `deferred` settlement failed for good.
    SettlementFailed,
    /// Charges recorded in the ledger, in batches.
    ChargeCaptured,
    /// A risk rule with `action = "flag"` triggered (the request was served).
    RiskFlagged,
    /// A mandate's spend in its window reached a configured percentage of its budget.
    MandateBudgetCrossed,
    /// A plan period's included calls are used up.
    PlanExhausted,
    /// A charge was refunded (in full or in part) through the admin API.
    RefundCreated,
    /// A plan period ended (scheduled at its purchase).
    PlanPeriodEnded,
}

impl EventKind {
    /// Every event type, by name.
    pub const ALL: [EventKind; 10] = [
        EventKind::BalanceLow,
        EventKind::BalanceDepleted,
        EventKind::PayerBlocked,
        EventKind::SettlementFailed,
        EventKind::ChargeCaptured,
        EventKind::RiskFlagged,
        EventKind::MandateBudgetCrossed,
        EventKind::PlanExhausted,
        EventKind::RefundCreated,
        EventKind::PlanPeriodEnded,
    ];

    /// Its name on the wire (`type`) and in the config.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::BalanceLow => "balance.low",
            EventKind::BalanceDepleted => "balance.depleted",
            EventKind::PayerBlocked => "payer.blocked",
            EventKind::SettlementFailed => "settlement.failed",
            EventKind::ChargeCaptured => "charge.captured",
            EventKind::RiskFlagged => "risk.flagged",
            EventKind::MandateBudgetCrossed => "mandate.budget_crossed",
            EventKind::PlanExhausted => "plan.exhausted",
            EventKind::RefundCreated => "refund.created",
            EventKind::PlanPeriodEnded => "plan.period_ended",
        }
    }

    /// The event type of a name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One webhook endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// Its id (stable: its delivery positions are kept under it).
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// What it is sent.
    pub events: BTreeSet<EventKind>,
    /// The HMAC key (from `whsec_<base64>`).
    pub key: Vec<u8>,
    /// One attempt's time bound.
    pub timeout: Duration,
    /// Attempts before a message is kept as failed.
    pub max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to `backoff_max`.
    pub backoff: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
}

debug_fields!(Endpoint {
    id,
    url,
    events,
    timeout,
    max_attempts,
    backoff,
    backoff_max
});

impl Endpoint {
    /// Whether a message is for this endpoint.
    pub fn wants(&self, m: &WebhookMessage) -> bool {
        match &m.only {
            Some(only) => *only == self.id,
            None => EventKind::parse(&m.kind).is_some_and(|k| self.events.contains(&k)),
        }
    }

    /// The delay before attempt `attempts + 1` (after `attempts` failures).
    pub fn backoff_after(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

/// Webhook settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Default `balance.low` thresholds per currency (atomic units); a payer's own threshold
    /// (admin API) wins.
    pub thresholds: BTreeMap<String, (Currency, u64)>,
    /// The `mandate.budget_crossed` percentages of a window's budget (e.g. 80 and 100).
    pub mandate_percents: Vec<u32>,
    /// Configured currencies, by code.
    pub currencies: BTreeMap<String, Currency>,
    /// The plan covering each route (by route id), for `plan.exhausted`.
    pub plan_routes: BTreeMap<String, String>,
    /// How often an idle dispatcher or deliverer looks again.
    pub poll: Duration,
    /// This replica's id (claims are held under it).
    pub holder: String,
}

/// The running webhook machinery of a process.
#[derive(Debug, Clone)]
pub struct Webhooks(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    config: WebhookConfig,
    store: Arc<dyn Store>,
    ledger: Arc<dyn LedgerStore>,
    /// When this process's webhooks started, unix ms (the first start's time is kept).
    started_ms: i64,
}

/// A message's JSON body (Standard Webhooks: `type`, `timestamp`, `data`).
#[derive(Serialize)]
struct Payload<'a, T> {
    r#type: &'a str,
    timestamp: String,
    data: T,
}

/// A message of `kind` about `payer` with `data`, id `msg_<key>` (a key that names the event
/// exactly once: the same event gives the same id).
pub fn message<T: Serialize>(
    kind: EventKind,
    key: &str,
    payer: &str,
    time_ms: i64,
    data: T,
) -> WebhookMessage {
    let body = serde_json::to_string(&Payload {
        r#type: kind.name(),
        timestamp: crate::store::iso_time(time_ms),
        data,
    })
    .unwrap_or_default();
    // A header-safe id: the key itself when it is plain, else its digest (payer ids are the
    // issuers' to choose).
    let plain = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let id = if plain && key.len() <= 200 {
        format!("msg_{key}")
    } else {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("msg_{hex}")
    };
    WebhookMessage {
        id,
        kind: kind.name().to_owned(),
        payer: payer.to_owned(),
        time_ms,
        body,
        only: None,
        seq: String::new(),
    }
}

impl Webhooks {
    /// Webhooks on `store`, following the ledger of record `ledger` (the store itself, or the
    /// ledger database when there is one). Nothing runs until [`Webhooks::spawn`].
    pub fn new(config: WebhookConfig, store: Arc<dyn Store>, ledger: Arc<dyn LedgerStore>) -> Self {
        Webhooks(Arc::new(Inner {
            config,
            store,
            ledger,
            started_ms: crate::clock::Clock::now_ms(&crate::clock::SystemClock),
        }))
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.0.config.endpoints
    }

    fn endpoint_ids(&self) -> Vec<String> {
        self.0
            .config
            .endpoints
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Whether any endpoint takes `kind`.
    pub fn wanted(&self, kind: EventKind) -> bool {
        self.0
            .config
            .endpoints
            .iter()
            .any(|e| e.events.contains(&kind))
    }

    /// Start the dispatcher and one deliverer per endpoint and bucket; they run until the
    /// returned handles are aborted (or the process ends).
    pub fn spawn(&self) -> Vec<tokio::task::AbortHandle> {
        let mut handles = vec![tokio::spawn(dispatch::run(self.clone())).abort_handle()];
        for (i, _) in self.0.config.endpoints.iter().enumerate() {
            for bucket in 0..crate::store::BUCKETS {
                handles.push(tokio::spawn(deliver::run(self.clone(), i, bucket)).abort_handle());
            }
        }
        handles
    }

    /// Append a message that is not derived from the ledger (`payer.blocked`,
    /// `settlement.failed`) to its payer's bucket. Nothing is written when no endpoint takes
    /// `kind`.
    pub async fn notify<T: Serialize>(
        &self,
        kind: EventKind,
        key: &str,
        payer: &str,
        time_ms: i64,
        data: T,
    ) -> Result<(), StoreError> {
        if !self.wanted(kind) {
            return Ok(());
        }
        let m = message(kind, key, payer, time_ms, data);
        self.0
            .store
            .webhook_enqueue(bucket_of(payer), std::slice::from_ref(&m))
            .await?;
        crate::metrics::global()
            .webhook_messages
            .with_label_values(&[kind.name()])
            .inc();
        Ok(())
    }

    /// Failed deliveries, newest first.
    pub async fn failures(&self, limit: usize) -> Result<Vec<FailedDelivery>, StoreError> {
        self.0.store.webhook_failures(limit).await
    }

    /// Deliver a failed message again to its endpoint (same id).
    pub async fn replay(
        &self,
        endpoint: &str,
        id: &str,
    ) -> Result<Option<WebhookMessage>, StoreError> {
        self.0.store.webhook_replay(endpoint, id).await
    }

    /// Each endpoint's backlog, in the order of [`Webhooks::endpoints`].
    pub async fn backlog(&self) -> Result<Vec<OutboxBacklog>, StoreError> {
        self.0.store.webhook_backlog(&self.endpoint_ids()).await
    }

    /// Set (or with `None` remove) a payer's own `balance.low` threshold in a currency, in
    /// atomic units.
    pub async fn set_threshold(
        &self,
        payer: &str,
        currency: &str,
        minor: Option<u64>,
    ) -> Result<(), StoreError> {
        let value = minor.map(|m| m.to_string());
        self.0
            .store
            .webhook_set(
                bucket_of(payer),
                &dispatch::threshold_key(payer, currency),
                value.as_deref(),
            )
            .await
    }
}

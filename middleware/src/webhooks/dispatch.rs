//! The dispatcher: ledger events in, webhook messages out (see the module above).
//!
//! Per bucket and step: read the events after the bucket's cursor, make the messages, and write
//! them with the new cursor and the state they change in one store step. Balance thresholds are
//! judged on the payer's available balance when the step runs (read once per payer and step),
//! with the state remembering that a payer was told: `balance.low` is sent when the balance is
//! found below the threshold after a charge and not sent again until the balance was seen at or
//! above it (after a top-up, at the next charge); the same for `balance.depleted` at zero.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{message, EventKind, Webhooks};
use crate::store::webhook::OutboxAdvance;
use crate::store::{StoreError, UsageEvent, BUCKETS};

/// Events read per bucket and step.
const BATCH: usize = 500;

/// How often scheduled messages (`plan.period_ended`) are looked at.
const DUE_EVERY: Duration = Duration::from_secs(1);

/// How often delivered messages are trimmed and the backlog gauges refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// The state key of the time webhooks first started (events before it are not reported).
const SINCE: &str = "@since";

/// The state key of a payer's own `balance.low` threshold (atomic units).
pub(crate) fn threshold_key(payer: &str, currency: &str) -> String {
    format!("thr|{payer}|{currency}")
}

fn low_key(payer: &str, currency: &str) -> String {
    format!("low|{payer}|{currency}")
}

fn depleted_key(payer: &str, currency: &str) -> String {
    format!("dep|{payer}|{currency}")
}

#[derive(Serialize)]
struct BalanceData<'a> {
    payer: &'a str,
    currency: &'a str,
    /// The available balance when it was seen (decimal).
    available: String,
    /// The threshold crossed (decimal; `balance.low` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<String>,
    /// The ledger event after which it was seen.
    event: &'a str,
}

#[derive(Serialize)]
struct ChargesData {
    events: Vec<serde_json::Value>,
}

/// Follow the ledger until aborted.
pub async fn run(w: Webhooks) {
    let mut housekeeping = Instant::now();
    let mut due_check = Instant::now();
    let mut failing = false;
    loop {
        let mut busy = false;
        for bucket in 0..BUCKETS {
            match step(&w, bucket).await {
                Ok(n) => {
                    busy |= n > 0;
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, bucket, "webhook dispatcher: store or ledger unavailable; retrying");
                    }
                    failing = true;
                }
            }
        }
        if due_check.elapsed() >= DUE_EVERY {
            due_check = Instant::now();
            let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
            for bucket in 0..BUCKETS {
                if let Err(e) = super::derived::release_period_ends(&w, bucket, now).await {
                    tracing::debug!(error = %e, "scheduled webhooks not released (retried)");
                }
            }
        }
        if housekeeping.elapsed() >= HOUSEKEEPING {
            housekeeping = Instant::now();
            keep_house(&w).await;
        }
        if !busy {
            tokio::time::sleep(w.0.config.poll).await;
        }
    }
}

/// Trim what every endpoint is past; refresh the backlog gauges.
async fn keep_house(w: &Webhooks) {
    let ids = w.endpoint_ids();
    for bucket in 0..BUCKETS {
        if let Err(e) = w.0.store.webhook_trim(bucket, &ids).await {
            tracing::debug!(error = %e, "webhook outbox trim failed (retried later)");
        }
    }
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    if let Ok(backlog) = w.backlog().await {
        let m = crate::metrics::global();
        for (e, b) in w.endpoints().iter().zip(backlog) {
            m.webhook_pending
                .with_label_values(&[&e.id])
                .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
            let age = b.oldest_ms.map_or(0, |o| now.saturating_sub(o).max(0));
            m.webhook_outbox_age_seconds
                .with_label_values(&[&e.id])
                .set(age as f64 / 1000.0);
        }
    }
}

/// One step on one bucket: the number of ledger events it accounted for.
pub async fn step(w: &Webhooks, bucket: u64) -> Result<usize, StoreError> {
    let (store, ledger) = (&w.0.store, &w.0.ledger);
    let (cursor, state) = store.webhook_state(bucket, &[SINCE.to_owned()]).await?;
    // Webhooks report what happens from their first start on (the history is in the admin
    // API's export): events settled before it are read past without messages. The time is
    // kept, so a restart still reports every later event it had not reached.
    let fresh = cursor.is_none() && !state.contains_key(SINCE);
    let since = state
        .get(SINCE)
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(w.0.started_ms);
    let events = ledger
        .events(crate::store::EventPage::Bucket {
            bucket,
            after: cursor.as_deref(),
            limit: BATCH,
        })
        .await?;
    let Some(last) = events.last().map(|e| e.id.clone()) else {
        return Ok(0);
    };
    let mut advance = OutboxAdvance {
        bucket,
        expected: cursor.clone(),
        cursor: last.clone(),
        ..OutboxAdvance::default()
    };
    if fresh {
        advance.set.push((SINCE.to_owned(), since.to_string()));
    }
    let read = events.len();
    let events: Vec<UsageEvent> = events.into_iter().filter(|e| e.time_ms >= since).collect();
    let (Some(first), Some(newest)) = (events.first(), events.last()) else {
        // Only history: move past it.
        return if store.webhook_advance(&advance).await? {
            Ok(read)
        } else {
            Ok(1)
        };
    };
    if w.wanted(EventKind::ChargeCaptured) {
        let data = ChargesData {
            events: events.iter().map(UsageEvent::to_json).collect(),
        };
        let key = format!("charges_{}_{}", first.id, newest.id);
        advance.messages.push(message(
            EventKind::ChargeCaptured,
            &key,
            "",
            newest.time_ms,
            data,
        ));
    }
    if w.wanted(EventKind::BalanceLow) || w.wanted(EventKind::BalanceDepleted) {
        balances(w, bucket, &events, &mut advance).await?;
    }
    super::derived::mandates(w, bucket, &events, &mut advance).await?;
    super::derived::plans(w, bucket, &events, &mut advance).await?;
    super::derived::schedule_period_ends(w, &events, &mut advance).await?;
    if !store.webhook_advance(&advance).await? {
        // Another dispatcher moved the cursor first: read again.
        return Ok(1);
    }
    let m = crate::metrics::global();
    for msg in &advance.messages {
        m.webhook_messages.with_label_values(&[&msg.kind]).inc();
    }
    Ok(read)
}

/// The balance messages of a step, and the state they change.
async fn balances(
    w: &Webhooks,
    bucket: u64,
    events: &[UsageEvent],
    advance: &mut OutboxAdvance,
) -> Result<(), StoreError> {
    // The last charge of each (payer, currency), and whether any of them fell short.
    let mut seen: BTreeMap<(&str, &str), (&UsageEvent, bool)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.voids.is_none()) {
        let short = e.uncharged_minor > 0;
        let entry = seen
            .entry((e.payer.as_str(), e.currency.as_str()))
            .or_insert((e, short));
        *entry = (e, entry.1 || short);
    }
    if seen.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::new();
    for (payer, currency) in seen.keys() {
        keys.push(threshold_key(payer, currency));
        keys.push(low_key(payer, currency));
        keys.push(depleted_key(payer, currency));
    }
    let (_, state) = w.0.store.webhook_state(bucket, &keys).await?;
    let mut accounts = BTreeMap::new();
    for (payer, _) in seen.keys() {
        if !accounts.contains_key(payer) {
            accounts.insert(*payer, w.0.store.account(payer).await?);
        }
    }
    for ((payer, code), (event, short)) in seen {
        let available = accounts
            .get(payer)
            .and_then(|a| a.balances.get(code))
            .map_or(0, |b| b.available);
        let available_minor = u64::try_from(available).unwrap_or(0);
        let configured = w.0.config.thresholds.get(code);
        let Some(currency) = configured
            .map(|(c, _)| c.clone())
            .or_else(|| crate::money::Currency::try_new(code.to_owned(), event.scale).ok())
        else {
            continue;
        };
        let decimal = |minor: u64| currency.from_minor(minor).to_string();
        let data = |threshold: Option<String>| BalanceData {
            payer,
            currency: code,
            available: decimal(available_minor),
            threshold,
            event: &event.id,
        };
        let own = state
            .get(&threshold_key(payer, code))
            .and_then(|t| t.parse::<u64>().ok());
        let threshold = own.or(configured.map(|(_, t)| *t));
        let (low, dep) = (low_key(payer, code), depleted_key(payer, code));
        if let (true, Some(t)) = (w.wanted(EventKind::BalanceLow), threshold) {
            let below = available_minor < t;
            if below && !state.contains_key(&low) {
                let key = format!("{}_low_{code}", event.id);
                let body = data(Some(decimal(t)));
                let m = message(EventKind::BalanceLow, &key, payer, event.time_ms, body);
                advance.messages.push(m);
                advance.set.push((low, event.id.clone()));
            } else if !below && state.contains_key(&low) {
                advance.clear.push(low);
            }
        }
        if w.wanted(EventKind::BalanceDepleted) {
            let depleted = available <= 0 || short;
            if depleted && !state.contains_key(&dep) {
                let key = format!("{}_depleted_{code}", event.id);
                let m = message(
                    EventKind::BalanceDepleted,
                    &key,
                    payer,
                    event.time_ms,
                    data(None),
                );
                advance.messages.push(m);
                advance.set.push((dep, event.id.clone()));
            } else if !depleted && state.contains_key(&dep) {
                advance.clear.push(dep);
            }
        }
    }
    Ok(())
}

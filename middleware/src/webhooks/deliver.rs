//! The deliverer of one endpoint in one bucket: claim, send, record, in order.

use std::time::Duration;

use super::{sign, Endpoint, Webhooks};
use crate::clock::{Clock, SystemClock};
use crate::store::webhook::{DeliveryClaim, DeliveryFinish, DeliveryHead, DeliveryResult};
use crate::store::StoreError;

/// Messages read per claim (the ones not for this endpoint are skipped in one step).
const CLAIM_MAX: usize = 64;

/// How an attempt went on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A 2xx answer.
    Ok,
    /// Anything else: the reason.
    Failed(String),
}

/// POST one message, signed, within the endpoint's timeout. Redirects are not followed
/// (a redirect is a failure, as the Standard Webhooks spec advises).
pub async fn send(client: &reqwest::Client, e: &Endpoint, id: &str, body: &str) -> Sent {
    let timestamp = SystemClock.now_ms().div_euclid(1000);
    let signature = sign::sign(&e.key, id, timestamp, body);
    let request = client
        .post(&e.url)
        .timeout(e.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_owned());
    match request.send().await {
        Ok(r) if r.status().is_success() => Sent::Ok,
        Ok(r) => Sent::Failed(format!("HTTP {}", r.status().as_u16())),
        Err(err) if err.is_timeout() => Sent::Failed(format!("timed out after {:?}", e.timeout)),
        Err(err) => Sent::Failed(crate::error::error_chain(&err)),
    }
}

/// Deliver endpoint `index`'s messages in `bucket` until aborted.
pub async fn run(w: Webhooks, index: usize, bucket: u64) {
    let Some(e) = w.endpoints().get(index).cloned() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(endpoint = %e.id, error = %err, "webhook client not built");
            return;
        }
    };
    let poll = w.0.config.poll;
    loop {
        match once(&w, &client, &e, bucket).await {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(poll).await,
            Err(err) => {
                tracing::debug!(endpoint = %e.id, error = %err, "webhook delivery: store unavailable");
                tokio::time::sleep(poll.max(Duration::from_millis(500))).await;
            }
        }
    }
}

/// One claim: `true` when something was sent or skipped (look again at once).
pub async fn once(
    w: &Webhooks,
    client: &reqwest::Client,
    e: &Endpoint,
    bucket: u64,
) -> Result<bool, StoreError> {
    let store = &w.0.store;
    let holder = w.0.config.holder.as_str();
    let now = SystemClock.now_ms();
    let lock_ms = i64::try_from(e.timeout.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_add(5_000);
    let claim = DeliveryClaim {
        endpoint: &e.id,
        bucket,
        holder,
        now_ms: now,
        lock_ms,
        max: CLAIM_MAX,
    };
    let Some(DeliveryHead {
        done,
        attempts,
        messages,
    }) = store.webhook_claim(&claim).await?
    else {
        return Ok(false);
    };
    let Some(last) = messages.last() else {
        return Ok(false);
    };
    let finish = |message, attempts, result| DeliveryFinish {
        endpoint: &e.id,
        bucket,
        holder,
        done: &done,
        message,
        attempts,
        now_ms: SystemClock.now_ms(),
        result,
    };
    // Skip what is not for this endpoint, up to the first message that is.
    let Some(pos) = messages.iter().position(|m| e.wants(m)) else {
        store
            .webhook_finish(&finish(last, 0, DeliveryResult::Skipped))
            .await?;
        return Ok(true);
    };
    if pos > 0 {
        store
            .webhook_finish(&finish(&messages[pos - 1], 0, DeliveryResult::Skipped))
            .await?;
        return Ok(true);
    }
    let m = &messages[0];
    let metrics = crate::metrics::global();
    let tried = attempts.saturating_add(1);
    let result = match send(client, e, &m.id, &m.body).await {
        Sent::Ok => DeliveryResult::Delivered,
        Sent::Failed(error) if tried >= e.max_attempts => {
            tracing::warn!(endpoint = %e.id, id = %m.id, attempts = tried, %error, "webhook delivery failed for good (kept; replay it through the admin API)");
            DeliveryResult::Failed { error }
        }
        Sent::Failed(error) => {
            let delay = e.backoff_after(tried);
            let next_ms = SystemClock
                .now_ms()
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            tracing::info!(endpoint = %e.id, id = %m.id, attempt = tried, %error, retry_in = ?delay, "webhook delivery failed; retrying");
            DeliveryResult::Retry { next_ms, error }
        }
    };
    let outcome = match &result {
        DeliveryResult::Delivered => "delivered",
        DeliveryResult::Retry { .. } => "retried",
        _ => "failed",
    };
    metrics
        .webhook_deliveries
        .with_label_values(&[&e.id, outcome])
        .inc();
    store.webhook_finish(&finish(m, tried, result)).await?;
    Ok(outcome == "delivered" || outcome == "failed")
}

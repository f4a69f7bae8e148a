//! Settling when the store stops answering: retry a capture until its outcome is known, and
//! reconcile in the background when it never became known in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Held;
use crate::clock::{Clock, SystemClock};
use crate::store::{Credit, HoldSettleOutcome, Idempotency, SettleOutcome, Settlement, Store};

/// Run a capture; when the store does not answer, the capture may or may not have landed, so
/// retry the same (idempotent) capture until it answers or `window` is over: its answer is then
/// the first attempt's outcome. Only an outcome learned this way lets the response be served.
pub(super) async fn retry_unknown<T, F, Fut>(
    window: Duration,
    mut attempt: F,
) -> Result<T, crate::store::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let deadline = Instant::now() + window;
    let mut wait = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, "capture outcome unknown; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long after the reconciler starts a balance hold's settled marker is surely still there:
/// the Redis store keeps it [`crate::store::DEFAULT_SETTLED_KEEP`] (90 s) from the capture,
/// and the reconciler starts at most one retry window (60 s) after it. Past this, "hold gone
/// and no marker" may be a capture whose marker expired: the ledger of record answers.
const MARKER_CERTAIN: Duration = Duration::from_secs(30);

/// The store did not answer a capture within the retry window, so the response was withheld --
/// but the capture may have landed. In the background, until the store answers (up to an hour):
/// release the hold; if it is gone because the capture did land, refund the charge to the
/// payer's balance (one credit per reservation, reason `refund: response withheld`). Either
/// way the payer does not pay for a response it did not get.
pub(super) fn reconcile(
    store: Arc<dyn Store>,
    held: Held,
    amount_minor: u64,
    currency: String,
    capture: Settlement,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let (payer, reservation) = match &held {
            Held::Receipt(r) => (r.payer.clone(), r.id.clone()),
            Held::Balance(hold) => (hold.payer.clone(), hold.id.clone()),
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3600);
        let mut wait = Duration::from_millis(200);
        loop {
            let outcome: Result<Option<u64>, crate::store::StoreError> = async {
                match &held {
                    Held::Receipt(r) => match store.settle(r, &Settlement::Release).await? {
                        SettleOutcome::Released => Ok(None),
                        // Not held: either captured (then learn it) or expired unused.
                        _ => match store.settle(r, &capture).await? {
                            SettleOutcome::AlreadyCaptured { .. } => Ok(Some(amount_minor)),
                            // Captured only now, by this check: it is refunded below as well.
                            SettleOutcome::Captured { .. } => Ok(Some(amount_minor)),
                            _ => Ok(None),
                        },
                    },
                    Held::Balance(hold) => match store.release_hold(hold).await? {
                        HoldSettleOutcome::Released => Ok(None),
                        _ => {
                            let Settlement::Capture(event) = &capture else { return Ok(None) };
                            match store.capture_hold(hold, amount_minor, event).await? {
                                HoldSettleOutcome::Captured { charged_minor, .. } => Ok(Some(charged_minor)),
                                _ if started.elapsed() > MARKER_CERTAIN => {
                                    tracing::warn!(%reservation, %payer, "reconciled late: the hold is gone and its settled marker may have expired; if the ledger has an event for this reservation, refund it");
                                    Ok(None)
                                }
                                _ => Ok(None),
                            }
                        }
                    },
                }
            }
            .await;
            match outcome {
                Ok(None) => {
                    tracing::info!(%reservation, "reconciled: nothing was charged for the withheld response");
                    return;
                }
                Ok(Some(charged)) => {
                    let refund = Credit {
                        payer: payer.clone(),
                        currency: currency.clone(),
                        amount_minor: i64::try_from(charged).unwrap_or(i64::MAX),
                        idempotency: Idempotency::Key(format!("refund:{reservation}")),
                        keep_until_ms: SystemClock.now_ms() + 30 * 86_400_000,
                        reason: "refund: response withheld (store unreachable at capture)".into(),
                        source: format!("reconcile:{reservation}"),
                    };
                    match store.credit(&refund).await {
                        Ok(_) => {
                            tracing::warn!(%reservation, %payer, charged, "reconciled: the capture had landed; refunded to the balance");
                            crate::metrics::global().refunds_minor.with_label_values(&[currency.as_str()]).inc_by(charged);
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, %reservation, "refund not recorded yet; retrying"),
                    }
                }
                Err(e) => tracing::debug!(error = %e, %reservation, "store still unreachable; reconciling later"),
            }
            if Instant::now() > deadline {
                tracing::error!(%reservation, %payer, "could not reconcile a withheld response within an hour: check the ledger");
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    });
}

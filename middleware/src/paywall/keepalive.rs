//! A hold in use is never swept: while a metered response streams, its admission's hold (and
//! the hold's mandate reservation) is renewed in the store every third of its lifetime, so an
//! account read -- which gives expired holds back -- never takes it from a request still being
//! served, however long the stream lasts. The renewal stops when the response is settled (the
//! keepalive is dropped with the metered body's state).

use std::time::Duration;

use tokio::task::AbortHandle;

use super::Admission;

/// Renews an admission's hold until dropped.
#[derive(Debug)]
pub(crate) struct HoldKeepalive(AbortHandle);

impl Drop for HoldKeepalive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Admission {
    /// How long this admission's hold lasts unrenewed.
    pub(crate) fn hold_ttl(&self) -> Duration {
        self.secured.ttl()
    }

    /// Start renewing this admission's hold while its response streams. `None` when there is
    /// nothing to renew (charged at admission, an x402 payment) or no runtime.
    pub(crate) fn keep_hold_alive(&self) -> Option<HoldKeepalive> {
        let held = self.secured.renewable()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let ttl = held.ttl();
        let store = self.paywall.0.store.clone();
        let period = (ttl / 3).max(Duration::from_millis(50));
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match held.renew(store.as_ref(), ttl).await {
                    Ok(true) => {}
                    // Settled meanwhile, or a plan-covered call holding nothing.
                    Ok(false) => return,
                    // Tried again next period; the hold outlives two failed renewals.
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing a streaming request's hold failed")
                    }
                }
            }
        });
        Some(HoldKeepalive(task.abort_handle()))
    }
}

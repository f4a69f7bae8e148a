//! Capture at admission (`capture = "admission"` on a fixed-price route): the price is charged
//! in the same store step that authorizes the receipt or checks the balance -- one round trip
//! for a served request. A request that is not served (upstream 400+, no answer, client gone)
//! is voided: the receipt becomes usable again or the amount returns to the balance, and a void
//! event (`voids` = the charge's id) is appended. Payments under a mandate or a plan, and
//! metered prices, always capture after the response (see [`super::Admission::settle`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use super::{Admission, Held, Payment, Paywall, Refusal, Settled};
use crate::price::PricedRoute;
use crate::store::{void_event, ChargeFrom, ChargeOutcome, Store, UsageEvent, VoidOutcome};

/// A fixed price charged at admission: the charge as recorded (its `id` is the ledger id).
#[derive(Debug)]
pub(super) struct Charged {
    event: UsageEvent,
    /// Available balance after the charge (balance payments).
    balance_minor: Option<u64>,
}

impl Paywall {
    /// The usage event of a fixed price charged at admission (the upstream has not answered:
    /// `upstream_status` 0).
    fn admission_event(
        &self,
        route: &PricedRoute,
        method: &Method,
        payment: &Payment,
        reservation: &str,
    ) -> Result<UsageEvent, Refusal> {
        let currency = &payment.charge.currency;
        let amount_minor = currency
            .to_minor(payment.charge.amount)
            .map_err(|_| Refusal::internal())?;
        Ok(UsageEvent {
            id: String::new(),
            time_ms: self.0.settings.clock.now_ms(),
            payer: payment.payer.clone(),
            route: route.id.clone(),
            method: method.as_str().to_owned(),
            units: BTreeMap::from([("request".to_owned(), 1)]),
            unit_prices: BTreeMap::new(),
            currency: currency.code().to_owned(),
            scale: currency.scale(),
            amount_minor,
            uncharged_minor: 0,
            credential: payment.credential.clone(),
            reservation: reservation.to_owned(),
            upstream_status: 0,
            voids: None,
        })
    }

    /// Charge the route's fixed price at admission in one step: spend a receipt (authorized
    /// in the same step), or take it from the balance.
    pub(super) async fn charge_at_admission(
        &self,
        from: ChargeFrom<'_>,
        route: &PricedRoute,
        method: &Method,
        payment: &Payment,
    ) -> Result<Charged, Refusal> {
        let (id, op) = match from {
            ChargeFrom::Receipt(r) => (&r.id, "authorize_capture"),
            ChargeFrom::Balance(h) => (&h.id, "hold_capture"),
        };
        let mut event = self.admission_event(route, method, payment, id)?;
        let outcome = crate::metrics::timed(op, self.0.store.charge_at_admission(from, &event))
            .await
            .map_err(|e| Refusal::store_down(e, op))?;
        match (outcome, from) {
            (
                ChargeOutcome::Charged {
                    event_id,
                    balance_minor,
                },
                _,
            ) => {
                event.id = event_id;
                let balance_minor = matches!(from, ChargeFrom::Balance(_)).then_some(balance_minor);
                Ok(Charged {
                    event,
                    balance_minor,
                })
            }
            (ChargeOutcome::Refused(o), ChargeFrom::Receipt(_)) => Err(Self::authorize_refusal(o)),
            (ChargeOutcome::Declined(o), ChargeFrom::Balance(hold)) => Err(self
                .hold_outcome(o, hold, route)
                .err()
                .unwrap_or_else(Refusal::internal)),
            _ => Err(Refusal::internal()),
        }
    }
}

impl Admission {
    /// Settle a request charged at admission: served (below 400) -> nothing left to do but
    /// answer `PAYMENT-RESPONSE`; otherwise void the charge (retried; in the background if the
    /// store does not answer in time).
    pub(super) async fn settle_charged(
        &mut self,
        held: Held,
        c: Charged,
        status: Option<u16>,
    ) -> Result<Settled, Refusal> {
        let claim = self.idempotency.take();
        if let Some(status) = status.filter(|s| *s < 400) {
            if let Some(claim) = claim {
                claim.done(&c.event.id, c.event.time_ms).await;
            }
            return Ok(self.paid(
                &c.event.id,
                (c.event.amount_minor, c.balance_minor, None),
                None,
                (status, c.event.time_ms),
            ));
        }
        if let Some(claim) = claim {
            claim.forget().await;
        }
        let store = self.paywall.0.store.clone();
        let void = void_event(
            &c.event,
            self.paywall.0.settings.clock.now_ms(),
            status.unwrap_or(0),
        );
        let outcome = super::retry_unknown(self.paywall.0.settings.settle_retry, || {
            void_once(&*store, &held, &c.event, &void)
        })
        .await;
        if let Err(e) = outcome {
            tracing::warn!(error = %e, event = %c.event.id, "void not recorded yet; retrying in the background");
            void_later(store, held, c.event, void);
        }
        Ok(Settled::default())
    }

    /// Dropped unsettled (client gone, future cancelled): void in the background.
    pub(super) fn abandon_charged(&self, held: Held, c: Charged) {
        let void = void_event(&c.event, self.paywall.0.settings.clock.now_ms(), 0);
        void_later(self.paywall.0.store.clone(), held, c.event, void);
    }
}

async fn void_once(
    store: &dyn Store,
    held: &Held,
    charge: &UsageEvent,
    void: &UsageEvent,
) -> Result<VoidOutcome, crate::store::StoreError> {
    let (op, from) = match held {
        Held::Receipt(r) => ("void", ChargeFrom::Receipt(r)),
        Held::Balance(hold) => ("void_hold", ChargeFrom::Balance(hold)),
    };
    crate::metrics::timed(op, store.void_admission(from, charge, void)).await
}

/// Void until the store answers (up to an hour, backing off to 10 s), in the background.
fn void_later(store: Arc<dyn Store>, held: Held, charge: UsageEvent, void: UsageEvent) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::error!(event = %charge.id, "no runtime to void an unserved charge: check the ledger");
        return;
    };
    handle.spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let mut wait = Duration::from_millis(100);
        loop {
            match void_once(&*store, &held, &charge, &void).await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, event = %charge.id, "store unreachable; voiding later");
                }
                Err(e) => {
                    tracing::error!(error = %e, event = %charge.id, payer = %charge.payer, "could not void an unserved charge within an hour: check the ledger");
                    return;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    });
}

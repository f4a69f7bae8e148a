//! x402 `upto` payments in the engine: a metered route paid with a Permit2 permit for a
//! maximum, settled at the measured cost.
//!
//! Admission: the payload is checked locally ([`crate::x402::upto::verify`]), the payer's
//! rate limit applied, and `(from, nonce)` held single use in the store exactly as for
//! `exact` (issuer [`crate::x402::upto::STORE_ISSUER`]). In `before` mode the facilitator
//! then verifies the permit for its maximum (`POST /verify`); a refusal or no usable answer
//! refuses the request, unforwarded, and releases the hold.
//!
//! Settlement, once the response is metered (for a streamed body, after its end): an answer
//! of 400 or more, none, or an answer to HEAD releases the hold; a measured cost of 0 releases it too (nothing
//! to settle); otherwise the cost, capped at the maximum, is settled:
//!
//! - `before`: `POST /settle` asking exactly the cost. Confirmed: one usage event for it.
//!   Not confirmed while the response is still held back (a `json:` meter, settled before
//!   answering): the response is withheld (402 / 503) and the hold released. Not confirmed
//!   after the body was delivered (a stream): the settlement goes to the `deferred` queue,
//!   whose settler retries it (a refusal there blocks the payer until resolved).
//! - `deferred`: captured and queued in one atomic step, settled in the background.
//!
//! A `before` settlement, once asked, runs in its own task with its capture: a client that
//! goes away meanwhile never leaves a transfer on chain out of the ledger.

use super::*;
use crate::paywall::BodyEnd;
use crate::price::Price;
use crate::x402::upto::{self, UptoOffer};

/// The `upto` part of an admission, until it is settled.
#[derive(Debug)]
pub(in crate::paywall) struct UptoPending {
    /// The route's offers, mode and facilitator.
    route: Arc<ExactRoute>,
    /// Which `upto` offer the payload pays.
    offer: usize,
    /// The payload as sent (forwarded to the facilitator unchanged).
    payload: Value,
}

impl UptoPending {
    fn offer(&self) -> Result<&UptoOffer, Refusal> {
        self.route
            .upto
            .get(self.offer)
            .ok_or_else(Refusal::internal)
    }

    /// The most this payment can be charged (atomic units).
    pub(in crate::paywall) fn max_minor(&self) -> u64 {
        self.offer().map_or(0, |o| o.max)
    }
}

impl Paywall {
    /// The x402 `upto` arm of admission.
    pub(super) async fn admit_upto(
        &self,
        route: &Arc<PricedRoute>,
        payload: Value,
        admission: impl FnOnce(Payment, Secured) -> Admission,
    ) -> Result<Option<Admission>, Refusal> {
        let Some(x) = route
            .x402
            .clone()
            .filter(|x| !x.upto.is_empty() && matches!(route.price, Price::Metered(_)))
        else {
            return Err(Refusal::new(
                ErrorCode::SchemeUnsupported,
                "this route takes no x402 upto payment; see accepts",
            ));
        };
        let verified = upto::verify(
            &payload,
            &x.upto,
            self.now_unix(),
            x.valid_before_margin_secs,
        )
        .map_err(|e| Self::x402_invalid(&payload, e))?;
        let offer = x.upto.get(verified.offer).ok_or_else(Refusal::internal)?;
        let authorization = Authorization {
            issuer: upto::STORE_ISSUER,
            payer: format!("{:#x}", verified.from),
            nonce: verified.nonce.to_string(),
            void_after: verified.deadline,
            network: &offer.network,
        };
        let reservation = self.hold_authorization(route, &authorization).await?;
        if x.mode != SettlementMode::Deferred {
            // The facilitator's view (balance, allowance, simulation) of the maximum.
            if let Err(e) = x.facilitator.verify(&payload, &offer.requirements()).await {
                tracing::warn!(error = %e, payer = %authorization.payer, "x402 upto permit not verified by the facilitator; nothing served");
                return Err(self
                    .facilitator_refusal(
                        &reservation,
                        &e,
                        true,
                        &offer.network,
                        &authorization.payer,
                    )
                    .await);
            }
        }
        let payment = authorization.payment(&offer.currency, offer.max, true);
        let pending = UptoPending {
            offer: verified.offer,
            route: x,
            payload,
        };
        Ok(Some(admission(
            payment,
            Secured::Upto(reservation, Box::new(pending)),
        )))
    }
}

impl Admission {
    /// Settle an `upto` admission at its measured cost (see the module docs).
    pub(in crate::paywall) async fn settle_upto(
        &mut self,
        r: Reservation,
        x: UptoPending,
        status: Option<u16>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> Result<Settled, Refusal> {
        let offer = x.offer()?.clone();
        // As for `exact`: an answer of 400 or more, none, or a HEAD is not paid for.
        let head = self.method == http::Method::HEAD.as_str();
        let Some(status) = status.filter(|s| *s < 400 && !head) else {
            self.paywall.release(&r).await;
            return Ok(Settled::default());
        };
        let (units, unit_prices, cost) = self.measure_capped(offer.max, usage);
        let mode = x.route.mode;
        if cost == 0 {
            // Nothing to settle: the permit was never used on chain, so it may be used again.
            self.paywall.release(&r).await;
            return Ok(self.x402_response(
                (&offer.network, &offer.currency),
                None,
                (0, None),
                (mode.as_str(), None),
            ));
        }
        let time_ms = self.paywall.0.settings.clock.now_ms();
        let event = UsageEvent {
            reservation: r.id.clone(),
            ..self.usage_event(time_ms, units.clone(), unit_prices, cost, status)
        };
        let requirements = offer.requirements_for(cost);
        if mode == SettlementMode::Deferred {
            let job = json!({"payload": x.payload, "requirements": requirements});
            return self
                .queue_settlement(&r, &event, &job, (&offer.network, &offer.currency))
                .await;
        }
        let settled = self
            .settle_in_own_task(
                &x.route,
                &r,
                event.clone(),
                (x.payload.clone(), requirements.clone()),
                None,
            )
            .await?;
        let (on_chain, event_id) = match settled {
            Ok(done) => done,
            Err(e) if self.delivered => {
                // The body is already with the client: the settler retries (and a refusal
                // blocks the payer); the ledger has the charge from now on.
                tracing::error!(error = %e, payer = %self.payment.payer, cost, "x402 upto settlement after a delivered stream failed; queued for the settler");
                let job = json!({"payload": x.payload, "requirements": requirements});
                return self
                    .queue_settlement(&r, &event, &job, (&offer.network, &offer.currency))
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, payer = %self.payment.payer, cost, "x402 upto settlement failed; response withheld");
                return Err(self
                    .paywall
                    .facilitator_refusal(&r, &e, false, &offer.network, &self.payment.payer)
                    .await);
            }
        };
        let m = crate::metrics::global();
        m.revenue_minor
            .with_label_values(&[self.route.id.as_str(), offer.currency.code()])
            .inc_by(cost);
        for (unit, n) in &units {
            m.usage_units
                .with_label_values(&[self.route.id.as_str(), unit.as_str()])
                .inc_by(*n);
        }
        Ok(self.x402_response(
            (&offer.network, &offer.currency),
            Some(&on_chain),
            (cost, event_id.as_deref()),
            (mode.as_str(), None),
        ))
    }
}

//! x402 `exact` payments in the engine (`upto`, on metered routes, is in `upto.rs`).
//!
//! Admission: the payload is checked locally ([`crate::x402::verify`]: offer, EIP-712
//! signature, recipient, value, window), the payer's rate limit applied, then `(from, nonce)`
//! is held single-use in the store with the same atomic state machine as a receipt (its
//! `issuer` is [`crate::x402::STORE_ISSUER`], its id the nonce, its payer bucket the payer's address), so a
//! second use is refused on any gateway sharing the store. Then, by the route's mode:
//!
//! - `before`: the facilitator settles the transfer; only a confirmed transaction lets the
//!   request through. Timeouts, 5xx, HTML, truncated JSON, `settlement_pending` and refusals
//!   all refuse the request (the hold is released: the chain itself refuses a second
//!   settlement of one authorization, so a retry can never pay twice). Once on chain the
//!   payment is final: the usage event is recorded whatever the upstream answers (its status
//!   is in the event), also if the client goes away.
//! - `after`: the facilitator verifies the payment (balance, simulation) before forwarding;
//!   only a 2xx answer to a non-HEAD request is settled, and that response is released only
//!   once the transfer is confirmed (otherwise it is withheld: 402 / 503). 3xx, 4xx, 5xx,
//!   HEAD, or no answer: nothing is settled and the hold is released.
//!
//! Every settled payment appends exactly one usage event (the capture of the hold).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use serde_json::{json, Value};

use super::reconcile::retry_unknown;
use super::wire::PaymentResponse;
use super::{
    b64_header, Admission, Payment, Paywall, Refusal, Secured, Settled, Standing, X402Failure,
};
use crate::error::ErrorCode;
use crate::money::{Currency, Money};
use crate::price::PricedRoute;
use crate::store::{AuthorizeOutcome, Reservation, SettleOutcome, Settlement, UsageEvent};
use crate::x402::upto::UPTO_SCHEME;
use crate::x402::{
    self, ExactError, ExactRoute, FacilitatorError, OnChain, Reason, SettlementMode,
};

mod upto;
pub(super) use self::upto::UptoPending;

/// How long past `validBefore` a used authorization is remembered (seconds); after that the
/// window check refuses it anyway.
const SPENT_SLACK_SECS: i64 = 60;

/// The x402 part of an admission, until it is settled.
#[derive(Debug)]
pub(super) struct X402Pending {
    /// The route's offers, mode and facilitator.
    route: Arc<ExactRoute>,
    /// Which offer the payload pays.
    offer: usize,
    /// The payload as sent (forwarded to the facilitator unchanged).
    payload: Value,
    /// Set once the transfer is on chain (`before`, at admission).
    on_chain: Option<OnChain>,
}

/// A locally verified x402 authorization, of either scheme: what is held single use.
#[derive(Debug)]
struct Authorization<'a> {
    /// The scheme's store issuer ([`x402::STORE_ISSUER`], [`crate::x402::upto::STORE_ISSUER`]).
    issuer: &'static str,
    /// The payer's address (`0x`, lower case).
    payer: String,
    /// The nonce, as the store keys it.
    nonce: String,
    /// Unix seconds after which the chain voids it (`validBefore`, an `upto` `deadline`).
    void_after: u64,
    /// The network of the offer it pays.
    network: &'a str,
}

impl Authorization<'_> {
    /// A refusal of this authorization, with its x402 reason.
    fn refusal(&self, code: ErrorCode, reason: &str, detail: &str) -> Refusal {
        Paywall::x402_refusal(code, reason, detail, self.network, Some(&self.payer))
    }

    /// The payment it makes: `minor` atomic units of `currency` (`metered`: the most it
    /// can be charged, settled at the measured cost).
    fn payment(&self, currency: &Currency, minor: u64, metered: bool) -> Payment {
        Payment {
            payer: self.payer.clone(),
            charge: Money {
                amount: currency.from_minor(minor),
                currency: currency.clone(),
            },
            credential: format!("x402:{}:{}:{}", self.network, self.payer, self.nonce),
            metered,
        }
    }
}

/// The refusal code and reason for a facilitator failure.
fn facilitator_failure(e: &FacilitatorError, verifying: bool) -> (ErrorCode, String) {
    match e {
        FacilitatorError::Refused { reason } => (ErrorCode::X402SettlementFailed, reason.clone()),
        FacilitatorError::Pending => (
            ErrorCode::FacilitatorUnavailable,
            Reason::SettlementPending.as_str().to_owned(),
        ),
        FacilitatorError::Unavailable(_) => (
            ErrorCode::FacilitatorUnavailable,
            if verifying {
                "unexpected_verify_error".to_owned()
            } else {
                Reason::UnexpectedSettleError.as_str().to_owned()
            },
        ),
    }
}

fn facilitator_detail(code: ErrorCode) -> &'static str {
    if code == ErrorCode::FacilitatorUnavailable {
        "the payment could not be settled now; nothing was served (retry; the chain never settles one authorization twice)"
    } else {
        "the facilitator refused the payment; nothing was served (see errorReason)"
    }
}

impl Paywall {
    /// A refusal for an x402 payment, with its x402 reason.
    pub(super) fn x402_refusal(
        code: ErrorCode,
        reason: &str,
        detail: &str,
        network: &str,
        payer: Option<&str>,
    ) -> Refusal {
        Refusal::new(code, detail.to_owned()).standing(Standing::X402(X402Failure {
            reason: reason.to_owned(),
            network: network.to_owned(),
            payer: payer.map(str::to_owned),
        }))
    }

    /// The x402 `exact` arm of admission.
    pub(super) async fn admit_x402(
        &self,
        route: &Arc<PricedRoute>,
        payload: Value,
        admission: impl FnOnce(Payment, Secured) -> Admission,
    ) -> Result<Option<Admission>, Refusal> {
        if payload.pointer("/accepted/scheme").and_then(Value::as_str) == Some(UPTO_SCHEME) {
            return self.admit_upto(route, payload, admission).await;
        }
        let Some(x) = route.x402.clone().filter(|x| !x.offers.is_empty()) else {
            return Err(Refusal::new(
                ErrorCode::SchemeUnsupported,
                "this route takes no x402 exact payment; see accepts",
            ));
        };
        let verified = x402::verify(
            &payload,
            &x.offers,
            self.now_unix(),
            x.valid_before_margin_secs,
        )
        .map_err(|e| Self::x402_invalid(&payload, e))?;
        let offer = x.offers.get(verified.offer).ok_or_else(Refusal::internal)?;
        let authorization = Authorization {
            issuer: x402::STORE_ISSUER,
            payer: format!("{:#x}", verified.from),
            nonce: format!("{:#x}", verified.nonce),
            void_after: verified.valid_before,
            network: &offer.network,
        };
        let reservation = self.hold_authorization(route, &authorization).await?;
        let requirements = offer.requirements();
        let settled = match x.mode {
            SettlementMode::Before => x
                .facilitator
                .settle(&payload, &requirements)
                .await
                .map(Some)
                .map_err(|e| (e, false)),
            SettlementMode::After => x
                .facilitator
                .verify(&payload, &requirements)
                .await
                .map(|()| None)
                .map_err(|e| (e, true)),
            // Verified locally; settled in the background once served.
            SettlementMode::Deferred => Ok(None),
        };
        let on_chain = match settled {
            Ok(c) => c,
            Err((e, verifying)) => {
                tracing::warn!(error = %e, payer = %authorization.payer, mode = x.mode.as_str(), "x402 facilitator did not accept the payment; nothing served");
                return Err(self
                    .facilitator_refusal(
                        &reservation,
                        &e,
                        verifying,
                        &offer.network,
                        &authorization.payer,
                    )
                    .await);
            }
        };
        let payment = authorization.payment(&offer.currency, offer.amount, false);
        let pending = X402Pending {
            offer: verified.offer,
            route: x,
            payload,
            on_chain,
        };
        Ok(Some(admission(
            payment,
            Secured::X402(reservation, Box::new(pending)),
        )))
    }

    /// Now, in unix seconds (the clock of the local checks).
    fn now_unix(&self) -> u64 {
        u64::try_from(self.0.settings.clock.now_secs()).unwrap_or(0)
    }

    /// The refusal of a payload that failed its scheme's local checks.
    fn x402_invalid(payload: &Value, e: ExactError) -> Refusal {
        let network = payload
            .pointer("/accepted/network")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let payer = e.payer.map(|a| format!("{a:#x}"));
        Self::x402_refusal(
            ErrorCode::X402PaymentInvalid,
            e.reason.as_str(),
            &e.detail,
            network,
            payer.as_deref(),
        )
    }

    /// Apply the payer's limits, then hold `authorization` single use: its reservation.
    async fn hold_authorization(
        &self,
        route: &PricedRoute,
        authorization: &Authorization<'_>,
    ) -> Result<Reservation, Refusal> {
        self.check_limits(route, &authorization.payer, authorization.issuer)
            .await?;
        let reservation = Reservation {
            id: uuid::Uuid::new_v4().to_string(),
            payer: authorization.payer.clone(),
            issuer: authorization.issuer.to_owned(),
            receipt_id: authorization.nonce.clone(),
            hold: self.hold_time(route),
            spent_until_ms: i64::try_from(authorization.void_after)
                .unwrap_or(i64::MAX / 2000)
                .saturating_add(SPENT_SLACK_SECS)
                .saturating_mul(1000),
            mandate: None,
        };
        let refuse = |code: ErrorCode, reason: &str, detail: &str| {
            authorization.refusal(code, reason, detail)
        };
        self.authorize_single_use(&reservation, &refuse).await?;
        Ok(reservation)
    }

    /// The facilitator did not accept a payment (`verifying`: at `/verify`, else at
    /// `/settle`): the hold is released, and the refusal says why.
    pub(super) async fn facilitator_refusal(
        &self,
        r: &Reservation,
        e: &FacilitatorError,
        verifying: bool,
        network: &str,
        payer: &str,
    ) -> Refusal {
        self.release(r).await;
        let (code, reason) = facilitator_failure(e, verifying);
        Self::x402_refusal(
            code,
            &reason,
            facilitator_detail(code),
            network,
            Some(payer),
        )
    }

    /// Hold an authorization single use in the store (one atomic step, shared by every gateway
    /// on the store): replayed, in use, blocked payer or store down refuse the request.
    pub(super) async fn authorize_single_use(
        &self,
        reservation: &Reservation,
        refuse: &(dyn Fn(ErrorCode, &str, &str) -> Refusal + Sync),
    ) -> Result<(), Refusal> {
        match crate::metrics::timed("authorize", self.0.store.authorize(reservation)).await {
            Ok(AuthorizeOutcome::Reserved) => Ok(()),
            Ok(AuthorizeOutcome::Replayed) => Err(refuse(
                ErrorCode::X402AuthorizationReplayed,
                Reason::TransactionState.as_str(),
                "this authorization (from, nonce) was used already",
            )),
            Ok(AuthorizeOutcome::InUse) => Err(refuse(
                ErrorCode::X402AuthorizationInUse,
                Reason::TransactionState.as_str(),
                "another request is using this authorization; retry when it finishes",
            )),
            Ok(AuthorizeOutcome::PayerBlocked) => Err(Refusal::plain(
                ErrorCode::PayerBlocked,
                "this payer is blocked by the provider",
            )),
            // Only receipts can be revoked, and x402 payments carry no mandate.
            Ok(
                AuthorizeOutcome::Revoked
                | AuthorizeOutcome::MandateRevoked
                | AuthorizeOutcome::MandateExceeded { .. },
            ) => Err(Refusal::plain(
                ErrorCode::ReceiptRevoked,
                "the provider revoked this authorization",
            )),
            Err(e) => Err(Refusal::store_down(e, "authorize x402")),
        }
    }

    pub(super) async fn release(&self, r: &Reservation) {
        let released =
            crate::metrics::timed("release", self.0.store.settle(r, &Settlement::Release)).await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "release failed; hold will expire");
        }
    }
}

impl Admission {
    /// The usage event of a settled x402 payment.
    fn x402_event(&self, x: &X402Pending, r: &Reservation, status: u16) -> UsageEvent {
        let (amount_minor, currency, scale) = x.route.offers.get(x.offer).map_or_else(
            || (0, String::new(), 0),
            |o| (o.amount, o.currency.code().to_owned(), o.currency.scale()),
        );
        UsageEvent {
            id: String::new(),
            time_ms: self.paywall.0.settings.clock.now_ms(),
            payer: self.payment.payer.clone(),
            route: self.route.id.clone(),
            method: self.method.clone(),
            units: BTreeMap::from([("request".to_owned(), 1)]),
            unit_prices: BTreeMap::new(),
            currency,
            scale,
            amount_minor,
            uncharged_minor: 0,
            credential: self.payment.credential.clone(),
            reservation: r.id.clone(),
            upstream_status: status,
            voids: None,
        }
    }

    /// Settle an x402 admission (see the module docs for the rules).
    pub(super) async fn settle_x402(
        &self,
        r: Reservation,
        x: X402Pending,
        status: Option<u16>,
    ) -> Result<Settled, Refusal> {
        let Some(offer) = x.route.offers.get(x.offer) else {
            return Err(Refusal::internal());
        };
        if x.on_chain.is_none() {
            let served = status.is_some_and(|s| (200..300).contains(&s))
                && self.method != Method::HEAD.as_str();
            if !served {
                self.paywall.release(&r).await;
                return Ok(Settled::default());
            }
            if x.route.mode == SettlementMode::Deferred {
                return self.settle_deferred(&x, &r, status.unwrap_or(0)).await;
            }
        }
        let event = self.x402_event(&x, &r, status.unwrap_or(0));
        let settled = self
            .settle_in_own_task(
                &x.route,
                &r,
                event,
                (x.payload.clone(), offer.requirements()),
                x.on_chain.clone(),
            )
            .await?;
        let (on_chain, event_id) = match settled {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, payer = %self.payment.payer, "x402 settlement after serving failed; response withheld");
                return Err(self
                    .paywall
                    .facilitator_refusal(&r, &e, false, &offer.network, &self.payment.payer)
                    .await);
            }
        };
        crate::metrics::global()
            .revenue_minor
            .with_label_values(&[self.route.id.as_str(), offer.currency.code()])
            .inc_by(offer.amount);
        Ok(self.x402_response(
            (&offer.network, &offer.currency),
            Some(&on_chain),
            (offer.amount, event_id.as_deref()),
            (x.route.mode.as_str(), None),
        ))
    }

    /// [`settle_and_record`] in a task of its own: once asked, the settlement and its record
    /// run to the end even if the client goes away (a transfer on chain is never left out of
    /// the ledger). `Err` only if the task itself failed.
    pub(super) async fn settle_in_own_task(
        &self,
        route: &ExactRoute,
        r: &Reservation,
        event: UsageEvent,
        (payload, requirements): (Value, Value),
        on_chain: Option<OnChain>,
    ) -> Result<Result<(OnChain, Option<String>), FacilitatorError>, Refusal> {
        let task = tokio::spawn(settle_and_record(
            (route.facilitator.clone(), self.paywall.0.store.clone()),
            self.paywall.0.settings.settle_retry,
            (r.clone(), event),
            (payload, requirements),
            on_chain,
        ));
        task.await.map_err(|e| {
            tracing::error!(error = %e, "x402 settlement task failed");
            Refusal::internal()
        })
    }

    /// The `PAYMENT-RESPONSE` of an x402 payment of `amount` atomic units of `currency`:
    /// settled (`on_chain`: on the network the facilitator names, else `network`), queued
    /// (no transaction yet, the `settlement_id` named) or, an `upto` cost of 0, released.
    pub(super) fn x402_response(
        &self,
        (network, currency): (&str, &Currency),
        on_chain: Option<&OnChain>,
        (amount, event_id): (u64, Option<&str>),
        (settlement, settlement_id): (&str, Option<&str>),
    ) -> Settled {
        let network = on_chain
            .map(|o| o.network.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(network);
        let body = PaymentResponse {
            success: true,
            transaction: on_chain.map_or("", |o| o.transaction.as_str()),
            network,
            payer: &self.payment.payer,
            amount: currency.from_minor(amount).to_string(),
            amount_atomic: amount.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            event_id,
            receipt: None,
            balance: None,
            access_token: None,
            settlement: Some(settlement),
            settlement_id,
        };
        Settled {
            payment_response: b64_header(&body),
            payment_receipt: None,
        }
    }

    /// `deferred`: capture and queue the settlement in one atomic step; the response is
    /// released only once that is recorded (otherwise it would be served unpaid).
    async fn settle_deferred(
        &self,
        x: &X402Pending,
        r: &Reservation,
        status: u16,
    ) -> Result<Settled, Refusal> {
        let Some(offer) = x.route.offers.get(x.offer) else {
            return Err(Refusal::internal());
        };
        let event = self.x402_event(x, r, status);
        let job = json!({"payload": x.payload, "requirements": offer.requirements()});
        self.queue_settlement(r, &event, &job, (&offer.network, &offer.currency))
            .await
    }

    /// Capture `event` and queue `job` (`{payload, requirements}`, sent to `/settle` as is)
    /// for the background settler, in one atomic step; the `PAYMENT-RESPONSE` of a queued
    /// payment (`settlement: "deferred"`).
    pub(super) async fn queue_settlement(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        job: &Value,
        (network, currency): (&str, &Currency),
    ) -> Result<Settled, Refusal> {
        let job = job.to_string();
        let store = self.paywall.0.store.clone();
        let outcome = retry_unknown(self.paywall.0.settings.settle_retry, || {
            crate::metrics::timed("capture_deferred", store.capture_deferred(r, event, &job))
        })
        .await;
        let event_id = match outcome {
            Ok(
                SettleOutcome::Captured { event_id } | SettleOutcome::AlreadyCaptured { event_id },
            ) => event_id,
            Ok(other) => {
                tracing::error!(?other, payer = %self.payment.payer, "x402 deferred capture refused: the hold was lost");
                return Err(Refusal::plain(
                    ErrorCode::X402AuthorizationInUse,
                    "the authorization's hold expired and it was taken by another request",
                ));
            }
            Err(e) => {
                // Unknown outcome: if it landed, the settler will settle a withheld response
                // (logged for the operator); if not, the hold expires. Never served unpaid.
                tracing::error!(error = %e, payer = %self.payment.payer, reservation = %r.id, "x402 deferred capture not recorded; response withheld");
                return Err(Refusal::plain(
                    ErrorCode::StoreUnavailable,
                    "the payment could not be recorded; retry later",
                ));
            }
        };
        let amount = event.amount_minor;
        crate::metrics::global()
            .revenue_minor
            .with_label_values(&[self.route.id.as_str(), currency.code()])
            .inc_by(amount);
        Ok(self.x402_response(
            (network, currency),
            None,
            (amount, Some(&event_id)),
            ("deferred", Some(&event_id)),
        ))
    }

    /// Dropped unsettled (client gone, future cancelled): a payment already on chain is
    /// recorded (status 0); otherwise the hold is released.
    pub(super) fn abandon_x402(&self, r: Reservation, x: X402Pending) {
        let settlement = if x.on_chain.is_some() {
            Settlement::Capture(Box::new(self.x402_event(&x, &r, 0)))
        } else {
            Settlement::Release
        };
        let store = self.paywall.0.store.clone();
        let started = Instant::now();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.settle(&r, &settlement).await {
                    tracing::error!(error = %e, waited_ms = started.elapsed().as_millis() as u64, "x402 settlement after cancel failed");
                }
            });
        }
    }
}

/// The x402 `errorReason` a refusal carries (tests).
#[cfg(test)]
fn reason_of(r: &Refusal) -> Option<String> {
    r.x402_failure().map(|x| x.reason.clone())
}

#[cfg(test)]
mod tests;

/// Settle `requirements` through the facilitator (unless already `on_chain`, as `before`
/// settles ahead of forwarding) and, once on chain, capture `event` (the payer has paid: a
/// capture that cannot be recorded is logged with the transaction for reconciliation, and
/// the response is still served). Run in a task of its own, so a client leaving cannot cut
/// it short.
async fn settle_and_record(
    (facilitator, store): (
        Arc<dyn crate::x402::Facilitator>,
        Arc<dyn crate::store::Store>,
    ),
    settle_retry: std::time::Duration,
    (r, event): (Reservation, UsageEvent),
    (payload, requirements): (Value, Value),
    on_chain: Option<OnChain>,
) -> Result<(OnChain, Option<String>), FacilitatorError> {
    let on_chain = match on_chain {
        Some(c) => c,
        None => facilitator.settle(&payload, &requirements).await?,
    };
    let payer = event.payer.clone();
    let capture = Settlement::Capture(Box::new(event));
    let outcome = retry_unknown(settle_retry, || {
        crate::metrics::timed("capture", store.settle(&r, &capture))
    })
    .await;
    let event_id = match outcome {
        Ok(SettleOutcome::Captured { event_id } | SettleOutcome::AlreadyCaptured { event_id }) => {
            Some(event_id)
        }
        Ok(other) => {
            tracing::error!(?other, transaction = %on_chain.transaction, payer = %payer, "x402 capture refused; the transfer is on chain but not in the ledger");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, transaction = %on_chain.transaction, payer = %payer, "x402 capture not recorded; the transfer is on chain but not in the ledger");
            None
        }
    };
    Ok((on_chain, event_id))
}

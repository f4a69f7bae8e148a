//! Admission helpers: balance holds (with plan coverage and overage), receipt reservations,
//! and the spending mandate a payment is made under -- each one store step, refused with the
//! right problem (and, for a 402, fresh payment requirements).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use serde_json::{json, Value};

use super::{Paywall, Placed, Refusal};
use crate::error::ErrorCode;
use crate::mandate::{Mandate, TOLLGATE_MANDATE};
use crate::money::Currency;
use crate::price::PricedRoute;
use crate::receipt::Receipt;
use crate::store::{AuthorizeOutcome, Hold, HoldOutcome, MandateCharge, Reservation};

impl Paywall {
    /// Hold for a call a plan may cover: the store says whether the plan covered it, it is an
    /// overage, or a plain balance hold (no active period).
    pub(super) async fn place_hold_plan(
        &self,
        hold: &mut Hold,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Placed, Refusal> {
        let outcome = crate::metrics::timed("hold", self.0.store.hold(hold))
            .await
            .map_err(|e| Self::store_down(e, "hold"))?;
        match outcome {
            HoldOutcome::Plan { .. } => {
                if let Some(p) = &mut hold.plan {
                    p.covered = true;
                }
                Ok(Placed::Plan)
            }
            HoldOutcome::Overage { balance_minor } => Ok(Placed::Overage(balance_minor)),
            HoldOutcome::PlanExhausted { period_end_ms } => {
                let plan = hold
                    .plan
                    .as_ref()
                    .map(|p| p.plan.clone())
                    .unwrap_or_default();
                let mut res = self.challenge(
                    route,
                    method,
                    uri,
                    headers,
                    ErrorCode::PlanExhausted,
                    &format!("the calls included in plan {plan:?} are used up for this period; renew (see accepts) or wait for the next period"),
                );
                if let Ok(mut body) = serde_json::from_slice::<Value>(res.body()) {
                    body["plan"] =
                        json!({"id": plan, "period_end": period_end_ms.div_euclid(1000)});
                    *res.body_mut() = Bytes::from(body.to_string());
                }
                Err(res)
            }
            other => self
                .hold_outcome(other, hold, route, method, uri, headers)
                .map(Placed::Balance),
        }
    }

    pub(super) async fn place_hold(
        &self,
        hold: &Hold,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<u64, Refusal> {
        let outcome = crate::metrics::timed("hold", self.0.store.hold(hold))
            .await
            .map_err(|e| Self::store_down(e, "hold"))?;
        self.hold_outcome(outcome, hold, route, method, uri, headers)
    }

    #[allow(clippy::result_large_err)]
    pub(super) fn hold_outcome(
        &self,
        outcome: HoldOutcome,
        hold: &Hold,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<u64, Refusal> {
        match outcome {
            HoldOutcome::Plan { .. }
            | HoldOutcome::PlanExhausted { .. }
            | HoldOutcome::Overage { .. } => {
                Err(Self::problem(ErrorCode::Internal, "internal error"))
            }
            HoldOutcome::Held { balance_minor } => Ok(balance_minor),
            HoldOutcome::PayerBlocked => Err(Self::problem(
                ErrorCode::PayerBlocked,
                "this payer is blocked by the provider",
            )),
            HoldOutcome::MandateRevoked => Err(Self::problem(
                ErrorCode::MandateRevoked,
                "the spending mandate was revoked",
            )),
            HoldOutcome::MandateExceeded { room_minor } => {
                let (Some(m), Some(currency)) = (&hold.mandate, route.price.currency()) else {
                    return Err(Self::problem(ErrorCode::Internal, "internal error"));
                };
                let res = self.challenge(
                    route,
                    method,
                    uri,
                    headers,
                    ErrorCode::MandateExceeded,
                    "the spending mandate's budget for this window does not cover this request",
                );
                Err(self.mandate_exceeded(res, m, room_minor, currency))
            }
            HoldOutcome::Insufficient { balance_minor } => {
                let currency = route.price.currency().cloned();
                let have = currency
                    .as_ref()
                    .map(|c| c.from_minor(balance_minor).to_string())
                    .unwrap_or_default();
                let mut res = self.challenge(
                    route,
                    method,
                    uri,
                    headers,
                    ErrorCode::BalanceInsufficient,
                    &format!("the prepaid balance ({have}) does not cover this request; top up (see accepts)"),
                );
                // Tell the agent exactly where it stands (the body already carries the offers).
                if let Ok(mut body) = serde_json::from_slice::<Value>(res.body()) {
                    body["balance"] = have.into();
                    *res.body_mut() = Bytes::from(body.to_string());
                }
                Err(res)
            }
        }
    }

    /// A reservation of one use of `receipt` on `route`.
    pub(super) fn reservation(
        &self,
        receipt: &Receipt,
        route: &PricedRoute,
        mandate: Option<MandateCharge>,
    ) -> Reservation {
        Reservation {
            id: uuid::Uuid::new_v4().to_string(),
            payer: receipt.payer.clone(),
            issuer: receipt.issuer.clone(),
            receipt_id: receipt.id.clone(),
            hold: self.hold_time(route),
            spent_until_ms: self
                .0
                .verifier
                .policy()
                .single_use_until_ms(receipt.expires_at),
            mandate,
        }
    }

    /// The refusal for a receipt the store would not reserve.
    pub(super) fn authorize_refusal(outcome: AuthorizeOutcome) -> (ErrorCode, &'static str) {
        match outcome {
            AuthorizeOutcome::Reserved => (ErrorCode::Internal, "internal error"),
            AuthorizeOutcome::Replayed => {
                (ErrorCode::ReceiptReplayed, "this receipt was already spent")
            }
            AuthorizeOutcome::InUse => (
                ErrorCode::ReceiptInUse,
                "another request is using this receipt; retry when it finishes",
            ),
            AuthorizeOutcome::PayerBlocked => (
                ErrorCode::PayerBlocked,
                "this payer is blocked by the provider",
            ),
            AuthorizeOutcome::Revoked => (
                ErrorCode::ReceiptRevoked,
                "the provider revoked this receipt",
            ),
            AuthorizeOutcome::MandateRevoked => (
                ErrorCode::MandateRevoked,
                "the spending mandate was revoked",
            ),
            AuthorizeOutcome::MandateExceeded { .. } => (
                ErrorCode::MandateExceeded,
                "the spending mandate's budget for this window does not cover this payment",
            ),
        }
    }

    pub(super) async fn reserve_receipt(
        &self,
        receipt: &Receipt,
        route: &PricedRoute,
        mandate: Option<MandateCharge>,
    ) -> Result<Reservation, (ErrorCode, String, Option<(MandateCharge, u64)>)> {
        let reservation = self.reservation(receipt, route, mandate);
        let outcome = crate::metrics::timed("authorize", self.0.store.authorize(&reservation))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "store unavailable during authorize; failing closed");
                (
                    ErrorCode::StoreUnavailable,
                    "payments are temporarily unavailable; retry later (nothing was charged)"
                        .to_owned(),
                    None,
                )
            })?;
        match outcome {
            AuthorizeOutcome::Reserved => Ok(reservation),
            AuthorizeOutcome::MandateExceeded { room_minor } => {
                let (code, detail) = Self::authorize_refusal(outcome);
                Err((
                    code,
                    detail.into(),
                    reservation.mandate.map(|m| (m, room_minor)),
                ))
            }
            other => {
                let (code, detail) = Self::authorize_refusal(other);
                Err((code, detail.into(), None))
            }
        }
    }

    /// The mandate a payment is made under: one bound to the access token, else the receipt's
    /// `mandate` claim (the mandate JWT), else the `Tollgate-Mandate` header; verified.
    pub(super) async fn mandate_for(
        &self,
        claim: Option<&str>,
        bound: Option<Mandate>,
        headers: &HeaderMap,
    ) -> Result<Option<Mandate>, (ErrorCode, String)> {
        if bound.is_some() {
            return Ok(bound);
        }
        let jwt = match claim {
            Some(c) if c.contains('.') => Some(c),
            Some(_) => {
                return Err((
                    ErrorCode::MandateInvalid,
                    "the receipt's mandate claim must carry the mandate JWT".into(),
                ))
            }
            None => match headers.get(TOLLGATE_MANDATE) {
                Some(v) => Some(v.to_str().map_err(|_| {
                    (
                        ErrorCode::MandateInvalid,
                        "the Tollgate-Mandate header is not a JWT".to_owned(),
                    )
                })?),
                None => None,
            },
        };
        match jwt {
            None => Ok(None),
            Some(t) => Mandate::verify(&self.0.verifier, t.trim())
                .await
                .map(Some)
                .map_err(|e| (e.code, e.detail)),
        }
    }

    /// What a payment of `amount_minor` counts against its mandate, and the mandate's
    /// per-payment maximum (caps a metered charge).
    pub(super) fn mandate_charge(
        &self,
        mandate: Option<&Mandate>,
        payer: &str,
        route: &PricedRoute,
        currency: &Currency,
        amount_minor: u64,
    ) -> Result<(Option<MandateCharge>, Option<u64>), (ErrorCode, String)> {
        let Some(m) = mandate else {
            return Ok((None, None));
        };
        let charge = m.charge(
            payer,
            route.group_name(),
            currency,
            amount_minor,
            self.0.clock.now_ms(),
        )?;
        let max = m.max_per_payment.and_then(|a| currency.to_minor(a).ok());
        Ok((Some(charge), max))
    }

    /// Add the mandate's standing to a `mandate_exceeded` refusal: room left, budget, when
    /// the window resets (`Retry-After` too).
    pub(super) fn mandate_exceeded(
        &self,
        mut res: Refusal,
        m: &MandateCharge,
        room_minor: u64,
        currency: &Currency,
    ) -> Refusal {
        let resets_at = m.window_end_ms.div_euclid(1000);
        if let Ok(mut body) = serde_json::from_slice::<Value>(res.body()) {
            body["mandate"] = json!({
                "room_left": currency.from_minor(room_minor).to_string(),
                "budget": currency.from_minor(m.budget_minor).to_string(),
                "currency": currency.code(),
                "requested": currency.from_minor(m.amount_minor).to_string(),
                "window_start": m.window_start_ms.div_euclid(1000),
                "resets_at": resets_at,
            });
            *res.body_mut() = Bytes::from(body.to_string());
        }
        let wait = (resets_at - self.0.clock.now_secs()).max(1);
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

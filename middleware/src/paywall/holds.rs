//! Admission helpers: balance holds (with plan coverage and overage), receipt reservations,
//! and the spending mandate a payment is made under -- each one store step, refused with the
//! right [`Refusal`] (a 402 among them carries fresh payment requirements when rendered).

use http::HeaderMap;

use super::refusal::{MandateStanding, PlanStanding, Standing};
use super::{Paywall, Refusal};
use crate::error::ErrorCode;
use crate::mandate::{Mandate, TOLLGATE_MANDATE};
use crate::money::Currency;
use crate::price::PricedRoute;
use crate::receipt::Receipt;
use crate::store::{AuthorizeOutcome, Hold, HoldOutcome, MandateCharge, Reservation};

/// How a call's hold was placed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Placed {
    /// From the balance at the route's price; the balance left.
    Balance(u64),
    /// Covered by a plan.
    Plan,
    /// The plan's calls are used up: the overage price held; the balance left.
    Overage(u64),
}

impl Paywall {
    /// Until when a spent receipt is remembered (unix ms; [`crate::receipt::ReceiptPolicy::single_use_until_ms`]).
    pub(super) fn single_use_until_ms(&self, receipt: &Receipt) -> i64 {
        self.0
            .verifier
            .policy()
            .single_use_until_ms(receipt.expires_at)
    }

    /// Hold for a call a plan may cover: the store says whether the plan covered it, it is an
    /// overage, or a plain balance hold (no active period).
    pub(super) async fn place_hold_plan(
        &self,
        hold: &mut Hold,
        route: &PricedRoute,
    ) -> Result<Placed, Refusal> {
        let outcome = crate::metrics::timed("hold", self.0.store.hold(hold))
            .await
            .map_err(|e| Refusal::store_down(e, "hold"))?;
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
                let detail = format!("the calls included in plan {plan:?} are used up for this period; renew (see accepts) or wait for the next period");
                Err(
                    Refusal::new(ErrorCode::PlanExhausted, detail).standing(Standing::Plan(
                        PlanStanding {
                            id: plan,
                            period_end: period_end_ms.div_euclid(1000),
                        },
                    )),
                )
            }
            other => self.hold_outcome(other, hold, route).map(Placed::Balance),
        }
    }

    pub(super) async fn place_hold(
        &self,
        hold: &Hold,
        route: &PricedRoute,
    ) -> Result<u64, Refusal> {
        let outcome = crate::metrics::timed("hold", self.0.store.hold(hold))
            .await
            .map_err(|e| Refusal::store_down(e, "hold"))?;
        self.hold_outcome(outcome, hold, route)
    }

    pub(super) fn hold_outcome(
        &self,
        outcome: HoldOutcome,
        hold: &Hold,
        route: &PricedRoute,
    ) -> Result<u64, Refusal> {
        match outcome {
            HoldOutcome::Plan { .. }
            | HoldOutcome::PlanExhausted { .. }
            | HoldOutcome::Overage { .. } => Err(Refusal::internal()),
            HoldOutcome::Held { balance_minor } => Ok(balance_minor),
            HoldOutcome::PayerBlocked => Err(Refusal::plain(
                ErrorCode::PayerBlocked,
                "this payer is blocked by the provider",
            )),
            HoldOutcome::MandateRevoked => Err(Refusal::plain(
                ErrorCode::MandateRevoked,
                "the spending mandate was revoked",
            )),
            HoldOutcome::MandateExceeded { room_minor } => {
                let (Some(m), Some(currency)) = (&hold.mandate, route.price.currency()) else {
                    return Err(Refusal::internal());
                };
                let r = Refusal::new(
                    ErrorCode::MandateExceeded,
                    "the spending mandate's budget for this window does not cover this request",
                );
                Err(self.mandate_exceeded(r, m, room_minor, currency))
            }
            HoldOutcome::Insufficient { balance_minor } => {
                let have = route
                    .price
                    .currency()
                    .map(|c| c.from_minor(balance_minor).to_string())
                    .unwrap_or_default();
                // Tell the agent exactly where it stands (the body also carries the offers).
                let detail = format!("the prepaid balance ({have}) does not cover this request; top up (see accepts)");
                Err(Refusal::new(ErrorCode::BalanceInsufficient, detail)
                    .standing(Standing::Balance(have)))
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
            spent_until_ms: self.single_use_until_ms(receipt),
            mandate,
        }
    }

    /// The refusal for a receipt the store would not reserve.
    pub(super) fn authorize_refusal(outcome: AuthorizeOutcome) -> Refusal {
        let (code, detail) = match outcome {
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
        };
        Refusal::new(code, detail)
    }

    pub(super) async fn reserve_receipt(
        &self,
        receipt: &Receipt,
        route: &PricedRoute,
        mandate: Option<MandateCharge>,
    ) -> Result<Reservation, Refusal> {
        let reservation = self.reservation(receipt, route, mandate);
        let outcome = crate::metrics::timed("authorize", self.0.store.authorize(&reservation))
            .await
            .map_err(|e| Refusal::store_down(e, "authorize"))?;
        match outcome {
            AuthorizeOutcome::Reserved => Ok(reservation),
            AuthorizeOutcome::MandateExceeded { room_minor } => {
                let r = Self::authorize_refusal(outcome);
                match (&reservation.mandate, route.price.currency()) {
                    (Some(m), Some(currency)) => {
                        Err(self.mandate_exceeded(r, m, room_minor, currency))
                    }
                    _ => Err(r),
                }
            }
            other => Err(Self::authorize_refusal(other)),
        }
    }

    /// The mandate a payment is made under: one bound to the access token, else the receipt's
    /// `mandate` claim (the mandate JWT), else the `Tollgate-Mandate` header; verified.
    pub(super) async fn mandate_for(
        &self,
        claim: Option<&str>,
        bound: Option<Mandate>,
        headers: &HeaderMap,
    ) -> Result<Option<Mandate>, Refusal> {
        if bound.is_some() {
            return Ok(bound);
        }
        let jwt = match claim {
            Some(c) if c.contains('.') => Some(c),
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::MandateInvalid,
                    "the receipt's mandate claim must carry the mandate JWT",
                ))
            }
            None => match headers.get(TOLLGATE_MANDATE) {
                Some(v) => Some(v.to_str().map_err(|_| {
                    Refusal::new(
                        ErrorCode::MandateInvalid,
                        "the Tollgate-Mandate header is not a JWT",
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
                .map_err(|e| Refusal::new(e.code, e.detail)),
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
    ) -> Result<(Option<MandateCharge>, Option<u64>), Refusal> {
        let Some(m) = mandate else {
            return Ok((None, None));
        };
        let charge = m
            .charge(
                payer,
                route.group_name(),
                currency,
                amount_minor,
                self.0.settings.clock.now_ms(),
            )
            .map_err(|(c, d)| Refusal::new(c, d))?;
        let max = m.max_per_payment.and_then(|a| currency.to_minor(a).ok());
        Ok((Some(charge), max))
    }

    /// Add the mandate's standing to a `mandate_exceeded` refusal: room left, budget, when
    /// the window resets (`Retry-After` too).
    pub(super) fn mandate_exceeded(
        &self,
        r: Refusal,
        m: &MandateCharge,
        room_minor: u64,
        currency: &Currency,
    ) -> Refusal {
        let resets_at = m.window_end_ms.div_euclid(1000);
        let wait = (resets_at - self.0.settings.clock.now_secs()).max(1);
        r.standing(Standing::Mandate(MandateStanding {
            room_left: currency.from_minor(room_minor).to_string(),
            budget: currency.from_minor(m.budget_minor).to_string(),
            currency: currency.code().to_owned(),
            requested: currency.from_minor(m.amount_minor).to_string(),
            window_start: m.window_start_ms.div_euclid(1000),
            resets_at,
        }))
        .retry_after(u64::try_from(wait).unwrap_or(1))
    }
}

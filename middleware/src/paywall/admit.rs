//! The admission phases: find the credential, verify it, authorize it in one store step
//! (receipt hold, balance hold, plan coverage, mandate room, rate limit, idempotency claim).

use super::holds::Placed;
use super::*;
use crate::store::ChargeFrom;

impl Paywall {
    pub(super) fn hold_time(&self, route: &PricedRoute) -> Duration {
        route.timeout.unwrap_or(Duration::from_secs(60)) + self.0.settings.hold_margin
    }

    /// Phases 1-3 for a priced route: find the credential, verify it, authorize it. Free routes
    /// return `Ok(None)`.
    pub async fn admit(
        &self,
        route: &Arc<PricedRoute>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Admission>, Refusal> {
        let Some((currency, due)) = Self::hold_amount(route) else {
            return Ok(None);
        };
        // Parsed once: the engine and the metrics both use it.
        let credential = credential::extract(headers);
        let kind = match &credential {
            Ok(Some(Credential::AccessToken { .. })) => "token",
            Ok(Some(Credential::Receipt { .. })) => "receipt",
            Ok(Some(Credential::X402(_))) => "x402",
            _ => "none",
        };
        // A claimed Idempotency-Key comes back here: on a refusal after the claim it is
        // forgotten before answering (nothing was charged), so a retry is never told "in use".
        let mut claim = None;
        let mut result = self
            .admit_inner(
                route,
                (method, uri, headers),
                (currency, due),
                credential,
                &mut claim,
            )
            .await;
        match (&mut result, claim) {
            (Ok(Some(a)), c) => a.idempotency = c,
            (_, Some(c)) => c.forget().await,
            (_, None) => {}
        }
        let m = crate::metrics::global();
        match &result {
            Ok(Some(_)) => {
                m.credentials.with_label_values(&[kind, "accepted"]).inc();
                m.holds_in_flight.inc();
            }
            Ok(None) => {}
            Err(r) => {
                m.credentials
                    .with_label_values(&[kind, r.code.as_str()])
                    .inc();
                crate::traffic::global().record_refusal(
                    self.0.settings.clock.now_ms(),
                    &route.id,
                    r.code,
                    r.status().as_u16(),
                );
            }
        }
        result
    }

    pub(super) async fn admit_inner(
        &self,
        route: &Arc<PricedRoute>,
        (method, uri, headers): (&Method, &Uri, &HeaderMap),
        (currency, due): (&Currency, Amount),
        credential: Result<Option<Credential>, credential::CredentialError>,
        claimed: &mut Option<idempotency::Claim>,
    ) -> Result<Option<Admission>, Refusal> {
        let idempotency_key = idempotency::parse(headers).map_err(|(c, d)| Refusal::new(c, d))?;
        let credential = match credential {
            Ok(Some(c)) => c,
            Ok(None) => {
                let what = match &route.price {
                    crate::price::Price::Metered(_) => "metered; held up front",
                    _ => "per request",
                };
                return Err(Refusal::new(
                    ErrorCode::PaymentRequired,
                    format!(
                        "this route costs {due} {} ({what}): pay with a receipt or an access \
                         token (see accepts) and retry; every price: GET /.well-known/tollgate",
                        currency.code()
                    ),
                ));
            }
            Err(e) => return Err(Refusal::new(e.code, e.detail)),
        };
        let payment_scheme = matches!(
            &credential,
            Credential::Receipt {
                source: credential::CredentialSource::AuthorizationPayment,
                ..
            }
        );
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let admission = |payment: Payment, secured: Secured| Admission {
            paywall: self.clone(),
            payment,
            secured,
            route: route.clone(),
            method: method.as_str().to_owned(),
            started: Instant::now(),
            request_bytes: RequestBodyCounter::default(),
            declared_request_bytes: declared,
            payment_scheme,
            idempotency: None,
            delivered: false,
        };
        match credential {
            Credential::X402(payload) => self.admit_x402(route, *payload, admission).await,
            Credential::AccessToken { token, dpop } => {
                let (claims, _) = self
                    .token_claims(&token, dpop, RequestLine { method, uri }, headers)
                    .await?;
                self.check_limits(route, &claims.sub, "token").await?;
                let keyed = idempotency_key.is_some();
                *claimed = self
                    .claim_idempotency(idempotency_key, &claims.sub, route, method, uri)
                    .await?;
                let amount = due;
                let amount_minor = currency.to_minor(amount).map_err(|_| Refusal::internal())?;
                let mandate = self
                    .mandate_for(None, claims.mandate.clone(), headers)
                    .await?;
                let (charge, max_minor) = self.mandate_charge(
                    mandate.as_ref(),
                    &claims.sub,
                    route,
                    currency,
                    amount_minor,
                )?;
                let plan = self.plan_for(route);
                if let (Some(book), None, None, false, false) = (
                    &self.0.leases,
                    &charge,
                    plan,
                    keyed,
                    route.capture_at_admission,
                ) {
                    return self
                        .admit_lease(book, route, &claims.sub, currency, amount_minor, max_minor)
                        .await
                        .map(|(payment, secured)| Some(admission(payment, secured)));
                }
                if route.capture_at_admission && charge.is_none() && plan.is_none() {
                    if let Price::Fixed(price) = &route.price {
                        let hold = Hold {
                            id: uuid::Uuid::new_v4().to_string(),
                            payer: claims.sub.clone(),
                            currency: currency.code().to_owned(),
                            amount_minor,
                            ttl: self.hold_time(route),
                            mandate: None,
                            plan: None,
                        };
                        let payment = Payment {
                            payer: claims.sub.clone(),
                            charge: price.clone(),
                            credential: format!("token:{}", claims.sub),
                            metered: false,
                        };
                        let charged = self
                            .charge_at_admission(
                                ChargeFrom::Balance(&hold),
                                route,
                                method,
                                &payment,
                            )
                            .await?;
                        return Ok(Some(admission(
                            payment,
                            Secured::Charged(Held::Balance(hold), Box::new(charged)),
                        )));
                    }
                }
                let mut hold = Hold {
                    id: uuid::Uuid::new_v4().to_string(),
                    payer: claims.sub.clone(),
                    currency: currency.code().to_owned(),
                    amount_minor,
                    ttl: self.hold_time(route),
                    mandate: charge,
                    plan: plan.map(|p| PlanUse {
                        plan: p.id.clone(),
                        deny: matches!(p.overage, Overage::Deny),
                        route_price: matches!(p.overage, Overage::RoutePrice),
                        unit: p.unit.clone(),
                        overage_minor: match &p.overage {
                            Overage::Charge(a) => currency.to_minor(*a).unwrap_or(u64::MAX),
                            Overage::Deny | Overage::RoutePrice => 0,
                        },
                        now_ms: self.0.settings.clock.now_ms(),
                        covered: false,
                    }),
                };
                let placed = self.place_hold_plan(&mut hold, route).await?;
                let mut credential = format!("token:{}", claims.sub);
                let mut charge_amount = amount;
                let fixed_charge = match placed {
                    Placed::Balance(_) => None,
                    Placed::Plan => {
                        let id = hold.plan.as_ref().map_or("", |p| p.plan.as_str());
                        credential = format!("plan:{id}:{}", claims.sub);
                        charge_amount = Amount::ZERO;
                        Some(0)
                    }
                    Placed::Overage(_) => {
                        let o = hold.plan.as_ref().map_or(0, |p| p.overage_minor);
                        charge_amount = currency.from_minor(o);
                        Some(o)
                    }
                };
                let balance_minor = match placed {
                    Placed::Balance(b) | Placed::Overage(b) => b,
                    Placed::Plan => 0,
                };
                let payment = Payment {
                    payer: claims.sub.clone(),
                    charge: Money {
                        amount: charge_amount,
                        currency: currency.clone(),
                    },
                    credential,
                    metered: matches!(route.price, Price::Metered(_)),
                };
                Ok(Some(admission(
                    payment,
                    Secured::Balance(BalanceHold {
                        hold,
                        cap_minor: max_minor,
                        balance_minor,
                        new_token: None,
                        fixed_charge,
                    }),
                )))
            }
            Credential::Receipt {
                token, challenge, ..
            } => {
                let due_minor = currency.to_minor(due).map_err(|_| Refusal::internal())?;
                // The Payment scheme's echoed challenge first: a forged, tampered or expired
                // id is refused before any signature work.
                if let Some(id) = &challenge {
                    self.check_challenge(id, route, currency, due_minor, method)?;
                }
                let receipt = self
                    .0
                    .verifier
                    .verify(&token)
                    .await
                    .map_err(|e| Refusal::new(e.code, e.detail))?;
                match receipt.kind {
                    ReceiptKind::Payment => {}
                    ReceiptKind::Topup => {
                        return Err(Refusal::new(
                            ErrorCode::ReceiptKindUnsupported,
                            format!(
                                "top-up receipts go to POST {}/topup",
                                self.0.settings.agent_api
                            ),
                        ))
                    }
                    ReceiptKind::Subscribe => {
                        return Err(Refusal::new(
                            ErrorCode::ReceiptKindUnsupported,
                            format!(
                                "subscribe receipts go to POST {}/subscribe",
                                self.0.settings.agent_api
                            ),
                        ))
                    }
                }
                if let (Some(echoed), Some(bound)) = (&challenge, &receipt.challenge) {
                    if echoed != bound {
                        return Err(Refusal::new(
                            ErrorCode::ChallengeMismatch,
                            "the credential's challenge id is not the one the receipt is bound to",
                        ));
                    }
                }
                let paid_minor = self.check_terms(&receipt, route, currency, due_minor, method)?;
                self.check_limits(route, &receipt.payer, &receipt.issuer)
                    .await?;
                *claimed = self
                    .claim_idempotency(idempotency_key, &receipt.payer, route, method, uri)
                    .await?;
                let mandate = self
                    .mandate_for(receipt.mandate.as_deref(), None, headers)
                    .await?;
                let (charge, max_minor) = self.mandate_charge(
                    mandate.as_ref(),
                    &receipt.payer,
                    route,
                    currency,
                    due_minor,
                )?;
                let credential = format!("receipt:{}:{}", receipt.issuer, receipt.id);
                match &route.price {
                    Price::Fixed(price) if route.capture_at_admission && charge.is_none() => {
                        let reservation = self.reservation(&receipt, route, None);
                        let payment = Payment {
                            payer: receipt.payer,
                            charge: price.clone(),
                            credential,
                            metered: false,
                        };
                        let charged = self
                            .charge_at_admission(
                                ChargeFrom::Receipt(&reservation),
                                route,
                                method,
                                &payment,
                            )
                            .await?;
                        Ok(Some(admission(
                            payment,
                            Secured::Charged(Held::Receipt(reservation), Box::new(charged)),
                        )))
                    }
                    Price::Fixed(price) => {
                        let reservation = self.reserve_receipt(&receipt, route, charge).await?;
                        let payment = Payment {
                            payer: receipt.payer,
                            charge: price.clone(),
                            credential,
                            metered: false,
                        };
                        Ok(Some(admission(payment, Secured::Receipt(reservation))))
                    }
                    Price::Metered(_) => {
                        // The receipt funds the balance (once), then the request is served from it
                        // with the receipt's amount as the cap.
                        self.credit_receipt(&receipt, currency, paid_minor, CreditReason::Payment)
                            .await?;
                        let hold = Hold {
                            id: uuid::Uuid::new_v4().to_string(),
                            payer: receipt.payer.clone(),
                            currency: currency.code().to_owned(),
                            amount_minor: due_minor,
                            ttl: self.hold_time(route),
                            mandate: charge,
                            plan: None,
                        };
                        let balance_minor = self.place_hold(&hold, route).await?;
                        let payment = Payment {
                            payer: receipt.payer.clone(),
                            charge: Money {
                                amount: due,
                                currency: currency.clone(),
                            },
                            credential,
                            metered: true,
                        };
                        let new_token = Some(self.issue_token(&receipt.payer));
                        Ok(Some(admission(
                            payment,
                            Secured::Balance(BalanceHold {
                                hold,
                                cap_minor: Some(
                                    max_minor.map_or(paid_minor, |m| m.min(paid_minor)),
                                ),
                                balance_minor,
                                new_token,
                                fixed_charge: None,
                            }),
                        )))
                    }
                    Price::Free => Ok(None),
                }
            }
        }
    }

    /// Claim the request's `Idempotency-Key` for `payer` (see [`idempotency`]), before anything
    /// is held: a retry of a request in flight or already charged is answered here.
    pub(super) async fn claim_idempotency(
        &self,
        key: Option<String>,
        payer: &str,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
    ) -> Result<Option<idempotency::Claim>, Refusal> {
        let Some(key) = key else {
            return Ok(None);
        };
        let fingerprint = idempotency::fingerprint(method, &route.id, uri);
        let claim = idempotency::Claim::new(self.0.store.clone(), payer, key);
        let found = crate::metrics::timed(
            "idempotency_claim",
            self.0
                .store
                .idempotency_claim(&claim.claim, &fingerprint, idempotency::KEY_TTL),
        )
        .await;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                claim.keep();
                return Err(Refusal::store_down(e, "idempotency claim"));
            }
        };
        match found {
            IdempotencyClaim::Claimed => Ok(Some(claim)),
            other => {
                // Not ours: never forget someone else's key.
                claim.keep();
                Err(match other {
                    IdempotencyClaim::Done { event_id, time_ms } => Refusal::new(
                        ErrorCode::IdempotencyKeyUsed,
                        "a request with this Idempotency-Key was already served and charged; it was not charged again",
                    )
                    .standing(Standing::Served(Served {
                        event_id,
                        paid_at: (time_ms > 0)
                            .then(|| payment_auth::rfc3339(time_ms.div_euclid(1000))),
                    })),
                    IdempotencyClaim::Mismatch => Refusal::new(
                        ErrorCode::IdempotencyKeyMismatch,
                        "this Idempotency-Key was used for a different request (method, route or target)",
                    ),
                    _ => Refusal::new(
                        ErrorCode::IdempotencyKeyInUse,
                        "a request with this Idempotency-Key is in flight; retry when it finishes",
                    )
                    .retry_after(1),
                })
            }
        }
    }

    /// Enforce the route's per-payer rate limit (before anything is held).
    pub(super) async fn check_rate(&self, route: &PricedRoute, payer: &str) -> Result<(), Refusal> {
        let Some(limit) = route.rate_limit else {
            return Ok(());
        };
        match crate::metrics::timed("rate", self.0.store.rate(payer, &route.id, limit)).await {
            Ok(None) => Ok(()),
            Ok(Some(retry)) => {
                let secs = u64::try_from(retry.as_millis().div_ceil(1000).max(1)).unwrap_or(1);
                Err(Refusal::plain(
                    ErrorCode::RateLimited,
                    format!("at most {} requests per second (burst {}) on this route; retry in {secs} s", limit.per_second, limit.burst),
                )
                .retry_after(secs))
            }
            Err(e) => Err(Refusal::store_down(e, "rate")),
        }
    }

    /// What a request on this route holds: the fixed price or the metered reservation.
    pub(super) fn hold_amount(route: &PricedRoute) -> Option<(&Currency, Amount)> {
        match &route.price {
            Price::Fixed(m) => Some((&m.currency, m.amount)),
            Price::Metered(m) => Some((&m.currency, m.reserve)),
            Price::Free => None,
        }
    }

    /// The plan that covers a route's group, if one is sold.
    pub(super) fn plan_for(&self, route: &PricedRoute) -> Option<&Plan> {
        let group = route.group_name();
        self.0.settings.plans.iter().find(|p| p.covers(group))
    }

    /// Credit a receipt's amount to its payer's balance, exactly once.
    pub(super) async fn credit_receipt(
        &self,
        receipt: &Receipt,
        currency: &Currency,
        minor: u64,
        reason: CreditReason,
    ) -> Result<(String, u64, bool), Refusal> {
        let credit = Credit {
            payer: receipt.payer.clone(),
            currency: currency.code().to_owned(),
            amount_minor: i64::try_from(minor)
                .map_err(|_| Refusal::new(ErrorCode::AmountInvalid, "amount too large"))?,
            idempotency: Idempotency::Receipt {
                issuer: receipt.issuer.clone(),
                receipt_id: receipt.id.clone(),
            },
            keep_until_ms: self.single_use_until_ms(receipt),
            reason: reason.as_str().to_owned(),
            source: format!("receipt:{}:{}", receipt.issuer, receipt.id),
        };
        match crate::metrics::timed("credit", self.0.store.credit(&credit)).await {
            Ok(CreditOutcome::Applied {
                credit_id,
                balance_minor,
            }) => {
                // A stream of this payer paused for a top-up continues at once.
                self.0.topups.announce(&receipt.payer);
                Ok((credit_id, balance_minor, false))
            }
            Ok(CreditOutcome::Duplicate {
                credit_id,
                balance_minor,
            }) if reason == CreditReason::Topup => Ok((credit_id, balance_minor, true)),
            Ok(CreditOutcome::Duplicate { .. } | CreditOutcome::ReceiptUsed) => Err(Refusal::new(
                ErrorCode::ReceiptReplayed,
                "this receipt was already spent (its amount is in your balance)",
            )),
            Ok(CreditOutcome::Insufficient { .. }) => Err(Refusal::internal()),
            Err(e) => Err(Refusal::store_down(e, "credit")),
        }
    }

    /// Check a payment receipt against what the route asks; returns the paid amount in minor units.
    pub(super) fn check_terms(
        &self,
        r: &Receipt,
        route: &PricedRoute,
        currency: &Currency,
        due: u64,
        method: &Method,
    ) -> Result<u64, Refusal> {
        if r.currency != currency.code() {
            return Err(Refusal::new(
                ErrorCode::CurrencyMismatch,
                format!("this route is priced in {}", currency.code()),
            ));
        }
        let paid = r
            .amount
            .minor(currency)
            .map_err(|e| Refusal::new(ErrorCode::AmountInvalid, e.to_string()))?;
        if paid < due {
            let due_amount = currency.from_minor(due);
            return Err(Refusal::new(
                ErrorCode::AmountInsufficient,
                format!(
                    "the price is {due_amount} {}; the receipt pays {} {}",
                    currency.code(),
                    currency.from_minor(paid),
                    r.currency
                ),
            ));
        }
        if let Some(id) = &r.challenge {
            self.check_challenge(id, route, currency, due, method)?;
        }
        Ok(paid)
    }

    /// What a challenge id for this route, method and price binds.
    pub(super) fn challenge_terms<'a>(
        &'a self,
        route: &'a PricedRoute,
        method: &'a Method,
        amount_minor: u64,
        currency: &'a Currency,
    ) -> ChallengeTerms<'a> {
        ChallengeTerms {
            merchant: &self.0.merchant,
            route: &route.id,
            method: method.as_str(),
            amount_minor,
            currency: currency.code(),
        }
    }

    /// Check a challenge id (a receipt's `challenge` claim, or the one a Payment-scheme
    /// credential echoes) against this request: forged or tampered -> `challenge_invalid`,
    /// issued for other terms -> `challenge_mismatch`, expired -> `challenge_expired`.
    pub(super) fn check_challenge(
        &self,
        id: &str,
        route: &PricedRoute,
        currency: &Currency,
        due: u64,
        method: &Method,
    ) -> Result<(), Refusal> {
        let terms = self.challenge_terms(route, method, due, currency);
        self.0
            .challenge_key
            .verify(id, &terms, self.0.settings.clock.now_secs())
            .map_err(|e| {
                let code = match e {
                    ChallengeError::Malformed => ErrorCode::ChallengeInvalid,
                    ChallengeError::Mismatch => ErrorCode::ChallengeMismatch,
                    ChallengeError::Expired => ErrorCode::ChallengeExpired,
                };
                Refusal::new(code, e.to_string())
            })
            .map(|_| ())
    }
}

/// Why a receipt's amount is credited to its payer's balance (the credit's ledger reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CreditReason {
    /// A payment receipt on a metered route funds the balance the request is served from (a
    /// second use is a replay).
    Payment,
    /// A top-up (a second use answers the first credit again: the call is idempotent).
    Topup,
}

impl CreditReason {
    fn as_str(self) -> &'static str {
        match self {
            CreditReason::Payment => "payment",
            CreditReason::Topup => "topup",
        }
    }
}

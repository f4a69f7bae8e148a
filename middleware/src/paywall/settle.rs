//! The settle phase: a served request captured at what it actually cost (a fixed price, or the
//! metered usage clamped to what the payer can pay), the rest released, exactly one ledger
//! entry; and the paid response headers (`PAYMENT-RESPONSE`, `Payment-Receipt`).

use super::*;

impl Admission {
    /// The most this request can be charged (hold + available balance, within a receipt's
    /// cap), in minor units; `None` for a receipt-paid fixed price.
    pub fn charge_limit_minor(&self) -> Option<u64> {
        match &self.held {
            Held::Balance {
                hold,
                cap_minor,
                balance_minor,
                ..
            } => {
                let limit = hold.amount_minor.saturating_add(*balance_minor);
                Some(cap_minor.map_or(limit, |c| limit.min(c)))
            }
            Held::Receipt(_) => None,
        }
    }

    /// `PAYMENT-RESPONSE` for a metered response settled after its body: what is held now.
    pub fn pending_response(&self) -> Option<HeaderValue> {
        let Held::Balance {
            hold,
            balance_minor,
            new_token,
            ..
        } = &self.held
        else {
            return None;
        };
        let c = &self.payment.charge.currency;
        let mut v = json!({
            "success": true,
            "settlement": "deferred",
            "network": self.paywall.0.network,
            "payer": self.payment.payer,
            "held": c.from_minor(hold.amount_minor).to_string(),
            "currency": c.code(),
            "decimals": c.scale(),
            "balance": c.from_minor(*balance_minor).to_string(),
            "reservation": hold.id,
        });
        if let Some(t) = new_token {
            v["accessToken"] = t.clone().into();
        }
        b64_header(&v)
    }

    /// Settle. `status`: the upstream's status (`None`: it failed before answering).
    /// `usage`: for metered routes, the units per meter (`None` entries: could not be read)
    /// and how the body ended.
    ///
    /// Below 400 captures; 400 and above, or no answer, releases. Returns the
    /// `PAYMENT-RESPONSE` value on capture, or the refusal to send instead of the upstream's
    /// response when the capture could not be recorded (fail closed).
    pub async fn settle(
        mut self,
        status: Option<u16>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> Result<Settled, Refusal> {
        if let Some(x) = self.x402.take() {
            return self.settle_x402(*x, status).await;
        }
        if let Some(c) = self.charged.take() {
            return self.settle_charged(*c, status).await;
        }
        // From here on this call owns the outcome; if it is cancelled mid-way the hold simply
        // expires (a capture may or may not have landed: never both, never twice).
        self.settled = true;
        crate::metrics::global().holds_in_flight.dec();
        let store = self.paywall.0.store.clone();
        let served = status.is_some_and(|s| s < 400);
        let held = std::mem::replace(&mut self.held, Held::Receipt(Reservation::empty()));
        if !served {
            // On failure the hold expires by itself; the agent can retry after that.
            if let Err(e) = held.release(store.as_ref()).await {
                tracing::warn!(error = %e, "release failed; hold will expire");
            }
            // Nothing was charged: a retry with the same Idempotency-Key runs again.
            if let Some(claim) = self.idempotency.take() {
                claim.forget().await;
            }
            return Ok(Settled::default());
        }
        let claim = self.idempotency.take();
        let status = status.unwrap_or(0);
        let currency = self.payment.charge.currency.clone();
        let (units, unit_prices, actual_minor) = self.measure(&held, usage);
        let units_seen = units.clone();
        let time_ms = self.paywall.0.clock.now_ms();
        let event = UsageEvent {
            id: String::new(),
            time_ms,
            payer: self.payment.payer.clone(),
            route: self.route.id.clone(),
            method: self.method.clone(),
            units,
            unit_prices,
            currency: currency.code().to_owned(),
            scale: currency.scale(),
            amount_minor: actual_minor,
            uncharged_minor: 0,
            credential: self.payment.credential.clone(),
            reservation: String::new(),
            upstream_status: status,
            voids: None,
        };
        let withheld = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "capture failed; response withheld");
            Paywall::problem(
                ErrorCode::StoreUnavailable,
                "the payment could not be recorded; nothing was charged, retry later",
            )
        };
        let retry = self.paywall.0.settle_retry;
        let (event_id, charged, balance, token) = match &held {
            Held::Receipt(r) => {
                let event = UsageEvent {
                    reservation: r.id.clone(),
                    ..event
                };
                let capture = Settlement::Capture(Box::new(event));
                let outcome = match retry_unknown(retry, || {
                    crate::metrics::timed("capture", store.settle(r, &capture))
                })
                .await
                {
                    Ok(o) => o,
                    Err(e) => {
                        reconcile(
                            store.clone(),
                            held.clone(),
                            actual_minor,
                            currency.code().to_owned(),
                            capture.clone(),
                        );
                        if let Some(c) = claim {
                            c.keep();
                        }
                        return Err(withheld(&e));
                    }
                };
                match outcome {
                    SettleOutcome::Captured { event_id }
                    | SettleOutcome::AlreadyCaptured { event_id } => {
                        (event_id, actual_minor, None, None)
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost");
                        return Err(Paywall::problem(
                            ErrorCode::ReceiptInUse,
                            "the receipt's hold expired and it was taken by another request",
                        ));
                    }
                }
            }
            Held::Balance {
                hold, new_token, ..
            } => {
                let event = UsageEvent {
                    reservation: hold.id.clone(),
                    ..event
                };
                let captured = retry_unknown(retry, || {
                    crate::metrics::timed(
                        "capture_hold",
                        store.capture_hold(hold, actual_minor, &event),
                    )
                })
                .await;
                let captured = match captured {
                    Ok(c) => c,
                    Err(e) => {
                        reconcile(
                            store.clone(),
                            held.clone(),
                            actual_minor,
                            currency.code().to_owned(),
                            Settlement::Capture(Box::new(event.clone())),
                        );
                        if let Some(c) = claim {
                            c.keep();
                        }
                        return Err(withheld(&e));
                    }
                };
                match captured {
                    HoldSettleOutcome::Captured {
                        event_id,
                        charged_minor,
                        uncharged_minor,
                        balance_minor,
                    } => {
                        if uncharged_minor > 0 {
                            tracing::warn!(payer = %self.payment.payer, uncharged_minor, "usage beyond the balance was not charged");
                            crate::metrics::global()
                                .uncharged_minor
                                .with_label_values(&[self.route.id.as_str(), currency.code()])
                                .inc_by(uncharged_minor);
                        }
                        (
                            event_id,
                            charged_minor,
                            Some(balance_minor),
                            new_token.clone(),
                        )
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost (expired)");
                        return Err(Paywall::problem(
                            ErrorCode::BalanceInsufficient,
                            "the balance hold expired before the response; nothing was charged",
                        ));
                    }
                }
            }
        };
        if let Some(c) = claim {
            c.done(&event_id, time_ms).await;
        }
        Ok(self.paid(
            &event_id,
            (charged, balance, token),
            Some(&units_seen),
            (status, time_ms),
        ))
    }

    /// A captured request: revenue and usage metrics, traffic, its `PAYMENT-RESPONSE` and
    /// (Payment scheme, 2xx) `Payment-Receipt`. `status`: the upstream's; `time_ms`: the
    /// capture's time.
    pub(super) fn paid(
        &self,
        event_id: &str,
        (charged, balance, token): (u64, Option<u64>, Option<String>),
        units_seen: Option<&BTreeMap<String, u64>>,
        (status, time_ms): (u16, i64),
    ) -> Settled {
        let currency = &self.payment.charge.currency;
        let charged_amount = currency.from_minor(charged);
        let m = crate::metrics::global();
        m.revenue_minor
            .with_label_values(&[self.route.id.as_str(), currency.code()])
            .inc_by(charged);
        crate::traffic::global().record_paid(
            self.paywall.0.clock.now_ms(),
            currency.code(),
            charged,
        );
        if let (Price::Metered(_), Some(units_seen)) = (&self.route.price, units_seen) {
            for (unit, n) in units_seen {
                m.usage_units
                    .with_label_values(&[self.route.id.as_str(), unit.as_str()])
                    .inc_by(*n);
            }
        }
        // Per-request detail stays at debug: at info, a busy gateway would log thousands of
        // lines a second (the ledger is the record).
        tracing::debug!(payer = %self.payment.payer, route = %self.route.id, amount = %charged_amount, currency = %currency.code(), event = %event_id, "payment captured");
        let receipt_id = self
            .payment
            .credential
            .rsplit(':')
            .next()
            .filter(|_| self.payment.credential.starts_with("receipt:"));
        // The Payment scheme's receipt: only for a 2xx answer (the draft issues none on error
        // responses) to a request paid with `Authorization: Payment`.
        let payment_receipt = if self.payment_scheme && (200..300).contains(&status) {
            payment_auth::receipt(event_id, time_ms, receipt_id)
        } else {
            None
        };
        // Serialized from a struct (no intermediate JSON map): this runs on every paid request.
        let body = PaymentResponse {
            success: true,
            transaction: event_id,
            network: &self.paywall.0.network,
            payer: &self.payment.payer,
            amount: charged_amount.to_string(),
            amount_atomic: charged.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            event_id,
            receipt: receipt_id,
            balance: balance.map(|b| currency.from_minor(b).to_string()),
            access_token: token,
        };
        let payment_response = serde_json::to_vec(&body)
            .ok()
            .and_then(|v| HeaderValue::from_str(&STANDARD.encode(v)).ok());
        Settled {
            payment_response,
            payment_receipt,
        }
    }

    /// Units, unit prices and the amount to capture, by the documented rules.
    pub(super) fn measure(
        &self,
        held: &Held,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, String>, u64) {
        let Price::Metered(m) = &self.route.price else {
            let minor = self.payment.charge.minor().unwrap_or(0);
            return (
                BTreeMap::from([("request".to_owned(), 1)]),
                BTreeMap::new(),
                minor,
            );
        };
        let hold_minor = match held {
            Held::Balance { hold, .. } => hold.amount_minor,
            Held::Receipt(_) => 0,
        };
        let cap = match held {
            Held::Balance { cap_minor, .. } => *cap_minor,
            Held::Receipt(_) => None,
        };
        let prices = m
            .meters
            .iter()
            .map(|x| (x.unit.clone(), x.price.to_string()))
            .collect();
        // No reading at all (should not happen for a served metered response): all missing.
        let (readings, end) = usage.unwrap_or_else(|| {
            (
                m.meters.iter().map(|x| (x.unit.clone(), None)).collect(),
                BodyEnd::Complete,
            )
        });
        let missing = readings.values().any(Option::is_none);
        let units: BTreeMap<String, u64> = readings
            .iter()
            .map(|(u, n)| (u.clone(), n.unwrap_or(0)))
            .collect();
        let actual = if missing
            && matches!(end, BodyEnd::Complete | BodyEnd::ClientGone)
            && m.on_missing == OnMissing::Reserve
        {
            // Served, but the usage could not be read: the reservation is the charge.
            hold_minor
        } else {
            m.cost_minor(&units).unwrap_or(hold_minor)
        };
        let actual = match held {
            Held::Balance {
                fixed_charge: Some(c),
                ..
            } => *c,
            _ => actual,
        };
        let actual = cap.map_or(actual, |c| actual.min(c));
        (units, prices, actual)
    }
}

//! The settle phase: a served request captured at what it actually cost (a fixed price, or the
//! metered usage clamped to what the payer can pay), the rest released, exactly one ledger
//! entry; and the paid response headers (`PAYMENT-RESPONSE`, `Payment-Receipt`). Each way of
//! paying ([`Secured`]) settles by its own rule: a held receipt or balance here, a charge made
//! at admission in `charged.rs`, an x402 payment in `x402/`.

use super::*;

impl Admission {
    /// The most this request can be charged (hold + available balance, within a receipt's
    /// cap), in minor units; `None` for a receipt-paid fixed price.
    pub fn charge_limit_minor(&self) -> Option<u64> {
        match &self.secured {
            Secured::Balance(b) | Secured::Lease(b, _) => {
                let limit = b.hold.amount_minor.saturating_add(b.balance_minor);
                Some(b.cap_minor.map_or(limit, |c| limit.min(c)))
            }
            Secured::Upto(_, x) => Some(x.max_minor()),
            _ => None,
        }
    }

    /// `PAYMENT-RESPONSE` for a metered response settled after its body: what is held now.
    pub fn pending_response(&self) -> Option<HeaderValue> {
        let (Secured::Balance(b) | Secured::Lease(b, _)) = &self.secured else {
            return None;
        };
        let c = &self.payment.charge.currency;
        b64_header(&wire::PendingResponse {
            success: true,
            settlement: "deferred",
            network: &self.paywall.0.network,
            payer: &self.payment.payer,
            held: c.from_minor(b.hold.amount_minor).to_string(),
            currency: c.code(),
            decimals: c.scale(),
            balance: c.from_minor(b.balance_minor).to_string(),
            reservation: &b.hold.id,
            access_token: b.new_token.as_deref(),
        })
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
        match self.take_secured() {
            Secured::X402(r, x) => self.settle_x402(r, *x, status).await,
            Secured::Upto(r, x) => self.settle_upto(r, *x, status, usage).await,
            Secured::Charged(held, c) => self.settle_charged(held, *c, status).await,
            Secured::Receipt(r) => {
                self.settle_held(Held::Receipt(r), None, status, usage)
                    .await
            }
            Secured::Balance(b) => {
                let held = Held::Balance(b.hold.clone());
                self.settle_held(held, Some(b), status, usage).await
            }
            Secured::Lease(b, draw) => Ok(self.settle_lease(b, draw, status, usage)),
            Secured::Settled => Ok(Settled::default()),
        }
    }

    /// A request drawn from a balance lease: not served, the draw goes back to the lease; served,
    /// its charge joins the lease's next batch (no store call). `PAYMENT-RESPONSE` names the
    /// request's reservation (the recorded event carries it) with `settlement: "batched"`: the
    /// ledger event id exists only once the batch is recorded.
    fn settle_lease(
        &mut self,
        b: BalanceHold,
        draw: super::lease::Draw,
        status: Option<u16>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> Settled {
        let Some(status) = status.filter(|s| *s < 400) else {
            draw.give_back();
            return Settled::default();
        };
        let (units, unit_prices, actual_minor) = self.measure(Some(&b), usage);
        let time_ms = self.paywall.0.settings.clock.now_ms();
        // The units outlive the event only for a metered route's metrics (no copy per
        // fixed-price draw).
        let seen = matches!(self.route.price, Price::Metered(_)).then(|| units.clone());
        let event = UsageEvent {
            reservation: b.hold.id.clone(),
            ..self.usage_event(time_ms, units, unit_prices, actual_minor, status)
        };
        let balance = draw.settle(event);
        self.paid_as(
            (&b.hold.id, true),
            (actual_minor, Some(balance), None),
            seen.as_ref(),
            (status, time_ms),
        )
    }

    /// The usage event of this request, served with `status` at `time_ms` (no reservation yet:
    /// the caller names it).
    pub(super) fn usage_event(
        &self,
        time_ms: i64,
        units: BTreeMap<String, u64>,
        unit_prices: BTreeMap<String, String>,
        amount_minor: u64,
        status: u16,
    ) -> UsageEvent {
        let currency = &self.payment.charge.currency;
        UsageEvent {
            id: String::new(),
            time_ms,
            payer: self.payment.payer.clone(),
            route: self.route.id.clone(),
            method: self.method.clone(),
            units,
            unit_prices,
            currency: currency.code().to_owned(),
            scale: currency.scale(),
            amount_minor,
            uncharged_minor: 0,
            credential: self.payment.credential.clone(),
            reservation: String::new(),
            upstream_status: status,
            voids: None,
        }
    }

    /// A not served request gives its hold back; a served one is captured at its cost.
    async fn settle_held(
        &mut self,
        held: Held,
        balance: Option<BalanceHold>,
        status: Option<u16>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> Result<Settled, Refusal> {
        let store = self.paywall.0.store.clone();
        let Some(status) = status.filter(|s| *s < 400) else {
            // On failure the hold expires by itself; the agent can retry after that.
            if let Err(e) = held.release(store.as_ref()).await {
                tracing::warn!(error = %e, "release failed; hold will expire");
            }
            // Nothing was charged: a retry with the same Idempotency-Key runs again.
            if let Some(claim) = self.idempotency.take() {
                claim.forget().await;
            }
            return Ok(Settled::default());
        };
        let claim = self.idempotency.take();
        let currency = self.payment.charge.currency.clone();
        let (units, unit_prices, actual_minor) = self.measure(balance.as_ref(), usage);
        let units_seen = units.clone();
        let time_ms = self.paywall.0.settings.clock.now_ms();
        let event = self.usage_event(time_ms, units, unit_prices, actual_minor, status);
        let withheld = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "capture failed; response withheld");
            Refusal::plain(
                ErrorCode::StoreUnavailable,
                "the payment could not be recorded; nothing was charged, retry later",
            )
        };
        // The capture's outcome is unknown: the reconciler finishes it in the background, the
        // Idempotency-Key stays claimed, the response is withheld.
        let unknown =
            |capture: Settlement, claim: Option<idempotency::Claim>, e: &dyn std::fmt::Display| {
                reconcile(
                    store.clone(),
                    held.clone(),
                    actual_minor,
                    currency.code().to_owned(),
                    capture,
                );
                if let Some(c) = claim {
                    c.keep();
                }
                withheld(e)
            };
        let retry = self.paywall.0.settings.settle_retry;
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
                    Err(e) => return Err(unknown(capture.clone(), claim, &e)),
                };
                match outcome {
                    SettleOutcome::Captured { event_id }
                    | SettleOutcome::AlreadyCaptured { event_id } => {
                        (event_id, actual_minor, None, None)
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost");
                        return Err(Refusal::plain(
                            ErrorCode::ReceiptInUse,
                            "the receipt's hold expired and it was taken by another request",
                        ));
                    }
                }
            }
            Held::Balance(hold) => {
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
                        let capture = Settlement::Capture(Box::new(event.clone()));
                        return Err(unknown(capture, claim, &e));
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
                            balance.and_then(|b| b.new_token),
                        )
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost (expired)");
                        return Err(Refusal::plain(
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
        charge: (u64, Option<u64>, Option<String>),
        units_seen: Option<&BTreeMap<String, u64>>,
        served: (u16, i64),
    ) -> Settled {
        self.paid_as((event_id, false), charge, units_seen, served)
    }

    /// [`Self::paid`]; `batched`: `event_id` is the request's reservation, its ledger event
    /// is recorded by a lease's next sync.
    fn paid_as(
        &self,
        (event_id, batched): (&str, bool),
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
            self.paywall.0.settings.clock.now_ms(),
            &self.route.id,
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
        let body = wire::PaymentResponse {
            success: true,
            transaction: event_id,
            network: &self.paywall.0.network,
            payer: &self.payment.payer,
            amount: charged_amount.to_string(),
            amount_atomic: charged.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            event_id: (!batched).then_some(event_id),
            receipt: receipt_id,
            balance: balance.map(|b| currency.from_minor(b).to_string()),
            access_token: token,
            settlement: batched.then_some("batched"),
            settlement_id: None,
        };
        Settled {
            payment_response: b64_header(&body),
            payment_receipt,
        }
    }

    /// Units, unit prices and the amount to capture, by the documented rules. `held`: the
    /// balance hold (`None`: a receipt at the route's fixed price).
    pub(super) fn measure(
        &self,
        held: Option<&BalanceHold>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, String>, u64) {
        let hold_minor = held.map_or(0, |b| b.hold.amount_minor);
        let (units, prices, actual) = self.measure_at(hold_minor, usage);
        let actual = held.and_then(|b| b.fixed_charge).unwrap_or(actual);
        let actual = held
            .and_then(|b| b.cap_minor)
            .map_or(actual, |c| actual.min(c));
        (units, prices, actual)
    }

    /// [`Self::measure`] for a payment of at most `max_minor` (an x402 `upto` permit's
    /// maximum): unreadable usage under `on_missing = "reserve"` costs the maximum, and no
    /// cost exceeds it.
    pub(super) fn measure_capped(
        &self,
        max_minor: u64,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, String>, u64) {
        let (units, prices, actual) = self.measure_at(max_minor, usage);
        (units, prices, actual.min(max_minor))
    }

    /// Units, unit prices and the cost by the metering rules; `hold_minor` is what is charged
    /// when a served response's usage cannot be read (`on_missing = "reserve"`).
    fn measure_at(
        &self,
        hold_minor: u64,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, String>, u64) {
        let Price::Metered(m) = &self.route.price else {
            // A fixed price (a plan's coverage or overage is already in the payment's charge).
            let minor = self.payment.charge.minor().unwrap_or(0);
            return (
                BTreeMap::from([("request".to_owned(), 1)]),
                BTreeMap::new(),
                minor,
            );
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
        (units, prices, actual)
    }
}

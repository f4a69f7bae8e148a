//! The Redis store's prepaid balances: holds, their capture or release, credits, the account ([`crate::store::BalanceStore`]).

use super::*;

#[async_trait]
impl BalanceStore for RedisStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.renew.prepare_invoke();
        let (payer, id, mandate) = match held {
            Renewal::Receipt(r) => {
                inv.key(self.receipt_key(r)).arg("receipt");
                (&r.payer, &r.id, r.mandate.as_ref())
            }
            Renewal::Balance(h) => {
                inv.key(self.holds_key(&h.payer)).arg("hold");
                (&h.payer, &h.id, h.mandate.as_ref())
            }
        };
        if let Some(m) = mandate {
            inv.key(self.window_key(payer, m));
        }
        inv.arg(id).arg(ms(ttl));
        let live: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(live == 1)
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.blocked_key(&h.payer));
        match (&h.mandate, &h.plan) {
            (Some(m), _) => self.mandate_keys(&mut inv, &h.payer, m),
            (None, Some(_)) => {
                // Placeholders in the same slot: the script reads them only with a mandate.
                let a = self.account_key(&h.payer);
                inv.key(&a).key(&a).key(&a);
            }
            (None, None) => {}
        }
        if let Some(p) = &h.plan {
            inv.key(self.subscription_key(&h.payer, &p.plan));
        }
        inv.arg(&h.id)
            .arg(&h.currency)
            .arg(h.amount_minor)
            .arg(ms(h.ttl));
        match (&h.mandate, &h.plan) {
            (Some(m), _) => Self::mandate_args(&mut inv, m),
            (None, Some(_)) => {
                inv.arg("").arg("").arg("").arg("");
            }
            (None, None) => {}
        }
        if let Some(p) = &h.plan {
            inv.arg(if p.deny {
                "deny"
            } else if p.route_price {
                "route"
            } else {
                "overage"
            })
            .arg(p.now_ms)
            .arg(p.overage_minor)
            .arg(if p.unit.is_some() { "units" } else { "calls" });
        }
        let (status, bal): (String, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        let balance_minor = u64::try_from(bal).unwrap_or(0);
        match status.as_str() {
            "held" => Ok(HoldOutcome::Held { balance_minor }),
            "insufficient" => Ok(HoldOutcome::Insufficient { balance_minor }),
            "blocked" => Ok(HoldOutcome::PayerBlocked),
            "mandate_revoked" => Ok(HoldOutcome::MandateRevoked),
            "mandate_exceeded" => Ok(HoldOutcome::MandateExceeded {
                room_minor: balance_minor,
            }),
            "plan" => Ok(HoldOutcome::Plan {
                calls_left: u64::try_from(bal).ok(),
            }),
            "plan_exhausted" => Ok(HoldOutcome::PlanExhausted { period_end_ms: bal }),
            "overage" => Ok(HoldOutcome::Overage { balance_minor }),
            other => Err(StoreError::Protocol(format!("hold replied {other:?}"))),
        }
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let day = utc_day(event.time_ms);
        if h.plan.as_ref().is_some_and(|p| p.covered) {
            let fields = event.to_fields(true);
            let mut inv = self.scripts.plan_capture.prepare_invoke();
            self.usage_options(&mut inv);
            inv.key(self.done_key(h))
                .key(self.events_key(h.bucket()))
                .key(self.payer_agg_key(&h.payer, &day))
                .key(self.bucket_agg_key(h.bucket(), &day))
                .key(self.payer_totals_key(h.bucket(), &day))
                .key(
                    self.subscription_key(
                        &h.payer,
                        h.plan.as_ref().map_or("", |p| p.plan.as_str()),
                    ),
                )
                .key(self.account_key(&h.payer))
                .arg(plan_units(h, event))
                .arg(fields.len());
            for (k, v) in fields {
                inv.arg(k).arg(v);
            }
            for (k, v) in event.aggregate_fields() {
                inv.arg(k).arg(v);
            }
            let (status, id, balance): (String, String, i64) =
                self.bounded(inv.invoke_async(&mut conn)).await?;
            return match status.as_str() {
                // The balance as it stands (nothing was taken from it), as the memory store
                // answers: `PAYMENT-RESPONSE` is the same on every backend.
                "captured" => Ok(HoldSettleOutcome::Captured {
                    event_id: Self::ledger_id(h.bucket(), &id),
                    charged_minor: 0,
                    uncharged_minor: 0,
                    balance_minor: u64::try_from(balance).unwrap_or(0),
                }),
                "not_held" => Ok(HoldSettleOutcome::NotHeld),
                other => Err(StoreError::Protocol(format!(
                    "plan_capture replied {other:?}"
                ))),
            };
        }
        let fields = event.to_fields(false);
        let mut inv = self.scripts.capture_hold.prepare_invoke();
        self.usage_options(&mut inv);
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.events_key(h.bucket()))
            .key(self.payer_agg_key(&h.payer, &day))
            .key(self.bucket_agg_key(h.bucket(), &day))
            .key(self.key(h.bucket(), &format!("done:{}", h.id)))
            .key(self.payer_totals_key(h.bucket(), &day));
        if let Some(m) = &h.mandate {
            inv.key(self.window_key(&h.payer, m));
        }
        inv.arg(&h.id)
            .arg(actual_minor)
            .arg(event.amount_field())
            .arg(fields.len());
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        for (k, v) in event.aggregate_fields() {
            inv.arg(k).arg(v);
        }
        let (status, id, charged, uncharged, bal): (String, String, i64, i64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "captured" => Ok(HoldSettleOutcome::Captured {
                event_id: Self::ledger_id(h.bucket(), &id),
                charged_minor: u64::try_from(charged).unwrap_or(0),
                uncharged_minor: u64::try_from(uncharged).unwrap_or(0),
                balance_minor: u64::try_from(bal).unwrap_or(0),
            }),
            "not_held" => Ok(HoldSettleOutcome::NotHeld),
            other => Err(StoreError::Protocol(format!(
                "capture_hold replied {other:?}"
            ))),
        }
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            let mut conn = self.connection().await?;
            let mut inv = self.scripts.plan_release.prepare_invoke();
            inv.key(self.done_key(h))
                .key(self.subscription_key(&h.payer, &p.plan))
                .arg(if p.unit.is_some() { "units" } else { "calls" })
                .arg(ms(self.settled_keep));
            let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
            return Ok(if n == 1 {
                HoldSettleOutcome::Released
            } else {
                HoldSettleOutcome::NotHeld
            });
        }
        let mut inv = self.scripts.release_hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer));
        let held = self
            .release_with(inv, &h.payer, h.mandate.as_ref(), &h.id)
            .await?;
        Ok(if held {
            HoldSettleOutcome::Released
        } else {
            HoldSettleOutcome::NotHeld
        })
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let bucket = bucket_of(&c.payer);
        let idem_key = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => self.receipt_key(&Reservation {
                id: String::new(),
                payer: c.payer.clone(),
                issuer: issuer.clone(),
                receipt_id: receipt_id.clone(),
                hold: Duration::ZERO,
                spent_until_ms: 0,
                mandate: None,
            }),
            Idempotency::Key(k) => {
                let mut h = Sha256::new();
                h.update(c.payer.as_bytes());
                h.update([0]);
                h.update(k.as_bytes());
                let hex: String = h.finalize()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                self.key(bucket, &format!("idem:{hex}"))
            }
        };
        let keep =
            (c.keep_until_ms - crate::clock::Clock::now_ms(&crate::clock::SystemClock)).max(1000);
        let mut inv = self.scripts.credit.prepare_invoke();
        let owned_by_other = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => {
                let until = c.keep_until_ms;
                self.claim_owner(&mut conn, &mut inv, &c.payer, issuer, receipt_id, until)
                    .await?
            }
            Idempotency::Key(_) => {
                inv.arg("@none");
                false
            }
        };
        if owned_by_other {
            return Ok(CreditOutcome::ReceiptUsed);
        }
        inv.key(self.account_key(&c.payer))
            .key(idem_key)
            .key(self.key(bucket, "credits"))
            .arg(&c.currency)
            .arg(c.amount_minor)
            .arg(keep);
        for (k, v) in [
            ("payer", c.payer.clone()),
            ("currency", c.currency.clone()),
            ("amount_minor", c.amount_minor.to_string()),
            ("reason", c.reason.clone()),
            ("source", c.source.clone()),
        ] {
            inv.arg(k).arg(v);
        }
        let (status, id, bal): (String, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let balance_minor = u64::try_from(bal).unwrap_or(0);
        match status.as_str() {
            "applied" => Ok(CreditOutcome::Applied {
                credit_id: Self::ledger_id(bucket, &id),
                balance_minor,
            }),
            "duplicate" => Ok(CreditOutcome::Duplicate {
                credit_id: Self::ledger_id(bucket, &id),
                balance_minor,
            }),
            "insufficient" => Ok(CreditOutcome::Insufficient { balance_minor }),
            "in_use" => Ok(CreditOutcome::ReceiptUsed),
            other => Err(StoreError::Protocol(format!("credit replied {other:?}"))),
        }
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        // The hold script with no currency gives back expired holds and reads the account.
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.account_key(payer))
            .key(self.holds_key(payer))
            .key(self.blocked_key(payer))
            .arg("read")
            .arg("")
            .arg(0)
            .arg(1);
        // `{'blocked', 0}` has two elements, `{'swept', holds, fields}` three.
        let reply: Vec<Value> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let blocked = match reply.first() {
            Some(Value::BulkString(s)) => s.as_slice() == b"blocked",
            Some(Value::SimpleString(s)) => s == "blocked",
            _ => false,
        };
        if blocked {
            // Blocked payers are not swept; read plainly.
            let fields: Vec<(String, i64)> =
                self.hgetall(&mut conn, &self.account_key(payer)).await?;
            let holds: u64 = self
                .bounded(
                    redis::cmd("HLEN")
                        .arg(self.holds_key(payer))
                        .query_async(&mut conn),
                )
                .await?;
            return Ok(Account {
                balances: parse_balances(fields),
                holds,
                blocked: true,
            });
        }
        let (_, holds, fields): (String, u64, Vec<(String, i64)>) =
            redis::from_redis_value(&Value::Array(reply))
                .map_err(|e| StoreError::Protocol(format!("account read replied {e}")))?;
        Ok(Account {
            balances: parse_balances(fields),
            holds,
            blocked: false,
        })
    }
}

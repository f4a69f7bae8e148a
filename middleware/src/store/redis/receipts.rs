//! The Redis store's receipts held single use, spent, voided, revoked ([`crate::store::ReceiptStore`]).

use super::*;

#[async_trait]
impl ReceiptStore for RedisStore {
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.authorize.prepare_invoke();
        let (payer, until) = (&r.payer, r.spent_until_ms);
        if self
            .claim_owner(&mut conn, &mut inv, payer, &r.issuer, &r.receipt_id, until)
            .await?
        {
            return Ok(AuthorizeOutcome::Replayed);
        }
        inv.key(self.receipt_key(r)).key(self.blocked_key(&r.payer));
        if let Some(m) = &r.mandate {
            self.mandate_keys(&mut inv, &r.payer, m);
        }
        inv.arg(&r.id).arg(ms(r.hold));
        if let Some(m) = &r.mandate {
            inv.arg(m.amount_minor);
            Self::mandate_args(&mut inv, m);
        }
        let (reply, room): (String, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        match reply.as_str() {
            "reserved" => Ok(AuthorizeOutcome::Reserved),
            "blocked" => Ok(AuthorizeOutcome::PayerBlocked),
            "replayed" => Ok(AuthorizeOutcome::Replayed),
            "in_use" => Ok(AuthorizeOutcome::InUse),
            "revoked" => Ok(AuthorizeOutcome::Revoked),
            "mandate_revoked" => Ok(AuthorizeOutcome::MandateRevoked),
            "mandate_exceeded" => Ok(AuthorizeOutcome::MandateExceeded {
                room_minor: u64::try_from(room).unwrap_or(0),
            }),
            other => Err(StoreError::Protocol(format!("authorize replied {other:?}"))),
        }
    }

    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError> {
        match s {
            Settlement::Release => {
                let mut inv = self.scripts.release.prepare_invoke();
                inv.key(self.receipt_key(r));
                let held = self
                    .release_with(inv, &r.payer, r.mandate.as_ref(), &r.id)
                    .await?;
                Ok(if held {
                    SettleOutcome::Released
                } else {
                    SettleOutcome::NotHeld
                })
            }
            Settlement::Capture(event) => {
                let mut conn = self.connection().await?;
                let day = utc_day(event.time_ms);
                let mut inv = self.scripts.capture.prepare_invoke();
                inv.key(self.receipt_key(r))
                    .key(self.events_key(r.bucket()))
                    .key(self.payer_agg_key(&r.payer, &day))
                    .key(self.bucket_agg_key(r.bucket(), &day))
                    .key(self.payer_totals_key(r.bucket(), &day));
                if let Some(m) = &r.mandate {
                    inv.key(self.window_key(&r.payer, m));
                }
                self.usage_options(&mut inv);
                inv.arg(&r.id).arg(r.spent_until_ms);
                Self::usage_args(&mut inv, event, event);
                let (status, id): (String, String) =
                    self.bounded(inv.invoke_async(&mut conn)).await?;
                Self::captured("capture", r.bucket(), &status, &id)
            }
        }
    }

    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        let mut unused = true;
        for b in 0..BUCKETS {
            // NX: a receipt held or spent keeps its state (its payer's bucket has it).
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(b, &format!("r:{fp}")))
                .arg("revoked")
                .arg("NX")
                .arg("PX")
                .arg(crate::store::REVOKED_RECEIPT_KEEP_MS);
            let set: Value = self.bounded(cmd.query_async(&mut conn)).await?;
            if matches!(set, Value::Nil) {
                unused = false;
            }
        }
        Ok(unused)
    }
}

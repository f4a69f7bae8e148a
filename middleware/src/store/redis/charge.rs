//! Capture at admission on Redis: one script charges a fixed price (receipt or balance), one
//! undoes it for a request that was not served (see `lua/authorize_capture.lua`,
//! `hold_capture.lua`, `void.lua`, `void_hold.lua`).

use async_trait::async_trait;

use super::{ms, RedisStore};
use crate::store::{
    utc_day, AdmissionStore, AuthorizeOutcome, ChargeFrom, ChargeOutcome, Hold, HoldOutcome,
    Reservation, StoreError, UsageEvent, VoidOutcome,
};

use crate::store::charge::MARKER_MARGIN_MS;

impl RedisStore {
    /// The stream id inside a ledger id (`<ms>-<seq>-<bucket>`).
    pub(super) fn stream_id(ledger_id: &str) -> Result<&str, StoreError> {
        ledger_id
            .rsplit_once('-')
            .map(|(s, _)| s)
            .ok_or_else(|| StoreError::Protocol(format!("bad ledger id {ledger_id:?}")))
    }

    async fn charge_receipt(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let day = utc_day(event.time_ms);
        let b = r.bucket();
        let mut inv = self.scripts.authorize_capture.prepare_invoke();
        let (payer, until) = (&r.payer, r.spent_until_ms);
        if self
            .claim_owner(&mut conn, &mut inv, payer, &r.issuer, &r.receipt_id, until)
            .await?
        {
            return Ok(ChargeOutcome::Refused(AuthorizeOutcome::Replayed));
        }
        self.usage_options(&mut inv);
        inv.key(self.receipt_key(r))
            .key(self.blocked_key(&r.payer))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&r.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day))
            .arg(&r.id)
            .arg(r.spent_until_ms);
        Self::usage_args(&mut inv, event, event);
        let (status, id): (String, String) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(match status.as_str() {
            "captured" => ChargeOutcome::Charged {
                event_id: Self::ledger_id(b, &id),
                balance_minor: 0,
            },
            "blocked" => ChargeOutcome::Refused(AuthorizeOutcome::PayerBlocked),
            "replayed" => ChargeOutcome::Refused(AuthorizeOutcome::Replayed),
            "in_use" => ChargeOutcome::Refused(AuthorizeOutcome::InUse),
            "revoked" => ChargeOutcome::Refused(AuthorizeOutcome::Revoked),
            other => {
                return Err(StoreError::Protocol(format!(
                    "authorize_capture replied {other:?}"
                )))
            }
        })
    }

    async fn charge_balance(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let day = utc_day(event.time_ms);
        let b = h.bucket();
        let mut inv = self.scripts.hold_capture.prepare_invoke();
        self.usage_options(&mut inv);
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.blocked_key(&h.payer))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&h.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day))
            .key(self.done_key(h))
            .arg(&h.id)
            .arg(&h.currency)
            .arg(h.amount_minor)
            .arg(ms(h.ttl).saturating_add(MARKER_MARGIN_MS));
        Self::usage_args(&mut inv, event, event);
        let (status, id, balance): (String, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let balance_minor = u64::try_from(balance).unwrap_or(0);
        Ok(match status.as_str() {
            "captured" => ChargeOutcome::Charged {
                event_id: Self::ledger_id(b, &id),
                balance_minor,
            },
            "blocked" => ChargeOutcome::Declined(HoldOutcome::PayerBlocked),
            "insufficient" => ChargeOutcome::Declined(HoldOutcome::Insufficient { balance_minor }),
            other => {
                return Err(StoreError::Protocol(format!(
                    "hold_capture replied {other:?}"
                )))
            }
        })
    }
}

#[async_trait]
impl AdmissionStore for RedisStore {
    async fn charge_at_admission(
        &self,
        from: ChargeFrom<'_>,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        match from {
            ChargeFrom::Receipt(r) => self.charge_receipt(r, event).await,
            ChargeFrom::Balance(h) => self.charge_balance(h, event).await,
        }
    }

    /// The void event and the keys of the charge's day.
    async fn void_admission(
        &self,
        from: ChargeFrom<'_>,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let day = utc_day(charge.time_ms);
        let b = super::bucket_of(&charge.payer);
        let stream_id = Self::stream_id(&charge.id)?;
        let mut inv = match from {
            ChargeFrom::Receipt(r) => {
                let mut inv = self.scripts.void.prepare_invoke();
                inv.key(self.receipt_key(r));
                inv
            }
            ChargeFrom::Balance(h) => {
                let mut inv = self.scripts.void_hold.prepare_invoke();
                inv.key(self.account_key(&h.payer));
                inv
            }
        };
        self.usage_options(&mut inv);
        inv.key(self.events_key(b))
            .key(self.payer_agg_key(&charge.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day));
        match from {
            ChargeFrom::Receipt(r) => {
                inv.arg(&r.id).arg(stream_id);
            }
            ChargeFrom::Balance(h) => {
                inv.key(self.done_key(h))
                    .arg(stream_id)
                    .arg(&h.currency)
                    .arg(charge.amount_minor);
            }
        }
        // The charge's refund state: a refunded charge is not voided, a void is marked.
        inv.key(self.refund_state_key(charge)?)
            .arg(crate::store::refund::VOID_MARK_KEEP_MS);
        Self::usage_args(&mut inv, void, charge);
        let (status, id): (String, String) = self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "voided" => Ok(VoidOutcome::Voided {
                event_id: Self::ledger_id(b, &id),
            }),
            "not_charged" => Ok(VoidOutcome::NotCharged),
            other => Err(StoreError::Protocol(format!("void replied {other:?}"))),
        }
    }
}

//! The Redis store's plan periods ([`crate::store::PlanStore`]).

use super::*;

#[async_trait]
impl PlanStore for RedisStore {
    async fn subscribe(&self, s: &Subscription) -> Result<SubscribeOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let b = bucket_of(&s.payer);
        let day = utc_day(s.event.time_ms);
        let r = Reservation {
            payer: s.payer.clone(),
            issuer: s.issuer.clone(),
            receipt_id: s.receipt_id.clone(),
            ..Reservation::empty()
        };
        let mut inv = self.scripts.subscribe.prepare_invoke();
        let until = s.keep_until_ms.max(s.now_ms + 1000);
        if self
            .claim_owner(
                &mut conn,
                &mut inv,
                &s.payer,
                &s.issuer,
                &s.receipt_id,
                until,
            )
            .await?
        {
            return Ok(SubscribeOutcome::ReceiptUsed);
        }
        self.usage_options(&mut inv);
        inv.key(self.receipt_key(&r))
            .key(self.subscription_key(&s.payer, &s.plan))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&s.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day))
            .arg(s.now_ms)
            .arg(s.period_ms)
            .arg(s.calls.map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX)))
            .arg(s.keep_until_ms.max(s.now_ms + 1000));
        Self::usage_args(&mut inv, &s.event, &s.event);
        let (status, id, end): (String, String, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        match status.as_str() {
            "subscribed" => Ok(SubscribeOutcome::Subscribed {
                event_id: Self::ledger_id(b, &id),
                period_end_ms: end,
            }),
            "duplicate" => Ok(SubscribeOutcome::Duplicate {
                event_id: Self::ledger_id(b, &id),
                period_end_ms: end,
            }),
            "used" => Ok(SubscribeOutcome::ReceiptUsed),
            other => Err(StoreError::Protocol(format!("subscribe replied {other:?}"))),
        }
    }

    async fn subscription(
        &self,
        payer: &str,
        plan: &str,
    ) -> Result<Option<PlanPeriod>, StoreError> {
        let mut conn = self.connection().await?;
        let v: Vec<Option<i64>> = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.subscription_key(payer, plan))
                    .arg("start")
                    .arg("end")
                    .arg("calls")
                    .arg("used")
                    .query_async(&mut conn),
            )
            .await?;
        let get = |i: usize| v.get(i).copied().flatten();
        Ok(get(1).map(|end_ms| PlanPeriod {
            start_ms: get(0).unwrap_or(0),
            end_ms,
            calls: get(2).and_then(|c| u64::try_from(c).ok()),
            used: get(3).and_then(|u| u64::try_from(u).ok()).unwrap_or(0),
        }))
    }
}

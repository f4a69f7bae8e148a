//! The memory store's plan periods ([`crate::store::PlanStore`]).

use super::*;

#[async_trait]
impl PlanStore for MemoryStore {
    async fn subscribe(&self, sub: &Subscription) -> Result<SubscribeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let r = Reservation {
            payer: sub.payer.clone(),
            issuer: sub.issuer.clone(),
            receipt_id: sub.receipt_id.clone(),
            ..Reservation::empty()
        };
        let until = sub.keep_until_ms.max(now + 1000);
        if s.owned_by_other(&sub.payer, &sub.issuer, &sub.receipt_id, until, now) {
            return Ok(SubscribeOutcome::ReceiptUsed);
        }
        let key = Self::receipt_key(&r);
        let period_key = (sub.payer.clone(), sub.plan.clone());
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Subscribed { event_id, .. }) => {
                return Ok(SubscribeOutcome::Duplicate {
                    event_id: event_id.clone(),
                    period_end_ms: s.subs.get(&period_key).map_or(0, |p| p.end_ms),
                });
            }
            Some(_) => return Ok(SubscribeOutcome::ReceiptUsed),
            None => {}
        }
        let period = rules::subscribe_period(
            s.subs.get(&period_key),
            sub.now_ms,
            sub.period_ms,
            sub.calls,
        );
        let period_end_ms = period.end_ms;
        s.subs.insert(period_key, period);
        let event_id = Self::record(&mut s, now, sub.event.clone());
        s.receipts.insert(
            key,
            ReceiptState::Subscribed {
                event_id: event_id.clone(),
                until_ms: until,
            },
        );
        Ok(SubscribeOutcome::Subscribed {
            event_id,
            period_end_ms,
        })
    }

    async fn subscription(
        &self,
        payer: &str,
        plan: &str,
    ) -> Result<Option<PlanPeriod>, StoreError> {
        Ok(self
            .lock()?
            .subs
            .get(&(payer.to_owned(), plan.to_owned()))
            .copied())
    }
}

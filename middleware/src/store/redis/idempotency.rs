//! The Redis store's request Idempotency-Key claims ([`crate::store::IdempotencyStore`]).

use super::*;

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn idempotency_claim(
        &self,
        c: &KeyClaim,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(&c.payer, &c.key))
            .arg("claim")
            .arg(fingerprint)
            .arg(&c.token)
            .arg(ms(ttl));
        let r: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        match r.first().map(String::as_str) {
            Some("claimed") => Ok(IdempotencyClaim::Claimed),
            Some("in_flight") => Ok(IdempotencyClaim::InFlight),
            Some("mismatch") => Ok(IdempotencyClaim::Mismatch),
            Some("done") => Ok(IdempotencyClaim::Done {
                event_id: r.get(1).cloned().unwrap_or_default(),
                time_ms: r.get(2).and_then(|t| t.parse().ok()).unwrap_or(0),
            }),
            _ => Err(StoreError::Protocol(format!(
                "idempotency script answered {r:?}"
            ))),
        }
    }

    async fn idempotency_finish(
        &self,
        c: &KeyClaim,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(&c.payer, &c.key));
        match done {
            Some((event_id, ms)) => inv.arg("done").arg(&c.token).arg(event_id).arg(ms),
            None => inv.arg("forget").arg(&c.token),
        };
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

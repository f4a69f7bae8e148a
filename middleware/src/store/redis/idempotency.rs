//! The Redis store's request Idempotency-Key claims ([`crate::store::IdempotencyStore`]).

use super::*;

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn idempotency_claim(
        &self,
        payer: &str,
        key: &str,
        fingerprint: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(payer, key))
            .arg("claim")
            .arg(fingerprint)
            .arg(token)
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
        payer: &str,
        key: &str,
        token: &str,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.idempotency.prepare_invoke();
        inv.key(self.request_idempotency_key(payer, key));
        match done {
            Some((event_id, time_ms)) => inv.arg("done").arg(token).arg(event_id).arg(time_ms),
            None => inv.arg("forget").arg(token),
        };
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }
}

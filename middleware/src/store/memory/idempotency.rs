//! The memory store's request Idempotency-Key claims ([`crate::store::IdempotencyStore`]).

use super::*;

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn idempotency_claim(
        &self,
        payer: &str,
        key: &str,
        fingerprint: &str,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let k = (payer.to_owned(), key.to_owned());
        if let Some(e) = s.idempotency.get(&k).filter(|e| e.until_ms > now) {
            return Ok(if e.fingerprint != fingerprint {
                IdempotencyClaim::Mismatch
            } else if let Some((event_id, time_ms)) = &e.done {
                IdempotencyClaim::Done {
                    event_id: event_id.clone(),
                    time_ms: *time_ms,
                }
            } else {
                IdempotencyClaim::InFlight
            });
        }
        s.idempotency.retain(|_, e| e.until_ms > now);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        s.idempotency.insert(
            k,
            IdempotencyEntry {
                fingerprint: fingerprint.to_owned(),
                token: token.to_owned(),
                done: None,
                until_ms: now.saturating_add(ttl_ms),
            },
        );
        Ok(IdempotencyClaim::Claimed)
    }

    async fn idempotency_finish(
        &self,
        payer: &str,
        key: &str,
        token: &str,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        let k = (payer.to_owned(), key.to_owned());
        let ours = s
            .idempotency
            .get(&k)
            .is_some_and(|e| e.token == token && e.done.is_none());
        if !ours {
            return Ok(());
        }
        match done {
            Some((event_id, time_ms)) => {
                if let Some(e) = s.idempotency.get_mut(&k) {
                    e.done = Some((event_id.to_owned(), time_ms));
                }
            }
            None => {
                s.idempotency.remove(&k);
            }
        }
        Ok(())
    }
}

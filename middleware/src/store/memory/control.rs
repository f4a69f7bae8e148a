//! The memory store's rate limits, blocks, health ([`crate::store::PayerControl`]).

use super::*;

#[async_trait]
impl PayerControl for MemoryStore {
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: crate::store::RateLimit,
    ) -> Result<Option<std::time::Duration>, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let interval = i64::try_from(limit.interval_ms()).unwrap_or(i64::MAX);
        let tolerance = i64::try_from(limit.tolerance_ms()).unwrap_or(i64::MAX);
        let tat = s
            .rates
            .get(&(payer.to_owned(), route.to_owned()))
            .copied()
            .unwrap_or(0)
            .max(now);
        let new_tat = tat + interval;
        let allow_at = new_tat - interval - tolerance;
        if allow_at > now {
            return Ok(Some(std::time::Duration::from_millis(
                u64::try_from(allow_at - now).unwrap_or(0),
            )));
        }
        s.rates
            .insert((payer.to_owned(), route.to_owned()), new_tat);
        Ok(None)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError> {
        let mut s = self.lock()?;
        if blocked {
            s.blocked.insert(payer.to_owned());
        } else {
            s.blocked.remove(payer);
        }
        Ok(())
    }
}

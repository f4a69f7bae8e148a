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
        let key = (payer.to_owned(), route.to_owned());
        let tat = s.rates.get(&key).copied().unwrap_or(0);
        match rules::gcra(tat, now, limit) {
            Ok(new_tat) => {
                s.rates.insert(key, new_tat);
                Ok(None)
            }
            Err(retry_ms) => Ok(Some(std::time::Duration::from_millis(retry_ms))),
        }
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

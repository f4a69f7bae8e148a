//! The Redis store's rate limits, blocks, health ([`crate::store::PayerControl`]).

use super::*;

#[async_trait]
impl PayerControl for RedisStore {
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: crate::store::RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.rate.prepare_invoke();
        inv.key(self.key(bucket_of(payer), &format!("rl:{route}:{payer}")))
            .arg(limit.interval_ms())
            .arg(limit.tolerance_ms());
        let (allowed, retry_ms): (i64, i64) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok((allowed == 0).then(|| Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0))))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let pong: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!("PING replied {pong:?}")))
        }
    }

    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let key = self.blocked_key(payer);
        let mut cmd = if blocked {
            redis::cmd("SET")
        } else {
            redis::cmd("DEL")
        };
        cmd.arg(&key);
        if blocked {
            cmd.arg("1");
        }
        let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn claim_once(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        // Bounded key size whatever the id (a jti is the client's choice).
        let digest: String = Sha256::digest(id.as_bytes())[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = self.key(bucket_of(id), &format!("once:{digest}"));
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .bounded(
                redis::cmd("SET")
                    .arg(&key)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }
}

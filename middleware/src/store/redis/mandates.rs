//! The Redis store's mandate revocation and use ([`crate::store::MandateStore`]).

use super::*;

#[async_trait]
impl MandateStore for RedisStore {
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError> {
        // Scripts read the marker in the payer's bucket; the payer is not known here, so the
        // marker goes to every bucket (16 small keys, once per revocation).
        let mut conn = self.connection().await?;
        for b in 0..BUCKETS {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.mandate_revoked_key(b, key))
                .arg("1")
                .arg("PX")
                .arg(crate::store::REVOKED_MANDATE_KEEP_MS);
            let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        }
        Ok(())
    }

    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError> {
        let mut conn = self.connection().await?;
        let index: Vec<(String, String)> = self
            .hgetall(&mut conn, &self.mandate_index_key(payer))
            .await?;
        let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        let mut out = Vec::new();
        for (key, summary) in index {
            let summary: serde_json::Value = serde_json::from_str(&summary).unwrap_or_default();
            let start = crate::store::mandate_window_start(&summary, now_ms);
            let window_key = self.key(bucket_of(payer), &format!("mw:{key}:{start}"));
            let window: Vec<(String, String)> = self.hgetall(&mut conn, &window_key).await?;
            let mut usage = MandateUse {
                spent_minor: 0,
                held_minor: 0,
                revoked: false,
            };
            for (f, v) in window {
                if f == "spent" {
                    usage.spent_minor = v.parse().unwrap_or(0);
                } else if f.starts_with("h:") {
                    let mut p = v.split('|');
                    let amount: u64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let until: i64 = p.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    if until > now {
                        usage.held_minor += amount;
                    }
                }
            }
            let revoked: i64 = self
                .bounded(
                    redis::cmd("EXISTS")
                        .arg(self.mandate_revoked_key(bucket_of(payer), &key))
                        .query_async(&mut conn),
                )
                .await?;
            usage.revoked = revoked == 1;
            out.push((summary, usage));
        }
        Ok(out)
    }
}

//! The memory store's mandate revocation and use ([`crate::store::MandateStore`]).

use super::*;

#[async_trait]
impl MandateStore for MemoryStore {
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError> {
        self.lock()?.revoked_mandates.insert(key.to_owned());
        Ok(())
    }

    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError> {
        let now = self.clock.now_ms();
        let s = self.lock()?;
        let mut out = Vec::new();
        for (key, summary) in s.mandates.get(payer).into_iter().flatten() {
            let summary: serde_json::Value = serde_json::from_str(summary).unwrap_or_default();
            let start = crate::store::mandate_window_start(&summary, now_ms);
            let (spent, held) = s
                .windows
                .get(&(key.clone(), start))
                .map(|w| {
                    let held = w
                        .holds
                        .values()
                        .filter(|(_, until)| *until > now)
                        .map(|(a, _)| *a)
                        .sum();
                    (w.spent, held)
                })
                .unwrap_or((0, 0));
            out.push((
                summary,
                MandateUse {
                    spent_minor: spent,
                    held_minor: held,
                    revoked: s.revoked_mandates.contains(key),
                },
            ));
        }
        Ok(out)
    }
}

//! The Redis store's hold extension ([`crate::store::HoldExtension`]): `lua/extend_hold.lua`,
//! one script on the payer's slot.

use super::*;

#[async_trait]
impl HoldExtension for RedisStore {
    async fn extend_hold(&self, h: &Hold, want_minor: u64) -> Result<HoldExtended, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.extend_hold.prepare_invoke();
        inv.key(self.account_key(&h.payer))
            .key(self.holds_key(&h.payer))
            .key(self.blocked_key(&h.payer))
            .arg(&h.id)
            .arg(want_minor);
        let (status, moved, held, bal): (String, i64, i64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let minor = |v: i64| u64::try_from(v).unwrap_or(0);
        match status.as_str() {
            "extended" => Ok(HoldExtended::Extended {
                moved_minor: minor(moved),
                held_minor: minor(held),
                balance_minor: minor(bal),
            }),
            "not_held" => Ok(HoldExtended::NotHeld),
            "blocked" => Ok(HoldExtended::PayerBlocked),
            other => Err(StoreError::Protocol(format!(
                "extend_hold answered {other:?}"
            ))),
        }
    }
}

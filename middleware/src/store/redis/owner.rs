//! Single use per (iss, jti), whatever the payer (see `lua/owner.lua`).
//!
//! A receipt's state key lives in its payer's hash slot (the scripts that hold and spend it
//! touch the payer's other keys atomically). The same (iss, jti) signed for another `sub`
//! would find a fresh state key in that payer's slot, so the first payer to present a receipt
//! is recorded under an *owner key* in the receipt's own slot: on one server inside the
//! spending script (no extra round trip), on a cluster by a call of its own just before.

use redis::ScriptInvocation;

use super::{Conn, RedisStore};
use crate::store::{bucket_of, Reservation, StoreError};

impl RedisStore {
    /// The owner key of (issuer, receipt id): in the slot named by the receipt's fingerprint.
    fn owner_key(&self, issuer: &str, receipt_id: &str) -> String {
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        self.key(bucket_of(&fp), &format!("ro:{fp}"))
    }

    /// Claim (issuer, receipt id) for `payer` before a script spends it. On one server the
    /// claim's key and arguments are put first in `inv` (owner.lua takes them off) and the
    /// script refuses the receipt itself: `Ok(false)`. On a cluster the claim is made now;
    /// `Ok(true)` when another payer presented the receipt first (refuse it).
    ///
    /// x402 authorizations are not claimed: their id is the payer's own EIP-3009 nonce, single
    /// use under the payer's address by definition.
    pub(super) async fn claim_owner(
        &self,
        conn: &mut Conn,
        inv: &mut ScriptInvocation<'_>,
        payer: &str,
        issuer: &str,
        receipt_id: &str,
        keep_until_ms: i64,
    ) -> Result<bool, StoreError> {
        if issuer == crate::x402::STORE_ISSUER {
            inv.arg("@none");
            return Ok(false);
        }
        let key = self.owner_key(issuer, receipt_id);
        if !self.options.cluster {
            inv.key(key).arg("@owner").arg(payer).arg(keep_until_ms);
            return Ok(false);
        }
        inv.arg("@none");
        let mut claim = self.scripts.claim_owner.prepare_invoke();
        claim.key(key).arg(payer).arg(keep_until_ms);
        let taken: i64 = self.bounded(claim.invoke_async(conn)).await?;
        Ok(taken == 1)
    }
}

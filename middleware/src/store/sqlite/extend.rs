//! The sqlite store's hold extension ([`crate::store::HoldExtension`]): one transaction, the
//! arithmetic [`crate::store::rules::extend_hold`], the order of checks `extend_hold.lua`'s.

use async_trait::async_trait;
use rusqlite::params;

use super::tx::rule;
use super::SqliteStore;
use crate::store::rules::{self, minor};
use crate::store::{Hold, HoldExtended, HoldExtension, StoreError};

#[async_trait]
impl HoldExtension for SqliteStore {
    async fn extend_hold(&self, h: &Hold, want_minor: u64) -> Result<HoldExtended, StoreError> {
        let (id, payer) = (h.id.clone(), h.payer.clone());
        self.run(move |t| {
            if t.blocked(&payer)? {
                return Ok(HoldExtended::PayerBlocked);
            }
            // A hold lives until settled or swept (expired or not), as in `renew`.
            let Some((currency, held)) = t.row(
                "SELECT currency, amount FROM holds WHERE id = ?1 AND payer = ?2",
                params![id, payer],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
            )?
            else {
                return Ok(HoldExtended::NotHeld);
            };
            let before = t.balance(&payer, &currency)?;
            let (after, moved) = rules::extend_hold(&before, want_minor).map_err(rule)?;
            let held_minor = held
                .checked_add(moved)
                .ok_or_else(|| rule(rules::RuleError::Overflow))?;
            if moved > 0 {
                t.set_balance(&payer, &currency, after)?;
                t.exec(
                    "UPDATE holds SET amount = ?2 WHERE id = ?1",
                    params![id, held_minor],
                )?;
            }
            Ok(HoldExtended::Extended {
                moved_minor: moved,
                held_minor,
                balance_minor: minor(after.available),
            })
        })
        .await
    }
}

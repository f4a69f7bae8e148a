//! Balance leases on sqlite ([`crate::store::LeaseStore`]): the steps of `lease.lua`, in one
//! transaction, with the arithmetic of [`crate::store::rules`]. An embedded store answers in
//! process anyway, so the gateway does not offer leases on it; the engine and the conformance
//! suite run on it all the same.

use async_trait::async_trait;
use rusqlite::params;

use super::tx::{rule, HoldRow};
use super::SqliteStore;
use crate::store::rules::{self, minor};
use crate::store::{
    LeaseResize, LeaseStatus, LeaseStore, LeaseSync, LeaseSynced, StoreError, UsageEvent,
};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn lease_sync(&self, s: &LeaseSync<'_>) -> Result<LeaseSynced, StoreError> {
        let now = self.now();
        let (id, payer, currency) = (
            s.lease_id.to_owned(),
            s.payer.to_owned(),
            s.currency.to_owned(),
        );
        let (seq, reserved, target, fit) = (
            s.seq,
            s.reserved_minor,
            s.target_minor,
            s.resize == LeaseResize::Fit,
        );
        let until = now.saturating_add(i64::try_from(s.ttl.as_millis()).unwrap_or(i64::MAX));
        let charges: Vec<UsageEvent> = s.charges.to_vec();
        self.run(move |t| {
            let blocked = t.blocked(&payer)?;
            let had = t.take_hold(&id)?.filter(|h| h.currency == currency);
            let mut lease = had.as_ref().map_or(0, |h| h.amount);
            let mut b = t.balance(&payer, &currency)?;
            let last: Option<u64> = t.row(
                "SELECT seq FROM lease_batches WHERE lease = ?1",
                [&id],
                |r| r.get(0),
            )?;
            let duplicate = !charges.is_empty() && last.is_some_and(|l| l >= seq);
            let (mut charged, mut recorded) = (0, 0usize);
            let mut short = Vec::new();
            if !duplicate {
                for e in &charges {
                    let (after, left, rest) =
                        rules::lease_charge(&b, lease, e.amount_minor).map_err(rule)?;
                    let event = UsageEvent {
                        amount_minor: e.amount_minor - rest,
                        uncharged_minor: rest,
                        ..e.clone()
                    };
                    t.record(now, &event)?;
                    recorded += 1;
                    charged += event.amount_minor;
                    if rest > 0 {
                        short.push((recorded - 1, rest));
                    }
                    (b, lease) = (after, left);
                }
            }
            let want = reserved.saturating_add(target);
            let (after, new) = rules::lease_resize(&b, lease, want, fit, blocked).map_err(rule)?;
            t.set_balance(&payer, &currency, after)?;
            if new > 0 {
                let row = HoldRow {
                    payer: payer.clone(),
                    currency: currency.clone(),
                    amount: new,
                };
                t.put_hold(&id, &row, until)?;
            }
            if !charges.is_empty() && !duplicate {
                t.exec(
                    "INSERT OR REPLACE INTO lease_batches (lease, seq) VALUES (?1, ?2)",
                    params![id, seq],
                )?;
            } else if charges.is_empty() && new == 0 {
                t.exec("DELETE FROM lease_batches WHERE lease = ?1", [&id])?;
            }
            // As the script: a block is reported first (the replica stops drawing at once).
            let status = if blocked {
                LeaseStatus::Blocked
            } else if duplicate {
                LeaseStatus::Duplicate
            } else {
                LeaseStatus::Ok
            };
            Ok(LeaseSynced {
                status,
                lease_minor: new,
                balance_minor: minor(after.available),
                had_lease: had.is_some(),
                charged_minor: charged,
                recorded: u64::try_from(recorded).unwrap_or(u64::MAX),
                short,
            })
        })
        .await
    }
}

//! The sqlite store's x402 `deferred` settlement queue ([`crate::store::SettlementQueue`]).

use crate::store::FromColumns;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::receipts::capture_receipt;
use super::SqliteStore;
use crate::store::{
    event_order, JobOutcome, Reservation, SettleOutcome, SettlementJob, SettlementQueue,
    StoreError, UsageEvent,
};

const JOB: &str = "SELECT id, payer, body, attempts, status, error FROM settlements";

#[async_trait]
impl SettlementQueue for SqliteStore {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let now = self.now();
        let (r, event, body) = (r.clone(), event.clone(), body.to_owned());
        // One transaction: exactly one job per captured authorization. x402 payments carry
        // no mandate; like `capture_deferred.lua`, none is spent here.
        self.run(move |t| {
            let outcome = capture_receipt(t, now, &r, &event, None)?;
            if let SettleOutcome::Captured { event_id } = &outcome {
                t.exec(
                    "INSERT INTO settlements (id, payer, body, attempts, status, error, due_ms) \
                     VALUES (?1, ?2, ?3, 0, 'queued', '', ?4)",
                    params![event_id, r.payer, body, now],
                )?;
            }
            Ok(outcome)
        })
        .await
    }

    async fn claim_settlements(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        let now = self.now();
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self.run(move |t| {
            let mut due = t.records(
                &format!("{JOB} WHERE status = 'queued' AND due_ms <= ?1"),
                [now],
                |r| SettlementJob::from_columns(r),
            )?;
            due.sort_by(|a, b| a.id.cmp(&b.id));
            due.truncate(limit);
            for j in &due {
                t.exec(
                    "UPDATE settlements SET due_ms = ?2 WHERE id = ?1",
                    params![j.id, now.saturating_add(lease)],
                )?;
            }
            Ok(due)
        })
        .await
    }

    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let (id, payer, outcome) = (job.id.clone(), job.payer.clone(), outcome.clone());
        self.run(move |t| {
            let queued = t
                .row("SELECT 1 FROM settlements WHERE id = ?1", [&id], |_| Ok(()))?
                .is_some();
            if !queued {
                return Ok(());
            }
            match &outcome {
                JobOutcome::Done => {
                    t.exec("DELETE FROM settlements WHERE id = ?1", [&id])?;
                }
                JobOutcome::Retry { after, error } => {
                    let after = i64::try_from(after.as_millis()).unwrap_or(0);
                    t.exec(
                        "UPDATE settlements SET attempts = attempts + 1, error = ?2, due_ms = ?3 \
                         WHERE id = ?1",
                        params![id, error, now.saturating_add(after)],
                    )?;
                }
                JobOutcome::Failed { error } => {
                    t.exec(
                        "UPDATE settlements SET attempts = attempts + 1, error = ?2, \
                         status = 'failed' WHERE id = ?1",
                        params![id, error],
                    )?;
                    // A settlement that failed for good blocks its payer.
                    t.set_blocked(&payer, true)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        self.run(|t| {
            let mut out = t.records(&format!("{JOB} WHERE status = 'failed'"), [], |r| {
                SettlementJob::from_columns(r)
            })?;
            out.sort_by_key(|j| event_order(&j.id));
            Ok(out)
        })
        .await
    }

    async fn queued_settlements(&self) -> Result<u64, StoreError> {
        self.run(|t| {
            let n = t.row(
                "SELECT count(*) FROM settlements WHERE status = 'queued'",
                [],
                |r| r.get::<_, i64>(0),
            )?;
            Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
        })
        .await
    }

    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |t| {
            let payer = t.row(
                "DELETE FROM settlements WHERE id = ?1 AND status = 'failed' RETURNING payer",
                [&id],
                |r| r.get::<_, String>(0),
            )?;
            let Some(payer) = payer else {
                return Ok(false);
            };
            let other = t
                .row(
                    "SELECT 1 FROM settlements WHERE status = 'failed' AND payer = ?1 LIMIT 1",
                    [&payer],
                    |_| Ok(()),
                )?
                .is_some();
            if !other {
                t.set_blocked(&payer, false)?;
            }
            Ok(true)
        })
        .await
    }
}

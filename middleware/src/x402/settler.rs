//! The background settler of x402 `deferred` payments.
//!
//! A served `deferred` payment is captured (its usage event recorded) and queued in the store
//! in one atomic step ([`crate::store::SettlementQueue::capture_deferred`]): one job per authorization. Every
//! gateway process runs a settler; each claims due jobs with a lease
//! ([`crate::store::SettlementQueue::claim_settlements`]), so two settlers never work on one job at once, and
//! asks the facilitator to settle it:
//!
//! - settled: the job is done (`tollgate_x402_settlements_total{outcome="settled"}`);
//! - no usable answer (timeout, 5xx, garbage, `settlement_pending`): retried with exponential
//!   backoff (`retry`), up to `max_attempts`;
//! - refused, or out of attempts: the job is kept as failed (`failed`), listed by the admin API,
//!   and its payer is blocked until an operator resolves it.
//!
//! A settler that dies mid-call leaves its job to the next one once the lease ends; if the
//! first call had landed, the chain refuses the second (`invalid_transaction_state`) and the
//! job is marked failed for an operator to check -- never settled twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::facilitator::{Facilitator, FacilitatorError};
use crate::store::{JobOutcome, SettlementJob, Store, StoreError};

/// Drives queued settlements to the facilitator.
#[derive(Debug, Clone)]
pub struct Settler {
    /// Where jobs are queued.
    pub store: Arc<dyn Store>,
    /// Who settles.
    pub facilitator: Arc<dyn Facilitator>,
    /// Pause between polls when there is nothing due.
    pub interval: Duration,
    /// First retry delay; doubled per attempt, capped at 5 minutes.
    pub retry_base: Duration,
    /// Attempts before a job fails for good.
    pub max_attempts: u32,
    /// How long a claimed job is not handed to another settler.
    pub lease: Duration,
    /// Where a failure is reported (`settlement.failed`, `payer.blocked`), when configured.
    pub webhooks: Option<crate::webhooks::Webhooks>,
}

impl Settler {
    /// A settler with the defaults: poll every second, retry from 1 s, 10 attempts, 60 s lease.
    pub fn new(store: Arc<dyn Store>, facilitator: Arc<dyn Facilitator>) -> Self {
        Settler {
            store,
            facilitator,
            interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            max_attempts: 10,
            lease: Duration::from_secs(60),
            webhooks: None,
        }
    }

    /// Run forever (spawn it).
    pub async fn run(self) {
        loop {
            match self.run_once().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "x402 settler: store unavailable; retrying"),
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Claim and settle the jobs due now; returns how many were handled.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let jobs = self.store.claim_settlements(32, self.lease).await?;
        let n = jobs.len();
        for job in jobs {
            let outcome = self.attempt(&job).await;
            let label = match &outcome {
                JobOutcome::Done => "settled",
                JobOutcome::Retry { .. } => "retry",
                JobOutcome::Failed { .. } => "failed",
            };
            crate::metrics::global()
                .x402_settlements
                .with_label_values(&[label])
                .inc();
            if let JobOutcome::Failed { error } = &outcome {
                tracing::error!(job = %job.id, payer = %job.payer, %error, "x402 settlement failed; payer blocked until resolved");
            }
            self.store.finish_settlement(&job, &outcome).await?;
            if let (JobOutcome::Failed { error }, Some(w)) = (&outcome, &self.webhooks) {
                report_failure(w, &job, error).await;
            }
        }
        Ok(n)
    }

    async fn attempt(&self, job: &SettlementJob) -> JobOutcome {
        let body: Value = match serde_json::from_str(&job.body) {
            Ok(v) => v,
            Err(_) => {
                return JobOutcome::Failed {
                    error: "unreadable job".into(),
                }
            }
        };
        match self
            .facilitator
            .settle(&body["payload"], &body["requirements"])
            .await
        {
            Ok(c) => {
                tracing::info!(job = %job.id, payer = %job.payer, transaction = %c.transaction, "x402 deferred payment settled");
                JobOutcome::Done
            }
            Err(FacilitatorError::Refused { reason }) => JobOutcome::Failed { error: reason },
            Err(e) => {
                let error = match &e {
                    FacilitatorError::Pending => "settlement_pending".to_owned(),
                    other => format!("unexpected_settle_error: {other}"),
                };
                if job.attempts + 1 >= self.max_attempts {
                    JobOutcome::Failed { error }
                } else {
                    let factor = 1u32 << job.attempts.min(16);
                    let after = self
                        .retry_base
                        .saturating_mul(factor)
                        .min(Duration::from_secs(300));
                    JobOutcome::Retry { after, error }
                }
            }
        }
    }
}

/// Webhooks for a settlement that failed for good: `settlement.failed` and `payer.blocked`
/// (the store blocked the payer in the same step), one id each per job.
async fn report_failure(w: &crate::webhooks::Webhooks, job: &SettlementJob, error: &str) {
    use crate::webhooks::EventKind;
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let failed = serde_json::json!({"payer": job.payer, "settlement": job.id, "error": error});
    let blocked = serde_json::json!({"payer": job.payer, "blocked": true, "by": "settlement", "settlement": job.id});
    let key = format!("settlement_{}", job.id);
    for (kind, data) in [
        (EventKind::SettlementFailed, failed),
        (EventKind::PayerBlocked, blocked),
    ] {
        if let Err(e) = w
            .notify(
                kind,
                &format!("{key}_{}", kind.name()),
                &job.payer,
                now,
                data,
            )
            .await
        {
            tracing::error!(job = %job.id, error = %e, kind = kind.name(), "webhook not written");
        }
    }
}

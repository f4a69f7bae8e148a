//! The memory store's the x402 deferred settlement queue ([`crate::store::SettlementQueue`]).

use super::*;

#[async_trait]
impl SettlementQueue for MemoryStore {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        // One critical section: exactly one job per captured authorization. x402 payments
        // carry no mandate; like `capture_deferred.lua`, none is spent here.
        let mut s = self.lock()?;
        let outcome = Self::capture_receipt(&mut s, now, r, event, None);
        if let SettleOutcome::Captured { event_id } = &outcome {
            s.jobs.insert(
                event_id.clone(),
                (
                    SettlementJob {
                        id: event_id.clone(),
                        payer: r.payer.clone(),
                        body: body.to_owned(),
                        attempts: 0,
                        status: "queued".into(),
                        error: String::new(),
                    },
                    now,
                ),
            );
        }
        Ok(outcome)
    }

    async fn claim_settlements(
        &self,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        let now = self.clock.now_ms();
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut s = self.lock()?;
        let mut out = Vec::new();
        for (job, due) in s.jobs.values_mut() {
            if out.len() >= limit {
                break;
            }
            if job.status == "queued" && *due <= now {
                *due = now.saturating_add(lease);
                out.push(job.clone());
            }
        }
        Ok(out)
    }

    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let block = match s.jobs.get_mut(&job.id) {
            None => false,
            Some(_) if *outcome == JobOutcome::Done => {
                s.jobs.remove(&job.id);
                false
            }
            Some((j, due)) => {
                j.attempts += 1;
                match outcome {
                    JobOutcome::Retry { after, error } => {
                        j.error = error.clone();
                        *due = now.saturating_add(i64::try_from(after.as_millis()).unwrap_or(0));
                        false
                    }
                    JobOutcome::Failed { error } => {
                        j.error = error.clone();
                        j.status = "failed".into();
                        true
                    }
                    JobOutcome::Done => false,
                }
            }
        };
        if block {
            s.blocked.insert(job.payer.clone());
        }
        Ok(())
    }

    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        let s = self.lock()?;
        let mut out: Vec<SettlementJob> = s
            .jobs
            .values()
            .filter(|(j, _)| j.status == "failed")
            .map(|(j, _)| j.clone())
            .collect();
        out.sort_by_key(|j| event_order(&j.id));
        Ok(out)
    }

    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        let mut s = self.lock()?;
        let payer = match s.jobs.get(id) {
            Some((j, _)) if j.status == "failed" => j.payer.clone(),
            _ => return Ok(false),
        };
        s.jobs.remove(id);
        let other = s
            .jobs
            .values()
            .any(|(j, _)| j.status == "failed" && j.payer == payer);
        if !other {
            s.blocked.remove(&payer);
        }
        Ok(true)
    }
}

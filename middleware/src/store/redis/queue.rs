//! The Redis store's the x402 deferred settlement queue ([`crate::store::SettlementQueue`]).

use super::*;

#[async_trait]
impl SettlementQueue for RedisStore {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        event: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let b = r.bucket();
        let day = utc_day(event.time_ms);
        let mut inv = self.scripts.capture_deferred.prepare_invoke();
        self.usage_options(&mut inv);
        inv.key(self.receipt_key(r))
            .key(self.events_key(b))
            .key(self.payer_agg_key(&r.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:due"))
            .key(self.payer_totals_key(b, &day))
            .arg(&r.id)
            .arg(r.spent_until_ms)
            .arg(&r.payer)
            .arg(body);
        Self::usage_args(&mut inv, event, event);
        let (status, id): (String, String) = self.bounded(inv.invoke_async(&mut conn)).await?;
        Self::captured("capture_deferred", b, &status, &id)
    }

    async fn claim_settlements(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            if out.len() >= limit {
                break;
            }
            let mut inv = self.scripts.claim_settlements.prepare_invoke();
            inv.key(self.key(b, "x402:due"))
                .key(self.key(b, "x402:jobs"))
                .arg(ms(lease))
                .arg(limit - out.len());
            let reply: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
            for pair in reply.chunks(2) {
                if let [id, raw] = pair {
                    out.push(parse_job(Self::ledger_id(b, id), raw)?);
                }
            }
        }
        Ok(out)
    }

    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let (stream, b) = split_job_id(&job.id)?;
        let (kind, delay, error) = match outcome {
            JobOutcome::Done => ("done", 0, ""),
            JobOutcome::Retry { after, error } => ("retry", ms(*after), error.as_str()),
            JobOutcome::Failed { error } => ("failed", 0, error.as_str()),
        };
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.finish_settlement.prepare_invoke();
        inv.key(self.key(b, "x402:due"))
            .key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:failed"))
            .key(self.blocked_key(&job.payer))
            .arg(stream)
            .arg(kind)
            .arg(delay)
            .arg(error);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let ids: Vec<String> = self
                .bounded(
                    redis::cmd("SMEMBERS")
                        .arg(self.key(b, "x402:failed"))
                        .query_async(&mut conn),
                )
                .await?;
            for id in ids {
                let raw: Option<String> = self
                    .bounded(
                        redis::cmd("HGET")
                            .arg(self.key(b, "x402:jobs"))
                            .arg(&id)
                            .query_async(&mut conn),
                    )
                    .await?;
                if let Some(raw) = raw {
                    out.push(parse_job(Self::ledger_id(b, &id), &raw)?);
                }
            }
        }
        out.sort_by_key(|j| event_order(&j.id));
        Ok(out)
    }

    async fn queued_settlements(&self) -> Result<u64, StoreError> {
        // Every waiting job is in its bucket's due set (a failed one leaves it).
        let mut conn = self.connection().await?;
        let mut n = 0;
        for b in 0..BUCKETS {
            let c: u64 = self
                .bounded(
                    redis::cmd("ZCARD")
                        .arg(self.key(b, "x402:due"))
                        .query_async(&mut conn),
                )
                .await?;
            n += c;
        }
        Ok(n)
    }

    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        let (stream, b) = split_job_id(id)?;
        let mut conn = self.connection().await?;
        let raw: Option<String> = self
            .bounded(
                redis::cmd("HGET")
                    .arg(self.key(b, "x402:jobs"))
                    .arg(stream)
                    .query_async(&mut conn),
            )
            .await?;
        let Some(raw) = raw else {
            return Ok(false);
        };
        let job = parse_job(id.to_owned(), &raw)?;
        let mut inv = self.scripts.resolve_settlement.prepare_invoke();
        inv.key(self.key(b, "x402:jobs"))
            .key(self.key(b, "x402:failed"))
            .key(self.blocked_key(&job.payer))
            .arg(stream)
            .arg(&job.payer);
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }
}

//! The Redis store's the usage ledger and what is derived from it ([`crate::store::LedgerStore`]).

use super::*;

#[async_trait]
impl LedgerStore for RedisStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut rows = BTreeMap::new();
        for day in &days {
            let keys: Vec<String> = match payer {
                Some(p) => vec![self.payer_agg_key(p, day)],
                None => (0..BUCKETS).map(|b| self.bucket_agg_key(b, day)).collect(),
            };
            for key in keys {
                let fields: Vec<(String, i64)> = self
                    .bounded(redis::cmd("HGETALL").arg(key).query_async(&mut conn))
                    .await?;
                fold_aggregates(day, &fields, &mut rows);
            }
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut out = BTreeMap::new();
        for day in &days {
            for bucket in 0..BUCKETS {
                let fields: Vec<(String, i64)> = self
                    .bounded(
                        redis::cmd("HGETALL")
                            .arg(self.payer_totals_key(bucket, day))
                            .query_async(&mut conn),
                    )
                    .await?;
                fold_payer_totals(&fields, &mut out);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let mut conn = self.connection().await?;
        let cursor = after.map(event_order);
        let mut out = Vec::new();
        for bucket in 0..BUCKETS {
            // Within a bucket, stream ids order events; across buckets the bucket breaks ties.
            let start = match cursor {
                None => "-".to_owned(),
                Some((ms, seq, b)) if bucket > b => format!("{ms}-{seq}"),
                Some((ms, seq, _)) => format!("({ms}-{seq}"),
            };
            let page: Vec<(String, Vec<(String, String)>)> = self
                .bounded(
                    redis::cmd("XRANGE")
                        .arg(self.events_key(bucket))
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?;
            for (id, fields) in page {
                out.push(UsageEvent::from_fields(
                    Self::ledger_id(bucket, &id),
                    &fields,
                )?);
            }
        }
        out.sort_by_key(|e| event_order(&e.id));
        out.truncate(limit);
        Ok(out)
    }
}

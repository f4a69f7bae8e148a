//! The memory store's the usage ledger and what is derived from it ([`crate::store::LedgerStore`]).

use super::*;

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let days = days_between(from, to)?;
        let s = self.lock()?;
        let mut rows = BTreeMap::new();
        for ((day, p), fields) in &s.aggregates {
            if days.contains(day) && payer.is_none_or(|want| want == p) {
                let f: Vec<(String, i64)> = fields.iter().map(|(k, v)| (k.clone(), *v)).collect();
                fold_aggregates(day, &f, &mut rows);
            }
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let days = days_between(from, to)?;
        let s = self.lock()?;
        let mut out = BTreeMap::new();
        for ((day, p), fields) in &s.aggregates {
            if !days.contains(day) {
                continue;
            }
            let mut rows = BTreeMap::new();
            let f: Vec<(String, i64)> = fields.iter().map(|(k, v)| (k.clone(), *v)).collect();
            fold_aggregates(day, &f, &mut rows);
            let total = out.entry(p.clone()).or_insert_with(|| PayerSpend {
                payer: p.clone(),
                ..Default::default()
            });
            for row in rows.into_values() {
                total.requests += row.requests;
                for (c, m) in row.amount_minor {
                    *total.amount_minor.entry(c).or_default() += m;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let s = self.lock()?;
        let from = after.map(event_order);
        Ok(s.events
            .iter()
            .filter(|e| from.is_none_or(|f| event_order(&e.id) > f))
            .take(limit)
            .cloned()
            .collect())
    }
}

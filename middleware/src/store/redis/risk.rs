//! Risk rules on Redis (see [`crate::risk`]): the new-payer cap in the issuer's slot
//! (`lua/risk_new.lua`), then every payer rule in the payer's slot (`lua/risk.lua`), which also
//! logs the hits (`rk:log`, a stream per bucket, about the last 10,000) and blocks.

use super::*;
use crate::risk::{
    new_payer_names, outcome, RiskAction, RiskCheck, RiskDecision, RiskHit, RiskKind, RiskOutcome,
    SEEN_FOR_MS,
};

fn severity(a: RiskAction) -> u8 {
    match a {
        RiskAction::Flag => 1,
        RiskAction::Refuse => 2,
        RiskAction::Block => 3,
    }
}

#[async_trait]
impl crate::store::RiskStore for RedisStore {
    async fn risk(&self, c: &RiskCheck<'_>) -> Result<RiskOutcome, StoreError> {
        let mut conn = self.connection().await?;
        let mut hits = Vec::new();
        let mut worst = 0u8;
        for rule in c.rules {
            let RiskKind::NewPayers { limit } = rule.kind else {
                continue;
            };
            let (seen, count) = new_payer_names(rule, c.issuer, c.payer, c.now_ms);
            let b = bucket_of(c.issuer);
            let mut inv = self.scripts.risk_new.prepare_invoke();
            inv.key(self.key(b, &seen))
                .key(self.key(b, &count))
                .arg(limit)
                .arg(SEEN_FOR_MS);
            let (_, hit, value): (i64, i64, u64) =
                self.bounded(inv.invoke_async(&mut conn)).await?;
            if hit == 1 {
                worst = worst.max(severity(rule.action));
                hits.push(RiskHit {
                    rule: rule.id.clone(),
                    action: rule.action,
                    value,
                    limit,
                });
            }
        }
        let rules: Vec<_> = c
            .rules
            .iter()
            .filter(|r| !matches!(r.kind, RiskKind::NewPayers { .. }))
            .collect();
        if rules.is_empty() && hits.is_empty() {
            return Ok(outcome(c, hits));
        }
        let b = bucket_of(c.payer);
        let mut inv = self.scripts.risk.prepare_invoke();
        inv.key(self.key(b, "rk:log"))
            .key(self.blocked_key(c.payer));
        for r in &rules {
            inv.key(self.key(b, &r.counter_name(c.payer, c.now_ms)));
        }
        inv.arg(c.now_ms)
            .arg(c.payer)
            .arg(c.route)
            .arg(c.amount_minor)
            .arg(c.currency)
            .arg(worst)
            .arg(hits.len());
        for h in &hits {
            inv.arg(&h.rule)
                .arg(h.action.name())
                .arg(h.value)
                .arg(h.limit);
        }
        inv.arg(rules.len());
        for r in &rules {
            let (limit, currency, factor, base) = match &r.kind {
                RiskKind::Requests { limit, .. } => (*limit, "", 0, 0),
                RiskKind::Spend {
                    limit_minor,
                    currency,
                    ..
                } => (*limit_minor, currency.as_str(), 0, 0),
                RiskKind::Spike {
                    factor,
                    min_baseline_minor,
                    currency,
                } => (0, currency.as_str(), *factor, *min_baseline_minor),
                RiskKind::NewPayers { .. } => (0, "", 0, 0),
            };
            inv.arg(&r.id)
                .arg(r.kind_name())
                .arg(r.action.name())
                .arg(limit)
                .arg(r.window_ms())
                .arg(currency)
                .arg(factor)
                .arg(base);
        }
        let flat: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let hits = flat
            .chunks(4)
            .filter_map(|h| match h {
                [rule, action, value, limit] => Some(RiskHit {
                    rule: rule.clone(),
                    action: RiskAction::from_name(action),
                    value: value.parse().unwrap_or(0),
                    limit: limit.parse().unwrap_or(0),
                }),
                _ => None,
            })
            .collect();
        Ok(outcome(c, hits))
    }

    async fn risk_decisions(&self, limit: usize) -> Result<Vec<RiskDecision>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let entries: Vec<(String, Vec<(String, String)>)> = self
                .bounded(
                    redis::cmd("XREVRANGE")
                        .arg(self.key(b, "rk:log"))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn),
                )
                .await?;
            for (_, fields) in entries {
                let f = crate::store::event::Fields::new("risk decision", "", &fields);
                out.push(RiskDecision::from_columns(&f)?);
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.time_ms));
        out.truncate(limit);
        Ok(out)
    }
}

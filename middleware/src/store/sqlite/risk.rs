//! Risk rules on sqlite (see [`crate::risk`]): the steps of `risk_new.lua` and `risk.lua` in
//! one transaction, with the arithmetic of [`crate::risk::evaluate`].

use crate::store::FromColumns;
use rusqlite::params;

use super::tx::Tx;
use super::SqliteStore;
use crate::risk::{
    evaluate, new_payer_names, outcome, Counter, RiskAction, RiskCheck, RiskDecision, RiskHit,
    RiskKind, RiskOutcome, SEEN_FOR_MS,
};
use crate::store::StoreError;

/// The tables (created within schema version 1: tables an older tollgate never reads).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS risk_counters (
    name TEXT PRIMARY KEY, value INTEGER NOT NULL, until_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS risk_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, payer TEXT NOT NULL,
    route TEXT NOT NULL, rule TEXT NOT NULL, action TEXT NOT NULL, value INTEGER NOT NULL,
    lim INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS risk_log_by_time ON risk_log (time_ms, n);
";

type R<T> = Result<T, StoreError>;

impl Tx<'_> {
    fn counter(&self, name: &str, now: i64) -> R<Option<u64>> {
        self.row(
            "SELECT value FROM risk_counters WHERE name = ?1 AND until_ms > ?2",
            params![name, now],
            |r| r.get(0),
        )
    }

    fn add(&self, name: &str, by: u64, now: i64, until: i64) -> R<()> {
        let had = self.counter(name, now)?.unwrap_or(0);
        self.exec(
            "INSERT OR REPLACE INTO risk_counters (name, value, until_ms) VALUES (?1, ?2, ?3)",
            params![name, had.saturating_add(by), until],
        )
        .map(drop)
    }
}

fn hour_name(base: &str, hour: i64) -> String {
    format!("{base}|{hour}")
}

#[async_trait::async_trait]
impl crate::store::RiskStore for SqliteStore {
    async fn risk(&self, c: &RiskCheck<'_>) -> R<RiskOutcome> {
        let (payer, issuer, route, currency) = (
            c.payer.to_owned(),
            c.issuer.to_owned(),
            c.route.to_owned(),
            c.currency.to_owned(),
        );
        let (amount, now, rules) = (c.amount_minor, c.now_ms, c.rules.to_vec());
        let hits = self
            .run(move |t| {
                let c = RiskCheck {
                    payer: &payer,
                    issuer: &issuer,
                    route: &route,
                    currency: &currency,
                    amount_minor: amount,
                    now_ms: now,
                    rules: &rules,
                };
                // A blocked payer is refused by its block, not by the rules (as in risk.lua).
                if t.blocked(&payer)? {
                    return Ok(Vec::new());
                }
                let hour = crate::risk::hour_of(now);
                // The issuer's side first (as on Redis): a new payer within the cap is counted.
                let mut counters = Vec::new();
                let mut new_hits = Vec::new();
                for rule in &rules {
                    counters.push(match &rule.kind {
                        RiskKind::NewPayers { limit } => {
                            let (seen, count) = new_payer_names(rule, &issuer, &payer, now);
                            if t.counter(&seen, now)?.is_none() {
                                let value = t.counter(&count, now)?.unwrap_or(0) + 1;
                                if value > *limit {
                                    new_hits.push(RiskHit {
                                        rule: rule.id.clone(),
                                        action: rule.action,
                                        value,
                                        limit: *limit,
                                    });
                                } else {
                                    t.add(&seen, 1, now, now + SEEN_FOR_MS)?;
                                    t.add(&count, 1, now, now + 120_000)?;
                                }
                            }
                            Counter::New(false, 0)
                        }
                        RiskKind::Spike { .. } => {
                            let base = rule.counter_name(&payer, now);
                            let mut before = 0u64;
                            for h in hour - 24..hour {
                                before += t.counter(&hour_name(&base, h), now)?.unwrap_or(0);
                            }
                            let this = t.counter(&hour_name(&base, hour), now)?.unwrap_or(0);
                            Counter::Hours(this, before)
                        }
                        _ => Counter::Window(
                            t.counter(&rule.counter_name(&payer, now), now)?
                                .unwrap_or(0),
                        ),
                    });
                }
                let mut hits = new_hits;
                hits.extend(evaluate(&c, &counters).hits);
                let worst = hits.iter().map(|h| h.action).max();
                match worst {
                    None | Some(RiskAction::Flag) => {
                        for rule in &rules {
                            let name = rule.counter_name(&payer, now);
                            let until = crate::risk::window_start(now, rule.window_ms())
                                + rule.window_ms()
                                + 60_000;
                            match &rule.kind {
                                RiskKind::Requests { .. } => t.add(&name, 1, now, until)?,
                                RiskKind::Spend { currency: cur, .. } if *cur == currency => {
                                    t.add(&name, amount, now, until)?
                                }
                                RiskKind::Spike { currency: cur, .. } if *cur == currency => t
                                    .add(
                                        &hour_name(&name, hour),
                                        amount,
                                        now,
                                        now + 26 * 3_600_000,
                                    )?,
                                _ => {}
                            }
                        }
                    }
                    Some(RiskAction::Block) => t.set_blocked(&payer, true)?,
                    Some(RiskAction::Refuse) => {}
                }
                for h in &hits {
                    t.exec(
                        "INSERT INTO risk_log (time_ms, payer, route, rule, action, value, lim) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![now, payer, route, h.rule, h.action.name(), h.value, h.limit],
                    )?;
                }
                Ok(hits)
            })
            .await?;
        Ok(outcome(c, hits))
    }

    async fn risk_decisions(&self, limit: usize) -> R<Vec<RiskDecision>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            t.records(
                "SELECT time_ms, payer, route, rule, action, value, lim AS \"limit\" FROM risk_log \
                 ORDER BY time_ms DESC, n DESC LIMIT ?1",
                params![limit],
                |r| RiskDecision::from_columns(r),
            )
        })
        .await
    }
}

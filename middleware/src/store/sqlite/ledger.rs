//! The sqlite store's usage ledger and what is derived from it ([`crate::store::LedgerStore`]).

use crate::store::FromColumns;
use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{
    days_between, event_order, fold_aggregates, DailyUsage, EventPage, LedgerStore, PayerSpend,
    StoreError, UsageEvent,
};

/// The aggregates of days `from..=to`: (day, payer) -> fields.
type Aggregates = BTreeMap<(String, String), Vec<(String, i64)>>;

impl SqliteStore {
    async fn aggregates(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Aggregates, StoreError> {
        let days = days_between(from, to)?;
        let (first, last) = match (days.first(), days.last()) {
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            _ => return Ok(BTreeMap::new()),
        };
        let payer = payer.map(str::to_owned);
        self.run(move |t| {
            let rows = t.rows(
                "SELECT day, payer, field, value FROM aggregates \
                 WHERE day BETWEEN ?1 AND ?2 AND (?3 IS NULL OR payer = ?3) \
                 ORDER BY day, payer, field",
                params![first, last, payer],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )?;
            let mut out: Aggregates = BTreeMap::new();
            for (day, payer, field, value) in rows {
                out.entry((day, payer)).or_default().push((field, value));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let mut rows = BTreeMap::new();
        for ((day, _), fields) in self.aggregates(payer, from, to).await? {
            fold_aggregates(&day, &fields, &mut rows);
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let mut out = BTreeMap::new();
        for ((day, p), fields) in self.aggregates(None, from, to).await? {
            let mut rows = BTreeMap::new();
            fold_aggregates(&day, &fields, &mut rows);
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

    async fn events(&self, page: EventPage<'_>) -> Result<Vec<UsageEvent>, StoreError> {
        match page {
            // One sequence, recorded as bucket 0.
            EventPage::After { after, limit }
            | EventPage::Bucket {
                bucket: 0,
                after,
                limit,
            } => {
                // Ids are `<ms>-<seq>-0` with both parts non-decreasing: `seq` orders the ledger.
                let after_seq = after.map_or(0, |id| event_order(id).1);
                let after_seq = i64::try_from(after_seq).unwrap_or(i64::MAX);
                self.events_where("seq > ?1 ORDER BY seq", after_seq, limit)
                    .await
            }
            EventPage::Bucket { .. } => Ok(Vec::new()),
            EventPage::Before { before, limit } => {
                let before_seq = before.map_or(u64::MAX, |id| event_order(id).1);
                let before_seq = i64::try_from(before_seq).unwrap_or(i64::MAX);
                self.events_where("seq < ?1 ORDER BY seq DESC", before_seq, limit)
                    .await
            }
            EventPage::Payer {
                payer,
                before,
                limit,
            } => {
                let before_seq = before.map_or(u64::MAX, |id| event_order(id).1);
                let before_seq = i64::try_from(before_seq).unwrap_or(i64::MAX);
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let payer = payer.to_owned();
                self.run(move |t| {
                    t.records(
                        &format!(
                            "SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_by_payer_seq \
                             WHERE payer = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
                        ),
                        params![payer, before_seq, limit],
                        |r| UsageEvent::from_columns(r),
                    )
                })
                .await
            }
        }
    }
}

impl SqliteStore {
    /// Events `WHERE <clause>` (`?1`: `seq`, then the `LIMIT`).
    async fn events_where(
        &self,
        clause: &'static str,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            t.records(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE {clause} LIMIT ?2"),
                params![seq, limit],
                |r| UsageEvent::from_columns(r),
            )
        })
        .await
    }
}

/// The columns [`UsageEvent::from_columns`] reads.
pub(super) const EVENT_COLUMNS: &str =
    "id, time_ms, payer, route, method, units, unit_prices, currency, \
    scale, amount_minor, uncharged_minor, credential, reservation, upstream_status, voids";

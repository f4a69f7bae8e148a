//! The sqlite store's usage ledger and what is derived from it ([`crate::store::LedgerStore`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::store::{
    days_between, event_order, fold_aggregates, DailyUsage, LedgerStore, PayerSpend, StoreError,
    UsageEvent,
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

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        // Ids are `<ms>-<seq>-0` with both parts non-decreasing: `seq` orders the ledger.
        let after_seq = after.map_or(0, |id| event_order(id).1);
        let after_seq = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.events_where("seq > ?1 ORDER BY seq", after_seq, limit)
            .await
    }

    async fn bucket_events_after(
        &self,
        bucket: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        // One sequence, recorded as bucket 0.
        if bucket != 0 {
            return Ok(Vec::new());
        }
        self.events_after(after, limit).await
    }

    async fn events_before(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let before_seq = before.map_or(u64::MAX, |id| event_order(id).1);
        let before_seq = i64::try_from(before_seq).unwrap_or(i64::MAX);
        self.events_where("seq < ?1 ORDER BY seq DESC", before_seq, limit)
            .await
    }

    async fn payer_events(
        &self,
        payer: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let before_seq = before.map_or(u64::MAX, |id| event_order(id).1);
        let before_seq = i64::try_from(before_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let payer = payer.to_owned();
        self.run(move |t| {
            t.rows(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_by_payer_seq \
                     WHERE payer = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
                ),
                params![payer, before_seq, limit],
                event_row,
            )
        })
        .await
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
            t.rows(
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE {clause} LIMIT ?2"),
                params![seq, limit],
                event_row,
            )
        })
        .await
    }
}

/// The columns [`event_row`] reads, in its order.
pub(super) const EVENT_COLUMNS: &str =
    "id, time_ms, payer, route, method, units, unit_prices, currency, \
    scale, amount_minor, uncharged_minor, credential, reservation, upstream_status, voids";

/// A usage event from a row of [`EVENT_COLUMNS`].
pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageEvent> {
    let units: String = r.get(5)?;
    let prices: String = r.get(6)?;
    Ok(UsageEvent {
        id: r.get(0)?,
        time_ms: r.get(1)?,
        payer: r.get(2)?,
        route: r.get(3)?,
        method: r.get(4)?,
        units: serde_json::from_str(&units).unwrap_or_default(),
        unit_prices: serde_json::from_str(&prices).unwrap_or_default(),
        currency: r.get(7)?,
        scale: r.get(8)?,
        amount_minor: r.get(9)?,
        uncharged_minor: r.get(10)?,
        credential: r.get(11)?,
        reservation: r.get(12)?,
        upstream_status: r.get(13)?,
        voids: r.get(14)?,
    })
}

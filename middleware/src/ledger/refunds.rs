//! Refunds in the ledger of record: the drainer's inserts into `ledger_refunds` (migration
//! 4), the look-ups a refund needs once its charge was drained and trimmed from Redis (the
//! charge and whether it was voided), the refund listings, and revenue net of refunds for the
//! admin API (on the charge's day, as the Redis aggregates move it).

use crate::store::FromColumns;
use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::postgres::{minor, to_i32, to_i64, PG_EVENT_COLUMNS};
use super::{LedgerError, PgLedger};
use crate::store::{
    event_order, DailyUsage, PayerSpend, RefundQuery, RefundRecord, RefundTarget, StoreError,
    UsageEvent,
};

const INSERT_REFUNDS: &str = "
INSERT INTO ledger_refunds (id, time_ms, event_id, charge_time_ms, payer, route, credential,
                            currency, scale, amount_minor, reason, owed_to, credit_id,
                            remaining_minor)
SELECT id, time_ms, event_id, charge_time_ms, payer, route, credential, currency, scale,
       amount::NUMERIC, reason, owed_to, credit_id, remaining::NUMERIC
FROM unnest($1::TEXT[], $2::INT8[], $3::TEXT[], $4::INT8[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
            $8::TEXT[], $9::INT4[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[],
            $14::TEXT[])
     AS t(id, time_ms, event_id, charge_time_ms, payer, route, credential, currency, scale,
          amount, reason, owed_to, credit_id, remaining)
ON CONFLICT (id) DO NOTHING";

/// The columns [`RefundRecord::from_columns`] reads (by name: a cast keeps the name).
const REFUND_COLUMNS: &str = "id, time_ms, event_id, charge_time_ms, payer, route, credential,
    currency, scale, amount_minor::TEXT, reason, owed_to, credit_id, remaining_minor::TEXT";

impl PgLedger {
    /// Insert refunds read from a Redis stream, each at most once (one statement).
    pub(super) async fn insert_refunds(
        &self,
        client: &Client,
        refunds: &[&RefundRecord],
    ) -> Result<u64, LedgerError> {
        let ids: Vec<&str> = refunds.iter().map(|r| r.id.as_str()).collect();
        let times: Vec<i64> = refunds.iter().map(|r| r.time_ms).collect();
        let events: Vec<&str> = refunds.iter().map(|r| r.event_id.as_str()).collect();
        let charge_times: Vec<i64> = refunds.iter().map(|r| r.charge_time_ms).collect();
        let payers: Vec<&str> = refunds.iter().map(|r| r.payer.as_str()).collect();
        let routes: Vec<&str> = refunds.iter().map(|r| r.route.as_str()).collect();
        let credentials: Vec<&str> = refunds.iter().map(|r| r.credential.as_str()).collect();
        let currencies: Vec<&str> = refunds.iter().map(|r| r.currency.as_str()).collect();
        let scales: Vec<i32> = refunds.iter().map(|r| to_i32(r.scale)).collect();
        let amounts: Vec<String> = refunds.iter().map(|r| r.amount_minor.to_string()).collect();
        let reasons: Vec<&str> = refunds.iter().map(|r| r.reason.as_str()).collect();
        let owed: Vec<Option<&str>> = refunds.iter().map(|r| r.owed_to.as_deref()).collect();
        let credits: Vec<Option<&str>> = refunds.iter().map(|r| r.credit_id.as_deref()).collect();
        let remaining: Vec<String> = refunds
            .iter()
            .map(|r| r.remaining_minor.to_string())
            .collect();
        self.bounded(async {
            Ok(client
                .execute(
                    INSERT_REFUNDS,
                    &[
                        &ids,
                        &times,
                        &events,
                        &charge_times,
                        &payers,
                        &routes,
                        &credentials,
                        &currencies,
                        &scales,
                        &amounts,
                        &reasons,
                        &owed,
                        &credits,
                        &remaining,
                    ],
                )
                .await?)
        })
        .await
    }

    /// The ledger entry `id` and whether a void of it is recorded (`None`: not in the ledger).
    pub async fn refund_target(&self, id: &str) -> Result<Option<RefundTarget>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {PG_EVENT_COLUMNS}, EXISTS (SELECT 1 FROM ledger_events v
                                                       WHERE v.voids = $1)
                     FROM ledger_events WHERE id = $1"
                ),
                &[&id],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let event = UsageEvent::from_columns(r)?;
        let voided: bool = r.try_get(15).map_err(LedgerError::from)?;
        Ok(Some(RefundTarget { event, voided }))
    }

    /// Whether the ledger records a void of `charge`.
    pub async fn void_recorded(&self, charge: &UsageEvent) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "SELECT 1 FROM ledger_events WHERE voids = $1 LIMIT 1",
                &[&charge.id],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Refunds newest first, filtered as `q` says.
    pub async fn refunds(&self, q: &RefundQuery) -> Result<Vec<RefundRecord>, StoreError> {
        let (ms, seq, bucket) = q
            .before
            .as_deref()
            .map_or((i64::MAX, i64::MAX, i64::MAX), |a| {
                let (ms, seq, b) = event_order(a);
                (to_i64(ms), to_i64(seq), to_i64(b))
            });
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &format!(
                    "SELECT {REFUND_COLUMNS} FROM ledger_refunds
                     WHERE (id_ms, id_seq, id_bucket) < ($1, $2, $3::INT8)
                       AND ($5::TEXT IS NULL OR payer = $5)
                       AND ($6::BOOL IS NULL OR (owed_to IS NOT NULL) = $6)
                     ORDER BY id_ms DESC, id_seq DESC, id_bucket DESC LIMIT $4"
                ),
                &[&ms, &seq, &bucket, &limit, &q.payer, &q.owed],
            )
            .await?;
        rows.iter().map(RefundRecord::from_columns).collect()
    }

    /// Refunds of charges made on `from..=to` (`yyyymmdd`), by (day, route or payer, currency).
    async fn refunded(
        &self,
        by: &str,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, String, String, u64)>, LedgerError> {
        let rows = self
            .query(
                &format!(
                    "SELECT to_char(charge_day, 'YYYYMMDD'), {by}, currency,
                            sum(amount_minor)::TEXT
                     FROM ledger_refunds
                     WHERE charge_day BETWEEN to_date($1, 'YYYYMMDD') AND to_date($2, 'YYYYMMDD')
                       AND ($3::TEXT IS NULL OR payer = $3)
                     GROUP BY charge_day, {by}, currency"
                ),
                &[&from, &to, &payer],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let amount: String = r.try_get(3)?;
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, minor(&amount)?))
            })
            .collect()
    }

    /// Daily usage rows less the refunds of their charges (the amount only).
    pub(super) async fn net_of_refunds(
        &self,
        rows: &mut BTreeMap<(String, String), DailyUsage>,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<(), LedgerError> {
        for (day, route, currency, amount) in self.refunded("route", payer, from, to).await? {
            if let Some(a) = rows
                .get_mut(&(day, route))
                .and_then(|d| d.amount_minor.get_mut(&currency))
            {
                *a = a.saturating_sub(amount);
            }
        }
        Ok(())
    }

    /// Payer totals less the refunds of their charges.
    pub(super) async fn payers_net_of_refunds(
        &self,
        out: &mut BTreeMap<String, PayerSpend>,
        from: &str,
        to: &str,
    ) -> Result<(), LedgerError> {
        for (_, payer, currency, amount) in self.refunded("payer", None, from, to).await? {
            if let Some(a) = out
                .get_mut(&payer)
                .and_then(|p| p.amount_minor.get_mut(&currency))
            {
                *a = a.saturating_sub(amount);
            }
        }
        Ok(())
    }
}

//! Refunds on sqlite ([`RefundStore`]): one transaction checks the idempotency key, the void
//! and what remains refundable ([`rules::refund`]), and writes the refund row, the balance
//! credit and the aggregates -- the steps of `lua/refund.lua`.

use crate::store::FromColumns;
use async_trait::async_trait;
use rusqlite::params;

use super::ledger::EVENT_COLUMNS;
use super::tx::{rule, signed, Tx};
use super::SqliteStore;
use crate::store::refund::VOID_SEARCH_MS;
use crate::store::rules::{self, RefundRefusal};
use crate::store::Columns;
use crate::store::{
    utc_day, RefundOutcome, RefundQuery, RefundRecord, RefundRequest, RefundStore, RefundTarget,
    StoreError, UsageEvent,
};

/// The refund tables, created when missing (added within schema version 1: an older tollgate
/// never reads them). `key` is the `Idempotency-Key`, kept with its refund; `refund_keys`
/// binds each key to the request it was first used for, applied or refused
/// (`refund_claim.lua`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS refunds (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    time_ms         INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    charge_time_ms  INTEGER NOT NULL,
    payer           TEXT NOT NULL,
    route           TEXT NOT NULL,
    credential      TEXT NOT NULL,
    currency        TEXT NOT NULL,
    scale           INTEGER NOT NULL,
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    reason          TEXT NOT NULL,
    owed_to         TEXT,
    credit_id       TEXT,
    remaining_minor INTEGER NOT NULL,
    key             TEXT NOT NULL UNIQUE,
    fingerprint     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_by_event ON refunds (event_id);
CREATE INDEX IF NOT EXISTS refunds_by_payer ON refunds (payer, seq);
CREATE INDEX IF NOT EXISTS events_by_voids ON events (voids) WHERE voids IS NOT NULL;
CREATE TABLE IF NOT EXISTS refund_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS refunds_daily AS
SELECT strftime('%Y-%m-%d', charge_time_ms / 1000, 'unixepoch') AS day,
       route,
       payer,
       currency,
       scale,
       count(*) AS refunds,
       sum(amount_minor) AS refunded_minor,
       sum(CASE WHEN owed_to IS NULL THEN 0 ELSE amount_minor END) AS owed_minor
FROM refunds
GROUP BY day, route, payer, currency, scale;
";

/// The columns [`RefundRecord::from_columns`] reads.
const REFUND_COLUMNS: &str = "id, time_ms, event_id, charge_time_ms, payer, route, credential, \
    currency, scale, amount_minor, reason, owed_to, credit_id, remaining_minor";

impl Tx<'_> {
    /// The sum of `event_id`'s refunds (minor units).
    pub(super) fn refunded(&self, event_id: &str) -> Result<u64, StoreError> {
        Ok(self
            .row(
                "SELECT coalesce(sum(amount_minor), 0) FROM refunds WHERE event_id = ?1",
                [event_id],
                |r| r.get::<_, u64>(0),
            )?
            .unwrap_or(0))
    }

    fn voided(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .row(
                "SELECT 1 FROM events INDEXED BY events_by_voids WHERE voids = ?1 LIMIT 1",
                [event_id],
                |_| Ok(()),
            )?
            .is_some())
    }

    fn event(&self, id: &str) -> Result<Option<UsageEvent>, StoreError> {
        self.first_record(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1"),
            [id],
            |r| UsageEvent::from_columns(r),
        )
    }

    /// How the request's `Idempotency-Key` was used before: `Some` answers the request (the
    /// same refund again, or the key reused), `None` lets it go on (the key is now bound to
    /// it, whatever it answers: `refund_claim.lua`).
    fn key_used(&self, r: &RefundRequest) -> Result<Option<RefundOutcome>, StoreError> {
        let earlier = self.first_record(
            &format!("SELECT {REFUND_COLUMNS}, fingerprint FROM refunds WHERE key = ?1"),
            [&r.key],
            |row| Ok((RefundRecord::from_columns(row)?, row.text("fingerprint")?)),
        )?;
        if let Some((rec, fp)) = earlier {
            return Ok(Some(if fp == r.fingerprint {
                RefundOutcome::Duplicate(rec)
            } else {
                RefundOutcome::KeyReused
            }));
        }
        let claimed = self.row(
            "SELECT fingerprint FROM refund_keys WHERE key = ?1",
            [&r.key],
            |row| row.get::<_, String>(0),
        )?;
        match claimed {
            Some(fp) if fp != r.fingerprint => Ok(Some(RefundOutcome::KeyReused)),
            Some(_) => Ok(None),
            None => {
                self.exec(
                    "INSERT INTO refund_keys (key, fingerprint) VALUES (?1, ?2)",
                    params![r.key, r.fingerprint],
                )?;
                Ok(None)
            }
        }
    }

    /// Refund in this transaction (see [`RefundStore::refund`]).
    fn refund(&self, r: &RefundRequest, now: i64) -> Result<RefundOutcome, StoreError> {
        if let Some(answer) = self.key_used(r)? {
            return Ok(answer);
        }
        // The ledger's own copy of the charge decides (the caller's is what it read).
        let charge = self
            .event(&r.charge.id)?
            .unwrap_or_else(|| r.charge.clone());
        if charge.voids.is_some() || r.voided || self.voided(&charge.id)? {
            return Ok(RefundOutcome::Voided);
        }
        if !rules::refund_open(charge.time_ms, r.time_ms) {
            return Ok(RefundOutcome::WindowClosed);
        }
        let refunded = self.refunded(&charge.id)?;
        let amount = match rules::refund(charge.amount_minor, refunded, r.amount_minor) {
            Ok(a) => a,
            Err(RefundRefusal::Exceeds { refundable }) => {
                return Ok(RefundOutcome::Exceeds {
                    refundable_minor: refundable,
                })
            }
            Err(RefundRefusal::Zero) => return Ok(RefundOutcome::Zero),
        };
        let remaining = rules::refundable(charge.amount_minor, refunded + amount);
        let request = RefundRequest {
            charge: charge.clone(),
            ..r.clone()
        };
        let credit_id = match request.owed_to() {
            Some(_) => None,
            None => Some(self.refund_credit(&charge, amount, &r.reason, now)?),
        };
        let id = self.next_id(now)?;
        let rec = RefundRecord::of(&request, id, amount, remaining, credit_id);
        self.insert_refund(&rec, r)?;
        // The charge's day moves back by the refund (its request and units stay).
        self.aggregate(
            &utc_day(charge.time_ms),
            &charge.payer,
            &charge.amount_field(),
            -signed(amount),
        )?;
        Ok(RefundOutcome::Refunded(rec))
    }

    /// Write `rec`, with the key and fingerprint of its request.
    fn insert_refund(&self, rec: &RefundRecord, r: &RefundRequest) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO refunds (seq, id, time_ms, event_id, charge_time_ms, payer, route, \
             credential, currency, scale, amount_minor, reason, owed_to, credit_id, \
             remaining_minor, key, fingerprint) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                signed(crate::store::event_order(&rec.id).1),
                rec.id,
                rec.time_ms,
                rec.event_id,
                rec.charge_time_ms,
                rec.payer,
                rec.route,
                rec.credential,
                rec.currency,
                rec.scale,
                rec.amount_minor,
                rec.reason,
                rec.owed_to,
                rec.credit_id,
                rec.remaining_minor,
                r.key,
                r.fingerprint,
            ],
        )
        .map(drop)
    }

    /// Credit `amount` to the charge's payer (a credit row, `source` `refund:<event id>`).
    fn refund_credit(
        &self,
        charge: &UsageEvent,
        amount: u64,
        reason: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let after =
            rules::refund_to_balance(&self.balance(&charge.payer, &charge.currency)?, amount)
                .map_err(rule)?;
        self.set_balance(&charge.payer, &charge.currency, after)?;
        self.insert_credit(
            now,
            (&charge.payer, &charge.currency),
            signed(amount),
            (reason, &format!("refund:{}", charge.id)),
        )
    }
}

#[async_trait]
impl RefundStore for SqliteStore {
    async fn refund_target(&self, id: &str) -> Result<Option<RefundTarget>, StoreError> {
        let id = id.to_owned();
        self.run(move |t| {
            let Some(event) = t.event(&id)? else {
                return Ok(None);
            };
            let voided = t.voided(&id)?;
            Ok(Some(RefundTarget { event, voided }))
        })
        .await
    }

    async fn void_recorded(&self, charge: &UsageEvent) -> Result<bool, StoreError> {
        let (id, until) = (
            charge.id.clone(),
            charge.time_ms.saturating_add(VOID_SEARCH_MS),
        );
        self.run(move |t| {
            Ok(t.row(
                "SELECT 1 FROM events INDEXED BY events_by_voids \
                 WHERE voids = ?1 AND time_ms <= ?2 LIMIT 1",
                params![id, until],
                |_| Ok(()),
            )?
            .is_some())
        })
        .await
    }

    async fn refund(&self, r: &RefundRequest) -> Result<RefundOutcome, StoreError> {
        let now = self.now();
        let r = r.clone();
        self.run(move |t| t.refund(&r, now)).await
    }

    async fn refunds(&self, q: &RefundQuery) -> Result<Vec<RefundRecord>, StoreError> {
        let before = q
            .before
            .as_deref()
            .map_or(i64::MAX, |id| signed(crate::store::event_order(id).1));
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let owed = q.owed.map(i64::from);
        let payer = q.payer.clone();
        self.run(move |t| {
            t.records(
                &format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds \
                     WHERE seq < ?1 AND (?2 IS NULL OR payer = ?2) \
                       AND (?3 IS NULL OR (owed_to IS NOT NULL) = ?3) \
                     ORDER BY seq DESC LIMIT ?4"
                ),
                params![before, payer, owed, limit],
                |r| RefundRecord::from_columns(r),
            )
        })
        .await
    }
}

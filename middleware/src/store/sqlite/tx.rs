//! The SQL under the sqlite store's operations: one method per row-level step (a receipt's
//! state, an account, a hold, a mandate window, a settled marker, the ledger), each run inside
//! the operation's transaction. The operations (`receipts.rs`, `balances.rs`, ...) compose
//! them in the order the Lua scripts do.

use rusqlite::{params, Connection};

use super::sql_err;
use crate::store::rules;
use crate::store::{
    event_order, utc_day, Balance, MandateCharge, PlanPeriod, Reservation, StoreError, UsageEvent,
};

/// A receipt's single-use state (`receipts.state`), read only while live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ReceiptState {
    /// Held for a request (`reservation`).
    Held { reservation: String },
    /// Spent by `reservation` on `event_id`.
    Spent {
        reservation: String,
        event_id: String,
    },
    /// A top-up receipt or an admin idempotency key, applied as `credit_id`.
    Credited { credit_id: String },
    /// A subscribe receipt, spent on a plan period (`event_id`).
    Subscribed { event_id: String },
    /// Revoked: it can no longer pay.
    Revoked,
}

/// How a balance request was settled (`settled.kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Settled {
    /// Captured, or charged at admission.
    Charged {
        event_id: String,
        charged: u64,
        uncharged: u64,
        currency: String,
    },
    /// A plan-covered call recorded.
    Plan { event_id: String },
    /// A plan-covered call given back.
    Released,
    /// A charge at admission undone.
    Voided,
}

/// A balance hold in flight (`holds`).
#[derive(Debug, Clone)]
pub(super) struct HoldRow {
    pub payer: String,
    pub currency: String,
    pub amount: u64,
}

/// Why a mandate refused a reservation.
pub(super) enum MandateRefusal {
    Revoked,
    Exceeded(u64),
}

/// The operation's view of the database (inside its transaction).
pub(super) struct Tx<'c> {
    c: &'c Connection,
}

type R<T> = Result<T, StoreError>;

pub(super) fn rule(e: rules::RuleError) -> StoreError {
    StoreError::Protocol(e.to_string())
}

impl<'c> Tx<'c> {
    pub(super) fn new(c: &'c Connection) -> Self {
        Tx { c }
    }

    /// Run one statement (cached).
    pub(super) fn exec(&self, sql: &str, p: impl rusqlite::Params) -> R<usize> {
        self.c
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(p))
            .map_err(sql_err)
    }

    /// Read the first row, if any (cached statement; [`Tx::first_record`] with rusqlite's errors).
    pub(super) fn row<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> R<Option<T>> {
        self.first_record(sql, p, |r| f(r).map_err(sql_err))
    }

    /// Read every row (cached statement; [`Tx::records`] with rusqlite's errors).
    pub(super) fn rows<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        mut f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> R<Vec<T>> {
        self.records(sql, p, |r| f(r).map_err(sql_err))
    }

    /// Read every row into a record (cached statement): the decoders shared with the other
    /// backends ([`crate::store::Columns`]).
    pub(super) fn records<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        mut f: impl FnMut(&rusqlite::Row<'_>) -> R<T>,
    ) -> R<Vec<T>> {
        let mut s = self.c.prepare_cached(sql).map_err(sql_err)?;
        let mut rows = s.query(p).map_err(sql_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sql_err)? {
            out.push(f(r)?);
        }
        Ok(out)
    }

    /// Read the first row into a record, if any (see [`Tx::records`]).
    pub(super) fn first_record<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> R<T>,
    ) -> R<Option<T>> {
        let mut s = self.c.prepare_cached(sql).map_err(sql_err)?;
        let mut rows = s.query(p).map_err(sql_err)?;
        rows.next().map_err(sql_err)?.map(f).transpose()
    }

    // --- receipts -------------------------------------------------------------------------

    pub(super) fn receipt_key(r: &Reservation) -> String {
        format!("r:{}:{}", r.bucket(), r.fingerprint())
    }

    /// The live state under `key` (expired: absent).
    pub(super) fn receipt(&self, key: &str, now: i64) -> R<Option<ReceiptState>> {
        let row = self.row(
            "SELECT state, reservation, ref_id FROM receipts WHERE key = ?1 AND until_ms > ?2",
            params![key, now],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        let Some((state, reservation, ref_id)) = row else {
            return Ok(None);
        };
        Ok(Some(match state.as_str() {
            "held" => ReceiptState::Held { reservation },
            "spent" => ReceiptState::Spent {
                reservation,
                event_id: ref_id,
            },
            "credited" => ReceiptState::Credited { credit_id: ref_id },
            "subscribed" => ReceiptState::Subscribed { event_id: ref_id },
            "revoked" => ReceiptState::Revoked,
            other => return Err(StoreError::Protocol(format!("receipt state {other}"))),
        }))
    }

    /// Write the state under `key` until `until_ms`.
    pub(super) fn put_receipt(&self, key: &str, state: &ReceiptState, until_ms: i64) -> R<()> {
        let (name, reservation, ref_id) = match state {
            ReceiptState::Held { reservation } => ("held", reservation.as_str(), ""),
            ReceiptState::Spent {
                reservation,
                event_id,
            } => ("spent", reservation.as_str(), event_id.as_str()),
            ReceiptState::Credited { credit_id } => ("credited", "", credit_id.as_str()),
            ReceiptState::Subscribed { event_id } => ("subscribed", "", event_id.as_str()),
            ReceiptState::Revoked => ("revoked", "", ""),
        };
        self.exec(
            "INSERT OR REPLACE INTO receipts (key, state, reservation, ref_id, until_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key, name, reservation, ref_id, until_ms],
        )
        .map(drop)
    }

    pub(super) fn delete_receipt(&self, key: &str) -> R<()> {
        self.exec("DELETE FROM receipts WHERE key = ?1", [key])
            .map(drop)
    }

    /// Claim (issuer, receipt id) for `payer`; true when another payer presented it first.
    /// x402 nonces are not claimed (single use under the payer's address by definition).
    pub(super) fn owned_by_other(
        &self,
        payer: &str,
        issuer: &str,
        receipt_id: &str,
        until_ms: i64,
        now: i64,
    ) -> R<bool> {
        if issuer == crate::x402::STORE_ISSUER {
            return Ok(false);
        }
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        let owner = self.row(
            "SELECT payer FROM owners WHERE fp = ?1 AND until_ms > ?2",
            params![fp, now],
            |r| r.get::<_, String>(0),
        )?;
        match owner {
            Some(owner) => Ok(owner != payer),
            None => {
                self.exec(
                    "INSERT OR REPLACE INTO owners (fp, payer, until_ms) VALUES (?1, ?2, ?3)",
                    params![fp, payer, until_ms],
                )?;
                Ok(false)
            }
        }
    }

    // --- payers and accounts ----------------------------------------------------------------

    pub(super) fn blocked(&self, payer: &str) -> R<bool> {
        self.row(
            "SELECT 1 FROM blocked WHERE payer = ?1",
            [payer],
            |_| Ok(()),
        )
        .map(|r| r.is_some())
    }

    pub(super) fn set_blocked(&self, payer: &str, blocked: bool) -> R<()> {
        let sql = if blocked {
            "INSERT OR IGNORE INTO blocked (payer) VALUES (?1)"
        } else {
            "DELETE FROM blocked WHERE payer = ?1"
        };
        self.exec(sql, [payer]).map(drop)
    }

    /// A payer's account in one currency (zero when it has none).
    pub(super) fn balance(&self, payer: &str, currency: &str) -> R<Balance> {
        Ok(self
            .row(
                "SELECT available, held, credited, captured FROM accounts \
                 WHERE payer = ?1 AND currency = ?2",
                params![payer, currency],
                |r| {
                    Ok(Balance {
                        available: r.get(0)?,
                        held: r.get(1)?,
                        credited: r.get(2)?,
                        captured: r.get(3)?,
                    })
                },
            )?
            .unwrap_or_default())
    }

    pub(super) fn set_balance(&self, payer: &str, currency: &str, b: Balance) -> R<()> {
        self.exec(
            "INSERT OR REPLACE INTO accounts (payer, currency, available, held, credited, captured) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![payer, currency, b.available, b.held, b.credited, b.captured],
        )
        .map(drop)
    }

    // --- balance holds -----------------------------------------------------------------------

    pub(super) fn put_hold(&self, id: &str, h: &HoldRow, until_ms: i64) -> R<()> {
        self.exec(
            "INSERT OR REPLACE INTO holds (id, payer, currency, amount, until_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, h.payer, h.currency, h.amount, until_ms],
        )
        .map(drop)
    }

    /// Remove and return hold `id` (expired or not: a hold lives until swept).
    pub(super) fn take_hold(&self, id: &str) -> R<Option<HoldRow>> {
        let h = self.row(
            "DELETE FROM holds WHERE id = ?1 RETURNING payer, currency, amount",
            [id],
            |r| {
                Ok(HoldRow {
                    payer: r.get(0)?,
                    currency: r.get(1)?,
                    amount: r.get(2)?,
                })
            },
        )?;
        Ok(h)
    }

    /// Give back the payer's expired holds (`holds.lua`'s `sweep_holds`).
    pub(super) fn sweep(&self, payer: &str, now: i64) -> R<()> {
        let expired = self.rows(
            "DELETE FROM holds WHERE payer = ?1 AND until_ms <= ?2 RETURNING currency, amount",
            params![payer, now],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
        )?;
        for (currency, amount) in expired {
            let b = rules::release_hold(&self.balance(payer, &currency)?, amount).map_err(rule)?;
            self.set_balance(payer, &currency, b)?;
        }
        Ok(())
    }

    // --- mandates ---------------------------------------------------------------------------

    pub(super) fn mandate_revoked(&self, key: &str) -> R<bool> {
        self.row(
            "SELECT 1 FROM revoked_mandates WHERE key = ?1",
            [key],
            |_| Ok(()),
        )
        .map(|r| r.is_some())
    }

    /// The budget written by the window's last reservation (0: no window yet).
    pub(super) fn window_budget(&self, m: &MandateCharge) -> R<u64> {
        Ok(self
            .row(
                "SELECT budget FROM mandate_windows WHERE key = ?1 AND start_ms = ?2",
                params![m.key, m.window_start_ms],
                |r| r.get::<_, u64>(0),
            )?
            .unwrap_or(0))
    }

    /// Room left in a mandate window of `budget` (expired reservations dropped), not counting
    /// `except`.
    pub(super) fn mandate_room(
        &self,
        m: &MandateCharge,
        budget: u64,
        now: i64,
        except: Option<&str>,
    ) -> R<i64> {
        self.exec(
            "DELETE FROM mandate_holds WHERE key = ?1 AND start_ms = ?2 AND until_ms <= ?3",
            params![m.key, m.window_start_ms, now],
        )?;
        let spent = self
            .row(
                "SELECT spent FROM mandate_windows WHERE key = ?1 AND start_ms = ?2",
                params![m.key, m.window_start_ms],
                |r| r.get::<_, u64>(0),
            )?
            .unwrap_or(0);
        let amounts = self.rows(
            "SELECT reservation, amount FROM mandate_holds WHERE key = ?1 AND start_ms = ?2",
            params![m.key, m.window_start_ms],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)),
        )?;
        let held = amounts
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .fold(0u64, |sum, (_, a)| sum.saturating_add(*a));
        Ok(rules::mandate_room(budget, spent, held))
    }

    /// Check a mandate can take `amount` (not reserving yet).
    pub(super) fn mandate_check(
        &self,
        m: &MandateCharge,
        amount: u64,
        now: i64,
    ) -> R<Result<(), MandateRefusal>> {
        if self.mandate_revoked(&m.key)? {
            return Ok(Err(MandateRefusal::Revoked));
        }
        let room = self.mandate_room(m, m.budget_minor, now, None)?;
        Ok(rules::mandate_admits(room, amount).map_err(MandateRefusal::Exceeded))
    }

    /// Reserve `amount` of the window for `reservation` until `until` (after
    /// [`Tx::mandate_check`] said yes, in the same transaction).
    pub(super) fn mandate_reserve(
        &self,
        payer: &str,
        m: &MandateCharge,
        amount: u64,
        reservation: &str,
        until: i64,
    ) -> R<()> {
        self.exec(
            "INSERT INTO mandate_windows (key, start_ms, budget, spent) VALUES (?1, ?2, ?3, 0) \
             ON CONFLICT (key, start_ms) DO UPDATE SET budget = excluded.budget",
            params![m.key, m.window_start_ms, m.budget_minor],
        )?;
        self.exec(
            "INSERT OR REPLACE INTO mandate_holds (key, start_ms, reservation, amount, until_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![m.key, m.window_start_ms, reservation, amount, until],
        )?;
        self.exec(
            "INSERT OR REPLACE INTO payer_mandates (payer, key, summary) VALUES (?1, ?2, ?3)",
            params![payer, m.key, m.summary],
        )
        .map(drop)
    }

    /// The reservation leaves the window; `charge` (0 for a release) is spent in it.
    pub(super) fn mandate_settle(
        &self,
        m: &MandateCharge,
        reservation: &str,
        charge: u64,
    ) -> R<()> {
        self.exec(
            "DELETE FROM mandate_holds WHERE key = ?1 AND start_ms = ?2 AND reservation = ?3",
            params![m.key, m.window_start_ms, reservation],
        )?;
        self.exec(
            "INSERT INTO mandate_windows (key, start_ms, budget, spent) VALUES (?1, ?2, 0, ?3) \
             ON CONFLICT (key, start_ms) DO UPDATE SET spent = spent + excluded.spent",
            params![m.key, m.window_start_ms, charge],
        )
        .map(drop)
    }

    /// Extend a reservation's mandate hold (if it has one).
    pub(super) fn renew_mandate_hold(&self, m: &MandateCharge, id: &str, until: i64) -> R<()> {
        self.exec(
            "UPDATE mandate_holds SET until_ms = ?4 \
             WHERE key = ?1 AND start_ms = ?2 AND reservation = ?3",
            params![m.key, m.window_start_ms, id, until],
        )
        .map(drop)
    }

    // --- settled markers --------------------------------------------------------------------

    /// How reservation `id` was settled, while remembered.
    pub(super) fn settled(&self, id: &str, now: i64) -> R<Option<Settled>> {
        let row = self.row(
            "SELECT kind, event_id, charged, uncharged, currency FROM settled \
             WHERE id = ?1 AND until_ms > ?2",
            params![id, now],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u64>(2)?,
                    r.get::<_, u64>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )?;
        let Some((kind, event_id, charged, uncharged, currency)) = row else {
            return Ok(None);
        };
        Ok(Some(match kind.as_str() {
            "charged" => Settled::Charged {
                event_id,
                charged,
                uncharged,
                currency,
            },
            "plan" => Settled::Plan { event_id },
            "released" => Settled::Released,
            "voided" => Settled::Voided,
            other => return Err(StoreError::Protocol(format!("settled kind {other}"))),
        }))
    }

    /// Remember how reservation `id` was settled until `until`.
    pub(super) fn remember_settled(&self, id: &str, outcome: &Settled, until: i64) -> R<()> {
        let (kind, event_id, charged, uncharged, currency) = match outcome {
            Settled::Charged {
                event_id,
                charged,
                uncharged,
                currency,
            } => (
                "charged",
                event_id.as_str(),
                *charged,
                *uncharged,
                currency.as_str(),
            ),
            Settled::Plan { event_id } => ("plan", event_id.as_str(), 0, 0, ""),
            Settled::Released => ("released", "", 0, 0, ""),
            Settled::Voided => ("voided", "", 0, 0, ""),
        };
        self.exec(
            "INSERT OR REPLACE INTO settled (id, kind, event_id, charged, uncharged, currency, until_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, kind, event_id, charged, uncharged, currency, until],
        )
        .map(drop)
    }

    /// Mark a remembered charge voided, keeping its expiry (Redis `KEEPTTL`).
    pub(super) fn mark_voided(&self, id: &str) -> R<()> {
        self.exec(
            "UPDATE settled SET kind = 'voided', event_id = '', charged = 0, uncharged = 0, \
             currency = '' WHERE id = ?1",
            [id],
        )
        .map(drop)
    }

    // --- plans ------------------------------------------------------------------------------

    pub(super) fn period(&self, payer: &str, plan: &str) -> R<Option<PlanPeriod>> {
        self.row(
            "SELECT start_ms, end_ms, calls, used FROM plan_periods WHERE payer = ?1 AND plan = ?2",
            params![payer, plan],
            |r| {
                Ok(PlanPeriod {
                    start_ms: r.get(0)?,
                    end_ms: r.get(1)?,
                    calls: r.get(2)?,
                    used: r.get(3)?,
                })
            },
        )
    }

    pub(super) fn put_period(&self, payer: &str, plan: &str, p: &PlanPeriod) -> R<()> {
        self.exec(
            "INSERT OR REPLACE INTO plan_periods (payer, plan, start_ms, end_ms, calls, used) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![payer, plan, p.start_ms, p.end_ms, p.calls, p.used],
        )
        .map(drop)
    }

    /// Set a period's use (no period: nothing to count, as the memory of a missing hash).
    pub(super) fn set_period_used(&self, payer: &str, plan: &str, used: u64) -> R<()> {
        self.exec(
            "UPDATE plan_periods SET used = ?3 WHERE payer = ?1 AND plan = ?2",
            params![payer, plan, used],
        )
        .map(drop)
    }

    // --- the ledger -------------------------------------------------------------------------

    /// Record a balance credit of `payer` (the balance itself is the caller's to set): its
    /// ledger id.
    pub(super) fn insert_credit(
        &self,
        now: i64,
        (payer, currency): (&str, &str),
        amount_minor: i64,
        (reason, source): (&str, &str),
    ) -> R<String> {
        let id = self.next_id(now)?;
        self.exec(
            "INSERT INTO credits (id, time_ms, payer, currency, amount_minor, reason, source) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, now, payer, currency, amount_minor, reason, source],
        )?;
        Ok(id)
    }

    /// The next ledger id, `<ms>-<seq>-0`: never back in time, so ids order the ledger.
    pub(super) fn next_id(&self, now: i64) -> R<String> {
        let (seq, ms) = self
            .row(
                "UPDATE ids SET seq = seq + 1, last_ms = max(last_ms, ?1) WHERE one = 1 \
                 RETURNING seq, last_ms",
                [now],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )?
            .ok_or_else(|| StoreError::Protocol("sqlite: ids row missing".into()))?;
        Ok(format!("{}-{seq}-0", ms.max(0)))
    }

    /// Append `event` as given (its amounts are the caller's) and move the day's aggregates.
    pub(super) fn record(&self, now: i64, event: &UsageEvent) -> R<String> {
        self.record_with(now, event, Some(event.amount_minor))
    }

    /// Append `event` and move the day's aggregates: `amount` is added to the amount field
    /// (`None`: a plan-covered call, which counts the request and its units only).
    pub(super) fn record_with(
        &self,
        now: i64,
        event: &UsageEvent,
        amount: Option<u64>,
    ) -> R<String> {
        let id = self.next_id(now)?;
        let day = utc_day(event.time_ms);
        if let Some(amount) = amount {
            self.aggregate(&day, &event.payer, &event.amount_field(), signed(amount))?;
        }
        for (f, n) in event.aggregate_fields() {
            self.aggregate(&day, &event.payer, &f, signed(n))?;
        }
        self.append(&id, event)?;
        Ok(id)
    }

    /// Move the aggregates of `charge`'s day back by it (a void).
    pub(super) fn unaggregate(&self, charge: &UsageEvent) -> R<()> {
        let day = utc_day(charge.time_ms);
        self.aggregate(
            &day,
            &charge.payer,
            &charge.amount_field(),
            -signed(charge.amount_minor),
        )?;
        for (f, n) in charge.aggregate_fields() {
            self.aggregate(&day, &charge.payer, &f, -signed(n))?;
        }
        Ok(())
    }

    pub(super) fn aggregate(&self, day: &str, payer: &str, field: &str, by: i64) -> R<()> {
        self.exec(
            "INSERT INTO aggregates (day, payer, field, value) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (day, payer, field) DO UPDATE SET value = value + excluded.value",
            params![day, payer, field, by],
        )
        .map(drop)
    }

    /// Write `event` into the ledger under `id`.
    pub(super) fn append(&self, id: &str, e: &UsageEvent) -> R<()> {
        let units = serde_json::to_string(&e.units).unwrap_or_default();
        let prices = serde_json::to_string(&e.unit_prices).unwrap_or_default();
        self.exec(
            "INSERT INTO events (seq, id, time_ms, payer, route, method, units, unit_prices, \
             currency, scale, amount_minor, uncharged_minor, credential, reservation, \
             upstream_status, voids) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                signed(event_order(id).1),
                id,
                e.time_ms,
                e.payer,
                e.route,
                e.method,
                units,
                prices,
                e.currency,
                e.scale,
                e.amount_minor,
                e.uncharged_minor,
                e.credential,
                e.reservation,
                e.upstream_status,
                e.voids,
            ],
        )
        .map(drop)
    }

    /// Delete rows every operation already treats as absent (expired).
    pub(super) fn purge(&self, now: i64) -> R<()> {
        for table in [
            "receipts",
            "owners",
            "settled",
            "idempotency",
            "mandate_holds",
            "risk_counters",
            "once_ids",
        ] {
            self.exec(&format!("DELETE FROM {table} WHERE until_ms <= ?1"), [now])?;
        }
        // The risk log keeps about what Redis does (10,000 per bucket).
        self.exec(
            "DELETE FROM risk_log WHERE n <= (SELECT MAX(n) - 160000 FROM risk_log)",
            [],
        )?;
        // A theoretical arrival time in the past is the same as none.
        self.exec("DELETE FROM rates WHERE tat_ms <= ?1", [now])
            .map(drop)
    }
}

/// An amount as a signed aggregate step (saturating).
pub(super) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

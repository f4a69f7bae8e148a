//! The sqlite store's per-request controls and reads: rate limits, blocks and health
//! ([`crate::store::PayerControl`]), request `Idempotency-Key` claims
//! ([`crate::store::IdempotencyStore`]), mandates ([`crate::store::MandateStore`]) and plan
//! periods ([`crate::store::PlanStore`]).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::tx::{ReceiptState, Tx};
use super::SqliteStore;
use crate::store::rules;
use crate::store::{
    IdempotencyClaim, IdempotencyStore, KeyClaim, MandateStore, MandateUse, PayerControl,
    PlanPeriod, PlanStore, RateLimit, Reservation, StoreError, SubscribeOutcome, Subscription,
};

#[async_trait]
impl PayerControl for SqliteStore {
    async fn rate(
        &self,
        payer: &str,
        route: &str,
        limit: RateLimit,
    ) -> Result<Option<Duration>, StoreError> {
        let now = self.now();
        let (payer, route) = (payer.to_owned(), route.to_owned());
        self.run(move |t| {
            let tat = t
                .row(
                    "SELECT tat_ms FROM rates WHERE payer = ?1 AND route = ?2",
                    params![payer, route],
                    |r| r.get::<_, i64>(0),
                )?
                .unwrap_or(0);
            match rules::gcra(tat, now, limit) {
                Ok(new_tat) => {
                    t.exec(
                        "INSERT OR REPLACE INTO rates (payer, route, tat_ms) VALUES (?1, ?2, ?3)",
                        params![payer, route, new_tat],
                    )?;
                    Ok(None)
                }
                Err(retry_ms) => Ok(Some(Duration::from_millis(retry_ms))),
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|t| t.row("SELECT 1", [], |_| Ok(())).map(drop))
            .await
    }

    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError> {
        let payer = payer.to_owned();
        self.run(move |t| t.set_blocked(&payer, blocked)).await
    }

    async fn claim_once(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let id = id.to_owned();
        self.run(move |t| {
            let live = t
                .row(
                    "SELECT 1 FROM once_ids WHERE id = ?1 AND until_ms > ?2",
                    params![id, now],
                    |_| Ok(()),
                )?
                .is_some();
            if live {
                return Ok(false);
            }
            t.exec(
                "INSERT OR REPLACE INTO once_ids (id, until_ms) VALUES (?1, ?2)",
                params![id, until],
            )?;
            Ok(true)
        })
        .await
    }
}

/// One-time ids (created within schema version 1: a table an older tollgate never reads).
pub(super) const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS once_ids (id TEXT PRIMARY KEY, until_ms INTEGER NOT NULL) WITHOUT ROWID;";

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn idempotency_claim(
        &self,
        c: &KeyClaim,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        let now = self.now();
        let KeyClaim { payer, key, token } = c.clone();
        let fingerprint = fingerprint.to_owned();
        self.run(move |t| {
            let found = t.row(
                "SELECT fingerprint, done_event, done_ms FROM idempotency \
                 WHERE payer = ?1 AND key = ?2 AND until_ms > ?3",
                params![payer, key, now],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                },
            )?;
            if let Some((fp, done_event, done_ms)) = found {
                return Ok(if fp != fingerprint {
                    IdempotencyClaim::Mismatch
                } else if let (Some(event_id), Some(time_ms)) = (done_event, done_ms) {
                    IdempotencyClaim::Done { event_id, time_ms }
                } else {
                    IdempotencyClaim::InFlight
                });
            }
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            t.exec(
                "INSERT OR REPLACE INTO idempotency \
                 (payer, key, fingerprint, token, done_event, done_ms, until_ms) \
                 VALUES (?1, ?2, ?3, ?4, NULL, NULL, ?5)",
                params![payer, key, fingerprint, token, now.saturating_add(ttl_ms)],
            )?;
            Ok(IdempotencyClaim::Claimed)
        })
        .await
    }

    async fn idempotency_finish(
        &self,
        c: &KeyClaim,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        let KeyClaim { payer, key, token } = c.clone();
        let done = done.map(|(id, ms)| (id.to_owned(), ms));
        self.run(move |t| {
            // A claim that is no longer `token`'s (or already done) is left alone.
            let ours = "payer = ?1 AND key = ?2 AND token = ?3 AND done_event IS NULL";
            match done {
                Some((event_id, time_ms)) => t.exec(
                    &format!("UPDATE idempotency SET done_event = ?4, done_ms = ?5 WHERE {ours}"),
                    params![payer, key, token, event_id, time_ms],
                ),
                None => t.exec(
                    &format!("DELETE FROM idempotency WHERE {ours}"),
                    params![payer, key, token],
                ),
            }
            .map(drop)
        })
        .await
    }
}

#[async_trait]
impl MandateStore for SqliteStore {
    async fn revoke_mandate(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.run(move |t| {
            t.exec(
                "INSERT OR IGNORE INTO revoked_mandates (key) VALUES (?1)",
                [key],
            )
            .map(drop)
        })
        .await
    }

    async fn mandates(
        &self,
        payer: &str,
        now_ms: i64,
    ) -> Result<Vec<(serde_json::Value, MandateUse)>, StoreError> {
        let now = self.now();
        let payer = payer.to_owned();
        self.run(move |t| {
            let used = t.rows(
                "SELECT key, summary FROM payer_mandates WHERE payer = ?1 ORDER BY key",
                [&payer],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut out = Vec::with_capacity(used.len());
            for (key, summary) in used {
                let summary: serde_json::Value = serde_json::from_str(&summary).unwrap_or_default();
                let start = crate::store::mandate_window_start(&summary, now_ms);
                let spent = t
                    .row(
                        "SELECT spent FROM mandate_windows WHERE key = ?1 AND start_ms = ?2",
                        params![key, start],
                        |r| r.get::<_, u64>(0),
                    )?
                    .unwrap_or(0);
                let held = t
                    .row(
                        "SELECT coalesce(sum(amount), 0) FROM mandate_holds \
                         WHERE key = ?1 AND start_ms = ?2 AND until_ms > ?3",
                        params![key, start, now],
                        |r| r.get::<_, u64>(0),
                    )?
                    .unwrap_or(0);
                let revoked = t.mandate_revoked(&key)?;
                out.push((
                    summary,
                    MandateUse {
                        spent_minor: spent,
                        held_minor: held,
                        revoked,
                    },
                ));
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl PlanStore for SqliteStore {
    async fn subscribe(&self, sub: &Subscription) -> Result<SubscribeOutcome, StoreError> {
        let now = self.now();
        let sub = sub.clone();
        self.run(move |t| {
            let until = sub.keep_until_ms.max(now + 1000);
            if t.owned_by_other(&sub.payer, &sub.issuer, &sub.receipt_id, until, now)? {
                return Ok(SubscribeOutcome::ReceiptUsed);
            }
            let key = Tx::receipt_key(&Reservation {
                payer: sub.payer.clone(),
                issuer: sub.issuer.clone(),
                receipt_id: sub.receipt_id.clone(),
                ..Reservation::empty()
            });
            let current = t.period(&sub.payer, &sub.plan)?;
            match t.receipt(&key, now)? {
                Some(ReceiptState::Subscribed { event_id }) => {
                    return Ok(SubscribeOutcome::Duplicate {
                        event_id,
                        period_end_ms: current.map_or(0, |p| p.end_ms),
                    });
                }
                Some(_) => return Ok(SubscribeOutcome::ReceiptUsed),
                None => {}
            }
            let period =
                rules::subscribe_period(current.as_ref(), sub.now_ms, sub.period_ms, sub.calls);
            t.put_period(&sub.payer, &sub.plan, &period)?;
            let event_id = t.record(now, &sub.event)?;
            let state = ReceiptState::Subscribed {
                event_id: event_id.clone(),
            };
            t.put_receipt(&key, &state, until)?;
            Ok(SubscribeOutcome::Subscribed {
                event_id,
                period_end_ms: period.end_ms,
            })
        })
        .await
    }

    async fn subscription(
        &self,
        payer: &str,
        plan: &str,
    ) -> Result<Option<PlanPeriod>, StoreError> {
        let (payer, plan) = (payer.to_owned(), plan.to_owned());
        self.run(move |t| t.period(&payer, &plan)).await
    }
}

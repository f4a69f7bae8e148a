//! The webhook outbox on sqlite ([`crate::store::WebhookOutbox`]): four tables, each step one
//! transaction. Messages are numbered by one sequence (`seq`), so they are ordered within
//! every bucket; a message goes to its payer's bucket (a batch of several payers to bucket 0).
//! The ledger is one sequence here (bucket 0), so the dispatcher's state is one too: payer
//! keys are kept whatever the bucket named, the cursor per bucket.

use crate::store::FromColumns;
use std::collections::BTreeMap;

use async_trait::async_trait;
use rusqlite::params;

use super::tx::Tx;
use super::SqliteStore;
use crate::store::webhook::{
    DeliveryClaim, DeliveryFinish, DeliveryHead, DeliveryResult, FailedDelivery, OutboxAdvance,
    OutboxBacklog, WebhookMessage,
};
use crate::store::{bucket_of, Columns, StoreError, WebhookDelivery, WebhookOutbox};

/// The tables (created within schema version 1: tables an older tollgate never reads).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, bucket INTEGER NOT NULL, id TEXT NOT NULL,
    kind TEXT NOT NULL, payer TEXT NOT NULL, time_ms INTEGER NOT NULL, body TEXT NOT NULL,
    only_to TEXT, written_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_messages_by_bucket ON webhook_messages (bucket, seq);
CREATE TABLE IF NOT EXISTS webhook_state (
    key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_positions (
    endpoint TEXT NOT NULL, bucket INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL DEFAULT 0, lock_by TEXT,
    lock_until INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (endpoint, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_schedule (
    id TEXT PRIMARY KEY, bucket INTEGER NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    payer TEXT NOT NULL, time_ms INTEGER NOT NULL, body TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_schedule_due ON webhook_schedule (bucket, at_ms);
CREATE TABLE IF NOT EXISTS webhook_failures (
    n INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT NOT NULL, bucket INTEGER NOT NULL,
    id TEXT NOT NULL, kind TEXT NOT NULL, payer TEXT NOT NULL, time_ms INTEGER NOT NULL,
    body TEXT NOT NULL, attempts INTEGER NOT NULL, error TEXT NOT NULL,
    failed_ms INTEGER NOT NULL);
";

/// The dispatcher's cursor of a bucket, a state key no payer key can be.
fn cursor_key(b: i64) -> String {
    format!("@cursor{b}")
}

type R<T> = Result<T, StoreError>;

fn bucket(b: u64) -> i64 {
    i64::try_from(b).unwrap_or(0)
}

fn seq_of(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

const MESSAGE_COLUMNS: &str = "seq, id, kind, payer, time_ms, body, only_to AS only";

impl Tx<'_> {
    fn append_message(&self, b: i64, m: &WebhookMessage, now: i64) -> R<WebhookMessage> {
        let seq: Option<i64> = self.row(
            "INSERT INTO webhook_messages (bucket, id, kind, payer, time_ms, body, only_to, \
             written_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq",
            params![b, m.id, m.kind, m.payer, m.time_ms, m.body, m.only, now],
            |r| r.get(0),
        )?;
        Ok(WebhookMessage {
            seq: seq.unwrap_or(0).to_string(),
            ..m.clone()
        })
    }

    fn state_value(&self, key: &str) -> R<Option<String>> {
        self.row(
            "SELECT value FROM webhook_state WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
    }

    fn set_state(&self, key: &str, value: Option<&str>) -> R<()> {
        match value {
            Some(v) => self.exec(
                "INSERT OR REPLACE INTO webhook_state (key, value) VALUES (?1, ?2)",
                params![key, v],
            ),
            None => self.exec("DELETE FROM webhook_state WHERE key = ?1", params![key]),
        }
        .map(|_| ())
    }

    /// (done, attempts, next_ms, lock_by, lock_until) of an endpoint in a bucket.
    fn position(&self, endpoint: &str, b: i64) -> R<(i64, u32, i64, Option<String>, i64)> {
        Ok(self
            .row(
                "SELECT done, attempts, next_ms, lock_by, lock_until FROM webhook_positions \
                 WHERE endpoint = ?1 AND bucket = ?2",
                params![endpoint, b],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?
            .unwrap_or((0, 0, 0, None, 0)))
    }

    fn set_position(
        &self,
        endpoint: &str,
        b: i64,
        (done, attempts, next_ms): (i64, u32, i64),
        lock: (Option<&str>, i64),
    ) -> R<()> {
        self.exec(
            "INSERT OR REPLACE INTO webhook_positions (endpoint, bucket, done, attempts, next_ms, \
             lock_by, lock_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![endpoint, b, done, attempts, next_ms, lock.0, lock.1],
        )
        .map(|_| ())
    }
}

#[async_trait]
impl WebhookOutbox for SqliteStore {
    async fn webhook_state(
        &self,
        b: u64,
        keys: &[String],
    ) -> R<(Option<String>, BTreeMap<String, String>)> {
        let keys = keys.to_vec();
        self.run(move |t| {
            let cursor = t.state_value(&cursor_key(bucket(b)))?;
            let mut values = BTreeMap::new();
            for k in keys {
                if let Some(v) = t.state_value(&k)? {
                    values.insert(k, v);
                }
            }
            Ok((cursor, values))
        })
        .await
    }

    async fn webhook_advance(&self, a: &OutboxAdvance) -> R<bool> {
        let a = a.clone();
        let now = self.now();
        self.run(move |t| {
            let b = bucket(a.bucket);
            if t.state_value(&cursor_key(b))? != a.expected {
                return Ok(false);
            }
            for m in &a.messages {
                let to = if m.payer.is_empty() {
                    b
                } else {
                    bucket(bucket_of(&m.payer))
                };
                t.append_message(to, m, now)?;
            }
            for (at, m) in &a.schedule {
                t.exec(
                    "INSERT OR REPLACE INTO webhook_schedule (id, bucket, at_ms, kind, payer, \
                     time_ms, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![m.id, b, at, m.kind, m.payer, m.time_ms, m.body],
                )?;
            }
            for id in &a.unschedule {
                t.exec(
                    "DELETE FROM webhook_schedule WHERE id = ?1 AND bucket = ?2",
                    params![id, b],
                )?;
            }
            for (k, v) in &a.set {
                t.set_state(k, Some(v))?;
            }
            for k in &a.clear {
                t.set_state(k, None)?;
            }
            t.set_state(&cursor_key(b), Some(&a.cursor))?;
            Ok(true)
        })
        .await
    }

    async fn webhook_enqueue(&self, b: u64, messages: &[WebhookMessage]) -> R<Vec<WebhookMessage>> {
        let messages = messages.to_vec();
        let now = self.now();
        self.run(move |t| {
            messages
                .iter()
                .map(|m| t.append_message(bucket(b), m, now))
                .collect()
        })
        .await
    }

    async fn webhook_backlog(&self, endpoints: &[String]) -> R<Vec<OutboxBacklog>> {
        let endpoints = endpoints.to_vec();
        self.run(move |t| {
            endpoints
                .iter()
                .map(|e| {
                    t.row(
                        "SELECT COUNT(*), MIN(m.written_ms) FROM webhook_messages m \
                         LEFT JOIN webhook_positions p ON p.endpoint = ?1 AND p.bucket = m.bucket \
                         WHERE m.seq > COALESCE(p.done, 0)",
                        params![e],
                        |r| {
                            Ok(OutboxBacklog {
                                pending: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                                oldest_ms: r.get(1)?,
                            })
                        },
                    )
                    .map(Option::unwrap_or_default)
                })
                .collect()
        })
        .await
    }

    async fn webhook_trim(&self, b: u64, endpoints: &[String]) -> R<u64> {
        let endpoints = endpoints.to_vec();
        self.run(move |t| {
            let mut floor = i64::MAX;
            for e in &endpoints {
                floor = floor.min(t.position(e, bucket(b))?.0);
            }
            if endpoints.is_empty() || floor == 0 {
                return Ok(0);
            }
            let n = t.exec(
                "DELETE FROM webhook_messages WHERE bucket = ?1 AND seq <= ?2",
                params![bucket(b), floor],
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn webhook_due(
        &self,
        b: u64,
        now_ms: i64,
        limit: usize,
    ) -> R<Vec<(i64, WebhookMessage)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            t.records(
                "SELECT at_ms, id, kind, payer, time_ms, body FROM webhook_schedule \
                 WHERE bucket = ?1 AND at_ms <= ?2 ORDER BY at_ms, id LIMIT ?3",
                params![bucket(b), now_ms, limit],
                |r| Ok((r.parse("at_ms")?, WebhookMessage::from_columns(r)?)),
            )
        })
        .await
    }

    async fn webhook_set(&self, _bucket: u64, key: &str, value: Option<&str>) -> R<()> {
        let (key, value) = (key.to_owned(), value.map(str::to_owned));
        self.run(move |t| t.set_state(&key, value.as_deref())).await
    }
}

#[async_trait]
impl WebhookDelivery for SqliteStore {
    async fn webhook_claim(&self, c: &DeliveryClaim<'_>) -> R<Option<DeliveryHead>> {
        let (endpoint, holder) = (c.endpoint.to_owned(), c.holder.to_owned());
        let (b, now, lock_ms) = (bucket(c.bucket), c.now_ms, c.lock_ms);
        let max = i64::try_from(c.max).unwrap_or(i64::MAX);
        self.run(move |t| {
            let (done, attempts, next_ms, lock_by, lock_until) = t.position(&endpoint, b)?;
            let locked = lock_until > now && lock_by.as_deref() != Some(holder.as_str());
            if locked || (attempts > 0 && next_ms > now) {
                return Ok(None);
            }
            let messages = t.records(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM webhook_messages WHERE bucket = ?1 AND seq > ?2 \
                     ORDER BY seq LIMIT ?3"
                ),
                params![b, done, max],
                |r| WebhookMessage::from_columns(r),
            )?;
            if !messages.is_empty() {
                let until = now.saturating_add(lock_ms);
                t.set_position(
                    &endpoint,
                    b,
                    (done, attempts, next_ms),
                    (Some(&holder), until),
                )?;
            }
            Ok(Some(DeliveryHead {
                done: if done == 0 {
                    String::new()
                } else {
                    done.to_string()
                },
                attempts,
                messages,
            }))
        })
        .await
    }

    async fn webhook_finish(&self, f: &DeliveryFinish<'_>) -> R<bool> {
        let (endpoint, holder) = (f.endpoint.to_owned(), f.holder.to_owned());
        let (b, expected, now) = (bucket(f.bucket), seq_of(f.done), f.now_ms);
        let (message, attempts, result) = (f.message.clone(), f.attempts, f.result.clone());
        self.run(move |t| {
            let (done, _, _, lock_by, _) = t.position(&endpoint, b)?;
            if done != expected || lock_by.as_deref() != Some(holder.as_str()) {
                return Ok(false);
            }
            let past = seq_of(&message.seq);
            match &result {
                DeliveryResult::Delivered | DeliveryResult::Skipped => {
                    t.set_position(&endpoint, b, (past, 0, 0), (None, 0))?;
                }
                DeliveryResult::Retry { next_ms, .. } => {
                    t.set_position(&endpoint, b, (done, attempts, *next_ms), (None, 0))?;
                }
                DeliveryResult::Failed { error } => {
                    t.exec(
                        "INSERT INTO webhook_failures (endpoint, bucket, id, kind, payer, time_ms, \
                         body, attempts, error, failed_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        params![
                            endpoint,
                            b,
                            message.id,
                            message.kind,
                            message.payer,
                            message.time_ms,
                            message.body,
                            attempts,
                            error,
                            now
                        ],
                    )?;
                    t.set_position(&endpoint, b, (past, 0, 0), (None, 0))?;
                }
            }
            Ok(true)
        })
        .await
    }

    async fn webhook_failures(&self, limit: usize) -> R<Vec<FailedDelivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |t| {
            t.records(
                "SELECT endpoint, id, kind, payer, time_ms, body, attempts, error, failed_ms \
                 FROM webhook_failures ORDER BY n DESC LIMIT ?1",
                params![limit],
                |r| {
                    Ok(FailedDelivery {
                        endpoint: r.text("endpoint")?,
                        message: WebhookMessage::from_columns(r)?,
                        attempts: r.parse("attempts")?,
                        error: r.text("error")?,
                        failed_ms: r.parse("failed_ms")?,
                    })
                },
            )
        })
        .await
    }

    async fn webhook_replay(&self, endpoint: &str, id: &str) -> R<Option<WebhookMessage>> {
        let (endpoint, id) = (endpoint.to_owned(), id.to_owned());
        let now = self.now();
        self.run(move |t| {
            let found = t.row(
                "SELECT n, bucket, kind, payer, time_ms, body FROM webhook_failures \
                 WHERE endpoint = ?1 AND id = ?2 ORDER BY n DESC LIMIT 1",
                params![endpoint, id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        WebhookMessage {
                            id: id.clone(),
                            kind: r.get(2)?,
                            payer: r.get(3)?,
                            time_ms: r.get(4)?,
                            body: r.get(5)?,
                            only: Some(endpoint.clone()),
                            seq: String::new(),
                        },
                    ))
                },
            )?;
            let Some((n, b, message)) = found else {
                return Ok(None);
            };
            t.exec("DELETE FROM webhook_failures WHERE n = ?1", params![n])?;
            t.append_message(b, &message, now).map(Some)
        })
        .await
    }
}

//! The webhook outbox on Redis ([`crate::store::WebhookOutbox`]): per bucket, in the bucket's
//! slot, a stream of messages (`wh:msgs`; the stream id is the message's `seq`), the
//! dispatcher's state (`wh:state`, with its ledger cursor at `@cursor`), each endpoint's
//! position (`wh:pos:<endpoint>`) and the failed deliveries (`wh:failed`, JSON, newest first).
//! Every step that must be atomic is one script (`lua/webhook_*.lua`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::store::webhook::{
    DeliveryClaim, DeliveryFinish, DeliveryHead, DeliveryResult, FailedDelivery, OutboxAdvance,
    OutboxBacklog, WebhookMessage,
};
use crate::store::{WebhookDelivery, WebhookOutbox};

/// Counting an endpoint's backlog looks at no more than this many messages per bucket.
const BACKLOG_SCAN: usize = 10_000;

/// A failed delivery as `wh:failed` keeps it (numbers as strings: Lua's cjson reads numbers
/// as doubles).
#[derive(Debug, Serialize, Deserialize)]
struct FailedJson {
    endpoint: String,
    id: String,
    kind: String,
    payer: String,
    time_ms: String,
    body: String,
    attempts: String,
    error: String,
    failed_ms: String,
}

impl FailedJson {
    fn into_failure(self) -> FailedDelivery {
        FailedDelivery {
            endpoint: self.endpoint,
            message: WebhookMessage {
                id: self.id,
                kind: self.kind,
                payer: self.payer,
                time_ms: self.time_ms.parse().unwrap_or(0),
                body: self.body,
                only: None,
                seq: String::new(),
            },
            attempts: self.attempts.parse().unwrap_or(0),
            error: self.error,
            failed_ms: self.failed_ms.parse().unwrap_or(0),
        }
    }
}

/// A scheduled message as `wh:sched` keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct ScheduledJson {
    kind: String,
    payer: String,
    time_ms: String,
    body: String,
}

type Entry = (String, Vec<(String, String)>);

fn message_of((seq, fields): Entry) -> WebhookMessage {
    let f = crate::store::event::Fields::new("webhook message", &seq, &fields);
    let get = |k: &str| f.opt(k).ok().flatten();
    WebhookMessage {
        id: get("id").unwrap_or_default(),
        kind: get("kind").unwrap_or_default(),
        payer: get("payer").unwrap_or_default(),
        time_ms: get("time_ms").and_then(|t| t.parse().ok()).unwrap_or(0),
        body: get("body").unwrap_or_default(),
        only: get("only"),
        seq,
    }
}

/// A stream id `ms-seq` as numbers, to compare.
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

impl RedisStore {
    fn outbox_key(&self, b: u64) -> String {
        self.key(b, "wh:msgs")
    }

    fn position_key(&self, endpoint: &str, b: u64) -> String {
        self.key(b, &format!("wh:pos:{endpoint}"))
    }

    fn failed_key(&self, b: u64) -> String {
        self.key(b, "wh:failed")
    }

    /// An endpoint's position in a bucket (`None`: it has not started there).
    async fn position_done(
        &self,
        conn: &mut Conn,
        endpoint: &str,
        b: u64,
    ) -> Result<Option<String>, StoreError> {
        self.bounded(
            redis::cmd("HGET")
                .arg(self.position_key(endpoint, b))
                .arg("done")
                .query_async(conn),
        )
        .await
    }
}

#[async_trait]
impl WebhookOutbox for RedisStore {
    async fn webhook_state(
        &self,
        b: u64,
        keys: &[String],
    ) -> Result<(Option<String>, BTreeMap<String, String>), StoreError> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(b, "wh:state")).arg("@cursor").arg(keys);
        let mut values: Vec<Option<String>> = self.bounded(cmd.query_async(&mut conn)).await?;
        let cursor = if values.is_empty() {
            None
        } else {
            values.remove(0)
        };
        let set = keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k.clone(), v)))
            .collect();
        Ok((cursor, set))
    }

    async fn webhook_advance(&self, a: &OutboxAdvance) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.webhook_advance.prepare_invoke();
        inv.key(self.key(a.bucket, "wh:state"))
            .key(self.outbox_key(a.bucket))
            .key(self.key(a.bucket, "wh:sched"))
            .key(self.key(a.bucket, "wh:due"))
            .arg(a.expected.as_deref().unwrap_or(""))
            .arg(&a.cursor)
            .arg(a.set.len());
        for (k, v) in &a.set {
            inv.arg(k).arg(v);
        }
        inv.arg(a.clear.len());
        for k in &a.clear {
            inv.arg(k);
        }
        inv.arg(a.messages.len());
        for m in &a.messages {
            inv.arg(&m.id)
                .arg(&m.kind)
                .arg(&m.payer)
                .arg(m.time_ms)
                .arg(&m.body);
        }
        inv.arg(a.schedule.len());
        for (at, m) in &a.schedule {
            let json = serde_json::to_string(&ScheduledJson {
                kind: m.kind.clone(),
                payer: m.payer.clone(),
                time_ms: m.time_ms.to_string(),
                body: m.body.clone(),
            })
            .map_err(|e| StoreError::Protocol(format!("webhook schedule: {e}")))?;
            inv.arg(*at).arg(&m.id).arg(json);
        }
        inv.arg(a.unschedule.len());
        for id in &a.unschedule {
            inv.arg(id);
        }
        let done: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn webhook_due(
        &self,
        b: u64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, WebhookMessage)>, StoreError> {
        let mut conn = self.connection().await?;
        let due: Vec<(String, f64)> = self
            .bounded(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key(b, "wh:due"))
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&String> = due.iter().map(|(id, _)| id).collect();
        let raw: Vec<Option<String>> = self
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.key(b, "wh:sched"))
                    .arg(&ids)
                    .query_async(&mut conn),
            )
            .await?;
        let mut out = Vec::new();
        for ((id, at), json) in due.iter().zip(raw) {
            let Some(json) = json else { continue };
            let s: ScheduledJson = serde_json::from_str(&json)
                .map_err(|e| StoreError::Protocol(format!("webhook schedule: {e}")))?;
            // Scores are ms below 2^53: exact as doubles.
            #[allow(clippy::cast_possible_truncation)]
            let at = *at as i64;
            out.push((
                at,
                WebhookMessage {
                    id: id.clone(),
                    kind: s.kind,
                    payer: s.payer,
                    time_ms: s.time_ms.parse().unwrap_or(0),
                    body: s.body,
                    only: None,
                    seq: String::new(),
                },
            ));
        }
        Ok(out)
    }

    async fn webhook_enqueue(
        &self,
        b: u64,
        messages: &[WebhookMessage],
    ) -> Result<Vec<WebhookMessage>, StoreError> {
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for m in messages {
            let cmd = pipe
                .cmd("XADD")
                .arg(self.outbox_key(b))
                .arg("*")
                .arg("id")
                .arg(&m.id)
                .arg("kind")
                .arg(&m.kind)
                .arg("payer")
                .arg(&m.payer)
                .arg("time_ms")
                .arg(m.time_ms)
                .arg("body")
                .arg(&m.body);
            if let Some(only) = &m.only {
                cmd.arg("only").arg(only);
            }
        }
        let seqs: Vec<String> = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(messages
            .iter()
            .zip(seqs)
            .map(|(m, seq)| WebhookMessage { seq, ..m.clone() })
            .collect())
    }

    async fn webhook_backlog(
        &self,
        endpoints: &[String],
    ) -> Result<Vec<OutboxBacklog>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for e in endpoints {
            let mut total = OutboxBacklog::default();
            for b in 0..BUCKETS {
                let done = self.position_done(&mut conn, e, b).await?;
                let from = done.map_or("-".to_owned(), |d| format!("({d}"));
                let ids: Vec<(String, Vec<(String, String)>)> = self
                    .bounded(
                        redis::cmd("XRANGE")
                            .arg(self.outbox_key(b))
                            .arg(from)
                            .arg("+")
                            .arg("COUNT")
                            .arg(BACKLOG_SCAN)
                            .query_async(&mut conn),
                    )
                    .await?;
                total.pending += u64::try_from(ids.len()).unwrap_or(0);
                if let Some((first, _)) = ids.first() {
                    let ms = i64::try_from(stream_order(first).0).unwrap_or(0);
                    total.oldest_ms = Some(total.oldest_ms.map_or(ms, |o| o.min(ms)));
                }
            }
            out.push(total);
        }
        Ok(out)
    }

    async fn webhook_trim(&self, b: u64, endpoints: &[String]) -> Result<u64, StoreError> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        let mut conn = self.connection().await?;
        let mut floor: Option<(u64, u64)> = None;
        for e in endpoints {
            let Some(done) = self.position_done(&mut conn, e, b).await? else {
                // This endpoint has not started: everything is still to deliver.
                return Ok(0);
            };
            let at = stream_order(&done);
            floor = Some(floor.map_or(at, |f| f.min(at)));
        }
        let Some((ms, seq)) = floor else {
            return Ok(0);
        };
        // MINID keeps ids >= the bound: the first id past every endpoint's position.
        let removed: u64 = self
            .bounded(
                redis::cmd("XTRIM")
                    .arg(self.outbox_key(b))
                    .arg("MINID")
                    .arg(format!("{ms}-{}", seq.saturating_add(1)))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed)
    }

    async fn webhook_set(&self, b: u64, key: &str, value: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let state = self.key(b, "wh:state");
        let cmd = match value {
            Some(v) => {
                let mut c = redis::cmd("HSET");
                c.arg(&state).arg(key).arg(v);
                c
            }
            None => {
                let mut c = redis::cmd("HDEL");
                c.arg(&state).arg(key);
                c
            }
        };
        let _: i64 = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }
}

#[async_trait]
impl WebhookDelivery for RedisStore {
    async fn webhook_claim(
        &self,
        c: &DeliveryClaim<'_>,
    ) -> Result<Option<DeliveryHead>, StoreError> {
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.webhook_claim.prepare_invoke();
        inv.key(self.position_key(c.endpoint, c.bucket))
            .key(self.outbox_key(c.bucket))
            .arg(c.holder)
            .arg(c.now_ms)
            .arg(c.lock_ms)
            .arg(c.max.max(1));
        let reply: Option<(String, u32, Vec<Entry>)> =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(reply.map(|(done, attempts, entries)| DeliveryHead {
            done,
            attempts,
            messages: entries.into_iter().map(message_of).collect(),
        }))
    }

    async fn webhook_finish(&self, f: &DeliveryFinish<'_>) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let (outcome, next_ms, failure) = match &f.result {
            DeliveryResult::Delivered | DeliveryResult::Skipped => ("past", 0, String::new()),
            DeliveryResult::Retry { next_ms, .. } => ("retry", *next_ms, String::new()),
            DeliveryResult::Failed { error } => {
                let m = f.message;
                let json = serde_json::to_string(&FailedJson {
                    endpoint: f.endpoint.to_owned(),
                    id: m.id.clone(),
                    kind: m.kind.clone(),
                    payer: m.payer.clone(),
                    time_ms: m.time_ms.to_string(),
                    body: m.body.clone(),
                    attempts: f.attempts.to_string(),
                    error: error.clone(),
                    failed_ms: f.now_ms.to_string(),
                })
                .map_err(|e| StoreError::Protocol(format!("webhook failure: {e}")))?;
                ("failed", 0, json)
            }
        };
        let mut inv = self.scripts.webhook_finish.prepare_invoke();
        inv.key(self.position_key(f.endpoint, f.bucket))
            .key(self.failed_key(f.bucket))
            .arg(f.holder)
            .arg(f.done)
            .arg(outcome)
            .arg(&f.message.seq)
            .arg(f.attempts)
            .arg(next_ms)
            .arg(failure);
        let done: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn webhook_failures(&self, limit: usize) -> Result<Vec<FailedDelivery>, StoreError> {
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        let last = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        for b in 0..BUCKETS {
            let raw: Vec<String> = self
                .bounded(
                    redis::cmd("LRANGE")
                        .arg(self.failed_key(b))
                        .arg(0)
                        .arg(last)
                        .query_async(&mut conn),
                )
                .await?;
            for r in raw {
                let f: FailedJson = serde_json::from_str(&r)
                    .map_err(|e| StoreError::Protocol(format!("webhook failure: {e}")))?;
                out.push(f.into_failure());
            }
        }
        out.sort_by_key(|f| std::cmp::Reverse(f.failed_ms));
        out.truncate(limit);
        Ok(out)
    }

    async fn webhook_replay(
        &self,
        endpoint: &str,
        message_id: &str,
    ) -> Result<Option<WebhookMessage>, StoreError> {
        let mut conn = self.connection().await?;
        for b in 0..BUCKETS {
            let mut inv = self.scripts.webhook_replay.prepare_invoke();
            inv.key(self.failed_key(b))
                .key(self.outbox_key(b))
                .arg(endpoint)
                .arg(message_id);
            let found: Option<(String, String)> = self.bounded(inv.invoke_async(&mut conn)).await?;
            if let Some((seq, raw)) = found {
                let f: FailedJson = serde_json::from_str(&raw)
                    .map_err(|e| StoreError::Protocol(format!("webhook failure: {e}")))?;
                let mut message = f.into_failure().message;
                message.only = Some(endpoint.to_owned());
                message.seq = seq;
                return Ok(Some(message));
            }
        }
        Ok(None)
    }
}

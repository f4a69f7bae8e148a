//! The Redis store's usage ledger and what is derived from it ([`crate::store::LedgerStore`]),
//! and the drain side of its streams: each bucket's `events` (usage events and voids),
//! `credits` and `refunds` streams are the short buffer a drainer (`ledger::Drainer`, feature `postgres`)
//! reads from the head, inserts into the ledger of record and only then trims.
//!
//! Trimming is `XTRIM MINID` just past the last entry a drainer inserted. Entries are read
//! from the head, and everything before the head was inserted by whoever trimmed it, so a
//! trim never removes an entry nobody inserted -- also when two drainers overlap (a lease
//! that lapsed): the later trim is then a no-op or covers entries the later drainer inserted
//! itself.

use super::*;
use crate::store::event::Fields;
use crate::store::EventPage;

/// The three ledger streams of each bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LedgerStream {
    /// Usage events (charges) and their voids.
    Events,
    /// Balance credits and debits (top-ups, admin credits, refunds).
    Credits,
    /// Refunds of charges (`refund.lua`).
    Refunds,
}

impl LedgerStream {
    /// Every one, in drain order.
    pub const ALL: [LedgerStream; 3] = [
        LedgerStream::Events,
        LedgerStream::Credits,
        LedgerStream::Refunds,
    ];

    /// The stream's key suffix, and its metric label.
    pub fn name(self) -> &'static str {
        match self {
            LedgerStream::Events => "events",
            LedgerStream::Credits => "credits",
            LedgerStream::Refunds => "refunds",
        }
    }
}

/// One balance credit or debit as its stream records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditRecord {
    /// Credit ledger id `<ms>-<seq>-<bucket>` (as [`crate::store::CreditOutcome`] answers).
    pub id: String,
    /// When it was applied, unix ms (the Redis clock: the stream id's time).
    pub time_ms: i64,
    /// Whose balance.
    pub payer: String,
    /// Currency code.
    pub currency: String,
    /// Signed amount in minor units (a debit is negative).
    pub amount_minor: i64,
    /// Why (`topup`, the admin's reason, a refund).
    pub reason: String,
    /// Who: `receipt:<iss>:<jti>`, `admin`, `reconcile:<reservation>`.
    pub source: String,
}

/// One entry of a ledger stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEntry {
    /// A usage event or void (from `events`).
    Event(UsageEvent),
    /// A credit or debit (from `credits`).
    Credit(CreditRecord),
    /// A refund (from `refunds`).
    Refund(crate::store::RefundRecord),
    /// An entry that does not parse: kept whole (the ledger stores it apart, so the drain
    /// never stalls on it and nothing is lost).
    Unreadable {
        /// Its ledger id.
        id: String,
        /// Its raw fields.
        fields: Vec<(String, String)>,
        /// Why it does not parse.
        error: String,
    },
}

/// Entries read from the head of one bucket's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBatch {
    /// Which stream.
    pub stream: LedgerStream,
    /// Which bucket.
    pub bucket: u64,
    /// The entries, oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The stream id of the last entry (what [`RedisStore::trim_ledger`] trims up to).
    last: Option<(u64, u64)>,
}

impl StreamBatch {
    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What waits in the ledger streams of every bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries not drained yet.
    pub entries: u64,
    /// Time of the oldest of them, unix ms (Redis clock); `None` when nothing waits.
    pub oldest_ms: Option<i64>,
}

fn stream_id_parts(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl CreditRecord {
    fn from_fields(
        id: String,
        time_ms: i64,
        fields: &[(String, String)],
    ) -> Result<Self, StoreError> {
        let f = Fields::new("credit", &id, fields);
        Ok(CreditRecord {
            time_ms,
            payer: f.text("payer")?,
            currency: f.text("currency")?,
            amount_minor: f.parse("amount_minor")?,
            reason: f.opt("reason")?.unwrap_or_default(),
            source: f.opt("source")?.unwrap_or_default(),
            id,
        })
    }
}

impl RedisStore {
    fn ledger_stream_key(&self, stream: LedgerStream, bucket: u64) -> String {
        match stream {
            LedgerStream::Events => self.events_key(bucket),
            LedgerStream::Credits => self.key(bucket, "credits"),
            LedgerStream::Refunds => self.refunds_key(bucket),
        }
    }

    /// Take or renew the drain lease of `bucket` for drainer `owner` (for `lease`) and read
    /// up to `count` entries from the head (oldest end) of each of its ledger streams, in one
    /// call: `None` while another drainer holds the lease.
    pub async fn lease_and_read(
        &self,
        bucket: u64,
        owner: &str,
        lease: Duration,
        count: usize,
    ) -> Result<Option<[StreamBatch; 3]>, StoreError> {
        type Page = Vec<(String, Vec<(String, String)>)>;
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.drain_lease.prepare_invoke();
        inv.key(self.key(bucket, "drain-lease"))
            .key(self.ledger_stream_key(LedgerStream::Events, bucket))
            .key(self.ledger_stream_key(LedgerStream::Credits, bucket))
            .key(self.ledger_stream_key(LedgerStream::Refunds, bucket))
            .arg(owner)
            .arg(ms(lease))
            .arg(count.max(1));
        let pages: Option<(Page, Page, Page)> = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(pages.map(|(events, credits, refunds)| {
            [
                Self::batch(LedgerStream::Events, bucket, events),
                Self::batch(LedgerStream::Credits, bucket, credits),
                Self::batch(LedgerStream::Refunds, bucket, refunds),
            ]
        }))
    }

    /// Parse a page of stream entries.
    fn batch(
        stream: LedgerStream,
        bucket: u64,
        page: Vec<(String, Vec<(String, String)>)>,
    ) -> StreamBatch {
        let last = page.last().and_then(|(id, _)| stream_id_parts(id));
        let entries = page
            .into_iter()
            .map(|(sid, fields)| {
                let id = Self::ledger_id(bucket, &sid);
                let parsed = match stream {
                    LedgerStream::Events => UsageEvent::from_fields(id.clone(), &fields)
                        .map(LedgerEntry::Event)
                        .map_err(|e| e.to_string()),
                    LedgerStream::Credits => {
                        let time_ms = stream_id_parts(&sid)
                            .and_then(|(ms, _)| i64::try_from(ms).ok())
                            .unwrap_or(0);
                        CreditRecord::from_fields(id.clone(), time_ms, &fields)
                            .map(LedgerEntry::Credit)
                            .map_err(|e| e.to_string())
                    }
                    LedgerStream::Refunds => {
                        crate::store::RefundRecord::from_fields(id.clone(), &fields)
                            .map(LedgerEntry::Refund)
                            .map_err(|e| e.to_string())
                    }
                };
                parsed.unwrap_or_else(|error| LedgerEntry::Unreadable { id, fields, error })
            })
            .collect();
        StreamBatch {
            stream,
            bucket,
            entries,
            last,
        }
    }

    /// Remove a batch from its stream once the ledger holds it: `XTRIM MINID` just past its
    /// last entry (see the module docs for why that never removes an entry nobody inserted).
    /// Returns the number of entries removed (0 when another drainer trimmed them first).
    pub async fn trim_ledger(&self, batch: &StreamBatch) -> Result<u64, StoreError> {
        let Some((ms, seq)) = batch.last else {
            return Ok(0);
        };
        let min_id = match seq.checked_add(1) {
            Some(next) => format!("{ms}-{next}"),
            None => format!("{}-0", ms.saturating_add(1)),
        };
        let mut conn = self.connection().await?;
        self.bounded(
            redis::cmd("XTRIM")
                .arg(self.ledger_stream_key(batch.stream, batch.bucket))
                .arg("MINID")
                .arg("=")
                .arg(min_id)
                .query_async(&mut conn),
        )
        .await
    }

    /// What waits in every bucket's ledger streams (one call per bucket).
    pub async fn ledger_backlog(&self) -> Result<Backlog, StoreError> {
        let mut conn = self.connection().await?;
        let mut total = Backlog::default();
        for bucket in 0..BUCKETS {
            let mut inv = self.scripts.backlog.prepare_invoke();
            for stream in LedgerStream::ALL {
                inv.key(self.ledger_stream_key(stream, bucket));
            }
            let reply: Vec<Value> = self.bounded(inv.invoke_async(&mut conn)).await?;
            for pair in reply.chunks(2) {
                let len = match pair.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                let oldest = match pair.get(1) {
                    Some(Value::BulkString(b)) => std::str::from_utf8(b)
                        .ok()
                        .and_then(stream_id_parts)
                        .and_then(|(ms, _)| i64::try_from(ms).ok()),
                    _ => None,
                };
                total.entries += len;
                total.oldest_ms = match (total.oldest_ms, oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(total)
    }
}

#[async_trait]
impl LedgerStore for RedisStore {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut rows = BTreeMap::new();
        for day in &days {
            let keys: Vec<String> = match payer {
                Some(p) => vec![self.payer_agg_key(p, day)],
                None => (0..BUCKETS).map(|b| self.bucket_agg_key(b, day)).collect(),
            };
            for key in keys {
                let fields: Vec<(String, i64)> = self.hgetall(&mut conn, &key).await?;
                fold_aggregates(day, &fields, &mut rows);
            }
        }
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        let days = days_between(from, to)?;
        let mut conn = self.connection().await?;
        let mut out = BTreeMap::new();
        for day in &days {
            for bucket in 0..BUCKETS {
                let fields: Vec<(String, i64)> = self
                    .hgetall(&mut conn, &self.payer_totals_key(bucket, day))
                    .await?;
                fold_payer_totals(&fields, &mut out);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn events(&self, page: EventPage<'_>) -> Result<Vec<UsageEvent>, StoreError> {
        match page {
            EventPage::After { after, limit } => self.events_from(after, limit, false).await,
            EventPage::Bucket {
                bucket,
                after,
                limit,
            } => {
                let from = match after.map(event_order) {
                    Some((ms, seq, _)) => format!("({ms}-{seq}"),
                    None => "-".to_owned(),
                };
                self.stream_page("XRANGE", bucket, (&from, "+"), limit)
                    .await
            }
            EventPage::Before { before, limit } => self.events_from(before, limit, true).await,
            EventPage::Payer {
                payer,
                before,
                limit,
            } => {
                // Only the payer's bucket holds its events: walk that stream newest first.
                let bucket = bucket_of(payer);
                let mut from = match before.map(event_order) {
                    Some((ms, seq, _)) => format!("({ms}-{seq}"),
                    None => "+".to_owned(),
                };
                let page = limit.clamp(64, 1000);
                let (mut out, mut scanned) = (Vec::new(), 0);
                while out.len() < limit && scanned < crate::store::PAYER_SCAN_MAX {
                    let events = self
                        .stream_page("XREVRANGE", bucket, (&from, "-"), page)
                        .await?;
                    let Some(last) = events.last() else {
                        break;
                    };
                    let (ms, seq, _) = event_order(&last.id);
                    from = format!("({ms}-{seq}");
                    scanned += events.len();
                    let exhausted = events.len() < page;
                    out.extend(events.into_iter().filter(|e| e.payer == payer));
                    if exhausted {
                        break;
                    }
                }
                out.truncate(limit);
                Ok(out)
            }
        }
    }
}

impl RedisStore {
    /// Up to `limit` events past `cursor` (oldest first, or newest first), in ledger order.
    async fn events_from(
        &self,
        cursor: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let cursor = cursor.map(event_order);
        let (command, open, far) = if newest_first {
            ("XREVRANGE", "+", "-")
        } else {
            ("XRANGE", "-", "+")
        };
        let mut out = Vec::new();
        for bucket in 0..BUCKETS {
            let from = match cursor {
                None => open.to_owned(),
                Some((ms, seq, b)) => {
                    // Within a bucket, stream ids order events; across buckets the bucket
                    // breaks ties, so the cursor's own stream id still counts in the buckets
                    // past the cursor's (in the scan's direction).
                    let past = if newest_first { bucket < b } else { bucket > b };
                    if past {
                        format!("{ms}-{seq}")
                    } else {
                        format!("({ms}-{seq}")
                    }
                }
            };
            out.extend(
                self.stream_page(command, bucket, (&from, far), limit)
                    .await?,
            );
        }
        if newest_first {
            out.sort_by_key(|e| std::cmp::Reverse(event_order(&e.id)));
        } else {
            out.sort_by_key(|e| event_order(&e.id));
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Up to `limit` events of one bucket's stream: `XRANGE` or `XREVRANGE` with its two bounds.
    async fn stream_page(
        &self,
        command: &str,
        bucket: u64,
        (from, to): (&str, &str),
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let mut conn = self.connection().await?;
        let page: Vec<(String, Vec<(String, String)>)> = self
            .bounded(
                redis::cmd(command)
                    .arg(self.events_key(bucket))
                    .arg(from)
                    .arg(to)
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn),
            )
            .await?;
        page.into_iter()
            .map(|(id, fields)| UsageEvent::from_fields(Self::ledger_id(bucket, &id), &fields))
            .collect()
    }
}

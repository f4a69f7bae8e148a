//! Refunds on Redis ([`RefundStore`]): `refund_claim.lua` claims the `Idempotency-Key` in its
//! own slot (one key, one refund, across buckets), then `refund.lua` decides and writes the
//! refund in the charge's bucket in one step (what remains refundable, the void, the refund
//! entry in the bucket's `refunds` stream, the balance credit, the aggregates).
//!
//! Keys: `<prefix>:{bNN}:rf:<charge stream id>` the charge's refund state (hash: `refunded`,
//! `voided`, `k:<key hash>` and `r:<key hash>` per refund; 400 days from the last refund; 2 days when it only
//! marks a void), `<prefix>:{bKK}:rkey:<key hash>` a refund key's claim (`KK =
//! fnv1a64(key) % 16`; 400 days), `<prefix>:{bNN}:refunds` the refund stream (drained to
//! the ledger of record and trimmed like `events` and `credits`).

use async_trait::async_trait;

use super::*;
use crate::store::event::Fields;
use crate::store::refund::{REFUND_STATE_KEEP_MS, VOID_SEARCH_MS};
use crate::store::{
    bucket_of_id, rules, RefundOutcome, RefundQuery, RefundRecord, RefundRequest, RefundStore,
    RefundTarget, PAYER_SCAN_MAX,
};

type Page = Vec<(String, Vec<(String, String)>)>;

/// A page of stream entries read while searching.
const SCAN_PAGE: usize = 1000;

fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RefundRecord {
    /// A refund stream entry (`id`: its ledger id).
    pub(crate) fn from_fields(id: String, fields: &[(String, String)]) -> Result<Self, StoreError> {
        // The stream holds the credit's stream id; its ledger id adds the bucket (the same).
        let bucket = id.rsplit_once('-').map_or("0", |(_, b)| b).to_owned();
        let mut rec = Self::from_columns(&Fields::new("refund", &id, fields))?;
        rec.credit_id = rec.credit_id.map(|c| format!("{c}-{bucket}"));
        Ok(rec)
    }
}

impl RedisStore {
    /// A charge's refund state, in its payer's bucket (the bucket its id names, for a charge
    /// the store recorded).
    pub(super) fn refund_state_key(&self, charge: &UsageEvent) -> Result<String, StoreError> {
        Ok(self.key(
            bucket_of(&charge.payer),
            &format!("rf:{}", Self::stream_id(&charge.id)?),
        ))
    }

    pub(super) fn refunds_key(&self, bucket: u64) -> String {
        self.key(bucket, "refunds")
    }

    /// Entries of `stream` from `start` to `end` (XRANGE syntax), at most `count`.
    async fn range(
        &self,
        conn: &mut Conn,
        stream: &str,
        (start, end): (&str, &str),
        count: usize,
        reverse: bool,
    ) -> Result<Page, StoreError> {
        let (cmd, a, b) = if reverse {
            ("XREVRANGE", end, start)
        } else {
            ("XRANGE", start, end)
        };
        self.bounded(
            redis::cmd(cmd)
                .arg(stream)
                .arg(a)
                .arg(b)
                .arg("COUNT")
                .arg(count)
                .query_async(conn),
        )
        .await
    }

    /// `refund.lua`'s keys and arguments for `r` (the key's hash `hash`).
    fn refund_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        r: &RefundRequest,
        hash: &str,
    ) -> Result<(), StoreError> {
        let c = &r.charge;
        let (bucket, day, owed) = (bucket_of(&c.payer), utc_day(c.time_ms), r.owed_to());
        let flag = |b: bool| if b { "1" } else { "0" };
        self.usage_options(inv);
        inv.key(self.refund_state_key(c)?)
            .key(self.account_key(&c.payer))
            .key(self.key(bucket, "credits"))
            .key(self.refunds_key(bucket))
            .key(self.payer_agg_key(&c.payer, &day))
            .key(self.bucket_agg_key(bucket, &day))
            .key(self.payer_totals_key(bucket, &day))
            .arg(hash)
            .arg(&r.fingerprint)
            .arg(c.amount_minor)
            .arg(r.amount_minor.map(|a| a.to_string()).unwrap_or_default())
            .arg(flag(r.voided || c.voids.is_some()))
            .arg(&c.currency)
            .arg(flag(owed.is_some()))
            .arg(REFUND_STATE_KEEP_MS)
            .arg(c.amount_field())
            .arg(&c.payer)
            .arg(flag(rules::refund_open(c.time_ms, r.time_ms)));
        let record = [
            ("time_ms", r.time_ms.to_string()),
            ("event_id", c.id.clone()),
            ("charge_time_ms", c.time_ms.to_string()),
            ("payer", c.payer.clone()),
            ("route", c.route.clone()),
            ("credential", c.credential.clone()),
            ("currency", c.currency.clone()),
            ("scale", c.scale.to_string()),
            ("reason", r.reason.clone()),
            ("owed_to", owed.unwrap_or_default()),
        ];
        let credit = [
            ("payer", c.payer.clone()),
            ("currency", c.currency.clone()),
            ("reason", r.reason.clone()),
            ("source", format!("refund:{}", c.id)),
        ];
        for pairs in [&record[..], &credit[..]] {
            inv.arg(pairs.len());
            for (k, v) in pairs {
                inv.arg(*k).arg(v);
            }
        }
        Ok(())
    }

    /// The refund record of `r` as answered by `refund.lua` (`sid`: its stream id).
    fn answered(
        r: &RefundRequest,
        bucket: u64,
        (sid, amount, credit, remaining): (&str, i64, &str, i64),
    ) -> RefundRecord {
        let credit_id = (!credit.is_empty()).then(|| Self::ledger_id(bucket, credit));
        RefundRecord::of(
            r,
            Self::ledger_id(bucket, sid),
            u64::try_from(amount).unwrap_or(0),
            u64::try_from(remaining).unwrap_or(0),
            credit_id,
        )
    }
}

#[async_trait]
impl RefundStore for RedisStore {
    async fn refund_target(&self, id: &str) -> Result<Option<RefundTarget>, StoreError> {
        let Some(bucket) = bucket_of_id(id) else {
            return Ok(None);
        };
        let Ok(sid) = Self::stream_id(id) else {
            return Ok(None);
        };
        let mut conn = self.connection().await?;
        let page = self
            .range(&mut conn, &self.events_key(bucket), (sid, sid), 1, false)
            .await?;
        let Some((_, fields)) = page.first() else {
            return Ok(None);
        };
        let event = UsageEvent::from_fields(id.to_owned(), fields)?;
        let voided = self.void_recorded(&event).await?;
        Ok(Some(RefundTarget { event, voided }))
    }

    /// Only a charge taken at admission can have a void: its refund state's mark (recent
    /// voids), else the bucket's events within [`VOID_SEARCH_MS`] after it (at most
    /// [`PAYER_SCAN_MAX`] entries).
    async fn void_recorded(&self, charge: &UsageEvent) -> Result<bool, StoreError> {
        if charge.captured_at() != Some("admission") {
            return Ok(false);
        }
        let mut conn = self.connection().await?;
        let marked: bool = self
            .bounded(
                redis::cmd("HEXISTS")
                    .arg(self.refund_state_key(charge)?)
                    .arg("voided")
                    .query_async(&mut conn),
            )
            .await?;
        if marked {
            return Ok(true);
        }
        let stream = self.events_key(bucket_of(&charge.payer));
        let end = format!("{}", charge.time_ms.saturating_add(VOID_SEARCH_MS).max(0));
        let mut start = format!("({}", Self::stream_id(&charge.id)?);
        let mut seen = 0;
        while seen < PAYER_SCAN_MAX {
            let page = self
                .range(&mut conn, &stream, (&start, &end), SCAN_PAGE, false)
                .await?;
            let found = page.iter().any(|(_, f)| {
                f.iter()
                    .any(|(k, v)| k == "voids" && v.as_str() == charge.id)
            });
            if found {
                return Ok(true);
            }
            match page.last() {
                Some((last, _)) if page.len() == SCAN_PAGE => start = format!("({last}"),
                _ => return Ok(false),
            }
            seen += page.len();
        }
        Ok(false)
    }

    async fn refund(&self, r: &RefundRequest) -> Result<RefundOutcome, StoreError> {
        let c = &r.charge;
        let bucket = bucket_of(&c.payer);
        let hash = key_hash(&r.key);
        let mut conn = self.connection().await?;
        let mut claim = self.scripts.refund_claim.prepare_invoke();
        claim
            .key(self.key(bucket_of(&r.key), &format!("rkey:{hash}")))
            .arg(&r.fingerprint)
            .arg(REFUND_STATE_KEEP_MS);
        let ours: i64 = self.bounded(claim.invoke_async(&mut conn)).await?;
        if ours != 1 {
            return Ok(RefundOutcome::KeyReused);
        }
        let mut inv = self.scripts.refund.prepare_invoke();
        self.refund_args(&mut inv, r, &hash)?;
        let (status, sid, amount, credit, remaining, at): (String, String, i64, String, i64, i64) =
            self.bounded(inv.invoke_async(&mut conn)).await?;
        let answered = || Self::answered(r, bucket, (&sid, amount, &credit, remaining));
        Ok(match status.as_str() {
            "refunded" => RefundOutcome::Refunded(answered()),
            "duplicate" => RefundOutcome::Duplicate(RefundRecord {
                time_ms: at,
                ..answered()
            }),
            "key_reused" => RefundOutcome::KeyReused,
            "voided" => RefundOutcome::Voided,
            "window_closed" => RefundOutcome::WindowClosed,
            "zero" => RefundOutcome::Zero,
            "exceeds" => RefundOutcome::Exceeds {
                refundable_minor: u64::try_from(remaining).unwrap_or(0),
            },
            other => return Err(StoreError::Protocol(format!("refund replied {other:?}"))),
        })
    }

    async fn refunds(&self, q: &RefundQuery) -> Result<Vec<RefundRecord>, StoreError> {
        let cursor = q.before.as_deref().map(event_order);
        let buckets: Vec<u64> = match &q.payer {
            Some(p) => vec![bucket_of(p)],
            None => (0..BUCKETS).collect(),
        };
        let mut conn = self.connection().await?;
        let mut out = Vec::new();
        for bucket in buckets {
            let mut end = match cursor {
                None => "+".to_owned(),
                Some((ms, seq, b)) if bucket < b => format!("{ms}-{seq}"),
                Some((ms, seq, _)) => format!("({ms}-{seq}"),
            };
            let (mut found, mut seen) = (0, 0);
            while found < q.limit && seen < PAYER_SCAN_MAX {
                let stream = self.refunds_key(bucket);
                let page = self
                    .range(&mut conn, &stream, ("-", &end), SCAN_PAGE, true)
                    .await?;
                for (sid, fields) in &page {
                    let rec = RefundRecord::from_fields(Self::ledger_id(bucket, sid), fields)?;
                    if q.admits(&rec) {
                        found += 1;
                        out.push(rec);
                    }
                }
                match page.last() {
                    Some((last, _)) if page.len() == SCAN_PAGE => end = format!("({last}"),
                    _ => break,
                }
                seen += page.len();
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(event_order(&r.id)));
        out.truncate(q.limit);
        Ok(out)
    }
}

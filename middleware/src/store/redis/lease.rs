//! Balance leases on Redis ([`crate::store::LeaseStore`]): `lua/lease.lua`, one script per
//! batch.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{bucket_of, ms, RedisStore};
use crate::store::{
    utc_day, LeaseResize, LeaseStatus, LeaseStore, LeaseSync, LeaseSynced, StoreError,
};

#[async_trait]
impl LeaseStore for RedisStore {
    async fn lease_sync(&self, s: &LeaseSync<'_>) -> Result<LeaseSynced, StoreError> {
        let day = match s.charges.first() {
            Some(e) => utc_day(e.time_ms),
            None => utc_day(0),
        };
        if let Some(other) = s.charges.iter().find(|e| utc_day(e.time_ms) != day) {
            return Err(StoreError::Protocol(format!(
                "a lease batch spans two days ({day} and {})",
                utc_day(other.time_ms)
            )));
        }
        let b = bucket_of(s.payer);
        let mut conn = self.connection().await?;
        let mut inv = self.scripts.lease.prepare_invoke();
        self.usage_options(&mut inv);
        inv.key(self.account_key(s.payer))
            .key(self.holds_key(s.payer))
            .key(self.blocked_key(s.payer))
            .key(self.events_key(b))
            .key(self.payer_agg_key(s.payer, &day))
            .key(self.bucket_agg_key(b, &day))
            .key(self.payer_totals_key(b, &day))
            .arg(s.lease_id)
            .arg(s.currency)
            .arg(s.seq)
            .arg(s.reserved_minor)
            .arg(s.target_minor)
            .arg(match s.resize {
                LeaseResize::Grow => "grow",
                LeaseResize::Fit => "fit",
            })
            .arg(ms(s.ttl))
            .arg(s.charges.len());
        // The fields every charge of the batch shares (payer, route, units, ...) go once; each
        // charge sends only the rest (its time, reservation, status): far fewer arguments.
        let fields: Vec<Vec<(&str, String)>> =
            s.charges.iter().map(|e| e.to_fields(false)).collect();
        let common: Vec<(&str, String)> = match fields.split_first() {
            Some((first, rest)) => first
                .iter()
                .filter(|f| rest.iter().all(|o| o.contains(f)))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        inv.arg(common.len());
        for (k, v) in &common {
            inv.arg(*k).arg(v);
        }
        // The batch's request and unit counts, summed here (what is charged is decided by the
        // script, per charge).
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (e, fields) in s.charges.iter().zip(&fields) {
            let own: Vec<&(&str, String)> = fields.iter().filter(|f| !common.contains(f)).collect();
            inv.arg(e.amount_minor).arg(own.len());
            for (k, v) in own {
                inv.arg(*k).arg(v);
            }
            inv.arg(e.amount_field());
            for (k, v) in e.aggregate_fields() {
                *counts.entry(k).or_default() += v;
            }
        }
        inv.arg(counts.len());
        for (k, v) in &counts {
            inv.arg(k).arg(*v);
        }
        let reply: Vec<redis::Value> = self.bounded(inv.invoke_async(&mut conn)).await?;
        parse(reply)
    }
}

fn parse(reply: Vec<redis::Value>) -> Result<LeaseSynced, StoreError> {
    use redis::FromRedisValue;
    let bad = |what: &str| StoreError::Protocol(format!("lease replied without {what}"));
    let mut it = reply.into_iter();
    let conv = |e: redis::RedisError| StoreError::Protocol(format!("lease reply: {e}"));
    let mut next = |what: &str| it.next().ok_or_else(|| bad(what));
    let status = String::from_redis_value(&next("a status")?).map_err(conv)?;
    let mut num = |what: &str| -> Result<i64, StoreError> {
        i64::from_redis_value(&next(what)?).map_err(conv)
    };
    let lease = num("the lease")?;
    let balance = num("the balance")?;
    let had = num("the lease flag")?;
    let charged = num("the charged amount")?;
    let recorded = num("the number of events")?;
    let mut short = Vec::new();
    while let Some(i) = it.next() {
        let i = i64::from_redis_value(&i).map_err(conv)?;
        let u = i64::from_redis_value(&it.next().ok_or_else(|| bad("an uncharged amount"))?)
            .map_err(conv)?;
        short.push((
            usize::try_from(i).unwrap_or(usize::MAX),
            u64::try_from(u).unwrap_or(0),
        ));
    }
    let status = match status.as_str() {
        "ok" => LeaseStatus::Ok,
        "blocked" => LeaseStatus::Blocked,
        "duplicate" => LeaseStatus::Duplicate,
        other => return Err(StoreError::Protocol(format!("lease replied {other:?}"))),
    };
    let minor = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(LeaseSynced {
        status,
        lease_minor: minor(lease),
        balance_minor: minor(balance),
        had_lease: had == 1,
        charged_minor: minor(charged),
        recorded: minor(recorded),
        short,
    })
}

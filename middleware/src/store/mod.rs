//! The payment store: where single use, holds and the usage ledger live.
//!
//! Two implementations of one [`Store`] trait: [`RedisStore`] (production; every operation is
//! one Lua script, atomic across any number of gateway processes) and [`MemoryStore`] (the
//! embedded default for a single process, and for engine tests). Both follow the same state
//! machine for a receipt:
//!
//! ```text
//!   (absent) --authorize--> held:<reservation>  (expires after the hold time)
//!   held     --capture----> spent:<reservation>:<event id>  (+ one usage event appended)
//!   held     --release----> (absent)            (the receipt can be used again)
//! ```
//!
//! # Key layout (Redis)
//! Every key a script touches carries the payer's bucket as its hash tag, so each script runs
//! unchanged on Redis Cluster: `<prefix>:{b<NN>}:...` with `NN = fnv1a64(payer) % 16`.
//! - `<prefix>:{bNN}:r:<fingerprint>` receipt state; fingerprint = hex SHA-256(iss, jti)[..32];
//!   kept until the receipt's `exp` + clock skew, then it expires (a replay after that fails
//!   the `exp` check instead).
//! - `<prefix>:{bNN}:blocked:<payer>` present while a payer is blocked.
//! - `<prefix>:{bNN}:events` the usage ledger (a Redis Stream, never trimmed).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, RedisStoreOptions};
use crate::money::Amount;

/// Number of payer buckets (hash tags). Changing it re-homes every key: never change it on a
/// live deployment.
pub const BUCKETS: u64 = 16;

/// The store could not answer: paid routes must fail closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, timed out, or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Answered something this version does not understand.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
}

/// One request's claim on one receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique per request attempt (UUID v4).
    pub id: String,
    /// The payer (`sub`).
    pub payer: String,
    /// The receipt's issuer (`iss`).
    pub issuer: String,
    /// The receipt's id (`jti`).
    pub receipt_id: String,
    /// How long the hold lasts if the gateway dies before settling.
    pub hold: Duration,
    /// Until when a spent receipt is remembered (unix ms): its `exp` plus clock skew.
    pub spent_until_ms: i64,
}

impl Reservation {
    /// The payer's bucket, 0..[`BUCKETS`].
    pub fn bucket(&self) -> u64 {
        bucket_of(&self.payer)
    }

    /// A fixed-length fingerprint of (issuer, receipt id): the replay key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update((self.issuer.len() as u64).to_be_bytes());
        h.update(self.issuer.as_bytes());
        h.update(self.receipt_id.as_bytes());
        let digest = h.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// FNV-1a 64 of the payer id, modulo [`BUCKETS`]. Stable forever (it names Redis keys).
pub fn bucket_of(payer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in payer.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % BUCKETS
}

/// What authorizing a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// Held for this request.
    Reserved,
    /// The payer is blocked.
    PayerBlocked,
    /// The receipt was spent already.
    Replayed,
    /// Another request holds the receipt right now.
    InUse,
}

/// One settled request, as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Stream id assigned by the store (empty until recorded).
    pub id: String,
    /// When the request was settled, unix ms (gateway clock).
    pub time_ms: i64,
    /// Who paid.
    pub payer: String,
    /// Route id.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Units served.
    pub units: u64,
    /// What a unit is (`request`).
    pub unit: String,
    /// Amount charged.
    pub amount: Amount,
    /// Amount charged, in minor units of the currency.
    pub amount_minor: u64,
    /// Currency code.
    pub currency: String,
    /// The credential that paid: `receipt:<iss>:<jti>`.
    pub credential: String,
    /// The reservation it settles.
    pub reservation: String,
    /// The upstream's HTTP status.
    pub upstream_status: u16,
}

impl UsageEvent {
    fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("time_ms", self.time_ms.to_string()),
            ("payer", self.payer.clone()),
            ("route", self.route.clone()),
            ("method", self.method.clone()),
            ("units", self.units.to_string()),
            ("unit", self.unit.clone()),
            ("amount", self.amount.to_string()),
            ("amount_minor", self.amount_minor.to_string()),
            ("currency", self.currency.clone()),
            ("credential", self.credential.clone()),
            ("reservation", self.reservation.clone()),
            ("upstream_status", self.upstream_status.to_string()),
        ]
    }

    fn from_fields(id: String, fields: &[(String, String)]) -> Result<Self, StoreError> {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| StoreError::Protocol(format!("usage event {id} lacks {k}")))
        };
        let num = |k: &str| -> Result<i64, StoreError> {
            get(k)?
                .parse()
                .map_err(|_| StoreError::Protocol(format!("usage event {id}: bad {k}")))
        };
        Ok(UsageEvent {
            time_ms: num("time_ms")?,
            payer: get("payer")?,
            route: get("route")?,
            method: get("method")?,
            units: u64::try_from(num("units")?).unwrap_or(0),
            unit: get("unit")?,
            amount: get("amount")?
                .parse()
                .map_err(|_| StoreError::Protocol(format!("usage event {id}: bad amount")))?,
            amount_minor: u64::try_from(num("amount_minor")?).unwrap_or(0),
            currency: get("currency")?,
            credential: get("credential")?,
            reservation: get("reservation")?,
            upstream_status: u16::try_from(num("upstream_status")?).unwrap_or(0),
            id,
        })
    }
}

/// How a reservation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Served: spend the receipt and append this event.
    Capture(Box<UsageEvent>),
    /// Not served: give the receipt back.
    Release,
}

/// What settling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Spent; the event got this id.
    Captured {
        /// Ledger id of the usage event.
        event_id: String,
    },
    /// Already captured by an earlier call for the same reservation (no second event).
    AlreadyCaptured {
        /// Ledger id of the earlier event.
        event_id: String,
    },
    /// Released.
    Released,
    /// Nothing to release (the hold had expired or was not ours).
    NotHeld,
    /// Capture refused: another reservation holds or spent the receipt.
    Conflict,
}

/// Where payment state lives. Every method is one atomic step.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Check the payer is not blocked and the receipt unused, and hold it -- atomically.
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError>;
    /// Capture (spend + append one usage event) or release a hold -- atomically.
    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Block or unblock a payer.
    async fn set_blocked(&self, payer: &str, blocked: bool) -> Result<(), StoreError>;
    /// Every usage event in the ledger, oldest first within each bucket (for export and tests).
    async fn usage_events(&self) -> Result<Vec<UsageEvent>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_fingerprints_are_stable() {
        // These values name Redis keys in live deployments: they must never change.
        assert_eq!(bucket_of(""), 0xcbf2_9ce4_8422_2325 % BUCKETS);
        assert_eq!(bucket_of("agent-1"), bucket_of("agent-1"));
        let r = Reservation {
            id: "r".into(),
            payer: "p".into(),
            issuer: "i".into(),
            receipt_id: "j".into(),
            hold: Duration::from_secs(1),
            spent_until_ms: 0,
        };
        assert_eq!(r.fingerprint().len(), 32);
        let other = Reservation {
            issuer: "ij".into(),
            receipt_id: "".into(),
            ..r.clone()
        };
        assert_ne!(r.fingerprint(), other.fingerprint());
    }
}

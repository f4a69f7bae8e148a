//! Balance leases (see `paywall/lease.rs`): a replica holds a slice of a payer's balance,
//! draws requests from it in process, and records their charges in batches. This is the store's
//! side: one atomic step that records a batch and resizes the lease.
//!
//! Every backend keeps leases (a capability of [`crate::store::Store`]); they pay off on a
//! networked store ([`crate::store::RedisStore`]), where they save a round trip per request. On an
//! embedded store every request is an in-process call already, so the gateway offers
//! `[store.lease]` only with Redis.

use std::time::Duration;

use async_trait::async_trait;

use super::{StoreError, UsageEvent};

/// A store that keeps balance leases.
#[async_trait]
pub trait LeaseStore: Send + Sync + std::fmt::Debug + 'static {
    /// Record `sync.charges` (each charged from the lease first, then from the balance as far
    /// as it goes; the rest uncharged), then resize the lease. One atomic step; a batch whose
    /// `seq` was applied already is skipped ([`LeaseStatus::Duplicate`]), so a retry after a
    /// lost reply never records it twice.
    async fn lease_sync(&self, sync: &LeaseSync<'_>) -> Result<LeaseSynced, StoreError>;
}

/// How a sync resizes the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseResize {
    /// Top it up to `reserved + target` as far as the balance allows; never shrink it.
    Grow,
    /// Set it to exactly `reserved + target` (the rest back to the balance): the replica's
    /// return, with no draw in flight.
    Fit,
}

/// One sync of a lease.
#[derive(Debug, Clone)]
pub struct LeaseSync<'a> {
    /// The lease's id (unique per replica, payer and currency; a hold id in the store).
    pub lease_id: &'a str,
    /// Whose balance.
    pub payer: &'a str,
    /// Currency code.
    pub currency: &'a str,
    /// The batch's sequence number (1, 2, ...); 0 with no charges.
    pub seq: u64,
    /// Draws still being served (minor units): they stay held.
    pub reserved_minor: u64,
    /// Room for new draws (minor units).
    pub target_minor: u64,
    /// Grow or fit.
    pub resize: LeaseResize,
    /// How long the lease lasts unsynced (then it is given back like any expired hold).
    pub ttl: Duration,
    /// The charges, each event's `amount_minor` the amount to charge; all of one UTC day.
    pub charges: &'a [UsageEvent],
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Recorded and resized.
    Ok,
    /// Recorded; the payer is blocked, so the lease did not grow.
    Blocked,
    /// The batch had been applied before (a retry); resized.
    Duplicate,
}

/// The outcome of [`LeaseStore::lease_sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSynced {
    /// What happened.
    pub status: LeaseStatus,
    /// What the lease holds now (minor units).
    pub lease_minor: u64,
    /// The payer's balance outside every hold (minor units).
    pub balance_minor: u64,
    /// Whether the lease was still in the store (false after it lapsed and was given back).
    pub had_lease: bool,
    /// Charged in total by this batch.
    pub charged_minor: u64,
    /// Events recorded by this batch (0 for a duplicate).
    pub recorded: u64,
    /// The charges not charged in full (lease and balance exhausted): (index in the batch,
    /// uncharged minor units).
    pub short: Vec<(usize, u64)>,
}

impl LeaseSynced {
    /// Not charged in total by this batch.
    pub fn uncharged_minor(&self) -> u64 {
        self.short.iter().map(|(_, u)| u).sum()
    }
}

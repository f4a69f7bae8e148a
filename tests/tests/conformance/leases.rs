//! Balance leases: a batch recorded once (a retry is skipped), each charge from the lease first
//! then the balance (never below zero), grow versus fit, a blocked payer's lease that does not
//! grow, and a lapsed lease given back and its charges taken from the balance.

use std::sync::Arc;
use std::time::Duration;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{LeaseResize, LeaseStatus, LeaseSync, UsageEvent};

use crate::support::*;

fn charge(payer: &str, reservation: &str, amount_minor: u64) -> UsageEvent {
    UsageEvent {
        reservation: reservation.into(),
        time_ms: now_ms(),
        ..balance_event(payer, "r", amount_minor)
    }
}

fn sync<'a>(
    seq: u64,
    charges: &'a [UsageEvent],
    target: u64,
    resize: LeaseResize,
    ttl: Duration,
) -> LeaseSync<'a> {
    LeaseSync {
        lease_id: "lease:r:1:USD",
        payer: "lea",
        currency: "USD",
        seq,
        reserved_minor: 0,
        target_minor: target,
        resize,
        ttl,
        charges,
    }
}

async fn usd(store: &Arc<dyn Store>) -> (i64, i64, i64) {
    let b = store.account("lea").await.unwrap().balances["USD"];
    (b.available, b.held, b.captured)
}

pub(crate) async fn lease_batches(store: Arc<dyn Store>) {
    fund(&store, "lea", 100).await;
    let ten = Duration::from_secs(10);
    let (grow, fit) = (LeaseResize::Grow, LeaseResize::Fit);
    // Start the lease: 60 of the 100 held.
    let r = store
        .lease_sync(&sync(0, &[], 60, grow, ten))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.lease_minor, r.balance_minor, r.had_lease),
        (LeaseStatus::Ok, 60, 40, false)
    );
    assert_eq!(usd(&store).await, (40, 60, 0));
    // Two charges (25 + 50): 60 from the lease, 15 from the balance; the lease grows back to
    // 60 from what is left (25).
    let batch = [charge("lea", "a", 25), charge("lea", "b", 50)];
    let r = store
        .lease_sync(&sync(1, &batch, 60, grow, ten))
        .await
        .unwrap();
    assert_eq!(r.status, LeaseStatus::Ok);
    assert_eq!((r.charged_minor, r.uncharged_minor()), (75, 0));
    assert!(r.short.is_empty());
    assert_eq!(r.recorded, 2);
    assert_eq!((r.lease_minor, r.balance_minor, r.had_lease), (25, 0, true));
    // The same batch again (its reply was lost): skipped.
    let again = store
        .lease_sync(&sync(1, &batch, 60, grow, ten))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.charged_minor, again.lease_minor),
        (LeaseStatus::Duplicate, 0, 25)
    );
    let events = store.usage_events().await.unwrap();
    let mine: Vec<_> = events.iter().filter(|e| e.payer == "lea").collect();
    assert_eq!(mine.len(), 2, "recorded once");
    assert_eq!(
        mine.iter().map(|e| e.amount_minor).sum::<u64>(),
        75,
        "{mine:?}"
    );
    // A charge beyond lease and balance: the rest is uncharged, never a negative balance; fit 0
    // ends the lease.
    let big = [charge("lea", "c", 40)];
    let r = store.lease_sync(&sync(2, &big, 0, fit, ten)).await.unwrap();
    assert_eq!((r.charged_minor, r.uncharged_minor()), (25, 15));
    assert_eq!(
        r.short,
        vec![(0, 15)],
        "which charge fell short, and by how much"
    );
    assert_eq!((r.lease_minor, r.balance_minor), (0, 0));
    assert_eq!(usd(&store).await, (0, 0, 100));

    // A blocked payer's lease records its charges but does not grow.
    fund(&store, "lea", 100).await;
    let r = store
        .lease_sync(&sync(0, &[], 30, grow, ten))
        .await
        .unwrap();
    assert_eq!((r.lease_minor, r.balance_minor), (30, 70));
    store.set_blocked("lea", true).await.unwrap();
    let one = [charge("lea", "d", 10)];
    let r = store
        .lease_sync(&sync(3, &one, 60, grow, ten))
        .await
        .unwrap();
    assert_eq!(r.status, LeaseStatus::Blocked);
    assert_eq!(
        (r.charged_minor, r.lease_minor, r.balance_minor),
        (10, 20, 70)
    );
    store.set_blocked("lea", false).await.unwrap();
    // Fit: back to exactly what is asked, the rest to the balance.
    let r = store.lease_sync(&sync(0, &[], 5, fit, ten)).await.unwrap();
    assert_eq!(
        (r.status, r.lease_minor, r.balance_minor),
        (LeaseStatus::Ok, 5, 85)
    );

    // A lapsed lease: renewed with a short ttl, given back by the next account read once
    // expired; the replica's next sync finds it gone and takes its charges from the balance.
    let r = store
        .lease_sync(&sync(0, &[], 5, grow, Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(r.lease_minor, 5);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (available, held, _) = usd(&store).await;
    assert_eq!((available, held), (90, 0), "the lapsed lease went back");
    let late = [charge("lea", "e", 30)];
    let r = store
        .lease_sync(&sync(4, &late, 0, fit, ten))
        .await
        .unwrap();
    assert!(!r.had_lease);
    assert_eq!(
        (r.charged_minor, r.balance_minor, r.lease_minor),
        (30, 60, 0)
    );
    let (available, held, captured) = usd(&store).await;
    assert_eq!((available, held, captured), (60, 0, 140));
}

//! Hold extension (a stream paused for a top-up grows its hold from the balance): what moves,
//! what is answered, and that the account stays balanced to the unit throughout.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{HoldExtended, HoldOutcome, HoldSettleOutcome};

use crate::support::*;

pub(crate) async fn hold_extension(store: Arc<dyn Store>) {
    fund(&store, "ext", 1_000).await;
    let h = hold("ext", 300);
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::Held { balance_minor: 700 }
    );
    // Up to what is wanted...
    assert_eq!(
        store.extend_hold(&h, 200).await.unwrap(),
        HoldExtended::Extended {
            moved_minor: 200,
            held_minor: 500,
            balance_minor: 500
        }
    );
    assert_eq!(usd(&store, "ext").await, (500, 500, 1_000, 0, 1));
    // ... and never more than is available.
    assert_eq!(
        store.extend_hold(&h, 10_000).await.unwrap(),
        HoldExtended::Extended {
            moved_minor: 500,
            held_minor: 1_000,
            balance_minor: 0
        }
    );
    // Nothing available: nothing moves, the hold is as it was.
    assert_eq!(
        store.extend_hold(&h, 50).await.unwrap(),
        HoldExtended::Extended {
            moved_minor: 0,
            held_minor: 1_000,
            balance_minor: 0
        }
    );
    // Two top-ups, one extension: both credits count, the hold grows once.
    fund(&store, "ext", 400).await;
    fund(&store, "ext", 600).await;
    assert_eq!(
        store.extend_hold(&h, 250).await.unwrap(),
        HoldExtended::Extended {
            moved_minor: 250,
            held_minor: 1_250,
            balance_minor: 750
        }
    );
    assert_eq!(usd(&store, "ext").await, (750, 1_250, 2_000, 0, 1));
    // The capture charges from the grown hold and returns the rest.
    let mut e = balance_event("ext", "chat", 0);
    e.reservation = h.id.clone();
    let out = store.capture_hold(&h, 1_100, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 1_100,
        uncharged_minor: 0,
        balance_minor: 900,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(usd(&store, "ext").await, (900, 0, 2_000, 1_100, 0));
    let events = events_of(&store, "ext").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].amount_minor, 1_100);
    // A settled hold does not grow, and takes nothing.
    assert_eq!(
        store.extend_hold(&h, 100).await.unwrap(),
        HoldExtended::NotHeld
    );
    assert_eq!(usd(&store, "ext").await, (900, 0, 2_000, 1_100, 0));

    // A blocked payer's hold does not grow; released, it gives back all it grew to.
    let g = hold("ext", 100);
    assert!(matches!(
        store.hold(&g).await.unwrap(),
        HoldOutcome::Held { balance_minor: 800 }
    ));
    store.set_blocked("ext", true).await.unwrap();
    assert_eq!(
        store.extend_hold(&g, 100).await.unwrap(),
        HoldExtended::PayerBlocked
    );
    store.set_blocked("ext", false).await.unwrap();
    assert!(matches!(
        store.extend_hold(&g, 300).await.unwrap(),
        HoldExtended::Extended {
            moved_minor: 300,
            held_minor: 400,
            ..
        }
    ));
    assert_eq!(
        store.release_hold(&g).await.unwrap(),
        HoldSettleOutcome::Released
    );
    assert_eq!(usd(&store, "ext").await, (900, 0, 2_000, 1_100, 0));
}

/// Extensions racing captures of other holds of the same payer never overdraw: every unit
/// is available, held or captured, exactly once.
pub(crate) async fn concurrent_extensions_never_overdraw(store: Arc<dyn Store>) {
    fund(&store, "race", 10_000).await;
    let holds: Vec<_> = (0..8).map(|_| hold("race", 100)).collect();
    for h in &holds {
        assert!(matches!(
            store.hold(h).await.unwrap(),
            HoldOutcome::Held { .. }
        ));
    }
    let tasks: Vec<_> = holds
        .iter()
        .cloned()
        .map(|h| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut moved = 0;
                for _ in 0..10 {
                    if let HoldExtended::Extended { moved_minor, .. } =
                        store.extend_hold(&h, 150).await.unwrap()
                    {
                        moved += moved_minor;
                    }
                }
                moved
            })
        })
        .collect();
    let mut moved = 0;
    for t in tasks {
        moved += t.await.unwrap();
    }
    // 9,200 were available after the holds: all of it moved, never more.
    assert_eq!(moved, 9_200);
    assert_eq!(usd(&store, "race").await, (0, 10_000, 10_000, 0, 8));
    for h in &holds {
        store.release_hold(h).await.unwrap();
    }
    assert_eq!(usd(&store, "race").await, (10_000, 0, 10_000, 0, 0));
}

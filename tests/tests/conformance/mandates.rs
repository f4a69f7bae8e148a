//! Mandates: window budgets on receipts and balance holds, revocation, the payer's view.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    AuthorizeOutcome, Hold, HoldOutcome, HoldSettleOutcome, MandateUse, Reservation, SettleOutcome,
    Settlement,
};

use crate::support::*;

fn under(payer: &str, jti: &str, key: &str, budget: u64, amount: u64) -> Reservation {
    Reservation {
        mandate: Some(mandate(key, budget, amount)),
        ..reservation(payer, jti)
    }
}

fn held_under(payer: &str, amount: u64, key: &str, budget: u64) -> Hold {
    Hold {
        mandate: Some(mandate(key, budget, amount)),
        ..hold(payer, amount)
    }
}

async fn window(store: &Arc<dyn Store>, payer: &str) -> Vec<(String, MandateUse)> {
    let mut out: Vec<(String, MandateUse)> = store
        .mandates(payer, now_ms())
        .await
        .unwrap()
        .into_iter()
        .map(|(s, u)| (s["id"].as_str().unwrap_or_default().to_owned(), u))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn spent_held(spent: u64, held: u64, revoked: bool) -> MandateUse {
    MandateUse {
        spent_minor: spent,
        held_minor: held,
        revoked,
    }
}

/// Receipts under a mandate: reservations count against the window's budget until settled;
/// a capture spends the event's amount, a release gives the room back.
pub(crate) async fn mandate_window_budget(store: Arc<dyn Store>) {
    let r1 = under("md", "md-1", "md-m", 100, 40);
    let r2 = under("md", "md-2", "md-m", 100, 40);
    let r3 = under("md", "md-3", "md-m", 100, 40);
    assert_eq!(
        store.authorize(&r1).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert_eq!(
        store.authorize(&r2).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::MandateExceeded { room_minor: 20 }
    );
    assert_eq!(
        window(&store, "md").await,
        [("md-m".to_owned(), spent_held(0, 80, false))]
    );
    let e = tollgate_middleware::UsageEvent {
        amount_minor: 40,
        ..event(&r1)
    };
    assert!(matches!(
        store
            .settle(&r1, &Settlement::Capture(Box::new(e)))
            .await
            .unwrap(),
        SettleOutcome::Captured { .. }
    ));
    assert_eq!(
        store.settle(&r2, &Settlement::Release).await.unwrap(),
        SettleOutcome::Released
    );
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    store.settle(&r3, &Settlement::Release).await.unwrap();
    assert_eq!(
        window(&store, "md").await,
        [("md-m".to_owned(), spent_held(40, 0, false))]
    );
    let r4 = under("md", "md-4", "md-m", 100, 60);
    assert_eq!(
        store.authorize(&r4).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert_eq!(
        store
            .authorize(&under("md", "md-5", "md-m", 100, 1))
            .await
            .unwrap(),
        AuthorizeOutcome::MandateExceeded { room_minor: 0 }
    );
    // Another mandate of the payer has a window of its own.
    assert_eq!(
        store
            .authorize(&under("md", "md-6", "md-n", 10, 10))
            .await
            .unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert_eq!(
        window(&store, "md").await,
        [
            ("md-m".to_owned(), spent_held(40, 60, false)),
            ("md-n".to_owned(), spent_held(0, 10, false))
        ]
    );
}

/// Balance holds under a mandate: the balance is checked first, then the window; a capture
/// never charges beyond the window's room (the rest is uncharged).
pub(crate) async fn mandate_on_balance_holds(store: Arc<dyn Store>) {
    fund(&store, "mb", 1_000).await;
    let h1 = held_under("mb", 50, "mb-m", 100);
    assert_eq!(
        store.hold(&h1).await.unwrap(),
        HoldOutcome::Held { balance_minor: 950 }
    );
    assert_eq!(
        store
            .hold(&held_under("mb", 60, "mb-m", 100))
            .await
            .unwrap(),
        HoldOutcome::MandateExceeded { room_minor: 50 }
    );
    assert_eq!(
        store
            .hold(&held_under("mb", 5_000, "mb-m", 100_000))
            .await
            .unwrap(),
        HoldOutcome::Insufficient { balance_minor: 950 }
    );
    let e = balance_event("mb", "compute", 0);
    let out = store.capture_hold(&h1, 80, &e).await.unwrap();
    assert!(
        matches!(
            out,
            HoldSettleOutcome::Captured {
                charged_minor: 80,
                uncharged_minor: 0,
                balance_minor: 920,
                ..
            }
        ),
        "{out:?}"
    );
    let h3 = held_under("mb", 20, "mb-m", 100);
    assert_eq!(
        store.hold(&h3).await.unwrap(),
        HoldOutcome::Held { balance_minor: 900 }
    );
    let out = store.capture_hold(&h3, 50, &e).await.unwrap();
    assert!(
        matches!(
            out,
            HoldSettleOutcome::Captured {
                charged_minor: 20,
                uncharged_minor: 30,
                balance_minor: 900,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        window(&store, "mb").await,
        [("mb-m".to_owned(), spent_held(100, 0, false))]
    );
    let events = events_of(&store, "mb").await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.amount_minor, e.uncharged_minor))
            .collect::<Vec<_>>(),
        [(80, 0), (20, 30)]
    );
    assert_eq!(usd(&store, "mb").await, (900, 0, 1_000, 100, 0));
}

/// Under a used-up plan with overage, the mandate reserves what is held (the overage price),
/// not the route's price (the memory store once checked the route's price against the
/// window, and refused a hold that Redis took).
pub(crate) async fn overage_under_a_mandate_reserves_what_is_held(store: Arc<dyn Store>) {
    let sub = crate::plans::subscription("mo", "mo-plan", "mo-1", Some(0));
    store.subscribe(&sub).await.unwrap();
    fund(&store, "mo", 1_000).await;
    let h = Hold {
        plan: Some(plan_use("mo-plan", false, false, None)),
        ..held_under("mo", 100, "mo-m", 50)
    };
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::Overage { balance_minor: 970 }
    );
    assert_eq!(
        window(&store, "mo").await,
        [("mo-m".to_owned(), spent_held(0, 30, false))]
    );
    let out = store
        .capture_hold(&h, 30, &balance_event("mo", "compute", 0))
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            HoldSettleOutcome::Captured {
                charged_minor: 30,
                balance_minor: 970,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        window(&store, "mo").await,
        [("mo-m".to_owned(), spent_held(30, 0, false))]
    );
}

/// A revoked mandate refuses every later reservation (receipt or balance); one in flight
/// still settles.
pub(crate) async fn revoked_mandate(store: Arc<dyn Store>) {
    let r1 = under("mr", "mr-1", "mr-m", 1_000, 10);
    assert_eq!(
        store.authorize(&r1).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    store.revoke_mandate("mr-m").await.unwrap();
    assert_eq!(
        store
            .authorize(&under("mr", "mr-2", "mr-m", 1_000, 10))
            .await
            .unwrap(),
        AuthorizeOutcome::MandateRevoked
    );
    fund(&store, "mr", 100).await;
    assert_eq!(
        store
            .hold(&held_under("mr", 10, "mr-m", 1_000))
            .await
            .unwrap(),
        HoldOutcome::MandateRevoked
    );
    let e = tollgate_middleware::UsageEvent {
        amount_minor: 10,
        ..event(&r1)
    };
    assert!(matches!(
        store
            .settle(&r1, &Settlement::Capture(Box::new(e)))
            .await
            .unwrap(),
        SettleOutcome::Captured { .. }
    ));
    assert_eq!(
        window(&store, "mr").await,
        [("mr-m".to_owned(), spent_held(10, 0, true))]
    );
    assert_eq!(usd(&store, "mr").await, (100, 0, 100, 0, 0));
}

//! Receipts: single use, holds, capture and release, blocks, revocation, renewal.

use std::sync::Arc;
use std::time::Duration;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    AuthorizeOutcome, ChargeOutcome, Renewal, Reservation, SettleOutcome, Settlement,
};

use crate::support::*;

pub(crate) async fn single_use_lifecycle(store: Arc<dyn Store>) {
    let r = reservation("alice", "j1");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    // A second request with the same receipt while the first is in flight.
    let r2 = Reservation {
        id: "other".into(),
        ..r.clone()
    };
    assert_eq!(store.authorize(&r2).await.unwrap(), AuthorizeOutcome::InUse);
    // Released: usable again.
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::Released
    );
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::NotHeld
    );
    assert_eq!(
        store.authorize(&r2).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    // The loser cannot capture or release the winner's hold.
    assert_eq!(
        store
            .settle(&r, &Settlement::Capture(Box::new(event(&r))))
            .await
            .unwrap(),
        SettleOutcome::Conflict
    );
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::NotHeld
    );
    let SettleOutcome::Captured { event_id } = store
        .settle(&r2, &Settlement::Capture(Box::new(event(&r2))))
        .await
        .unwrap()
    else {
        panic!("capture failed")
    };
    // Settling twice never appends twice.
    assert_eq!(
        store
            .settle(&r2, &Settlement::Capture(Box::new(event(&r2))))
            .await
            .unwrap(),
        SettleOutcome::AlreadyCaptured {
            event_id: event_id.clone()
        }
    );
    assert_eq!(
        store.authorize(&reservation("alice", "j1")).await.unwrap(),
        AuthorizeOutcome::Replayed
    );
    // The same jti from another issuer is another receipt.
    let other_issuer = Reservation {
        issuer: "iss2".into(),
        ..reservation("alice", "j1")
    };
    assert_eq!(
        store.authorize(&other_issuer).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    let events = store.usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.id, event_id);
    // The day's per-payer totals (the admin payer listing) moved in the same step, once.
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let alice = totals.iter().find(|p| p.payer == "alice").unwrap();
    assert_eq!((alice.requests, alice.amount_minor["USD"]), (1, 10_000));
    assert_eq!(
        (
            e.payer.as_str(),
            e.amount_minor,
            e.amount().to_string().as_str()
        ),
        ("alice", 10_000, "0.01")
    );
    assert_eq!(e.reservation, r2.id);
}

pub(crate) async fn blocked_payer(store: Arc<dyn Store>) {
    store.set_blocked("mallory", true).await.unwrap();
    assert_eq!(
        store
            .authorize(&reservation("mallory", "b1"))
            .await
            .unwrap(),
        AuthorizeOutcome::PayerBlocked
    );
    store.set_blocked("mallory", false).await.unwrap();
    assert_eq!(
        store
            .authorize(&reservation("mallory", "b1"))
            .await
            .unwrap(),
        AuthorizeOutcome::Reserved
    );
}

pub(crate) async fn concurrent_authorize(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let r = reservation("bob", "race");
            let out = s.authorize(&r).await.unwrap();
            if out == AuthorizeOutcome::Reserved {
                s.settle(&r, &Settlement::Capture(Box::new(event(&r))))
                    .await
                    .unwrap();
            }
            out
        }));
    }
    let mut reserved = 0;
    for t in tasks {
        if t.await.unwrap() == AuthorizeOutcome::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 1);
    let n = store
        .usage_events()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.payer == "bob")
        .count();
    assert_eq!(n, 1);
}

/// Single use is per (iss, jti) whatever the payer: a receipt re-signed for another `sub` is
/// a replay, for authorize and for capture at admission alike.
pub(crate) async fn single_use_across_payers(store: Arc<dyn Store>) {
    let r = reservation("sua-alice", "shared");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    let other = reservation("sua-bob", "shared");
    assert_eq!(
        store.authorize(&other).await.unwrap(),
        AuthorizeOutcome::Replayed
    );
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&other), &event(&other))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::Replayed)
    );
    // The first payer's own second request is in use, not a replay.
    let again = reservation("sua-alice", "shared");
    assert_eq!(
        store.authorize(&again).await.unwrap(),
        AuthorizeOutcome::InUse
    );
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&again), &event(&again))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::InUse)
    );
    assert!(events_of(&store, "sua-bob").await.is_empty());
}

/// A revoked receipt can no longer pay; revoking one held or spent says it was used.
pub(crate) async fn revoked_receipts(store: Arc<dyn Store>) {
    assert!(store.revoke_receipt("iss", "rv-1").await.unwrap());
    let r = reservation("rv-payer", "rv-1");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Revoked
    );
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&r), &event(&r))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::Revoked)
    );
    // Held: the hold in flight finishes; revoking reports the receipt used.
    let held = reservation("rv-payer", "rv-2");
    assert_eq!(
        store.authorize(&held).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert!(!store.revoke_receipt("iss", "rv-2").await.unwrap());
    let captured = store
        .settle(&held, &Settlement::Capture(Box::new(event(&held))))
        .await
        .unwrap();
    assert!(
        matches!(captured, SettleOutcome::Captured { .. }),
        "{captured:?}"
    );
    assert!(!store.revoke_receipt("iss", "rv-2").await.unwrap());
    assert_eq!(
        store
            .authorize(&reservation("rv-payer", "rv-2"))
            .await
            .unwrap(),
        AuthorizeOutcome::Replayed
    );
    assert_eq!(events_of(&store, "rv-payer").await.len(), 1);
}

/// Renewing keeps a hold alive while its request is served; a settled hold is not renewed.
pub(crate) async fn renew_keeps_holds_alive(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(120);
    let r = Reservation {
        mandate: Some(mandate("rn-m", 100_000, 10_000)),
        ..reservation("rn-payer", "rn-1")
    };
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert!(store.renew(Renewal::Receipt(&r), ttl).await.unwrap());
    // Another reservation of the same receipt holds nothing to renew.
    let other = Reservation {
        id: "rn-other".into(),
        ..r.clone()
    };
    assert!(!store.renew(Renewal::Receipt(&other), ttl).await.unwrap());
    assert_eq!(
        store.settle(&r, &Settlement::Release).await.unwrap(),
        SettleOutcome::Released
    );
    assert!(!store.renew(Renewal::Receipt(&r), ttl).await.unwrap());
    fund(&store, "rn-payer", 500).await;
    let h = tollgate_middleware::store::Hold {
        mandate: Some(mandate("rn-m", 100_000, 200)),
        ..hold("rn-payer", 200)
    };
    assert!(matches!(
        store.hold(&h).await.unwrap(),
        tollgate_middleware::store::HoldOutcome::Held { balance_minor: 300 }
    ));
    assert!(store.renew(Renewal::Balance(&h), ttl).await.unwrap());
    // The mandate reservation is renewed with it: still held in the window.
    let used = store.mandates("rn-payer", now_ms()).await.unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!((used[0].1.spent_minor, used[0].1.held_minor), (0, 200));
    assert_eq!(
        store.release_hold(&h).await.unwrap(),
        tollgate_middleware::store::HoldSettleOutcome::Released
    );
    assert!(!store.renew(Renewal::Balance(&h), ttl).await.unwrap());
    assert_eq!(usd(&store, "rn-payer").await, (500, 0, 500, 0, 0));
}

//! Capture at admission and its voids: a receipt or a balance charged in the admitting step,
//! undone once when the request was not served.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    void_event, AuthorizeOutcome, ChargeOutcome, HoldOutcome, Reservation, VoidOutcome,
};

use crate::support::*;

/// A receipt charged at admission and voided: usable again, the aggregates moved back, a
/// void event that names the charge; only its reservation voids it, once.
pub(crate) async fn void_receipt_charge(store: Arc<dyn Store>) {
    let r = reservation("vr", "vr-1");
    let ChargeOutcome::Charged {
        event_id,
        balance_minor: 0,
    } = store
        .charge_at_admission(ChargeFrom::Receipt(&r), &event(&r))
        .await
        .unwrap()
    else {
        panic!("not charged")
    };
    let charge = tollgate_middleware::UsageEvent {
        id: event_id.clone(),
        ..event(&r)
    };
    let void = void_event(&charge, now_ms(), 502);
    let other = Reservation {
        id: "vr-other".into(),
        ..r.clone()
    };
    assert_eq!(
        store
            .void_admission(ChargeFrom::Receipt(&other), &charge, &void)
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    let VoidOutcome::Voided { event_id: void_id } = store
        .void_admission(ChargeFrom::Receipt(&r), &charge, &void)
        .await
        .unwrap()
    else {
        panic!("not voided")
    };
    assert_eq!(
        store
            .void_admission(ChargeFrom::Receipt(&r), &charge, &void)
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    // Usable again.
    let r2 = Reservation {
        id: "vr-2".into(),
        ..r.clone()
    };
    assert!(matches!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&r2), &event(&r2))
            .await
            .unwrap(),
        ChargeOutcome::Charged { .. }
    ));
    let events = events_of(&store, "vr").await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        (events[1].id.as_str(), events[1].voids.as_deref()),
        (void_id.as_str(), Some(event_id.as_str()))
    );
    assert_eq!(
        (events[1].amount_minor, events[1].upstream_status),
        (10_000, 502)
    );
    let rows = store
        .usage(Some("vr"), "19700101", "19700101")
        .await
        .unwrap();
    assert_eq!((rows[0].requests, rows[0].amount_minor["USD"]), (1, 10_000));
    assert_eq!(rows[0].units["request"], 1);
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let vr = totals.iter().find(|p| p.payer == "vr").unwrap();
    assert_eq!((vr.requests, vr.amount_minor["USD"]), (1, 10_000));
}

/// A balance charged at admission and voided: the amount returns, once; a void that does not
/// match the charge does nothing.
pub(crate) async fn void_balance_charge(store: Arc<dyn Store>) {
    fund(&store, "vb", 100).await;
    let h = hold("vb", 30);
    let e = balance_event("vb", "compute", 30);
    let ChargeOutcome::Charged {
        event_id,
        balance_minor: 70,
    } = store
        .charge_at_admission(ChargeFrom::Balance(&h), &e)
        .await
        .unwrap()
    else {
        panic!("not charged")
    };
    assert_eq!(usd(&store, "vb").await, (70, 0, 100, 30, 0));
    let charge = tollgate_middleware::UsageEvent {
        id: event_id.clone(),
        ..e.clone()
    };
    let wrong = tollgate_middleware::UsageEvent {
        amount_minor: 31,
        ..charge.clone()
    };
    let void = void_event(&charge, now_ms(), 0);
    assert_eq!(
        store
            .void_admission(ChargeFrom::Balance(&h), &wrong, &void)
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    let other = hold("vb", 30);
    assert_eq!(
        store
            .void_admission(ChargeFrom::Balance(&other), &charge, &void)
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    assert!(matches!(
        store
            .void_admission(ChargeFrom::Balance(&h), &charge, &void)
            .await
            .unwrap(),
        VoidOutcome::Voided { .. }
    ));
    assert_eq!(
        store
            .void_admission(ChargeFrom::Balance(&h), &charge, &void)
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    assert_eq!(usd(&store, "vb").await, (100, 0, 100, 0, 0));
    let events = events_of(&store, "vb").await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.amount_minor, e.voids.is_some()))
            .collect::<Vec<_>>(),
        [(30, false), (30, true)]
    );
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let vb = totals.iter().find(|p| p.payer == "vb").unwrap();
    assert_eq!((vb.requests, vb.amount_minor.get("USD")), (0, Some(&0)));
}

/// What capture at admission refuses, with what authorize or hold would have said.
pub(crate) async fn admission_charges_refused(store: Arc<dyn Store>) {
    let e = balance_event("ar", "compute", 11);
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Balance(&hold("ar", 11)), &e)
            .await
            .unwrap(),
        ChargeOutcome::Declined(HoldOutcome::Insufficient { balance_minor: 0 })
    );
    fund(&store, "ar", 10).await;
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Balance(&hold("ar", 11)), &e)
            .await
            .unwrap(),
        ChargeOutcome::Declined(HoldOutcome::Insufficient { balance_minor: 10 })
    );
    let r = reservation("ar", "ar-1");
    assert!(matches!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&r), &event(&r))
            .await
            .unwrap(),
        ChargeOutcome::Charged { .. }
    ));
    let again = reservation("ar", "ar-1");
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&again), &event(&again))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::Replayed)
    );
    let held = reservation("ar", "ar-2");
    assert_eq!(
        store.authorize(&held).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    let r = reservation("ar", "ar-2");
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&r), &event(&r))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::InUse)
    );
    store.set_blocked("ar", true).await.unwrap();
    let r = reservation("ar", "ar-3");
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Receipt(&r), &event(&r))
            .await
            .unwrap(),
        ChargeOutcome::Refused(AuthorizeOutcome::PayerBlocked)
    );
    assert_eq!(usd(&store, "ar").await, (10, 0, 10, 0, 0));
    assert_eq!(events_of(&store, "ar").await.len(), 1);
}

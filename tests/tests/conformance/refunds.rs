//! Refunds: full and partial, once per key, never more than the charge (also concurrently),
//! to the balance or owed on chain, and their interlock with voids.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    void_event, ChargeOutcome, HoldSettleOutcome, RefundOutcome, RefundQuery, RefundRecord,
    RefundRequest, SettleOutcome, Settlement, VoidOutcome,
};
use tollgate_middleware::UsageEvent;

use crate::support::*;

/// A refund request of `charge` under `key` (the fingerprint: the amount and the key's tag).
fn ask(charge: &UsageEvent, key: &str, amount: Option<u64>, tag: &str) -> RefundRequest {
    RefundRequest {
        charge: charge.clone(),
        voided: false,
        amount_minor: amount,
        reason: format!("reason {tag}"),
        key: key.into(),
        fingerprint: format!("{}|{amount:?}|{tag}", charge.id),
        time_ms: now_ms(),
    }
}

fn refunded(out: RefundOutcome) -> RefundRecord {
    match out {
        RefundOutcome::Refunded(r) => r,
        other => panic!("not refunded: {other:?}"),
    }
}

/// A balance charge of `amount` captured after the response (today), as the ledger has it.
async fn balance_charge(store: &Arc<dyn Store>, payer: &str, amount: u64) -> UsageEvent {
    let h = hold(payer, amount);
    assert!(matches!(
        store.hold(&h).await.unwrap(),
        tollgate_middleware::store::HoldOutcome::Held { .. }
    ));
    let e = UsageEvent {
        time_ms: now_ms(),
        reservation: h.id.clone(),
        ..balance_event(payer, "compute", amount)
    };
    let HoldSettleOutcome::Captured {
        event_id,
        charged_minor,
        ..
    } = store.capture_hold(&h, amount, &e).await.unwrap()
    else {
        panic!("not captured")
    };
    assert_eq!(charged_minor, amount);
    let target = store.refund_target(&event_id).await.unwrap().unwrap();
    assert!(!target.voided);
    assert_eq!(
        (target.event.amount_minor, target.event.payer.as_str()),
        (amount, payer)
    );
    target.event
}

/// Partial then full refunds of a balance charge: each credited to the balance with a credit
/// entry, the same key answered again, the key for another refund refused, more than remains
/// refused with what remains, the day's amount moved back (not its request count).
pub(crate) async fn refund_balance_charge(store: Arc<dyn Store>) {
    fund(&store, "rb", 100).await;
    let charge = balance_charge(&store, "rb", 30).await;
    assert_eq!(usd(&store, "rb").await, (70, 0, 100, 30, 0));
    assert_eq!(store.refund_target("999-0-3").await.unwrap(), None);

    let first = refunded(
        store
            .refund(&ask(&charge, "k1", Some(10), "a"))
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            first.amount_minor,
            first.remaining_minor,
            first.event_id.as_str()
        ),
        (10, 20, charge.id.as_str())
    );
    assert_eq!(
        (first.owed_to.as_deref(), first.reason.as_str()),
        (None, "reason a")
    );
    assert!(first.credit_id.is_some());
    assert_eq!(usd(&store, "rb").await, (80, 0, 110, 30, 0));
    // The same request again: the same answer, nothing moved.
    assert_eq!(
        store
            .refund(&ask(&charge, "k1", Some(10), "a"))
            .await
            .unwrap(),
        RefundOutcome::Duplicate(first.clone())
    );
    // The same key for another refund.
    assert_eq!(
        store
            .refund(&ask(&charge, "k1", Some(5), "b"))
            .await
            .unwrap(),
        RefundOutcome::KeyReused
    );
    assert_eq!(
        store
            .refund(&ask(&charge, "k2", Some(21), "c"))
            .await
            .unwrap(),
        RefundOutcome::Exceeds {
            refundable_minor: 20
        }
    );
    // A key names the request it was first used for, refused or not.
    assert_eq!(
        store
            .refund(&ask(&charge, "k2", Some(5), "c"))
            .await
            .unwrap(),
        RefundOutcome::KeyReused
    );
    assert_eq!(usd(&store, "rb").await, (80, 0, 110, 30, 0));
    let rest = refunded(store.refund(&ask(&charge, "k3", None, "d")).await.unwrap());
    assert_eq!((rest.amount_minor, rest.remaining_minor), (20, 0));
    assert_eq!(
        store.refund(&ask(&charge, "k4", None, "e")).await.unwrap(),
        RefundOutcome::Exceeds {
            refundable_minor: 0
        }
    );
    assert_eq!(
        store
            .refund(&ask(&charge, "k5", Some(1), "f"))
            .await
            .unwrap(),
        RefundOutcome::Exceeds {
            refundable_minor: 0
        }
    );
    // credited - captured = available + held, to the unit.
    assert_eq!(usd(&store, "rb").await, (100, 0, 130, 30, 0));
    let day = tollgate_middleware::store::utc_day(charge.time_ms);
    let rows = store.usage(Some("rb"), &day, &day).await.unwrap();
    assert_eq!((rows[0].requests, rows[0].amount_minor["USD"]), (1, 0));
    let listed = store
        .refunds(&RefundQuery {
            payer: Some("rb".into()),
            limit: 10,
            ..RefundQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed, [rest.clone(), first.clone()]);
    let page = store
        .refunds(&RefundQuery {
            payer: Some("rb".into()),
            before: Some(rest.id.clone()),
            limit: 10,
            ..RefundQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page, [first]);
}

/// An x402 payment is refunded as owed to the payer's address: no balance moves, and the
/// owed listing has it.
pub(crate) async fn refund_x402_is_owed(store: Arc<dyn Store>) {
    let payer = "0x00000000000000000000000000000000000000aa";
    let r = reservation(payer, "x402-nonce-1");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        tollgate_middleware::store::AuthorizeOutcome::Reserved
    );
    let e = UsageEvent {
        time_ms: now_ms(),
        credential: format!("x402:eip155:84532:{payer}:0x01"),
        ..event(&r)
    };
    let SettleOutcome::Captured { event_id } = store
        .settle(&r, &Settlement::Capture(Box::new(e.clone())))
        .await
        .unwrap()
    else {
        panic!("not captured")
    };
    let charge = store.refund_target(&event_id).await.unwrap().unwrap().event;
    let owed = refunded(
        store
            .refund(&ask(&charge, "x1", Some(2_500), "x"))
            .await
            .unwrap(),
    );
    assert_eq!(
        (owed.owed_to.as_deref(), owed.credit_id.as_deref()),
        (Some(payer), None)
    );
    assert_eq!(owed.remaining_minor, 7_500);
    assert_eq!(usd(&store, payer).await, (0, 0, 0, 0, 0));
    let q = |owed: bool| RefundQuery {
        owed: Some(owed),
        payer: Some(payer.into()),
        limit: 10,
        ..RefundQuery::default()
    };
    assert_eq!(store.refunds(&q(true)).await.unwrap(), [owed]);
    assert_eq!(store.refunds(&q(false)).await.unwrap(), []);
}

/// A voided charge cannot be refunded (the store's own record says so, whatever the caller
/// read); a charge refunded, even in part, can no longer be voided.
pub(crate) async fn refunds_and_voids_exclude_each_other(store: Arc<dyn Store>) {
    let r = reservation("rv", "rv-1");
    let e = UsageEvent {
        time_ms: now_ms(),
        upstream_status: 0,
        ..event(&r)
    };
    let ChargeOutcome::Charged { event_id, .. } = store
        .charge_at_admission(ChargeFrom::Receipt(&r), &e)
        .await
        .unwrap()
    else {
        panic!("not charged")
    };
    let charge = UsageEvent {
        id: event_id.clone(),
        ..e.clone()
    };
    assert!(matches!(
        store
            .void_admission(
                ChargeFrom::Receipt(&r),
                &charge,
                &void_event(&charge, now_ms(), 0)
            )
            .await
            .unwrap(),
        VoidOutcome::Voided { .. }
    ));
    let target = store.refund_target(&event_id).await.unwrap().unwrap();
    assert!(target.voided);
    assert!(store.void_recorded(&charge).await.unwrap());
    assert_eq!(
        store.refund(&ask(&charge, "v1", None, "v")).await.unwrap(),
        RefundOutcome::Voided
    );

    fund(&store, "rv", 100).await;
    let h = hold("rv", 40);
    let e = UsageEvent {
        time_ms: now_ms(),
        upstream_status: 0,
        ..balance_event("rv", "compute", 40)
    };
    let ChargeOutcome::Charged { event_id, .. } = store
        .charge_at_admission(ChargeFrom::Balance(&h), &e)
        .await
        .unwrap()
    else {
        panic!("not charged")
    };
    let charge = UsageEvent { id: event_id, ..e };
    assert!(!store.void_recorded(&charge).await.unwrap());
    let part = refunded(
        store
            .refund(&ask(&charge, "v2", Some(15), "w"))
            .await
            .unwrap(),
    );
    assert_eq!(part.remaining_minor, 25);
    assert_eq!(
        store
            .void_admission(
                ChargeFrom::Balance(&h),
                &charge,
                &void_event(&charge, now_ms(), 0)
            )
            .await
            .unwrap(),
        VoidOutcome::NotCharged
    );
    // 100 - 40 charged + 15 refunded; credited 100 + 15.
    assert_eq!(usd(&store, "rv").await, (75, 0, 115, 40, 0));
}

/// Concurrent refunds of one charge, each under its own key: the sum applied never exceeds
/// the charge, to the unit, and the balance moves by exactly that sum.
pub(crate) async fn concurrent_refunds_never_exceed_the_charge(store: Arc<dyn Store>) {
    fund(&store, "rc", 1_000).await;
    let charge = balance_charge(&store, "rc", 100).await;
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (store, charge) = (store.clone(), charge.clone());
            tokio::spawn(async move {
                store
                    .refund(&ask(&charge, &format!("c{i}"), Some(7), "c"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut sum = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            RefundOutcome::Refunded(r) => sum += r.amount_minor,
            RefundOutcome::Exceeds { refundable_minor } => {
                assert!(refundable_minor < 7, "{refundable_minor}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((sum, refused), (98, 10));
    let last = refunded(
        store
            .refund(&ask(&charge, "c-rest", None, "r"))
            .await
            .unwrap(),
    );
    assert_eq!((last.amount_minor, last.remaining_minor), (2, 0));
    assert_eq!(usd(&store, "rc").await, (1_000, 0, 1_100, 100, 0));
}

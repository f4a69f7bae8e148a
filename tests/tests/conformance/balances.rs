//! Prepaid balances: holds, captures, releases, credits and debits, blocks.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    AuthorizeOutcome, Credit, CreditOutcome, HoldOutcome, HoldSettleOutcome, Idempotency,
};

use crate::support::*;

pub(crate) async fn balance_lifecycle(store: Arc<dyn Store>) {
    let applied = store.credit(&topup("pat", 1_000, "t1")).await.unwrap();
    let CreditOutcome::Applied {
        credit_id,
        balance_minor: 1_000,
    } = applied
    else {
        panic!("{applied:?}")
    };
    // The same key applies once.
    assert_eq!(
        store.credit(&topup("pat", 1_000, "t1")).await.unwrap(),
        CreditOutcome::Duplicate {
            credit_id,
            balance_minor: 1_000
        }
    );
    assert_eq!(
        store.credit(&topup("pat", -5_000, "d1")).await.unwrap(),
        CreditOutcome::Insufficient {
            balance_minor: 1_000
        }
    );
    let h1 = hold("pat", 300);
    assert_eq!(
        store.hold(&h1).await.unwrap(),
        HoldOutcome::Held { balance_minor: 700 }
    );
    assert_eq!(
        store.hold(&hold("pat", 800)).await.unwrap(),
        HoldOutcome::Insufficient { balance_minor: 700 }
    );
    let acct = store.account("pat").await.unwrap();
    assert_eq!(
        (
            acct.balances["USD"].available,
            acct.balances["USD"].held,
            acct.holds
        ),
        (700, 300, 1)
    );
    // Capture less than held: the rest returns.
    let mut e = event(&reservation("pat", "x"));
    e.amount_minor = 0;
    let out = store.capture_hold(&h1, 120, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 120,
        uncharged_minor: 0,
        balance_minor: 880,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    let again = store.capture_hold(&h1, 120, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 120,
        balance_minor: 880,
        ..
    } = again
    else {
        panic!("{again:?}")
    };
    assert_eq!(
        again, out,
        "a retried capture learns the first outcome, never charges twice"
    );
    // Capture more than held: taken from the balance as far as it goes, never negative.
    let h2 = hold("pat", 100);
    store.hold(&h2).await.unwrap();
    let out = store.capture_hold(&h2, 5_000, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 880,
        uncharged_minor: 4_120,
        balance_minor: 0,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    // Release returns everything.
    store.credit(&topup("pat", 50, "t2")).await.unwrap();
    let h3 = hold("pat", 50);
    store.hold(&h3).await.unwrap();
    assert_eq!(
        store.release_hold(&h3).await.unwrap(),
        HoldSettleOutcome::Released
    );
    assert_eq!(
        store.release_hold(&h3).await.unwrap(),
        HoldSettleOutcome::NotHeld
    );
    let acct = store.account("pat").await.unwrap();
    let b = acct.balances["USD"];
    assert_eq!(
        (b.available, b.held, b.credited, b.captured, acct.holds),
        (50, 0, 1_050, 1_000, 0)
    );
    let events: Vec<_> = store
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payer == "pat")
        .collect();
    assert_eq!(
        events.iter().map(|e| e.amount_minor).collect::<Vec<_>>(),
        [120, 880]
    );
    assert_eq!(events[1].uncharged_minor, 4_120);
    // Aggregates were updated in the same steps.
    let day = tollgate_middleware::store::utc_day(e.time_ms);
    let rows = store.usage(Some("pat"), &day, &day).await.unwrap();
    assert_eq!((rows[0].requests, rows[0].amount_minor["USD"]), (2, 1_000));
    let totals = store.payer_totals(&day, &day).await.unwrap();
    let pat = totals.iter().find(|p| p.payer == "pat").unwrap();
    assert_eq!((pat.requests, pat.amount_minor["USD"]), (2, 1_000));
    // A blocked payer cannot hold.
    store.set_blocked("pat", true).await.unwrap();
    assert_eq!(
        store.hold(&hold("pat", 1)).await.unwrap(),
        HoldOutcome::PayerBlocked
    );
    // Its account still reads (the admin API shows it), and says it is blocked.
    let acct = store.account("pat").await.unwrap();
    assert!(acct.blocked);
    assert_eq!(acct.balances["USD"].available, 50);
    store.set_blocked("pat", false).await.unwrap();
    assert!(!store.account("pat").await.unwrap().blocked);
}

/// Admin credits and debits apply once per (payer, key); a debit never takes the available
/// balance below zero nor touches money held in flight; a refused debit records nothing.
pub(crate) async fn credits_apply_once_per_key(store: Arc<dyn Store>) {
    let CreditOutcome::Applied {
        credit_id,
        balance_minor: 100,
    } = store.credit(&topup("cr", 100, "k1")).await.unwrap()
    else {
        panic!("not applied")
    };
    // The same key again, whatever the amount: the first credit.
    assert_eq!(
        store.credit(&topup("cr", 999, "k1")).await.unwrap(),
        CreditOutcome::Duplicate {
            credit_id,
            balance_minor: 100
        }
    );
    // Keys are per payer.
    assert!(matches!(
        store.credit(&topup("cr-other", 7, "k1")).await.unwrap(),
        CreditOutcome::Applied {
            balance_minor: 7,
            ..
        }
    ));
    assert!(matches!(
        store.credit(&topup("cr", -100, "d1")).await.unwrap(),
        CreditOutcome::Applied {
            balance_minor: 0,
            ..
        }
    ));
    assert_eq!(
        store.credit(&topup("cr", -1, "d2")).await.unwrap(),
        CreditOutcome::Insufficient { balance_minor: 0 }
    );
    fund(&store, "cr", 5).await;
    // The refused debit's key was not used up.
    assert!(matches!(
        store.credit(&topup("cr", -1, "d2")).await.unwrap(),
        CreditOutcome::Applied {
            balance_minor: 4,
            ..
        }
    ));
    assert!(matches!(
        store.hold(&hold("cr", 3)).await.unwrap(),
        HoldOutcome::Held { balance_minor: 1 }
    ));
    assert_eq!(
        store.credit(&topup("cr", -2, "d3")).await.unwrap(),
        CreditOutcome::Insufficient { balance_minor: 1 }
    );
    assert_eq!(usd(&store, "cr").await, (1, 3, 4, 0, 1));
    assert_eq!(usd(&store, "cr-other").await, (7, 0, 7, 0, 0));
}

/// A top-up receipt credits once, can then not pay, and is single use across payers; a
/// receipt held or spent as a payment, or spent on a plan, cannot top up.
pub(crate) async fn top_up_receipts_are_single_use(store: Arc<dyn Store>) {
    let by_receipt = |payer: &str, jti: &str, amount: i64| Credit {
        idempotency: Idempotency::Receipt {
            issuer: "iss".into(),
            receipt_id: jti.into(),
        },
        reason: "topup".into(),
        source: format!("receipt:iss:{jti}"),
        ..topup(payer, amount, "-")
    };
    let CreditOutcome::Applied {
        credit_id,
        balance_minor: 500,
    } = store.credit(&by_receipt("tu", "tu-1", 500)).await.unwrap()
    else {
        panic!("not applied")
    };
    assert_eq!(
        store.credit(&by_receipt("tu", "tu-1", 500)).await.unwrap(),
        CreditOutcome::Duplicate {
            credit_id,
            balance_minor: 500
        }
    );
    let r = reservation("tu", "tu-1");
    assert_eq!(
        store.authorize(&r).await.unwrap(),
        AuthorizeOutcome::Replayed
    );
    assert_eq!(
        store
            .credit(&by_receipt("tu-other", "tu-1", 500))
            .await
            .unwrap(),
        CreditOutcome::ReceiptUsed
    );
    let held = reservation("tu", "tu-2");
    assert_eq!(
        store.authorize(&held).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert_eq!(
        store.credit(&by_receipt("tu", "tu-2", 500)).await.unwrap(),
        CreditOutcome::ReceiptUsed
    );
    // Spent on a plan period: not a top-up (the memory store once answered `Duplicate` here,
    // with the purchase's event id as the credit id).
    let sub = crate::plans::subscription("tu", "tu-plan", "tu-3", Some(5));
    assert!(matches!(
        store.subscribe(&sub).await.unwrap(),
        tollgate_middleware::store::SubscribeOutcome::Subscribed { .. }
    ));
    assert_eq!(
        store.credit(&by_receipt("tu", "tu-3", 500)).await.unwrap(),
        CreditOutcome::ReceiptUsed
    );
    assert_eq!(usd(&store, "tu").await, (500, 0, 500, 0, 0));
}

/// A blocked payer cannot hold or be charged at admission, but what is in flight settles,
/// credits apply, and its account reads (blocked, as it is).
pub(crate) async fn blocked_payer_balance(store: Arc<dyn Store>) {
    fund(&store, "bl", 100).await;
    let h = hold("bl", 50);
    assert_eq!(
        store.hold(&h).await.unwrap(),
        HoldOutcome::Held { balance_minor: 50 }
    );
    store.set_blocked("bl", true).await.unwrap();
    assert_eq!(
        store.hold(&hold("bl", 1)).await.unwrap(),
        HoldOutcome::PayerBlocked
    );
    let e = balance_event("bl", "compute", 0);
    assert_eq!(
        store
            .charge_at_admission(ChargeFrom::Balance(&hold("bl", 1)), &e)
            .await
            .unwrap(),
        tollgate_middleware::store::ChargeOutcome::Declined(HoldOutcome::PayerBlocked)
    );
    let a = store.account("bl").await.unwrap();
    assert!(a.blocked);
    assert_eq!(
        (a.balances["USD"].available, a.balances["USD"].held, a.holds),
        (50, 50, 1)
    );
    let out = store.capture_hold(&h, 50, &e).await.unwrap();
    assert!(
        matches!(
            out,
            HoldSettleOutcome::Captured {
                charged_minor: 50,
                uncharged_minor: 0,
                balance_minor: 50,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(matches!(
        store.credit(&topup("bl", 10, "bl-k")).await.unwrap(),
        CreditOutcome::Applied {
            balance_minor: 60,
            ..
        }
    ));
    store.set_blocked("bl", false).await.unwrap();
    assert_eq!(usd(&store, "bl").await, (60, 0, 110, 50, 0));
}

/// Many holds and captures at once on one balance: exactly what the balance covers is held,
/// and captures beyond the holds take nothing that is not there.
pub(crate) async fn concurrent_holds_never_overdraw(store: Arc<dyn Store>) {
    fund(&store, "co", 1_000).await;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let h = hold("co", 100);
            match store.hold(&h).await.unwrap() {
                HoldOutcome::Held { .. } => Some(h),
                HoldOutcome::Insufficient { .. } => None,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len(), 10);
    let mut tasks = Vec::new();
    for h in held {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = balance_event("co", "compute", 0);
            match store.capture_hold(&h, 150, &e).await.unwrap() {
                HoldSettleOutcome::Captured {
                    charged_minor,
                    uncharged_minor,
                    ..
                } => (charged_minor, uncharged_minor),
                other => panic!("{other:?}"),
            }
        }));
    }
    let (mut charged, mut uncharged) = (0, 0);
    for t in tasks {
        let (c, u) = t.await.unwrap();
        charged += c;
        uncharged += u;
    }
    assert_eq!((charged, uncharged), (1_000, 500));
    assert_eq!(usd(&store, "co").await, (0, 0, 1_000, 1_000, 0));
}

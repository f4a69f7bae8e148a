//! Plans: buying periods, calls covered, overage, denial, unit plans.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{
    Hold, HoldOutcome, HoldSettleOutcome, PlanPeriod, SubscribeOutcome, Subscription,
};

use crate::support::*;

const HOUR_MS: i64 = 3_600_000;

/// One hour of `plan` for `payer`, bought with receipt `jti` for 500.
pub(crate) fn subscription(payer: &str, plan: &str, jti: &str, calls: Option<u64>) -> Subscription {
    let r = reservation(payer, jti);
    Subscription {
        payer: payer.into(),
        plan: plan.into(),
        period_ms: HOUR_MS,
        calls,
        now_ms: now_ms(),
        issuer: "iss".into(),
        receipt_id: jti.into(),
        keep_until_ms: now_ms() + 600_000,
        event: tollgate_middleware::UsageEvent {
            route: "subscribe".into(),
            amount_minor: 500,
            units: Default::default(),
            ..event(&r)
        },
    }
}

async fn subscribed(store: &Arc<dyn Store>, s: &Subscription) -> (String, i64) {
    match store.subscribe(s).await.unwrap() {
        SubscribeOutcome::Subscribed {
            event_id,
            period_end_ms,
        } => (event_id, period_end_ms),
        other => panic!("{other:?}"),
    }
}

fn planned(payer: &str, amount: u64, plan: &str, deny: bool, route: bool) -> Hold {
    Hold {
        plan: Some(plan_use(plan, deny, route, None)),
        ..hold(payer, amount)
    }
}

fn covered(h: &Hold) -> Hold {
    let mut h = h.clone();
    if let Some(p) = h.plan.as_mut() {
        p.covered = true;
    }
    h
}

async fn used(store: &Arc<dyn Store>, payer: &str, plan: &str) -> u64 {
    store
        .subscription(payer, plan)
        .await
        .unwrap()
        .map_or(0, |p| p.used)
}

/// A call plan: covered calls counted at the hold, recorded for 0 (no amount in the
/// aggregates), given back once; past them the overage price is held.
pub(crate) async fn call_plan_covers_then_overage(store: Arc<dyn Store>) {
    let sub = subscription("pl", "gold", "pl-1", Some(2));
    let (_, end) = subscribed(&store, &sub).await;
    assert_eq!(end, sub.now_ms + HOUR_MS);
    fund(&store, "pl", 1_000).await;
    let h1 = planned("pl", 100, "gold", false, false);
    let h2 = planned("pl", 100, "gold", false, false);
    let h3 = planned("pl", 100, "gold", false, false);
    let calls_left = |n| HoldOutcome::Plan {
        calls_left: Some(n),
    };
    assert_eq!(store.hold(&h1).await.unwrap(), calls_left(1));
    assert_eq!(store.hold(&h2).await.unwrap(), calls_left(0));
    assert_eq!(
        store.hold(&h3).await.unwrap(),
        HoldOutcome::Overage { balance_minor: 970 }
    );
    assert_eq!(used(&store, "pl", "gold").await, 2);
    let e = balance_event("pl", "covered", 0);
    let first = store.capture_hold(&covered(&h1), 0, &e).await.unwrap();
    let HoldSettleOutcome::Captured {
        charged_minor: 0,
        uncharged_minor: 0,
        balance_minor: 970,
        ..
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(
        store.capture_hold(&covered(&h1), 0, &e).await.unwrap(),
        first
    );
    assert_eq!(
        store.release_hold(&covered(&h2)).await.unwrap(),
        HoldSettleOutcome::Released
    );
    assert_eq!(
        store.release_hold(&covered(&h2)).await.unwrap(),
        HoldSettleOutcome::NotHeld
    );
    assert_eq!(
        store.capture_hold(&covered(&h2), 0, &e).await.unwrap(),
        HoldSettleOutcome::NotHeld
    );
    // A covered call captured cannot be given back.
    assert_eq!(
        store.release_hold(&covered(&h1)).await.unwrap(),
        HoldSettleOutcome::NotHeld
    );
    assert_eq!(used(&store, "pl", "gold").await, 1);
    let out = store
        .capture_hold(&h3, 30, &balance_event("pl", "overage", 0))
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
    let h4 = planned("pl", 100, "gold", false, false);
    assert_eq!(store.hold(&h4).await.unwrap(), calls_left(0));
    assert_eq!(usd(&store, "pl").await, (970, 0, 1_000, 30, 0));
    let rows = store
        .usage(Some("pl"), "19700101", "19700101")
        .await
        .unwrap();
    let row = |route: &str| rows.iter().find(|r| r.route == route).unwrap().clone();
    // A covered call counts as a request with no amount (the memory store once recorded an
    // amount of 0 for it, so its usage rows and payer totals differed from Redis's).
    assert_eq!(row("covered").requests, 1);
    assert!(row("covered").amount_minor.is_empty(), "{rows:?}");
    assert_eq!(
        (row("overage").requests, row("overage").amount_minor["USD"]),
        (1, 30)
    );
    assert_eq!(
        (
            row("subscribe").requests,
            row("subscribe").amount_minor["USD"]
        ),
        (1, 500)
    );
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let pl = totals.iter().find(|p| p.payer == "pl").unwrap();
    assert_eq!((pl.requests, pl.amount_minor["USD"]), (3, 530));
    let amounts: Vec<u64> = events_of(&store, "pl")
        .await
        .iter()
        .map(|e| e.amount_minor)
        .collect();
    assert_eq!(amounts, [500, 0, 30]);
}

/// Used up: a denying plan refuses with its period's end, a route-price plan holds the
/// route's price; no period holds the route's price; a pass covers every call.
pub(crate) async fn plan_denies_or_charges_the_route(store: Arc<dyn Store>) {
    let (_, end) = subscribed(&store, &subscription("pd", "silver", "pd-1", Some(1))).await;
    fund(&store, "pd", 500).await;
    assert_eq!(
        store
            .hold(&planned("pd", 100, "silver", true, false))
            .await
            .unwrap(),
        HoldOutcome::Plan {
            calls_left: Some(0)
        }
    );
    assert_eq!(
        store
            .hold(&planned("pd", 100, "silver", true, false))
            .await
            .unwrap(),
        HoldOutcome::PlanExhausted { period_end_ms: end }
    );
    assert_eq!(
        store
            .hold(&planned("pd", 100, "silver", false, true))
            .await
            .unwrap(),
        HoldOutcome::Held { balance_minor: 400 }
    );
    assert_eq!(
        store
            .hold(&planned("pd", 100, "silver", false, false))
            .await
            .unwrap(),
        HoldOutcome::Overage { balance_minor: 370 }
    );
    assert_eq!(
        store
            .hold(&planned("pd", 100, "none", true, false))
            .await
            .unwrap(),
        HoldOutcome::Held { balance_minor: 270 }
    );
    subscribed(&store, &subscription("pd", "pass", "pd-2", None)).await;
    for _ in 0..3 {
        assert_eq!(
            store
                .hold(&planned("pd", 100, "pass", true, false))
                .await
                .unwrap(),
            HoldOutcome::Plan { calls_left: None }
        );
    }
    let pass = store.subscription("pd", "pass").await.unwrap().unwrap();
    assert_eq!((pass.calls, pass.used), (None, 3));
    // An overage that the balance does not cover.
    assert_eq!(
        store
            .hold(&Hold {
                plan: Some(tollgate_middleware::store::PlanUse {
                    overage_minor: 1_000,
                    ..plan_use("silver", false, false, None)
                }),
                ..hold("pd", 1)
            })
            .await
            .unwrap(),
        HoldOutcome::Insufficient { balance_minor: 270 }
    );
    assert_eq!(usd(&store, "pd").await, (270, 230, 500, 0, 3));
}

/// A unit plan counts the event's units at capture (a call is covered while the count is
/// under the included amount) and a release gives nothing back.
pub(crate) async fn unit_plan_counts_at_capture(store: Arc<dyn Store>) {
    subscribed(&store, &subscription("pu", "tokens", "pu-1", Some(100))).await;
    fund(&store, "pu", 1_000).await;
    let unit_hold = || Hold {
        plan: Some(plan_use("tokens", false, true, Some("token"))),
        ..hold("pu", 100)
    };
    let tokens = |n: u64| tollgate_middleware::UsageEvent {
        units: [("token".to_owned(), n), ("request".to_owned(), 1)].into(),
        ..balance_event("pu", "chat", 0)
    };
    let h1 = unit_hold();
    assert_eq!(
        store.hold(&h1).await.unwrap(),
        HoldOutcome::Plan {
            calls_left: Some(100)
        }
    );
    store
        .capture_hold(&covered(&h1), 0, &tokens(60))
        .await
        .unwrap();
    assert_eq!(used(&store, "pu", "tokens").await, 60);
    let h2 = unit_hold();
    assert_eq!(
        store.hold(&h2).await.unwrap(),
        HoldOutcome::Plan {
            calls_left: Some(40)
        }
    );
    assert_eq!(
        store.release_hold(&covered(&h2)).await.unwrap(),
        HoldSettleOutcome::Released
    );
    assert_eq!(used(&store, "pu", "tokens").await, 60);
    let h3 = unit_hold();
    assert_eq!(
        store.hold(&h3).await.unwrap(),
        HoldOutcome::Plan {
            calls_left: Some(40)
        }
    );
    store
        .capture_hold(&covered(&h3), 0, &tokens(50))
        .await
        .unwrap();
    assert_eq!(used(&store, "pu", "tokens").await, 110);
    assert_eq!(
        store.hold(&unit_hold()).await.unwrap(),
        HoldOutcome::Held { balance_minor: 900 }
    );
    let rows = store
        .usage(Some("pu"), "19700101", "19700101")
        .await
        .unwrap();
    let chat = rows.iter().find(|r| r.route == "chat").unwrap();
    assert_eq!((chat.requests, chat.units["token"]), (2, 110));
}

/// A period still running is extended (its calls added to, a pass stays a pass); the receipt
/// buys once, and for one payer.
pub(crate) async fn subscribe_extends_and_is_single_use(store: Arc<dyn Store>) {
    let s1 = subscription("ps", "gold", "ps-1", Some(10));
    let (id1, end1) = subscribed(&store, &s1).await;
    assert_eq!(
        store.subscribe(&s1).await.unwrap(),
        SubscribeOutcome::Duplicate {
            event_id: id1,
            period_end_ms: end1
        }
    );
    let (_, end2) = subscribed(&store, &subscription("ps", "gold", "ps-2", Some(5))).await;
    assert_eq!(end2, end1 + HOUR_MS);
    assert_eq!(
        store.subscription("ps", "gold").await.unwrap(),
        Some(PlanPeriod {
            start_ms: s1.now_ms,
            end_ms: end2,
            calls: Some(15),
            used: 0
        })
    );
    subscribed(&store, &subscription("ps", "gold", "ps-3", None)).await;
    let p = store.subscription("ps", "gold").await.unwrap().unwrap();
    assert_eq!((p.calls, p.end_ms), (None, end2 + HOUR_MS));
    assert_eq!(
        store
            .subscribe(&subscription("ps-other", "gold", "ps-1", Some(10)))
            .await
            .unwrap(),
        SubscribeOutcome::ReceiptUsed
    );
    let held = reservation("ps", "ps-4");
    store.authorize(&held).await.unwrap();
    assert_eq!(
        store
            .subscribe(&subscription("ps", "gold", "ps-4", Some(1)))
            .await
            .unwrap(),
        SubscribeOutcome::ReceiptUsed
    );
    assert_eq!(
        store.authorize(&reservation("ps", "ps-1")).await.unwrap(),
        tollgate_middleware::store::AuthorizeOutcome::Replayed
    );
    assert_eq!(store.subscription("ps", "silver").await.unwrap(), None);
    assert_eq!(store.subscription("ps-other", "gold").await.unwrap(), None);
    let totals = store.payer_totals("19700101", "19700101").await.unwrap();
    let ps = totals.iter().find(|p| p.payer == "ps").unwrap();
    assert_eq!((ps.requests, ps.amount_minor["USD"]), (3, 1_500));
}

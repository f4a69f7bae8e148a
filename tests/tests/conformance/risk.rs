//! Risk rules: each kind at its boundary (the limit passes, one more triggers), a refusal or a
//! block counts nothing, a flag counts, `block` blocks the payer, a new payer is counted for its
//! issuer once, windows reset, one payer's counters are not another's, and every hit is logged.

use std::sync::Arc;

use tollgate_middleware::risk::{RiskAction, RiskCheck, RiskKind, RiskRule};
use tollgate_middleware::store::prelude::*;

fn rule(id: &str, kind: RiskKind, action: RiskAction) -> RiskRule {
    RiskRule {
        id: id.into(),
        kind,
        action,
        groups: None,
    }
}

/// A fixed minute: 10:00:30 on some day (ms), so windows are predictable.
const T0: i64 = 1_796_292_030_000;

fn check<'a>(payer: &'a str, rules: &'a [RiskRule], amount: u64, now_ms: i64) -> RiskCheck<'a> {
    RiskCheck {
        payer,
        issuer: "wallet",
        route: "work",
        currency: "USD",
        amount_minor: amount,
        now_ms,
        rules,
    }
}

async fn action(
    store: &Arc<dyn Store>,
    payer: &str,
    rules: &[RiskRule],
    amount: u64,
    now: i64,
) -> Option<RiskAction> {
    store
        .risk(&check(payer, rules, amount, now))
        .await
        .unwrap()
        .action()
}

pub(crate) async fn risk_rules(store: Arc<dyn Store>) {
    // Requests: 3 per minute; a refusal counts nothing; the next minute starts afresh.
    let req = [rule(
        "req",
        RiskKind::Requests {
            window_ms: 60_000,
            limit: 3,
        },
        RiskAction::Refuse,
    )];
    for _ in 0..3 {
        assert_eq!(action(&store, "ra", &req, 0, T0).await, None);
    }
    let o = store.risk(&check("ra", &req, 0, T0)).await.unwrap();
    assert_eq!(o.action(), Some(RiskAction::Refuse));
    assert_eq!(
        (o.hits[0].value, o.hits[0].limit, o.retry_after_ms),
        (4, 3, 30_000)
    );
    assert_eq!(
        action(&store, "ra", &req, 0, T0 + 29_999).await,
        Some(RiskAction::Refuse)
    );
    // Another payer has its own counter.
    assert_eq!(action(&store, "rb", &req, 0, T0).await, None);
    assert_eq!(action(&store, "ra", &req, 0, T0 + 30_000).await, None);

    // Spend: 100 per hour in USD; 60 + 40 pass, 1 more blocks the payer; other currencies pass.
    let spend = [rule(
        "spend",
        RiskKind::Spend {
            window_ms: 3_600_000,
            limit_minor: 100,
            currency: "USD".into(),
        },
        RiskAction::Block,
    )];
    assert_eq!(action(&store, "sa", &spend, 60, T0).await, None);
    assert_eq!(action(&store, "sa", &spend, 40, T0).await, None);
    assert!(!store.account("sa").await.unwrap().blocked);
    let mut eur = check("sa", &spend, 1_000, T0);
    eur.currency = "EUR";
    assert_eq!(store.risk(&eur).await.unwrap().action(), None);
    assert_eq!(
        action(&store, "sa", &spend, 1, T0).await,
        Some(RiskAction::Block)
    );
    assert!(store.account("sa").await.unwrap().blocked);

    // Flag: served and counted, so the count goes on.
    let flag = [rule(
        "flag",
        RiskKind::Requests {
            window_ms: 60_000,
            limit: 1,
        },
        RiskAction::Flag,
    )];
    assert_eq!(action(&store, "fa", &flag, 0, T0).await, None);
    let o = store.risk(&check("fa", &flag, 0, T0)).await.unwrap();
    assert_eq!(
        (o.action(), o.hits[0].value, o.retry_after_ms),
        (Some(RiskAction::Flag), 2, 0)
    );
    let o = store.risk(&check("fa", &flag, 0, T0)).await.unwrap();
    assert_eq!(o.hits[0].value, 3);

    // Spike: a trailing 24 hours of 10 per hour (240), then this hour up to 10 x 10.
    let spike = [rule(
        "spike",
        RiskKind::Spike {
            factor: 10,
            min_baseline_minor: 5,
            currency: "USD".into(),
        },
        RiskAction::Refuse,
    )];
    let hour = 3_600_000;
    for h in 1..=24 {
        assert_eq!(action(&store, "ka", &spike, 10, T0 - h * hour).await, None);
    }
    assert_eq!(action(&store, "ka", &spike, 60, T0).await, None);
    assert_eq!(action(&store, "ka", &spike, 40, T0).await, None);
    let o = store.risk(&check("ka", &spike, 1, T0)).await.unwrap();
    assert_eq!(
        (o.action(), o.hits[0].value, o.hits[0].limit),
        (Some(RiskAction::Refuse), 101, 100)
    );
    // A payer below the baseline has no spike limit.
    assert_eq!(action(&store, "kb", &spike, 1, T0 - hour).await, None);
    assert_eq!(action(&store, "kb", &spike, 1_000_000, T0).await, None);

    // New payers: 2 per minute per issuer; a known payer is not new; another issuer has its own.
    let new = [rule(
        "new",
        RiskKind::NewPayers { limit: 2 },
        RiskAction::Refuse,
    )];
    assert_eq!(action(&store, "n1", &new, 0, T0).await, None);
    assert_eq!(action(&store, "n2", &new, 0, T0).await, None);
    assert_eq!(action(&store, "n1", &new, 0, T0).await, None);
    assert_eq!(
        action(&store, "n3", &new, 0, T0).await,
        Some(RiskAction::Refuse)
    );
    let mut other = check("n3", &new, 0, T0);
    other.issuer = "other-wallet";
    assert_eq!(store.risk(&other).await.unwrap().action(), None);
    // Refused, n3 was not remembered: the next minute it is new again, and admitted.
    assert_eq!(action(&store, "n3", &new, 0, T0 + 60_000).await, None);
    assert_eq!(action(&store, "n3", &new, 0, T0 + 60_000).await, None);

    // Every hit is logged, newest first.
    let log = store.risk_decisions(100).await.unwrap();
    let mut rules: Vec<(&str, &str, RiskAction)> = log
        .iter()
        .map(|d| (d.payer.as_str(), d.rule.as_str(), d.action))
        .collect();
    rules.sort();
    let mut want = vec![
        ("ra", "req", RiskAction::Refuse),
        ("ra", "req", RiskAction::Refuse),
        ("sa", "spend", RiskAction::Block),
        ("fa", "flag", RiskAction::Flag),
        ("fa", "flag", RiskAction::Flag),
        ("ka", "spike", RiskAction::Refuse),
        ("n3", "new", RiskAction::Refuse),
    ];
    want.sort();
    assert_eq!(rules, want);
    assert!(log.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
    let block = log.iter().find(|d| d.rule == "spend").unwrap();
    assert_eq!(
        (block.value, block.limit, block.route.as_str()),
        (101, 100, "work")
    );
}

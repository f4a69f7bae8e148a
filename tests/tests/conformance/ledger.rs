//! The ledger as read back: one payer's events, newest first, paged with a cursor.

use std::sync::Arc;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{ChargeOutcome, EventPage};

use crate::support::*;

/// `EventPage::Payer`: exactly the payer's events (never another payer's, even one in the same
/// bucket), newest first, paged with `before` until empty, the same events as the full ledger
/// holds for that payer; a void is among them.
pub(crate) async fn payer_events_newest_first(store: Arc<dyn Store>) {
    // Payers spread over buckets and some sharing one (16 buckets, 40 payers).
    let payers: Vec<String> = (0..40).map(|i| format!("bill-{i}")).collect();
    for p in &payers {
        fund(&store, p, 1_000).await;
    }
    for round in 0..3u64 {
        for p in &payers {
            let h = hold(p, 1 + round);
            let e = balance_event(p, "r", 1 + round);
            let out = store
                .charge_at_admission(ChargeFrom::Balance(&h), &e)
                .await
                .unwrap();
            let ChargeOutcome::Charged { event_id, .. } = out else {
                panic!("{out:?}");
            };
            if round == 2 && p == "bill-7" {
                let charge = tollgate_middleware::UsageEvent {
                    id: event_id,
                    ..e.clone()
                };
                let void = tollgate_middleware::store::void_event(&charge, now_ms(), 500);
                store
                    .void_admission(ChargeFrom::Balance(&h), &charge, &void)
                    .await
                    .unwrap();
            }
        }
    }
    for p in ["bill-0", "bill-7", "bill-39"] {
        let mut want = events_of(&store, p).await;
        want.reverse();
        assert_eq!(want.len(), if p == "bill-7" { 4 } else { 3 }, "{p}");
        // One page holds them all.
        let all = store
            .events(EventPage::Payer {
                payer: p,
                before: None,
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(all, want, "{p}");
        // Pages of one, each after the last one's id, then nothing.
        let mut paged = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = store
                .events(EventPage::Payer {
                    payer: p,
                    before: before.as_deref(),
                    limit: 1,
                })
                .await
                .unwrap();
            let Some(last) = page.last() else {
                break;
            };
            assert_eq!(page.len(), 1);
            before = Some(last.id.clone());
            paged.extend(page);
        }
        assert_eq!(paged, want, "{p}");
    }
    assert!(store
        .events(EventPage::Payer {
            payer: "nobody",
            before: None,
            limit: 10
        })
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .events(EventPage::Payer {
            payer: "bill-1",
            before: None,
            limit: 0
        })
        .await
        .unwrap()
        .is_empty());
}

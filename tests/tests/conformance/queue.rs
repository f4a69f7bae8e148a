//! The x402 `deferred` settlement queue.

use std::sync::Arc;
use std::time::Duration;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{AuthorizeOutcome, SettleOutcome};

use crate::support::*;

/// x402 `deferred`: one job per captured authorization, leased claims, retry, failure that
/// blocks the payer, resolution that unblocks it.
pub(crate) async fn deferred_queue(store: Arc<dyn Store>) {
    use tollgate_middleware::store::JobOutcome;
    let lease = Duration::from_secs(60);
    let r1 = reservation("0xdeferred1", "n1");
    let r2 = reservation("0xdeferred2", "n2");
    for r in [&r1, &r2] {
        assert_eq!(
            store.authorize(r).await.unwrap(),
            AuthorizeOutcome::Reserved
        );
        let first = store
            .capture_deferred(r, &event(r), "{\"job\":1}")
            .await
            .unwrap();
        let SettleOutcome::Captured { event_id } = first else {
            panic!("{first:?}")
        };
        // A retried capture learns the first outcome and queues nothing more.
        assert_eq!(
            store
                .capture_deferred(r, &event(r), "{\"job\":2}")
                .await
                .unwrap(),
            SettleOutcome::AlreadyCaptured { event_id }
        );
    }
    let jobs = store.claim_settlements(10, lease).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs
        .iter()
        .all(|j| j.body == "{\"job\":1}" && j.attempts == 0));
    // Leased: nobody else gets them now.
    assert!(store.claim_settlements(10, lease).await.unwrap().is_empty());
    let j1 = jobs.iter().find(|j| j.payer == "0xdeferred1").unwrap();
    let j2 = jobs.iter().find(|j| j.payer == "0xdeferred2").unwrap();
    store
        .finish_settlement(
            j1,
            &JobOutcome::Retry {
                after: Duration::ZERO,
                error: "timeout".into(),
            },
        )
        .await
        .unwrap();
    store
        .finish_settlement(
            j2,
            &JobOutcome::Failed {
                error: "insufficient_funds".into(),
            },
        )
        .await
        .unwrap();
    // A retry is due at least 1 ms later (the store's resolution).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let again = store.claim_settlements(10, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (j1.id.as_str(), 1)
    );
    store
        .finish_settlement(&again[0], &JobOutcome::Done)
        .await
        .unwrap();
    let failed = store.failed_settlements().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].payer.as_str(), failed[0].error.as_str()),
        ("0xdeferred2", "insufficient_funds")
    );
    // The failed payer is blocked.
    let r3 = reservation("0xdeferred2", "n3");
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::PayerBlocked
    );
    assert!(store.resolve_settlement(&failed[0].id).await.unwrap());
    assert!(!store.resolve_settlement(&failed[0].id).await.unwrap());
    assert_eq!(
        store.authorize(&r3).await.unwrap(),
        AuthorizeOutcome::Reserved
    );
    assert!(store.failed_settlements().await.unwrap().is_empty());
    assert!(store.claim_settlements(10, lease).await.unwrap().is_empty());
}

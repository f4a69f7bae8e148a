//! Request `Idempotency-Key` claims.

use std::sync::Arc;
use std::time::Duration;

use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{IdempotencyClaim, KeyClaim};

/// Request `Idempotency-Key`s: claim, in flight, done with the event, mismatch, forget, and
/// only the claiming token may finish a claim.
pub(crate) async fn request_idempotency(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(60);
    let claim = |payer: &'static str, key: &'static str, fp: &'static str, token: &'static str| {
        let store = store.clone();
        async move {
            store
                .idempotency_claim(&KeyClaim::new(payer, key, token), fp, ttl)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        claim("p1", "k", "fp", "t1").await,
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        claim("p1", "k", "fp", "t2").await,
        IdempotencyClaim::InFlight
    );
    assert_eq!(
        claim("p1", "k", "other", "t2").await,
        IdempotencyClaim::Mismatch
    );
    // Another payer's same key is its own.
    assert_eq!(
        claim("p2", "k", "fp", "t3").await,
        IdempotencyClaim::Claimed
    );
    // A foreign token changes nothing.
    store
        .idempotency_finish(&KeyClaim::new("p1", "k", "t2"), Some(("e-9", 9)))
        .await
        .unwrap();
    store
        .idempotency_finish(&KeyClaim::new("p1", "k", "t2"), None)
        .await
        .unwrap();
    assert_eq!(
        claim("p1", "k", "fp", "t2").await,
        IdempotencyClaim::InFlight
    );
    store
        .idempotency_finish(
            &KeyClaim::new("p1", "k", "t1"),
            Some(("1795370240883-0", 1_795_370_240_883)),
        )
        .await
        .unwrap();
    let done = IdempotencyClaim::Done {
        event_id: "1795370240883-0".into(),
        time_ms: 1_795_370_240_883,
    };
    assert_eq!(claim("p1", "k", "fp", "t4").await, done);
    // Done is final: forgetting it is refused.
    store
        .idempotency_finish(&KeyClaim::new("p1", "k", "t1"), None)
        .await
        .unwrap();
    assert_eq!(claim("p1", "k", "fp", "t4").await, done);
    // Forgotten (not charged): free again.
    store
        .idempotency_finish(&KeyClaim::new("p2", "k", "t3"), None)
        .await
        .unwrap();
    assert_eq!(
        claim("p2", "k", "fp", "t5").await,
        IdempotencyClaim::Claimed
    );
    // Concurrent claims of one key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .idempotency_claim(&KeyClaim::new("p3", "race", format!("t{i}")), "fp", ttl)
                .await
                .unwrap()
        }));
    }
    let mut claimed = 0;
    for t in tasks {
        if t.await.unwrap() == IdempotencyClaim::Claimed {
            claimed += 1;
        }
    }
    assert_eq!(claimed, 1);
}

/// One-time ids (DPoP proofs' `jti`): the first claim wins, also among concurrent ones; other
/// ids are independent; a claim lapses after its time.
pub(crate) async fn one_time_ids(store: Arc<dyn Store>) {
    let ttl = Duration::from_secs(60);
    assert!(store.claim_once("dpop|key-a|j1", ttl).await.unwrap());
    assert!(!store.claim_once("dpop|key-a|j1", ttl).await.unwrap());
    assert!(store.claim_once("dpop|key-b|j1", ttl).await.unwrap());
    assert!(store.claim_once("dpop|key-a|j2", ttl).await.unwrap());
    // A hostile id (long, any bytes) is an id like any other.
    let odd = format!("dpop|k|{}\u{0}\n{}", "x".repeat(300), "\u{1F600}");
    assert!(store.claim_once(&odd, ttl).await.unwrap());
    assert!(!store.claim_once(&odd, ttl).await.unwrap());
    // Sixteen at once: exactly one.
    let claims: Vec<_> = (0..16)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.claim_once("dpop|key-c|race", ttl).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for c in claims {
        won += usize::from(c.await.unwrap());
    }
    assert_eq!(won, 1);
    // Lapsed: claimable again.
    assert!(store
        .claim_once("dpop|key-d|short", Duration::from_millis(200))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store
        .claim_once("dpop|key-d|short", Duration::from_millis(200))
        .await
        .unwrap());
}

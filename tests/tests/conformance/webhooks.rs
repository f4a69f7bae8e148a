//! The webhook outbox: the dispatcher's cursor moved once (a second dispatcher is refused), its
//! state set and cleared with it; messages delivered in order per bucket, one claim at a time;
//! a retry waits for its time; a failure kept, listed and replayed to its endpoint only (same
//! id); the backlog counted and what every endpoint is past trimmed.

use std::sync::Arc;

use tollgate_middleware::store::bucket_of;
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::webhook::{
    DeliveryClaim, DeliveryFinish, DeliveryHead, DeliveryResult, OutboxAdvance, WebhookMessage,
};

use crate::support::*;

fn msg(id: &str, kind: &str) -> WebhookMessage {
    WebhookMessage {
        id: id.into(),
        kind: kind.into(),
        payer: "hook-payer".into(),
        time_ms: 1_700_000_000_123,
        body: format!("{{\"type\":\"{kind}\",\"id\":\"{id}\"}}"),
        only: None,
        seq: String::new(),
    }
}

fn claim<'a>(endpoint: &'a str, holder: &'a str, now_ms: i64) -> DeliveryClaim<'a> {
    DeliveryClaim {
        endpoint,
        bucket: bucket_of("hook-payer"),
        holder,
        now_ms,
        lock_ms: 10_000,
        max: 10,
    }
}

fn finish<'a>(
    endpoint: &'a str,
    holder: &'a str,
    head: &'a DeliveryHead,
    message: &'a WebhookMessage,
    attempts: u32,
    result: DeliveryResult,
) -> DeliveryFinish<'a> {
    DeliveryFinish {
        endpoint,
        bucket: bucket_of("hook-payer"),
        holder,
        done: &head.done,
        message,
        attempts,
        now_ms: now_ms(),
        result,
    }
}

fn ids(h: &DeliveryHead) -> Vec<&str> {
    h.messages.iter().map(|m| m.id.as_str()).collect()
}

pub(crate) async fn outbox_lifecycle(store: Arc<dyn Store>) {
    let b = bucket_of("hook-payer");
    let (cursor, state) = store.webhook_state(b, &["k1".into()]).await.unwrap();
    assert_eq!((cursor, state.len()), (None, 0));
    // A dispatcher step: two messages, a state key, the cursor.
    let step = OutboxAdvance {
        bucket: b,
        expected: None,
        cursor: "100-0-1".into(),
        set: vec![("k1".into(), "v1".into()), ("k2".into(), "v2".into())],
        clear: vec![],
        messages: vec![msg("msg_a", "balance.low"), msg("msg_b", "charge.captured")],
        ..OutboxAdvance::default()
    };
    assert!(store.webhook_advance(&step).await.unwrap());
    // A second dispatcher with the same view is refused, and writes nothing.
    assert!(!store.webhook_advance(&step).await.unwrap());
    let keys = vec!["k1".to_owned(), "k2".to_owned(), "k3".to_owned()];
    let (cursor, state) = store.webhook_state(b, &keys).await.unwrap();
    assert_eq!(cursor.as_deref(), Some("100-0-1"));
    assert_eq!(
        (state.get("k1"), state.get("k2"), state.len()),
        (Some(&"v1".to_owned()), Some(&"v2".to_owned()), 2)
    );
    let next = OutboxAdvance {
        bucket: b,
        expected: Some("100-0-1".into()),
        cursor: "200-0-1".into(),
        clear: vec!["k1".into()],
        ..OutboxAdvance::default()
    };
    assert!(store.webhook_advance(&next).await.unwrap());
    let (_, state) = store.webhook_state(b, &keys).await.unwrap();
    assert_eq!(state.keys().collect::<Vec<_>>(), vec!["k2"]);
    // A direct message after them.
    let written = store
        .webhook_enqueue(b, &[msg("msg_c", "payer.blocked")])
        .await
        .unwrap();
    assert!(!written[0].seq.is_empty());

    // Delivery in order, one claim at a time.
    let now = now_ms();
    let head = store
        .webhook_claim(&claim("e1", "h1", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&head), vec!["msg_a", "msg_b", "msg_c"]);
    assert_eq!((head.done.as_str(), head.attempts), ("", 0));
    assert_eq!(head.messages[0].body, msg("msg_a", "balance.low").body);
    assert!(store
        .webhook_claim(&claim("e1", "h2", now))
        .await
        .unwrap()
        .is_none());
    // Another endpoint has its own position.
    let other = store
        .webhook_claim(&claim("e2", "h2", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.messages.len(), 3);
    // A retry: the same message, not before its time; a stranger's finish is refused.
    let retry = DeliveryResult::Retry {
        next_ms: now + 60_000,
        error: "HTTP 500".into(),
    };
    let m0 = head.messages[0].clone();
    let f = finish("e1", "h2", &head, &m0, 1, retry.clone());
    assert!(!store.webhook_finish(&f).await.unwrap());
    let f = finish("e1", "h1", &head, &m0, 1, retry);
    assert!(store.webhook_finish(&f).await.unwrap());
    assert!(store
        .webhook_claim(&claim("e1", "h2", now + 1_000))
        .await
        .unwrap()
        .is_none());
    let head = store
        .webhook_claim(&claim("e1", "h2", now + 61_000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ids(&head)[0], head.attempts), ("msg_a", 1));
    // Delivered: the position moves past it.
    let m0 = head.messages[0].clone();
    let f = finish("e1", "h2", &head, &m0, 2, DeliveryResult::Delivered);
    assert!(store.webhook_finish(&f).await.unwrap());
    let head = store
        .webhook_claim(&claim("e1", "h1", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ids(&head), head.attempts), (vec!["msg_b", "msg_c"], 0));
    assert_eq!(head.done, m0.seq);
    // Failed for good: kept, and the position moves past it.
    let m1 = head.messages[0].clone();
    let failed = DeliveryResult::Failed {
        error: "timed out".into(),
    };
    let f = finish("e1", "h1", &head, &m1, 8, failed);
    assert!(store.webhook_finish(&f).await.unwrap());
    let failures = store.webhook_failures(10).await.unwrap();
    assert_eq!(failures.len(), 1);
    let fl = &failures[0];
    assert_eq!(
        (
            fl.endpoint.as_str(),
            fl.message.id.as_str(),
            fl.attempts,
            fl.error.as_str()
        ),
        ("e1", "msg_b", 8, "timed out")
    );
    assert_eq!(
        (fl.message.body.as_str(), fl.message.time_ms),
        (m1.body.as_str(), m1.time_ms)
    );
    // Skipped (not for this endpoint): past it too.
    let head = store
        .webhook_claim(&claim("e1", "h1", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&head), vec!["msg_c"]);
    let m2 = head.messages[0].clone();
    let f = finish("e1", "h1", &head, &m2, 0, DeliveryResult::Skipped);
    assert!(store.webhook_finish(&f).await.unwrap());
    let head = store
        .webhook_claim(&claim("e1", "h1", now))
        .await
        .unwrap()
        .unwrap();
    assert!(head.messages.is_empty());
    // Backlog: e1 is at the end, e2 has not started.
    let backlog = store
        .webhook_backlog(&["e1".into(), "e2".into()])
        .await
        .unwrap();
    assert_eq!((backlog[0].pending, backlog[1].pending), (0, 3));
    assert!(backlog[1].oldest_ms.is_some() && backlog[0].oldest_ms.is_none());
    // Nothing is trimmed that e2 has not passed.
    let endpoints = ["e1".to_owned(), "e2".to_owned()];
    assert_eq!(store.webhook_trim(b, &endpoints).await.unwrap(), 0);
    // A replay: the failure goes back to its endpoint only, with its id; listed no more.
    assert!(store.webhook_replay("e2", "msg_b").await.unwrap().is_none());
    let again = store.webhook_replay("e1", "msg_b").await.unwrap().unwrap();
    assert_eq!(
        (again.id.as_str(), again.only.as_deref()),
        ("msg_b", Some("e1"))
    );
    assert!(store.webhook_failures(10).await.unwrap().is_empty());
    assert!(store.webhook_replay("e1", "msg_b").await.unwrap().is_none());
    let head = store
        .webhook_claim(&claim("e1", "h1", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&head), vec!["msg_b"]);
    assert_eq!(
        (head.messages[0].only.as_deref(), &head.messages[0].body),
        (Some("e1"), &m1.body)
    );
    let m3 = head.messages[0].clone();
    let f = finish("e1", "h1", &head, &m3, 1, DeliveryResult::Delivered);
    assert!(store.webhook_finish(&f).await.unwrap());
    // e2 delivers everything: then every message is trimmed.
    let head = store
        .webhook_claim(&claim("e2", "h2", now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.messages.len(), 4);
    let last = head.messages[3].clone();
    let f = finish("e2", "h2", &head, &last, 0, DeliveryResult::Skipped);
    assert!(store.webhook_finish(&f).await.unwrap());
    assert_eq!(store.webhook_trim(b, &endpoints).await.unwrap(), 4);
    let backlog = store.webhook_backlog(&endpoints).await.unwrap();
    assert_eq!((backlog[0].pending, backlog[1].pending), (0, 0));
    // Scheduled messages: listed once due, earliest first; scheduled again, replaced;
    // unscheduled, gone -- each with the cursor's compare-and-set.
    let later = |id: &str, at: i64| (at, msg(id, "plan.period_ended"));
    let (cursor, _) = store.webhook_state(b, &[]).await.unwrap();
    let sched = OutboxAdvance {
        bucket: b,
        expected: cursor.clone(),
        cursor: cursor.clone().unwrap(),
        schedule: vec![later("msg_s2", now + 2_000), later("msg_s1", now + 1_000)],
        ..OutboxAdvance::default()
    };
    assert!(store.webhook_advance(&sched).await.unwrap());
    assert!(store.webhook_due(b, now, 10).await.unwrap().is_empty());
    let due = store.webhook_due(b, now + 1_500, 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|(at, m)| (*at - now, m.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(1_000, "msg_s1")]
    );
    assert_eq!(due[0].1.body, msg("msg_s1", "plan.period_ended").body);
    let due = store.webhook_due(b, now + 5_000, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|(_, m)| m.id.as_str()).collect::<Vec<_>>(),
        vec!["msg_s1", "msg_s2"]
    );
    let again = OutboxAdvance {
        bucket: b,
        expected: cursor.clone(),
        cursor: cursor.clone().unwrap(),
        schedule: vec![later("msg_s1", now + 3_000)],
        unschedule: vec!["msg_s2".into()],
        ..OutboxAdvance::default()
    };
    assert!(store.webhook_advance(&again).await.unwrap());
    let due = store.webhook_due(b, now + 5_000, 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|(at, m)| (*at - now, m.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(3_000, "msg_s1")]
    );
    let gone = OutboxAdvance {
        bucket: b,
        expected: cursor.clone(),
        cursor: cursor.unwrap(),
        unschedule: vec!["msg_s1".into()],
        ..OutboxAdvance::default()
    };
    assert!(store.webhook_advance(&gone).await.unwrap());
    assert!(store
        .webhook_due(b, now + 5_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A payer threshold: set, read, removed.
    store
        .webhook_set(b, "thr|hook-payer|USD", Some("5000"))
        .await
        .unwrap();
    let (_, state) = store
        .webhook_state(b, &["thr|hook-payer|USD".into()])
        .await
        .unwrap();
    assert_eq!(
        state.get("thr|hook-payer|USD").map(String::as_str),
        Some("5000")
    );
    store
        .webhook_set(b, "thr|hook-payer|USD", None)
        .await
        .unwrap();
    let (_, state) = store
        .webhook_state(b, &["thr|hook-payer|USD".into()])
        .await
        .unwrap();
    assert!(state.is_empty());
}

//! The sqlite store's own properties: one writer, state across a reopen, schema versions,
//! clear errors for unusable paths. (Its behaviour is the conformance suite's, in tests/.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::store::prelude::*;
use crate::store::{
    AuthorizeOutcome, Credit, CreditOutcome, Hold, HoldOutcome, Idempotency, KeyClaim, Reservation,
    SettleOutcome, Settlement, UsageEvent,
};

fn at(dir: &tempfile::TempDir, clock: &ManualClock) -> SqliteOptions {
    SqliteOptions {
        clock: Arc::new(clock.clone()),
        ..SqliteOptions::new(dir.path().join("t.db").to_string_lossy())
    }
}

/// Open the file again once the previous store's writer has let go of it (its thread closes
/// the connection once every handle is gone).
async fn reopen(dir: &tempfile::TempDir, clock: &ManualClock) -> SqliteStore {
    for _ in 0..100 {
        match SqliteStore::open(at(dir, clock)) {
            Ok(s) => return s,
            Err(OpenError::InUse { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the file is still in use after 2 s")
}

/// A temp dir, a clock, and the store on a file in that dir.
fn fresh() -> (tempfile::TempDir, ManualClock, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(1_800_000_000_000);
    let s = SqliteStore::open(at(&dir, &clock)).unwrap();
    (dir, clock, s)
}

fn credit(payer: &str, amount_minor: i64, key: &str) -> Credit {
    Credit {
        payer: payer.into(),
        currency: "USD".into(),
        amount_minor,
        idempotency: Idempotency::Key(key.into()),
        keep_until_ms: i64::MAX / 2,
        reason: "test".into(),
        source: "admin".into(),
    }
}

fn reservation(id: &str, jti: &str, now: i64) -> Reservation {
    Reservation {
        id: id.into(),
        payer: "p".into(),
        issuer: "https://issuer".into(),
        receipt_id: jti.into(),
        hold: Duration::from_secs(30),
        spent_until_ms: now + 3_600_000,
        mandate: None,
    }
}

fn event(payer: &str, now: i64, amount_minor: u64) -> UsageEvent {
    UsageEvent {
        id: String::new(),
        time_ms: now,
        payer: payer.into(),
        route: "r".into(),
        method: "GET".into(),
        units: BTreeMap::from([("request".to_owned(), 1)]),
        unit_prices: BTreeMap::new(),
        currency: "USD".into(),
        scale: 6,
        amount_minor,
        uncharged_minor: 0,
        credential: "receipt:https://issuer:j".into(),
        reservation: String::new(),
        upstream_status: 200,
        voids: None,
    }
}

/// A reservation asking 70 of mandate-1's window (budget 100).
fn m_reservation(now: i64) -> Reservation {
    let mut m = reservation("res-m", "jm2", now);
    m.mandate = Some(crate::store::MandateCharge {
        key: "mandate-1".into(),
        budget_minor: 100,
        amount_minor: 70,
        window_start_ms: now - 1_000,
        window_end_ms: now + 86_400_000,
        summary: "{}".into(),
    });
    m
}

fn hold(id: &str, amount_minor: u64) -> Hold {
    Hold {
        id: id.into(),
        payer: "p".into(),
        currency: "USD".into(),
        amount_minor,
        ttl: Duration::from_secs(60),
        mandate: None,
        plan: None,
    }
}

#[tokio::test]
async fn a_second_writer_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(1_800_000_000_000);
    let first = SqliteStore::open(at(&dir, &clock)).unwrap();
    first.ping().await.unwrap();
    let err = SqliteStore::open(at(&dir, &clock)).unwrap_err();
    assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(first);
    // The writer thread closes the connection once every handle is gone.
    reopen(&dir, &clock).await;
}

/// What a restart must keep: balances, holds (still expiring), spent receipts (no replay),
/// idempotency of credits, plan periods, mandate windows, request idempotency keys, the x402
/// queue, the ledger and its aggregates.
#[tokio::test]
async fn state_survives_a_reopen() {
    let (dir, clock, s) = fresh();
    let now = clock.now_ms();
    {
        let s = s; // dropped at the end of the block, as by an exiting process
        assert!(matches!(
            s.credit(&credit("p", 1_000, "k1")).await.unwrap(),
            CreditOutcome::Applied {
                balance_minor: 1_000,
                ..
            }
        ));
        assert_eq!(
            s.hold(&hold("h1", 300)).await.unwrap(),
            HoldOutcome::Held { balance_minor: 700 }
        );
        let r = reservation("res-1", "j1", now);
        assert_eq!(s.authorize(&r).await.unwrap(), AuthorizeOutcome::Reserved);
        let captured = s
            .settle(&r, &Settlement::Capture(Box::new(event("p", now, 5))))
            .await
            .unwrap();
        assert!(matches!(captured, SettleOutcome::Captured { .. }));
        // A plan period, a mandate's spend, a request idempotency key, an x402 job.
        let sub = crate::store::Subscription {
            payer: "p".into(),
            plan: "pro".into(),
            period_ms: 86_400_000,
            calls: Some(10),
            now_ms: now,
            issuer: "https://issuer".into(),
            receipt_id: "sub-1".into(),
            keep_until_ms: now + 3_600_000,
            event: event("p", now, 0),
        };
        assert!(matches!(
            s.subscribe(&sub).await.unwrap(),
            crate::store::SubscribeOutcome::Subscribed { .. }
        ));
        let mut m = reservation("res-m", "jm", now);
        m.mandate = Some(crate::store::MandateCharge {
            key: "mandate-1".into(),
            budget_minor: 100,
            amount_minor: 40,
            window_start_ms: now - 1_000,
            window_end_ms: now + 86_400_000,
            summary: "{}".into(),
        });
        assert_eq!(s.authorize(&m).await.unwrap(), AuthorizeOutcome::Reserved);
        s.settle(&m, &Settlement::Capture(Box::new(event("p", now, 40))))
            .await
            .unwrap();
        let ttl = Duration::from_secs(3_600);
        let claim = s
            .idempotency_claim(&KeyClaim::new("p", "idem-1", "t1"), "fp", ttl)
            .await
            .unwrap();
        assert_eq!(claim, crate::store::IdempotencyClaim::Claimed);
        s.idempotency_finish(&KeyClaim::new("p", "idem-1", "t1"), Some(("ev-x", now)))
            .await
            .unwrap();
        let x = reservation("res-x", "jx", now);
        s.authorize(&x).await.unwrap();
        s.capture_deferred(&x, &event("p", now, 3), "{}")
            .await
            .unwrap();
    }
    // A fresh process: wait for the old writer to let go, then reopen.
    let s = reopen(&dir, &clock).await;
    let account = s.account("p").await.unwrap();
    assert_eq!(account.balances["USD"].available, 700);
    assert_eq!(account.balances["USD"].held, 300);
    assert_eq!(account.holds, 1);
    assert!(matches!(
        s.credit(&credit("p", 1_000, "k1")).await.unwrap(),
        CreditOutcome::Duplicate {
            balance_minor: 700,
            ..
        }
    ));
    let replay = reservation("res-2", "j1", now);
    assert_eq!(
        s.authorize(&replay).await.unwrap(),
        AuthorizeOutcome::Replayed,
        "a receipt spent before the restart stays spent"
    );
    let events = s.usage_events().await.unwrap();
    let amounts: Vec<u64> = events.iter().map(|e| e.amount_minor).collect();
    assert_eq!(
        amounts,
        [5, 0, 40, 3],
        "capture, subscription, mandate payment, x402"
    );
    let period = s.subscription("p", "pro").await.unwrap().unwrap();
    assert_eq!((period.calls, period.used), (Some(10), 0));
    let mut again = m_reservation(now);
    again.id = "res-m2".into();
    assert_eq!(
        s.authorize(&again).await.unwrap(),
        AuthorizeOutcome::MandateExceeded { room_minor: 60 },
        "the mandate's spend (40 of 100) survived: 40 more fit, but 70 do not"
    );
    assert_eq!(
        s.idempotency_claim(
            &KeyClaim::new("p", "idem-1", "t2"),
            "fp",
            Duration::from_secs(60)
        )
        .await
        .unwrap(),
        crate::store::IdempotencyClaim::Done {
            event_id: "ev-x".into(),
            time_ms: now
        }
    );
    let jobs = s
        .claim_settlements(10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1, "the x402 job survived");
    assert_eq!(jobs[0].id, events[3].id);
    // The hold still expires on time after the restart, and is given back.
    clock.advance_ms(60_001);
    let account = s.account("p").await.unwrap();
    assert_eq!(account.balances["USD"].available, 1_000);
    assert_eq!(account.holds, 0);
    // Ids keep increasing across the reopen.
    let r = reservation("res-3", "j3", clock.now_ms());
    assert_eq!(s.authorize(&r).await.unwrap(), AuthorizeOutcome::Reserved);
    let e = event("p", clock.now_ms(), 7);
    s.settle(&r, &Settlement::Capture(Box::new(e)))
        .await
        .unwrap();
    let ids: Vec<_> = s
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 5);
    assert!(ids
        .windows(2)
        .all(|w| crate::store::event_order(&w[0]) < crate::store::event_order(&w[1])));
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_a_current_one_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_ms(1_800_000_000_000);
    let path = dir.path().join("t.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let err = SqliteStore::open(at(&dir, &clock)).unwrap_err();
    assert!(
        matches!(err, OpenError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    drop(SqliteStore::open(at(&dir, &clock)).unwrap());
    let conn = opened_when_ready(&path, "PRAGMA user_version");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn an_unusable_path_names_the_file() {
    let err = SqliteStore::open(SqliteOptions::new("/nonexistent-dir/sub/t.db")).unwrap_err();
    assert!(matches!(err, OpenError::Sqlite { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent-dir/sub/t.db"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let not_db = dir.path().join("junk.db");
    std::fs::write(&not_db, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(SqliteOptions::new(not_db.to_string_lossy())).unwrap_err();
    assert!(err.to_string().contains("junk.db"), "{err}");
}

/// Operations that arrive together share one commit, and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_operations_are_each_answered_once_committed() {
    let (_dir, _clock, s) = fresh();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.credit(&credit("p", 1, &format!("k{i}"))).await.unwrap()
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CreditOutcome::Applied { .. }));
    }
    assert_eq!(s.account("p").await.unwrap().balances["USD"].available, 200);
}

/// The documented views agree with the store: revenue per day, credits, and a balance equation
/// with no gap, after charges, a void, a debit and a receipt payment.
#[tokio::test]
async fn the_views_reconcile() {
    let (dir, clock, s) = fresh();
    let now = clock.now_ms();
    {
        let s = s; // dropped at the end of the block, as by an exiting process
        s.credit(&credit("p", 1_000, "k1")).await.unwrap();
        s.credit(&credit("p", -100, "k2")).await.unwrap();
        let mut token_event = event("p", now, 30);
        token_event.credential = "token:p".into();
        for id in ["a", "b"] {
            let h = hold(id, 30);
            s.hold(&h).await.unwrap();
            s.capture_hold(&h, 30, &token_event).await.unwrap();
        }
        let charged = s
            .charge_at_admission(ChargeFrom::Balance(&hold("c", 30)), &token_event)
            .await
            .unwrap();
        let crate::store::ChargeOutcome::Charged { event_id, .. } = charged else {
            panic!("{charged:?}")
        };
        let charge = UsageEvent {
            id: event_id,
            ..token_event.clone()
        };
        let void = crate::store::void_event(&charge, now, 502);
        s.void_admission(ChargeFrom::Balance(&hold("c", 30)), &charge, &void)
            .await
            .unwrap();
        let r = reservation("res", "j", now);
        s.authorize(&r).await.unwrap();
        s.settle(&r, &Settlement::Capture(Box::new(event("p", now, 5))))
            .await
            .unwrap();
    }
    let conn = opened_when_ready(dir.path().join("t.db"), "SELECT count(*) FROM accounts");
    let gaps: (i64, i64, i64, i64, i64) = conn
        .query_row(
            "SELECT equation_gap, credits_gap, ledger_gap, available, captured FROM balance_check \
             WHERE payer = 'p' AND currency = 'USD'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(gaps, (0, 0, 0, 840, 60));
    let revenue: (i64, i64) = conn
        .query_row(
            "SELECT sum(requests), sum(amount_minor) FROM revenue_daily WHERE payer = 'p'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        revenue,
        (3, 65),
        "two balance charges and a receipt; the void cancels one"
    );
    let credits: (i64, i64) = conn
        .query_row(
            "SELECT credits, amount_minor FROM credits_daily WHERE payer = 'p'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(credits, (2, 900));
}

/// A refund keeps every gap of `balance_check` at 0 (its credit row is a credit), and
/// `refunds_daily` has it on the charge's day, route and payer.
#[tokio::test]
async fn refunds_reconcile_in_the_views() {
    let (dir, clock, s) = fresh();
    let now = clock.now_ms();
    {
        let s = s;
        s.credit(&credit("p", 1_000, "k1")).await.unwrap();
        let mut e = event("p", now, 300);
        e.credential = "token:p".into();
        let h = hold("a", 300);
        s.hold(&h).await.unwrap();
        let crate::store::HoldSettleOutcome::Captured { event_id, .. } =
            s.capture_hold(&h, 300, &e).await.unwrap()
        else {
            panic!("not captured")
        };
        let r = crate::store::RefundRequest {
            charge: UsageEvent { id: event_id, ..e },
            voided: false,
            amount_minor: Some(120),
            reason: "r".into(),
            key: "rk".into(),
            fingerprint: "f".into(),
            time_ms: now,
        };
        let out = s.refund(&r).await.unwrap();
        assert!(
            matches!(out, crate::store::RefundOutcome::Refunded(_)),
            "{out:?}"
        );
    }
    let conn = opened_when_ready(dir.path().join("t.db"), "SELECT count(*) FROM refunds");
    let gaps: (i64, i64, i64, i64, i64, i64) = conn
        .query_row(
            "SELECT equation_gap, credits_gap, ledger_gap, available, credited, captured \
             FROM balance_check WHERE payer = 'p' AND currency = 'USD'",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(gaps, (0, 0, 0, 820, 1_120, 300));
    let refunded: (String, i64, i64, i64) = conn
        .query_row(
            "SELECT route, refunds, refunded_minor, owed_minor FROM refunds_daily WHERE payer = 'p'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(refunded, ("r".to_owned(), 1, 120, 0));
}

/// A second connection to the store's file, once `probe` (a query of one integer) answers:
/// the store's writer thread may still hold it while it closes.
fn opened_when_ready(path: impl AsRef<std::path::Path>, probe: &str) -> Connection {
    loop {
        let c = Connection::open(path.as_ref()).unwrap();
        if c.query_row(probe, [], |r| r.get::<_, i64>(0)).is_ok() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Signed webhooks end to end (docs/webhooks.md): a real receiver in Python that verifies every
//! delivery with the Standard Webhooks reference library (`standardwebhooks`, installed by
//! `tests/webhooks/setup.sh`), down at first, then answering 500, then too slowly, then well.
//! From the receiver's point of view, deduplicating by `webhook-id`, every event arrives exactly
//! once, every signature verifies, a payer's events arrive in order, and the charges reported in
//! `charge.captured` batches are the ledger's, each once. A message out of attempts is kept,
//! listed and replayed with its id. Run on the sqlite store and on a private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::process::free_port;
use tollgate_e2e::python::PythonServer;
use tollgate_e2e::*;

const ADMIN: &str = "admin-token-0123456789";
const SECRET_ENV: &str = "TOLLGATE_TEST_WEBHOOK_SECRET";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn receiver(python: &Path, port: u16, plan: &str) -> PythonServer {
    webhook_receiver::start(python, SECRET, port, plan)
}

async fn attempts(port: u16) -> Vec<Value> {
    webhook_receiver::attempts(port).await
}

fn hook(port: u16, events: &str, max_attempts: u32) -> String {
    format!(
        "[[webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [{events}]\n\
         secret_env = \"{SECRET_ENV}\"\ntimeout_ms = 500\nmax_attempts = {max_attempts}\n\
         backoff_ms = 100\nbackoff_max_ms = 400\n"
    )
}

async fn admin(gw: &TestGateway, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let res = gw
        .http
        .request(method, gw.admin_url(path))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Poll until `done` holds for the receiver's attempts (at most 30 s).
async fn until(port: u16, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let a = attempts(port).await;
        if done(&a) {
            return a;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}: {a:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each distinct message (by `webhook-id`) the receiver processed: answered 2xx, or answered
/// too late after processing ("hang").
fn processed(attempts: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for a in attempts.iter().filter(|a| a["action"] != "500") {
        out.entry(a["id"].as_str().unwrap().to_owned())
            .or_insert_with(|| a.clone());
    }
    out
}

async fn every_event_once(builder: GatewayBuilder) {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let events = "\"balance.low\", \"balance.depleted\", \"payer.blocked\", \"charge.captured\"";
    let gw = builder
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&hook(port, events, 50))
        .route(paid("work", "/v1/echo", &up, "0.1"))
        .start()
        .await;
    // The payer's own threshold: 0.45 USD.
    let (status, body) = admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/v1/payers/hook-payer/balance-low",
        json!({"currency": "USD", "threshold": "0.45"}),
    )
    .await;
    assert_eq!((status, body["threshold"].clone()), (200, json!("0.45")));
    let token = gw.topup(&wallet, "hook-payer", "1").await;
    // Ten calls at 0.1 spend the balance; the eleventh is refused and charges nothing.
    for i in 0..11 {
        let res = gw.token_get("/v1/echo", &token).await;
        let want = if i < 10 { 200 } else { 402 };
        assert_eq!(res.status(), want, "call {i}");
        // Spread over a few dispatcher steps.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/v1/payers/other-payer/block",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    // The receiver is down for a second, then answers 500 twice and hangs once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _receiver = receiver(&py, port, "500,500,hang");
    let ledger: BTreeSet<String> = gw
        .paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ledger.len(), 10);
    let reported = |a: &[Value]| -> Vec<String> {
        processed(a)
            .values()
            .filter(|m| m["type"] == "charge.captured")
            .flat_map(|m| m["payload"]["data"]["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = until(port, "every event delivered", |a| {
        let kinds: Vec<_> = processed(a).values().map(|m| m["type"].clone()).collect();
        reported(a).len() >= 10
            && kinds.contains(&json!("balance.low"))
            && kinds.contains(&json!("balance.depleted"))
            && kinds.contains(&json!("payer.blocked"))
    })
    .await;
    // Every signature verified with the reference library.
    assert!(all.iter().all(|a| a["valid"] == true), "{all:#?}");
    // The plan was played: two 500s and a hang, then deliveries; a retry keeps its id.
    let actions: Vec<&str> = all.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(&actions[..3], ["500", "500", "hang"]);
    // A message that failed was tried again with the same id.
    for (i, a) in all.iter().enumerate().filter(|(_, a)| a["action"] == "500") {
        assert!(
            all[i + 1..].iter().any(|b| b["id"] == a["id"]),
            "{} was not tried again",
            a["id"]
        );
    }
    // Exactly once by id: each charge in one batch, each balance event once.
    let charges = reported(&all);
    let unique: BTreeSet<String> = charges.iter().cloned().collect();
    assert_eq!(charges.len(), unique.len(), "a charge reported twice");
    assert_eq!(unique, ledger);
    let messages = processed(&all);
    let count = |t: &str| messages.values().filter(|m| m["type"] == t).count();
    assert_eq!(
        (
            count("balance.low"),
            count("balance.depleted"),
            count("payer.blocked")
        ),
        (1, 1, 1)
    );
    let low = messages
        .values()
        .find(|m| m["type"] == "balance.low")
        .unwrap();
    let data = &low["payload"]["data"];
    assert_eq!(
        (&data["payer"], &data["currency"], &data["threshold"]),
        (&json!("hook-payer"), &json!("USD"), &json!("0.45"))
    );
    assert!(data["available"].as_str().unwrap().parse::<f64>().unwrap() < 0.45);
    let blocked = messages
        .values()
        .find(|m| m["type"] == "payer.blocked")
        .unwrap();
    assert_eq!(blocked["payload"]["data"]["payer"], "other-payer");
    // A payer's events in order: low before depleted.
    let order: Vec<&str> = all
        .iter()
        .filter(|a| a["action"] != "500")
        .filter_map(|a| a["type"].as_str())
        .filter(|t| t.starts_with("balance."))
        .collect();
    let first_depleted = order.iter().position(|t| *t == "balance.depleted").unwrap();
    let first_low = order.iter().position(|t| *t == "balance.low").unwrap();
    assert!(first_low < first_depleted, "{order:?}");
    // Metrics and the admin view.
    let metrics = gw.admin_text("/metrics", ADMIN).await;
    let retried = metrics
        .lines()
        .find(|l| {
            l.starts_with("tollgate_webhook_deliveries_total{endpoint=\"ops\",outcome=\"retried\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(retried >= 3, "{retried}");
    let start = Instant::now();
    loop {
        let v = gw.admin_json("/admin/v1/webhooks", ADMIN).await;
        if v["endpoints"][0]["pending"] == 0 {
            assert_eq!(v["endpoints"][0]["id"], "ops");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_once_on_sqlite() {
    every_event_once(gateway()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_once_on_redis() {
    let redis = RedisServer::start();
    every_event_once(gateway().redis(&redis)).await;
}

/// Out of attempts: kept among the failures, listed, and delivered again by a replay with the
/// same id (to this endpoint only); a second replay finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_delivery_is_kept_and_replayed() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let up = upstream().await;
    let gw = gateway()
        .issuer(&TestIssuer::ed25519("wallet"))
        .admin(ADMIN)
        .top(&hook(port, "\"payer.blocked\"", 2))
        .route(paid("work", "/v1/echo", &up, "0.1"))
        .start()
        .await;
    let failing = receiver(&py, port, "500,500");
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        "/admin/v1/payers/p9/block",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let start = Instant::now();
    let failure = loop {
        let v = gw.admin_json("/admin/v1/webhooks/failures", ADMIN).await;
        if let Some(f) = v["failures"].as_array().and_then(|f| f.first()).cloned() {
            break f;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (&failure["endpoint"], &failure["type"], &failure["attempts"]),
        (&json!("ops"), &json!("payer.blocked"), &json!(2))
    );
    assert_eq!(failure["error"], "HTTP 500");
    assert_eq!(failure["payload"]["data"]["payer"], "p9");
    let id = failure["id"].as_str().unwrap().to_owned();
    let tried = attempts(port).await;
    assert_eq!(tried.len(), 2, "{tried:#?}");
    drop(failing);
    let _ok = receiver(&py, port, "");
    // Bad replays: another endpoint, an unknown id.
    let (status, body) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/webhooks/nope/failures/{id}/replay"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("route_not_found"))
    );
    let (status, body) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/webhooks/ops/failures/{id}/replay"),
        json!({}),
    )
    .await;
    assert_eq!((status, body["id"].clone()), (202, json!(id)));
    let (status, _) = admin(
        &gw,
        reqwest::Method::POST,
        &format!("/admin/v1/webhooks/ops/failures/{id}/replay"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let got = until(port, "the replay", |a| !a.is_empty()).await;
    assert_eq!(
        (&got[0]["id"], &got[0]["type"], &got[0]["valid"]),
        (&json!(id), &json!("payer.blocked"), &json!(true))
    );
    let v = gw.admin_json("/admin/v1/webhooks/failures", ADMIN).await;
    assert_eq!(v["failures"], json!([]));
    // The admin OpenAPI document describes the webhook endpoints.
    let openapi = gw.admin_json("/admin/v1/openapi.json", ADMIN).await;
    for (path, method) in [
        ("/admin/v1/webhooks", "get"),
        ("/admin/v1/webhooks/failures", "get"),
        ("/admin/v1/webhooks/{endpoint}/failures/{id}/replay", "post"),
        ("/admin/v1/payers/{id}/balance-low", "put"),
    ] {
        assert!(openapi["paths"][path][method].is_object(), "{path}");
    }
    // A threshold in a currency that is not configured, or not a decimal: 400 problems.
    for body in [
        json!({"currency": "EUR", "threshold": "1"}),
        json!({"currency": "USD", "threshold": "x"}),
        json!({"currency": "USD", "threshold": "0"}),
    ] {
        let (status, b) = admin(
            &gw,
            reqwest::Method::PUT,
            "/admin/v1/payers/p9/balance-low",
            body.clone(),
        )
        .await;
        assert_eq!(
            (status, b["code"].clone()),
            (400, json!("invalid_request")),
            "{body}: {b}"
        );
    }
}

/// `mandate.budget_crossed` at 80 and 100 % of a mandate's day budget, once each, and
/// `plan.exhausted` once when a period's included calls are used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mandate_budgets_and_plans_are_reported_once() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let _receiver = receiver(&py, port, "");
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let plans = "[[plans]]\nid = \"starter\"\nprice = { amount = \"1.00\", currency = \"USD\" }\nperiod = \"1h\"\ngroups = [\"compute\"]\ncalls = 2\n";
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&hook(
            port,
            "\"mandate.budget_crossed\", \"plan.exhausted\"",
            5,
        ))
        .top(plans)
        .route(paid("work", "/v1/echo/w", &up, "0.1"))
        .route(paid("compute", "/v1/echo/c", &up, "0.1"))
        .start()
        .await;
    let now = now_secs();
    let mandate = wallet.sign(&json!({
        "iss": wallet.id, "sub": "delegate", "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now, "exp": now + 86_400, "kind": "mandate", "owner": "alice",
        "currency": "USD", "budget": "0.5", "window": "day", "merchants": ["m"],
    }));
    for i in 0..6 {
        let receipt = wallet.sign(&json!({
            "iss": wallet.id, "sub": "delegate", "aud": "m", "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now, "exp": now + 300, "amount": "0.1", "currency": "USD", "kind": "payment",
            "mandate": mandate,
        }));
        let res = gw
            .http
            .get(gw.url("/v1/echo/w"))
            .header("authorization", format!("Payment {receipt}"))
            .send()
            .await
            .unwrap();
        // Five fit the 0.5 budget; the sixth is refused.
        assert_eq!(res.status(), if i < 5 { 200 } else { 402 }, "payment {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = wallet.claims("m", "planner", "1.00");
    c["kind"] = "subscribe".into();
    c["plan"] = "starter".into();
    let bought: Value = gw
        .http
        .post(gw.url("/tollgate/v1/subscribe"))
        .header("authorization", format!("Payment {}", wallet.sign(&c)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = bought["access_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(gw.token_get("/v1/echo/c", &token).await.status(), 200);
    }
    until(port, "budget and plan events", |a| a.len() >= 3).await;
    // Anything sent twice would arrive within this.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = attempts(port).await;
    let kinds: Vec<(String, Value)> = processed(&all)
        .values()
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_owned(),
                m["payload"]["data"].clone(),
            )
        })
        .collect();
    let budget: Vec<&Value> = kinds
        .iter()
        .filter(|(t, _)| t == "mandate.budget_crossed")
        .map(|(_, d)| d)
        .collect();
    let mut percents: Vec<u64> = budget
        .iter()
        .map(|d| d["percent"].as_u64().unwrap())
        .collect();
    percents.sort();
    assert_eq!(percents, [80, 100], "{kinds:?}");
    for d in &budget {
        assert_eq!(
            (&d["payer"], &d["owner"], &d["budget"]),
            (&json!("delegate"), &json!("alice"), &json!("0.5"))
        );
    }
    let plan: Vec<&Value> = kinds
        .iter()
        .filter(|(t, _)| t == "plan.exhausted")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(plan.len(), 1, "{kinds:?}");
    assert_eq!(
        (
            &plan[0]["payer"],
            &plan[0]["plan"],
            &plan[0]["calls"],
            &plan[0]["used"]
        ),
        (&json!("planner"), &json!("starter"), &json!(2), &json!(2))
    );
    assert_eq!(kinds.len(), 3, "nothing else, nothing twice: {kinds:?}");
}

/// `refund.created` for a refund through the admin API; a retry with the same Idempotency-Key
/// sends the same message id again (so a message lost to a crash comes back with the retry),
/// which the receiver counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_is_reported_once_by_id() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let _receiver = receiver(&py, port, "");
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&hook(port, "\"refund.created\"", 5))
        .route(paid("work", "/v1/echo", &up, "0.1"))
        .start()
        .await;
    let token = gw.topup(&wallet, "refunded", "1").await;
    assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    let event = gw.paywall.store().usage_events().await.unwrap()[0]
        .id
        .clone();
    for _ in 0..2 {
        let res = gw
            .http
            .post(gw.admin_url(&format!("/admin/v1/events/{event}/refund")))
            .bearer_auth(ADMIN)
            .header("idempotency-key", "refund-1")
            .json(&json!({"amount": "0.04", "reason": "slow answer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let got = until(port, "the refund", |a| a.len() >= 2).await;
    let messages = processed(&got);
    assert_eq!(messages.len(), 1, "{got:#?}");
    let m = messages.values().next().unwrap();
    let data = &m["payload"]["data"];
    assert_eq!(m["type"], "refund.created");
    assert_eq!(
        (
            &data["event_id"],
            &data["amount"],
            &data["payer"],
            &data["reason"]
        ),
        (
            &json!(event),
            &json!("0.04"),
            &json!("refunded"),
            &json!("slow answer")
        )
    );
    assert!(got
        .iter()
        .all(|a| a["valid"] == true && a["id"] == got[0]["id"]));
}

/// With the PostgreSQL ledger of record, the dispatcher follows the ledger database (per
/// bucket, after the drainer): every charge is reported once, after it was drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_are_reported_from_the_ledger_database() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let _receiver = receiver(&py, port, "");
    let pg = tollgate_e2e::postgres::PostgresServer::start();
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&format!("[ledger]\nurl = \"{}\"\n", pg.url()))
        .top(&hook(port, "\"charge.captured\"", 5))
        .route(paid("work", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    // Payers in several buckets.
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(gw.topup(&wallet, &format!("pg-payer-{i}"), "1").await);
    }
    for round in 0..3 {
        for t in &tokens {
            assert_eq!(
                gw.token_get("/v1/echo", t).await.status(),
                200,
                "round {round}"
            );
        }
    }
    let reported = |a: &[Value]| -> Vec<String> {
        processed(a)
            .values()
            .flat_map(|m| m["payload"]["data"]["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = until(port, "18 charges", |a| reported(a).len() >= 18).await;
    let ids = reported(&all);
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (18, 18));
    // Each reported charge is in the ledger database.
    let db = pg.client().await;
    for id in &ids {
        let n: i64 = db
            .query_one("SELECT count(*) FROM ledger_events WHERE id = $1", &[id])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{id} reported before it was in the ledger database");
    }
}

/// `plan.period_ended` at a period's end, with the calls used; a period renewed before its end
/// is reported once, at the new end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_period_end_is_reported_once() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let _receiver = receiver(&py, port, "");
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let plans = "[[plans]]\nid = \"short\"\nprice = { amount = \"1.00\", currency = \"USD\" }\nperiod = \"2s\"\ngroups = [\"compute\"]\ncalls = 5\n";
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&hook(port, "\"plan.period_ended\"", 5))
        .top(plans)
        .route(paid("compute", "/v1/echo/c", &up, "0.1"))
        .start()
        .await;
    let buy = |payer: &str| {
        let mut c = wallet.claims("m", payer, "1.00");
        c["kind"] = "subscribe".into();
        c["plan"] = "short".into();
        gw.http
            .post(gw.url("/tollgate/v1/subscribe"))
            .header("authorization", format!("Payment {}", wallet.sign(&c)))
            .send()
    };
    let bought: Value = buy("ender").await.unwrap().json().await.unwrap();
    let token = bought["access_token"].as_str().unwrap().to_owned();
    assert_eq!(gw.token_get("/v1/echo/c", &token).await.status(), 200);
    // The renewer buys twice: one period of 4 s in all.
    assert_eq!(buy("renewer").await.unwrap().status(), 200);
    assert_eq!(buy("renewer").await.unwrap().status(), 200);
    until(port, "two period ends", |a| a.len() >= 2).await;
    // Anything sent twice (the renewer's first end) would arrive within this.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let got = attempts(port).await;
    assert!(got
        .iter()
        .all(|a| a["valid"] == true && a["type"] == "plan.period_ended"));
    let by_payer: Vec<(String, Value)> = processed(&got)
        .values()
        .map(|m| {
            (
                m["payload"]["data"]["payer"].as_str().unwrap().to_owned(),
                m["payload"]["data"].clone(),
            )
        })
        .collect();
    assert_eq!(by_payer.len(), 2, "{by_payer:#?}");
    let ender = &by_payer.iter().find(|(p, _)| p == "ender").unwrap().1;
    assert_eq!(
        (&ender["plan"], &ender["calls"], &ender["used"]),
        (&json!("short"), &json!(5), &json!(1))
    );
    let renewer = &by_payer.iter().find(|(p, _)| p == "renewer").unwrap().1;
    let span = |d: &Value| {
        let ms = |k: &str| unix_ms(d[k].as_str().unwrap());
        ms("period_end") - ms("period_start")
    };
    assert_eq!((span(ender), span(renewer)), (2_000, 4_000));
}

/// Unix ms of `2026-12-03T16:58:21.004Z`.
fn unix_ms(t: &str) -> i64 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, ms) = time.split_once('.').unwrap();
    let h: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + h[0]) * 60 + h[1]) * 60_000 + h[2] * 1000 + ms.parse::<i64>().unwrap()
}

/// Webhooks first configured on a ledger with history begin at its end: only what happens
/// from then on is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_is_not_replayed_when_webhooks_are_added() {
    let Some(py) = webhook_receiver::python() else {
        return;
    };
    std::env::set_var(SECRET_ENV, SECRET);
    let port = free_port();
    let _receiver = receiver(&py, port, "");
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let before = gateway()
        .redis(&redis)
        .issuer(&wallet)
        .route(paid("work", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = before.topup(&wallet, "veteran", "1").await;
    for _ in 0..5 {
        assert_eq!(before.token_get("/v1/echo", &token).await.status(), 200);
    }
    drop(before);
    let after = gateway()
        .redis(&redis)
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&hook(port, "\"charge.captured\"", 5))
        .route(paid("work", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    // Charge twice more.
    for _ in 0..2 {
        assert_eq!(after.token_get("/v1/echo", &token).await.status(), 200);
    }
    let got = until(port, "the new charges", |a| !a.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = if got.len() > 1 {
        got
    } else {
        attempts(port).await
    };
    let charges: Vec<Value> = processed(&got)
        .values()
        .flat_map(|m| m["payload"]["data"]["events"].as_array().unwrap().clone())
        .collect();
    assert_eq!(charges.len(), 2, "only the two new charges: {charges:#?}");
    assert_eq!(after.paywall.store().usage_events().await.unwrap().len(), 7);
}

//! Refunds over real HTTP (`POST /admin/v1/events/{id}/refund`, `GET /admin/v1/refunds`, the
//! agent's bill): on the embedded sqlite store, and on a real Redis with a real PostgreSQL
//! ledger of record after the charges were drained and trimmed from Redis, from two gateway
//! replicas at once. Every refusal is checked by its status and stable code, every amount to
//! the unit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::postgres::PostgresServer;
use tollgate_e2e::*;

const ADMIN: &str = "admin-token-0123456789";

fn refund(gw: &TestGateway, id: &str, key: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
    let mut req = gw
        .http
        .post(gw.admin_url(&format!("/admin/v1/events/{id}/refund")))
        .bearer_auth(ADMIN)
        .json(body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req
}

/// The admin export's events, oldest first.
async fn events(gw: &TestGateway) -> Vec<Value> {
    let mut v: Vec<Value> = gw
        .admin_text("/admin/v1/events?limit=100", ADMIN)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|e| tollgate_middleware::store::event_order(e["id"].as_str().unwrap()));
    v
}

async fn available(gw: &TestGateway, payer: &str) -> i64 {
    gw.paywall.store().account(payer).await.unwrap().balances["USD"].available
}

/// The agent's bill, NDJSON lines.
async fn bill(gw: &TestGateway, token: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let res = gw
        .token_get(&format!("/tollgate/v1/usage{query}"), token)
        .await;
    assert_eq!(res.status(), 200);
    let next = res
        .headers()
        .get("tollgate-next-before")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    (
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        next,
    )
}

/// `n` refunds of `amount` of charge `id` at once, each under its own key, spread over the
/// gateways: the statuses, and the sum refunded (minor units).
async fn at_once(gws: &[&TestGateway], id: &str, n: usize, amount: &str) -> (Vec<u16>, u64) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = refund(
                gws[i % gws.len()],
                id,
                Some(&format!("par-{id}-{i}")),
                &json!({"amount": amount, "reason": "parallel"}),
            );
            tokio::spawn(async move {
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap();
                (status, body["amount_minor"].as_u64().unwrap_or(0))
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut sum = 0;
    for t in tasks {
        let (s, a) = t.await.unwrap();
        statuses.push(s);
        if s == 201 {
            sum += a;
        }
    }
    statuses.sort_unstable();
    (statuses, sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_on_sqlite_full_partial_idempotent_and_bad_input() {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .route(paid("adm", "/v1/echo/adm", &up, "0.01").with("capture = \"admission\""))
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = gw.topup(&wallet, "alice", "1").await;
    for _ in 0..4 {
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    // Not served: charged at admission, then voided.
    let res = gw
        .pay_get(
            "/v1/echo/adm?status=500",
            &wallet.receipt("m", "alice", "0.01"),
        )
        .await;
    assert_eq!(res.status(), 500);
    let ev = events(&gw).await;
    assert_eq!(ev.len(), 6, "{ev:?}");
    let ids: Vec<String> = ev
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let (charge, void) = (&ids[0], &ids[5]);
    assert_eq!(ev[5]["voids"], ev[4]["id"]);
    assert_eq!(available(&gw, "alice").await, 960_000);

    // Bad input: each its status and code, nothing moved.
    let ok_body = json!({"amount": "0.004", "reason": "late answer"});
    let code = |r: reqwest::RequestBuilder| async move { code_of(r.send().await.unwrap()).await };
    assert_eq!(
        code(refund(&gw, charge, None, &ok_body)).await,
        (400, "idempotency_key_required".into())
    );
    assert_eq!(
        code(refund(&gw, "1-1-0", Some("x"), &ok_body)).await,
        (404, "event_not_found".into())
    );
    for amount in [
        json!("0"),
        json!("-0.001"),
        json!("0.0000001"),
        json!("1e-3"),
        json!("abc"),
        json!(0.004),
    ] {
        assert_eq!(
            code(refund(
                &gw,
                charge,
                Some("bad"),
                &json!({"amount": amount, "reason": "r"})
            ))
            .await,
            (400, "refund_amount_invalid".into()),
            "{amount}"
        );
    }
    for body in [
        json!({"amount": "0.001"}),
        json!({"amount": "0.001", "reason": " "}),
        json!({"amount": "0.001", "reason": "r", "to": "x"}),
    ] {
        assert_eq!(
            code(refund(&gw, charge, Some("bad"), &body)).await,
            (400, "invalid_request".into()),
            "{body}"
        );
    }
    assert_eq!(
        code(refund(&gw, void, Some("v"), &ok_body)).await,
        (422, "event_not_refundable".into())
    );
    assert_eq!(
        code(refund(&gw, &ids[4], Some("v"), &ok_body)).await,
        (409, "charge_voided".into())
    );
    assert_eq!(available(&gw, "alice").await, 960_000);

    // A partial refund, the same request again, the key reused, more than remains.
    let first = refund(&gw, charge, Some("k1"), &ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        (
            &first["amount"],
            &first["remaining"],
            &first["event_id"],
            &first["refunded_to"]
        ),
        (
            &json!("0.004"),
            &json!("0.006"),
            &json!(charge),
            &json!("balance")
        )
    );
    assert_eq!(available(&gw, "alice").await, 964_000);
    let again = refund(&gw, charge, Some("k1"), &ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(
        code(refund(
            &gw,
            charge,
            Some("k1"),
            &json!({"amount": "0.005", "reason": "late answer"})
        ))
        .await,
        (422, "idempotency_key_mismatch".into())
    );
    let over = refund(
        &gw,
        charge,
        Some("k2"),
        &json!({"amount": "0.007", "reason": "r"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(over.status(), 409);
    let over: Value = over.json().await.unwrap();
    assert_eq!(
        (
            &over["code"],
            &over["refundable"],
            &over["refundable_minor"]
        ),
        (
            &json!("refund_exceeds_charge"),
            &json!("0.006"),
            &json!(6_000)
        )
    );
    // The rest (no amount: all that remains), then nothing remains.
    let rest: Value = refund(&gw, charge, Some("k3"), &json!({"reason": "rest"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&rest["amount"], &rest["remaining"]),
        (&json!("0.006"), &json!("0"))
    );
    assert_eq!(
        code(refund(&gw, charge, Some("k4"), &json!({"reason": "more"}))).await,
        (409, "refund_exceeds_charge".into())
    );
    assert_eq!(available(&gw, "alice").await, 970_000);

    // Concurrent refunds of one charge never exceed it: 0.003 x 3 of 0.01, then 0.001 left.
    let (statuses, sum) = at_once(&[&gw], &ids[1], 12, "0.003").await;
    assert_eq!(
        (statuses.iter().filter(|s| **s == 201).count(), sum),
        (3, 9_000)
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(available(&gw, "alice").await, 979_000);

    // The OpenAPI document describes both endpoints.
    let openapi = gw.admin_json("/admin/v1/openapi.json", ADMIN).await;
    let op = &openapi["paths"]["/admin/v1/events/{id}/refund"]["post"];
    for status in ["201", "400", "404", "409", "422"] {
        assert!(op["responses"][status].is_object(), "{status}");
    }
    assert!(openapi["paths"]["/admin/v1/refunds"]["get"].is_object());
    assert!(openapi["components"]["schemas"]["Refund"]["properties"]["remaining"].is_object());

    // The admin listing, the day's usage net of refunds, the agent's bill.
    let listed = gw.admin_json("/admin/v1/refunds?payer=alice", ADMIN).await;
    assert_eq!(listed["refunds"].as_array().unwrap().len(), 5, "{listed}");
    assert_eq!(listed["refunds"][4], first);
    let owed = gw.admin_json("/admin/v1/refunds?owed=true", ADMIN).await;
    assert_eq!(owed["refunds"], json!([]));
    let today = tollgate_middleware::store::utc_day(now_secs() * 1000);
    let usage = gw
        .admin_json(&format!("/admin/v1/usage?from={today}&to={today}"), ADMIN)
        .await;
    let echo = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "echo")
        .unwrap();
    assert_eq!(
        (&echo["requests"], &echo["amount"]["USD"]),
        (&json!(4), &json!("0.021")),
        "{usage}"
    );
    let payers = gw.admin_json("/admin/v1/payers", ADMIN).await;
    // 4 balance charges (the receipt's charge was voided), less the 0.019 refunded.
    assert_eq!(
        payers["payers"][0]["spent_minor"]["USD"], 21_000,
        "{payers}"
    );
    let (lines, _) = bill(&gw, &token, "").await;
    let refunds: Vec<&Value> = lines.iter().filter(|l| l["type"] == "refund").collect();
    assert_eq!(refunds.len(), 5);
    // 4 balance charges and the receipt's charge at admission, and its void.
    assert_eq!(lines.iter().filter(|l| l["type"] == "charge").count(), 5);
    assert_eq!(lines.iter().filter(|l| l["type"] == "void").count(), 1);
    assert!(refunds.iter().all(|r| r["payer"] == "alice"));
    // Paged: every line once, in order, across pages of 2.
    let mut seen = Vec::new();
    let mut before = String::new();
    loop {
        let (page, next) = bill(&gw, &token, &format!("?limit=2{before}")).await;
        seen.extend(page.iter().map(|l| l["id"].as_str().unwrap().to_owned()));
        match next {
            Some(n) => before = format!("&before={n}"),
            None => break,
        }
    }
    let all: Vec<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all);
    // The balance equation on the store's account: credited - captured = available + held.
    let b = gw.paywall.store().account("alice").await.unwrap().balances["USD"];
    assert_eq!(
        (b.credited, b.captured, b.available, b.held),
        (1_019_000, 40_000, 979_000, 0)
    );
}

/// Wait until `sql` (one count) answers `want` (at most 30 s).
async fn wait_count(db: &tokio_postgres::Client, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = db
            .query_one(sql, &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1);
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stream_len(redis: &RedisServer, pattern: &str) -> u64 {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
    keys.iter()
        .map(|k| redis::cmd("XLEN").arg(k).query::<u64>(&mut c).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_of_drained_charges_on_redis_from_two_replicas() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let start = || {
        gateway()
            .redis(&redis)
            .top(&format!("[ledger]\nurl = \"{}\"\n", pg.url()))
            .issuer(&wallet)
            .admin(ADMIN)
            .route(paid("echo", "/v1/echo", &up, "0.01"))
            .start()
    };
    let (a, b) = (start().await, start().await);
    let token = a.topup(&wallet, "bob", "1").await;
    for _ in 0..3 {
        assert_eq!(a.token_get("/v1/echo", &token).await.status(), 200);
    }
    let db = pg.client().await;
    wait_count(&db, "SELECT count(*) FROM ledger_events", 3).await;
    // Drained and trimmed: the charges are only in PostgreSQL now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_len(&redis, "tollgate:*:events") > 0 {
        assert!(Instant::now() < deadline, "events not trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: Vec<String> = db
        .query("SELECT id FROM ledger_events ORDER BY id_ms, id_seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let store = a.paywall.store().clone();
    assert_eq!(store.refund_target(&ids[0]).await.unwrap(), None);

    // 16 refunds of 0.003 of one 0.01 charge at once, over both replicas: exactly 3 apply.
    let (statuses, sum) = at_once(&[&a, &b], &ids[0], 16, "0.003").await;
    assert_eq!(
        (statuses.iter().filter(|s| **s == 201).count(), sum),
        (3, 9_000),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    let rest: Value = refund(&b, &ids[0], Some("rest"), &json!({"reason": "rest"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&rest["amount"], &rest["remaining"]),
        (&json!("0.001"), &json!("0"))
    );
    // The same key from the other replica: the same answer.
    let again = refund(&a, &ids[0], Some("rest"), &json!({"reason": "rest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), rest);
    assert_eq!(
        code_of(
            refund(&a, &ids[1], Some("rest"), &json!({"reason": "rest"}))
                .send()
                .await
                .unwrap()
        )
        .await,
        (422, "idempotency_key_mismatch".into())
    );
    let part: Value = refund(
        &a,
        &ids[1],
        Some("p"),
        &json!({"amount": "0.0025", "reason": "p"}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(part["remaining"], "0.0075");
    let account = store.account("bob").await.unwrap().balances["USD"];
    assert_eq!(account.available, 1_000_000 - 30_000 + 12_500);

    // The ledger of record: each refund once, with its balance credit; the balance equation
    // still matches the account; revenue net of refunds on the charge's day.
    wait_count(&db, "SELECT count(*) FROM ledger_refunds", 5).await;
    wait_count(
        &db,
        "SELECT count(*) FROM ledger_credits WHERE source LIKE 'refund:%'",
        5,
    )
    .await;
    assert_eq!(
        stream_len(&redis, "tollgate:*:refunds"),
        0,
        "drained and trimmed"
    );
    let row = db
        .query_one(
            "SELECT credited_minor::INT8, captured_minor::INT8, balance_minor::INT8
             FROM payer_balance_equation WHERE payer = 'bob' AND currency = 'USD'",
            &[],
        )
        .await
        .unwrap();
    let (credited, captured, balance): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((credited, captured), (account.credited, account.captured));
    assert_eq!(balance, account.available + account.held);
    let refunded: i64 = db
        .query_one(
            "SELECT sum(refunded_minor)::INT8 FROM refunds_daily WHERE payer = 'bob' AND route = 'echo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refunded, 12_500);
    let today = tollgate_middleware::store::utc_day(now_secs() * 1000);
    let usage = b
        .admin_json(&format!("/admin/v1/usage?from={today}&to={today}"), ADMIN)
        .await;
    assert_eq!(usage["rows"][0]["amount"]["USD"], "0.0175", "{usage}");
    // The payer listing and the summary too (read from the ledger database).
    let payers = b.admin_json("/admin/v1/payers", ADMIN).await;
    assert_eq!(
        payers["payers"][0]["spent_minor"]["USD"], 17_500,
        "{payers}"
    );
    let summary = b.admin_json("/admin/v1/summary", ADMIN).await;
    assert!(summary.to_string().contains("\"0.0175\""), "{summary}");
    let listed = b
        .admin_json("/admin/v1/refunds?payer=bob&limit=10", ADMIN)
        .await;
    assert_eq!(listed["refunds"].as_array().unwrap().len(), 5, "{listed}");
    assert_eq!(listed["refunds"][0], part);
    // The agent's bill, from the ledger database: 3 charges and 5 refunds.
    let (lines, _) = bill(&a, &token, "").await;
    assert_eq!(lines.iter().filter(|l| l["type"] == "charge").count(), 3);
    assert_eq!(lines.iter().filter(|l| l["type"] == "refund").count(), 5);
    a.shutdown().await;
    b.shutdown().await;
}

/// An x402 payment settled on chain (`before` mode, the stand-in facilitator playing the
/// chain) is refunded as owed to the payer's address: no balance credit, listed as owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_x402_payment_is_refunded_as_owed_to_the_payer_address() {
    use tollgate_middleware::x402::signer::LocalSigner;
    let redis = RedisServer::start();
    let f = tollgate_e2e::facilitator::facilitator(&["eip155:84532"]).await;
    let up = upstream().await;
    let gw = gateway()
        .top(&format!(
            "[x402]\nfacilitator_url = \"{}\"\nfacilitator_timeout_ms = 700",
            f.url()
        ))
        .redis(&redis)
        .admin(ADMIN)
        .route(paid("data", "/v1/echo", &up, "0.01").with(
            "x402_settlement = \"before\"\n[[routes.x402]]\nnetwork = \"eip155:84532\"\n\
             asset = \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\"\nname = \"USDC\"\nversion = \"2\"\n\
             pay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"\namount = \"10000\"\nmax_timeout_secs = 120",
        ))
        .start()
        .await;
    let res = gw.http.get(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(res.status(), 402);
    let required = b64_json(res.headers()["payment-required"].to_str().unwrap());
    let offer = required["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["scheme"] == "exact")
        .unwrap()
        .clone();
    let payer = LocalSigner::random();
    let payload = payer
        .pay(&offer, u64::try_from(now_secs()).unwrap())
        .unwrap();
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header(
            "payment-signature",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                payload.to_string(),
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    let event_id = pr["eventId"].as_str().unwrap().to_owned();
    let addr = format!("{:#x}", payer.address());
    assert_eq!(f.settled(), 1);

    let owed = refund(
        &gw,
        &event_id,
        Some("x1"),
        &json!({"amount": "0.004", "reason": "bad data"}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(owed.status(), 201);
    let owed: Value = owed.json().await.unwrap();
    assert_eq!(
        (&owed["refunded_to"], &owed["owed_to"], &owed["credit_id"]),
        (&json!("owed"), &json!(addr), &Value::Null)
    );
    assert_eq!(
        (
            &owed["amount_minor"],
            &owed["remaining_minor"],
            &owed["currency"]
        ),
        (&json!(4_000), &json!(6_000), &json!("USDC"))
    );
    // No balance moved, no second chain call.
    let account = gw.paywall.store().account(&addr).await.unwrap();
    assert!(account
        .balances
        .values()
        .all(|b| b.available == 0 && b.credited == 0));
    assert_eq!(f.settled(), 1);
    let listed = gw.admin_json("/admin/v1/refunds?owed=true", ADMIN).await;
    assert_eq!(listed["refunds"], json!([owed]));
    let credits = gw.admin_json("/admin/v1/refunds?owed=false", ADMIN).await;
    assert_eq!(credits["refunds"], json!([]));
}

//! Operating a gateway with prepaid balances, end to end against a private redis-server: the
//! admin API, metrics, config reload, the price catalog, rate limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tollgate_e2e::*;

#[path = "balances/fixture.rs"]
mod fixture;
use fixture::*;

#[tokio::test]
async fn admin_api() {
    let f = fixture().await;
    let http = &f.gw.http;
    // Authentication.
    assert_eq!(
        code_of(
            http.get(f.gw.admin_url("/admin/v1/payers/x"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (401, "unauthorized".into())
    );
    let wrong = http
        .get(f.gw.admin_url("/admin/v1/payers/x"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(wrong).await, (401, "unauthorized".into()));
    let query = http
        .get(f.gw.admin_url(&format!("/admin/v1/payers/x?token={ADMIN}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(query).await, (401, "unauthorized".into()));
    let openapi: Value = f.gw.admin_json("/admin/v1/openapi.json", ADMIN).await;
    assert_eq!(openapi["openapi"], "3.1.0");

    // Credits are idempotent; debits cannot go below zero.
    let credit = |key: &'static str, amount: &'static str| {
        http.post(f.gw.admin_url("/admin/v1/payers/mo/credits"))
            .bearer_auth(ADMIN)
            .header("idempotency-key", key)
            .json(&json!({"amount": amount, "currency": "USD", "reason": "goodwill"}))
            .send()
    };
    let first = credit("k1", "2.50").await.unwrap();
    assert_eq!(first.status(), 201);
    let again = credit("k1", "2.50").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["balance"], "2.5");
    assert_eq!(
        credit("k2", "-1")
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["balance"],
        "1.5"
    );
    assert_eq!(
        code_of(credit("k3", "-9").await.unwrap()).await,
        (402, "balance_insufficient".into())
    );
    let no_key = http
        .post(f.gw.admin_url("/admin/v1/payers/mo/credits"))
        .bearer_auth(ADMIN)
        .json(&json!({"amount": "1", "currency": "USD", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(no_key).await, (400, "invalid_request".into()));
    // An operator's mistakes are 400 problems, not payment refusals or plain text.
    let unknown_currency = http
        .post(f.gw.admin_url("/admin/v1/payers/mo/credits"))
        .bearer_auth(ADMIN)
        .header("idempotency-key", "k4")
        .json(&json!({"amount": "1", "currency": "XXX", "reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(unknown_currency).await,
        (400, "invalid_request".into())
    );
    for bad in ["/admin/v1/events?limit=abc", "/admin/v1/events?limit=-1"] {
        let res = http
            .get(f.gw.admin_url(bad))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(res).await, (400, "invalid_request".into()), "{bad}");
    }

    // Spend with a token, then read the payer, usage and events.
    let token = f.gw.paywall.issue_token("mo");
    for units in [3, 4, 5] {
        assert_eq!(
            f.gw.token_get(&format!("/v1/echo/units?units={units}"), &token)
                .await
                .status(),
            200
        );
    }
    let payer: Value = f.gw.admin_json("/admin/v1/payers/mo", ADMIN).await;
    assert_eq!(payer["balances"]["USD"]["available"], "1.488");
    assert_eq!(payer["balances"]["USD"]["captured"], "0.012");
    assert_eq!(payer["usage_30d"][0]["requests"], 3);
    assert_eq!(payer["usage_30d"][0]["units"]["unit"], 12);
    let usage: Value = f.gw.admin_json("/admin/v1/usage?route=units", ADMIN).await;
    assert_eq!(usage["rows"][0]["amount"]["USD"], "0.012");
    // The export resumes from the last id it returned.
    let page = |after: String| {
        let url =
            f.gw.admin_url(&format!("/admin/v1/events?limit=2&after={after}"));
        async move {
            http.get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let text = page(after.clone()).await;
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.is_empty() {
            break;
        }
        after = lines.last().unwrap()["id"].as_str().unwrap().to_owned();
        all.extend(lines);
    }
    assert_eq!(
        all.iter()
            .map(|e| e["amount"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["0.003", "0.004", "0.005"]
    );

    // Block: the token stops working at once.
    http.post(f.gw.admin_url("/admin/v1/payers/mo/block"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code_of(f.gw.token_get("/v1/echo/units?units=1", &token).await).await,
        (403, "payer_blocked".into())
    );
    http.delete(f.gw.admin_url("/admin/v1/payers/mo/block"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        f.gw.token_get("/v1/echo/units?units=1", &token)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn metrics_count_requests_refusals_revenue_and_usage() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "mia", "1").await;
    assert_eq!(
        f.gw.token_get("/v1/echo/units?units=7", &token)
            .await
            .status(),
        200
    );
    assert_eq!(
        f.gw.http
            .get(f.gw.url("/v1/echo/units"))
            .send()
            .await
            .unwrap()
            .status(),
        402
    );
    let text =
        f.gw.http
            .get(f.gw.admin_url("/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for needle in [
        "tollgate_requests_total{route=\"units\",status=\"200\"}",
        "tollgate_requests_total{route=\"units\",status=\"402\"}",
        "tollgate_requests_total{route=\"agent\",status=\"200\"}",
        "tollgate_payment_required_total{code=\"payment_required\",route=\"units\"}",
        "tollgate_credentials_total{kind=\"token\",outcome=\"accepted\"}",
        "tollgate_credentials_total{kind=\"none\",outcome=\"payment_required\"}",
        "tollgate_revenue_atomic_total{currency=\"USD\",route=\"units\"}",
        "tollgate_usage_units_total{route=\"units\",unit=\"unit\"}",
        "tollgate_topups_atomic_total{currency=\"USD\"}",
        "tollgate_store_duration_seconds_bucket{op=\"capture_hold\"",
        "tollgate_upstream_duration_seconds_bucket{route=\"units\"",
        "tollgate_holds_in_flight",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    // Metrics are behind the admin token.
    assert_eq!(
        f.gw.http
            .get(f.gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn config_reload_applies_new_prices_without_dropping_requests() {
    let f = fixture().await;
    let offer_amount = || async {
        let res = f.gw.http.get(f.gw.url("/v1/echo")).send().await.unwrap();
        b64_json(res.headers()["payment-required"].to_str().unwrap())["accepts"][0]["amount"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(offer_amount().await, "10000");
    // A paid request in flight across the reload is served and charged the old price.
    let token = f.gw.topup(&f.wallet, "rita", "1").await;
    let slow =
        f.gw.with_token(Method::GET, "/v1/echo?delay_ms=600", &token)
            .send();
    let in_flight = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let original = std::fs::read_to_string(&f.gw.config_path).unwrap();
    let cheaper = original.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { amount = \"0.02\", currency = \"USD\" }",
    );
    assert_ne!(cheaper, original);
    std::fs::write(&f.gw.config_path, &cheaper).unwrap();
    let res =
        f.gw.http
            .post(f.gw.admin_url("/admin/v1/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["reloaded"], true);
    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["amount"], "0.01");
    assert_eq!(offer_amount().await, "20000");
    // The store (and the balance in it) survived the reload.
    assert_eq!(avail(&f.gw.balance(&token).await), "0.99");
    // An invalid file is refused, naming the field; the current configuration keeps serving.
    std::fs::write(
        &f.gw.config_path,
        cheaper.replace("\"0.02\"", "\"0.0000001\""),
    )
    .unwrap();
    let res =
        f.gw.http
            .post(f.gw.admin_url("/admin/v1/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("price.amount"),
        "{body}"
    );
    assert_eq!(offer_amount().await, "20000");
}

#[tokio::test]
async fn the_price_catalog_lists_routes_prices_and_payment_methods() {
    let f = fixture().await;
    let res =
        f.gw.http
            .get(f.gw.url("/.well-known/tollgate"))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    let c: Value = res.json().await.unwrap();
    assert_eq!(c["merchant"], "m");
    assert_eq!(c["currencies"]["USD"]["decimals"], 6);
    assert_eq!(c["currencies"]["USD"]["topupSuggested"], "5");
    assert_eq!(c["issuers"][0], "wallet");
    assert_eq!(c["agentEndpoints"]["topup"], "/tollgate/v1/topup");
    let route = |id: &str| {
        c["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        route("echo")["price"],
        json!({"kind": "fixed", "amount": "0.01", "currency": "USD", "decimals": 6})
    );
    let chat = route("chat");
    assert_eq!(chat["price"]["kind"], "metered");
    assert_eq!(chat["price"]["reserve"], "0.01");
    assert_eq!(
        chat["price"]["units"][1],
        json!({"unit": "completion_token", "price": "0.000003"})
    );
    assert!(c["paymentMethods"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["scheme"] == "tollgate-receipt"));
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_and_charge_nothing() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(
            paid("echo", "/v1/echo", &up, "0.01")
                .with("rate_limit = { per_second = 1, burst = 3 }"),
        )
        .start()
        .await;
    let token = gw.topup(&wallet, "quick", "1").await;
    for _ in 0..3 {
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    let res = gw.token_get("/v1/echo", &token).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(code_of(res).await, (429, "rate_limited".into()));
    // Receipts count against the same payer's limit, and nothing was charged for the refusals.
    let r = wallet.receipt("m", "quick", "0.01");
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &r).await).await,
        (429, "rate_limited".into())
    );
    assert_eq!(avail(&gw.balance(&token).await), "0.97");
    // Another payer has its own budget.
    let other = gw.topup(&wallet, "other", "1").await;
    assert_eq!(gw.token_get("/v1/echo", &other).await.status(), 200);
    // The limit refills at the sustained rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
}

//! Plans (usage-based subscriptions): a `subscribe` receipt buys a period; calls count against
//! it in the hold script; quota exhausted exactly at N (also under concurrency), overage
//! charged exactly from the balance, passes, renewal, release on upstream failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use tollgate_e2e::{
    code_of, gateway, paid, payment_response, upstream, RedisServer, TestGateway, TestIssuer,
};
use tollgate_e2e::{count_ok, outcomes};

const PLANS: &str = r#"
[[plans]]
id = "starter"
price = { amount = "1.00", currency = "USD" }
period = "1h"
groups = ["compute"]
calls = 3

[[plans]]
id = "flex"
price = { amount = "2", currency = "USD" }
period = "30d"
groups = ["flex"]
calls = 2
overage_price = "0.05"

[[plans]]
id = "hour-pass"
price = { amount = "0.50", currency = "USD" }
period = "1h"
groups = ["pass"]
"#;

async fn start(redis: &RedisServer, wallet: &TestIssuer) -> TestGateway {
    start_on(Some(redis), wallet).await
}

/// On a redis-server, or (`None`) on the embedded memory store.
async fn start_on(redis: Option<&RedisServer>, wallet: &TestIssuer) -> TestGateway {
    let up = upstream().await;
    let b = gateway();
    let b = match redis {
        Some(r) => b.redis(r),
        None => b,
    };
    b.issuer(wallet)
        .admin("admin-token-0123456789")
        .route(paid("compute", "/v1/echo/c", &up, "0.10"))
        .route(paid("flex", "/v1/echo/flex", &up, "0.10").with("group = \"flex\""))
        .route(paid("pass", "/v1/echo/pass", &up, "0.10").with("group = \"pass\""))
        .top(PLANS)
        .start()
        .await
}

fn subscribe_receipt(wallet: &TestIssuer, payer: &str, plan: &str, amount: &str) -> String {
    let mut c = wallet.claims("m", payer, amount);
    c["kind"] = "subscribe".into();
    c["plan"] = plan.into();
    wallet.sign(&c)
}

async fn subscribe(gw: &TestGateway, receipt: &str) -> Value {
    let res = gw
        .http
        .post(gw.url("/tollgate/v1/subscribe"))
        .header("authorization", format!("Payment {receipt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn included_calls_then_deny_with_a_renewal_offer() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(&redis, &wallet).await;
    // The catalog lists the plans.
    let cat: Value = gw.get_json("/.well-known/tollgate").await;
    assert_eq!(cat["plans"][0]["id"], "starter");
    assert_eq!(cat["plans"][0]["includedCalls"], 3);
    assert_eq!(cat["plans"][2]["pass"], true);

    let receipt = subscribe_receipt(&wallet, "agent", "starter", "1.00");
    let bought = subscribe(&gw, &receipt).await;
    assert_eq!(bought["duplicate"], false);
    let token = bought["access_token"].as_str().unwrap().to_owned();
    // Retrying the purchase buys nothing twice.
    assert_eq!(subscribe(&gw, &receipt).await["duplicate"], true);
    // An upstream failure gives the call back.
    let res = gw.token_get("/v1/echo/c?status=500", &token).await;
    assert_eq!(res.status(), 500);
    for _ in 0..3 {
        let res = gw.token_get("/v1/echo/c", &token).await;
        assert_eq!(res.status(), 200);
        let pr = payment_response(&res);
        assert_eq!(pr["amount"], "0", "a covered call costs nothing more");
    }
    let res = gw.token_get("/v1/echo/c", &token).await;
    assert_eq!(res.status(), 402);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "plan_exhausted");
    assert_eq!(body["plan"]["id"], "starter");
    let offers = body["accepts"].as_array().unwrap();
    assert!(
        offers
            .iter()
            .any(|o| o["extra"]["kind"] == "subscribe" && o["extra"]["plan"] == "starter"),
        "the 402 offers a renewal: {offers:?}"
    );
    // Renewing while the period runs extends it and adds the calls.
    let renewed = subscribe(&gw, &subscribe_receipt(&wallet, "agent", "starter", "1.00")).await;
    assert!(renewed["period_end"].as_i64().unwrap() > bought["period_end"].as_i64().unwrap());
    assert_eq!(gw.token_get("/v1/echo/c", &token).await.status(), 200);
    // Ledger: two purchases of 1.00 and four covered calls of 0; the admin view agrees.
    let events = gw.paywall.store().usage_events().await.unwrap();
    let purchases: Vec<_> = events
        .iter()
        .filter(|e| e.route == "plan:starter")
        .collect();
    assert_eq!(purchases.len(), 2);
    assert!(purchases.iter().all(|e| e.amount_minor == 1_000_000));
    let calls: Vec<_> = events.iter().filter(|e| e.route == "compute").collect();
    assert_eq!(calls.len(), 4);
    assert!(calls
        .iter()
        .all(|e| e.amount_minor == 0 && e.credential.starts_with("plan:starter:")));
    let view: Value = gw
        .admin_json("/admin/v1/payers/agent", "admin-token-0123456789")
        .await;
    assert_eq!(view["plans"][0]["plan"], "starter");
    assert_eq!(
        (
            view["plans"][0]["included"].as_u64(),
            view["plans"][0]["used"].as_u64()
        ),
        (Some(6), Some(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_is_exact_under_concurrency() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(&redis, &wallet).await;
    let token = subscribe(&gw, &subscribe_receipt(&wallet, "busy", "starter", "1.00")).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let requests = (0..24)
        .map(|_| gw.http.get(gw.url("/v1/echo/c")).bearer_auth(&token))
        .collect();
    let ok = count_ok(&outcomes(requests).await, "plan_exhausted");
    assert_eq!(ok, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overage_is_charged_exactly_and_passes_are_unlimited() {
    let redis = RedisServer::start();
    overage_and_passes(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_overage_and_passes() {
    overage_and_passes(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_quota_is_exact_under_concurrency() {
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start_on(None, &wallet).await;
    let token = subscribe(&gw, &subscribe_receipt(&wallet, "busy", "starter", "1.00")).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ok = 0;
    for _ in 0..5 {
        if gw.token_get("/v1/echo/c", &token).await.status() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
}

async fn overage_and_passes(redis: Option<&RedisServer>) {
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start_on(redis, &wallet).await;
    gw.topup(&wallet, "flexer", "1.00").await;
    let token = subscribe(&gw, &subscribe_receipt(&wallet, "flexer", "flex", "2")).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut charged = Vec::new();
    let mut balances = Vec::new();
    for _ in 0..5 {
        let res = gw.token_get("/v1/echo/flex", &token).await;
        assert_eq!(res.status(), 200);
        let pr = payment_response(&res);
        charged.push(pr["amount"].as_str().unwrap().to_owned());
        balances.push(pr["balance"].as_str().unwrap().to_owned());
    }
    assert_eq!(charged, ["0", "0", "0.05", "0.05", "0.05"]);
    // The balance in PAYMENT-RESPONSE is the payer's real balance on every store, a
    // plan-covered call included (Redis answered 0 for those).
    assert_eq!(balances, ["1", "1", "0.95", "0.9", "0.85"]);
    let bal = gw.settled(&token).await;
    assert_eq!(bal["balances"]["USD"]["available"], "0.85");
    assert_eq!(bal["balances"]["USD"]["captured"], "0.15");
    // Without a period, the route's own price applies (from the balance).
    let plain = gw.topup(&wallet, "nobody", "1").await;
    let res = gw.token_get("/v1/echo/flex", &plain).await;
    assert_eq!(payment_response(&res)["amount"], "0.1");
    // A pass: unlimited calls for the period.
    let pass = subscribe(
        &gw,
        &subscribe_receipt(&wallet, "passer", "hour-pass", "0.50"),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..20 {
        assert_eq!(gw.token_get("/v1/echo/pass", &pass).await.status(), 200);
    }
    // Refusals: unknown plan, too little paid, a subscribe receipt offered as a payment.
    let res = gw
        .http
        .post(gw.url("/tollgate/v1/subscribe"))
        .header(
            "authorization",
            format!("Payment {}", subscribe_receipt(&wallet, "x", "gold", "9")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (402, "plan_unknown".to_owned()));
    let res = gw
        .http
        .post(gw.url("/tollgate/v1/subscribe"))
        .header(
            "authorization",
            format!(
                "Payment {}",
                subscribe_receipt(&wallet, "x", "flex", "1.99")
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (402, "amount_insufficient".to_owned()));
    let res = gw
        .pay_get(
            "/v1/echo/c",
            &subscribe_receipt(&wallet, "x", "starter", "1"),
        )
        .await;
    assert_eq!(
        code_of(res).await,
        (402, "receipt_kind_unsupported".to_owned())
    );
    let _ = json!({});
}

/// A units plan (tokens) on a metered route: covered calls count their tokens at capture; past
/// the included tokens, deny -- or, with `overage_price = "route"`, the route's own meters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_plans_count_tokens() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let meter = |id: &str, path: &str| {
        tollgate_e2e::metered(
            id,
            path,
            &up,
            "0.05",
            &[("token", "header:x-units", "0.001")],
        )
        .with(&format!("group = \"{id}\""))
    };
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .admin("admin-token-0123456789")
        .route(meter("tok", "/v1/echo/tok"))
        .route(meter("tok2", "/v1/echo/tok2"))
        .top(
            r#"
[[plans]]
id = "tokens"
price = { amount = "1", currency = "USD" }
period = "1h"
groups = ["tok"]
units = { unit = "token", included = 1000 }

[[plans]]
id = "tokens-then-meter"
price = { amount = "1", currency = "USD" }
period = "1h"
groups = ["tok2"]
units = { unit = "token", included = 1000 }
overage_price = "route"
"#,
        )
        .start()
        .await;
    let token = subscribe(&gw, &subscribe_receipt(&wallet, "llm", "tokens", "1")).await
        ["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let res = gw.token_get("/v1/echo/tok?units=600", &token).await;
        assert_eq!(res.status(), 200);
        assert_eq!(payment_response(&res)["amount"], "0");
    }
    // 1,200 of 1,000 used (the call that crossed is served in full): the next is refused.
    let res = gw.token_get("/v1/echo/tok?units=1", &token).await;
    assert_eq!(code_of(res).await, (402, "plan_exhausted".to_owned()));
    let view: Value = gw
        .admin_json("/admin/v1/payers/llm", "admin-token-0123456789")
        .await;
    assert_eq!(view["plans"][0]["used"], 1200);
    assert_eq!(view["plans"][0]["unit"], "token");

    // Overage at the route's meters, from the balance.
    gw.topup(&wallet, "llm2", "1").await;
    let token = subscribe(
        &gw,
        &subscribe_receipt(&wallet, "llm2", "tokens-then-meter", "1"),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = gw.token_get("/v1/echo/tok2?units=1000", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0");
    let res = gw.token_get("/v1/echo/tok2?units=100", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.1");
    let bal = gw.settled(&token).await;
    assert_eq!(bal["balances"]["USD"]["available"], "0.9");
}

//! Prepaid balances, top-ups, access tokens, metered routes, the ledger and the admin API, end
//! to end against a private redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tollgate_e2e::*;

const ADMIN: &str = "admin-token-0123456789";

struct Fixture {
    /// Keeps the store's server(s) alive.
    _store: Box<dyn std::any::Any + Send>,
    wallet: TestIssuer,
    gw: TestGateway,
}

/// Routes: fixed `/v1/echo` at 0.01; metered chat (JSON and SSE token prices), header units,
/// response bytes, duration; all on one upstream.
async fn fixture() -> Fixture {
    let redis = RedisServer::start();
    let builder = gateway().redis(&redis);
    fixture_with(Box::new(redis), builder).await
}

async fn fixture_with(store: Box<dyn std::any::Any + Send>, builder: GatewayBuilder) -> Fixture {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let tokens = [
        ("prompt_token", "json:/usage/prompt_tokens", "0.000001"),
        (
            "completion_token",
            "json:/usage/completion_tokens",
            "0.000003",
        ),
    ];
    let gw = builder
        .issuer(&wallet)
        .admin(ADMIN)
        .route(metered(
            "chat",
            "/v1/chat/completions",
            &up,
            "0.01",
            &tokens,
        ))
        .route(metered(
            "units",
            "/v1/echo/units",
            &up,
            "0.05",
            &[("unit", "header:x-units", "0.001")],
        ))
        .route(metered(
            "bytes",
            "/v1/echo/bytes",
            &up,
            "0.05",
            &[("byte", "response_bytes", "0.000001")],
        ))
        .route(metered(
            "upload",
            "/v1/echo/upload",
            &up,
            "0.05",
            &[("byte", "request_bytes", "0.000001")],
        ))
        .route(metered(
            "time",
            "/v1/echo/time",
            &up,
            "0.05",
            &[("ms", "duration_ms", "0.000001")],
        ))
        .route(
            metered(
                "lenient",
                "/v1/echo/lenient",
                &up,
                "0.05",
                &[("unit", "header:x-units", "0.001")],
            )
            .with_price_option("on_missing = \"zero\""),
        )
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    Fixture {
        _store: store,
        wallet,
        gw,
    }
}

fn chat_body(stream: bool, words: usize, max_tokens: u64) -> Value {
    json!({"stream": stream, "max_tokens": max_tokens, "messages": [{"role": "user", "content": vec!["w"; words].join(" ")}]})
}

fn avail(b: &Value) -> String {
    b["balances"]["USD"]["available"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

#[tokio::test]
async fn topup_gives_a_token_and_a_retried_topup_credits_once() {
    let f = fixture().await;
    let mut c = f.wallet.claims("m", "alice", "5");
    c["kind"] = "topup".into();
    let receipt = f.wallet.sign(&c);
    let topup = || {
        f.gw.http
            .post(f.gw.url("/tollgate/v1/topup"))
            .header("authorization", format!("Payment {receipt}"))
            .send()
    };
    let first: Value = topup().await.unwrap().json().await.unwrap();
    assert_eq!(
        (first["balance"].as_str(), first["duplicate"].as_bool()),
        (Some("5"), Some(false))
    );
    assert_eq!(first["token_type"], "Bearer");
    let again: Value = topup().await.unwrap().json().await.unwrap();
    assert_eq!(
        (again["balance"].as_str(), again["duplicate"].as_bool()),
        (Some("5"), Some(true))
    );
    assert_eq!(again["credit_id"], first["credit_id"]);
    // A top-up receipt is not a payment, and a payment receipt is not a top-up.
    assert_eq!(
        code_of(f.gw.pay_get("/v1/echo", &receipt).await).await,
        (402, "receipt_kind_unsupported".into())
    );
    let payment = f.wallet.receipt("m", "alice", "5");
    let res =
        f.gw.http
            .post(f.gw.url("/tollgate/v1/topup"))
            .header("authorization", format!("Payment {payment}"))
            .send()
            .await
            .unwrap();
    assert_eq!(code_of(res).await, (402, "receipt_kind_unsupported".into()));

    // The token draws down the balance on a fixed-price route.
    let token = first["access_token"].as_str().unwrap();
    let res = f.gw.token_get("/v1/echo", token).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(
        (pr["amount"].as_str(), pr["balance"].as_str()),
        (Some("0.01"), Some("4.99"))
    );
    // The upstream never sees the token.
    let seen: Value = res.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none());
    assert_eq!(seen["headers"]["tollgate-payer"][0], "alice");
    let b = f.gw.balance(token).await;
    assert_eq!(avail(&b), "4.99", "{b}");
    assert_eq!(b["balances"]["USD"]["credited"], "5");
    assert_eq!(b["balances"]["USD"]["captured"], "0.01");
}

#[tokio::test]
async fn low_balance_gets_a_402_with_a_topup_offer() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "bob", "0.005").await;
    let res = f.gw.token_get("/v1/echo", &token).await;
    assert_eq!(res.status(), 402);
    let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
    assert_eq!(req["error"], "balance_insufficient");
    let topup = req["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["extra"]["kind"] == "topup")
        .unwrap();
    assert_eq!(topup["amount"], "5000000");
    assert!(topup["extra"]["topupUrl"]
        .as_str()
        .unwrap()
        .ends_with("/tollgate/v1/topup"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["balance"].as_str()),
        (Some("balance_insufficient"), Some("0.005"))
    );
    assert_eq!(avail(&f.gw.balance(&token).await), "0.005");
}

#[tokio::test]
async fn bad_tokens_are_401_and_tokens_renew() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "carol", "1").await;
    let forged = format!("{}x", &token[..token.len() - 1]);
    for bad in [forged.as_str(), "tg1.bogus.token"] {
        let res = f.gw.token_get("/v1/echo", bad).await;
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(code_of(res).await, (401, "token_invalid".into()));
    }
    // A token from another gateway secret is refused too.
    let other = gateway()
        .secret(b"another-secret-another-secret-another!")
        .route(free("f", "/", &upstream().await))
        .start()
        .await;
    let foreign = other.paywall.issue_token("carol");
    assert_eq!(
        code_of(f.gw.token_get("/v1/echo", &foreign).await).await,
        (401, "token_invalid".into())
    );
    let renewed: Value =
        f.gw.with_token(Method::POST, "/tollgate/v1/token", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let new_token = renewed["access_token"].as_str().unwrap();
    assert_eq!(avail(&f.gw.balance(new_token).await), "1");
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .top("[agent]\ntoken_ttl_secs = 1")
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = gw.topup(&wallet, "dora", "1").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        code_of(gw.token_get("/v1/echo", &token).await).await,
        (401, "token_expired".into())
    );
}

#[tokio::test]
async fn json_token_usage_is_charged_exactly() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "erin", "1").await;
    let res =
        f.gw.with_token(Method::POST, "/v1/chat/completions", &token)
            .json(&chat_body(false, 12, 100))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    // 12 prompt x 0.000001 + 100 completion x 0.000003 = 0.000312
    let pr = payment_response(&res);
    assert_eq!(
        (
            pr["amount"].as_str(),
            pr["amountAtomic"].as_str(),
            pr["balance"].as_str()
        ),
        (Some("0.000312"), Some("312"), Some("0.999688"))
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["usage"]["total_tokens"], 112);
    let events = f.gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].units["prompt_token"], 12);
    assert_eq!(events[0].units["completion_token"], 100);
    assert_eq!(events[0].unit_prices["completion_token"], "0.000003");
    assert_eq!(events[0].amount_minor, 312);
}

#[tokio::test]
async fn streamed_token_usage_is_read_from_the_final_event() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let sse = [
        ("prompt_token", "sse:/usage/prompt_tokens", "0.000001"),
        (
            "completion_token",
            "sse:/usage/completion_tokens",
            "0.000003",
        ),
    ];
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(metered("chat", "/v1/chat/completions", &up, "0.01", &sse))
        .start()
        .await;
    let token = gw.topup(&wallet, "finn", "1").await;
    let res = gw
        .with_token(Method::POST, "/v1/chat/completions", &token)
        .json(&chat_body(true, 5, 40))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let pr = payment_response(&res);
    assert_eq!(
        (pr["settlement"].as_str(), pr["held"].as_str()),
        (Some("deferred"), Some("0.01"))
    );
    let text = res.text().await.unwrap();
    assert_eq!(
        text.matches("data: ").count(),
        42,
        "40 tokens, the usage event, [DONE]"
    );
    // 5 x 0.000001 + 40 x 0.000003 = 0.000125
    let b = gw.settled(&token).await;
    assert_eq!(avail(&b), "0.999875");
    let e = &gw.paywall.store().usage_events().await.unwrap()[0];
    assert_eq!(
        (
            e.units["prompt_token"],
            e.units["completion_token"],
            e.amount_minor
        ),
        (5, 40, 125)
    );
}

#[tokio::test]
async fn header_bytes_and_duration_sources() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "gus", "1").await;
    let res = f.gw.token_get("/v1/echo/units?units=7", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.007");

    let res = f.gw.token_get("/v1/echo/bytes?bytes=5000", &token).await;
    let pending = payment_response(&res);
    assert_eq!(pending["settlement"], "deferred");
    let n = res.bytes().await.unwrap().len() as u64;
    f.gw.settled(&token).await;
    let e =
        f.gw.paywall
            .store()
            .usage_events()
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.route == "bytes")
            .unwrap();
    assert_eq!(e.units["byte"], n);
    assert_eq!(e.amount_minor, n);

    let upload = vec![b'u'; 3000];
    let res =
        f.gw.with_token(Method::POST, "/v1/echo/upload", &token)
            .body(upload)
            .send()
            .await
            .unwrap();
    assert_eq!(payment_response(&res)["amountAtomic"], "3000");

    let res = f.gw.token_get("/v1/echo/time?delay_ms=300", &token).await;
    res.bytes().await.unwrap();
    f.gw.settled(&token).await;
    let e =
        f.gw.paywall
            .store()
            .usage_events()
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.route == "time")
            .unwrap();
    assert!(
        e.units["ms"] >= 300 && e.units["ms"] < 30_000,
        "{:?}",
        e.units
    );
    assert_eq!(e.amount_minor, e.units["ms"]);
}

#[tokio::test]
async fn missing_usage_follows_on_missing() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "hana", "1").await;
    // No x-units header: the reservation (0.05) is charged by default...
    let res = f.gw.token_get("/v1/echo/units", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.05");
    // ... and nothing where on_missing = "zero".
    let res = f.gw.token_get("/v1/echo/lenient", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0");
    assert_eq!(avail(&f.gw.balance(&token).await), "0.95");
}

#[tokio::test]
async fn usage_beyond_the_balance_is_recorded_uncharged_never_negative() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "ivan", "0.1").await;
    // 60 units x 0.001 = 0.06: above the 0.05 hold, covered by the balance.
    let res = f.gw.token_get("/v1/echo/units?units=60", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.06");
    // 0.04 left; 0.05 cannot be held.
    let res = f.gw.token_get("/v1/echo/units?units=1", &token).await;
    assert_eq!(code_of(res).await, (402, "balance_insufficient".into()));
    f.gw.topup(&f.wallet, "ivan", "0.01").await;
    // 0.05 held out of 0.05; usage 0.9 -> 0.05 charged, 0.85 recorded as uncharged.
    let res = f.gw.token_get("/v1/echo/units?units=900", &token).await;
    let pr = payment_response(&res);
    assert_eq!(
        (pr["amount"].as_str(), pr["balance"].as_str()),
        (Some("0.05"), Some("0"))
    );
    let e =
        f.gw.paywall
            .store()
            .usage_events()
            .await
            .unwrap()
            .into_iter()
            .last()
            .unwrap();
    assert_eq!((e.amount_minor, e.uncharged_minor), (50_000, 850_000));
}

#[tokio::test]
async fn failed_upstream_releases_the_hold() {
    let f = fixture().await;
    let token = f.gw.topup(&f.wallet, "jo", "1").await;
    assert_eq!(
        f.gw.token_get("/v1/echo/units?units=5&status=500", &token)
            .await
            .status(),
        500
    );
    assert_eq!(
        f.gw.token_get("/v1/echo?status=503", &token).await.status(),
        503
    );
    let b = f.gw.balance(&token).await;
    assert_eq!((avail(&b).as_str(), b["holds"].as_u64()), ("1", Some(0)));
    assert!(f
        .gw
        .paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn client_leaving_mid_stream_pays_for_what_was_measured() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(metered(
            "stream",
            "/v1/stream",
            &up,
            "0.05",
            &[("byte", "response_bytes", "0.000001")],
        ))
        .start()
        .await;
    let token = gw.topup(&wallet, "kim", "1").await;
    let res = gw
        .token_get("/v1/stream?chunks=100&delay_ms=50", &token)
        .await;
    let mut body = res.bytes_stream();
    use futures_util::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    drop(body);
    let b = gw.settled(&token).await;
    let e = gw
        .paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        e.units["byte"] >= first.len() as u64 && e.units["byte"] < 100 * 16,
        "{:?}",
        e.units
    );
    assert_eq!(e.amount_minor, e.units["byte"]);
    let all = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(avail(&b), wallet_left("1", e.amount_minor), "{b} {all:?}");
}

fn wallet_left(start: &str, spent_minor: u64) -> String {
    let start: rust_decimal::Decimal = start.parse().unwrap();
    (start - rust_decimal::Decimal::new(spent_minor as i64, 6))
        .normalize()
        .to_string()
}

#[tokio::test]
async fn a_payment_receipt_on_a_metered_route_is_a_cap_and_the_rest_becomes_balance() {
    let f = fixture().await;
    let receipt = f.wallet.receipt("m", "lena", "0.5");
    let res = f.gw.pay_get("/v1/echo/units?units=20", &receipt).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(
        (pr["amount"].as_str(), pr["balance"].as_str()),
        (Some("0.02"), Some("0.48"))
    );
    let token = pr["accessToken"].as_str().unwrap();
    assert_eq!(avail(&f.gw.balance(token).await), "0.48");
    assert_eq!(
        code_of(f.gw.pay_get("/v1/echo/units?units=1", &receipt).await).await,
        (402, "receipt_replayed".into())
    );
    // The cap: usage above the receipt's amount is not charged to the rest of the balance.
    f.gw.topup(&f.wallet, "lena", "10").await;
    let small = f.wallet.receipt("m", "lena", "0.05");
    let res = f.gw.pay_get("/v1/echo/units?units=200", &small).await;
    assert_eq!(payment_response(&res)["amount"], "0.05");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_balances_to_the_unit_under_concurrency() {
    ledger_invariant(fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_balances_to_the_unit_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let builder = gateway().redis_cluster(&cluster);
    ledger_invariant(fixture_with(Box::new(cluster), builder).await).await;
}

/// 10 payers x 100 parallel metered requests, random usage, random upstream failures.
async fn ledger_invariant(f: Fixture) {
    let payers: Vec<String> = (0..10).map(|i| format!("payer-{i}")).collect();
    let mut tokens = Vec::new();
    for p in &payers {
        tokens.push(f.gw.topup(&f.wallet, p, "3").await);
    }
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        for j in 0..100u64 {
            let http = f.gw.http.clone();
            // Deterministic "random" usage and failures.
            let units = (i as u64 * 37 + j * 53) % 97;
            let fail = (i as u64 + j * 7).is_multiple_of(10);
            let url = f.gw.url(&format!(
                "/v1/echo/units?units={units}{}",
                if fail { "&status=502" } else { "" }
            ));
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let res = http
                    .get(url)
                    .header("authorization", format!("Bearer {token}"))
                    .send()
                    .await
                    .unwrap();
                res.status().as_u16()
            }));
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    // Only served (200), upstream failures (502) and, when a balance ran low, 402.
    assert!(
        statuses.keys().all(|s| [200, 402, 502].contains(s)),
        "{statuses:?}"
    );
    // 100 requests ask the upstream to fail: each is a 502 unless its payer's balance was
    // already too low to hold the reservation (402).
    assert!(
        statuses[&502] <= 100 && statuses.values().sum::<usize>() == 1000,
        "{statuses:?}"
    );
    assert!(
        statuses[&200] > 300 && statuses.get(&402).copied().unwrap_or(0) > 0,
        "both outcomes exercised: {statuses:?}"
    );
    let events = f.gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), statuses[&200], "one event per served request");
    for p in &payers {
        let acct = f.gw.paywall.store().account(p).await.unwrap();
        let b = acct.balances["USD"];
        let event_sum: i64 = events
            .iter()
            .filter(|e| &e.payer == p)
            .map(|e| e.amount_minor as i64)
            .sum();
        assert_eq!((b.held, acct.holds), (0, 0), "{p}: no hold left");
        assert!(b.available >= 0, "{p}: never negative");
        assert_eq!(b.credited, 3_000_000, "{p}");
        assert_eq!(
            b.credited - b.captured,
            b.available,
            "{p}: top-ups - captures = balance"
        );
        assert_eq!(event_sum, b.captured, "{p}: events = captures");
    }
}

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
async fn upstream_failing_mid_stream_charges_only_what_was_measured() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    // An upstream that sends one SSE event, then breaks the connection.
    let router = axum::Router::new().route(
        "/v1/broken",
        axum::routing::get(|| async {
            let chunks = futures_util::stream::unfold(0, |i| async move {
                match i {
                    0 => Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from("data: {\"delta\":\"a\"}\n\n")),
                        1,
                    )),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Err(std::io::Error::other("upstream crashed")), 2))
                    }
                    _ => None,
                }
            });
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(chunks),
            )
        }),
    );
    let up = serve_router(router).await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(metered(
            "tokens",
            "/v1/broken",
            &up,
            "0.05",
            &[("token", "sse:/usage/total_tokens", "0.001")],
        ))
        .start()
        .await;
    let token = gw.topup(&wallet, "nia", "1").await;
    let res = gw.token_get("/v1/broken", &token).await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.is_err(), "the client sees a broken body");
    let b = gw.settled(&token).await;
    // The usage event never came: with the upstream at fault, missing usage counts as zero.
    assert_eq!(avail(&b), "1");
    let e = gw
        .paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((e.units["token"], e.amount_minor), (0, 0));
}

#[tokio::test]
async fn a_stream_is_cut_off_when_the_balance_runs_out_and_charged_what_was_delivered() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(
            metered(
                "stream",
                "/v1/stream",
                &up,
                "0.01",
                &[("byte", "response_bytes", "0.0001")],
            )
            .with_price_option("cutoff = true"),
        )
        .start()
        .await;
    // 0.05 buys 500 bytes; the stream would send about 2,000.
    let token = gw.topup(&wallet, "otto", "0.05").await;
    let res = gw
        .token_get("/v1/stream?chunks=100&delay_ms=1", &token)
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let notice = "event: tollgate\n";
    assert!(
        text.contains(notice),
        "the client is told why the stream ended"
    );
    let delivered = text.split(notice).next().unwrap().len() as u64;
    assert!(delivered > 400 && delivered <= 500, "{delivered} bytes");
    let b = gw.settled(&token).await;
    let e = gw
        .paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        e.units["byte"], delivered,
        "charged exactly what was delivered"
    );
    assert_eq!(e.amount_minor, delivered * 100);
    assert_eq!(e.uncharged_minor, 0);
    assert_eq!(avail(&b), wallet_left("0.05", delivered * 100));
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

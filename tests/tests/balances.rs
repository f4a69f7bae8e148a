//! Prepaid balances, top-ups, access tokens, metered routes and the ledger, end to end against a
//! private redis-server (the admin API, metrics, reloads, the catalog and rate limits on the same
//! fixture: `operations.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tollgate_e2e::*;

#[path = "balances/fixture.rs"]
mod fixture;
use fixture::*;

fn chat_body(stream: bool, words: usize, max_tokens: u64) -> Value {
    json!({"stream": stream, "max_tokens": max_tokens, "messages": [{"role": "user", "content": vec!["w"; words].join(" ")}]})
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

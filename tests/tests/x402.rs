//! x402 `exact` (EIP-3009 on EVM) and `upto` (Permit2, `x402/upto.rs`) end to end: real HTTP, a real redis-server, the stand-in
//! facilitator (`tollgate_e2e::facilitator`, which plays the chain), payloads signed with
//! keys generated in the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_e2e::facilitator::{facilitator, Mode, TestFacilitator};
use tollgate_e2e::*;
use tollgate_middleware::x402::signer::LocalSigner;

#[path = "x402/common.rs"]
mod common;
#[path = "x402/deferred.rs"]
mod deferred;
#[path = "x402/upto.rs"]
mod upto;

use self::common::*;

/// An upstream that counts the requests it serves; `?status=` picks the answer's status.
async fn counting_upstream() -> (TestUpstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new().route(
        "/v1/data",
        any(
            move |Query(q): Query<std::collections::BTreeMap<String, String>>,
                  headers: axum::http::HeaderMap| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let status = q
                        .get("status")
                        .and_then(|s| s.parse().ok())
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .unwrap_or(StatusCode::OK);
                    let payer = headers
                        .get("tollgate-payer")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let charge = headers
                        .get("tollgate-charge")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let leaked = headers.contains_key("payment-signature");
                    (
                        status,
                        axum::Json(json!({"data": "paid content", "payer": payer, "charge": charge, "leaked": leaked})),
                    )
                }
            },
        ),
    );
    (serve_router(router).await, hits)
}

fn exact_route(upstream: &TestUpstream, mode: &str) -> RouteSpec {
    paid("data", "/v1/data", upstream, "0.01").with(&format!(
        "x402_settlement = \"{mode}\"\n[[routes.x402]]\nnetwork = \"{NETWORK}\"\nasset = \"{ASSET}\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"{PAY_TO}\"\namount = \"10000\"\nmax_timeout_secs = 120"
    ))
}

async fn start(
    redis: &RedisServer,
    f: &TestFacilitator,
    upstream: &TestUpstream,
    mode: &str,
) -> TestGateway {
    gateway()
        .top(&facilitator_toml(f))
        .redis(redis)
        .route(exact_route(upstream, mode))
        .start()
        .await
}

/// The `exact` offer of the route's 402.
async fn exact_offer(gw: &TestGateway) -> Value {
    let req = payment_required(gw, "/v1/data").await;
    assert_eq!(req["x402Version"], 2);
    assert_eq!(req["accepts"][0]["scheme"], "tollgate-receipt");
    offer_of(&req, "exact")
}

async fn pay(
    gw: &TestGateway,
    method: reqwest::Method,
    query: &str,
    payload: &Value,
) -> reqwest::Response {
    send_paid(gw, method, &format!("/v1/data{query}"), payload).await
}

/// Status, problem code and errorReason of a refusal (never a 5xx other than 503).
async fn refusal(res: reqwest::Response) -> (u16, String, String) {
    if res.status() == 402 {
        // Every 402 carries fresh offers, so the agent can pay again.
        let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
        assert!(req["accepts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["scheme"] == "exact"));
    }
    x402_refusal(res).await
}

#[tokio::test]
async fn the_402_offers_exact_beside_receipts() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "before").await;
    let offer = exact_offer(&gw).await;
    assert_eq!(
        offer,
        json!({
            "scheme": "exact", "network": NETWORK, "amount": "10000", "asset": ASSET,
            "payTo": PAY_TO, "maxTimeoutSeconds": 120,
            "extra": {"name": "USDC", "version": "2", "assetTransferMethod": "eip3009"}
        })
    );
    // The price catalog lists the offers for agents that plan ahead.
    let cat = catalog(&gw).await;
    assert_eq!(cat["x402Networks"], json!([NETWORK]));
    assert_eq!(cat["routes"][0]["x402"]["settlement"], "before");
    assert_eq!(cat["routes"][0]["x402"]["accepts"][0], offer);
    // Issuing the 402 wrote nothing.
    assert_redis_empty(&redis);
}

#[tokio::test]
async fn before_mode_settles_then_serves_once() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "before").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    let payload = payer.pay(&offer, now()).unwrap();
    let res = pay(&gw, reqwest::Method::GET, "", &payload).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    let addr = format!("{:#x}", payer.address());
    assert_eq!(pr["success"], true);
    assert_eq!(pr["network"], NETWORK);
    assert_eq!(pr["payer"], addr.as_str());
    assert_eq!(pr["transaction"], format!("0x{:064x}", 1));
    assert_eq!(pr["amountAtomic"], "10000");
    assert_eq!(pr["settlement"], "before");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["payer"], addr.as_str());
    assert_eq!(body["charge"], "0.01 USDC");
    assert_eq!(body["leaked"], false);
    assert_eq!(f.calls(), ["settle"]);
    assert_eq!(f.settled(), 1);
    // Exactly one usage event, with the event id in PAYMENT-RESPONSE.
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, pr["eventId"].as_str().unwrap());
    assert_eq!(events[0].payer, addr);
    assert_eq!(events[0].amount_minor, 10000);
    assert_eq!(events[0].currency, "USDC");
    assert_eq!(events[0].upstream_status, 200);
    assert!(events[0]
        .credential
        .starts_with(&format!("x402:{NETWORK}:{addr}:0x")));
    // The same authorization again: refused here, the facilitator not even asked.
    let (status, code, reason) = refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
    assert_eq!(
        (status, code.as_str(), reason.as_str()),
        (
            402,
            "x402_authorization_replayed",
            "invalid_transaction_state"
        )
    );
    assert_eq!(f.calls().len(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A before-mode payment is final: an upstream 500 is still recorded (its status kept).
    let res = pay(
        &gw,
        reqwest::Method::GET,
        "?status=500",
        &payer.pay(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 500);
    assert_eq!(payment_response(&res)["success"], true);
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].upstream_status, 500);
}

#[tokio::test]
async fn after_mode_settles_only_served_2xx() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "after").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    let payload = payer.pay(&offer, now()).unwrap();
    // 3xx, 4xx, 5xx and HEAD are served without settling; the authorization stays usable.
    for (method, query, status) in [
        (reqwest::Method::GET, "?status=302", 302),
        (reqwest::Method::GET, "?status=404", 404),
        (reqwest::Method::GET, "?status=503", 503),
        (reqwest::Method::HEAD, "", 200),
    ] {
        let res = pay(&gw, method.clone(), query, &payload).await;
        assert_eq!(res.status().as_u16(), status, "{method} {query}");
        assert!(res.headers().get("payment-response").is_none());
    }
    assert_eq!(f.settled(), 0);
    assert!(!f.calls().contains(&"settle"));
    assert!(gw.paywall.store().usage_events().await.unwrap().is_empty());
    // A 2xx settles, then the response is released with the transaction.
    let res = pay(&gw, reqwest::Method::GET, "", &payload).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(pr["settlement"], "after");
    assert_eq!(pr["transaction"], format!("0x{:064x}", 1));
    assert_eq!(f.settled(), 1);
    assert_eq!(f.calls().iter().filter(|c| **c == "verify").count(), 5);
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    let (status, code, _) = refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
    assert_eq!(
        (status, code.as_str()),
        (402, "x402_authorization_replayed")
    );
}

#[tokio::test]
async fn tampered_and_malformed_payments_are_refused_never_5xx() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "before").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    let t = now();
    let good = payer.authorization_for(&offer, t).unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "value tampered after signing",
            {
                let mut p = payer.payload(&offer, &good).unwrap();
                p["payload"]["authorization"]["value"] = "1".into();
                p
            },
            "invalid_exact_evm_payload_signature",
        ),
        (
            "signed for less",
            {
                let mut a = good.clone();
                a.value = alloy_value(9999);
                payer.payload(&offer, &a).unwrap()
            },
            "invalid_exact_evm_payload_authorization_value",
        ),
        (
            "wrong payTo",
            {
                let mut a = good.clone();
                a.to = LocalSigner::random().address();
                payer.payload(&offer, &a).unwrap()
            },
            "invalid_exact_evm_payload_recipient_mismatch",
        ),
        (
            "expired window",
            {
                let mut a = good.clone();
                a.valid_before = t - 1;
                payer.payload(&offer, &a).unwrap()
            },
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "not yet valid",
            {
                let mut a = good.clone();
                a.valid_after = t + 600;
                payer.payload(&offer, &a).unwrap()
            },
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "another offer echoed",
            {
                let mut o = offer.clone();
                o["amount"] = "1".into();
                let mut p = payer.payload(&offer, &good).unwrap();
                p["accepted"] = o;
                p
            },
            "invalid_payment_requirements",
        ),
        (
            "another chain",
            {
                let mut p = payer.payload(&offer, &good).unwrap();
                p["accepted"]["network"] = "eip155:1".into();
                p
            },
            "invalid_network",
        ),
        (
            "junk payload",
            json!({"x402Version": 2, "accepted": {"scheme": "exact"}, "payload": 5}),
            "invalid_network",
        ),
        (
            "junk authorization",
            {
                let mut p = payer.payload(&offer, &good).unwrap();
                p["payload"]["authorization"]["nonce"] = "0x12".into();
                p
            },
            "invalid_payload",
        ),
        (
            "v1 in v2",
            {
                let mut p = payer.payload(&offer, &good).unwrap();
                p["x402Version"] = 1.into();
                p
            },
            "invalid_x402_version",
        ),
    ];
    for (what, payload, want) in cases {
        let (status, code, reason) =
            refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
        assert_eq!(
            (status, code.as_str(), reason.as_str()),
            (402, "x402_payment_invalid", want),
            "{what}"
        );
    }
    // Undecodable headers: 400, never 5xx.
    for raw in [
        "!!!",
        "e30",
        &STANDARD.encode("not json"),
        &"A".repeat(20_000),
    ] {
        let res = gw
            .http
            .get(gw.url("/v1/data"))
            .header("payment-signature", raw)
            .send()
            .await
            .unwrap();
        let (status, code) = code_of(res).await;
        assert!(status == 400 || status == 402, "{status} {code}");
        assert_eq!(code, "credential_malformed");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(f.calls().is_empty(), "nothing reached the facilitator");
}

fn alloy_value(v: u64) -> alloy_primitives::U256 {
    alloy_primitives::U256::from(v)
}

#[tokio::test]
async fn a_reused_authorization_is_refused_across_two_gateways() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let a = start(&redis, &f, &up, "before").await;
    let b = start(&redis, &f, &up, "before").await;
    let offer = exact_offer(&a).await;
    let payer = LocalSigner::random();
    // 16 concurrent uses of one authorization spread over both gateways: exactly one is served.
    let payload = payer.pay(&offer, now()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let gw_url = if i % 2 == 0 {
            a.url("/v1/data")
        } else {
            b.url("/v1/data")
        };
        let h = signature_header(&payload);
        let http = a.http.clone();
        tasks.push(tokio::spawn(async move {
            http.get(gw_url)
                .header("payment-signature", h)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 402, 409].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(f.settled(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Sequentially: used on A, refused on B.
    let p2 = payer.pay(&offer, now()).unwrap();
    assert_eq!(pay(&a, reqwest::Method::GET, "", &p2).await.status(), 200);
    let (status, code, reason) = refusal(pay(&b, reqwest::Method::GET, "", &p2).await).await;
    assert_eq!(
        (status, code.as_str(), reason.as_str()),
        (
            402,
            "x402_authorization_replayed",
            "invalid_transaction_state"
        )
    );
    assert_eq!(a.paywall.store().usage_events().await.unwrap().len(), 2);
    // The single-use key lives in the payer's bucket and expires after validBefore.
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:{b*}:r:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
        assert!(ttl > 60_000 && ttl <= 185_000, "{k}: {ttl}");
    }
}

#[tokio::test]
async fn facilitator_failures_never_serve_unpaid_in_before_mode() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "before").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    let payload = payer.pay(&offer, now()).unwrap();
    for (mode, want) in [
        (
            Mode::Hang(Duration::from_secs(3)),
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
        (
            Mode::ServerError,
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
        (
            Mode::Html,
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
        (
            Mode::Truncated,
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
        (
            Mode::Pending,
            (503, "facilitator_unavailable", "settlement_pending"),
        ),
        (
            Mode::Refuse("insufficient_funds".into()),
            (402, "x402_settlement_failed", "insufficient_funds"),
        ),
        (
            Mode::ErrorBody("nonce already used".into()),
            (402, "x402_settlement_failed", "nonce already used"),
        ),
    ] {
        f.set_settle(mode.clone());
        let (status, code, reason) =
            refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
        assert_eq!((status, code.as_str(), reason.as_str()), want, "{mode:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing served unpaid");
    assert!(gw.paywall.store().usage_events().await.unwrap().is_empty());
    // The authorization was released each time: once the facilitator settles, it pays.
    f.set_settle(Mode::Normal);
    let res = pay(&gw, reqwest::Method::GET, "", &payload).await;
    assert_eq!(res.status(), 200);
    assert_eq!(f.settled(), 1);
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn facilitator_failures_withhold_the_response_in_after_mode() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "after").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    let payload = payer.pay(&offer, now()).unwrap();
    // Verification refused or unavailable: not even forwarded.
    f.set_verify(Mode::Refuse("insufficient_funds".into()));
    let (status, code, reason) = refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
    assert_eq!(
        (status, code.as_str(), reason.as_str()),
        (402, "x402_settlement_failed", "insufficient_funds")
    );
    f.set_verify(Mode::Html);
    let (status, code, reason) = refusal(pay(&gw, reqwest::Method::GET, "", &payload).await).await;
    assert_eq!(
        (status, code.as_str(), reason.as_str()),
        (503, "facilitator_unavailable", "unexpected_verify_error")
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    f.set_verify(Mode::Normal);
    // Settlement failing after the upstream answered: the 2xx body is withheld.
    for (mode, want) in [
        (
            Mode::Hang(Duration::from_secs(3)),
            (503, "facilitator_unavailable"),
        ),
        (Mode::ServerError, (503, "facilitator_unavailable")),
        (Mode::Truncated, (503, "facilitator_unavailable")),
        (Mode::Pending, (503, "facilitator_unavailable")),
        (
            Mode::Refuse("insufficient_funds".into()),
            (402, "x402_settlement_failed"),
        ),
    ] {
        f.set_settle(mode.clone());
        let res = pay(&gw, reqwest::Method::GET, "", &payload).await;
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/problem+json"), "{mode:?}: {ct}");
        let (status, code, _) = refusal(res).await;
        assert_eq!((status, code.as_str()), want, "{mode:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    assert!(gw.paywall.store().usage_events().await.unwrap().is_empty());
    f.set_settle(Mode::Normal);
    assert_eq!(
        pay(&gw, reqwest::Method::GET, "", &payload).await.status(),
        200
    );
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_payment_auth_scheme_challenge_and_credential() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .top(&facilitator_toml(&f))
        .issuer(&wallet)
        .redis(&redis)
        .route(exact_route(&up, "before"))
        .start()
        .await;
    let res = gw.http.get(gw.url("/v1/data")).send().await.unwrap();
    assert_eq!(res.status(), 402);
    let www = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(www.starts_with("Payment id=\"c1."), "{www}");
    for p in [
        "realm=\"127.0.0.1\"",
        "method=\"tollgate\"",
        "intent=\"charge\"",
        "expires=\"",
    ] {
        assert!(www.contains(p), "{p} in {www}");
    }
    let id = www
        .split("id=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let request = www
        .split("request=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(request)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded,
        json!({"amount": "10000", "currency": "USD", "decimals": "6", "method": "GET", "recipient": "m", "route": "data"})
    );
    // The draft's credential: base64url JSON with the echoed challenge and the receipt.
    let mut claims = wallet.claims("m", "agent-p", "0.01");
    claims["challenge"] = id.into();
    let cred = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"challenge": {"id": id, "realm": "m", "method": "tollgate", "intent": "charge", "request": request},
               "payload": {"receipt": wallet.sign(&claims)}})
        .to_string(),
    );
    let res = gw
        .http
        .get(gw.url("/v1/data"))
        .header("authorization", format!("Payment {cred}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["payer"], "agent-p");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn official_python_sdk_pays_end_to_end() {
    let Some(python) = sdk_python() else {
        return;
    };
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    for mode in ["before", "after"] {
        let gw = start(&redis, &f, &up, mode).await;
        let paid = sdk_pays(&python, &gw.url("/v1/data"), None, mode).await;
        assert_eq!(paid.body["data"], "paid content");
        let events = gw.paywall.store().usage_events().await.unwrap();
        assert_eq!(events.last().unwrap().payer, paid.payer);
    }
    assert_eq!(f.settled(), 2);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_after_settlement_confirmed_after_the_client_left_is_recorded() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = counting_upstream().await;
    let gw = start(&redis, &f, &up, "after").await;
    let offer = exact_offer(&gw).await;
    let payer = LocalSigner::random();
    // The facilitator confirms after 400 ms (within its timeout); the client gives up after
    // 150 ms -- the transfer is on chain, so the ledger must have it.
    f.set_settle(Mode::Hang(Duration::from_millis(400)));
    leave_before_the_answer(&gw, "/v1/data", &payer.pay(&offer, now()).unwrap()).await;
    let events = usage_events_eventually(&gw, 1).await;
    assert_eq!(events.len(), 1, "the confirmed transfer is in the ledger");
    assert_eq!(events[0].amount_minor, 10_000);
    assert!(f.calls().contains(&"settle"));
}

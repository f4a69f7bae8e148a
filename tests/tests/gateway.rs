//! End to end over HTTP: a real upstream, the gateway on 127.0.0.1:0, a private redis-server,
//! receipts signed with keys generated here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::*;

#[path = "gateway/common.rs"]
mod common;
use common::*;

fn caip2(s: &str) -> bool {
    let Some((ns, r)) = s.split_once(':') else {
        return false;
    };
    (3..=8).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit())
        && (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

/// Every field the issue requires of a valid x402 v2 offer.
fn assert_valid_offer(o: &Value) {
    assert!(!o["scheme"].as_str().unwrap().is_empty());
    assert!(
        caip2(o["network"].as_str().unwrap()),
        "network {}",
        o["network"]
    );
    let amount = o["amount"].as_str().unwrap();
    assert!(!amount.is_empty() && amount.bytes().all(|b| b.is_ascii_digit()));
    assert!(amount.parse::<u64>().unwrap() > 0);
    assert!(!o["asset"].as_str().unwrap().is_empty());
    assert!(!o["payTo"].as_str().unwrap().is_empty());
    assert!(o["maxTimeoutSeconds"].as_u64().unwrap() > 0);
    assert!(o["extra"].is_object());
}

#[tokio::test]
async fn unpaid_request_gets_a_valid_x402_challenge() {
    let redis = RedisServer::start();
    let (_w, _up, gw) = setup(&redis).await;
    let before: i64 = redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap();
    let res = gw.http.get(gw.url("/v1/echo/a?x=1")).send().await.unwrap();
    assert_eq!(res.status(), 402);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
    assert_eq!(req["x402Version"], 2);
    assert_eq!(req["error"], "payment_required");
    assert!(req["resource"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/v1/echo/a?x=1"));
    assert!(req["resource"]["description"].is_string());
    assert!(req["resource"]["mimeType"].is_string());
    let offer = &req["accepts"][0];
    assert_valid_offer(offer);
    assert_eq!(offer["amount"], "10000");
    assert_eq!(offer["asset"], "USD");
    assert_eq!(offer["payTo"], "m");
    assert_eq!(offer["extra"]["price"], "0.01");
    assert_eq!(offer["extra"]["issuers"][0], "wallet");
    assert!(offer["extra"]["challenge"]
        .as_str()
        .unwrap()
        .starts_with("c1."));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "payment_required");
    assert_eq!(body["status"], 402);
    assert_eq!(body["accepts"], req["accepts"]);
    // Issuing a challenge wrote nothing to Redis.
    let after: i64 = redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap();
    assert_eq!((before, after), (0, 0));
}

#[tokio::test]
async fn head_unpaid_is_402() {
    let redis = RedisServer::start();
    let (_w, _up, gw) = setup(&redis).await;
    let res = gw.http.head(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(res.status(), 402);
    assert!(res.headers().contains_key("payment-required"));
}

#[tokio::test]
async fn paid_request_is_served_once_with_payment_response() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let receipt = wallet.receipt("m", "agent-1", PRICE);
    let res = gw
        .http
        .post(gw.url("/v1/echo/job"))
        .header("payment-signature", payment_signature(&receipt))
        .header("tollgate-payer", "spoofed")
        .header("x-forwarded-for", "10.0.0.1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret-hop")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "private, no-store");
    let pr = payment_response(&res);
    assert_eq!(pr["success"], true);
    assert_eq!(pr["amount"], "0.01");
    assert_eq!(pr["amountAtomic"], "10000");
    assert_eq!(pr["currency"], "USD");
    assert_eq!(pr["payer"], "agent-1");
    assert!(pr["receipt"].is_string());
    let seen: Value = res.json().await.unwrap();
    // What reached the upstream: who paid, no payment headers, no spoofing, no hop-by-hop.
    let h = &seen["headers"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/echo/job");
    assert_eq!(seen["body_bytes"], 5);
    assert_eq!(h["tollgate-payer"][0], "agent-1");
    assert_eq!(h["tollgate-charge"][0], "0.01 USD");
    assert!(h.get("payment-signature").is_none());
    assert!(h.get("authorization").is_none());
    assert!(h.get("x-hop").is_none());
    assert_eq!(h["x-forwarded-for"][0], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert!(h["x-forwarded-host"][0]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // The ledger has exactly one event, matching PAYMENT-RESPONSE.
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, pr["eventId"].as_str().unwrap());
    assert_eq!(
        (
            events[0].amount_minor,
            events[0].route.as_str(),
            events[0].upstream_status
        ),
        (10_000, "echo", 200)
    );

    let again = gw.pay_get("/v1/echo", &receipt).await;
    assert_eq!(code_of(again).await, (402, "receipt_replayed".into()));
}

#[tokio::test]
async fn x_payment_v1_and_authorization_payment_are_accepted() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let r1 = wallet.receipt("m", "a", PRICE);
    let v1 = base64_std(&serde_json::json!({"x402Version": 1, "scheme": "tollgate-receipt", "network": "tollgate:receipts", "payload": {"receipt": r1}}).to_string());
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("x-payment", v1)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = gw
        .pay_get("/v1/echo", &wallet.receipt("m", "a", PRICE))
        .await;
    assert_eq!(res.status(), 200);
}

fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn challenge_bound_receipt_round_trip() {
    let redis = RedisServer::start();
    let (wallet, up, _) = setup(&redis).await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .route(paid("other", "/v1/other", &up, PRICE))
        .start()
        .await;
    let challenge_for = |path: &'static str| {
        let gw = &gw;
        async move {
            let res = gw.http.get(gw.url(path)).send().await.unwrap();
            let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
            req["accepts"][0]["extra"]["challenge"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let c = challenge_for("/v1/echo").await;
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = c.clone().into();
    assert_eq!(
        gw.pay_get("/v1/echo", &wallet.sign(&claims)).await.status(),
        200
    );
    // A receipt for another route's challenge is refused.
    let other = challenge_for("/v1/other").await;
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = other.into();
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &wallet.sign(&claims)).await).await,
        (402, "challenge_mismatch".into())
    );
    // ... and one for another method.
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = c.clone().into();
    let res = gw
        .http
        .post(gw.url("/v1/echo"))
        .header("authorization", format!("Payment {}", wallet.sign(&claims)))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (402, "challenge_mismatch".into()));
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = "c1.1.AAAA".into();
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &wallet.sign(&claims)).await).await,
        (402, "challenge_invalid".into())
    );
    // Expired: a challenge issued by a gateway whose challenges live one second, from the past.
    let expired = {
        let parts: Vec<&str> = c.split('.').collect();
        format!("c1.{}.{}", tollgate_e2e::now_secs() - 10, parts[2])
    };
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = expired.into();
    // Its MAC no longer matches the changed expiry: refused either way, never served.
    let (status, code) = code_of(gw.pay_get("/v1/echo", &wallet.sign(&claims)).await).await;
    assert_eq!(status, 402);
    assert!(
        code == "challenge_mismatch" || code == "challenge_expired",
        "{code}"
    );
}

#[tokio::test]
async fn expired_challenge_is_refused() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .top("[receipts]\nchallenge_ttl_secs = 1")
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    let res = gw.http.get(gw.url("/v1/echo")).send().await.unwrap();
    let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
    let c = req["accepts"][0]["extra"]["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    let exp: i64 = c.split('.').nth(1).unwrap().parse().unwrap();
    // Wait until the challenge's expiry second has passed (at most ~2 s).
    while tollgate_e2e::now_secs() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut claims = wallet.claims("m", "a", PRICE);
    claims["challenge"] = c.into();
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &wallet.sign(&claims)).await).await,
        (402, "challenge_expired".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_receipt_from_64_concurrent_requests_is_served_once() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let receipt = wallet.receipt("m", "racer", PRICE);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let http = gw.http.clone();
        let url = gw.url("/v1/echo?delay_ms=20");
        let r = receipt.clone();
        tasks.push(tokio::spawn(async move {
            http.get(url)
                .header("authorization", format!("Payment {r}"))
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
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_receipt_on_two_gateways_sharing_redis_is_served_once() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let build = || {
        gateway()
            .issuer(&wallet)
            .redis(&redis)
            .route(paid("echo", "/v1/echo", &up, PRICE))
            .start()
    };
    let (a, b) = (build().await, build().await);
    for round in 0..5 {
        let receipt = wallet.receipt("m", "twin", PRICE);
        assert_eq!(race(&a, &b, &receipt).await, 1, "round {round}");
    }
    // Both gateways read the one shared ledger.
    assert_eq!(a.paywall.store().usage_events().await.unwrap().len(), 5);
    assert_eq!(b.paywall.store().usage_events().await.unwrap().len(), 5);
}

#[tokio::test]
async fn upstream_down_or_5xx_or_timeout_leaves_the_receipt_usable() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let dead = dead_upstream();
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(paid("dead", "/dead", &dead, PRICE))
        .route(paid("slow", "/v1/echo/slow", &up, PRICE).with("timeout_ms = 200"))
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    let receipt = wallet.receipt("m", "a", PRICE);
    assert_eq!(
        code_of(gw.pay_get("/dead", &receipt).await).await,
        (502, "upstream_unavailable".into())
    );
    let res = gw.pay_get("/v1/echo?status=503", &receipt).await;
    assert_eq!(res.status(), 503);
    assert!(!res.headers().contains_key("payment-response"));
    assert_eq!(
        code_of(gw.pay_get("/v1/echo/slow?delay_ms=2000", &receipt).await).await,
        (504, "upstream_timeout".into())
    );
    // 4xx from the upstream: nothing useful served, released too.
    assert_eq!(
        gw.pay_get("/v1/echo?status=404", &receipt).await.status(),
        404
    );
    assert!(gw.paywall.store().usage_events().await.unwrap().is_empty());
    // Still usable, and spent by the first 2xx.
    let ok = gw.pay_get("/v1/echo", &receipt).await;
    assert_eq!(ok.status(), 200);
    assert!(ok.headers().contains_key("payment-response"));
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &receipt).await).await,
        (402, "receipt_replayed".into())
    );
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn redirects_are_served_and_charged() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let receipt = wallet.receipt("m", "a", PRICE);
    let res = http
        .get(gw.url("/v1/echo?status=302"))
        .header("authorization", format!("Payment {receipt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert!(res.headers().contains_key("payment-response"));
    assert_eq!(
        gw.paywall.store().usage_events().await.unwrap()[0].upstream_status,
        302
    );
}

#[tokio::test]
async fn streaming_response_passes_through_unbuffered() {
    use futures_util::StreamExt;
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    // An upstream whose second chunk is only sent after the client has seen the first: a
    // gateway that buffered the body would deadlock here.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let router = axum::Router::new().route(
        "/v1/stream",
        axum::routing::get(move || {
            let rx = rx.clone();
            async move {
                let rx = rx.lock().await.take().unwrap();
                let s = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
                });
                axum::body::Body::from_stream(s)
            }
        }),
    );
    let up = serve_router(router).await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(paid("stream", "/v1/stream", &up, PRICE))
        .start()
        .await;
    tx.send("first\n".into()).await.unwrap();
    let res = gw
        .pay_get("/v1/stream", &wallet.receipt("m", "a", PRICE))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first chunk arrives before the stream ends");
    assert_eq!(&first.unwrap().unwrap()[..], b"first\n");
    tx.send("second\n".into()).await.unwrap();
    drop(tx);
    let second = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap();
    assert_eq!(&second.unwrap().unwrap()[..], b"second\n");
    assert!(tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn redis_down_fails_paid_routes_closed_and_free_routes_work() {
    let mut redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    redis.kill();
    let receipt = wallet.receipt("m", "a", PRICE);
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &receipt).await).await,
        (503, "store_unavailable".into())
    );
    assert_eq!(
        gw.http
            .get(gw.url("/free/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404 /* upstream has no /free/x */
    );
    assert_eq!(
        gw.http
            .get(gw.url("/free/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The unpaid 402 needs no store either.
    assert_eq!(
        gw.http
            .get(gw.url("/v1/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        402
    );
    assert_eq!(
        gw.http
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        gw.http
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    redis.restart();
    let mut status = 0;
    for _ in 0..50 {
        status = gw.pay_get("/v1/echo", &receipt).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the gateway recovers by itself");
    assert_eq!(
        gw.http
            .get(gw.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn routing_errors_are_problems() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(
            paid("echo", "/v1/echo", &up, PRICE)
                .with("methods = [\"GET\", \"POST\"]\nmax_body_bytes = 16"),
        )
        .route(free("free", "/free", &up))
        .start()
        .await;
    assert_eq!(
        code_of(gw.http.get(gw.url("/nope")).send().await.unwrap()).await,
        (404, "route_not_found".into())
    );
    // Prefixes match whole segments only.
    assert_eq!(
        code_of(gw.http.get(gw.url("/v1/echoes")).send().await.unwrap()).await,
        (404, "route_not_found".into())
    );
    let res = gw.http.delete(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET, POST");
    assert_eq!(code_of(res).await, (405, "method_not_allowed".into()));
    let res = gw
        .http
        .post(gw.url("/v1/echo"))
        .body(vec![b'x'; 17])
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (413, "body_too_large".into()));
    // A chunked body over the limit, paid: refused and the receipt released.
    let receipt = wallet.receipt("m", "a", PRICE);
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(vec![b'x'; 10]),
        Ok(vec![b'y'; 10]),
    ]);
    let res = gw
        .http
        .post(gw.url("/v1/echo"))
        .header("authorization", format!("Payment {receipt}"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (413, "body_too_large".into()));
    assert_eq!(gw.pay_get("/v1/echo", &receipt).await.status(), 200);
    // Dot segments could let an upstream normalize a free path into a paid one.
    // (Sent raw: HTTP clients normalize such paths before sending.)
    for p in ["/free/../v1/echo", "/free/%2e%2e/v1/echo", "/free/./x"] {
        let answer = raw_http(
            gw.addr,
            &format!("GET {p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{p}: {answer}");
        assert!(
            answer.contains("\"code\":\"path_invalid\""),
            "{p}: {answer}"
        );
    }
}

#[tokio::test]
async fn free_routes_strip_spoofed_and_payment_headers() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(free("free", "/v1/echo", &up))
        .start()
        .await;
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("tollgate-payer", "spoofed")
        .header("tollgate-charge", "100 USD")
        .header("authorization", "Payment abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    assert!(seen["headers"].get("tollgate-payer").is_none());
    assert!(seen["headers"].get("tollgate-charge").is_none());
    assert!(seen["headers"].get("authorization").is_none());
    // Bearer tokens are the upstream's business and pass through.
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("authorization", "Bearer upstream-token")
        .send()
        .await
        .unwrap();
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["headers"]["authorization"][0], "Bearer upstream-token");
}

#[tokio::test]
async fn host_routes_and_upstream_choice() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(free("a", "/v1/echo", &up).with("host = \"a.example\""))
        .start()
        .await;
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("host", "a.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.unwrap();
    // The upstream is chosen by config, never by the client's Host header.
    assert_eq!(seen["headers"]["host"][0], up.addr.to_string());
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("host", "b.example")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(res).await, (404, "route_not_found".into()));
}

#[tokio::test]
async fn memory_store_gateway_serves_paid_routes_too() {
    let wallet = TestIssuer::es256("wallet-p256");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    let receipt = wallet.receipt("m", "p", PRICE);
    assert_eq!(gw.pay_get("/v1/echo", &receipt).await.status(), 200);
    assert_eq!(
        code_of(gw.pay_get("/v1/echo", &receipt).await).await,
        (402, "receipt_replayed".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_receipt_on_two_gateways_sharing_a_redis_cluster_is_served_once() {
    let cluster = RedisCluster::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let build = || {
        gateway()
            .issuer(&wallet)
            .redis_cluster(&cluster)
            .route(paid("echo", "/v1/echo", &up, PRICE))
            .start()
    };
    let (a, b) = (build().await, build().await);
    for round in 0..5 {
        // Different payers land in different hash slots, on different masters.
        let receipt = wallet.receipt("m", &format!("cluster-payer-{round}"), PRICE);
        assert_eq!(race(&a, &b, &receipt).await, 1, "round {round}");
    }
    assert_eq!(a.paywall.store().usage_events().await.unwrap().len(), 5);
    // Tokens and balances across the two gateways too.
    let token = a.topup(&wallet, "cluster-token", "0.05").await;
    for gw in [&a, &b, &a, &b, &a] {
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    let res = b.token_get("/v1/echo", &token).await;
    assert_eq!(code_of(res).await, (402, "balance_insufficient".into()));
}

#[tokio::test]
async fn request_ids_reach_the_upstream_and_come_back() {
    let redis = RedisServer::start();
    let (_w, _up, gw) = setup(&redis).await;
    let res = gw
        .http
        .get(gw.url("/free/x"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    let res = gw.http.get(gw.url("/v1/echo")).send().await.unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        generated.len(),
        25,
        "a generated id when the client sent none: {generated}"
    );
    let next = gw
        .http
        .get(gw.url("/v1/echo"))
        .send()
        .await
        .unwrap()
        .headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(next, generated, "ids are unique");
    let up = free("echo-free", "/v1/echo", &upstream().await);
    let gw2 = gateway().route(up).start().await;
    let seen: Value = gw2
        .http
        .get(gw2.url("/v1/echo"))
        .header("x-request-id", "id-42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-request-id"][0], "id-42");
}

/// 32 concurrent uses of one receipt, alternating between two gateways; the number of 200s.
async fn race(a: &TestGateway, b: &TestGateway, receipt: &str) -> usize {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let url = if i % 2 == 0 {
            a.url("/v1/echo")
        } else {
            b.url("/v1/echo")
        };
        let req = a
            .http
            .get(url)
            .header("authorization", format!("Payment {receipt}"));
        tasks.push(tokio::spawn(async move {
            req.send().await.unwrap().status().as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    ok
}

//! x402 `upto` (Permit2) on metered routes, end to end: the permit signs a maximum (the
//! route's reserve, 0.05 USD = 50000 atomic units), the measured cost is settled through the
//! stand-in facilitator, exactly once, never above the maximum.

use super::*;
use tollgate_e2e::facilitator::FACILITATOR_ADDRESS;

/// 0.0001 USD per token = 100 atomic units; the reserve 0.05 USD = 50000 = 500 tokens.
const PER_TOKEN: u64 = 100;
const MAX: u64 = 50_000;

/// `/v1/json?tokens=N` answers `{"usage": {"total_tokens": N}}` (no usage without `tokens`);
/// `/v1/stream?tokens=N` streams 4 SSE events, the last with the usage. `?status=` picks the
/// status. Counts the requests served.
async fn llm_upstream() -> (TestUpstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (h1, h2) = (hits.clone(), hits.clone());
    type Q = Query<std::collections::BTreeMap<String, String>>;
    let status_of = |q: &Q| {
        q.get("status")
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    };
    let router = Router::new()
        .route(
            "/v1/json",
            any(move |q: Q| {
                h1.fetch_add(1, Ordering::SeqCst);
                async move {
                    let usage = match q.get("tokens") {
                        Some(t) => json!({"total_tokens": t.parse::<u64>().unwrap()}),
                        None => json!({}),
                    };
                    (
                        status_of(&q),
                        axum::Json(json!({"answer": "metered content", "usage": usage})),
                    )
                }
            }),
        )
        .route(
            "/v1/stream",
            any(move |q: Q| {
                h2.fetch_add(1, Ordering::SeqCst);
                async move {
                    let tokens: u64 = q.get("tokens").and_then(|t| t.parse().ok()).unwrap_or(0);
                    let mut body = String::new();
                    for i in 0..3 {
                        body.push_str(&format!("data: {{\"delta\": \"part {i}\"}}\n\n"));
                    }
                    body.push_str(&format!(
                        "data: {{\"usage\": {{\"total_tokens\": {tokens}}}}}\n\ndata: [DONE]\n\n"
                    ));
                    (status_of(&q), [("content-type", "text/event-stream")], body)
                }
            }),
        );
    (serve_router(router).await, hits)
}

fn upto_offer_toml() -> String {
    format!(
        "[[routes.x402]]\nnetwork = \"{NETWORK}\"\nasset = \"{ASSET}\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"{PAY_TO}\"\nfacilitator_address = \"{FACILITATOR_ADDRESS}\"\nmax_timeout_secs = 120"
    )
}

fn upto_routes(up: &TestUpstream, mode: &str) -> [RouteSpec; 2] {
    [
        metered(
            "json",
            "/v1/json",
            up,
            "0.05",
            &[("token", "json:/usage/total_tokens", "0.0001")],
        ),
        metered(
            "stream",
            "/v1/stream",
            up,
            "0.05",
            &[("token", "sse:/usage/total_tokens", "0.0001")],
        ),
    ]
    .map(|r| {
        r.with(&format!(
            "x402_settlement = \"{mode}\"\n{}",
            upto_offer_toml()
        ))
    })
}

async fn start_upto(
    redis: &RedisServer,
    f: &TestFacilitator,
    up: &TestUpstream,
    mode: &str,
) -> TestGateway {
    let [json, stream] = upto_routes(up, mode);
    gateway()
        .top(&facilitator_toml(f))
        .redis(redis)
        .route(json)
        .route(stream)
        .start()
        .await
}

/// The `upto` offer of a route's 402.
async fn upto_offer(gw: &TestGateway, path: &str) -> Value {
    offer_of(&payment_required(gw, path).await, "upto")
}

async fn pay_at(gw: &TestGateway, path_and_query: &str, payload: &Value) -> reqwest::Response {
    send_paid(gw, reqwest::Method::GET, path_and_query, payload).await
}

/// The usage events in the store: (payer, amount_minor, currency).
async fn events(gw: &TestGateway) -> Vec<(String, u64, String)> {
    gw.paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.payer, e.amount_minor, e.currency))
        .collect()
}

/// Wait (up to 5 s) until the store holds `n` usage events.
async fn events_eventually(gw: &TestGateway, n: usize) {
    usage_events_eventually(gw, n).await;
}

fn addr(s: &LocalSigner) -> String {
    format!("{:#x}", s.address())
}

#[tokio::test]
async fn a_metered_route_offers_upto_for_its_reserve() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    assert_eq!(
        offer,
        json!({
            "scheme": "upto", "network": NETWORK, "amount": "50000", "asset": ASSET,
            "payTo": PAY_TO, "maxTimeoutSeconds": 120,
            "extra": {"name": "USDC", "version": "2", "assetTransferMethod": "permit2",
                      "facilitatorAddress": FACILITATOR_ADDRESS}
        })
    );
    // The catalog lists it for agents that plan ahead.
    let cat = catalog(&gw).await;
    assert_eq!(cat["x402Networks"], json!([NETWORK]));
    assert_eq!(cat["routes"][0]["x402"]["settlement"], "before");
    assert_eq!(cat["routes"][0]["x402"]["accepts"], json!([offer]));
    // Issuing the 402 wrote nothing.
    assert_redis_empty(&redis);
}

#[tokio::test]
async fn before_settles_exactly_the_measured_cost_once() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let payer = LocalSigner::random();
    let payload = payer.pay_upto(&offer, now()).unwrap();
    let res = pay_at(&gw, "/v1/json?tokens=123", &payload).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["answer"], "metered content");
    assert_eq!(pr["success"], true);
    assert_eq!(pr["amountAtomic"], "12300");
    assert_eq!(pr["amount"], "0.0123");
    assert_eq!(pr["currency"], "USDC");
    assert_eq!(pr["settlement"], "before");
    assert_eq!(pr["payer"], addr(&payer).as_str());
    assert_eq!(pr["transaction"], format!("0x{:064x}", 1));
    assert_eq!(f.calls(), vec!["verify", "settle"]);
    assert_eq!(f.asked(), vec![123 * PER_TOKEN]);
    assert_eq!(f.transferred(), vec![12_300]);
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 12_300, "USDC".to_owned())]
    );
    assert!(pr["eventId"].as_str().is_some());
    // Single use: the same permit again, on any route of the gateway.
    for path in ["/v1/json?tokens=1", "/v1/stream?tokens=1"] {
        let (status, code, reason) = x402_refusal(pay_at(&gw, path, &payload).await).await;
        assert_eq!(
            (status, code.as_str(), reason.as_str()),
            (
                402,
                "x402_authorization_replayed",
                "invalid_transaction_state"
            ),
            "{path}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(f.transferred(), vec![12_300]);
    assert_eq!(events(&gw).await.len(), 1);
}

#[tokio::test]
async fn the_cost_is_capped_at_the_maximum_and_nothing_above_is_ever_asked() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    // 900 tokens would cost 90000; the permit allows 50000.
    let p1 = LocalSigner::random();
    let res = pay_at(
        &gw,
        "/v1/json?tokens=900",
        &p1.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["amountAtomic"], "50000");
    // No usage in the answer (on_missing = "reserve"): the maximum.
    let p2 = LocalSigner::random();
    let res = pay_at(&gw, "/v1/json", &p2.pay_upto(&offer, now()).unwrap()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["amountAtomic"], "50000");
    assert_eq!(f.asked(), vec![MAX, MAX]);
    assert_eq!(f.transferred(), vec![MAX, MAX]);
    assert_eq!(
        events(&gw).await,
        vec![
            (addr(&p1), MAX, "USDC".to_owned()),
            (addr(&p2), MAX, "USDC".to_owned())
        ]
    );
}

#[tokio::test]
async fn nothing_used_nothing_settled() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let payer = LocalSigner::random();
    let payload = payer.pay_upto(&offer, now()).unwrap();
    // 0 tokens: served, no settlement, no event; the permit was never used.
    let res = pay_at(&gw, "/v1/json?tokens=0", &payload).await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(
        (
            pr["success"].clone(),
            pr["amountAtomic"].clone(),
            pr["transaction"].clone()
        ),
        (json!(true), json!("0"), json!(""))
    );
    // The upstream fails: nothing settled either.
    let res = pay_at(&gw, "/v1/json?tokens=7&status=500", &payload).await;
    assert_eq!(res.status(), 500);
    assert!(res.headers().get("payment-response").is_none());
    // HEAD: nothing is paid for a body never sent.
    let res = send_paid(&gw, reqwest::Method::HEAD, "/v1/json?tokens=7", &payload).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("payment-response").is_none());
    assert_eq!(f.calls(), vec!["verify", "verify", "verify"]);
    assert!(events(&gw).await.is_empty());
    // The same permit still pays (once).
    let res = pay_at(&gw, "/v1/json?tokens=5", &payload).await;
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["amountAtomic"], "500");
    assert_eq!(f.transferred(), vec![500]);
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 500, "USDC".to_owned())]
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn facilitator_failures_never_serve_unpaid() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let payer = LocalSigner::random();
    let payload = payer.pay_upto(&offer, now()).unwrap();
    // /verify fails: not forwarded at all.
    let verify_cases = [
        (
            Mode::Refuse("permit2_allowance_required".into()),
            (402, "x402_settlement_failed", "permit2_allowance_required"),
        ),
        (
            Mode::ServerError,
            (503, "facilitator_unavailable", "unexpected_verify_error"),
        ),
        (
            Mode::Hang(Duration::from_millis(1500)),
            (503, "facilitator_unavailable", "unexpected_verify_error"),
        ),
    ];
    for (mode, want) in verify_cases {
        f.set_verify(mode.clone());
        let got = x402_refusal(pay_at(&gw, "/v1/json?tokens=10", &payload).await).await;
        assert_eq!((got.0, got.1.as_str(), got.2.as_str()), want, "{mode:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    f.set_verify(Mode::Normal);
    // /settle fails after serving a JSON answer (metered before it is released): the
    // response is withheld, nothing recorded, the permit released.
    let settle_cases = [
        (
            Mode::Refuse("permit2_insufficient_balance".into()),
            (
                402,
                "x402_settlement_failed",
                "permit2_insufficient_balance",
            ),
        ),
        (
            Mode::Hang(Duration::from_millis(1500)),
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
        (
            Mode::Pending,
            (503, "facilitator_unavailable", "settlement_pending"),
        ),
        (
            Mode::ServerError,
            (503, "facilitator_unavailable", "unexpected_settle_error"),
        ),
    ];
    let n = settle_cases.len();
    for (mode, want) in settle_cases {
        f.set_settle(mode.clone());
        let res = pay_at(&gw, "/v1/json?tokens=10", &payload).await;
        let got = x402_refusal(res).await;
        assert_eq!((got.0, got.1.as_str(), got.2.as_str()), want, "{mode:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), n);
    assert!(events(&gw).await.is_empty());
    assert_eq!(f.settled(), 0);
    assert_eq!(f.asked(), Vec::<u64>::new());
    // Fixed: the same permit pays, exactly once.
    f.set_settle(Mode::Normal);
    let res = pay_at(&gw, "/v1/json?tokens=10", &payload).await;
    assert_eq!(res.status(), 200);
    assert_eq!(payment_response(&res)["amountAtomic"], "1000");
    assert_eq!(f.transferred(), vec![1000]);
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 1000, "USDC".to_owned())]
    );
}

#[tokio::test]
async fn a_stream_settles_at_its_end() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/stream").await;
    let payer = LocalSigner::random();
    let res = pay_at(
        &gw,
        "/v1/stream?tokens=40",
        &payer.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains("part 2") && body.contains("[DONE]"), "{body}");
    eventually("settled", || f.transferred() == vec![4000]).await;
    events_eventually(&gw, 1).await;
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 4000, "USDC".to_owned())]
    );
}

#[tokio::test]
async fn a_stream_whose_settlement_fails_goes_to_the_settler() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/stream").await;
    // A timeout at the end of the stream: queued, then settled by the settler.
    let p1 = LocalSigner::random();
    f.set_settle(Mode::Hang(Duration::from_millis(1500)));
    let res = pay_at(
        &gw,
        "/v1/stream?tokens=40",
        &p1.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("[DONE]"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.set_settle(Mode::Normal);
    eventually("settled by the settler", || f.transferred() == vec![4000]).await;
    assert_eq!(
        events(&gw).await,
        vec![(addr(&p1), 4000, "USDC".to_owned())]
    );
    // A refusal at the end of the stream: the settler fails the job and blocks the payer.
    let p2 = LocalSigner::random();
    f.set_settle(Mode::Refuse("permit2_insufficient_balance".into()));
    let res = pay_at(
        &gw,
        "/v1/stream?tokens=3",
        &p2.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("[DONE]"));
    let mut blocked = false;
    for _ in 0..250 {
        let again = pay_at(
            &gw,
            "/v1/stream?tokens=1",
            &p2.pay_upto(&offer, now()).unwrap(),
        )
        .await;
        if again.status() == 403 {
            assert_eq!(code_of(again).await, (403, "payer_blocked".to_owned()));
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(blocked, "the payer of a refused settlement is blocked");
    assert_eq!(f.transferred(), vec![4000]);
}

#[tokio::test]
async fn deferred_queues_the_measured_cost() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "deferred").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let payer = LocalSigner::random();
    let res = pay_at(
        &gw,
        "/v1/json?tokens=77",
        &payer.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let pr = payment_response(&res);
    assert_eq!(pr["settlement"], "deferred");
    assert_eq!(pr["amountAtomic"], "7700");
    assert_eq!(pr["transaction"], "");
    eventually("settled in the background", || {
        f.transferred() == vec![7700]
    })
    .await;
    assert_eq!(f.calls(), vec!["settle"]);
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 7700, "USDC".to_owned())]
    );
}

#[tokio::test]
async fn one_permit_used_concurrently_across_two_gateways_pays_once() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let a = start_upto(&redis, &f, &up, "before").await;
    let b = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&a, "/v1/json").await;
    let payload = LocalSigner::random().pay_upto(&offer, now()).unwrap();
    let requests: Vec<reqwest::RequestBuilder> = (0..16)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            gw.http
                .get(gw.url("/v1/json?tokens=3"))
                .header("payment-signature", signature_header(&payload))
        })
        .collect();
    let outcomes = outcomes(requests).await;
    for o in &outcomes {
        assert!(
            [
                "ok",
                "x402_authorization_replayed",
                "x402_authorization_in_use"
            ]
            .contains(&o.as_str()),
            "{outcomes:?}"
        );
    }
    assert_eq!(
        outcomes.iter().filter(|o| *o == "ok").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(f.transferred(), vec![300]);
    assert_eq!(events(&a).await.len(), 1);
}

#[tokio::test]
async fn bad_permits_are_refused_before_any_io() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let s = LocalSigner::random();
    let t = now();
    let permit = s.permit_for(&offer, t).unwrap();
    let signed = |edit: &dyn Fn(&mut tollgate_middleware::x402::signer::Permit)| {
        let mut p = permit.clone();
        edit(&mut p);
        s.upto_payload(&offer, &p).unwrap()
    };
    let good = s.pay_upto(&offer, t).unwrap();
    let tampered = |edit: &dyn Fn(&mut Value)| {
        let mut p = good.clone();
        edit(&mut p);
        p
    };
    let other_chain = {
        let mut o = offer.clone();
        o["network"] = "eip155:8453".into();
        s.pay_upto(&o, t).unwrap()
    };
    let other_token = tollgate_middleware::x402::upto::UPTO_PROXY;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "malformed signature",
            tampered(&|p| p["payload"]["signature"] = "0x1234".into()),
            "invalid_permit2_signature",
        ),
        (
            "signature of other terms",
            tampered(&|p| p["payload"]["permit2Authorization"]["nonce"] = "1".into()),
            "invalid_permit2_signature",
        ),
        (
            "oversized proof (an ERC-6492 wrapper)",
            tampered(&|p| p["payload"]["signature"] = format!("0x{}", "ab".repeat(3000)).into()),
            "invalid_permit2_signature",
        ),
        (
            "another chain",
            other_chain,
            "invalid_upto_evm_network_mismatch",
        ),
        (
            "another token contract",
            signed(&|p| p.token = other_token),
            "permit2_token_mismatch",
        ),
        (
            "an expired permit",
            signed(&|p| p.deadline = t - 1),
            "permit2_deadline_expired",
        ),
        (
            "a permit outliving the offer",
            signed(&|p| p.deadline = t + 3600),
            "permit2_deadline_too_far",
        ),
        (
            "not yet valid",
            signed(&|p| p.valid_after = t + 600),
            "permit2_not_yet_valid",
        ),
        (
            "more than the maximum",
            signed(&|p| p.amount = alloy_primitives::U256::from(MAX + 1)),
            "permit2_amount_mismatch",
        ),
        (
            "another recipient",
            signed(&|p| p.to = other_token),
            "invalid_permit2_recipient_mismatch",
        ),
        (
            "another facilitator",
            signed(&|p| p.facilitator = other_token),
            "upto_facilitator_mismatch",
        ),
        (
            "another spender",
            signed(&|p| p.spender = s.address()),
            "invalid_permit2_spender",
        ),
        (
            "a missing field",
            tampered(&|p| {
                p["payload"]["permit2Authorization"]
                    .as_object_mut()
                    .unwrap()
                    .remove("deadline");
            }),
            "invalid_permit2_payload_format",
        ),
        (
            "an edited maximum in accepted",
            tampered(&|p| p["accepted"]["amount"] = "1".into()),
            "invalid_payment_requirements",
        ),
    ];
    for (what, payload, reason) in cases {
        let got = x402_refusal(pay_at(&gw, "/v1/json?tokens=1", &payload).await).await;
        assert_eq!(
            (got.0, got.1.as_str(), got.2.as_str()),
            (402, "x402_payment_invalid", reason),
            "{what}"
        );
    }
    // A header over the 16 KiB limit is refused as malformed, before it is decoded.
    let huge = tampered(&|p| p["payload"]["signature"] = format!("0x{}", "ab".repeat(9000)).into());
    let (status, code) = code_of(pay_at(&gw, "/v1/json?tokens=1", &huge).await).await;
    assert_eq!((status, code.as_str()), (400, "credential_malformed"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(f.calls().is_empty());
    // The good permit still pays.
    let res = pay_at(&gw, "/v1/json?tokens=2", &good).await;
    assert_eq!(res.status(), 200);
    assert_eq!(f.transferred(), vec![200]);
}

#[tokio::test]
async fn official_python_sdk_pays_a_metered_route_with_upto() {
    let Some(python) = sdk_python() else {
        return;
    };
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = llm_upstream().await;
    let mut expected = Vec::new();
    // Each mode on its own Redis (its own ledger), both kept until the end (their settlers run).
    let stores = [RedisServer::start(), RedisServer::start()];
    for (mode, redis) in ["before", "deferred"].into_iter().zip(&stores) {
        let gw = start_upto(redis, &f, &up, mode).await;
        let paid = sdk_pays(&python, &gw.url("/v1/json?tokens=42"), Some("upto"), mode).await;
        assert_eq!(paid.payment_response["amountAtomic"], "4200");
        assert_eq!(paid.body["answer"], "metered content");
        expected.push(4200);
        eventually("settled", || f.transferred() == expected).await;
        events_eventually(&gw, 1).await;
        assert_eq!(
            events(&gw).await,
            vec![(paid.payer, 4200, "USDC".to_owned())]
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_settlement_confirmed_after_the_client_left_is_recorded() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = llm_upstream().await;
    let gw = start_upto(&redis, &f, &up, "before").await;
    let offer = upto_offer(&gw, "/v1/json").await;
    let payer = LocalSigner::random();
    // The facilitator confirms after 400 ms (within its 700 ms timeout); the client gives up
    // after 150 ms.
    f.set_settle(Mode::Hang(Duration::from_millis(400)));
    leave_before_the_answer(
        &gw,
        "/v1/json?tokens=9",
        &payer.pay_upto(&offer, now()).unwrap(),
    )
    .await;
    events_eventually(&gw, 1).await;
    assert_eq!(
        events(&gw).await,
        vec![(addr(&payer), 900, "USDC".to_owned())]
    );
}

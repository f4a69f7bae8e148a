//! Mandates (spending authority): budgets per calendar window enforced in the store's atomic
//! scripts, on both stores and across two gateway instances sharing one redis-server;
//! windows rolling over with a test clock; revocation; every refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Uri};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tollgate_e2e::engine::{engine_builder, usd};
use tollgate_e2e::{
    code_of, count_ok, gateway, outcomes, paid, payment_response, report, upstream, RedisServer,
    TestIssuer,
};
use tollgate_middleware::{
    Clock, Head, ManualClock, Money, Paywall, Price, PricedRoute, RedisStore, RedisStoreOptions,
    SqliteStore, Store,
};

/// Mandate claims for `agent`, granted by `owner`: `budget` USD per `window`.
fn mandate_claims(issuer: &TestIssuer, agent: &str, budget: &str, window: &str, now: i64) -> Value {
    json!({
        "iss": issuer.id, "sub": agent, "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now, "exp": now + 40 * 86_400, "kind": "mandate", "owner": "alice",
        "currency": "USD", "budget": budget, "window": window, "merchants": ["m"],
    })
}

/// A payment receipt carrying a mandate (its `mandate` claim), issued at `now`.
fn receipt_under(
    issuer: &TestIssuer,
    agent: &str,
    amount: &str,
    mandate: &str,
    now: i64,
) -> String {
    issuer.sign(&json!({
        "iss": issuer.id, "sub": agent, "aud": "m", "jti": uuid::Uuid::new_v4().to_string(),
        "iat": now, "exp": now + 300, "amount": amount, "currency": "USD", "kind": "payment",
        "mandate": mandate,
    }))
}

fn engine(store: Arc<dyn Store>, clock: &ManualClock, issuer: &TestIssuer) -> Paywall {
    engine_builder(store, Arc::new(clock.clone()), issuer)
        .build()
        .unwrap()
}

fn route(id: &str, group: &str, price: &str) -> Arc<PricedRoute> {
    let p = Price::fixed(Money {
        amount: price.parse().unwrap(),
        currency: usd(),
    })
    .unwrap();
    Arc::new(PricedRoute::new(id, p).group(group))
}

fn auth(receipt: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Payment {receipt}")).unwrap(),
    );
    h
}

/// Admit and settle one request; `Ok(())` when served and captured, else the refusal's
/// (status, code, body).
async fn pay(
    paywall: &Paywall,
    route: &Arc<PricedRoute>,
    headers: &HeaderMap,
    upstream_status: u16,
) -> Result<(), (u16, String, Value)> {
    match paywall
        .admit(route, &Method::GET, &Uri::from_static("/x"), headers)
        .await
    {
        Ok(Some(a)) => {
            a.settle(Some(upstream_status), None).await.unwrap();
            Ok(())
        }
        Ok(None) => panic!("route is free"),
        Err(refused) => {
            let head = Head {
                method: &Method::GET,
                uri: &Uri::from_static("/x"),
                headers,
            };
            let res = paywall.render(&refused, Some((route, head)));
            let body: Value = serde_json::from_slice(res.body()).unwrap();
            Err((
                res.status().as_u16(),
                body["code"].as_str().unwrap().to_owned(),
                body,
            ))
        }
    }
}

// 2026-11-22T12:00:00Z
const NOON: i64 = 1_795_348_800_000;

async fn budget_rolls_over_with_the_window(store: Arc<dyn Store>, clock: ManualClock) {
    let wallet = TestIssuer::ed25519("wallet");
    let paywall = engine(store.clone(), &clock, &wallet);
    let r = route("compute", "compute", "0.10");
    let now = clock.now_secs();
    let mandate = wallet.sign(&mandate_claims(&wallet, "agent", "0.35", "day", now));
    let fresh = |clock: &ManualClock| {
        auth(&receipt_under(
            &wallet,
            "agent",
            "0.10",
            &mandate,
            clock.now_secs(),
        ))
    };
    for _ in 0..2 {
        pay(&paywall, &r, &fresh(&clock), 200).await.unwrap();
    }
    // A request the upstream fails is released: its room comes back.
    pay(&paywall, &r, &fresh(&clock), 502).await.unwrap();
    pay(&paywall, &r, &fresh(&clock), 200).await.unwrap();
    let (status, code, body) = pay(&paywall, &r, &fresh(&clock), 200).await.unwrap_err();
    assert_eq!((status, code.as_str()), (402, "mandate_exceeded"));
    assert_eq!(body["mandate"]["room_left"], "0.05");
    assert_eq!(body["mandate"]["budget"], "0.35");
    let midnight = (NOON / 86_400_000 + 1) * 86_400;
    assert_eq!(body["mandate"]["resets_at"], midnight);
    assert!(
        !body["accepts"].as_array().unwrap().is_empty(),
        "a 402 still offers ways to pay"
    );
    // The last millisecond of the day: still refused. Midnight: a new window.
    clock.advance_ms(midnight * 1000 - clock.now_ms() - 1);
    assert_eq!(
        pay(&paywall, &r, &fresh(&clock), 200).await.unwrap_err().1,
        "mandate_exceeded"
    );
    clock.advance_ms(1);
    for _ in 0..3 {
        pay(&paywall, &r, &fresh(&clock), 200).await.unwrap();
    }
    assert_eq!(
        pay(&paywall, &r, &fresh(&clock), 200).await.unwrap_err().1,
        "mandate_exceeded"
    );
    // Six captures in all, 0.10 each, one usage event each.
    let events = store.usage_events().await.unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events.iter().map(|e| e.amount_minor).sum::<u64>(), 600_000);
    // The provider's view of the mandate in the current window.
    let listed = store.mandates("agent", clock.now_ms()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0["owner"], "alice");
    assert_eq!(
        (
            listed[0].1.spent_minor,
            listed[0].1.held_minor,
            listed[0].1.revoked
        ),
        (300_000, 0, false)
    );
}

#[tokio::test]
async fn memory_budget_rolls_over_with_the_window() {
    let clock = ManualClock::at_ms(NOON);
    let store = Arc::new(SqliteStore::memory(Arc::new(clock.clone())).unwrap());
    budget_rolls_over_with_the_window(store, clock).await;
}

#[tokio::test]
async fn redis_budget_rolls_over_with_the_window() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(RedisStoreOptions {
        url: redis.url(),
        cluster: false,
        prefix: "t".into(),
        timeout: std::time::Duration::from_secs(2),
    })
    .await
    .unwrap();
    budget_rolls_over_with_the_window(Arc::new(store), ManualClock::at_ms(NOON)).await;
}

#[tokio::test]
async fn mandate_refusals_name_their_reason() {
    let clock = ManualClock::at_ms(NOON);
    let store = Arc::new(SqliteStore::memory(Arc::new(clock.clone())).unwrap());
    let wallet = TestIssuer::ed25519("wallet");
    let stranger = TestIssuer::ed25519("stranger");
    let paywall = engine(store, &clock, &wallet);
    let chat = route("chat", "chat", "0.10");
    let now = clock.now_secs();
    let base = mandate_claims(&wallet, "agent", "5", "week", now);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        edit(&mut c);
        wallet.sign(&c)
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "granted to another agent",
            with(&|c| c["sub"] = "other".into()),
            401,
            "mandate_invalid",
        ),
        (
            "another merchant",
            with(&|c| c["merchants"] = json!(["shop"])),
            403,
            "mandate_forbidden",
        ),
        (
            "route group not allowed",
            with(&|c| c["routes"] = json!(["compute"])),
            403,
            "mandate_forbidden",
        ),
        (
            "above the per-payment maximum",
            with(&|c| c["max_per_payment"] = "0.05".into()),
            403,
            "mandate_forbidden",
        ),
        (
            "another currency",
            with(&|c| c["currency"] = "EUR".into()),
            403,
            "mandate_forbidden",
        ),
        (
            "expired",
            with(&|c| {
                c["iat"] = (now - 7200).into();
                c["exp"] = (now - 3600).into();
            }),
            401,
            "mandate_invalid",
        ),
        (
            "not a mandate",
            with(&|c| c["kind"] = "payment".into()),
            401,
            "mandate_invalid",
        ),
        (
            "bad window",
            with(&|c| c["window"] = "fortnight".into()),
            401,
            "mandate_invalid",
        ),
        (
            "untrusted issuer",
            {
                let mut c = base.clone();
                c["iss"] = "stranger".into();
                stranger.sign(&c)
            },
            401,
            "mandate_invalid",
        ),
        (
            "forged signature",
            {
                let m = with(&|_| {});
                let (head, _) = m.rsplit_once('.').unwrap();
                format!("{head}.AAAA")
            },
            401,
            "mandate_invalid",
        ),
        (
            "an id instead of the JWT",
            "m-42".to_owned(),
            401,
            "mandate_invalid",
        ),
    ];
    for (what, mandate, status, code) in cases {
        let headers = auth(&receipt_under(&wallet, "agent", "0.10", &mandate, now));
        let (s, c, _) = pay(&paywall, &chat, &headers, 200).await.unwrap_err();
        assert_eq!((s, c.as_str()), (status, code), "{what}");
    }
    // The same mandate in the Tollgate-Mandate header (here: allowed, so served).
    let mut headers = auth(&wallet.sign(&json!({
        "iss": "wallet", "sub": "agent", "aud": "m", "jti": "plain", "iat": now, "exp": now + 60,
        "amount": "0.10", "currency": "USD", "kind": "payment"})));
    headers.insert(
        "tollgate-mandate",
        HeaderValue::from_str(&with(&|c| c["routes"] = json!(["compute"]))).unwrap(),
    );
    assert_eq!(
        pay(&paywall, &chat, &headers, 200).await.unwrap_err().1,
        "mandate_forbidden",
        "a header mandate is enforced like a claim"
    );
    headers.insert(
        "tollgate-mandate",
        HeaderValue::from_str(&with(&|_| {})).unwrap(),
    );
    pay(&paywall, &chat, &headers, 200).await.unwrap();
    // A mandate is not a receipt.
    let (s, c, _) = pay(&paywall, &chat, &auth(&with(&|_| {})), 200)
        .await
        .unwrap_err();
    assert_eq!((s, c.as_str()), (402, "receipt_malformed"));
}

/// Many agents' requests in parallel across two gateway instances sharing one redis-server,
/// each with a fresh receipt under one mandate: exactly as many succeed as fit the budget,
/// and the captured total never exceeds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_requests_on_two_gateways_never_exceed_the_budget() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let start = || {
        gateway()
            .issuer(&wallet)
            .redis(&redis)
            .admin("admin-token-0123456789")
            .route(paid("compute", "/v1/echo", &up, "0.03"))
            .start()
    };
    let (a, b) = (start().await, start().await);
    let now = tollgate_e2e::now_secs();
    let mandate = wallet.sign(&mandate_claims(&wallet, "agent", "1.00", "month", now));
    let n = 100;
    let requests = (0..n)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            let receipt = receipt_under(&wallet, "agent", "0.03", &mandate, now);
            gw.http
                .get(gw.url("/v1/echo"))
                .header("authorization", format!("Payment {receipt}"))
        })
        .collect();
    let ok = count_ok(&outcomes(requests).await, "mandate_exceeded");
    // floor(1.00 / 0.03) = 33.
    assert_eq!(ok, 33);
    let events = a.paywall.store().usage_events().await.unwrap();
    let captured: u64 = events.iter().map(|e| e.amount_minor).sum();
    assert_eq!((events.len(), captured), (33, 990_000));
    // The admin view agrees, to the unit.
    let view: Value = a
        .admin_json("/admin/v1/payers/agent", "admin-token-0123456789")
        .await;
    let m = &view["mandates"][0];
    assert_eq!(
        (
            m["spent"].as_str(),
            m["held"].as_str(),
            m["room_left"].as_str()
        ),
        (Some("0.99"), Some("0"), Some("0.01"))
    );
    report(
        "mandate_budget_two_gateways",
        json!({"requests": n, "gateways": 2, "budget": "1.00", "price": "0.03", "served": ok, "captured": Decimal::new(i64::try_from(captured).unwrap(), 6).normalize().to_string()}),
    );
}

/// A token bound to a mandate at top-up: balance drawdowns count against it; parallel
/// drawdowns stop exactly at the budget; revocation (admin) stops the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bound_tokens_and_revocation() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .admin("admin-token-0123456789")
        .route(paid("compute", "/v1/echo", &up, "0.25"))
        .start()
        .await;
    let now = tollgate_e2e::now_secs();
    let mut mc = mandate_claims(&wallet, "agent", "2.00", "month", now);
    mc["jti"] = "m-bound".into();
    let mandate = wallet.sign(&mc);
    let mut topup = wallet.claims("m", "agent", "10");
    topup["kind"] = "topup".into();
    let res: Value = gw
        .http
        .post(gw.url("/tollgate/v1/topup"))
        .header("authorization", format!("Payment {}", wallet.sign(&topup)))
        .header("tollgate-mandate", &mandate)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["mandate"]["id"], "m-bound");
    let token = res["access_token"].as_str().unwrap().to_owned();
    // A renewal keeps the binding (a token cannot shed its mandate).
    let renewed: Value = gw
        .http
        .post(gw.url("/tollgate/v1/token"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(renewed["mandate"]["id"], "m-bound");
    let token = renewed["access_token"].as_str().unwrap().to_owned();
    let requests = (0..20)
        .map(|_| gw.http.get(gw.url("/v1/echo")).bearer_auth(&token))
        .collect();
    let ok = count_ok(&outcomes(requests).await, "mandate_exceeded");
    assert_eq!(ok, 8, "2.00 / 0.25");
    let bal = gw.settled(&token).await;
    assert_eq!(bal["balances"]["USD"]["captured"], "2");
    assert_eq!(bal["balances"]["USD"]["available"], "8");
    // Revoked by the provider: the next request is refused, whatever the room.
    let admin = reqwest::Client::new();
    let r = admin
        .post(gw.admin_url("/admin/v1/mandates/m-bound/revoke"))
        .bearer_auth("admin-token-0123456789")
        .json(&json!({"reason": "owner asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let res = gw.token_get("/v1/echo", &token).await;
    assert_eq!(code_of(res).await, (403, "mandate_revoked".to_owned()));
    // A receipt under the same mandate is refused too.
    let receipt = receipt_under(&wallet, "agent", "0.25", &mandate, now);
    let res = gw.pay_get("/v1/echo", &receipt).await;
    assert_eq!(code_of(res).await, (403, "mandate_revoked".to_owned()));
    let view: Value = gw
        .admin_json("/admin/v1/payers/agent", "admin-token-0123456789")
        .await;
    assert_eq!(view["mandates"][0]["revoked"], true);
    assert_eq!(view["mandates"][0]["spent"], "2");
    // A revoked receipt cannot pay.
    let fresh = wallet.claims("m", "agent", "0.25");
    let r = admin
        .post(gw.admin_url("/admin/v1/receipts/revoke"))
        .bearer_auth("admin-token-0123456789")
        .json(&json!({"issuer": "wallet", "id": fresh["jti"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["revoked"], true);
    let res = gw.pay_get("/v1/echo", &wallet.sign(&fresh)).await;
    assert_eq!(code_of(res).await, (403, "receipt_revoked".to_owned()));
}

/// An issuer's revocation list, polled: a mandate it lists stops working on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuer_revocation_list_stops_a_mandate() {
    use std::sync::Mutex;
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let list: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let served = list.clone();
    let lists = tollgate_e2e::serve_router(axum::Router::new().route(
        "/revoked.json",
        axum::routing::get(move || {
            let ids = served.lock().unwrap().clone();
            async move { axum::Json(json!({ "revoked": ids })) }
        }),
    ))
    .await;
    let gw = gateway()
        .issuer_toml(&format!(
            "[[issuers]]\nid = \"wallet\"\nkeys = [{}]\nmandate_revocations_url = \"{}/revoked.json\"\nmandate_revocations_poll_secs = 1\n",
            wallet.jwk_toml(),
            lists.url()
        ))
        .redis(&redis)
        .route(paid("compute", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let now = tollgate_e2e::now_secs();
    let mut mc = mandate_claims(&wallet, "agent", "5", "day", now);
    mc["jti"] = "m-listed".into();
    let mandate = wallet.sign(&mc);
    let res = gw
        .pay_get(
            "/v1/echo",
            &receipt_under(&wallet, "agent", "0.01", &mandate, now),
        )
        .await;
    assert_eq!(res.status(), 200);
    list.lock().unwrap().push("m-listed".into());
    let mut refused = false;
    for _ in 0..50 {
        let res = gw
            .pay_get(
                "/v1/echo",
                &receipt_under(&wallet, "agent", "0.01", &mandate, now),
            )
            .await;
        if res.status() == 403 {
            assert_eq!(code_of(res).await.1, "mandate_revoked");
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "the listed mandate was not revoked within 5 s");
}

/// A metered charge never exceeds the mandate's room: the rest is recorded as uncharged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metered_charges_are_capped_at_the_room_left() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(tollgate_e2e::metered(
            "units",
            "/v1/echo/units",
            &up,
            "0.05",
            &[("unit", "header:x-units", "0.001")],
        ))
        .start()
        .await;
    let now = tollgate_e2e::now_secs();
    let mandate = wallet.sign(&mandate_claims(&wallet, "meter", "0.30", "week", now));
    let mut topup = wallet.claims("m", "meter", "5");
    topup["kind"] = "topup".into();
    let res: Value = gw
        .http
        .post(gw.url("/tollgate/v1/topup"))
        .header("authorization", format!("Payment {}", wallet.sign(&topup)))
        .header("tollgate-mandate", &mandate)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = res["access_token"].as_str().unwrap().to_owned();
    // 200 units x 0.001 = 0.20: within the room.
    let res = gw.token_get("/v1/echo/units?units=200", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.2");
    // 0.10 left; usage 0.50 -> 0.10 charged, 0.40 uncharged.
    let res = gw.token_get("/v1/echo/units?units=500", &token).await;
    assert_eq!(payment_response(&res)["amount"], "0.1");
    let events = gw.paywall.store().usage_events().await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.amount_minor, last.uncharged_minor),
        (100_000, 400_000)
    );
    // Nothing left: the next reservation is refused.
    let res = gw.token_get("/v1/echo/units?units=1", &token).await;
    assert_eq!(code_of(res).await, (402, "mandate_exceeded".to_owned()));
    let bal = gw.settled(&token).await;
    assert_eq!(bal["balances"]["USD"]["captured"], "0.3");
}

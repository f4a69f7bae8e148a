//! The Payment HTTP authentication scheme (draft-httpauth-payment) end to end: `Payment-Receipt`
//! on paid answers, the draft's problem types, and `Idempotency-Key` retries charged once (on
//! the memory store and on a real Redis, also in parallel).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_e2e::*;
use tollgate_middleware::challenge::{ChallengeKey, ChallengeTerms};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const DRAFT: &str = "https://paymentauth.org/problems/";

/// An upstream that counts its calls; `?status=` picks the answer, `?sleep_ms=` delays it.
async fn counting_upstream() -> (TestUpstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new().route(
        "/v1/{*rest}",
        any(
            move |Query(q): Query<std::collections::BTreeMap<String, String>>| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if let Some(ms) = q.get("sleep_ms").and_then(|s| s.parse().ok()) {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let status = q
                        .get("status")
                        .and_then(|s| s.parse().ok())
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .unwrap_or(StatusCode::OK);
                    (status, axum::Json(json!({"data": "paid content"})))
                }
            },
        ),
    );
    (serve_router(router).await, hits)
}

struct Fixture {
    _redis: Option<RedisServer>,
    wallet: TestIssuer,
    gw: TestGateway,
    hits: Arc<AtomicUsize>,
}

async fn fixture(on_redis: bool) -> Fixture {
    let redis = on_redis.then(RedisServer::start);
    let wallet = TestIssuer::ed25519("wallet");
    let (up, hits) = counting_upstream().await;
    let mut b = gateway()
        .issuer(&wallet)
        .secret(SECRET)
        .route(paid("data", "/v1/data", &up, "0.01"))
        .route(paid("jobs", "/v1/jobs", &up, "0.25"));
    if let Some(r) = &redis {
        b = b.redis(r);
    }
    Fixture {
        _redis: redis,
        wallet,
        gw: b.start().await,
        hits,
    }
}

/// `(id, request)` of the `WWW-Authenticate: Payment` challenge of a 402.
fn challenge_of(res: &reqwest::Response) -> (String, String) {
    let www = res.headers()["www-authenticate"].to_str().unwrap();
    let param = |name: &str| {
        www.split(&format!("{name}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    };
    (param("id"), param("request"))
}

/// The draft's credential: base64url JSON echoing the challenge, the receipt as payload.
fn credential(id: &str, request: &str, receipt: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        json!({"challenge": {"id": id, "realm": "m", "method": "tollgate",
                             "intent": "charge", "request": request},
               "payload": {"receipt": receipt}})
        .to_string(),
    )
}

/// `(status, code, type, body)` of a problem answer.
async fn problem(res: reqwest::Response) -> (u16, String, String, Value) {
    let status = res.status().as_u16();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"),
        "status {status}"
    );
    assert!(res.headers().get("payment-receipt").is_none());
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["code"].as_str().unwrap().to_owned(),
        body["type"].as_str().unwrap().to_owned(),
        body,
    )
}

fn decode_receipt(res: &reqwest::Response) -> Value {
    let v = res.headers()["payment-receipt"].to_str().unwrap();
    assert!(
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url without padding: {v}"
    );
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(v).unwrap()).unwrap()
}

impl Fixture {
    /// A 402 for `path`: its challenge.
    async fn challenge(&self, path: &str) -> (String, String) {
        let res = self.gw.http.get(self.gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 402);
        challenge_of(&res)
    }

    async fn events(&self) -> usize {
        self.gw.paywall.store().usage_events().await.unwrap().len()
    }
}

#[tokio::test]
async fn payment_receipt_on_paid_answers_to_the_payment_scheme() {
    let f = fixture(false).await;
    let (id, request) = f.challenge("/v1/data").await;
    let mut claims = f.wallet.claims("m", "agent-p", "0.01");
    claims["challenge"] = id.clone().into();
    let jti = claims["jti"].as_str().unwrap().to_owned();
    let res =
        f.gw.http
            .get(f.gw.url("/v1/data"))
            .header(
                "authorization",
                format!(
                    "Payment {}",
                    credential(&id, &request, &f.wallet.sign(&claims))
                ),
            )
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    let cache = res.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cache.contains("private"), "{cache}");
    let event_id = payment_response(&res)["eventId"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = decode_receipt(&res);
    assert_eq!(r["status"], "success");
    assert_eq!(r["method"], "tollgate");
    assert_eq!(r["reference"], event_id.as_str());
    assert_eq!(r["receipt"], jti.as_str());
    let ts = r["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    // The reference is the ledger's event id.
    let events = f.gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, event_id);

    // A bare receipt in `Authorization: Payment` is the Payment scheme too.
    let res =
        f.gw.pay_get("/v1/data", &f.wallet.receipt("m", "agent-p", "0.01"))
            .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        decode_receipt(&res)["reference"],
        payment_response(&res)["eventId"]
    );

    // x402 and access tokens: PAYMENT-RESPONSE only.
    let res =
        f.gw.http
            .get(f.gw.url("/v1/data"))
            .header(
                "payment-signature",
                payment_signature(&f.wallet.receipt("m", "agent-p", "0.01")),
            )
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("payment-receipt").is_none());
    let token = f.gw.topup(&f.wallet, "agent-t", "1").await;
    let res = f.gw.token_get("/v1/data", &token).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("payment-receipt").is_none());

    // Not a 2xx (nothing charged on 4xx/5xx): no receipt.
    let res =
        f.gw.pay_get(
            "/v1/data?status=500",
            &f.wallet.receipt("m", "agent-p", "0.01"),
        )
        .await;
    assert_eq!(res.status(), 500);
    assert!(res.headers().get("payment-receipt").is_none());
    assert_eq!(f.events().await, 4);
}

#[tokio::test]
async fn refusals_carry_the_drafts_problem_types() {
    let f = fixture(false).await;
    let (id, request) = f.challenge("/v1/data").await;
    let send = |auth: String| {
        f.gw.http
            .get(f.gw.url("/v1/data"))
            .header("authorization", auth)
            .send()
    };
    let receipt = || f.wallet.receipt("m", "agent-p", "0.01");

    // No credential (the body repeats the challenge id, as the draft's example does).
    let res = f.gw.http.get(f.gw.url("/v1/data")).send().await.unwrap();
    let (www_id, _) = challenge_of(&res);
    let (s, code, t, body) = problem(res).await;
    assert_eq!(
        (s, code.as_str(), t),
        (402, "payment_required", format!("{DRAFT}payment-required"))
    );
    assert_eq!(body["challengeId"], www_id.as_str());
    // The detail says what it costs and where every price is listed.
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("0.01 USD (per request)"), "{detail}");
    assert!(detail.contains("GET /.well-known/tollgate"), "{detail}");

    // Echoed challenge id tampered with (one MAC character changed), forged, empty.
    let parts: Vec<&str> = id.split('.').collect();
    let exp: i64 = parts[1].parse().unwrap();
    let later = format!("c1.{}.{}", exp + 3600, parts[2]);
    let first = if parts[2].starts_with('A') { "B" } else { "A" };
    let flipped = format!("c1.{exp}.{first}{}", &parts[2][1..]);
    let forged = format!("c1.{}.{}", now_secs() + 60, "A".repeat(43));
    for (bad, want) in [
        (later.as_str(), "challenge_mismatch"),
        (flipped.as_str(), "challenge_mismatch"),
        (forged.as_str(), "challenge_mismatch"),
        ("c1.x.y", "challenge_invalid"),
        ("", "challenge_invalid"),
    ] {
        let res = send(format!("Payment {}", credential(bad, &request, &receipt())))
            .await
            .unwrap();
        assert!(res.headers().contains_key("www-authenticate"));
        let (s, code, t, _) = problem(res).await;
        assert_eq!(
            (s, code.as_str(), t),
            (402, want, format!("{DRAFT}invalid-challenge")),
            "{bad:?}"
        );
    }
    // A challenge of this route issued by this gateway, expired.
    let key = ChallengeKey::try_new(SECRET).unwrap();
    let terms = ChallengeTerms {
        merchant: "m",
        route: "data",
        method: "GET",
        amount_minor: 10_000,
        currency: "USD",
    };
    let fresh = key.issue(&terms, now_secs() + 60);
    assert!(
        send(format!(
            "Payment {}",
            credential(&fresh, &request, &receipt())
        ))
        .await
        .unwrap()
        .status()
            == 200,
        "the test's own challenge ids are the gateway's"
    );
    let expired = key.issue(&terms, now_secs() - 120);
    let res = send(format!(
        "Payment {}",
        credential(&expired, &request, &receipt())
    ))
    .await
    .unwrap();
    let (s, code, t, _) = problem(res).await;
    assert_eq!(
        (s, code.as_str(), t),
        (402, "challenge_expired", format!("{DRAFT}payment-expired"))
    );
    // The echoed id must be the one the receipt is bound to.
    let mut claims = f.wallet.claims("m", "agent-p", "0.01");
    claims["challenge"] = fresh.clone().into();
    let other = key.issue(&terms, now_secs() + 90);
    let res = send(format!(
        "Payment {}",
        credential(&other, &request, &f.wallet.sign(&claims))
    ))
    .await
    .unwrap();
    let (_, code, t, _) = problem(res).await;
    assert_eq!(
        (code.as_str(), t),
        ("challenge_mismatch", format!("{DRAFT}invalid-challenge"))
    );

    // Receipt problems.
    let mut low = f.wallet.claims("m", "agent-p", "0.001");
    low["challenge"] = id.clone().into();
    let mut old = f.wallet.claims("m", "agent-p", "0.01");
    old["iat"] = (now_secs() - 600).into();
    old["exp"] = (now_secs() - 300).into();
    let other_wallet = TestIssuer::ed25519("wallet");
    let spent = receipt();
    assert_eq!(
        send(format!("Payment {spent}")).await.unwrap().status(),
        200
    );
    for (auth, want_code, want_type) in [
        (
            credential(&id, &request, &f.wallet.sign(&low)),
            "amount_insufficient",
            "payment-insufficient",
        ),
        (f.wallet.sign(&old), "receipt_expired", "payment-expired"),
        (
            other_wallet.receipt("m", "agent-p", "0.01"),
            "receipt_invalid_signature",
            "verification-failed",
        ),
        (spent, "receipt_replayed", "verification-failed"),
        (
            "not.a.jwt".to_owned(),
            "receipt_malformed",
            "invalid-payload",
        ),
    ] {
        let res = send(format!("Payment {auth}")).await.unwrap();
        let (s, code, t, _) = problem(res).await;
        assert_eq!(
            (s, code.as_str(), t),
            (402, want_code, format!("{DRAFT}{want_type}"))
        );
    }
    // An undecodable credential (our status stays 400; the type is the draft's).
    let res =
        f.gw.http
            .get(f.gw.url("/v1/data"))
            .header("payment-signature", "%%%")
            .send()
            .await
            .unwrap();
    let (s, code, t, _) = problem(res).await;
    assert_eq!(
        (s, code.as_str(), t),
        (
            400,
            "credential_malformed",
            format!("{DRAFT}malformed-credential")
        )
    );
    // Codes the draft has no type for keep Tollgate's own.
    let res = f.gw.http.get(f.gw.url("/nowhere")).send().await.unwrap();
    let (s, code, t, _) = problem(res).await;
    assert_eq!(
        (s, code.as_str(), t.as_str()),
        (
            404,
            "route_not_found",
            "urn:tollgate:problem:route_not_found"
        )
    );
    // Two served requests: the fresh challenge one and `spent`.
    assert_eq!(f.events().await, 2);
}

/// POST `path` with the access token and an Idempotency-Key.
async fn post_with_key(f: &Fixture, path: &str, token: &str, key: &str) -> reqwest::Response {
    f.gw.with_token(reqwest::Method::POST, path, token)
        .header("idempotency-key", key)
        .body("{\"job\": 1}")
        .send()
        .await
        .unwrap()
}

async fn retries_with_one_key_are_charged_once(on_redis: bool) {
    let f = fixture(on_redis).await;
    let token = f.gw.topup(&f.wallet, "agent-i", "1").await;
    let res = post_with_key(&f, "/v1/jobs", &token, "job-7f3a").await;
    assert_eq!(res.status(), 200);
    let event_id = payment_response(&res)["eventId"]
        .as_str()
        .unwrap()
        .to_owned();
    // The retry: not served, not charged, told which event paid for it.
    let res = post_with_key(&f, "/v1/jobs", &token, "job-7f3a").await;
    let (s, code, _, body) = problem(res).await;
    assert_eq!((s, code.as_str()), (409, "idempotency_key_used"));
    assert_eq!(body["eventId"], event_id.as_str());
    assert!(body["paidAt"].as_str().unwrap().ends_with('Z'));
    // Quoted (structured-field string) is the same key.
    let res = post_with_key(&f, "/v1/jobs", &token, "\"job-7f3a\"").await;
    assert_eq!(problem(res).await.1, "idempotency_key_used");
    // The same key for another request.
    let res = post_with_key(&f, "/v1/jobs?other=1", &token, "job-7f3a").await;
    let (s, code, _, _) = problem(res).await;
    assert_eq!((s, code.as_str()), (422, "idempotency_key_mismatch"));
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    let b = f.gw.balance(&token).await;
    assert_eq!(b["balances"]["USD"]["available"], "0.75");
    assert_eq!(f.events().await, 1);

    // Keys are per payer: another payer's same key is its own.
    let token2 = f.gw.topup(&f.wallet, "agent-j", "1").await;
    assert_eq!(
        post_with_key(&f, "/v1/jobs", &token2, "job-7f3a")
            .await
            .status(),
        200
    );

    // Not charged (upstream 500): the key is forgotten, the retry runs and pays once.
    let res = post_with_key(&f, "/v1/jobs?status=500", &token, "job-500").await;
    assert_eq!(res.status(), 500);
    assert_eq!(
        post_with_key(&f, "/v1/jobs?status=500", &token, "job-500")
            .await
            .status(),
        500
    );
    assert_eq!(f.hits.load(Ordering::SeqCst), 4);
    assert_eq!(
        f.gw.balance(&token).await["balances"]["USD"]["available"],
        "0.75"
    );

    // Refused after the claim (balance too low): forgotten before the answer, so the retry
    // is refused for its own reason again, never "in use".
    let poor = f.gw.topup(&f.wallet, "agent-poor", "0.1").await;
    for _ in 0..2 {
        let res = post_with_key(&f, "/v1/jobs", &poor, "job-poor").await;
        let (s, code, t, _) = problem(res).await;
        assert_eq!(
            (s, code.as_str(), t),
            (
                402,
                "balance_insufficient",
                format!("{DRAFT}payment-insufficient")
            )
        );
    }
    assert_eq!(f.hits.load(Ordering::SeqCst), 4);

    // Receipts through the Payment scheme: the retry with the same credential and key gets
    // the key's answer, not `receipt_replayed`.
    let res = f.gw.http.post(f.gw.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(res.status(), 402);
    let (id, request) = challenge_of(&res);
    let cred = credential(&id, &request, &f.wallet.receipt("m", "agent-r", "0.25"));
    let send = || {
        f.gw.http
            .post(f.gw.url("/v1/jobs"))
            .header("authorization", format!("Payment {cred}"))
            .header("idempotency-key", "r-1")
            .send()
    };
    let res = send().await.unwrap();
    assert_eq!(res.status(), 200);
    let reference = decode_receipt(&res)["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, code, _, body) = problem(send().await.unwrap()).await;
    assert_eq!((s, code.as_str()), (409, "idempotency_key_used"));
    assert_eq!(body["eventId"], reference.as_str());
    assert_eq!(f.events().await, 3);

    // Bad keys: 400 before anything is held or charged.
    let long = "k".repeat(129);
    for bad in ["", "two words", "a:b", "\"open", long.as_str()] {
        let res = post_with_key(&f, "/v1/jobs", &token, bad).await;
        let (s, code, t, _) = problem(res).await;
        assert_eq!(
            (s, code.as_str(), t),
            (
                400,
                "idempotency_key_invalid",
                format!("{DRAFT}bad-request")
            ),
            "{bad:?}"
        );
    }
    let res =
        f.gw.with_token(reqwest::Method::POST, "/v1/jobs", &token)
            .header("idempotency-key", "a")
            .header("idempotency-key", "b")
            .send()
            .await
            .unwrap();
    assert_eq!(problem(res).await.1, "idempotency_key_invalid");
    assert_eq!(f.hits.load(Ordering::SeqCst), 5);
    assert_eq!(
        f.gw.balance(&token).await["balances"]["USD"]["available"],
        "0.75"
    );
}

#[tokio::test]
async fn idempotency_key_retries_are_charged_once_memory() {
    retries_with_one_key_are_charged_once(false).await;
}

#[tokio::test]
async fn idempotency_key_retries_are_charged_once_redis() {
    retries_with_one_key_are_charged_once(true).await;
}

async fn parallel_retries(on_redis: bool) {
    let f = fixture(on_redis).await;
    let token = f.gw.topup(&f.wallet, "agent-par", "1").await;
    let n = 12;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let http = f.gw.http.clone();
        let url = f.gw.url("/v1/jobs?sleep_ms=300");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .header("authorization", format!("Bearer {token}"))
                .header("idempotency-key", "parallel-1")
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().unwrap_or("").to_owned())
        }));
    }
    let mut ok = 0;
    let mut in_use = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (409, c) if c == "idempotency_key_in_use" => in_use += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((ok, in_use), (1, n - 1));
    assert_eq!(f.hits.load(Ordering::SeqCst), 1);
    let b = f.gw.settled(&token).await;
    assert_eq!(b["balances"]["USD"]["available"], "0.75");
    assert_eq!(f.events().await, 1);
    // Afterwards: the key's final answer.
    let res = post_with_key(&f, "/v1/jobs?sleep_ms=300", &token, "parallel-1").await;
    assert_eq!(problem(res).await.1, "idempotency_key_used");
}

#[tokio::test]
async fn parallel_retries_with_one_key_charge_once_memory() {
    parallel_retries(false).await;
}

#[tokio::test]
async fn parallel_retries_with_one_key_charge_once_redis() {
    parallel_retries(true).await;
}

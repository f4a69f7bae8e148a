//! Access tokens bound to the agent's key (RFC 9449 DPoP), end to end: a real gateway on
//! loopback, real Ed25519 and P-256 proofs, the embedded store and a private redis-server
//! (two replicas sharing it for the replay across replicas).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::Method;
use serde_json::{json, Value};
use tollgate_e2e::*;
use tollgate_middleware::dpop::DpopKey;

const PUBLIC: &str = "http://tollgate.test";

fn dpop_gateway(mode: &str) -> GatewayBuilder {
    gateway().top(&format!(
        "public_url = \"{PUBLIC}\"\n[agent]\ndpop = \"{mode}\""
    ))
}

async fn start(builder: GatewayBuilder, wallet: &TestIssuer) -> TestGateway {
    let up = upstream().await;
    builder
        .issuer(wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await
}

/// `POST /tollgate/v1/topup` of `amount` for `payer`, with a proof by `key` when given.
async fn topup(
    gw: &TestGateway,
    wallet: &TestIssuer,
    payer: &str,
    key: Option<&DpopKey>,
) -> reqwest::Response {
    let mut c = wallet.claims("m", payer, "1");
    c["kind"] = "topup".into();
    topup_with(gw, &wallet.sign(&c), key).await
}

async fn topup_with(gw: &TestGateway, receipt: &str, key: Option<&DpopKey>) -> reqwest::Response {
    let mut req = gw
        .http
        .post(gw.url("/tollgate/v1/topup"))
        .header("authorization", format!("Payment {receipt}"));
    if let Some(k) = key {
        req = req.header(
            "dpop",
            k.proof(
                "POST",
                &format!("{PUBLIC}/tollgate/v1/topup"),
                None,
                now_secs(),
            ),
        );
    }
    req.send().await.unwrap()
}

fn with_proof(
    gw: &TestGateway,
    method: Method,
    path: &str,
    token: &str,
    proof: &str,
) -> reqwest::RequestBuilder {
    gw.http
        .request(method, gw.url(path))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
}

/// Status, code and `reason` of a refusal, and its `WWW-Authenticate`.
async fn refusal(res: reqwest::Response) -> (u16, String, String, String) {
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        body["reason"].as_str().unwrap_or_default().to_owned(),
        challenge,
    )
}

/// The whole family of proof checks against one bound token; returns how many requests were
/// served (each charged 0.01).
async fn exercise(gw: &TestGateway, wallet: &TestIssuer, key: &DpopKey) -> u32 {
    let res = topup(gw, wallet, "alice", Some(key)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["cnf"]["jkt"], key.thumbprint());
    let token = body["access_token"].as_str().unwrap().to_owned();
    let url = format!("{PUBLIC}/v1/echo");
    let now = now_secs();
    let mut served = 0;

    // A fresh proof for this request: served, and the upstream sees neither header.
    let proof = key.proof("GET", &url, Some(&token), now);
    let res = with_proof(gw, Method::GET, "/v1/echo", &token, &proof)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    served += 1;
    let seen: Value = res.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert!(seen["headers"].get("dpop").is_none(), "{seen}");

    // The same proof again.
    let replay = with_proof(gw, Method::GET, "/v1/echo", &token, &proof)
        .send()
        .await
        .unwrap();
    let (status, code, _, challenge) = refusal(replay).await;
    assert_eq!((status, code.as_str()), (401, "dpop_proof_replayed"));
    assert!(
        challenge.starts_with("DPoP error=\"invalid_dpop_proof\""),
        "{challenge}"
    );

    // The token alone, as DPoP or as Bearer: a copied token pays for nothing.
    let alone = gw
        .http
        .get(gw.url("/v1/echo"))
        .header("authorization", format!("DPoP {token}"))
        .send()
        .await
        .unwrap();
    let (status, code, _, challenge) = refusal(alone).await;
    assert_eq!((status, code.as_str()), (401, "dpop_proof_required"));
    assert_eq!(challenge, "DPoP algs=\"EdDSA ES256\"");
    let (status, code, ..) = refusal(gw.token_get("/v1/echo", &token).await).await;
    assert_eq!((status, code.as_str()), (401, "dpop_proof_required"));
    // Even with a good proof, a bound token is not a bearer token.
    let bearer = gw
        .with_token(Method::GET, "/v1/echo", &token)
        .header("dpop", key.proof("GET", &url, Some(&token), now))
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(bearer).await.1, "dpop_proof_required");

    // Proofs for something else, by someone else, or at the wrong time.
    let other = DpopKey::ed25519();
    let bad: Vec<(&str, String)> = vec![
        ("proof_url", key.proof("GET", &format!("{PUBLIC}/v1/other"), Some(&token), now)),
        ("proof_url", key.proof("GET", "http://evil.test/v1/echo", Some(&token), now)),
        ("proof_method", key.proof("POST", &url, Some(&token), now)),
        ("proof_wrong_key", other.proof("GET", &url, Some(&token), now)),
        ("proof_token_hash", key.proof("GET", &url, None, now)),
        ("proof_token_hash", key.proof("GET", &url, Some("tg1.another.token"), now)),
        ("proof_stale", key.proof("GET", &url, Some(&token), now - 65)),
        ("proof_future", key.proof("GET", &url, Some(&token), now + 30)),
        ("proof_too_large", "a".repeat(5000)),
        ("proof_malformed", "not-a-jws".into()),
        (
            "proof_type",
            key.sign(
                &json!({"typ": "JWT", "alg": key.alg(), "jwk": key.jwk()}),
                &json!({"jti": "t", "htm": "GET", "htu": url, "iat": now}),
            ),
        ),
        (
            "proof_private_key",
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": key.alg(), "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}}),
                &json!({"jti": "t", "htm": "GET", "htu": url, "iat": now}),
            ),
        ),
        (
            "proof_algorithm",
            key.sign(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk()}),
                &json!({"jti": "t", "htm": "GET", "htu": url, "iat": now}),
            ),
        ),
    ];
    for (reason, proof) in &bad {
        let res = with_proof(gw, Method::GET, "/v1/echo", &token, proof)
            .send()
            .await
            .unwrap();
        let (status, code, got, challenge) = refusal(res).await;
        assert_eq!(
            (status, code.as_str(), got.as_str()),
            (401, "dpop_proof_invalid", *reason),
            "{reason}"
        );
        assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    }
    // A forged signature (the claims of one proof under another's signature).
    let (signed, _) = proof.rsplit_once('.').unwrap();
    let other_sig = key.proof("GET", &url, Some(&token), now);
    let forged = format!("{signed}.{}", other_sig.rsplit_once('.').unwrap().1);
    let res = with_proof(gw, Method::GET, "/v1/echo", &token, &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(res).await.2, "proof_signature");
    // Two proofs on one request.
    let res = with_proof(
        gw,
        Method::GET,
        "/v1/echo",
        &token,
        &key.proof("GET", &url, Some(&token), now),
    )
    .header("dpop", key.proof("GET", &url, Some(&token), now))
    .send()
    .await
    .unwrap();
    assert_eq!(refusal(res).await.2, "proof_multiple");

    // Within the window at both ends (the exact boundary is the unit tests').
    for iat in [now - 50, now + 3] {
        let res = with_proof(
            gw,
            Method::GET,
            "/v1/echo",
            &token,
            &key.proof("GET", &url, Some(&token), iat),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(res.status(), 200, "iat {iat} (now {now})");
        served += 1;
    }

    // The balance and the renewal take proofs for themselves; a renewed token keeps the key.
    let balance_url = format!("{PUBLIC}/tollgate/v1/balance");
    let res = with_proof(
        gw,
        Method::GET,
        "/tollgate/v1/balance",
        &token,
        &key.proof("GET", &balance_url, Some(&token), now_secs()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let res = gw.balance(&token).await;
    assert_eq!(res["code"], "dpop_proof_required", "{res}");
    let token_url = format!("{PUBLIC}/tollgate/v1/token");
    let res = with_proof(
        gw,
        Method::POST,
        "/tollgate/v1/token",
        &token,
        &key.proof("POST", &token_url, Some(&token), now_secs()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    let renewed: Value = res.json().await.unwrap();
    assert_eq!(renewed["cnf"]["jkt"], key.thumbprint());
    let renewed = renewed["access_token"].as_str().unwrap();
    let res = with_proof(
        gw,
        Method::GET,
        "/v1/echo",
        renewed,
        &key.proof("GET", &url, Some(renewed), now_secs()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    served += 1;
    served
}

async fn check_ledger(gw: &TestGateway, served: u32) {
    let events = gw.paywall.store().usage_events().await.unwrap();
    let charges: Vec<_> = events.iter().filter(|e| e.route == "echo").collect();
    assert_eq!(charges.len(), served as usize);
    assert!(charges
        .iter()
        .all(|e| e.amount_minor == 10_000 && e.payer == "alice"));
}

#[tokio::test]
async fn bound_tokens_need_a_fresh_proof_by_their_key_embedded_store() {
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(dpop_gateway("optional"), &wallet).await;
    let served = exercise(&gw, &wallet, &DpopKey::ed25519()).await;
    check_ledger(&gw, served).await;
    // Optional: a top-up without a proof still gets a bearer token, which works as before.
    let res = topup(&gw, &wallet, "bob", None).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("cnf").is_none());
    let res = gw
        .token_get("/v1/echo", body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    // ... but not as a DPoP token.
    let bearer = body["access_token"].as_str().unwrap();
    let res = with_proof(&gw, Method::GET, "/v1/echo", bearer, "x")
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(res).await.1, "token_invalid");
}

#[tokio::test]
async fn bound_tokens_need_a_fresh_proof_by_their_key_on_redis_es256() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(dpop_gateway("optional").redis(&redis), &wallet).await;
    let served = exercise(&gw, &wallet, &DpopKey::es256()).await;
    check_ledger(&gw, served).await;
}

#[tokio::test]
async fn required_binds_every_token_and_refuses_bearer_ones() {
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(dpop_gateway("required"), &wallet).await;
    // A top-up without a proof is refused before anything is credited: the same receipt with
    // a proof then credits once.
    let mut c = wallet.claims("m", "carol", "1");
    c["kind"] = "topup".into();
    let receipt = wallet.sign(&c);
    let (status, code, _, challenge) = refusal(topup_with(&gw, &receipt, None).await).await;
    assert_eq!((status, code.as_str()), (401, "dpop_proof_required"));
    assert_eq!(challenge, "DPoP algs=\"EdDSA ES256\"");
    let key = DpopKey::es256();
    let res = topup_with(&gw, &receipt, Some(&key)).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["credited"].as_str(), body["duplicate"].as_bool()),
        (Some("1"), Some(false))
    );
    assert_eq!(body["token_type"], "DPoP");
    // A bearer token (issued before the switch) is refused; so is one renewed without a proof.
    let old = gw.paywall.issue_token("carol");
    let (status, code, ..) = refusal(gw.token_get("/v1/echo", &old).await).await;
    assert_eq!((status, code.as_str()), (401, "dpop_proof_required"));
    let res = gw
        .with_token(Method::POST, "/tollgate/v1/token", &old)
        .send()
        .await
        .unwrap();
    assert_eq!(refusal(res).await.1, "dpop_proof_required");
    // The catalog says so.
    let catalog: Value = gw.get_json("/.well-known/tollgate").await;
    let dpop = catalog["paymentMethods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["scheme"] == "dpop")
        .unwrap()
        .clone();
    assert_eq!(dpop["binding"], "required");
    check_ledger(&gw, 0).await;
}

#[tokio::test]
async fn a_proof_spent_at_one_replica_is_refused_at_the_other() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let a = start(dpop_gateway("optional").redis(&redis), &wallet).await;
    let b = start(dpop_gateway("optional").redis(&redis), &wallet).await;
    let key = DpopKey::ed25519();
    let body: Value = topup(&a, &wallet, "alice", Some(&key))
        .await
        .json()
        .await
        .unwrap();
    let token = body["access_token"].as_str().unwrap();
    let url = format!("{PUBLIC}/v1/echo");
    // The same proof sent to both replicas at once: exactly one serves it.
    let proof = key.proof("GET", &url, Some(token), now_secs());
    let (ra, rb) = tokio::join!(
        with_proof(&a, Method::GET, "/v1/echo", token, &proof).send(),
        with_proof(&b, Method::GET, "/v1/echo", token, &proof).send()
    );
    let mut statuses = [ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401]);
    // A fresh proof works at either.
    let res = with_proof(
        &b,
        Method::GET,
        "/v1/echo",
        token,
        &key.proof("GET", &url, Some(token), now_secs()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    check_ledger(&a, 2).await;
}

#[tokio::test]
async fn off_ignores_proofs_at_the_token_endpoints() {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let key = DpopKey::ed25519();
    let res = topup(&gw, &wallet, "dave", Some(&key)).await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("cnf").is_none());
}

#[tokio::test]
async fn over_mcp_the_proof_is_for_the_mcp_request() {
    let wallet = TestIssuer::ed25519("wallet");
    let gw = start(dpop_gateway("optional"), &wallet).await;
    let key = DpopKey::ed25519();
    let body: Value = topup(&gw, &wallet, "erin", Some(&key))
        .await
        .json()
        .await
        .unwrap();
    let token = body["access_token"].as_str().unwrap();
    let call = |proof: String| {
        with_proof(&gw, Method::POST, "/tollgate/v1/mcp", token, &proof)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "balance", "arguments": {}}})
                    .to_string(),
            )
            .send()
    };
    let mcp_url = format!("{PUBLIC}/tollgate/v1/mcp");
    let ok: Value = call(key.proof("POST", &mcp_url, Some(token), now_secs()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ok["result"]["structuredContent"]["balances"]["USD"]["available"], "1",
        "{ok}"
    );
    // A proof for the endpoint the tool reaches is not one for the request that was sent.
    let inner_url = format!("{PUBLIC}/tollgate/v1/balance");
    let refused: Value = call(key.proof("GET", &inner_url, Some(token), now_secs()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let problem = &refused["error"]["data"]["problem"];
    assert_eq!(problem["code"], "dpop_proof_invalid", "{refused}");
    assert_eq!(problem["reason"], "proof_method", "{refused}");
}

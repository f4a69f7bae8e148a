//! The gateway's life end to end over HTTP: issuer keys (JWKS fetched, refetched on a new `kid`,
//! rate-limited; PEM files), graceful shutdown and client disconnects settling in-flight
//! requests, request ids, and an agent whose wallet waits for its owner's approval.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::*;

#[path = "gateway/common.rs"]
mod common;
use common::*;

#[tokio::test]
async fn jwks_issuer_is_fetched_and_refetched_on_new_kid() {
    let redis = RedisServer::start();
    let up = upstream().await;
    // A wallet whose JWKS can change (key rotation).
    let first = TestIssuer::ed25519_kid("wallet-jwks", "k1");
    let second = TestIssuer::ed25519_kid("wallet-jwks", "k2");
    let jwks = Arc::new(Mutex::new(
        serde_json::to_value(first.signer.jwks()).unwrap(),
    ));
    let (issuer_srv, hits) = jwks_server(jwks.clone()).await;
    let gw = gateway()
        .issuer_jwks("wallet-jwks", &format!("{}/jwks.json", issuer_srv.url()))
        .redis(&redis)
        .top("[receipts]\njwks_min_refetch_secs = 0")
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    assert_eq!(
        gw.pay_get("/v1/echo", &first.receipt("m", "a", PRICE))
            .await
            .status(),
        200
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Rotation: the issuer now publishes k2; a receipt with kid k2 triggers one refetch.
    *jwks.lock().unwrap() = serde_json::to_value(second.signer.jwks()).unwrap();
    assert_eq!(
        gw.pay_get("/v1/echo", &second.receipt("m", "a", PRICE))
            .await
            .status(),
        200
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // An unknown kid is refused.
    let stranger = TestIssuer::ed25519_kid("wallet-jwks", "k9");
    assert_eq!(
        code_of(
            gw.pay_get("/v1/echo", &stranger.receipt("m", "a", PRICE))
                .await
        )
        .await,
        (402, "receipt_unknown_key".into())
    );
}

#[tokio::test]
async fn jwks_refetch_is_rate_limited() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let wallet = TestIssuer::ed25519_kid("w", "k1");
    let jwks = Arc::new(Mutex::new(
        serde_json::to_value(wallet.signer.jwks()).unwrap(),
    ));
    let (srv, hits) = jwks_server(jwks).await;
    let gw = gateway()
        .issuer_jwks("w", &format!("{}/jwks.json", srv.url()))
        .redis(&redis)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    for i in 0..20 {
        let random_kid = TestIssuer::ed25519_kid("w", &format!("random-{i}"));
        let res = gw
            .pay_get("/v1/echo", &random_kid.receipt("m", "a", PRICE))
            .await;
        assert_eq!(code_of(res).await, (402, "receipt_unknown_key".into()));
    }
    // One fetch at start-up, at most one refetch in the 30 s window.
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "{}",
        hits.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_settles_in_flight_requests() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let receipt = wallet.receipt("m", "a", PRICE);
    let http = gw.http.clone();
    let url = gw.url("/v1/echo?delay_ms=500");
    let in_flight = tokio::spawn(async move {
        http.get(url)
            .header("authorization", format!("Payment {receipt}"))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let store = gw.paywall.store().clone();
    gw.shutdown().await;
    let res = in_flight.await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("payment-response"));
    assert_eq!(store.usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn client_disconnect_before_the_answer_releases_the_receipt() {
    let redis = RedisServer::start();
    let (wallet, _up, gw) = setup(&redis).await;
    let receipt = wallet.receipt("m", "quitter", PRICE);
    // The client gives up after 200 ms; the upstream would answer after 1.5 s.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gave_up = quick
        .get(gw.url("/v1/echo?delay_ms=1500"))
        .header("authorization", format!("Payment {receipt}"))
        .send()
        .await;
    assert!(gave_up.is_err());
    // The hold is released in the background as soon as the request is dropped.
    let mut status = 0;
    for _ in 0..50 {
        status = gw.pay_get("/v1/echo", &receipt).await.status().as_u16();
        if status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1, "only the served request is charged");
}

#[tokio::test]
async fn pem_file_issuer_keys() {
    use p256::pkcs8::EncodePublicKey;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // An ES256 issuer configured by a PEM (SPKI) public key file.
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem_path = dir.path().join("issuer.pem");
    std::fs::write(
        &pem_path,
        sk.public_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    let key = {
        use p256::pkcs8::EncodePrivateKey;
        tollgate_middleware::jsonwebtoken::EncodingKey::from_ec_pem(
            sk.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
        )
        .unwrap()
    };
    let jwk: tollgate_middleware::jwk::Jwk =
        serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
    let signer = tollgate_middleware::issuer::ReceiptSigner::new(
        "pem-wallet",
        Some("pk".into()),
        tollgate_middleware::jsonwebtoken::Algorithm::ES256,
        key,
        jwk,
    );
    let issuer = TestIssuer {
        signer,
        id: "pem-wallet".into(),
    };
    let gw = gateway()
        .issuer_toml(&format!(
            "[[issuers]]\nid = \"pem-wallet\"\npem_file = \"{}\"\nkid = \"pk\"\n",
            pem_path.display()
        ))
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    assert_eq!(
        gw.pay_get("/v1/echo", &issuer.receipt("m", "a", PRICE))
            .await
            .status(),
        200
    );
    let other = TestIssuer::es256("pem-wallet");
    assert_eq!(
        code_of(
            gw.pay_get("/v1/echo", &other.receipt("m", "a", PRICE))
                .await
        )
        .await,
        (402, "receipt_unknown_key".into())
    );
}

#[tokio::test]
async fn an_agent_whose_wallet_needs_confirmation_pays_once_the_owner_approves() {
    use example_wallet::{Authorization, Wallet};
    let up = upstream().await;
    // The wallet serves its JWKS and waits for a human on every payment.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wallet_url = format!("http://{}", l.local_addr().unwrap());
    let wallet = Wallet::generate(wallet_url.clone(), example_wallet::default_cap())
        .unwrap()
        .with_authorization(Authorization::Confirm);
    tokio::spawn(async move { axum::serve(l, wallet.app()).await });
    let gw = gateway()
        .issuer_jwks(&wallet_url, &format!("{wallet_url}/.well-known/jwks.json"))
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    let agent = example_agent::Agent::new(wallet_url.clone(), "careful-agent");
    let url = gw.url("/v1/echo");
    let call =
        tokio::spawn(async move { agent.call(reqwest::Method::GET, &url, None).await.unwrap() });
    // The owner looks at what is waiting and approves it.
    let http = reqwest::Client::new();
    let id = loop {
        let waiting: Value = http
            .get(format!("{wallet_url}/v1/approvals"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = waiting["waiting"][0]["id"].as_str() {
            assert_eq!(waiting["waiting"][0]["amount"], "0.01");
            break id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let res = http
        .post(format!("{wallet_url}/v1/approvals/{id}"))
        .json(&serde_json::json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let out = call.await.unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.payment.unwrap()["payer"], "careful-agent");
}

/// An issuer's JWKS endpoint serving whatever `jwks` holds, counting fetches.
async fn jwks_server(jwks: Arc<Mutex<Value>>) -> (TestUpstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let v = jwks.lock().unwrap().clone();
            async move { axum::Json(v) }
        }),
    );
    (serve_router(router).await, hits)
}

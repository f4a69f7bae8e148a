//! The paying side end to end: `tollgate_middleware::client::PayingClient` against a real
//! gateway, paying receipt routes through a real demo wallet (served in-process) and x402
//! `exact` routes with a local key (the stand-in facilitator plays the chain).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use tollgate_e2e::facilitator::facilitator;
use tollgate_e2e::*;
use tollgate_middleware::client::{
    ClientError, ExactWallet, OfferRefusal, PayingClient, Policy, ReceiptWallet, WalletError,
};
use tollgate_middleware::x402::signer::LocalSigner;

const NETWORK: &str = "eip155:84532";
const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// A demo wallet on `127.0.0.1:0`: its URL (also its issuer id).
async fn wallet(authorization: example_wallet::Authorization) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let w = example_wallet::Wallet::generate(url.clone(), example_wallet::default_cap())
        .unwrap()
        .with_authorization(authorization);
    tokio::spawn(async move { axum::serve(l, w.app()).await });
    url
}

fn auto_pay() -> example_wallet::Authorization {
    example_wallet::Authorization::AutoPay {
        max_per_payment: example_wallet::default_cap(),
    }
}

/// An upstream that answers 503 to its first `failures` requests, then 200; counts them all.
async fn flaky_upstream(failures: usize) -> (TestUpstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new().route(
        "/v1/data",
        any(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) < failures {
                    (StatusCode::SERVICE_UNAVAILABLE, "try again")
                } else {
                    (StatusCode::OK, "paid content")
                }
            }
        }),
    );
    (serve_router(router).await, hits)
}

async fn receipt_gateway(wallet_url: &str, up: &TestUpstream, price: &str) -> TestGateway {
    gateway()
        .issuer_jwks(wallet_url, &format!("{wallet_url}/.well-known/jwks.json"))
        .route(paid("data", "/v1/data", up, price))
        .start()
        .await
}

fn receipt_client(wallet_url: &str, policy: Policy) -> PayingClient {
    PayingClient::new(reqwest::Client::new(), policy)
        .wallet(ReceiptWallet::new(wallet_url, "agent-007"))
}

#[tokio::test]
async fn pays_a_receipt_route_through_the_wallet_once() {
    let w = wallet(auto_pay()).await;
    let (up, hits) = flaky_upstream(0).await;
    let gw = receipt_gateway(&w, &up, "0.01").await;
    let client = receipt_client(&w, Policy::new().max_per_call("USD", 10_000));
    let paid = client.get(&gw.url("/v1/data")).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    let pr = payment_response(&paid.response);
    assert_eq!(pr["success"], true);
    let payment = paid.payment.unwrap();
    assert_eq!(payment.offer.scheme, "tollgate-receipt");
    assert_eq!(payment.offer.amount, 10_000);
    assert_eq!(payment.offer.pay_to, "m");
    assert_eq!(paid.response.text().await.unwrap(), "paid content");
    assert_eq!(client.spent("USD"), 10_000);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payer, "agent-007");
    assert_eq!(events[0].amount_minor, 10_000);
    // A free answer is passed through without paying.
    let free_gw = gateway().route(free("f", "/v1/data", &up)).start().await;
    let paid = client.get(&free_gw.url("/v1/data")).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert!(paid.payment.is_none());
    assert_eq!(client.spent("USD"), 10_000);
}

#[tokio::test]
async fn a_failed_paid_attempt_is_retried_with_the_same_receipt() {
    let w = wallet(auto_pay()).await;
    let (up, hits) = flaky_upstream(2).await;
    let gw = receipt_gateway(&w, &up, "0.01").await;
    // Two upstream failures, two retries: the third attempt is served, paid once.
    let client = receipt_client(&w, Policy::new().max_per_call("USD", 10_000)).retries(2);
    let paid = client.get(&gw.url("/v1/data")).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert_eq!(client.spent("USD"), 10_000);
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    // Without retries the caller gets the 503 and the credential to send again.
    let (up, hits) = flaky_upstream(1).await;
    let gw = receipt_gateway(&w, &up, "0.01").await;
    let client = receipt_client(&w, Policy::new().max_per_call("USD", 10_000));
    let url = gw.url("/v1/data");
    let paid = client.get(&url).await.unwrap();
    assert_eq!(paid.response.status(), 503);
    let payment = paid.payment.unwrap();
    let again = client.http().get(&url).build().unwrap();
    let paid = client.send_with(again, payment).await.unwrap();
    assert_eq!(paid.response.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(client.spent("USD"), 10_000);
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn refuses_an_over_priced_route_without_paying() {
    let w = wallet(auto_pay()).await;
    let (up, hits) = flaky_upstream(0).await;
    let gw = receipt_gateway(&w, &up, "0.05").await;
    let client = receipt_client(&w, Policy::new().max_per_call("USD", 10_000));
    let err = client.get(&gw.url("/v1/data")).await.unwrap_err();
    let ClientError::Refused(reasons) = err else {
        panic!("{err}")
    };
    assert_eq!(
        reasons,
        [
            OfferRefusal::PriceTooHigh {
                asset: "USD".into(),
                amount: 50_000,
                max: 10_000
            },
            OfferRefusal::NotAPayment {
                kind: "topup".into()
            },
        ]
    );
    assert_eq!(client.spent("USD"), 0);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert!(gw.paywall.store().usage_events().await.unwrap().is_empty());
    // A merchant not on the allow list: refused too.
    let client = receipt_client(
        &w,
        Policy::new()
            .max_per_call("USD", 100_000)
            .allow_merchant("someone-else"),
    );
    let err = client.get(&gw.url("/v1/data")).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r[0] == OfferRefusal::MerchantNotAllowed { pay_to: "m".into() }),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wallet_waiting_for_approval_is_a_typed_error_and_costs_nothing() {
    let w = wallet(example_wallet::Authorization::Confirm).await;
    let (up, hits) = flaky_upstream(0).await;
    let gw = receipt_gateway(&w, &up, "0.01").await;
    let client = receipt_client(&w, Policy::new().max_per_call("USD", 10_000));
    let err = client.get(&gw.url("/v1/data")).await.unwrap_err();
    let ClientError::Wallet(WalletError::Pending { id, poll }) = err else {
        panic!("{err}")
    };
    assert!(!id.is_empty());
    assert_eq!(poll.unwrap(), format!("{w}/v1/pending/{id}"));
    assert_eq!(client.spent("USD"), 0);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

async fn exact_gateway(f_url: &str, up: &TestUpstream) -> TestGateway {
    gateway()
        .top(&format!("[x402]\nfacilitator_url = \"{f_url}\"\n"))
        .route(paid("data", "/v1/data", up, "0.01").with(&format!(
            "x402_settlement = \"before\"\n[[routes.x402]]\nnetwork = \"{NETWORK}\"\nasset = \"{ASSET}\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"{PAY_TO}\"\namount = \"10000\"\nmax_timeout_secs = 120"
        )))
        .start()
        .await
}

#[tokio::test]
async fn pays_an_exact_route_and_stops_when_the_budget_is_spent() {
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = flaky_upstream(0).await;
    let gw = exact_gateway(&f.url(), &up).await;
    let signer = LocalSigner::random();
    let payer = format!("{:#x}", signer.address());
    // Lower-case asset and merchant: addresses compare case-insensitively.
    let policy = Policy::new()
        .max_per_call(&ASSET.to_lowercase(), 10_000)
        .budget(ASSET, 30_000)
        .allow_merchant(&PAY_TO.to_lowercase());
    let client = PayingClient::new(reqwest::Client::new(), policy).wallet(ExactWallet::new(signer));
    let url = gw.url("/v1/data");
    for n in 1..=3u128 {
        let paid = client.get(&url).await.unwrap();
        assert_eq!(paid.response.status(), 200);
        let pr = payment_response(&paid.response);
        assert_eq!(pr["success"], true);
        assert_eq!(pr["payer"], payer.as_str());
        assert_eq!(pr["network"], NETWORK);
        let payment = paid.payment.unwrap();
        // The receipt offer comes first in `accepts`, but only `exact` has a wallet.
        assert_eq!(payment.offer.scheme, "exact");
        assert_eq!(client.spent(ASSET), 10_000 * n);
    }
    assert_eq!(f.settled(), 3);
    // The budget is spent to the unit: the fourth call is refused before paying.
    let err = client.get(&url).await.unwrap_err();
    let ClientError::Refused(reasons) = err else {
        panic!("{err}")
    };
    assert!(reasons.contains(&OfferRefusal::BudgetExhausted {
        asset: ASSET.into(),
        amount: 10_000,
        left: 0
    }));
    assert!(reasons.contains(&OfferRefusal::UnknownScheme {
        scheme: "tollgate-receipt".into()
    }));
    assert_eq!(client.spent(ASSET), 30_000);
    assert_eq!(f.settled(), 3);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| e.payer == payer && e.amount_minor == 10_000));
}

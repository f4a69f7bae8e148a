use super::*;
use crate::clock::ManualClock;
use crate::money::Currency;
use crate::paywall::PAYMENT_RESPONSE;
use crate::price::Price;
use crate::store::SqliteStore;
use crate::x402::tests::offer;
use crate::x402::Facilitator;
use alloy_primitives::{Address, B256};
use async_trait::async_trait;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use k256::ecdsa::SigningKey;
use std::sync::Mutex;

const NOW: i64 = 1_795_370_000;

/// A facilitator that answers from a script (stands in for the chain).
#[derive(Debug, Default)]
struct Scripted {
    settle: Mutex<Vec<Result<OnChain, FacilitatorError>>>,
    calls: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl Facilitator for Scripted {
    async fn verify(&self, _: &Value, _: &Value) -> Result<(), FacilitatorError> {
        self.calls.lock().unwrap().push("verify");
        Ok(())
    }
    async fn settle(&self, _: &Value, _: &Value) -> Result<OnChain, FacilitatorError> {
        self.calls.lock().unwrap().push("settle");
        self.settle.lock().unwrap().pop().unwrap_or(Ok(OnChain {
            transaction: "0xtx".into(),
            network: "eip155:84532".into(),
        }))
    }
    async fn supported(&self) -> Result<Vec<(u64, String, String)>, FacilitatorError> {
        Ok(vec![])
    }
}

fn setup(mode: SettlementMode) -> (Paywall, Arc<PricedRoute>, Arc<Scripted>) {
    let clock = Arc::new(ManualClock::at_ms(NOW * 1000));
    let paywall = Paywall::builder("m", vec![7u8; 32])
        .clock(clock.clone())
        .store(Arc::new(SqliteStore::memory(clock).unwrap()))
        .build()
        .unwrap();
    let f = Arc::new(Scripted::default());
    let usd = Currency::try_new("USD", 6).unwrap();
    let route = PricedRoute::new(
        "r",
        Price::fixed(Money {
            amount: "0.01".parse().unwrap(),
            currency: usd,
        })
        .unwrap(),
    )
    .x402(ExactRoute {
        offers: vec![offer()],
        mode,
        facilitator: f.clone(),
        valid_before_margin_secs: 6,
        upto: Vec::new(),
    });
    (paywall, Arc::new(route), f)
}

fn header(nonce: u8, value: u64) -> HeaderMap {
    let o = offer();
    let key = SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
    let p = crate::x402::tests::sign(
        &key,
        &o,
        o.pay_to,
        value,
        0,
        u64::try_from(NOW).unwrap() + 60,
        B256::repeat_byte(nonce),
    );
    let mut h = HeaderMap::new();
    h.insert(
        "payment-signature",
        HeaderValue::from_str(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            p.to_string(),
        ))
        .unwrap(),
    );
    h
}

/// A GET of `/r` with `h`, admitted.
async fn admitted(paywall: &Paywall, route: &Arc<PricedRoute>, h: &HeaderMap) -> Admission {
    let uri: Uri = "/r".parse().unwrap();
    paywall
        .admit(route, &Method::GET, &uri, h)
        .await
        .unwrap()
        .unwrap()
}

/// A GET of `/r` with `h`, refused: the answer.
async fn refused(paywall: &Paywall, route: &Arc<PricedRoute>, h: &HeaderMap) -> Refusal {
    let uri: Uri = "/r".parse().unwrap();
    paywall
        .admit(route, &Method::GET, &uri, h)
        .await
        .unwrap_err()
}

fn decode(v: &HeaderValue) -> Value {
    let b = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v.to_str().unwrap(),
    )
    .unwrap();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test]
async fn before_mode_settles_then_records_one_event() {
    let (paywall, route, f) = setup(SettlementMode::Before);
    let h = header(1, 10000);
    let a = admitted(&paywall, &route, &h).await;
    assert_eq!(*f.calls.lock().unwrap(), ["settle"]);
    let payer = format!(
        "{:#x}",
        Address::from_public_key(
            SigningKey::from_bytes(&[5u8; 32].into())
                .unwrap()
                .verifying_key()
        )
    );
    assert_eq!(a.payment().payer, payer);
    assert_eq!(a.payment().charge.to_string(), "0.01 USDC");
    // Even a 500 is recorded: the transfer is final.
    let s = a.settle(Some(500), None).await.unwrap();
    let pr = decode(&s.payment_response.unwrap());
    assert_eq!(pr["success"], true);
    assert_eq!(pr["transaction"], "0xtx");
    assert_eq!(pr["payer"], payer.as_str());
    let events = paywall.store().usage_events().await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].amount_minor, 10000);
    assert_eq!(events[0].currency, "USDC");
    assert_eq!(events[0].upstream_status, 500);
    // The same authorization again: refused, and the facilitator is not asked.
    let res = refused(&paywall, &route, &h).await;
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        reason_of(&res).as_deref(),
        Some("invalid_transaction_state")
    );
    assert_eq!(f.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn before_mode_never_serves_on_a_failed_settlement() {
    let (paywall, route, f) = setup(SettlementMode::Before);
    let uri: Uri = "/r".parse().unwrap();
    let h = header(2, 10000);
    for (answer, status, reason) in [
        (
            FacilitatorError::Unavailable("timeout".into()),
            503,
            "unexpected_settle_error",
        ),
        (FacilitatorError::Pending, 503, "settlement_pending"),
        (
            FacilitatorError::Refused {
                reason: "insufficient_funds".into(),
            },
            402,
            "insufficient_funds",
        ),
    ] {
        f.settle.lock().unwrap().push(Err(answer));
        let refused = refused(&paywall, &route, &h).await;
        assert_eq!(refused.status().as_u16(), status);
        assert_eq!(reason_of(&refused).as_deref(), Some(reason));
        let head = super::super::Head {
            method: &Method::GET,
            uri: &uri,
            headers: &h,
        };
        let res = paywall.render(&refused, Some((&route, head)));
        assert_eq!(res.status().as_u16(), status);
        let pr = decode(res.headers().get(PAYMENT_RESPONSE).unwrap());
        assert_eq!(pr["success"], false);
        assert_eq!(pr["errorReason"], reason);
    }
    // Released each time: the same authorization settles once the facilitator does.
    let a = admitted(&paywall, &route, &h).await;
    a.settle(Some(200), None).await.unwrap();
    assert_eq!(paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn after_mode_settles_only_2xx_non_head() {
    let (paywall, route, f) = setup(SettlementMode::After);
    let uri: Uri = "/r".parse().unwrap();
    let h = header(3, 10000);
    for (method, status) in [
        (Method::GET, 302),
        (Method::GET, 404),
        (Method::GET, 500),
        (Method::HEAD, 200),
    ] {
        let a = paywall
            .admit(&route, &method, &uri, &h)
            .await
            .unwrap()
            .unwrap();
        let s = a.settle(Some(status), None).await.unwrap();
        assert!(s.payment_response.is_none());
    }
    let a = admitted(&paywall, &route, &h).await;
    a.settle(None, None).await.unwrap();
    assert_eq!(paywall.store().usage_events().await.unwrap().len(), 0);
    assert!(!f.calls.lock().unwrap().contains(&"settle"));
    // A failed settlement withholds the 2xx.
    f.settle
        .lock()
        .unwrap()
        .push(Err(FacilitatorError::Unavailable("html".into())));
    let a = admitted(&paywall, &route, &h).await;
    let res = a.settle(Some(200), None).await.unwrap_err();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Then a good one.
    let a = admitted(&paywall, &route, &h).await;
    let s = a.settle(Some(200), None).await.unwrap();
    assert_eq!(decode(&s.payment_response.unwrap())["settlement"], "after");
    assert_eq!(paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn deferred_mode_queues_once_and_settles_in_the_background() {
    use crate::store::JobOutcome;
    use crate::x402::settler::Settler;
    let (paywall, route, f) = setup(SettlementMode::Deferred);
    let uri: Uri = "/r".parse().unwrap();
    let h = header(7, 10000);
    let a = admitted(&paywall, &route, &h).await;
    assert!(
        f.calls.lock().unwrap().is_empty(),
        "nothing asked before serving"
    );
    let s = a.settle(Some(200), None).await.unwrap();
    let pr = decode(&s.payment_response.unwrap());
    assert_eq!(pr["settlement"], "deferred");
    assert_eq!(pr["transaction"], "");
    let store = paywall.store().clone();
    let mut settler = Settler::new(store.clone(), f.clone());
    settler.retry_base = std::time::Duration::ZERO;
    settler.max_attempts = 2;
    // First attempt: no usable answer -> retried; second: settled.
    f.settle
        .lock()
        .unwrap()
        .push(Err(FacilitatorError::Unavailable("x".into())));
    assert_eq!(settler.run_once().await.unwrap(), 1);
    assert_eq!(settler.run_once().await.unwrap(), 1);
    assert_eq!(settler.run_once().await.unwrap(), 0);
    assert_eq!(*f.calls.lock().unwrap(), ["settle", "settle"]);
    assert_eq!(store.usage_events().await.unwrap().len(), 1);
    // A refusal fails the job and blocks the payer until resolved.
    let a = paywall
        .admit(&route, &Method::GET, &uri, &header(8, 10000))
        .await
        .unwrap()
        .unwrap();
    a.settle(Some(200), None).await.unwrap();
    f.settle
        .lock()
        .unwrap()
        .push(Err(FacilitatorError::Refused {
            reason: "insufficient_funds".into(),
        }));
    settler.run_once().await.unwrap();
    let failed = store.failed_settlements().await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error, "insufficient_funds");
    let res = paywall
        .admit(&route, &Method::GET, &uri, &header(9, 10000))
        .await
        .unwrap_err();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(store.resolve_settlement(&failed[0].id).await.unwrap());
    assert!(!store.resolve_settlement(&failed[0].id).await.unwrap());
    assert!(paywall
        .admit(&route, &Method::GET, &uri, &header(9, 10000))
        .await
        .is_ok());
    // Finishing an unknown job is harmless.
    store
        .finish_settlement(&failed[0], &JobOutcome::Done)
        .await
        .unwrap();
}

#[tokio::test]
async fn local_failures_refuse_before_any_io() {
    let (paywall, route, f) = setup(SettlementMode::Before);
    let uri: Uri = "/r".parse().unwrap();
    let h = header(4, 9999);
    let refused = refused(&paywall, &route, &h).await;
    assert_eq!(refused.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        reason_of(&refused).as_deref(),
        Some("invalid_exact_evm_payload_authorization_value")
    );
    let head = super::super::Head {
        method: &Method::GET,
        uri: &uri,
        headers: &h,
    };
    let res = paywall.render(&refused, Some((&route, head)));
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    let body: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["code"], "x402_payment_invalid");
    // The 402 offers the exact option beside the receipt one.
    let schemes: Vec<_> = body["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["scheme"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(schemes, ["tollgate-receipt", "exact"]);
    assert!(f.calls.lock().unwrap().is_empty());
}

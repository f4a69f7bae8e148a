//! Run with: cargo run -p example-embed [-- --listen ADDR]   (default 127.0.0.1:3000)
//!
//! An axum app that embeds `PaymentLayer` directly (no gateway): `GET /free` is free,
//! `GET /answer` costs 0.01 USD, paid with a receipt from a wallet whose key is generated at
//! start-up. The app prints a ready-made `curl` command carrying a valid receipt.

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Router};
use tollgate_middleware::issuer::{ReceiptClaims, ReceiptSigner};
use tollgate_middleware::{
    Currency, Issuer, IssuerKey, Money, Payment, PaymentLayer, Paywall, Price, PricedRoute,
    ReceiptKind, StaticKeys,
};

/// The app: one free and one paid route.
fn app(paywall: Paywall, price: Price) -> Router {
    Router::new()
        .route(
            "/answer",
            get(|Extension(p): Extension<Payment>| async move {
                format!("42 (paid {} by {})\n", p.charge, p.payer)
            }),
        )
        .route_layer(PaymentLayer::new(
            paywall,
            Arc::new(PricedRoute::new("answer", price)),
        ))
        .route("/free", get(|| async { "free\n" }))
}

/// An axum app embedding Tollgate's PaymentLayer (no gateway): GET /free is free, GET /answer
/// costs 0.01 USD, paid with a receipt from a wallet key generated at start-up. Prints a ready
/// `curl` command carrying a valid receipt.
#[derive(clap::Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    listen: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-embed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let signer = ReceiptSigner::generate_ed25519("demo-wallet", "k1")?;
    let key = IssuerKey::from_jwk(signer.public_jwk())?;
    let secret: [u8; 32] = rand::random();
    let paywall = Paywall::builder("embed-demo", secret.to_vec())
        .issuer(Issuer {
            id: "demo-wallet".into(),
            keys: Arc::new(StaticKeys(vec![key])),
        })
        .build()?;
    let usd = Currency::try_new("USD", 6)?;
    let price = Price::fixed(Money {
        amount: "0.01".parse()?,
        currency: usd,
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let receipt = signer.sign(&ReceiptClaims {
        iss: "demo-wallet".into(),
        sub: "agent-1".into(),
        aud: "embed-demo".into(),
        jti: format!("demo-{now}"),
        iat: now,
        exp: now + 600,
        amount: "0.01".into(),
        currency: "USD".into(),
        kind: ReceiptKind::Payment,
        challenge: None,
    })?;
    let at = listener.local_addr()?;
    println!("listening on http://{at}");
    println!("try:  curl -i http://{at}/answer");
    println!("then: curl -i -H 'Authorization: Payment {receipt}' http://{at}/answer");
    axum::serve(listener, app(paywall, price)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn unpaid_is_402_and_paid_is_200_once() {
        let signer = ReceiptSigner::generate_ed25519("w", "k1").unwrap();
        let key = IssuerKey::from_jwk(signer.public_jwk()).unwrap();
        let paywall = Paywall::builder("m", vec![1u8; 32])
            .issuer(Issuer {
                id: "w".into(),
                keys: Arc::new(StaticKeys(vec![key])),
            })
            .build()
            .unwrap();
        let usd = Currency::try_new("USD", 6).unwrap();
        let price = Price::fixed(Money {
            amount: "0.01".parse().unwrap(),
            currency: usd,
        })
        .unwrap();
        let app = app(paywall, price);
        let res = app
            .clone()
            .oneshot(Request::get("/answer").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
        let free = app
            .clone()
            .oneshot(Request::get("/free").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(free.status(), StatusCode::OK);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let receipt = signer
            .sign(&ReceiptClaims {
                iss: "w".into(),
                sub: "a".into(),
                aud: "m".into(),
                jti: "j1".into(),
                iat: now,
                exp: now + 60,
                amount: "0.01".into(),
                currency: "USD".into(),
                kind: ReceiptKind::Payment,
                challenge: None,
            })
            .unwrap();
        let paid = || {
            Request::get("/answer")
                .header("authorization", format!("Payment {receipt}"))
                .body(Body::empty())
                .unwrap()
        };
        let res = app.clone().oneshot(paid()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("payment-response"));
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"42 (paid 0.01 USD by a)\n");
        let again = app.oneshot(paid()).await.unwrap();
        assert_eq!(again.status(), StatusCode::PAYMENT_REQUIRED);
    }
}

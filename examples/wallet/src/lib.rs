//! A demo wallet: holds an issuer key, signs payment receipts for its agent, serves its JWKS.
//!
//! - `GET  /.well-known/jwks.json` -- the public keys (the gateway's `jwks_url`);
//! - `POST /v1/receipts` -- `{payer, merchant, amount, currency, challenge?, kind?}` -> `{receipt}`
//!   (`kind`: `payment`, the default, or `topup`).
//!   Refuses amounts above the wallet's per-payment cap (auto-pay under a threshold).
//!
//! A real wallet would also debit the payer's funds; this one only signs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use tollgate_middleware::issuer::{ReceiptClaims, ReceiptSigner};
use tollgate_middleware::{Amount, ReceiptKind};

/// The wallet's state.
#[derive(Debug, Clone)]
pub struct Wallet {
    signer: ReceiptSigner,
    max_per_payment: Amount,
    receipt_ttl_secs: i64,
}

impl Wallet {
    /// A wallet issuing as `issuer` with a fresh Ed25519 key, auto-paying up to `max_per_payment`.
    pub fn generate(issuer: impl Into<String>, max_per_payment: Amount) -> Result<Self, String> {
        Ok(Wallet {
            signer: ReceiptSigner::generate_ed25519(issuer, "wallet-key-1")?,
            max_per_payment,
            receipt_ttl_secs: 300,
        })
    }

    /// The signer (issuer id, public key).
    pub fn signer(&self) -> &ReceiptSigner {
        &self.signer
    }

    /// Sign a receipt now.
    pub fn sign(&self, req: &ReceiptRequest) -> Result<String, String> {
        let amount: Amount = req.amount.parse().map_err(|e| format!("amount: {e}"))?;
        if amount > self.max_per_payment {
            return Err(format!(
                "{} is above this wallet's per-payment cap of {}",
                amount, self.max_per_payment
            ));
        }
        let now = now_secs();
        let claims = ReceiptClaims {
            iss: self.signer.issuer().to_owned(),
            sub: req.payer.clone(),
            aud: req.merchant.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            iat: now,
            exp: now + self.receipt_ttl_secs,
            amount: amount.to_string(),
            currency: req.currency.clone(),
            kind: req.kind.unwrap_or(ReceiptKind::Payment),
            challenge: req.challenge.clone(),
        };
        self.signer.sign(&claims)
    }

    /// The wallet's HTTP API.
    pub fn app(self) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/receipts", post(receipts))
            .with_state(Arc::new(self))
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A request for a receipt.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceiptRequest {
    /// The agent paying.
    pub payer: String,
    /// The merchant (`payTo` of the offer).
    pub merchant: String,
    /// Decimal amount.
    pub amount: String,
    /// Currency code.
    pub currency: String,
    /// The challenge id from the 402, if any.
    #[serde(default)]
    pub challenge: Option<String>,
    /// `payment` (default) or `topup`.
    #[serde(default)]
    pub kind: Option<ReceiptKind>,
}

async fn jwks(State(w): State<Arc<Wallet>>) -> Json<serde_json::Value> {
    Json(serde_json::to_value(w.signer.jwks()).unwrap_or_default())
}

async fn receipts(State(w): State<Arc<Wallet>>, Json(req): Json<ReceiptRequest>) -> Response {
    match w.sign(&req) {
        Ok(receipt) => Json(json!({"receipt": receipt})).into_response(),
        Err(e) => (StatusCode::FORBIDDEN, Json(json!({"error": e}))).into_response(),
    }
}

/// The default per-payment cap of the demo wallet: 1.00.
pub fn default_cap() -> Amount {
    Amount::try_from_decimal(Decimal::ONE).unwrap_or_default()
}

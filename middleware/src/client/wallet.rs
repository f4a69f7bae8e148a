//! Where credentials come from: the [`Wallet`] trait, a [`ReceiptWallet`] that asks a Tollgate
//! wallet service for a signed receipt, and an [`ExactWallet`] that signs x402 `exact`
//! authorizations with a local key.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::policy::{Offer, RECEIPT_SCHEME};
use crate::clock::{Clock, SystemClock};
use crate::x402::signer::LocalSigner;
use crate::x402::EXACT_SCHEME;

/// The header an x402 v2 payment travels in.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";

/// What the client sends to pay: one header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Header name (`payment-signature`, `authorization`, ...).
    pub header: HeaderName,
    /// Header value.
    pub value: HeaderValue,
}

impl Credential {
    /// A `PAYMENT-SIGNATURE` header carrying `payload` (base64 JSON).
    pub fn payment_signature(payload: &Value) -> Result<Self, WalletError> {
        let value = HeaderValue::from_str(&STANDARD.encode(payload.to_string()))
            .map_err(|_| WalletError::Invalid("payload is not a header value".into()))?;
        Ok(Credential {
            header: HeaderName::from_static(PAYMENT_SIGNATURE),
            value,
        })
    }
}

/// Why a wallet gave no credential.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The wallet's owner must approve this payment first (confirm mode): retry the call once
    /// it is approved; `id` is the pending request.
    #[error("payment {id} is waiting for approval")]
    Pending {
        /// The wallet's pending id.
        id: String,
        /// Where to poll, as the wallet said.
        poll: Option<String>,
    },
    /// The wallet refused to pay (its own limits).
    #[error("wallet refused: {0}")]
    Refused(Value),
    /// The wallet could not be reached or answered nonsense.
    #[error("wallet unavailable: {0}")]
    Unavailable(String),
    /// The offer could not be paid as it stands (missing fields, bad address).
    #[error("offer cannot be paid: {0}")]
    Invalid(String),
}

/// Something that pays one scheme: turns an offer into a credential.
#[async_trait]
pub trait Wallet: Send + Sync + std::fmt::Debug {
    /// The scheme this wallet pays (`tollgate-receipt`, `exact`).
    fn scheme(&self) -> &str;

    /// A credential paying `offer`; `required` is the whole decoded `PAYMENT-REQUIRED`
    /// (for its `resource`).
    async fn pay(&self, offer: &Offer, required: &Value) -> Result<Credential, WalletError>;
}

/// Pays `tollgate-receipt` offers with receipts signed by a wallet service
/// (`POST {url}/v1/receipts`, as the demo wallet in `examples/wallet` serves).
#[derive(Debug, Clone)]
pub struct ReceiptWallet {
    /// HTTP client for the wallet service.
    http: reqwest::Client,
    /// The wallet's base URL.
    url: String,
    /// Who pays (the receipt's payer).
    payer: String,
}

impl ReceiptWallet {
    /// The wallet at `url` paying as `payer`.
    pub fn new(url: impl Into<String>, payer: impl Into<String>) -> Self {
        ReceiptWallet {
            http: reqwest::Client::new(),
            url: url.into().trim_end_matches('/').to_owned(),
            payer: payer.into(),
        }
    }

    /// Use this HTTP client to reach the wallet.
    #[must_use]
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Ask the wallet for a receipt: `Ok(receipt)`, or pending/refused.
    pub async fn receipt(&self, request: &Value) -> Result<String, WalletError> {
        let unavailable = |e: reqwest::Error| WalletError::Unavailable(e.to_string());
        let res = self
            .http
            .post(format!("{}/v1/receipts", self.url))
            .json(request)
            .send()
            .await
            .map_err(unavailable)?;
        let status = res.status();
        let body: Value = res.json().await.map_err(unavailable)?;
        let receipt = body.get("receipt").and_then(Value::as_str);
        match (status.as_u16(), receipt) {
            (200, Some(r)) => Ok(r.to_owned()),
            (202, _) => Err(WalletError::Pending {
                id: body["pending"].as_str().unwrap_or_default().to_owned(),
                poll: body["poll"].as_str().map(|p| format!("{}{p}", self.url)),
            }),
            (400..=499, _) => Err(WalletError::Refused(body)),
            (s, _) => Err(WalletError::Unavailable(format!("wallet answered {s}"))),
        }
    }
}

#[async_trait]
impl Wallet for ReceiptWallet {
    fn scheme(&self) -> &str {
        RECEIPT_SCHEME
    }

    async fn pay(&self, offer: &Offer, required: &Value) -> Result<Credential, WalletError> {
        let extra = &offer.raw["extra"];
        let (Some(price), Some(currency)) = (extra["price"].as_str(), extra["currency"].as_str())
        else {
            return Err(WalletError::Invalid("no extra.price/currency".into()));
        };
        let receipt = self
            .receipt(&json!({
                "payer": self.payer,
                "merchant": offer.pay_to,
                "amount": price,
                "currency": currency,
                "challenge": extra.get("challenge"),
            }))
            .await?;
        Credential::payment_signature(&json!({
            "x402Version": 2,
            "resource": required.get("resource"),
            "accepted": offer.raw,
            "payload": {"receipt": receipt},
        }))
    }
}

/// Pays x402 `exact` offers (EIP-3009 on EVM) with a local key.
#[derive(Debug, Clone)]
pub struct ExactWallet {
    /// The key.
    signer: LocalSigner,
    /// Sets the authorization's validity window.
    clock: Arc<dyn Clock>,
}

impl ExactWallet {
    /// Sign with `signer` on the system clock.
    pub fn new(signer: LocalSigner) -> Self {
        ExactWallet {
            signer,
            clock: Arc::new(SystemClock),
        }
    }

    /// Use this clock for the validity window.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key's address.
    pub fn address(&self) -> alloy_primitives::Address {
        self.signer.address()
    }
}

#[async_trait]
impl Wallet for ExactWallet {
    fn scheme(&self) -> &str {
        EXACT_SCHEME
    }

    async fn pay(&self, offer: &Offer, required: &Value) -> Result<Credential, WalletError> {
        let now = u64::try_from(self.clock.now_secs()).unwrap_or(0);
        let mut payload = self
            .signer
            .pay(&offer.raw, now)
            .map_err(|e| WalletError::Invalid(e.to_string()))?;
        if let Some(resource) = required.get("resource") {
            payload["resource"] = resource.clone();
        }
        Credential::payment_signature(&payload)
    }
}

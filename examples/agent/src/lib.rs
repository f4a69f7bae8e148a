//! A demo agent client: calls an API through `tollgate_middleware::client::PayingClient`; on
//! 402 it picks the receipt offer by policy, asks its wallet for a receipt bound to the challenge
//! (waiting for its owner's approval if the wallet asks for it), retries once with
//! `PAYMENT-SIGNATURE`, and reports what it paid (from `PAYMENT-RESPONSE`).

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use tollgate_middleware::client::{Credential, Offer, PayingClient, Policy, Wallet, WalletError};

/// The scheme of Tollgate receipt offers.
pub const RECEIPT_SCHEME: &str = tollgate_middleware::client::RECEIPT_SCHEME;

/// What one paid call did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Final HTTP status.
    pub status: u16,
    /// Final body.
    pub body: String,
    /// The 402 requirements met first, if any.
    pub required: Option<Value>,
    /// The decoded `PAYMENT-RESPONSE`, if paid.
    pub payment: Option<Value>,
    /// The receipt used, if any.
    pub receipt: Option<String>,
}

/// Decode a base64 JSON header.
pub fn decode_header(v: &str) -> anyhow::Result<Value> {
    let bytes = STANDARD.decode(v.trim()).context("header is not base64")?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// An agent with a wallet.
#[derive(Debug, Clone)]
pub struct Agent {
    /// HTTP client.
    pub http: reqwest::Client,
    /// Base URL of the wallet.
    pub wallet: String,
    /// Payer id.
    pub payer: String,
    /// What the agent pays per call (its wallet applies its owner's limits too).
    pub policy: Policy,
}

/// The agent's wallet as a `client::Wallet`: receipts from the wallet service, waiting for the
/// owner's approval when the wallet asks for it.
#[derive(Debug)]
struct AgentWallet(Agent);

#[async_trait::async_trait]
impl Wallet for AgentWallet {
    fn scheme(&self) -> &str {
        RECEIPT_SCHEME
    }

    async fn pay(&self, offer: &Offer, required: &Value) -> Result<Credential, WalletError> {
        let receipt = self
            .0
            .receipt_for(&offer.raw)
            .await
            .map_err(|e| WalletError::Refused(json!({"error": e.to_string()})))?;
        Credential::payment_signature(&json!({
            "x402Version": 2,
            "resource": required["resource"],
            "accepted": offer.raw,
            "payload": {"receipt": receipt},
        }))
    }
}

impl Agent {
    /// An agent paying as `payer` through the wallet at `wallet`.
    pub fn new(wallet: impl Into<String>, payer: impl Into<String>) -> Self {
        Agent {
            http: reqwest::Client::new(),
            wallet: wallet.into(),
            payer: payer.into(),
            // Up to 1.00 USD (scale 6) a call, the demo wallet's own default cap.
            policy: Policy::new()
                .max_per_call("USD", 1_000_000)
                .schemes([RECEIPT_SCHEME]),
        }
    }

    /// Pay by this policy instead.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Ask the wallet for a receipt answering one offer.
    pub async fn receipt_for(&self, offer: &Value) -> anyhow::Result<String> {
        let extra = &offer["extra"];
        let req = json!({
            "payer": self.payer,
            "merchant": offer["payTo"],
            "amount": extra["price"],
            "currency": extra["currency"],
            "challenge": extra["challenge"],
        });
        self.wallet_receipt(&req).await
    }

    /// Ask the wallet to sign a receipt for `req`. A wallet in confirm mode answers 202: poll
    /// until its owner approves (or denies) the payment, for up to two minutes.
    async fn wallet_receipt(&self, req: &Value) -> anyhow::Result<String> {
        let res = self
            .http
            .post(format!("{}/v1/receipts", self.wallet))
            .json(req)
            .send()
            .await?;
        let mut status = res.status();
        let mut body: Value = res.json().await?;
        if status == reqwest::StatusCode::ACCEPTED {
            let poll = format!(
                "{}{}",
                self.wallet,
                body["poll"].as_str().unwrap_or_default()
            );
            eprintln!(
                "waiting for the wallet's owner to approve the payment ({})",
                body["approve"]
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while status == reqwest::StatusCode::ACCEPTED && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let res = self.http.get(&poll).send().await?;
                status = res.status();
                body = res.json().await?;
            }
        }
        if !status.is_success() || status == reqwest::StatusCode::ACCEPTED {
            bail!("wallet refused: {}", body["error"]);
        }
        body["receipt"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("wallet sent no receipt"))
    }

    /// Buy prepaid credit: a `topup` receipt from the wallet, sent to the gateway's top-up
    /// endpoint. Returns the top-up answer (`access_token`, `balance`, ...).
    pub async fn topup(
        &self,
        topup_url: &str,
        merchant: &str,
        amount: &str,
        currency: &str,
    ) -> anyhow::Result<Value> {
        let req = json!({"payer": self.payer, "merchant": merchant, "amount": amount, "currency": currency, "kind": "topup"});
        let receipt = self.wallet_receipt(&req).await?;
        let res = self
            .http
            .post(topup_url)
            .header("authorization", format!("Payment {receipt}"))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if !status.is_success() {
            bail!("top-up refused: {}", body["code"]);
        }
        Ok(body)
    }

    /// Call with an access token; returns (status, body, decoded `PAYMENT-RESPONSE`).
    pub async fn call_with_token(
        &self,
        method: reqwest::Method,
        url: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, String, Option<Value>)> {
        let mut r = self.http.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await?;
        let status = res.status().as_u16();
        let payment = res
            .headers()
            .get("payment-response")
            .and_then(|v| v.to_str().ok())
            .map(decode_header)
            .transpose()?;
        Ok((status, res.text().await?, payment))
    }

    /// The `PAYMENT-SIGNATURE` value for a receipt answering an offer.
    pub fn payment_signature(offer: &Value, resource: &Value, receipt: &str) -> String {
        let payload = json!({
            "x402Version": 2,
            "resource": resource,
            "accepted": offer,
            "payload": {"receipt": receipt},
        });
        STANDARD.encode(payload.to_string())
    }

    /// Call `url`; pay if asked to.
    pub async fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Outcome> {
        let mut r = self.http.request(method, url);
        if let Some(b) = &body {
            r = r.json(b);
        }
        let client = PayingClient::new(self.http.clone(), self.policy.clone())
            .wallet(AgentWallet(self.clone()));
        let paid = client.send(r.build()?).await?;
        let status = paid.response.status().as_u16();
        let payment = paid
            .response
            .headers()
            .get("payment-response")
            .and_then(|v| v.to_str().ok())
            .map(decode_header)
            .transpose()?;
        let (required, receipt) = match paid.payment {
            Some(p) => {
                let sent = decode_header(p.credential.value.to_str()?)?;
                let receipt = sent["payload"]["receipt"].as_str().map(str::to_owned);
                (Some(p.required), receipt)
            }
            None => (None, None),
        };
        Ok(Outcome {
            status,
            body: paid.response.text().await?,
            required,
            payment,
            receipt,
        })
    }
}

//! A demo wallet: holds an issuer key, signs payment receipts for its agent, serves its JWKS,
//! and applies its owner's authorization model before signing:
//!
//! - [`Authorization::Confirm`] -- every payment waits until a human approves it;
//! - [`Authorization::AutoPay`] -- signs anything up to a per-payment threshold (the default);
//! - [`Authorization::Budget`] -- a per-payment threshold and a budget per rolling window.
//!
//! Endpoints:
//! - `GET  /.well-known/jwks.json` -- the public keys (the gateway's `jwks_url`);
//! - `POST /v1/receipts` -- `{payer, merchant, amount, currency, challenge?, kind?}` ->
//!   200 `{receipt}`, 202 `{pending, poll, approve}` (confirm mode), or 403 `{error, ...}`;
//! - `GET  /v1/pending/{id}` -- 200 `{receipt}` once approved, 202 while waiting, 403 if denied;
//! - `POST /v1/approvals/{id}` -- `{"approve": true|false}`: the human's decision;
//! - `GET  /v1/approvals` -- what is waiting for a decision.
//!
//! A real wallet would also debit the payer's funds; this one only signs. The gateway enforces
//! its own limits too (rate limits; mandates are a later release) -- a wallet's budget protects
//! the owner even against merchants that do not.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use tollgate_middleware::issuer::{ReceiptClaims, ReceiptSigner};
use tollgate_middleware::{Amount, ReceiptKind};

/// How the wallet's owner lets the agent spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Every payment waits for a human's approval.
    Confirm,
    /// Sign anything up to `max_per_payment`.
    AutoPay {
        /// The threshold.
        max_per_payment: Amount,
    },
    /// Up to `max_per_payment` each, and at most `budget` within any `window_secs` (rolling:
    /// the window moves with time, so there is no burst at a calendar boundary).
    Budget {
        /// The per-payment threshold.
        max_per_payment: Amount,
        /// The most spent within any window.
        budget: Amount,
        /// Window length in seconds.
        window_secs: i64,
    },
}

/// What the wallet decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Signed.
    Signed(String),
    /// Waiting for a human (confirm mode): the pending id.
    Pending(String),
    /// Refused, with the reason (and, for budgets, the room left and when it grows).
    Refused(serde_json::Value),
}

#[derive(Debug, Clone)]
enum PendingState {
    Waiting(ReceiptRequest),
    Approved(String),
    Denied,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Signed amounts with their time (unix seconds), for the rolling budget.
    spent: VecDeque<(i64, Decimal)>,
    /// Confirm mode: requests by id.
    pending: HashMap<String, PendingState>,
}

/// The wallet's state.
#[derive(Debug, Clone)]
pub struct Wallet {
    signer: ReceiptSigner,
    authorization: Authorization,
    receipt_ttl_secs: i64,
    ledger: Arc<Mutex<Ledger>>,
}

impl Wallet {
    /// A wallet issuing as `issuer` with a fresh Ed25519 key, auto-paying up to `max_per_payment`.
    pub fn generate(issuer: impl Into<String>, max_per_payment: Amount) -> Result<Self, String> {
        Ok(Wallet {
            signer: ReceiptSigner::generate_ed25519(issuer, "wallet-key-1")
                .map_err(|e| e.to_string())?,
            authorization: Authorization::AutoPay { max_per_payment },
            receipt_ttl_secs: 300,
            ledger: Arc::new(Mutex::new(Ledger::default())),
        })
    }

    /// Use another authorization model.
    #[must_use]
    pub fn with_authorization(mut self, authorization: Authorization) -> Self {
        self.authorization = authorization;
        self
    }

    /// The signer (issuer id, public key).
    pub fn signer(&self) -> &ReceiptSigner {
        &self.signer
    }

    fn sign_now(&self, req: &ReceiptRequest, amount: Amount) -> Result<String, String> {
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
        self.signer.sign(&claims).map_err(|e| e.to_string())
    }

    /// Apply the authorization model to a request, at time `now` (unix seconds).
    pub fn decide(&self, req: &ReceiptRequest, now: i64) -> Result<Decision, String> {
        let amount: Amount = req.amount.parse().map_err(|e| format!("amount: {e}"))?;
        let mut ledger = self
            .ledger
            .lock()
            .map_err(|_| "wallet state poisoned".to_owned())?;
        match &self.authorization {
            Authorization::Confirm => {
                let id = uuid::Uuid::new_v4().to_string();
                ledger
                    .pending
                    .insert(id.clone(), PendingState::Waiting(req.clone()));
                Ok(Decision::Pending(id))
            }
            Authorization::AutoPay { max_per_payment } => {
                if amount > *max_per_payment {
                    return Ok(Decision::Refused(
                        json!({"error": format!("{amount} is above the per-payment threshold of {max_per_payment}")}),
                    ));
                }
                Ok(Decision::Signed(self.sign_now(req, amount)?))
            }
            Authorization::Budget {
                max_per_payment,
                budget,
                window_secs,
            } => {
                if amount > *max_per_payment {
                    return Ok(Decision::Refused(
                        json!({"error": format!("{amount} is above the per-payment threshold of {max_per_payment}")}),
                    ));
                }
                while ledger
                    .spent
                    .front()
                    .is_some_and(|(t, _)| *t <= now - window_secs)
                {
                    ledger.spent.pop_front();
                }
                let used: Decimal = ledger.spent.iter().map(|(_, a)| *a).sum();
                let left = budget.as_decimal() - used;
                if amount.as_decimal() > left {
                    let resets_at = ledger.spent.front().map(|(t, _)| t + window_secs);
                    return Ok(Decision::Refused(json!({
                        "error": format!("the budget of {budget} per {window_secs} s would be exceeded"),
                        "remaining": left.normalize().to_string(),
                        "room_grows_at": resets_at,
                    })));
                }
                ledger.spent.push_back((now, amount.as_decimal()));
                Ok(Decision::Signed(self.sign_now(req, amount)?))
            }
        }
    }

    /// A human's decision on a pending request.
    pub fn approve(&self, id: &str, approve: bool) -> Result<bool, String> {
        let mut ledger = self
            .ledger
            .lock()
            .map_err(|_| "wallet state poisoned".to_owned())?;
        let Some(PendingState::Waiting(req)) = ledger.pending.get(id).cloned() else {
            return Ok(false);
        };
        let next = if approve {
            let amount: Amount = req.amount.parse().map_err(|e| format!("amount: {e}"))?;
            PendingState::Approved(self.sign_now(&req, amount)?)
        } else {
            PendingState::Denied
        };
        ledger.pending.insert(id.to_owned(), next);
        Ok(true)
    }

    /// The wallet's HTTP API.
    pub fn app(self) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/receipts", post(receipts))
            .route("/v1/pending/{id}", get(pending))
            .route("/v1/approvals", get(waiting))
            .route("/v1/approvals/{id}", post(approval))
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
    match w.decide(&req, now_secs()) {
        Ok(Decision::Signed(receipt)) => Json(json!({"receipt": receipt})).into_response(),
        Ok(Decision::Pending(id)) => (
            StatusCode::ACCEPTED,
            Json(json!({"pending": id, "poll": format!("/v1/pending/{id}"), "approve": format!("/v1/approvals/{id}")})),
        )
            .into_response(),
        Ok(Decision::Refused(body)) => (StatusCode::FORBIDDEN, Json(body)).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    }
}

async fn pending(State(w): State<Arc<Wallet>>, Path(id): Path<String>) -> Response {
    let state = w
        .ledger
        .lock()
        .ok()
        .and_then(|l| l.pending.get(&id).cloned());
    match state {
        Some(PendingState::Approved(receipt)) => Json(json!({"receipt": receipt})).into_response(),
        Some(PendingState::Waiting(_)) => {
            (StatusCode::ACCEPTED, Json(json!({"pending": id}))).into_response()
        }
        Some(PendingState::Denied) => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "the owner denied this payment"})),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such request"})),
        )
            .into_response(),
    }
}

async fn waiting(State(w): State<Arc<Wallet>>) -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = w
        .ledger
        .lock()
        .map(|l| {
            l.pending
                .iter()
                .filter_map(|(id, s)| match s {
                    PendingState::Waiting(r) => Some(json!({"id": id, "payer": r.payer, "merchant": r.merchant, "amount": r.amount, "currency": r.currency})),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Json(json!({"waiting": list}))
}

#[derive(Deserialize)]
struct ApprovalBody {
    approve: bool,
}

async fn approval(
    State(w): State<Arc<Wallet>>,
    Path(id): Path<String>,
    Json(body): Json<ApprovalBody>,
) -> Response {
    match w.approve(&id, body.approve) {
        Ok(true) => Json(json!({"id": id, "approved": body.approve})).into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "nothing waiting with this id"})),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e}))).into_response(),
    }
}

/// The default per-payment cap of the demo wallet: 1.00.
pub fn default_cap() -> Amount {
    Amount::try_from_decimal(Decimal::ONE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(amount: &str) -> ReceiptRequest {
        ReceiptRequest {
            payer: "a".into(),
            merchant: "m".into(),
            amount: amount.into(),
            currency: "USD".into(),
            challenge: None,
            kind: None,
        }
    }

    fn amt(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn auto_pay_under_a_threshold() {
        let w = Wallet::generate("w", amt("0.5")).unwrap();
        assert!(matches!(
            w.decide(&req("0.5"), 0).unwrap(),
            Decision::Signed(_)
        ));
        assert!(matches!(
            w.decide(&req("0.51"), 0).unwrap(),
            Decision::Refused(_)
        ));
    }

    #[test]
    fn budget_per_rolling_window() {
        let w =
            Wallet::generate("w", amt("1"))
                .unwrap()
                .with_authorization(Authorization::Budget {
                    max_per_payment: amt("1"),
                    budget: amt("2"),
                    window_secs: 60,
                });
        assert!(matches!(
            w.decide(&req("1"), 1000).unwrap(),
            Decision::Signed(_)
        ));
        assert!(matches!(
            w.decide(&req("0.75"), 1010).unwrap(),
            Decision::Signed(_)
        ));
        let Decision::Refused(why) = w.decide(&req("0.5"), 1020).unwrap() else {
            panic!("over budget")
        };
        assert_eq!(why["remaining"], "0.25");
        assert_eq!(why["room_grows_at"], 1060);
        assert!(matches!(
            w.decide(&req("0.25"), 1030).unwrap(),
            Decision::Signed(_)
        ));
        // The first payment leaves the window at 1060: its 1.00 is room again.
        assert!(matches!(
            w.decide(&req("1"), 1061).unwrap(),
            Decision::Signed(_)
        ));
        assert!(
            matches!(w.decide(&req("1.5"), 5000).unwrap(), Decision::Refused(_)),
            "threshold still applies"
        );
    }

    #[test]
    fn confirm_every_payment() {
        let w = Wallet::generate("w", amt("1"))
            .unwrap()
            .with_authorization(Authorization::Confirm);
        let Decision::Pending(yes) = w.decide(&req("5"), 0).unwrap() else {
            panic!("must wait")
        };
        let Decision::Pending(no) = w.decide(&req("5"), 0).unwrap() else {
            panic!("must wait")
        };
        assert!(w.approve(&yes, true).unwrap());
        assert!(w.approve(&no, false).unwrap());
        assert!(!w.approve("nope", true).unwrap());
        let l = w.ledger.lock().unwrap();
        assert!(matches!(
            l.pending.get(&yes),
            Some(PendingState::Approved(_))
        ));
        assert!(matches!(l.pending.get(&no), Some(PendingState::Denied)));
    }
}

//! A stand-in x402 facilitator for the tests: a small local axum server that plays the chain.
//! It is NOT a real facilitator and touches no blockchain: `/settle` checks the EIP-3009
//! authorization itself (offer, signature, window, via Tollgate's own verifier) and keeps the
//! set of used `(from, nonce)` pairs in memory as the token contract would, answering a fake
//! transaction hash. Its failure modes are switchable per endpoint, so the suites can make it
//! time out, fail with 5xx, answer HTML or truncated JSON, report `settlement_pending`, or
//! refuse with a reason.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate_middleware::money::Currency;
use tollgate_middleware::x402::{verify, ExactOffer};

/// How the next calls to an endpoint are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Do the job (settle: check the authorization, mark the nonce used, answer a tx hash).
    Normal,
    /// Answer nothing for this long (longer than the gateway's timeout).
    Hang(Duration),
    /// HTTP 500 with a JSON body.
    ServerError,
    /// HTTP 200 with an HTML page.
    Html,
    /// HTTP 200 with JSON cut in the middle.
    Truncated,
    /// `{"success": false, "errorReason": "settlement_pending"}`.
    Pending,
    /// The spec's refusal with this reason.
    Refuse(String),
    /// A common implementation's error body: HTTP 400 `{"error": reason}`.
    ErrorBody(String),
}

#[derive(Debug)]
struct Chain {
    settle_mode: Mode,
    verify_mode: Mode,
    /// `(from, nonce)` pairs settled (the token contract's `authorizationState`).
    used: HashSet<(String, String)>,
    /// Every call: `verify` / `settle`.
    calls: Vec<&'static str>,
    /// Transactions settled.
    transactions: Vec<String>,
}

/// A running stand-in facilitator.
#[derive(Clone)]
pub struct TestFacilitator {
    pub addr: SocketAddr,
    chain: Arc<Mutex<Chain>>,
}

impl TestFacilitator {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn set_settle(&self, m: Mode) {
        self.chain.lock().unwrap().settle_mode = m;
    }
    pub fn set_verify(&self, m: Mode) {
        self.chain.lock().unwrap().verify_mode = m;
    }
    /// Calls received so far (`verify`, `settle`).
    pub fn calls(&self) -> Vec<&'static str> {
        self.chain.lock().unwrap().calls.clone()
    }
    /// Transfers done ("on chain").
    pub fn settled(&self) -> usize {
        self.chain.lock().unwrap().transactions.len()
    }
}

fn offer_of(req: &Value) -> Result<ExactOffer, String> {
    let s = |k: &str| req.pointer(k).and_then(Value::as_str).unwrap_or_default();
    ExactOffer::try_new(
        s("/network"),
        s("/asset"),
        s("/extra/name"),
        s("/extra/version"),
        s("/payTo"),
        s("/amount"),
        req.get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60),
        Currency::try_new("USDC", 6).map_err(|e| e.to_string())?,
    )
    .map_err(|(f, m)| format!("{f}: {m}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An answer for a failure mode, or `None` for `Normal`.
async fn failure(mode: Mode) -> Option<Response> {
    match mode {
        Mode::Normal => None,
        Mode::Hang(d) => {
            tokio::time::sleep(d).await;
            Some((StatusCode::OK, Json(json!({"success": true, "isValid": true, "transaction": "0xlate"}))).into_response())
        }
        Mode::ServerError => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "internal"})),
            )
                .into_response(),
        ),
        Mode::Html => Some(
            (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response(),
        ),
        Mode::Truncated => Some(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"success\": true, \"transac",
            )
                .into_response(),
        ),
        Mode::Pending => Some(
            Json(json!({"success": false, "errorReason": "settlement_pending", "transaction": "", "network": ""}))
                .into_response(),
        ),
        Mode::Refuse(r) => Some(
            Json(json!({"success": false, "isValid": false, "errorReason": r, "invalidReason": r, "transaction": "", "network": ""}))
                .into_response(),
        ),
        Mode::ErrorBody(r) => {
            Some((StatusCode::BAD_REQUEST, Json(json!({"error": r}))).into_response())
        }
    }
}

async fn settle(State(chain): State<Arc<Mutex<Chain>>>, Json(body): Json<Value>) -> Response {
    let mode = {
        let mut c = chain.lock().unwrap();
        c.calls.push("settle");
        c.settle_mode.clone()
    };
    if let Some(r) = failure(mode).await {
        return r;
    }
    let req = &body["paymentRequirements"];
    let payload = &body["paymentPayload"];
    let offer = match offer_of(req) {
        Ok(o) => o,
        Err(e) => return Json(
            json!({"success": false, "errorReason": "invalid_payment_requirements", "message": e}),
        )
        .into_response(),
    };
    let network = offer.network.clone();
    let v = match verify(payload, &[offer], now(), 0) {
        Ok(v) => v,
        Err(e) => {
            return Json(json!({"success": false, "errorReason": e.reason.as_str(), "transaction": "", "network": network})).into_response()
        }
    };
    let key = (format!("{:#x}", v.from), format!("{:#x}", v.nonce));
    let mut c = chain.lock().unwrap();
    if !c.used.insert(key) {
        return Json(json!({"success": false, "errorReason": "invalid_transaction_state", "transaction": "", "network": network, "payer": format!("{:#x}", v.from)})).into_response();
    }
    let tx = format!("0x{:064x}", c.transactions.len() + 1);
    c.transactions.push(tx.clone());
    Json(json!({"success": true, "transaction": tx, "network": network, "payer": v.from.to_checksum(None)}))
        .into_response()
}

async fn verify_endpoint(
    State(chain): State<Arc<Mutex<Chain>>>,
    Json(body): Json<Value>,
) -> Response {
    let mode = {
        let mut c = chain.lock().unwrap();
        c.calls.push("verify");
        c.verify_mode.clone()
    };
    if let Some(r) = failure(mode).await {
        return r;
    }
    let offer = match offer_of(&body["paymentRequirements"]) {
        Ok(o) => o,
        Err(_) => {
            return Json(json!({"isValid": false, "invalidReason": "invalid_payment_requirements"}))
                .into_response()
        }
    };
    match verify(&body["paymentPayload"], &[offer], now(), 0) {
        Ok(v) => Json(json!({"isValid": true, "payer": v.from.to_checksum(None)})).into_response(),
        Err(e) => {
            Json(json!({"isValid": false, "invalidReason": e.reason.as_str()})).into_response()
        }
    }
}

/// Start the stand-in facilitator on `127.0.0.1:0`, listing `exact` on `networks`.
pub async fn facilitator(networks: &[&str]) -> TestFacilitator {
    let chain = Arc::new(Mutex::new(Chain {
        settle_mode: Mode::Normal,
        verify_mode: Mode::Normal,
        used: HashSet::new(),
        calls: Vec::new(),
        transactions: Vec::new(),
    }));
    let kinds: Vec<Value> = networks
        .iter()
        .map(|n| json!({"x402Version": 2, "scheme": "exact", "network": n}))
        .collect();
    let router = Router::new()
        .route("/settle", post(settle))
        .route("/verify", post(verify_endpoint))
        .route(
            "/supported",
            get(move || {
                let kinds = kinds.clone();
                async move { Json(json!({"kinds": kinds, "extensions": [], "signers": {}})) }
            }),
        )
        .with_state(chain.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    TestFacilitator { addr, chain }
}

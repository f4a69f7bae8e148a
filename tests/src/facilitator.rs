//! A stand-in x402 facilitator for the tests: a small local axum server that plays the chain.
//! It is NOT a real facilitator and touches no blockchain: `/settle` checks the EIP-3009
//! authorization itself (offer, signature, window, via Tollgate's own verifier) and keeps the
//! set of used `(from, nonce)` pairs in memory as the token contract would, answering a fake
//! transaction hash. Its failure modes are switchable per endpoint, so the suites can make it
//! time out, fail with 5xx, answer HTML or truncated JSON, report `settlement_pending`, or
//! refuse with a reason.
//!
//! x402 `upto` (Permit2) is played the way the official SDK's facilitator does it: `/verify`
//! checks the permit against the requirements (whose amount is the maximum), `/settle`
//! re-verifies it against its own maximum (`permitted.amount`), refuses a settlement above
//! it (`invalid_upto_evm_payload_settlement_exceeds_amount`), answers a settlement of 0 with
//! success and no transaction, and transfers the requirements' `amount` otherwise. The
//! stand-in's address is [`FACILITATOR_ADDRESS`] (listed in `/supported`).

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
use tollgate_middleware::x402::upto::{self, UptoOffer};
use tollgate_middleware::x402::{verify, ExactOffer};

/// The stand-in's settling address (`witness.facilitator` of `upto` permits).
pub const FACILITATOR_ADDRESS: &str = "0xFac11100000000000000000000000000000000Aa";

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
    /// `upto`: the amount asked by every `/settle` call (before any check).
    asked: Vec<u64>,
    /// `upto`: the amount transferred by every settled transaction.
    transferred: Vec<u64>,
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
    /// `upto`: the amount each `/settle` call asked for, in order.
    pub fn asked(&self) -> Vec<u64> {
        self.chain.lock().unwrap().asked.clone()
    }
    /// `upto`: the amount of each transfer done, in order.
    pub fn transferred(&self) -> Vec<u64> {
        self.chain.lock().unwrap().transferred.clone()
    }
}

/// The `upto` offer a requirements entry describes, with `max` as its maximum.
fn upto_offer_of(req: &Value, max: u64) -> Result<UptoOffer, String> {
    let s = |k: &str| req.pointer(k).and_then(Value::as_str).unwrap_or_default();
    UptoOffer::try_new(
        s("/network"),
        s("/asset"),
        (s("/extra/name"), s("/extra/version")),
        s("/payTo"),
        FACILITATOR_ADDRESS,
        max,
        req.get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60),
        Currency::try_new("USDC", 6).map_err(|e| e.to_string())?,
    )
    .map_err(|(f, m)| format!("{f}: {m}"))
}

fn is_upto(body: &Value) -> bool {
    body.pointer("/paymentPayload/accepted/scheme")
        .and_then(Value::as_str)
        == Some("upto")
}

fn atomic(v: Option<&Value>) -> Option<u64> {
    v?.as_str()?.parse().ok()
}

/// `/settle` for an `upto` permit (the SDK's `settle_upto_permit2`).
fn settle_upto(chain: &Mutex<Chain>, body: &Value) -> Response {
    let req = &body["paymentRequirements"];
    let payload = &body["paymentPayload"];
    let network = req["network"].as_str().unwrap_or_default().to_owned();
    let refuse = |reason: &str| {
        Json(
            json!({"success": false, "errorReason": reason, "transaction": "", "network": network}),
        )
        .into_response()
    };
    let Some(amount) = atomic(req.get("amount")) else {
        return refuse("invalid_permit2_payload_format");
    };
    chain.lock().unwrap().asked.push(amount);
    let Some(permitted) = atomic(payload.pointer("/payload/permit2Authorization/permitted/amount"))
    else {
        return refuse("invalid_permit2_payload_format");
    };
    let offer = match upto_offer_of(req, permitted) {
        Ok(o) => o,
        Err(_) => return refuse("invalid_payment_requirements"),
    };
    let v = match upto::verify(payload, &[offer], now(), 0) {
        Ok(v) => v,
        Err(e) => return refuse(e.reason.as_str()),
    };
    let payer = v.from.to_checksum(None);
    if amount == 0 {
        return Json(json!({"success": true, "transaction": "", "network": network, "payer": payer, "amount": "0"})).into_response();
    }
    if amount > permitted {
        return refuse("invalid_upto_evm_payload_settlement_exceeds_amount");
    }
    let mut c = chain.lock().unwrap();
    if !c
        .used
        .insert((format!("{:#x}", v.from), format!("permit2:{}", v.nonce)))
    {
        return refuse("permit2_invalid_nonce");
    }
    let tx = format!("0x{:064x}", c.transactions.len() + 1);
    c.transactions.push(tx.clone());
    c.transferred.push(amount);
    Json(json!({"success": true, "transaction": tx, "network": network, "payer": payer, "amount": amount.to_string()}))
        .into_response()
}

/// `/verify` for an `upto` permit: the requirements' amount is the maximum.
fn verify_upto(body: &Value) -> Response {
    let req = &body["paymentRequirements"];
    let Some(max) = atomic(req.get("amount")) else {
        return Json(json!({"isValid": false, "invalidReason": "invalid_permit2_payload_format"}))
            .into_response();
    };
    let offer = match upto_offer_of(req, max) {
        Ok(o) => o,
        Err(_) => {
            return Json(json!({"isValid": false, "invalidReason": "invalid_payment_requirements"}))
                .into_response()
        }
    };
    match upto::verify(&body["paymentPayload"], &[offer], now(), 0) {
        Ok(v) => Json(json!({"isValid": true, "payer": v.from.to_checksum(None)})).into_response(),
        Err(e) => {
            Json(json!({"isValid": false, "invalidReason": e.reason.as_str()})).into_response()
        }
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
    if is_upto(&body) {
        return settle_upto(&chain, &body);
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
    if is_upto(&body) {
        return verify_upto(&body);
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

/// Start the stand-in facilitator on `127.0.0.1:0`, listing `exact` and `upto` on `networks`.
pub async fn facilitator(networks: &[&str]) -> TestFacilitator {
    let chain = Arc::new(Mutex::new(Chain {
        settle_mode: Mode::Normal,
        verify_mode: Mode::Normal,
        used: HashSet::new(),
        calls: Vec::new(),
        transactions: Vec::new(),
        asked: Vec::new(),
        transferred: Vec::new(),
    }));
    let kinds: Vec<Value> = networks
        .iter()
        .flat_map(|n| {
            [
                json!({"x402Version": 2, "scheme": "exact", "network": n}),
                json!({"x402Version": 2, "scheme": "upto", "network": n, "extra": {"facilitatorAddress": FACILITATOR_ADDRESS}}),
            ]
        })
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

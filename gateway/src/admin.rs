//! The admin API, on its own listener, for the provider: payers (balance, holds, usage),
//! credits and debits (idempotent), block/unblock, usage aggregates and the usage-event export.
//!
//! Every request needs `Authorization: Bearer <TOLLGATE_ADMIN_TOKEN>`, compared in constant
//! time; a token in the query string is refused (it would end up in access logs). The OpenAPI
//! document is at `GET /admin/v1/openapi.json` and Prometheus metrics at `GET /metrics` (both
//! behind the token too). The provider dashboard ([`crate::dashboard`]) is served here too, at
//! `/admin/ui`: its static page is the only thing answered without the token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tollgate_middleware::money::{Amount, Currency};
use tollgate_middleware::store::{utc_day, Credit, CreditOutcome, Idempotency};
use tollgate_middleware::{Clock, ErrorCode, Paywall, SystemClock};

use crate::proxy::problem;

pub use crate::dashboard::events::event_json;

/// The environment variable holding the admin bearer token.
pub const ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("admin_openapi.json");

/// The admin API's state (shared with the dashboard's endpoints).
#[derive(Clone)]
pub(crate) struct Admin {
    /// The gateway (its configuration in force is read per request, so reloads apply).
    gw: crate::Gateway,
    token: Arc<Vec<u8>>,
}

impl Admin {
    /// The gateway (routes, the ledger runtime).
    pub(crate) fn gateway(&self) -> &crate::Gateway {
        &self.gw
    }

    pub(crate) fn paywall(&self) -> Paywall {
        self.gw.paywall()
    }

    /// Where usage is read: the ledger database when configured, else the store.
    pub(crate) fn ledger(&self) -> Arc<dyn tollgate_middleware::store::LedgerStore> {
        self.gw.ledger_reader()
    }

    pub(crate) fn currency(&self, code: &str) -> Option<Currency> {
        self.gw.currencies().get(code).cloned()
    }

    /// The configured currency codes, in order.
    pub(crate) fn currency_codes(&self) -> Vec<String> {
        self.gw.currencies().keys().cloned().collect()
    }

    /// Minor units as `<amount> <CODE>` with exactly the currency's decimals (`0.050000 USD`,
    /// integer string operations only): the dashboard's one money format.
    pub(crate) fn money(&self, code: &str, minor: u64) -> String {
        let scale = self.currency(code).map_or(0, |c| c.scale() as usize);
        let digits = format!("{minor:0>width$}", width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        if frac.is_empty() {
            format!("{int} {code}")
        } else {
            format!("{int}.{frac} {code}")
        }
    }

    /// Minor units as a decimal string (the plain integer for an unconfigured currency).
    pub(crate) fn decimal(&self, code: &str, minor: u64) -> String {
        self.currency(code)
            .map(|c| c.from_minor(minor).to_string())
            .unwrap_or_else(|| minor.to_string())
    }
}

/// The admin router. `token` must be non-empty (checked at start-up).
pub fn router(gw: crate::Gateway, token: &str) -> Router {
    let state = Admin {
        gw,
        token: Arc::new(token.as_bytes().to_vec()),
    };
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    tollgate_middleware::metrics::render(),
                )
            }),
        )
        .route(
            "/admin/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(
            "/admin/v1/payers",
            get(crate::dashboard::reports::top_payers),
        )
        .route("/admin/v1/summary", get(crate::dashboard::reports::summary))
        .route("/admin/v1/traffic", get(crate::dashboard::reports::traffic))
        .route(
            "/admin/v1/charts/{name}",
            get(crate::dashboard::charts::chart),
        )
        .route("/admin/v1/payers/{id}", get(payer))
        .route("/admin/v1/payers/{id}/credits", post(credit))
        .route("/admin/v1/payers/{id}/block", post(block).delete(unblock))
        .route(
            "/admin/v1/payers/{id}/balance-low",
            axum::routing::put(crate::admin_webhooks::set_threshold),
        )
        .route("/admin/v1/webhooks", get(crate::admin_webhooks::endpoints))
        .route(
            "/admin/v1/risk/decisions",
            get(crate::admin_risk::decisions),
        )
        .route(
            "/admin/v1/webhooks/failures",
            get(crate::admin_webhooks::failures),
        )
        .route(
            "/admin/v1/webhooks/{endpoint}/failures/{id}/replay",
            post(crate::admin_webhooks::replay),
        )
        .route("/admin/v1/reload", post(reload))
        .route("/admin/v1/mandates/{id}/revoke", post(revoke_mandate))
        .route("/admin/v1/receipts/revoke", post(revoke_receipt))
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/events/{id}/refund", post(crate::refunds::refund))
        .route("/admin/v1/refunds", get(crate::refunds::list))
        .route("/admin/v1/events", get(crate::dashboard::events::events))
        .route(
            "/admin/v1/events.csv",
            get(crate::dashboard::events::events_csv),
        )
        .route(
            "/admin/v1/x402/queue",
            get(crate::dashboard::status::settlement_queue),
        )
        .route("/admin/v1/ledger", get(crate::dashboard::status::ledger))
        .merge(crate::dashboard::ui_routes())
        .route("/admin/v1/x402/settlements/failed", get(failed_settlements))
        .route(
            "/admin/v1/x402/settlements/{id}/resolve",
            post(resolve_settlement),
        )
        .fallback(|| async { problem(ErrorCode::RouteNotFound, "no such admin endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let unauthorized = |detail: &str| {
        let mut res = problem(ErrorCode::Unauthorized, detail);
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
        );
        res
    };
    if req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            k == "token" || k == "access_token" || k == "admin_token"
        })
    }) {
        return unauthorized("tokens in query strings are refused; use Authorization: Bearer");
    }
    // The dashboard's static page and assets carry no data; the page sends the token itself.
    if req.method() == axum::http::Method::GET && crate::dashboard::is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    // Constant time in the token's content (the length is not secret).
    let ok = !given.is_empty() && bool::from(given.as_bytes().ct_eq(admin.token.as_slice()));
    if !ok {
        return unauthorized("a valid admin bearer token is required");
    }
    next.run(req).await
}

pub(crate) fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin: store unavailable");
    problem(ErrorCode::StoreUnavailable, "the store is unreachable")
}

pub(crate) fn bad_request(detail: &str) -> Response {
    problem(ErrorCode::InvalidRequest, detail)
}

fn today() -> String {
    utc_day(SystemClock.now_ms())
}

fn days_ago(n: i64) -> String {
    utc_day(SystemClock.now_ms() - n * 86_400_000)
}

async fn payer(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    let account = match admin.paywall().store().account(&id).await {
        Ok(a) => a,
        Err(e) => return store_error(e),
    };
    let usage = match admin
        .ledger()
        .usage(Some(&id), &days_ago(29), &today())
        .await
    {
        Ok(u) => u,
        Err(e) => return store_error(e),
    };
    let now = SystemClock.now_ms();
    let mandates = match admin.paywall().store().mandates(&id, now).await {
        Ok(m) => m,
        Err(e) => return store_error(e),
    };
    let mut body = admin.paywall().account_json(&id, &account);
    body["blocked"] = account.blocked.into();
    body["usage_30d"] = usage_json(&admin, usage);
    body["mandates"] = mandates
        .into_iter()
        .map(|(summary, used)| mandate_json(&admin, summary, &used, now))
        .collect();
    let mut plans = Vec::new();
    for plan in admin.paywall().plans() {
        match admin.paywall().store().subscription(&id, &plan.id).await {
            Ok(Some(p)) => plans.push(json!({
                "plan": plan.id,
                "period_start": p.start_ms / 1000,
                "period_end": p.end_ms / 1000,
                "active": p.end_ms > now,
                "included": p.calls,
                "unit": plan.unit.clone().unwrap_or_else(|| "call".into()),
                "used": p.used,
            })),
            Ok(None) => {}
            Err(e) => return store_error(e),
        }
    }
    body["plans"] = plans.into();
    Json(body).into_response()
}

/// A mandate as the provider sees it: limits, use in the current window, room left.
fn mandate_json(
    admin: &Admin,
    mut summary: Value,
    used: &tollgate_middleware::store::MandateUse,
    now_ms: i64,
) -> Value {
    let currency = summary["currency"].as_str().and_then(|c| admin.currency(c));
    let fmt = |m: u64| match &currency {
        Some(c) => c.from_minor(m).to_string(),
        None => m.to_string(),
    };
    let budget_minor = summary["budget"]
        .as_str()
        .and_then(|b| b.parse::<Amount>().ok())
        .and_then(|b| currency.as_ref().and_then(|c| c.to_minor(b).ok()))
        .unwrap_or(0);
    let room = budget_minor.saturating_sub(used.spent_minor + used.held_minor);
    if let Ok(w) =
        serde_json::from_value::<tollgate_middleware::mandate::Window>(summary["window"].clone())
    {
        let (start, end) = w.bounds(now_ms);
        summary["window_start"] = (start / 1000).into();
        summary["resets_at"] = (end / 1000).into();
    }
    summary["spent"] = fmt(used.spent_minor).into();
    summary["held"] = fmt(used.held_minor).into();
    summary["room_left"] = fmt(room).into();
    summary["revoked"] = used.revoked.into();
    summary
}

#[derive(Deserialize, Default)]
struct RevokeMandateBody {
    /// The issuer of the mandate (default: every trusted issuer).
    issuer: Option<String>,
    reason: Option<String>,
}

async fn revoke_mandate(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    body: Option<Json<RevokeMandateBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let issuers = match body.issuer {
        Some(i) => vec![i],
        None => admin.gw.issuer_ids(),
    };
    for issuer in &issuers {
        let key = tollgate_middleware::mandate::mandate_key(issuer, &id);
        if let Err(e) = admin.paywall().store().revoke_mandate(&key).await {
            return store_error(e);
        }
    }
    tracing::info!(mandate = %id, ?issuers, reason = ?body.reason, "mandate revoked");
    Json(json!({"mandate": id, "issuers": issuers, "revoked": true})).into_response()
}

#[derive(Deserialize)]
struct RevokeReceiptBody {
    issuer: String,
    id: String,
    reason: Option<String>,
}

async fn revoke_receipt(
    State(admin): State<Admin>,
    body: Option<Json<RevokeReceiptBody>>,
) -> Response {
    let Some(Json(body)) = body else {
        return bad_request("send JSON {\"issuer\": \"...\", \"id\": \"<jti>\"}");
    };
    if body.issuer.is_empty() || body.id.is_empty() {
        return bad_request("issuer and id must not be empty");
    }
    match admin
        .paywall()
        .store()
        .revoke_receipt(&body.issuer, &body.id)
        .await
    {
        Ok(unused) => {
            tracing::info!(issuer = %body.issuer, receipt = %body.id, reason = ?body.reason, unused, "receipt revoked");
            Json(json!({"issuer": body.issuer, "id": body.id, "revoked": unused, "state": if unused { "revoked" } else { "already used or in use" }})).into_response()
        }
        Err(e) => store_error(e),
    }
}

fn usage_json(admin: &Admin, rows: Vec<tollgate_middleware::store::DailyUsage>) -> Value {
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let amounts: BTreeMap<String, String> = r
                .amount_minor
                .iter()
                .map(|(c, m)| (c.clone(), admin.currency(c).map(|cur| cur.from_minor(*m).to_string()).unwrap_or_else(|| m.to_string())))
                .collect();
            json!({"day": r.day, "route": r.route, "requests": r.requests, "amount": amounts, "units": r.units})
        })
        .collect();
    Value::Array(rows)
}

#[derive(Deserialize)]
struct CreditBody {
    /// Signed decimal: `"2.50"` credits, `"-1"` debits.
    amount: String,
    currency: String,
    reason: String,
}

async fn credit(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<CreditBody>>,
) -> Response {
    let Some(Json(body)) = body else {
        return bad_request(
            "send JSON {\"amount\": \"2.50\", \"currency\": \"USD\", \"reason\": \"...\"}",
        );
    };
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
    else {
        return bad_request("an Idempotency-Key header (1-200 characters) is required");
    };
    let Some(currency) = admin.currency(&body.currency) else {
        // An operator's mistake, not a payment refusal: 400, not `currency_unsupported` (402).
        return bad_request(&format!(
            "unknown currency {:?}: not one of the configured [currencies]",
            body.currency
        ));
    };
    if body.reason.trim().is_empty() || body.reason.len() > 500 {
        return bad_request("reason must be 1 to 500 characters");
    }
    let (negative, digits) = match body.amount.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, body.amount.as_str()),
    };
    let minor = match digits
        .parse::<Amount>()
        .map_err(|e| e.to_string())
        .and_then(|a| currency.to_minor(a).map_err(|e| e.to_string()))
    {
        Ok(0) => return bad_request("amount must not be zero"),
        Ok(m) => i64::try_from(m).unwrap_or(i64::MAX),
        Err(e) => return problem(ErrorCode::AmountInvalid, &e),
    };
    let credit = Credit {
        payer: id.clone(),
        currency: currency.code().to_owned(),
        amount_minor: if negative { -minor } else { minor },
        idempotency: Idempotency::Key(key.to_owned()),
        keep_until_ms: SystemClock.now_ms() + 30 * 86_400_000,
        reason: body.reason.clone(),
        source: "admin".into(),
    };
    match admin.paywall().store().credit(&credit).await {
        Ok(CreditOutcome::Applied { credit_id, balance_minor }) => {
            tracing::info!(payer = %id, amount = %body.amount, currency = %body.currency, reason = %body.reason, "admin credit");
            (StatusCode::CREATED, Json(json!({"credit_id": credit_id, "duplicate": false, "balance": currency.from_minor(balance_minor).to_string()}))).into_response()
        }
        Ok(CreditOutcome::Duplicate { credit_id, balance_minor }) => {
            Json(json!({"credit_id": credit_id, "duplicate": true, "balance": currency.from_minor(balance_minor).to_string()})).into_response()
        }
        Ok(CreditOutcome::Insufficient { balance_minor }) => problem(
            ErrorCode::BalanceInsufficient,
            &format!("a debit larger than the available balance ({})", currency.from_minor(balance_minor)),
        ),
        Ok(CreditOutcome::ReceiptUsed) => problem(ErrorCode::Internal, "internal error"),
        Err(e) => store_error(e),
    }
}

async fn block(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.paywall().store().set_blocked(&id, true).await {
        Ok(()) => {
            crate::admin_webhooks::blocked(&admin, &id).await;
            Json(json!({"payer": id, "blocked": true})).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn unblock(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.paywall().store().set_blocked(&id, false).await {
        Ok(()) => Json(json!({"payer": id, "blocked": false})).into_response(),
        Err(e) => store_error(e),
    }
}

/// x402 `deferred` settlements that failed for good (their payers are blocked).
async fn failed_settlements(State(admin): State<Admin>) -> Response {
    match admin.paywall().store().failed_settlements().await {
        Ok(jobs) => Json(json!({"settlements": jobs})).into_response(),
        Err(e) => store_error(e),
    }
}

/// Mark a failed settlement resolved; its payer is unblocked when none remains.
async fn resolve_settlement(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.paywall().store().resolve_settlement(&id).await {
        Ok(true) => Json(json!({"id": id, "resolved": true})).into_response(),
        Ok(false) => problem(ErrorCode::RouteNotFound, "no such failed settlement"),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct UsageQuery {
    payer: Option<String>,
    route: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

async fn usage(State(admin): State<Admin>, Query(q): Query<UsageQuery>) -> Response {
    let to = q.to.unwrap_or_else(today);
    let from = q.from.unwrap_or_else(|| to.clone());
    match admin.ledger().usage(q.payer.as_deref(), &from, &to).await {
        Ok(rows) => {
            let rows = rows
                .into_iter()
                .filter(|r| q.route.as_ref().is_none_or(|want| *want == r.route))
                .collect();
            Json(
                json!({"from": from, "to": to, "payer": q.payer, "rows": usage_json(&admin, rows)}),
            )
            .into_response()
        }
        Err(tollgate_middleware::StoreError::Protocol(e)) => bad_request(&e),
        Err(e) => store_error(e),
    }
}

async fn reload(State(admin): State<Admin>) -> Response {
    match admin.gw.reload().await {
        Ok(routes) => Json(json!({"reloaded": true, "routes": routes})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reload refused; the previous configuration keeps serving");
            problem(
                ErrorCode::InvalidRequest,
                &format!("reload refused, the previous configuration keeps serving: {e}"),
            )
        }
    }
}

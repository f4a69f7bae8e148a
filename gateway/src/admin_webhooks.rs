//! The admin API's webhook endpoints: each endpoint's backlog, the failed deliveries, a
//! replay, and a payer's own `balance.low` threshold (see docs/webhooks.md).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_middleware::money::Amount;
use tollgate_middleware::store::iso_time;
use tollgate_middleware::webhooks::Webhooks;
use tollgate_middleware::{Clock, ErrorCode, SystemClock};

use crate::admin::{bad_request, store_error, Admin};
use crate::proxy::problem;

fn configured(admin: &Admin) -> Result<&Webhooks, Box<Response>> {
    admin.gateway().webhooks().ok_or_else(|| {
        Box::new(problem(
            ErrorCode::RouteNotFound,
            "no [[webhooks]] endpoint is configured",
        ))
    })
}

/// `GET /admin/v1/webhooks`: each endpoint with its events and backlog.
pub(crate) async fn endpoints(State(admin): State<Admin>) -> Response {
    let w = match configured(&admin) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let backlog = match w.backlog().await {
        Ok(b) => b,
        Err(e) => return store_error(e),
    };
    let now = SystemClock.now_ms();
    let list: Vec<Value> = w
        .endpoints()
        .iter()
        .zip(backlog)
        .map(|(e, b)| {
            json!({
                "id": e.id,
                "url": e.url,
                "events": e.events.iter().map(|k| k.name()).collect::<Vec<_>>(),
                "pending": b.pending,
                "oldest_age_ms": b.oldest_ms.map(|o| now.saturating_sub(o).max(0)),
                "max_attempts": e.max_attempts,
            })
        })
        .collect();
    Json(json!({ "endpoints": list })).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Limit {
    limit: Option<usize>,
}

/// `GET /admin/v1/webhooks/failures`: deliveries given up, newest first.
pub(crate) async fn failures(State(admin): State<Admin>, Query(q): Query<Limit>) -> Response {
    let w = match configured(&admin) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match w.failures(limit).await {
        Ok(list) => {
            let items: Vec<Value> = list
                .iter()
                .map(|f| {
                    json!({
                        "endpoint": f.endpoint,
                        "id": f.message.id,
                        "type": f.message.kind,
                        "payer": f.message.payer,
                        "attempts": f.attempts,
                        "error": f.error,
                        "failed_at": iso_time(f.failed_ms),
                        "payload": serde_json::from_str::<Value>(&f.message.body).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Json(json!({ "failures": items })).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `POST /admin/v1/webhooks/{endpoint}/failures/{id}/replay`: deliver a failed message again
/// (same `webhook-id`, so a receiver that saw it once still sees it once).
pub(crate) async fn replay(
    State(admin): State<Admin>,
    Path((endpoint, id)): Path<(String, String)>,
) -> Response {
    let w = match configured(&admin) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    match w.replay(&endpoint, &id).await {
        Ok(Some(m)) => (
            axum::http::StatusCode::ACCEPTED,
            Json(json!({"endpoint": endpoint, "id": m.id, "type": m.kind, "replayed": true})),
        )
            .into_response(),
        Ok(None) => problem(
            ErrorCode::RouteNotFound,
            "no such failed delivery for this endpoint",
        ),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Threshold {
    currency: String,
    /// Decimal string; `null` removes the payer's own threshold (the currency's applies).
    threshold: Option<String>,
}

/// `PUT /admin/v1/payers/{id}/balance-low`: a payer's own `balance.low` threshold.
pub(crate) async fn set_threshold(
    State(admin): State<Admin>,
    Path(payer): Path<String>,
    body: Result<Json<Threshold>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let w = match configured(&admin) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let Ok(Json(t)) = body else {
        return bad_request(
            "body must be JSON {\"currency\": \"USD\", \"threshold\": \"1.00\"} (threshold null to remove)",
        );
    };
    let Some(currency) = admin.currency(&t.currency) else {
        return bad_request(&format!(
            "currency {:?} is not configured (configured: {})",
            t.currency,
            admin.currency_codes().join(", ")
        ));
    };
    let minor = match &t.threshold {
        None => None,
        Some(s) => {
            let parsed = s.parse::<Amount>().map_err(|e| e.to_string());
            match parsed.and_then(|a| currency.to_minor(a).map_err(|e| e.to_string())) {
                Ok(m) if m > 0 => Some(m),
                Ok(_) => return bad_request("threshold must be greater than zero"),
                Err(e) => return bad_request(&format!("threshold: {e}")),
            }
        }
    };
    match w.set_threshold(&payer, &t.currency, minor).await {
        Ok(()) => Json(json!({
            "payer": payer,
            "currency": t.currency,
            "threshold": minor.map(|m| currency.from_minor(m).to_string()),
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// After a block: `payer.blocked` (written once the block is stored; a crash between the two
/// loses this message, never the block).
pub(crate) async fn blocked(admin: &Admin, payer: &str) {
    let Some(w) = admin.gateway().webhooks() else {
        return;
    };
    let now = SystemClock.now_ms();
    let data = json!({"payer": payer, "blocked": true, "by": "admin"});
    let key = format!("blocked_{}_{now}", uuid::Uuid::new_v4().simple());
    if let Err(e) = w
        .notify(
            tollgate_middleware::webhooks::EventKind::PayerBlocked,
            &key,
            payer,
            now,
            data,
        )
        .await
    {
        tracing::error!(%payer, error = %e, "payer.blocked webhook not written");
    }
}

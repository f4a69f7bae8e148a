//! The dashboard's state cards: the x402 settlement queue as configured (and what waits in
//! it), and the ledger database when `[ledger]` is set (the drainer's lag, the database's
//! all-time figures).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tollgate_middleware::x402::SettlementMode;
use tollgate_middleware::{Clock, SystemClock};

use super::reports::decimals;
use crate::admin::{store_error, Admin};

/// `GET /admin/v1/x402/queue`: how x402 payments settle on this configuration -- `off` (no
/// route takes them), `immediate` (every route settles within the request: `before` /
/// `after`) or `deferred` (some route queues them for the background settler) -- each x402
/// route's mode, and the queue: settlements waiting (`queued`; `null` when the store cannot
/// say) and failed for good (`failed`, their payers blocked).
pub(crate) async fn settlement_queue(State(admin): State<Admin>) -> Response {
    let inner = admin.gateway().inner();
    let routes: Vec<(String, SettlementMode)> = inner
        .routes
        .iter()
        .filter_map(|m| m.route.x402.as_ref().map(|x| (m.route.id.clone(), x.mode)))
        .collect();
    let mode = if routes.is_empty() {
        "off"
    } else if routes.iter().any(|(_, m)| *m == SettlementMode::Deferred) {
        "deferred"
    } else {
        "immediate"
    };
    let store = admin.paywall().store().clone();
    // Read whatever the mode: jobs queued under an earlier configuration still wait.
    let queued = match store.queued_settlements().await {
        Ok(n) => n,
        Err(e) => return store_error(e),
    };
    let failed = match store.failed_settlements().await {
        Ok(jobs) => jobs.len(),
        Err(e) => return store_error(e),
    };
    let routes: Vec<Value> = routes
        .iter()
        .map(|(id, m)| json!({"route": id, "mode": m.as_str()}))
        .collect();
    Json(json!({"mode": mode, "routes": routes, "queued": queued, "failed": failed}))
        .into_response()
}

/// `GET /admin/v1/ledger`: `{"configured": false}` without `[ledger]`; else this replica's
/// drainer (`healthy`, `backlog` against `max_backlog`, `over_bound`, `oldest_age_ms` -- the
/// lag --, `drained` since start) and the database's all-time figures (`charges`, `voids`,
/// `credits`, `rejects`, `revenue` net of voids, the newest event), read at most every 10 s.
pub(crate) async fn ledger(State(admin): State<Admin>) -> Response {
    let Some(rt) = admin.gateway().0.ledger.as_ref() else {
        return Json(json!({"configured": false})).into_response();
    };
    let s = &rt.status;
    let drainer = json!({
        "healthy": s.healthy(),
        "backlog": s.backlog(),
        "max_backlog": rt.max_backlog,
        "over_bound": s.over_bound(),
        "oldest_age_ms": u64::try_from(s.oldest_age().as_millis()).unwrap_or(u64::MAX),
        "drained": s.drained(),
    });
    let database = match rt.figures(SystemClock.now_ms()).await {
        Ok((f, read_ms)) => json!({
            "reachable": true,
            "read_ms": read_ms,
            "schema_version": f.schema_version,
            "charges": f.charges,
            "voids": f.voids,
            "credits": f.credits,
            "rejects": f.rejects,
            "revenue": decimals(&admin, &f.revenue_minor),
            "revenue_minor": f.revenue_minor,
            "newest_event": f.newest_event.map(|(id, time_ms)| json!({"id": id, "time_ms": time_ms})),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "admin: ledger database figures unavailable");
            json!({"reachable": false, "error": "the ledger database did not answer"})
        }
    };
    Json(json!({"configured": true, "drainer": drainer, "database": database})).into_response()
}

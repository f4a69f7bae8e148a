//! `GET /admin/v1/risk/decisions`: the latest risk rule hits (see docs/risk.md), newest first.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tollgate_middleware::store::iso_time;

use crate::admin::{store_error, Admin};

#[derive(Deserialize)]
pub(crate) struct Limit {
    limit: Option<usize>,
}

pub(crate) async fn decisions(State(admin): State<Admin>, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match admin.paywall().store().risk_decisions(limit).await {
        Ok(list) => {
            let items: Vec<_> = list
                .iter()
                .map(|d| {
                    json!({
                        "time": iso_time(d.time_ms),
                        "payer": d.payer,
                        "route": d.route,
                        "rule": d.rule,
                        "action": d.action,
                        "value": d.value,
                        "limit": d.limit,
                    })
                })
                .collect();
            Json(json!({ "decisions": items })).into_response()
        }
        Err(e) => store_error(e),
    }
}

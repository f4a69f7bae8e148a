//! `GET /healthz` (the process runs) and `GET /readyz` (the store answers).

use super::*;

pub(crate) async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

pub(crate) async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.paywall().store().ping().await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            let mut res = problem(
                ErrorCode::StoreUnavailable,
                "the payment store is unreachable",
            );
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        }
    }
}

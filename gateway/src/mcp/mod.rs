//! MCP over Streamable HTTP (one JSON-RPC message per `POST`), in two places:
//!
//! - `agent.rs`: the agent's own MCP server at `<agent api>/mcp` -- the catalog and plans, a
//!   quote, the balance, top-up and subscribe with a receipt, the agent's bill -- answering
//!   with the same engine calls as the HTTP agent endpoints;
//! - `tools.rs`: routes with `[routes.mcp]`, which proxy an upstream MCP server and sell its
//!   tools per `tools/call` through the payment engine (admit, forward, settle).
//!
//! Both answer `application/json` (HTTP 200, a JSON-RPC error included: bad input is never an
//! HTTP error), and `202 Accepted` to notifications and responses. Messages are parsed by
//! [`tollgate_middleware::jsonrpc`]; payment refusals are written by
//! [`Paywall::render_jsonrpc`](tollgate_middleware::Paywall::render_jsonrpc). The agent server
//! keeps no session (every request carries its credential), so any replica answers any request.
//!
//! Why not the `rmcp` SDK: the paid-tools proxy must read and rewrite the upstream's raw
//! JSON-RPC (prices into `tools/list`, settlement into a result's `_meta`), which an SDK's
//! typed server does not do; one small codec then serves both, with no per-process session
//! store in front of replicas.

pub(crate) mod agent;
pub(crate) mod tools;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tollgate_middleware::jsonrpc;

use super::*;

/// The MCP revisions spoken (an `initialize` asking another gets the newest).
pub(crate) const PROTOCOL_VERSIONS: &[&str] =
    &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// A JSON-RPC answer (HTTP 200; a JSON-RPC error is not an HTTP error).
pub(crate) fn json_answer(v: &Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// A JSON-RPC error answer.
pub(crate) fn error_answer(id: &Value, e: &jsonrpc::Error) -> Response {
    json_answer(&jsonrpc::error(id, e))
}

/// `202 Accepted` with no body: a notification or a response was received.
pub(crate) fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// The body, read whole up to `limit` bytes; a larger or broken body is the JSON-RPC error to
/// answer.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, jsonrpc::Error> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(jsonrpc::Error::new(
            jsonrpc::INVALID_REQUEST,
            format!("Invalid Request: the message is larger than {limit} bytes"),
        )),
        Err(_) => Err(jsonrpc::Error::new(
            jsonrpc::PARSE_ERROR,
            "Parse error: the request body broke off",
        )),
    }
}

/// A tool's answer: the value as `structuredContent` and as JSON text (for clients that read
/// only `content`).
pub(crate) fn tool_result(v: Value) -> Value {
    json!({
        "content": [{"type": "text", "text": v.to_string()}],
        "structuredContent": v,
        "isError": false,
    })
}

/// The revision an `initialize` is answered with: the client's, when spoken here.
pub(crate) fn protocol_version(params: Option<&serde_json::Map<String, Value>>) -> &'static str {
    let asked = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str);
    PROTOCOL_VERSIONS
        .iter()
        .find(|v| Some(**v) == asked)
        .or(PROTOCOL_VERSIONS.last())
        .copied()
        .unwrap_or("2025-06-18")
}

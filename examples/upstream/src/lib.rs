//! A tiny demo upstream: the kind of API a provider puts behind Tollgate.
//!
//! - `POST /v1/compute` -- "runs" a job, answers JSON;
//! - `GET  /v1/storage/{key}` -- serves bytes;
//! - `POST /v1/chat/completions` -- an OpenAI-style token API: JSON `{messages, stream,
//!   max_tokens}`; answers with a `usage` object in the JSON body, or, with `"stream": true`,
//!   as SSE: one event per token and a final event carrying `usage`, then `data: [DONE]`;
//! - `GET  /v1/stream?chunks=N&delay_ms=D` -- a streamed (SSE) response, one event per chunk;
//! - `ANY  /v1/echo/...` -- echoes method, path, headers and body length (tests use it to see
//!   what reached the upstream); `?status=N` answers with that status, `?delay_ms=D` waits,
//!   `?units=N` sets an `x-units: N` response header, `?bytes=N` pads the body to N bytes;
//! - `GET  /free/hello` -- a free endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;

/// The demo upstream's routes.
pub fn app() -> Router {
    Router::new()
        .route("/v1/compute", post(compute))
        .route("/v1/storage/{key}", get(storage))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/stream", get(stream))
        .route("/v1/echo", any(echo))
        .route("/v1/echo/{*rest}", any(echo))
        .route(
            "/free/hello",
            get(|| async { Json(json!({"hello": "world"})) }),
        )
}

/// Serve [`app`] on an already bound listener.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, app()).await
}

async fn compute(body: Bytes) -> Json<serde_json::Value> {
    Json(json!({"job": "done", "input_bytes": body.len(), "cpu_ms": 12}))
}

async fn storage(Path(key): Path<String>) -> Response {
    let data = format!("contents of {key}\n").repeat(4);
    ([("content-type", "application/octet-stream")], data).into_response()
}

/// Token counts are deterministic so tests can predict charges: prompt tokens = words in the
/// messages' contents; completion tokens = `max_tokens` (default 8).
async fn chat(body: Bytes) -> Response {
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt_tokens: u64 = req["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| {
                    x["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count() as u64
                })
                .sum()
        })
        .unwrap_or(0)
        .max(1);
    let completion_tokens = req["max_tokens"].as_u64().unwrap_or(8).min(10_000);
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    if req["stream"].as_bool() != Some(true) {
        let content = vec!["tok"; completion_tokens as usize].join(" ");
        return Json(json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let delay = req["delay_ms"].as_u64().unwrap_or(0).min(10_000);
    let events = futures_util::stream::unfold(0u64, move |i| {
        let usage = usage.clone();
        async move {
            if i > completion_tokens + 1 {
                return None;
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let data = if i < completion_tokens {
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok "}}]}).to_string()
            } else if i == completion_tokens {
                json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}).to_string()
            } else {
                "[DONE]".to_owned()
            };
            Some((
                Ok::<_, std::io::Error>(Bytes::from(format!("data: {data}\n\n"))),
                i + 1,
            ))
        }
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

async fn stream(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let chunks: u64 = q
        .get("chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .min(10_000);
    let delay: u64 = q
        .get("delay_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(60_000);
    let s = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let frame = Bytes::from(format!("data: {{\"chunk\":{i}}}\n\n"));
        Some((Ok::<_, std::io::Error>(frame), i + 1))
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(s),
    )
        .into_response()
}

async fn echo(
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(ms) = q.get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = q
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut h = BTreeMap::new();
    for (k, v) in &headers {
        h.entry(k.as_str().to_owned())
            .or_insert_with(Vec::new)
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut out = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": h,
        "body_bytes": body.len(),
    });
    if let Some(n) = q.get("bytes").and_then(|v| v.parse::<usize>().ok()) {
        let len = out.to_string().len();
        out["pad"] = "x"
            .repeat(n.saturating_sub(len + 10).min(10_000_000))
            .into();
    }
    let mut res = (status, Json(out)).into_response();
    if let Some(units) = q.get("units").and_then(|v| v.parse::<u64>().ok()) {
        res.headers_mut().insert("x-units", units.into());
    }
    res
}

//! JSON-RPC 2.0 messages as MCP's Streamable HTTP transport carries them: one message per
//! `POST`, answered with `application/json` or as one event of a `text/event-stream`.
//!
//! [`parse`] sorts a request body into a [`Message`] or the [`Error`] to answer (never a
//! panic, never an HTTP error: bad input is a JSON-RPC error with a stable code). Batches (a
//! JSON array) are refused: MCP 2025-06-18 removed them, and a batch would let one `POST` carry
//! paid calls past a per-message check. [`sse_events`] reads the events of an event-stream
//! body (the answer of an upstream MCP server).

use serde::Serialize;
use serde_json::{Map, Value};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a JSON-RPC 2.0 request object (and batches).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method (or tool).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Bad parameters (a malformed credential too).
pub const INVALID_PARAMS: i64 = -32602;
/// A bug or an upstream that answered garbage; details only in the log.
pub const INTERNAL_ERROR: i64 = -32603;
/// The Payment scheme's MCP transport (draft-payment-transport-mcp): payment required, with
/// the challenges in `data`.
pub const PAYMENT_REQUIRED: i64 = -32042;
/// The Payment scheme's MCP transport: a credential was presented and refused.
pub const PAYMENT_VERIFICATION_FAILED: i64 = -32043;
/// Tollgate: a refusal that is not about the payment itself (blocked payer, revoked receipt,
/// a mandate's limits, an expired token); `data.problem.code` says which.
pub const REFUSED: i64 = -32030;
/// Tollgate: try again later (a receipt in use, a rate limit, the store or the upstream
/// unavailable); `data.retryAfter` when known. Nothing was charged.
pub const UNAVAILABLE: i64 = -32031;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Error {
    /// The stable code (the constants of this module).
    pub code: i64,
    /// A short human message.
    pub message: String,
    /// What the client needs to act (challenges, the problem), when there is something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Error {
    /// An error with no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The error with `data`.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// One JSON-RPC message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request: it is answered with a response carrying its `id`.
    Request {
        /// A string or a number.
        id: Value,
        /// The method name.
        method: String,
        /// The parameters (an object), if any.
        params: Option<Map<String, Value>>,
    },
    /// A notification (no `id`): never answered.
    Notification {
        /// The method name.
        method: String,
    },
    /// A response to a request the server made (a client answering an elicitation).
    Response,
}

/// A body that is not one message: the error to answer (with a `null` id).
pub fn parse(body: &[u8]) -> Result<Message, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::new(PARSE_ERROR, format!("Parse error: {e}")))?;
    let obj = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(Error::new(
                INVALID_REQUEST,
                "Invalid Request: batch requests are not supported (MCP 2025-06-18 removed \
                 them); send one message per POST",
            ))
        }
        _ => {
            return Err(Error::new(
                INVALID_REQUEST,
                "Invalid Request: a JSON-RPC 2.0 message is an object",
            ))
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Error::new(
            INVALID_REQUEST,
            "Invalid Request: \"jsonrpc\" must be \"2.0\"",
        ));
    }
    let Some(method) = obj.get("method") else {
        if obj.contains_key("id") && (obj.contains_key("result") || obj.contains_key("error")) {
            return Ok(Message::Response);
        }
        return Err(Error::new(
            INVALID_REQUEST,
            "Invalid Request: no \"method\"",
        ));
    };
    let Some(method) = method.as_str().map(str::to_owned) else {
        return Err(Error::new(
            INVALID_REQUEST,
            "Invalid Request: \"method\" must be a string",
        ));
    };
    let params = match obj.get("params") {
        None => None,
        Some(Value::Object(p)) => Some(p.clone()),
        Some(_) => {
            return Err(Error::new(
                INVALID_REQUEST,
                "Invalid Request: \"params\" must be an object",
            ))
        }
    };
    match obj.get("id") {
        None => Ok(Message::Notification { method }),
        Some(id @ (Value::String(_) | Value::Number(_))) => Ok(Message::Request {
            id: id.clone(),
            method,
            params,
        }),
        Some(_) => Err(Error::new(
            INVALID_REQUEST,
            "Invalid Request: \"id\" must be a string or a number",
        )),
    }
}

/// A request message.
pub fn request(id: &Value, method: &str, params: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.clone());
    m.insert("method".into(), method.into());
    m.insert("params".into(), Value::Object(params));
    Value::Object(m)
}

/// A response carrying `result`.
pub fn result(id: &Value, result: Value) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.clone());
    m.insert("result".into(), result);
    Value::Object(m)
}

/// A response carrying `error` (`id` is `null` when the request's could not be read).
pub fn error(id: &Value, error: &Error) -> Value {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), "2.0".into());
    m.insert("id".into(), id.clone());
    m.insert(
        "error".into(),
        serde_json::to_value(error).unwrap_or(Value::Null),
    );
    Value::Object(m)
}

/// The `data:` payload of each event of a `text/event-stream` body, in order (multi-line data
/// joined with `\n`, as the SSE rules say), with the event's `id:` if it has one.
pub fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let (mut id, mut data): (Option<String>, Option<String>) = (None, None);
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push((id.take(), d));
            }
            id = None;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "id" => id = Some(value.to_owned()),
            _ => {}
        }
    }
    if let Some(d) = data {
        out.push((id, d));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_messages_and_refuses_everything_else() {
        let ok = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#).unwrap();
        assert_eq!(
            ok,
            Message::Request {
                id: json!(7),
                method: "tools/list".into(),
                params: None
            }
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap(),
            Message::Notification {
                method: "notifications/initialized".into()
            }
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":"a","result":{}}"#).unwrap(),
            Message::Response
        );
        for (body, code) in [
            (&b"{"[..], PARSE_ERROR),
            (b"", PARSE_ERROR),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                INVALID_REQUEST,
            ),
            (b"3", INVALID_REQUEST),
            (br#"{"id":1,"method":"ping"}"#, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (br#"{"jsonrpc":"2.0","id":1}"#, INVALID_REQUEST),
            (br#"{"jsonrpc":"2.0","id":1,"method":5}"#, INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
                INVALID_REQUEST,
            ),
        ] {
            assert_eq!(parse(body).unwrap_err().code, code, "{body:?}");
        }
    }

    #[test]
    fn writes_responses() {
        assert_eq!(
            result(&json!(1), json!({})),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}})
        );
        let e = Error::new(PAYMENT_REQUIRED, "Payment Required").with_data(json!({"x": 1}));
        assert_eq!(
            error(&Value::Null, &e),
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32042, "message": "Payment Required", "data": {"x": 1}}})
        );
    }

    #[test]
    fn reads_event_streams() {
        let body = "event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n: ping\n\ndata: x\ndata: y\n\ndata: last";
        assert_eq!(
            sse_events(body),
            vec![
                (Some("1".into()), "{\"a\":1}".into()),
                (None, "x\ny".into()),
                (None, "last".into())
            ]
        );
    }
}

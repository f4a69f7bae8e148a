//! Paid MCP tools: a route with `[routes.mcp]` proxies an upstream MCP server (Streamable
//! HTTP) and sells `tools/call` per tool name, through the same engine as HTTP requests.
//!
//! - `tools/call` of a priced tool: the credential (the call's `_meta`, else the request's
//!   `Authorization`) is admitted by [`Paywall::admit`] against the tool's own route
//!   (`<route id>/<tool>`: challenges, receipts' single use, the ledger's `route`), the call is
//!   forwarded without the payment in `_meta` and with `Tollgate-Payer`/`Tollgate-Charge`, the
//!   upstream's answer is read whole (up to `max_response_bytes`), and [`Admission::settle`]
//!   captures it only when the answer is a result without `isError` -- a JSON-RPC error, an
//!   `isError: true` result, an HTTP error or no answer releases (nothing charged). The result
//!   then carries `_meta["x402/payment-response"]` (and `org.paymentauth/receipt` for the
//!   Payment scheme's credential). A refusal, or a capture that could not be recorded (fail
//!   closed: the result is withheld), is a JSON-RPC error from [`Paywall::render_jsonrpc`].
//! - `tools/list`: forwarded, each tool's price added as `_meta["tollgate/price"]`.
//! - Everything else (`initialize`, notifications, other methods, `GET` streams, `DELETE`):
//!   forwarded free, payment headers removed; a `GET` loses `Last-Event-ID`, so a paid result
//!   is never replayed on a resumed stream; a request sent without an id (a "notification"
//!   whose method is not `notifications/...`) is refused, as it would run unanswered and unpaid.
//!
//! [`Admission::settle`]: tollgate_middleware::Admission::settle

use std::collections::BTreeMap;

use tollgate_middleware::meter::UsageReading;
use tollgate_middleware::paywall::mcp::X402_PAYMENT;
use tollgate_middleware::paywall::mcp::{admission_headers, settled_meta, PAYMENT_CREDENTIAL};
use tollgate_middleware::{BodyEnd, Head, PricedRoute};

use super::*;
use crate::config::McpRoute;

/// The `_meta` key of a tool's price in `tools/list`.
pub(crate) const PRICE_META: &str = "tollgate/price";

/// The tools of an MCP route as the engine sees them.
#[derive(Debug)]
pub(crate) struct Tools {
    /// Each named tool's route (`<route id>/<tool>`).
    named: BTreeMap<String, Arc<PricedRoute>>,
    /// The route itself: its price is what an unnamed tool costs.
    base: Arc<PricedRoute>,
    /// The largest upstream answer read.
    max_response_bytes: usize,
}

/// Whether a tool name may be part of a route id (what `[routes.mcp.tools]` accepts).
fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Tools {
    /// The tools of a route priced as `base` (its rate limit, group, capture and timeout hold
    /// for every tool).
    pub(crate) fn new(mcp: &McpRoute, base: &PricedRoute) -> Self {
        let named = mcp
            .tools
            .iter()
            .map(|(name, (price, description))| {
                let mut p = Self::tool_route(base, name);
                p.price = price.clone();
                if let Some(d) = description {
                    p.description = d.clone();
                }
                (name.clone(), Arc::new(p))
            })
            .collect();
        Tools {
            named,
            base: Arc::new(base.clone()),
            max_response_bytes: mcp.max_response_bytes,
        }
    }

    fn tool_route(base: &PricedRoute, name: &str) -> PricedRoute {
        let mut p = base.clone();
        // In the route's group: mandates and plans name route groups.
        p.group = Some(base.group_name().to_owned());
        p.id = format!("{}/{name}", base.id);
        p.description = format!("{} (MCP tool {name})", base.description);
        p.x402 = None;
        p
    }

    /// The route of a tool call (`None`: a name that cannot be one).
    pub(crate) fn lookup(&self, name: &str) -> Option<Arc<PricedRoute>> {
        if let Some(p) = self.named.get(name) {
            return Some(p.clone());
        }
        valid_name(name).then(|| Arc::new(Self::tool_route(&self.base, name)))
    }

    /// The route of a tool by name, for a quote (an invalid name is quoted at the route's
    /// price; a call with it is refused).
    pub(crate) fn priced(&self, name: &str) -> Arc<PricedRoute> {
        self.lookup(name).unwrap_or_else(|| self.base.clone())
    }

    /// The catalog's view: each named tool's price and the price of the others.
    pub(crate) fn catalog(&self) -> Value {
        let tools: serde_json::Map<String, Value> = self
            .named
            .iter()
            .map(|(n, p)| (n.clone(), crate::catalog::price_json(&p.price)))
            .collect();
        json!({"tools": tools, "otherTools": crate::catalog::price_json(&self.base.price)})
    }
}

fn unavailable(detail: &str) -> jsonrpc::Error {
    jsonrpc::Error::new(jsonrpc::UNAVAILABLE, "Unavailable; retry later").with_data(json!({
        "problem": tollgate_middleware::Problem::new(ErrorCode::UpstreamUnavailable).detail(detail),
    }))
}

/// Serve one request on an MCP route.
pub(crate) async fn serve(inner: &Inner, m: &Matched, tools: &Tools, mut req: Request) -> Response {
    // Only Tollgate tells the upstream who paid.
    req.headers_mut().remove(TOLLGATE_PAYER);
    req.headers_mut().remove(TOLLGATE_CHARGE);
    req.extensions_mut().insert(m.route.clone());
    if req.method() != http::Method::POST {
        credential::strip(req.headers_mut());
        req.headers_mut().remove("last-event-id");
        return forward(m, req).await;
    }
    let (mut parts, body) = req.into_parts();
    let limit = usize::try_from(m.route.max_body_bytes).unwrap_or(usize::MAX);
    let body = match read_body(body, limit).await {
        Ok(b) => b,
        Err(e) => return error_answer(&Value::Null, &e),
    };
    let message = match jsonrpc::parse(&body) {
        Ok(msg) => msg,
        Err(e) => return error_answer(&Value::Null, &e),
    };
    let asked = parts.headers.clone();
    credential::strip(&mut parts.headers);
    match message {
        jsonrpc::Message::Request { id, method, params } if method == "tools/call" => {
            let call = Call {
                inner,
                m,
                tools,
                id,
                asked,
            };
            call.serve(parts, body, params).await
        }
        jsonrpc::Message::Request { id, method, .. } if method == "tools/list" => {
            list(m, tools, parts, body, &id).await
        }
        // A request sent as a notification (no id) would run unanswered -- and unpaid.
        jsonrpc::Message::Notification { method } if !method.starts_with("notifications/") => {
            error_answer(
                &Value::Null,
                &jsonrpc::Error::new(
                    jsonrpc::INVALID_REQUEST,
                    format!(
                        "Invalid Request: {method:?} is not a notification: send it with an id"
                    ),
                ),
            )
        }
        _ => forward(m, Request::from_parts(parts, Body::from(body))).await,
    }
}

async fn forward(m: &Matched, req: Request) -> Response {
    crate::router::forward_counted(&m.proxy, &m.route.id, req).await
}

/// One `tools/call`.
struct Call<'a> {
    inner: &'a Inner,
    m: &'a Matched,
    tools: &'a Tools,
    id: Value,
    /// The request's headers as sent (credentials included).
    asked: http::HeaderMap,
}

impl Call<'_> {
    fn refuse(
        &self,
        r: &tollgate_middleware::Refusal,
        route: &PricedRoute,
        uri: &http::Uri,
    ) -> Response {
        let head = Head {
            method: &http::Method::POST,
            uri,
            headers: &self.asked,
        };
        error_answer(
            &self.id,
            &self.inner.paywall.render_jsonrpc(r, Some((route, head))),
        )
    }

    async fn serve(
        self,
        mut parts: http::request::Parts,
        body: Bytes,
        params: Option<serde_json::Map<String, Value>>,
    ) -> Response {
        let Some(mut params) = params else {
            return error_answer(
                &self.id,
                &jsonrpc::Error::new(
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: tools/call needs params.name",
                ),
            );
        };
        let Some(name) = params
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return error_answer(
                &self.id,
                &jsonrpc::Error::new(
                    jsonrpc::INVALID_PARAMS,
                    "Invalid params: params.name must be a string",
                ),
            );
        };
        let Some(route) = self.tools.lookup(&name) else {
            return error_answer(
                &self.id,
                &jsonrpc::Error::new(jsonrpc::INVALID_PARAMS, "Unknown tool")
                    .with_data(json!({"tool": name})),
            );
        };
        if matches!(route.price, Price::Free) {
            return forward(self.m, Request::from_parts(parts, Body::from(body))).await;
        }
        let meta = params.get("_meta").cloned();
        let uri = parts.uri.clone();
        let headers = match admission_headers(&self.asked, meta.as_ref()) {
            Ok(h) => h,
            Err(r) => return self.refuse(&r, &route, &uri),
        };
        let admission = match self
            .inner
            .paywall
            .admit(&route, &http::Method::POST, &uri, &headers)
            .await
        {
            Ok(Some(a)) => a,
            Ok(None) => return forward(self.m, Request::from_parts(parts, Body::from(body))).await,
            Err(r) => return self.refuse(&r, &route, &uri),
        };
        // The upstream gets the call without the payment, and who paid.
        if let Some(Value::Object(meta)) = params.get_mut("_meta") {
            meta.remove(X402_PAYMENT);
            meta.remove(PAYMENT_CREDENTIAL);
        }
        let forwarded = jsonrpc::request(&self.id, "tools/call", params);
        let payment = admission.payment().clone();
        let h = &mut parts.headers;
        if let Ok(v) = HeaderValue::from_str(&payment.payer) {
            h.insert(TOLLGATE_PAYER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&payment.charge.to_string()) {
            h.insert(TOLLGATE_CHARGE, v);
        }
        // Read as sent: the answer is parsed to meter and settle it.
        h.remove(header::ACCEPT_ENCODING);
        let res = forward(
            self.m,
            Request::from_parts(parts, Body::from(forwarded.to_string())),
        )
        .await;
        let answer = match self.read_answer(res).await {
            Ok(a) => a,
            Err(e) => {
                let _ = admission.settle(None, None).await;
                return error_answer(&self.id, &e);
            }
        };
        if answer.failed() {
            // The tool did not run to a result: nothing is charged, the answer is delivered.
            let _ = admission.settle(Some(502), None).await;
            return answer.response();
        }
        let usage = admission.metered().map(|metered| {
            let mut h = answer.head.headers.clone();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let mut reading = UsageReading::start(metered, &h);
            reading.feed(metered, &Bytes::from(answer.events[answer.index].1.clone()));
            reading.request_bytes = admission.request_bytes();
            reading.duration_ms = admission.elapsed_ms();
            (reading.finish(metered), BodyEnd::Complete)
        });
        let challenge_id = meta
            .as_ref()
            .and_then(|m| m.get(PAYMENT_CREDENTIAL))
            .and_then(|c| c.pointer("/challenge/id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        match admission.settle(Some(200), usage).await {
            Ok(settled) => {
                let mut answer = answer;
                answer.add_result_meta(settled_meta(&settled, challenge_id.as_deref()));
                let mut res = answer.response();
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-store"),
                );
                res
            }
            // The charge could not be recorded: the result is withheld (fail closed).
            Err(r) => self.refuse(&r, &route, &uri),
        }
    }

    /// The upstream's answer to this call, or why there is none to settle (nothing is charged).
    async fn read_answer(&self, res: Response) -> Result<Answer, jsonrpc::Error> {
        if res.extensions().get::<ErrorCode>().is_some() || !res.status().is_success() {
            tracing::warn!(status = %res.status(), route = %self.m.route.id, "MCP upstream failed a paid tools/call");
            return Err(unavailable(
                "the upstream MCP server failed; nothing was charged",
            ));
        }
        // Bounded in time as the hold is: a stream that never ends is not waited for.
        let limit = self.tools.max_response_bytes;
        match tokio::time::timeout(self.m.route.timeout, read_answer(res, limit, &self.id)).await {
            Ok(answer) => answer,
            Err(_) => Err(unavailable(
                "the upstream's answer did not end within the route's timeout; nothing was charged",
            )),
        }
    }
}

/// An upstream's answer to one request: the events of its event stream (or its one JSON
/// message), and which of them is the response.
struct Answer {
    head: http::response::Parts,
    sse: bool,
    /// `(id, data)` of each event; a JSON answer is one.
    events: Vec<(Option<String>, String)>,
    /// The response to the request.
    index: usize,
    message: Value,
}

async fn read_answer(res: Response, limit: usize, id: &Value) -> Result<Answer, jsonrpc::Error> {
    let (head, body) = res.into_parts();
    if head
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return Err(unavailable(
            "the upstream answered in a content coding; nothing was charged",
        ));
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(unavailable(&format!(
                "the upstream's answer broke off or is over {limit} bytes; nothing was charged"
            )))
        }
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| unavailable("the upstream's answer is not UTF-8"))?;
    let sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let events = if sse {
        jsonrpc::sse_events(text)
    } else {
        vec![(None, text.to_owned())]
    };
    let found = events.iter().enumerate().find_map(|(i, (_, data))| {
        let v: Value = serde_json::from_str(data).ok()?;
        (v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some()))
            .then_some((i, v))
    });
    let Some((index, message)) = found else {
        return Err(unavailable(
            "the upstream answered no JSON-RPC response to this call; nothing was charged",
        ));
    };
    Ok(Answer {
        head,
        sse,
        events,
        index,
        message,
    })
}

impl Answer {
    /// The call failed: a JSON-RPC error, or a result with `isError: true`.
    fn failed(&self) -> bool {
        self.message.get("error").is_some()
            || self.message.pointer("/result/isError") == Some(&Value::Bool(true))
            || !self.message.get("result").is_some_and(Value::is_object)
    }

    /// Add `meta` to the result's `_meta`.
    fn add_result_meta(&mut self, meta: serde_json::Map<String, Value>) {
        let Some(result) = self
            .message
            .get_mut("result")
            .and_then(Value::as_object_mut)
        else {
            return;
        };
        let slot = result.entry("_meta").or_insert_with(|| json!({}));
        if !slot.is_object() {
            *slot = json!({});
        }
        if let Some(m) = slot.as_object_mut() {
            m.extend(meta);
        }
        self.events[self.index].1 = self.message.to_string();
    }

    /// The answer as the client gets it: the upstream's head and events, the response's
    /// message as it is now.
    fn response(self) -> Response {
        let mut head = self.head;
        head.headers.remove(header::CONTENT_LENGTH);
        let body = if self.sse {
            let mut out = String::new();
            for (id, data) in &self.events {
                out.push_str("event: message\n");
                if let Some(id) = id {
                    out.push_str("id: ");
                    out.push_str(id);
                    out.push('\n');
                }
                for line in data.split('\n') {
                    out.push_str("data: ");
                    out.push_str(line);
                    out.push('\n');
                }
                out.push('\n');
            }
            out
        } else {
            self.events
                .into_iter()
                .next()
                .map(|(_, d)| d)
                .unwrap_or_default()
        };
        Response::from_parts(head, Body::from(body))
    }
}

/// `tools/list`, forwarded, with each tool's price in its `_meta`.
async fn list(
    m: &Matched,
    tools: &Tools,
    mut parts: http::request::Parts,
    body: Bytes,
    id: &Value,
) -> Response {
    parts.headers.remove(header::ACCEPT_ENCODING);
    let res = forward(m, Request::from_parts(parts, Body::from(body))).await;
    if res.extensions().get::<ErrorCode>().is_some() || !res.status().is_success() {
        return res;
    }
    let mut answer = match read_answer(res, tools.max_response_bytes, id).await {
        Ok(a) => a,
        Err(e) => return error_answer(id, &e),
    };
    if let Some(list) = answer
        .message
        .pointer_mut("/result/tools")
        .and_then(Value::as_array_mut)
    {
        for tool in list.iter_mut().filter_map(Value::as_object_mut) {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let price = crate::catalog::price_json(&tools.priced(name).price);
            let slot = tool.entry("_meta").or_insert_with(|| json!({}));
            if !slot.is_object() {
                *slot = json!({});
            }
            if let Some(meta) = slot.as_object_mut() {
                meta.insert(PRICE_META.into(), price);
            }
        }
        answer.events[answer.index].1 = answer.message.to_string();
    }
    answer.response()
}

//! The agent's MCP server at `<agent api>/mcp`: what the HTTP agent endpoints and the catalog
//! offer, as MCP tools (and the catalog as a resource), answered by the same calls --
//! [`Paywall::agent_api`] for top-up, subscribe, token renewal and the balance (their answer
//! becomes the tool's result, their refusal a JSON-RPC error), the bill's `page`, the catalog's
//! `catalog_json`. Credentials as on HTTP: `Authorization: Bearer <access token>` on the MCP
//! request, a receipt in the tool's `receipt` argument (or `Authorization: Payment`, or
//! `_meta["org.paymentauth/credential"]`).

use tollgate_middleware::paywall::mcp::{admission_headers, jsonrpc_code, PAYMENT_CREDENTIAL};
use tollgate_middleware::paywall::RequestLine;
use tollgate_middleware::Head;

use super::*;

/// The catalog resource.
const CATALOG_URI: &str = "tollgate://catalog";

/// The largest message read.
const MAX_MESSAGE: usize = 1024 * 1024;

/// Serve one request to the agent MCP endpoint.
pub(crate) async fn serve(gw: &Gateway, inner: &Inner, req: Request) -> Response {
    if req.method() != http::Method::POST {
        // No server-initiated stream and no session to end (Streamable HTTP allows 405).
        let mut res = problem(
            ErrorCode::MethodNotAllowed,
            "MCP messages are sent with POST (this server opens no event stream)",
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, MAX_MESSAGE).await {
        Ok(b) => b,
        Err(e) => return error_answer(&Value::Null, &e),
    };
    match jsonrpc::parse(&body) {
        Err(e) => error_answer(&Value::Null, &e),
        Ok(jsonrpc::Message::Notification { .. } | jsonrpc::Message::Response) => accepted(),
        Ok(jsonrpc::Message::Request { id, method, params }) => {
            match dispatch(gw, inner, &parts, &method, params.as_ref()).await {
                Ok(v) => json_answer(&jsonrpc::result(&id, v)),
                Err(e) => error_answer(&id, &e),
            }
        }
    }
}

fn invalid_params(detail: impl Into<String>) -> jsonrpc::Error {
    let detail = detail.into();
    jsonrpc::Error::new(jsonrpc::INVALID_PARAMS, "Invalid params").with_data(json!({
        "problem": tollgate_middleware::Problem::new(ErrorCode::InvalidRequest).detail(detail),
    }))
}

async fn dispatch(
    gw: &Gateway,
    inner: &Inner,
    parts: &http::request::Parts,
    method: &str,
    params: Option<&serde_json::Map<String, Value>>,
) -> Result<Value, jsonrpc::Error> {
    match method {
        "initialize" => Ok(json!({
            "protocolVersion": protocol_version(params),
            "capabilities": {"tools": {"listChanged": false}, "resources": {"listChanged": false, "subscribe": false}},
            "serverInfo": {"name": "tollgate", "title": "Tollgate agent API", "version": env!("CARGO_PKG_VERSION")},
            "instructions": "Read the catalog (tool catalog or resource tollgate://catalog), quote a call, \
                top up with a receipt (tool topup) to get an access token, then send \
                Authorization: Bearer <token> to read the balance and your bill (tool usage).",
        })),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tool_list()})),
        "tools/call" => call(gw, inner, parts, params).await,
        "resources/list" => Ok(json!({"resources": [{
            "uri": CATALOG_URI,
            "name": "catalog",
            "title": "Price catalog",
            "description": "What is sold here, at what price, and how to pay (GET /.well-known/tollgate)",
            "mimeType": "application/json",
        }]})),
        "resources/templates/list" => Ok(json!({"resourceTemplates": []})),
        "resources/read" => {
            let uri = params.and_then(|p| p.get("uri")).and_then(Value::as_str);
            if uri != Some(CATALOG_URI) {
                // MCP's code for an unknown resource.
                return Err(jsonrpc::Error::new(-32002, "Resource not found")
                    .with_data(json!({"uri": uri})));
            }
            Ok(json!({"contents": [{
                "uri": CATALOG_URI,
                "mimeType": "application/json",
                "text": crate::catalog::catalog_json(inner).to_string(),
            }]}))
        }
        _ => Err(
            jsonrpc::Error::new(jsonrpc::METHOD_NOT_FOUND, "Method not found")
                .with_data(json!({"method": method})),
        ),
    }
}

/// The tools, with their input schemas.
fn tool_list() -> Value {
    let none = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let receipt = |kind: &str| {
        json!({
            "type": "object",
            "properties": {"receipt": {"type": "string", "description": format!("a kind \"{kind}\" receipt (compact JWS) from your wallet; or send Authorization: Payment")}},
            "additionalProperties": false,
        })
    };
    json!([
        {"name": "catalog", "title": "Price catalog", "description": "Everything sold here: routes, MCP tools, prices, plans, currencies, issuers and how to pay.", "inputSchema": none, "annotations": {"readOnlyHint": true}},
        {"name": "plans", "title": "Plans", "description": "The plans sold (subscriptions and passes).", "inputSchema": none, "annotations": {"readOnlyHint": true}},
        {"name": "quote", "title": "Quote a call", "description": "The price of one call (a path and method, a route id, or a route's MCP tool) and the offers to pay it with (challenge ids a receipt may bind to).",
         "inputSchema": {"type": "object", "properties": {
            "path": {"type": "string", "description": "the request path, e.g. /v1/compute"},
            "method": {"type": "string", "description": "the HTTP method (default GET; POST for MCP tools)"},
            "route": {"type": "string", "description": "a route id instead of a path"},
            "tool": {"type": "string", "description": "on an MCP route: the tool's name"}},
            "additionalProperties": false}, "annotations": {"readOnlyHint": true}},
        {"name": "balance", "title": "Balance", "description": "Your prepaid balances (Authorization: Bearer <access token>).", "inputSchema": none, "annotations": {"readOnlyHint": true}},
        {"name": "usage", "title": "Your bill", "description": "Your recent charges, newest first (Authorization: Bearer <access token>); pass nextBefore as before for the next page.",
         "inputSchema": {"type": "object", "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "events per page (default 100)"},
            "before": {"type": "string", "description": "an event id: the page after it"}},
            "additionalProperties": false}, "annotations": {"readOnlyHint": true}},
        {"name": "topup", "title": "Top up", "description": "Credit a kind \"topup\" receipt to your balance (exactly once) and get an access token.", "inputSchema": receipt("topup"), "annotations": {"idempotentHint": true}},
        {"name": "subscribe", "title": "Subscribe", "description": "Buy a plan period with a kind \"subscribe\" receipt naming the plan, and get an access token.", "inputSchema": receipt("subscribe"), "annotations": {"idempotentHint": true}},
        {"name": "token", "title": "Renew token", "description": "A fresh access token for a still valid one (Authorization: Bearer <access token>).", "inputSchema": none},
    ])
}

async fn call(
    gw: &Gateway,
    inner: &Inner,
    parts: &http::request::Parts,
    params: Option<&serde_json::Map<String, Value>>,
) -> Result<Value, jsonrpc::Error> {
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Err(invalid_params("tools/call needs params.name (a string)"));
    };
    let empty = serde_json::Map::new();
    let args = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(a)) => a,
        Some(_) => return Err(invalid_params("params.arguments must be an object")),
    };
    let api = inner.agent_api.as_str();
    let engine = |method: http::Method, path: &'static str, headers: http::HeaderMap| async move {
        let path = format!("{api}{path}");
        let line = RequestLine {
            method: &parts.method,
            uri: &parts.uri,
        };
        match inner
            .paywall
            .agent_api_as(&method, &path, &headers, line)
            .await
        {
            Some(reply) => from_reply(reply),
            None => Err(jsonrpc::Error::new(
                jsonrpc::INTERNAL_ERROR,
                "Internal error",
            )),
        }
    };
    match name {
        "catalog" => Ok(tool_result(crate::catalog::catalog_json(inner))),
        "plans" => {
            let plans: Vec<Value> = inner.paywall.plans().iter().map(|p| p.catalog()).collect();
            Ok(tool_result(json!({"plans": plans})))
        }
        "quote" => quote(inner, parts, args).map(tool_result),
        "balance" => engine(http::Method::GET, "/balance", parts.headers.clone()).await,
        "token" => engine(http::Method::POST, "/token", parts.headers.clone()).await,
        "topup" | "subscribe" => {
            let headers = receipt_headers(inner, parts, params, args)?;
            let path = if name == "topup" {
                "/topup"
            } else {
                "/subscribe"
            };
            engine(http::Method::POST, path, headers).await
        }
        "usage" => usage(gw, inner, parts, args).await,
        _ => Err(jsonrpc::Error::new(jsonrpc::INVALID_PARAMS, "Unknown tool")
            .with_data(json!({"tool": name}))),
    }
}

/// The headers a top-up or subscribe is sent with: the MCP request's, with the `receipt`
/// argument (or the call's `_meta` credential) in place of any credential header.
fn receipt_headers(
    inner: &Inner,
    parts: &http::request::Parts,
    params: Option<&serde_json::Map<String, Value>>,
    args: &serde_json::Map<String, Value>,
) -> Result<http::HeaderMap, jsonrpc::Error> {
    let meta = match args.get("receipt") {
        Some(Value::String(r)) => Some(json!({PAYMENT_CREDENTIAL: r})),
        Some(_) => return Err(invalid_params("receipt must be a string (a compact JWS)")),
        None => params.and_then(|p| p.get("_meta")).cloned(),
    };
    admission_headers(&parts.headers, meta.as_ref())
        .map_err(|r| inner.paywall.render_jsonrpc(&r, None))
}

/// An agent endpoint's answer as a tool result, its refusal as a JSON-RPC error carrying the
/// same problem.
fn from_reply(reply: tollgate_middleware::Reply) -> Result<Value, jsonrpc::Error> {
    let status = reply.status();
    let code = reply.extensions().get::<ErrorCode>().copied();
    let body: Value = serde_json::from_slice(reply.body()).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(tool_result(body));
    }
    let (c, message) = jsonrpc_code(code.unwrap_or(ErrorCode::Internal));
    Err(jsonrpc::Error::new(c, message)
        .with_data(json!({"httpStatus": status.as_u16(), "problem": body})))
}

fn arg_str<'a>(
    args: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, jsonrpc::Error> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid_params(format!("{key} must be a string"))),
    }
}

/// `quote`: the route a call would match, its price, and the offers a 402 would carry.
fn quote(
    inner: &Inner,
    parts: &http::request::Parts,
    args: &serde_json::Map<String, Value>,
) -> Result<Value, jsonrpc::Error> {
    let tool = arg_str(args, "tool")?;
    let default_method = if tool.is_some() { "POST" } else { "GET" };
    let method = arg_str(args, "method")?.unwrap_or(default_method);
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid_params("method is not an HTTP method"))?;
    let host = parts.headers.get(header::HOST).cloned();
    let (m, uri) = match (arg_str(args, "route")?, arg_str(args, "path")?) {
        (Some(id), None) => {
            let m = inner
                .routes
                .iter()
                .find(|m| m.route.id == id)
                .ok_or_else(|| invalid_params(format!("no route {id:?} (see the catalog)")))?;
            let uri: http::Uri = m
                .route
                .path
                .parse()
                .map_err(|_| invalid_params("the route's path is not a URI"))?;
            (m, uri)
        }
        (None, Some(path)) => {
            let uri: http::Uri = path
                .parse()
                .map_err(|_| invalid_params("path must be a request path, e.g. /v1/compute"))?;
            let uri = match path::canonicalize_uri(&uri, host.as_ref().map(HeaderValue::as_bytes)) {
                Ok(None) => uri,
                Ok(Some(u)) => u,
                Err(e) => return Err(invalid_params(e.to_string())),
            };
            let mut probe = Request::new(Body::empty());
            *probe.uri_mut() = uri.clone();
            if let Some(h) = &host {
                probe.headers_mut().insert(header::HOST, h.clone());
            }
            let m = inner
                .match_route(&probe)
                .ok_or_else(|| invalid_params("no route matches this path"))?;
            (m, uri)
        }
        _ => return Err(invalid_params("give one of path and route")),
    };
    let priced = match (tool, &m.tools) {
        (None, _) => m.priced.clone(),
        (Some(t), Some(tools)) => tools.priced(t),
        (Some(_), None) => return Err(invalid_params("this route is not an MCP route")),
    };
    let allowed = m.route.methods.is_empty() || m.route.methods.contains(&method);
    let mut out = json!({
        "route": priced.id,
        "path": uri.path(),
        "method": method.as_str(),
        "allowed": allowed,
        "price": crate::catalog::price_json(&priced.price),
    });
    if allowed && !matches!(priced.price, Price::Free) {
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &parts.headers,
        };
        let req = inner
            .paywall
            .requirements(&priced, (head.method, head.uri, head.headers));
        out["offers"] = serde_json::to_value(&req).unwrap_or(Value::Null);
    }
    Ok(out)
}

/// `usage`: the caller's own events (its bill), as `GET <agent api>/usage` pages them.
async fn usage(
    gw: &Gateway,
    inner: &Inner,
    parts: &http::request::Parts,
    args: &serde_json::Map<String, Value>,
) -> Result<Value, jsonrpc::Error> {
    let payer = inner
        .paywall
        .bearer_payer(
            &parts.headers,
            RequestLine {
                method: &parts.method,
                uri: &parts.uri,
            },
        )
        .await
        .map_err(|reply| from_reply(*reply).err().unwrap_or_else(internal))?;
    let mut q = std::collections::BTreeMap::new();
    for (k, v) in args {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(invalid_params(format!("{k} must be a string or a number"))),
        };
        if k == "format" {
            return Err(invalid_params(
                "unknown argument \"format\": use limit, before",
            ));
        }
        q.insert(k.clone(), v);
    }
    let (before, limit, _) = crate::bill::parse(&q).map_err(invalid_params)?;
    let Ok((events, next)) = crate::bill::page(gw, &payer, before.as_deref(), limit).await else {
        let r = tollgate_middleware::Refusal::plain(
            ErrorCode::StoreUnavailable,
            "the ledger is unreachable; retry later",
        );
        return Err(inner.paywall.render_jsonrpc(&r, None));
    };
    let events: Vec<Value> = events.iter().map(crate::bill::BillLine::json).collect();
    Ok(tool_result(
        json!({"payer": payer, "events": events, "nextBefore": next}),
    ))
}

fn internal() -> jsonrpc::Error {
    jsonrpc::Error::new(jsonrpc::INTERNAL_ERROR, "Internal error")
}

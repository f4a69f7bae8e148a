//! Every request: its id, its canonical path, the agent API, the route it matches, and the
//! payment layer in front of the proxy.

use super::*;

impl Inner {
    /// The first route whose prefix (and host, if it has one) the request is under. The path
    /// is canonical by now ([`path::canonicalize_uri`]).
    pub(crate) fn match_route(&self, req: &Request) -> Option<&Matched> {
        let path = req.uri().path();
        let host = req
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| req.uri().host().map(str::as_bytes))
            .map(path::host_name);
        self.routes.iter().find(|m| {
            let c = &*m.route;
            path::under_prefix(path, &c.path)
                && c.host.as_ref().is_none_or(|want| {
                    host.is_some_and(|h| h.eq_ignore_ascii_case(want.as_bytes()))
                })
        })
    }
}

/// Every request: a request id (propagated to the upstream and returned), a tracing span, and
/// the `tollgate_requests_total` count.
pub(crate) async fn handle(State(gw): State<Gateway>, mut req: Request) -> Response {
    use tracing::Instrument as _;
    let id = request_id(&req);
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    // The per-request span (every log line inside it names the request id) is at debug level:
    // at info, creating and formatting it costs ~5% of a free request's CPU (bench/RESULTS.md).
    // Warnings about an upstream carry the request id themselves.
    let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or("-"));
    let (route, mut res) = route_request(gw, req).instrument(span).await;
    tollgate_middleware::metrics::global()
        .requests
        .with_label_values(&[route.as_str(), res.status().as_str()])
        .inc();
    res.headers_mut().insert(X_REQUEST_ID, id);
    res
}

/// The route label for metrics (`agent` for the agent endpoints, `-` when nothing matches),
/// and the response.
///
/// Every branch but the free route's proxying awaits a boxed future: an async fn's state is as
/// large as its largest branch, and it is moved (copied) as it is built and boxed by the
/// server, so the paid path's, the agent endpoints' and MCP's state inline here cost every
/// request, free ones included, a copy of several kilobytes (bench/RESULTS.md).
pub(crate) async fn route_request(gw: Gateway, mut req: Request) -> (String, Response) {
    // One snapshot for the whole request, even if a reload happens meanwhile.
    let inner = gw.inner();
    let unmatched = |res: Response| ("-".to_owned(), res);
    // The path is made canonical before anything looks at it (agent endpoints, routes, the
    // payment layer's resource URL, the upstream).
    match path::canonicalize_uri(
        req.uri(),
        req.headers().get(header::HOST).map(HeaderValue::as_bytes),
    ) {
        Ok(None) => {}
        Ok(Some(uri)) => *req.uri_mut() = uri,
        Err(e) => return unmatched(problem(ErrorCode::PathInvalid, &e.to_string())),
    }
    // Agent endpoints (top-up, token, balance, the bill, MCP) are the gateway's own.
    let agent_rest = req.uri().path().strip_prefix(inner.agent_api.as_str());
    if req.method() == http::Method::GET && agent_rest == Some("/usage") {
        return (
            "agent".to_owned(),
            Box::pin(crate::bill::bill(&gw, &inner, req.headers(), req.uri())).await,
        );
    }
    if agent_rest == Some("/mcp") {
        return (
            "agent".to_owned(),
            Box::pin(crate::mcp::agent::serve(&gw, &inner, req)).await,
        );
    }
    if let Some(res) = Box::pin(inner.paywall.agent_api(
        req.method(),
        req.uri().path(),
        req.headers(),
    ))
    .await
    {
        return ("agent".to_owned(), res.map(Body::from));
    }
    // The route is matched once; the label and the serving use the same match.
    let Some(m) = inner.match_route(&req) else {
        return unmatched(problem(
            ErrorCode::RouteNotFound,
            "no route matches this path",
        ));
    };
    (m.route.id.clone(), serve_route(&inner, m, req).await)
}

pub(crate) async fn serve_route(inner: &Inner, m: &Matched, mut req: Request) -> Response {
    let route = m.route.clone();
    if !route.methods.is_empty() && !route.methods.contains(req.method()) {
        let mut res = problem(
            ErrorCode::MethodNotAllowed,
            "this route does not accept this method",
        );
        let allow = route
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            res.headers_mut().insert(header::ALLOW, v);
        }
        return res;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_body_bytes) {
        return problem(
            ErrorCode::BodyTooLarge,
            &format!("request body larger than {} bytes", route.max_body_bytes),
        );
    }
    if let Some(tools) = &m.tools {
        return Box::pin(crate::mcp::tools::serve(inner, m, tools, req)).await;
    }
    if matches!(m.priced.price, Price::Free) {
        // Free route: nothing to pay, so no payment layer -- only what it would do for a free
        // route (no client-sent payer/charge headers and no credentials reach the upstream).
        let headers = req.headers_mut();
        if headers
            .keys()
            .any(|k| k == TOLLGATE_PAYER || k == TOLLGATE_CHARGE)
        {
            headers.remove(TOLLGATE_PAYER);
            headers.remove(TOLLGATE_CHARGE);
        }
        credential::strip(headers);
        req.extensions_mut().insert(route.clone());
        if upgrade::is_websocket(&req) {
            return Box::pin(m.proxy.forward_upgrade(req)).await;
        }
        return forward_counted(&m.proxy, &route.id, req).await;
    }
    if upgrade::is_websocket(&req) {
        // Before the payment layer: no challenge, no charge, and never a free pass.
        return problem(
            ErrorCode::UpgradeNotSupported,
            "WebSocket is served on free routes only: this route is priced per request",
        );
    }
    req.extensions_mut().insert(m.priced.clone());
    req.extensions_mut().insert(route.clone());
    let proxy = m.proxy.clone();
    let upstream = tower::service_fn(move |req: Request| {
        let (proxy, route) = (proxy.clone(), route.clone());
        async move { Ok::<_, std::convert::Infallible>(forward_counted(&proxy, &route.id, req).await) }
    });
    let paid = PaymentLayer::new(inner.paywall.clone(), Arc::new(RouteFromExtension));
    match Box::pin(tower::Layer::layer(&paid, upstream).oneshot(req)).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

/// Forward to the upstream and count what it did in this process's traffic view (per route:
/// answered with which status and how fast, unreachable, timed out). A request the proxy
/// refused before it reached the upstream (a body over the limit) is not counted.
pub(crate) async fn forward_counted(proxy: &Proxy, route_id: &str, req: Request) -> Response {
    use tollgate_middleware::traffic::UpstreamOutcome;
    use tollgate_middleware::Clock as _;
    let started = std::time::Instant::now();
    let res = match proxy.forward(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    // The proxy's own answers carry their code; an upstream's response never does.
    let outcome = match res.extensions().get::<ErrorCode>() {
        None => Some(UpstreamOutcome::Answered(res.status().as_u16())),
        Some(ErrorCode::UpstreamTimeout) => Some(UpstreamOutcome::TimedOut),
        Some(ErrorCode::UpstreamUnavailable) => Some(UpstreamOutcome::Unreachable),
        Some(_) => None,
    };
    if let Some(outcome) = outcome {
        tollgate_middleware::traffic::global().record_upstream(
            tollgate_middleware::SystemClock.now_ms(),
            route_id,
            outcome,
            started.elapsed(),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future is built and moved (copied) before it first runs, free
    /// requests' too: `route_request` boxes every branch but the free proxying, so its size
    /// stays that of the free path whatever the paid, agent and MCP paths grow to. Printed, and
    /// bounded well above today's size (a regression here is a copy per request; see
    /// bench/RESULTS.md, 2026-12-04).
    #[tokio::test]
    async fn the_request_future_stays_small() {
        let config = crate::config::Config::from_str(
            "merchant = \"m\"\n[[routes]]\nid = \"free\"\npath = \"/\"\n\
             upstream = \"http://127.0.0.1:9\"\nprice = \"free\"\n",
        )
        .unwrap();
        let validated = config.validate(std::path::Path::new(".")).unwrap();
        let gw = Gateway::build(validated, &[7u8; 32]).await.unwrap();
        let req = Request::new(Body::empty());
        let handled = handle(State(gw.clone()), Request::new(Body::empty()));
        let routed = route_request(gw, req);
        let (h, r) = (
            std::mem::size_of_val(&handled),
            std::mem::size_of_val(&routed),
        );
        println!("handle: {h} bytes, route_request: {r} bytes");
        assert!(r <= 4096, "route_request's future is {r} bytes");
        assert!(h <= 4096 + 512, "handle's future is {h} bytes");
    }
}

//! The reverse proxy: forwards a request to its route's upstream over a pooled hyper client,
//! streaming bodies both ways.
//!
//! Upstreams are `http://` or `https://` through one connector type: TLS (rustls) is set up
//! only when a new `https://` connection is made, with SNI and the certificate checked against
//! the upstream's host and the route's [`UpstreamTrust`]; ALPN offers `h2` and `http/1.1`, so
//! HTTP/2 is used where the upstream offers it. A request on a pooled connection does no TLS
//! set-up, and an `http://` one no TLS work at all. WebSocket upgrades on free routes go
//! through `upgrade.rs` ([`Proxy::forward_upgrade`]).
//!
//! Request: hop-by-hop headers removed (and any header `Connection` names), payment headers
//! were already stripped by the payment layer, `Host` set to the upstream, `X-Forwarded-For`
//! appended with the client address, `X-Forwarded-Proto` (`https` when the client came over
//! the TLS listener) and `X-Forwarded-Host` set. The body is limited to the route's
//! `max_body_bytes`.
//! Response: hop-by-hop headers removed; body streamed as it arrives.
//! Failures become problem responses: unreachable 502 `upstream_unavailable`, no answer within
//! the route timeout 504 `upstream_timeout`, body over the limit 413 `body_too_large`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_middleware::{ErrorCode, Paywall, RequestBodyCounter};

use crate::config::Route;
use crate::tls::UpstreamTrust;

pub(crate) type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<
    bytes::Bytes,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// One connector for both schemes: plain TCP for `http://`, TCP + TLS for `https://`.
type Connector = HttpsConnector<HttpConnector>;

/// The pooled upstream clients of one trust store.
#[derive(Clone, Debug)]
pub struct Proxy {
    /// Every request: HTTP/2 where an `https://` upstream offers it (ALPN), else HTTP/1.1.
    client: Client<Connector, UpstreamBody>,
    /// WebSocket upgrades: ALPN `http/1.1` only, as an HTTP/2 connection cannot be upgraded.
    pub(crate) upgrades: Client<Connector, UpstreamBody>,
}

use tollgate_middleware::error::error_chain;

/// Remove hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too (only scanned when present: the common
    // case is cheap).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    // One scan of the (few) names present instead of a hash lookup per hop-by-hop name: most
    // messages carry none of them.
    if headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        for h in &HOP_BY_HOP {
            headers.remove(h);
        }
    }
}

/// Hop-by-hop headers besides `Connection` (RFC 9110 7.6.1, and the common non-standard ones).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The client's connection, made once per connection (server.rs) and reused for every request
/// on it: its address as a header value, and whether it came over TLS.
#[derive(Clone, Debug)]
pub struct ClientAddr {
    /// The client's IP address (`X-Forwarded-For`).
    pub ip: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl ClientAddr {
    /// The connection from `peer`.
    pub fn of(peer: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientAddr { ip, tls }
    }
}

/// A connector trusting `trust`, offering `h2` too when `h2` is set.
fn connector(trust: &UpstreamTrust, h2: bool) -> Connector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    // The TLS layer above takes `https://` URIs; this one only opens the TCP connection.
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config((*trust.client_config()).clone())
        .https_or_http()
        .enable_http1();
    if h2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    }
}

impl Proxy {
    /// Clients with connection pools, trusting `trust` for `https://` upstreams.
    pub fn new(trust: &UpstreamTrust) -> Self {
        let client = |h2| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .build(connector(trust, h2))
        };
        Proxy {
            client: client(true),
            upgrades: client(false),
        }
    }

    fn upstream_uri(route: &Route, uri: &Uri) -> Result<Uri, ()> {
        let base = &route.upstream;
        let authority = base.authority().ok_or(())?.clone();
        let base_path = base.path().trim_end_matches('/');
        let path_and_query = if base_path.is_empty() {
            // The common case: no base path, reuse the request's path and query as they are.
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
        } else {
            let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            format!("{base_path}{pq}").parse().map_err(|_| ())?
        };
        Uri::builder()
            .scheme(base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ())
    }

    /// Forward one request (its `Arc<Route>` is in the extensions).
    pub async fn forward(&self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let prepared = match Self::prepare(req) {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let res = match prepared.send(&self.client).await {
            Ok(res) => res,
            Err(refused) => return Ok(refused),
        };
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// The upstream request for a client's request: target, headers and body limit.
    // Both variants are a message head, moved once; boxing the refusal would buy nothing.
    #[allow(clippy::result_large_err)]
    pub(crate) fn prepare(req: Request<Body>) -> Result<Prepared, Response<Body>> {
        let Some(route) = req.extensions().get::<Arc<Route>>().cloned() else {
            return Err(problem(ErrorCode::Internal, "internal error"));
        };
        let conn = req.extensions().get::<ClientAddr>();
        let proto = match conn {
            Some(c) if c.tls => HTTPS,
            _ => HTTP,
        };
        let client_ip = conn.map(|c| c.ip.clone());
        let (mut parts, body) = req.into_parts();
        let Ok(uri) = Self::upstream_uri(&route, &parts.uri) else {
            return Err(problem(ErrorCode::Internal, "internal error"));
        };
        let original_host = parts.headers.get(header::HOST).cloned();
        // For the warnings below (the per-request span is at debug level).
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        // The client's framing never crosses: the body is re-framed from what was actually
        // decoded (exact length when known, else chunked), so a conflicting Content-Length /
        // Transfer-Encoding pair cannot desynchronize the upstream connection.
        headers.remove(header::CONTENT_LENGTH);
        if let Some(ip) = client_ip {
            let prior = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
            let value = match (prior, ip.to_str()) {
                (Some(p), Ok(ip)) => HeaderValue::from_str(&format!("{p}, {ip}")).ok(),
                _ => Some(ip),
            };
            if let Some(v) = value {
                headers.insert(X_FORWARDED_FOR, v);
            }
        }
        headers.insert(X_FORWARDED_PROTO, proto);
        if let Some(h) = original_host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        if let Some(host) = &route.upstream_host {
            headers.insert(header::HOST, host.clone());
        }
        parts.uri = uri;
        // HTTP/1.1 on an HTTP/1 connection; an HTTP/2 one (ALPN) sends HTTP/2 whatever this says.
        parts.version = http::Version::HTTP_11;
        let limit = usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX);
        // Count forwarded request bytes for `request_bytes` meters.
        let counter = parts.extensions.get::<RequestBodyCounter>().cloned();
        let body = Limited::new(body, limit).map_frame(move |frame| {
            if let (Some(c), Some(data)) = (&counter, frame.data_ref()) {
                c.0.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            frame
        });
        let body: UpstreamBody = body.boxed_unsync();
        Ok(Prepared {
            request: Request::from_parts(parts, body),
            route,
            request_id,
            limit,
        })
    }
}

/// A request ready for its upstream, with what its failures are reported with.
pub(crate) struct Prepared {
    /// The upstream request.
    pub(crate) request: Request<UpstreamBody>,
    /// Its route.
    pub(crate) route: Arc<Route>,
    /// The client request's id, for the warnings.
    request_id: String,
    /// The body limit, for the 413.
    limit: usize,
}

impl Prepared {
    /// Send on `client` within the route's timeout; a failure is the problem response.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn send(
        self,
        client: &Client<Connector, UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, Response<Body>> {
        let Prepared {
            request,
            route,
            request_id,
            limit,
        } = self;
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(route.timeout, client.request(request)).await;
        tollgate_middleware::metrics::global()
            .upstream_seconds
            .with_label_values(&[route.id.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Err(_) => {
                tracing::warn!(route = %route.id, upstream = %route.upstream, request_id = %request_id, timeout_ms = route.timeout.as_millis() as u64, "upstream timed out");
                Err(problem(
                    ErrorCode::UpstreamTimeout,
                    "the upstream did not answer in time; nothing was charged",
                ))
            }
            Ok(Err(e)) => {
                if is_length_limit(&e) {
                    return Err(problem(
                        ErrorCode::BodyTooLarge,
                        &format!("request body larger than {limit} bytes"),
                    ));
                }
                // The chain says why, e.g. `client error (Connect): invalid peer certificate:
                // UnknownIssuer` for an https upstream whose certificate is not trusted.
                tracing::warn!(route = %route.id, upstream = %route.upstream, request_id = %request_id, error = %error_chain(&e), "upstream request failed");
                Err(problem(
                    ErrorCode::UpstreamUnavailable,
                    "the upstream could not be reached; nothing was charged",
                ))
            }
            Ok(Ok(res)) => Ok(res),
        }
    }
}

/// The upstream clients of one configuration, one [`Proxy`] per distinct trust store (most
/// configurations have one).
#[derive(Debug, Default)]
pub(crate) struct Proxies(Vec<(Arc<UpstreamTrust>, Arc<Proxy>)>);

impl Proxies {
    /// The clients for `trust`: built already here or in `previous` (a reload that keeps a
    /// trust store keeps its connection pools), else new.
    pub(crate) fn for_trust(
        &mut self,
        trust: &Arc<UpstreamTrust>,
        previous: Option<&Proxies>,
    ) -> Arc<Proxy> {
        let known = |p: &Proxies| {
            p.0.iter()
                .find(|(t, _)| t == trust)
                .map(|(_, proxy)| proxy.clone())
        };
        if let Some(p) = known(self) {
            return p;
        }
        let proxy = previous
            .and_then(known)
            .unwrap_or_else(|| Arc::new(Proxy::new(trust)));
        self.0.push((trust.clone(), proxy.clone()));
        proxy
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A problem response with an axum body.
pub fn problem(code: ErrorCode, detail: &str) -> Response<Body> {
    Paywall::problem(code, detail).map(Body::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::tls::Roots;

    fn ca_pem() -> String {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn one_client_per_trust_store_and_a_reload_keeps_the_unchanged_ones() {
        let webpki = || Arc::new(UpstreamTrust::new(Roots::Webpki, None).unwrap());
        let pem = ca_pem();
        let private = || Arc::new(UpstreamTrust::new(Roots::None, Some(pem.as_bytes())).unwrap());
        let mut first = Proxies::default();
        let a = first.for_trust(&webpki(), None);
        let b = first.for_trust(&private(), None);
        // Equal anchors built twice (two routes, or the same file read again): one client.
        assert!(Arc::ptr_eq(&a, &first.for_trust(&webpki(), None)));
        assert!(Arc::ptr_eq(&b, &first.for_trust(&private(), None)));
        assert!(!Arc::ptr_eq(&a, &b));
        // A reload: the unchanged stores keep their clients (and pools); a new CA gets its own.
        let mut second = Proxies::default();
        assert!(Arc::ptr_eq(&a, &second.for_trust(&webpki(), Some(&first))));
        let other = ca_pem();
        let changed = Arc::new(UpstreamTrust::new(Roots::None, Some(other.as_bytes())).unwrap());
        let c = second.for_trust(&changed, Some(&first));
        assert!(!Arc::ptr_eq(&c, &a) && !Arc::ptr_eq(&c, &b));
    }
}

//! WebSocket pass-through, on free routes only.
//!
//! A request that asks to switch to WebSocket (HTTP/1.1, `Connection: upgrade`,
//! `Upgrade: websocket`) on a free route is forwarded with its upgrade headers over an
//! HTTP/1.1 connection; once the upstream answers `101 Switching Protocols`, the client's
//! connection and the upstream's are spliced and bytes flow both ways until either side
//! closes. Any other answer is passed on as a normal response.
//!
//! A paid route refuses the upgrade (400 `upgrade_not_supported`, nothing charged): a spliced
//! connection has no response to meter or settle, so it would be a free pass. Other
//! `Upgrade` tokens (`h2c`, ...) are hop-by-hop headers and stripped, as on every request.
//!
//! A spliced connection is no longer an HTTP connection: the route's timeout covers only the
//! wait for the `101`, graceful shutdown does not wait for it, and it ends with the process.

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use tollgate_middleware::ErrorCode;

use crate::proxy::{problem, strip_hop_by_hop, Proxy};

/// Whether `req` asks to switch to WebSocket (RFC 6455 4.1): HTTP/1.1 with `websocket` among
/// the `Upgrade` tokens and `upgrade` among the `Connection` ones.
pub(crate) fn is_websocket<B>(req: &Request<B>) -> bool {
    // The common case (no `Upgrade` header) costs one lookup.
    let Some(upgrade) = req.headers().get(header::UPGRADE) else {
        return false;
    };
    req.version() == Version::HTTP_11
        && has_token(upgrade, "websocket")
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// `value` is a comma-separated list holding `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Restore the upgrade headers `strip_hop_by_hop` removed.
fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

impl Proxy {
    /// Forward a WebSocket upgrade request (its `Arc<Route>` is in the extensions) and, on the
    /// upstream's `101`, splice the two connections.
    pub async fn forward_upgrade(&self, mut req: Request<Body>) -> Response<Body> {
        let client_side = hyper::upgrade::on(&mut req);
        let Some(upgrade) = req.headers().get(header::UPGRADE).cloned() else {
            return problem(ErrorCode::Internal, "internal error");
        };
        let mut prepared = match Self::prepare(req) {
            Ok(p) => p,
            Err(refused) => return refused,
        };
        keep_upgrade(prepared.request.headers_mut(), upgrade);
        let route = prepared.route.id.clone();
        let mut res = match prepared.send(&self.upgrades).await {
            Ok(res) => res,
            Err(refused) => return refused,
        };
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Response::from_parts(parts, Body::new(body));
        }
        let upstream_side = hyper::upgrade::on(&mut res);
        let (mut parts, _) = res.into_parts();
        let accepted = parts
            .headers
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut parts.headers);
        keep_upgrade(&mut parts.headers, accepted);
        tokio::spawn(splice(client_side, upstream_side, route));
        Response::from_parts(parts, Body::empty())
    }
}

/// Copy bytes both ways between the upgraded client and upstream connections until one side
/// closes.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, route: String) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(route = %route, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(route = %route, bytes_to_upstream = up, bytes_to_client = down, "websocket closed");
        }
        Err(e) => tracing::debug!(route = %route, error = %e, "websocket ended with an error"),
    }
}

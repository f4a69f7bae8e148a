//! The HTTP server loop: hyper's auto (HTTP/1.1 + h2c) connection builder with limits that
//! `axum::serve` does not set, and graceful shutdown.
//!
//! - Request heads must arrive within `header_timeout` (slow-header / slowloris defence: the
//!   connection is closed); heads larger than `max_header_bytes` get **431**.
//! - A refusal that left the request body unread drains it (64 KiB within 1 s) and keeps the
//!   connection, or says `Connection: close` ([`DrainLayer`]): a client's paid retry on the
//!   same connection never meets a silently closed socket.
//! - The client address is attached as `ClientAddr` (its IP already a header value, for `X-Forwarded-For`).
//! - With a [`ListenerTls`], each connection first completes a TLS handshake (ALPN `h2`,
//!   `http/1.1`) within its `handshake_timeout`, in its own task so that a slow client never
//!   holds up accepting; one that stalls or fails is dropped (logged at debug).
//! - Shutdown: stop accepting, let every open connection finish its in-flight requests (which
//!   settle their payments), then return.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tollgate_middleware::drain::DrainLayer;
use tower::{Layer, ServiceExt};

use crate::proxy::ClientAddr;
use crate::tls::ListenerTls;

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a request head to arrive.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers), in bytes; at least 8192.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Serve `router` on `listener` (over TLS with `tls`) until `shutdown` completes; then drain.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    limits: Limits,
    tls: Option<ListenerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder.http2().timer(TokioTimer::new());
    let builder = std::sync::Arc::new(builder);
    let acceptor = tls.as_ref().map(|t| (t.acceptor(), t.handshake_timeout));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // The client address as a header value once per connection, not per request.
                // One extension per request (each is an allocation): the address is already a
                // header value.
                let client = ClientAddr::of(peer, acceptor.is_some());
                let service = DrainLayer::new().layer(router.clone()).map_request(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(client.clone());
                    req
                });
                let service = TowerToHyperService::new(service);
                let Some((acceptor, handshake_timeout)) = &acceptor else {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                    continue;
                };
                let handshake = tokio::time::timeout(*handshake_timeout, acceptor.accept(stream));
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let stream = match handshake.await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

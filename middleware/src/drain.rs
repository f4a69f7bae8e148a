//! Keep HTTP/1.1 connections usable after a refusal that did not read the request body.
//!
//! A refusal (402, 400, 401, 404, 405, 413, 429, 503, ...) is answered without reading the
//! request's body. hyper then cannot read the next request on that connection (the unread body
//! is in the way), so it closes the connection after the response -- without saying so: the
//! response carries no `Connection: close`, and a client that sends its paid retry on the same
//! connection meets a transport error. [`DrainLayer`] fixes that in one place, around the whole
//! application:
//!
//! - a body left unread but small (at most [`DrainLayer::max_bytes`], 64 KiB by default) that
//!   arrives within [`DrainLayer::deadline`] (1 s) is read and discarded before the response is
//!   sent, and the connection stays open;
//! - a body known or found to be larger, one that is too slow, and any body of a request that
//!   sent `Expect: 100-continue` (reading it would invite the upload the refusal turns down) is
//!   not waited for: the response says `Connection: close` (HTTP/1.x), and the connection ends
//!   after it.
//!
//! So the work a refused request can cause is bounded by `max_bytes` and `deadline`. Requests
//! whose body the application reads (a forwarded request), and HTTP/2 (where a stream is reset
//! on its own), are left as they are.
//!
//! The `tollgate` gateway wraps its public listener with it. An application embedding
//! [`PaymentLayer`](crate::PaymentLayer) behind `axum::serve` gets the same by adding this layer
//! outermost:
//!
//! ```
//! use axum::{routing::post, Router};
//! use tollgate_middleware::drain::DrainLayer;
//!
//! let app: Router = Router::new()
//!     .route("/v1/compute", post(|| async { "done" }))
//!     // .layer(PaymentLayer::new(..)) -- refusals answered without reading the body
//!     .layer(DrainLayer::new());
//! # let _ = app;
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{header, HeaderValue, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

/// Default bound on the bytes read from an unread body: 64 KiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024;
/// Default bound on the time spent reading it: 1 s.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Wraps a service so that a request body it leaves unread is drained (small and prompt) or the
/// response says `Connection: close`. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct DrainLayer {
    max_bytes: u64,
    deadline: Duration,
}

impl DrainLayer {
    /// 64 KiB within 1 s.
    #[must_use]
    pub fn new() -> Self {
        DrainLayer {
            max_bytes: DEFAULT_MAX_BYTES,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The most bytes read from an unread body before giving up on the connection.
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The longest time spent reading an unread body before giving up on the connection.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }
}

impl Default for DrainLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drain<S>;

    fn layer(&self, inner: S) -> Drain<S> {
        Drain {
            inner,
            limits: *self,
        }
    }
}

/// The service of [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct Drain<S> {
    inner: S,
    limits: DrainLayer,
}

impl<S, B, ResBody> Service<Request<B>> for Drain<S>
where
    S: Service<Request<WatchedBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone is the one that was not driven to readiness; use the ready one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits;
        let http1 = matches!(
            req.version(),
            Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
        );
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let left = Arc::new(Mutex::new(None));
        let req = req.map(|body| WatchedBody {
            inner: Some(body),
            ended: false,
            polled: false,
            left: left.clone(),
        });
        Box::pin(async move {
            let mut res = inner.oneshot(req).await?;
            // The application dropped the body unread (it was handed back on drop).
            let unread = left.lock().ok().and_then(|mut l| l.take());
            if let (true, Some(left)) = (http1, unread) {
                // Under `Expect: 100-continue`, reading would send `100 Continue` first.
                let invited = left.polled || !expects_continue;
                let keep = invited && drain(left.body, limits.max_bytes, limits.deadline).await;
                if !keep {
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            Ok(res)
        })
    }
}

/// Reads and discards `body` to its end; `false` if it is longer than `max_bytes`, slower than
/// `deadline`, or broken.
async fn drain<B: Body<Data = Bytes> + Unpin>(
    mut body: B,
    max_bytes: u64,
    deadline: Duration,
) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if body.size_hint().lower() > max_bytes {
        return false;
    }
    let read_all = async {
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.len() as u64);
                if read > max_bytes {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(deadline, read_all)
        .await
        .unwrap_or(false)
}

/// What a dropped, unfinished body leaves behind for [`Drain`].
struct Unread<B> {
    body: B,
    /// Whether the application ever asked for the body (hyper answers `Expect: 100-continue`
    /// with `100 Continue` on the first poll).
    polled: bool,
}

/// The request body the application sees: the real one, handed back to [`Drain`] if dropped
/// before its end.
pub struct WatchedBody<B> {
    inner: Option<B>,
    ended: bool,
    polled: bool,
    left: Arc<Mutex<Option<Unread<B>>>>,
}

impl<B> std::fmt::Debug for WatchedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedBody")
            .field("ended", &self.ended)
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for WatchedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for WatchedBody<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.ended {
            return;
        }
        if let Ok(mut left) = self.left.lock() {
            *left = Some(Unread {
                body,
                polled: self.polled,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;

    use futures_util::{stream, StreamExt as _};
    use http_body_util::{Full, StreamBody};

    use super::*;

    type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A refusal: answers without touching the body.
    async fn refuse(_req: Request<WatchedBody<Boxed>>) -> Result<Response<()>, Infallible> {
        Ok(Response::new(()))
    }

    /// A handler that reads the body.
    async fn read(req: Request<WatchedBody<Boxed>>) -> Result<Response<()>, Infallible> {
        let _ = req.into_body().collect().await;
        Ok(Response::new(()))
    }

    async fn closes<F, Fut>(handler: F, req: Request<Boxed>) -> bool
    where
        F: Fn(Request<WatchedBody<Boxed>>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Response<()>, Infallible>> + Send + 'static,
    {
        closes_with(DrainLayer::new(), handler, req).await
    }

    async fn closes_with<F, Fut>(layer: DrainLayer, handler: F, req: Request<Boxed>) -> bool
    where
        F: Fn(Request<WatchedBody<Boxed>>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<Response<()>, Infallible>> + Send + 'static,
    {
        let svc = layer.layer(tower::service_fn(handler));
        let res = svc.oneshot(req).await.unwrap();
        res.headers().get(header::CONNECTION).is_some()
    }

    fn full(n: usize) -> Boxed {
        Full::new(Bytes::from(vec![b'x'; n])).boxed_unsync()
    }

    /// Half a body, then nothing.
    fn stalled() -> Boxed {
        let first = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"half",
        )))]);
        StreamBody::new(first.chain(stream::pending())).boxed_unsync()
    }

    #[tokio::test]
    async fn a_small_unread_body_is_drained_and_the_connection_kept() {
        assert!(!closes(refuse, Request::new(full(1000))).await);
        assert!(!closes(refuse, Request::new(full(DEFAULT_MAX_BYTES as usize))).await);
        assert!(!closes(read, Request::new(full(1 << 20))).await);
    }

    #[tokio::test]
    async fn a_large_unread_body_gets_connection_close() {
        let req = Request::new(full(DEFAULT_MAX_BYTES as usize + 1));
        assert!(closes(refuse, req).await);
    }

    #[tokio::test]
    async fn a_stalled_body_is_given_up_at_the_deadline() {
        let deadline = Duration::from_millis(100);
        let layer = DrainLayer::new().deadline(deadline);
        let started = std::time::Instant::now();
        assert!(closes_with(layer, refuse, Request::new(stalled())).await);
        let waited = started.elapsed();
        assert!(waited >= deadline && waited < 10 * deadline, "{waited:?}");
        // The size bound is configurable too.
        let layer = DrainLayer::new().max_bytes(10);
        assert!(closes_with(layer, refuse, Request::new(full(11))).await);
        assert!(!closes_with(layer, refuse, Request::new(full(10))).await);
    }

    #[tokio::test]
    async fn expect_continue_is_not_read_and_http2_is_left_alone() {
        let mut req = Request::new(full(5));
        req.headers_mut()
            .insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        assert!(closes(refuse, req).await);
        let mut req = Request::new(full(1 << 20));
        *req.version_mut() = Version::HTTP_2;
        assert!(!closes(refuse, req).await);
    }
}

//! [`PaymentLayer`]: the payment engine as a tower middleware.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use tollgate_middleware::{Currency, Money, Paywall, PaymentLayer, Price, PricedRoute};
//!
//! # fn demo(paywall: Paywall) -> Result<(), Box<dyn std::error::Error>> {
//! let usd = Currency::try_new("USD", 6)?;
//! let price = Price::fixed(Money { amount: "0.01".parse()?, currency: usd })?;
//! let app: Router = Router::new()
//!     .route("/v1/answer", get(|| async { "42" }))
//!     .route_layer(PaymentLayer::new(paywall, Arc::new(PricedRoute::new("answer", price))));
//! # Ok(()) }
//! ```
//!
//! For each request the layer asks its [`RouteResolver`] for the route's price. Free (or
//! unmatched) requests pass through untouched (except that client-sent `Tollgate-Payer` /
//! `Tollgate-Charge` headers are always removed). Priced requests are admitted or refused
//! by the [`Paywall`]; an admitted request reaches the inner service without its payment
//! headers, with `Tollgate-Payer` / `Tollgate-Charge` headers and a [`Payment`] extension;
//! its response settles the payment (below 400: captured; otherwise released).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tower::{Layer, Service};

use crate::credential;
use crate::meter::{Metered, OnExhausted, UsageReading};
use crate::pause::{Paused, Pausing, Step};
use crate::paywall::{
    Admission, BodyEnd, Head, OwnedHead, Payment, Paywall, Settled, PAYMENT_RECEIPT,
    PAYMENT_RESPONSE, TOLLGATE_CHARGE, TOLLGATE_PAYER,
};
use crate::price::PricedRoute;

/// Decides which priced route (if any) a request is for.
pub trait RouteResolver: Send + Sync + 'static {
    /// The route, or `None` to pass the request through unpriced.
    fn resolve(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Option<Arc<PricedRoute>>;
}

/// One fixed route for every request through the layer (use with axum's `route_layer`).
impl RouteResolver for PricedRoute {
    fn resolve(
        &self,
        _: &Method,
        _: &Uri,
        _: &HeaderMap,
        _: &http::Extensions,
    ) -> Option<Arc<PricedRoute>> {
        Some(Arc::new(self.clone()))
    }
}

/// The route was matched earlier and stored as an `Arc<PricedRoute>` request extension.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFromExtension;

impl RouteResolver for RouteFromExtension {
    fn resolve(
        &self,
        _: &Method,
        _: &Uri,
        _: &HeaderMap,
        ext: &http::Extensions,
    ) -> Option<Arc<PricedRoute>> {
        ext.get::<Arc<PricedRoute>>().cloned()
    }
}

/// Puts a [`Paywall`] in front of a service.
#[derive(Clone)]
pub struct PaymentLayer {
    paywall: Paywall,
    routes: Arc<dyn RouteResolver>,
}

debug_fields!(PaymentLayer { paywall });

impl PaymentLayer {
    /// A layer charging what `routes` says.
    pub fn new<R: RouteResolver>(paywall: Paywall, routes: Arc<R>) -> Self {
        PaymentLayer { paywall, routes }
    }
}

impl<S> Layer<S> for PaymentLayer {
    type Service = PaymentService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaymentService {
            inner,
            paywall: self.paywall.clone(),
            routes: self.routes.clone(),
        }
    }
}

/// The service produced by [`PaymentLayer`].
#[derive(Clone)]
pub struct PaymentService<S> {
    inner: S,
    paywall: Paywall,
    routes: Arc<dyn RouteResolver>,
}

impl<S> std::fmt::Debug for PaymentService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentService").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// Response body: the inner service's (passed through, or metered as it passes), or one
    /// built here (a refusal, or a body buffered to read its usage).
    #[project = PaymentBodyProj]
    #[allow(missing_docs)]
    pub enum PaymentBody<B> {
        /// Passed through from the inner service.
        Inner {
            #[pin]
            body: B,
        },
        /// Built or buffered by the payment engine.
        Full {
            #[pin]
            body: Full<Bytes>,
        },
        /// Streamed through while its usage is read; settles when it ends or is dropped.
        Metered {
            body: Pin<Box<B>>,
            ended: bool,
            prefix: std::collections::VecDeque<Bytes>,
            meter: Option<MeterState>,
            paused: Option<Box<Paused>>,
        },
    }

    impl<B> PinnedDrop for PaymentBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let PaymentBodyProj::Metered { meter, paused, .. } = this.project() {
                if let Some(mut m) = meter.take() {
                    // Gone while paused: the kept chunk was never delivered.
                    if let (Some(p), Some(pausing)) = (paused.take(), m.pausing.as_ref()) {
                        let (len, found) = p.abandon(pausing);
                        m.reading.forget_chunk(len, found);
                    }
                    m.finish(BodyEnd::ClientGone);
                }
            }
        }
    }
}

/// A metered response in flight: the admission to settle and the usage read so far.
#[derive(Debug)]
pub struct MeterState {
    admission: Admission,
    metered: Metered,
    reading: UsageReading,
    status: u16,
    /// Cut-off limit (minor units), when the route cuts streams off.
    limit_minor: Option<u64>,
    /// Whether the response is an event stream (a cut-off sends a last event).
    event_stream: bool,
    /// Renews the hold while the body streams (a hold in use is never swept); stops when
    /// this state is dropped, after the settlement.
    keepalive: Option<crate::paywall::HoldKeepalive>,
    /// Pauses the stream for a top-up instead of cutting it (`on_exhausted = "pause"`).
    pausing: Option<Pausing>,
}

/// What feeding a chunk decided.
enum Fed {
    /// Paid for: deliver it.
    Deliver,
    /// Not paid for: the stream ends here (the chunk is not counted).
    CutOff,
    /// Not paid for: pause on it (it stays counted until it is delivered or forgotten); the
    /// stream's cost with it, and the usage values read before it.
    Unpaid(u64, std::collections::BTreeMap<String, u64>),
}

impl MeterState {
    fn new(admission: Admission, status: u16, headers: &HeaderMap) -> Option<Self> {
        let metered = admission.metered()?.clone();
        let reading = UsageReading::start(&metered, headers);
        let limit_minor = if metered.cutoff {
            admission.charge_limit_minor()
        } else {
            None
        };
        let event_stream = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        Some(MeterState {
            admission,
            metered,
            reading,
            status,
            limit_minor,
            event_stream,
            keepalive: None,
            pausing: None,
        })
    }

    /// Set up pausing, for an event stream on a route with `on_exhausted = "pause"` paid from
    /// a balance a top-up can grow (anything else is cut off).
    fn pause_if_configured(&mut self, head: &OwnedHead) {
        let OnExhausted::Pause { timeout } = self.metered.on_exhausted else {
            return;
        };
        if self.limit_minor.is_some() && self.event_stream {
            self.pausing = self
                .admission
                .pause_point(head)
                .map(|p| Pausing::new(p, timeout));
        }
    }

    /// Observe a chunk, and decide whether the payer can pay for delivering it.
    fn feed(&mut self, chunk: &Bytes) -> Fed {
        // With a limit, the values read so far are kept: a chunk that is not delivered (cut
        // off, or kept by a pause that ends unpaid) is forgotten with the usage read from it.
        let before = self
            .limit_minor
            .is_some()
            .then(|| self.reading.found_snapshot());
        self.reading.feed(&self.metered, chunk);
        let (Some(limit), Some(found)) = (self.limit_minor, before) else {
            return Fed::Deliver;
        };
        let units = self
            .reading
            .so_far(&self.metered, self.admission.elapsed_ms());
        match self.metered.cost_minor(&units) {
            Some(cost) if cost <= limit => Fed::Deliver,
            Some(cost) if self.pausing.is_some() => Fed::Unpaid(cost, found),
            _ => {
                self.reading.forget_chunk(chunk.len(), found);
                Fed::CutOff
            }
        }
    }

    /// The last event of a cut-off event stream, telling the client why it ended.
    fn cutoff_notice(&self) -> Option<Bytes> {
        self.event_stream.then(|| {
            Bytes::from_static(b"event: tollgate\ndata: {\"code\":\"balance_insufficient\",\"detail\":\"the stream was cut off: the balance is exhausted\"}\n\n")
        })
    }

    fn readings(&mut self) -> std::collections::BTreeMap<String, Option<u64>> {
        self.reading.request_bytes = self.admission.request_bytes();
        self.reading.duration_ms = self.admission.elapsed_ms();
        self.reading.finish(&self.metered)
    }

    /// Settle in the background (the body has ended or was dropped).
    fn finish(mut self, end: BodyEnd) {
        self.admission.mark_delivered();
        let readings = self.readings();
        let status = Some(self.status);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(refusal) = self.admission.settle(status, Some((readings, end))).await {
                    tracing::error!(%refusal, "deferred settlement failed");
                }
            });
        }
    }
}

impl<B> Body for PaymentBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            PaymentBodyProj::Inner { body } => body.poll_frame(cx),
            PaymentBodyProj::Full { body } => {
                body.poll_frame(cx).map_err(|e: Infallible| match e {})
            }
            PaymentBodyProj::Metered {
                body,
                ended,
                prefix,
                meter,
                paused,
            } => {
                if let Some(chunk) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if *ended {
                    return Poll::Ready(None);
                }
                if let Some(step) = poll_paused(cx, paused, meter, ended) {
                    return step;
                }
                // While paused (above) the upstream is not read: backpressure.
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(m)) = (frame.data_ref(), meter.as_mut()) {
                            match m.feed(data) {
                                Fed::Deliver => {}
                                Fed::CutOff => {
                                    // Cut off: this chunk is not delivered; end the stream.
                                    *ended = true;
                                    let notice = m.cutoff_notice();
                                    if let Some(m) = meter.take() {
                                        m.finish(BodyEnd::CutOff);
                                    }
                                    return Poll::Ready(notice.map(|n| Ok(Frame::data(n))));
                                }
                                Fed::Unpaid(cost, found) => {
                                    if let Some(p) = m.pausing.as_ref() {
                                        *paused =
                                            Some(Box::new(p.pause(data.clone(), found, cost)));
                                        cx.waker().wake_by_ref();
                                        return Poll::Pending;
                                    }
                                }
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(m) = meter.take() {
                            m.finish(BodyEnd::UpstreamFailed);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(m) = meter.take() {
                            m.finish(BodyEnd::Complete);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PaymentBody::Inner { body } => body.is_end_stream(),
            PaymentBody::Full { body } => body.is_end_stream(),
            PaymentBody::Metered {
                body,
                prefix,
                ended,
                paused,
                ..
            } => prefix.is_empty() && paused.is_none() && (*ended || body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PaymentBody::Inner { body } => body.size_hint(),
            PaymentBody::Full { body } => body.size_hint(),
            // A stream that may be cut off has no known length.
            PaymentBody::Metered { meter: Some(m), .. } if m.limit_minor.is_some() => {
                SizeHint::new()
            }
            PaymentBody::Metered { body, prefix, .. } => {
                let extra: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(u) = inner.upper() {
                    hint.set_upper(u + extra);
                }
                hint
            }
        }
    }
}

/// What a body's `poll_frame` answers.
type Polled<E> = Poll<Option<Result<Frame<Bytes>, E>>>;

/// A paused stream's next frame (`None`: not paused, read the upstream).
fn poll_paused<E>(
    cx: &mut Context<'_>,
    paused: &mut Option<Box<Paused>>,
    meter: &mut Option<MeterState>,
    ended: &mut bool,
) -> Option<Polled<E>> {
    let (p, m) = (paused.as_mut()?, meter.as_mut()?);
    let pausing = m.pausing.as_mut()?;
    let data = |b: Bytes| Poll::Ready(Some(Ok(Frame::data(b))));
    Some(match p.poll_step(cx, pausing) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Step::Send(b)) => data(b),
        Poll::Ready(Step::Resume { chunk, limit_minor }) => {
            m.limit_minor = Some(limit_minor);
            *paused = None;
            data(chunk)
        }
        Poll::Ready(Step::End(notice)) => {
            if let Some(p) = paused.take() {
                let (len, found) = p.forget();
                m.reading.forget_chunk(len, found);
            }
            *ended = true;
            if let Some(m) = meter.take() {
                m.finish(BodyEnd::CutOff);
            }
            data(notice)
        }
    })
}

fn refusal<B>(res: Response<Bytes>) -> Response<PaymentBody<B>> {
    res.map(|b| PaymentBody::Full { body: Full::new(b) })
}

/// The layer's response future.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<PaymentBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PaymentService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<PaymentBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready is the one we must call: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let paywall = self.paywall.clone();
        let route = self
            .routes
            .resolve(req.method(), req.uri(), req.headers(), req.extensions());
        // Each phase's future is boxed where it is awaited: this future is moved (copied) as it
        // is built and boxed, and inline phases would make it as large as the largest of them
        // (bench/RESULTS.md, 2026-12-04).
        Box::pin(async move {
            // Only Tollgate may tell the upstream who paid.
            req.headers_mut().remove(TOLLGATE_PAYER);
            req.headers_mut().remove(TOLLGATE_CHARGE);
            if paywall.is_agent_api(req.uri().path()) {
                if let Some(res) =
                    Box::pin(paywall.agent_api(req.method(), req.uri().path(), req.headers())).await
                {
                    return Ok(refusal(res));
                }
            }
            let Some(route) = route else {
                credential::strip(req.headers_mut());
                return Ok(inner
                    .call(req)
                    .await?
                    .map(|body| PaymentBody::Inner { body }));
            };
            let admission =
                match Box::pin(paywall.admit(&route, req.method(), req.uri(), req.headers())).await
                {
                    Ok(Some(a)) => a,
                    Ok(None) => {
                        credential::strip(req.headers_mut());
                        return Ok(inner
                            .call(req)
                            .await?
                            .map(|body| PaymentBody::Inner { body }));
                    }
                    Err(refused) => {
                        let head = Head::of(&req);
                        return Ok(refusal(paywall.render(&refused, Some((&route, head)))));
                    }
                };
            // What a refusal after forwarding (a capture that cannot be recorded, an x402
            // settlement refused) needs of the request, which is gone by then.
            let head = OwnedHead::of(&req);
            let payment: Payment = admission.payment().clone();
            let headers = req.headers_mut();
            credential::strip(headers);
            if admission.metered().is_some_and(Metered::reads_body) {
                // Only codings the meter can decode (see `content_coding`).
                crate::content_coding::narrow_accept_encoding(headers);
            }
            if let Ok(v) = HeaderValue::from_str(&payment.payer) {
                headers.insert(TOLLGATE_PAYER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&payment.charge.to_string()) {
                headers.insert(TOLLGATE_CHARGE, v);
            }
            req.extensions_mut().insert(payment);
            req.extensions_mut().insert(admission.request_counter());

            let res = match Box::pin(inner.call(req)).await {
                Ok(res) => res,
                Err(e) => {
                    // Nothing was served: give the receipt or balance back.
                    let _ = Box::pin(admission.settle(None, None)).await;
                    return Err(e);
                }
            };
            let status = res.status().as_u16();
            if status >= 400 || admission.metered().is_none() {
                return Ok(match Box::pin(admission.settle(Some(status), None)).await {
                    Ok(settled) => {
                        with_settled(res.map(|body| PaymentBody::Inner { body }), settled)
                    }
                    // The payment could not be recorded: the response is withheld (fail closed).
                    Err(refused) => refusal(paywall.render(&refused, Some((&route, head.head())))),
                });
            }
            Ok(Box::pin(metered_response(admission, res, (&paywall, head))).await)
        })
    }
}

/// `PAYMENT-RESPONSE` and, for the Payment scheme, `Payment-Receipt` (both private: the
/// draft asks `Cache-Control: private` with a receipt).
fn with_settled<B>(res: Response<B>, settled: Settled) -> Response<B> {
    let mut res = with_payment_response(res, settled.payment_response);
    if let Some(v) = settled.payment_receipt {
        res.headers_mut().insert(PAYMENT_RECEIPT, v);
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    res
}

fn with_payment_response<B>(mut res: Response<B>, value: Option<HeaderValue>) -> Response<B> {
    if let Some(v) = value {
        res.headers_mut().insert(PAYMENT_RESPONSE, v);
        res.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    res
}

/// A served metered response: settle before answering when every meter can be read by then
/// (reading a `json:` body, bounded), otherwise stream it and settle when it ends.
async fn metered_response<B>(
    admission: Admission,
    res: Response<B>,
    (paywall, head): (&Paywall, OwnedHead),
) -> Response<PaymentBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    let (parts, body) = res.into_parts();
    if admission.metered().is_some_and(Metered::reads_body)
        && crate::content_coding::readable(&parts.headers).is_none()
    {
        // A coding the meter cannot read, though Accept-Encoding excluded it: nothing is
        // delivered, nothing charged.
        tracing::error!(
            content_encoding = ?parts.headers.get(header::CONTENT_ENCODING),
            "upstream answered a metered route in a content coding Tollgate cannot meter"
        );
        let _ = admission.settle(None, None).await;
        return refusal(Paywall::problem(
            crate::ErrorCode::UpstreamUnavailable,
            "the upstream answered in a content coding that cannot be metered; nothing was charged",
        ));
    }
    let mut body = Box::pin(body);
    let Some(mut meter) = MeterState::new(admission, parts.status.as_u16(), &parts.headers) else {
        let pending = None;
        return with_payment_response(
            Response::from_parts(
                parts,
                PaymentBody::Metered {
                    body,
                    ended: false,
                    prefix: Default::default(),
                    meter: None,
                    paused: None,
                },
            ),
            pending,
        );
    };
    let mut prefix = std::collections::VecDeque::new();
    if meter.metered.settles_before_answer() {
        let mut size = 0usize;
        let mut complete = false;
        let mut failed = false;
        // A body that takes longer than a third of the hold to arrive gets its hold renewed
        // (a hold in use is never swept); a quick one costs no renewal task.
        let renew_at = tokio::time::Instant::now() + meter.admission.hold_ttl() / 3;
        let mut renewing = false;
        while size <= crate::meter::MAX_JSON_BYTES {
            let next = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx));
            let frame = if !renewing {
                match tokio::time::timeout_at(renew_at, next).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        renewing = true;
                        meter.keepalive = meter.admission.keep_hold_alive();
                        continue;
                    }
                }
            } else {
                next.await
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        size += data.len();
                        meter.feed(data);
                        prefix.push_back(data.clone());
                    }
                }
                Some(Err(_)) => {
                    failed = true;
                    break;
                }
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if complete || failed {
            let end = if failed {
                BodyEnd::UpstreamFailed
            } else {
                BodyEnd::Complete
            };
            let readings = meter.readings();
            let status = parts.status.as_u16();
            if failed {
                // The upstream broke before the answer: nothing was delivered.
                let _ = meter.admission.settle(None, Some((readings, end))).await;
                return refusal(Paywall::problem(
                    crate::ErrorCode::UpstreamUnavailable,
                    "the upstream failed while answering; nothing was charged",
                ));
            }
            let buffered: Vec<u8> = prefix.iter().flat_map(|b| b.iter().copied()).collect();
            let route = meter.admission.route().clone();
            return match meter
                .admission
                .settle(Some(status), Some((readings, end)))
                .await
            {
                Ok(settled) => {
                    let mut res = Response::from_parts(
                        parts,
                        PaymentBody::Full {
                            body: Full::new(Bytes::from(buffered)),
                        },
                    );
                    res.headers_mut().remove(header::TRANSFER_ENCODING);
                    with_settled(res, settled)
                }
                Err(refused) => refusal(paywall.render(&refused, Some((&route, head.head())))),
            };
        }
        // Over the buffer limit: stream the rest; the JSON usage is missing (documented rule).
    }
    let pending = meter.admission.pending_response();
    meter.keepalive = meter.admission.keep_hold_alive();
    meter.pause_if_configured(&head);
    let mut parts = parts;
    if meter.limit_minor.is_some() {
        // It may end early: never promise a length.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let res = Response::from_parts(
        parts,
        PaymentBody::Metered {
            body,
            ended: false,
            prefix,
            meter: Some(meter),
            paused: None,
        },
    );
    with_payment_response(res, pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer's future is moved (copied) into its box for every priced request: each phase
    /// (admission, the upstream call, settlement, the metered response) is boxed where it is
    /// awaited, so it holds little more than the request's state. Printed, and bounded well
    /// above today's size (bench/RESULTS.md, 2026-12-04).
    #[tokio::test]
    async fn the_layer_future_stays_small() {
        let usd = crate::Currency::try_new("USD", 6).unwrap();
        let price = crate::Price::fixed(crate::Money {
            amount: "0.01".parse().unwrap(),
            currency: usd,
        })
        .unwrap();
        let paywall = Paywall::builder("m", vec![7u8; 32]).build().unwrap();
        let layer = PaymentLayer::new(paywall, Arc::new(crate::PricedRoute::new("r", price)));
        let inner = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        let mut service = layer.layer(inner);
        let fut = service.call(Request::new(Full::new(Bytes::new())));
        let size = std::mem::size_of_val(&*fut);
        println!("PaymentService::call: {size} bytes");
        assert!(size <= 4096, "the payment layer's future is {size} bytes");
    }
}

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
use crate::paywall::{Payment, Paywall, PAYMENT_RESPONSE, TOLLGATE_CHARGE, TOLLGATE_PAYER};
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

impl std::fmt::Debug for PaymentLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentLayer")
            .field("paywall", &self.paywall)
            .finish_non_exhaustive()
    }
}

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
    /// Response body: the inner service's, or one of ours (a refusal).
    #[project = PaymentBodyProj]
    #[allow(missing_docs)]
    pub enum PaymentBody<B> {
        /// Passed through from the inner service.
        Inner {
            #[pin]
            body: B,
        },
        /// Built by the payment engine.
        Refusal {
            #[pin]
            body: Full<Bytes>,
        },
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
            PaymentBodyProj::Refusal { body } => {
                body.poll_frame(cx).map_err(|e: Infallible| match e {})
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PaymentBody::Inner { body } => body.is_end_stream(),
            PaymentBody::Refusal { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PaymentBody::Inner { body } => body.size_hint(),
            PaymentBody::Refusal { body } => body.size_hint(),
        }
    }
}

fn refusal<B>(res: Response<Bytes>) -> Response<PaymentBody<B>> {
    res.map(|b| PaymentBody::Refusal { body: Full::new(b) })
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
        Box::pin(async move {
            // Only Tollgate may tell the upstream who paid.
            req.headers_mut().remove(TOLLGATE_PAYER);
            req.headers_mut().remove(TOLLGATE_CHARGE);
            let Some(route) = route else {
                return Ok(inner
                    .call(req)
                    .await?
                    .map(|body| PaymentBody::Inner { body }));
            };
            let admission = match paywall
                .admit(&route, req.method(), req.uri(), req.headers())
                .await
            {
                Ok(Some(a)) => a,
                Ok(None) => {
                    credential::strip(req.headers_mut());
                    return Ok(inner
                        .call(req)
                        .await?
                        .map(|body| PaymentBody::Inner { body }));
                }
                Err(refused) => return Ok(refusal(refused)),
            };
            let payment: Payment = admission.payment().clone();
            let headers = req.headers_mut();
            credential::strip(headers);
            if let Ok(v) = HeaderValue::from_str(&payment.payer) {
                headers.insert(TOLLGATE_PAYER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&payment.charge.to_string()) {
                headers.insert(TOLLGATE_CHARGE, v);
            }
            req.extensions_mut().insert(payment);

            let res = match inner.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    // Nothing was served: give the receipt back.
                    let _ = admission.settle(None).await;
                    return Err(e);
                }
            };
            let status = res.status().as_u16();
            match admission.settle(Some(status)).await {
                Ok(settled) => {
                    let mut res = res.map(|body| PaymentBody::Inner { body });
                    if let Some(v) = settled.payment_response {
                        res.headers_mut().insert(PAYMENT_RESPONSE, v);
                        res.headers_mut().insert(
                            header::CACHE_CONTROL,
                            HeaderValue::from_static("private, no-store"),
                        );
                    }
                    Ok(res)
                }
                // The payment could not be recorded: the response is withheld (fail closed).
                Err(refused) => Ok(refusal(refused)),
            }
        })
    }
}

//! # tollgate
//!
//! The Tollgate gateway: a reverse proxy that sells API access to AI agents with HTTP 402.
//! Configure routes, prices and trusted receipt issuers in one TOML file; run
//! `tollgate run --config tollgate.toml`.
//!
//! # Layout
//! - [`config`]: the TOML file, parsed and validated (field-named errors, exit 64);
//! - [`path`]: the canonical form of request paths (what routes match and upstreams receive);
//! - [`proxy`]: the pooled, streaming hyper reverse proxy;
//! - [`admin`]: the admin API; [`dashboard`]: the provider dashboard on the admin listener;
//! - this file: [`Gateway`] -- route matching, the payment layer in front of the proxy,
//!   `/healthz`, `/readyz`, and [`Gateway::serve`] with graceful shutdown.

#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod dashboard;
pub mod path;
pub mod proxy;
pub mod server;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use tokio::net::TcpListener;
use tollgate_middleware::credential;
use tollgate_middleware::paywall::{TOLLGATE_CHARGE, TOLLGATE_PAYER};
use tollgate_middleware::receipt::ReceiptPolicy;
use tollgate_middleware::{
    ErrorCode, Issuer, JwksKeys, KeySource, MemoryStore, PaymentLayer, Paywall, Price, PricedRoute,
    RedisStore, RedisStoreOptions, RouteFromExtension, StaticKeys, Store,
};
use tower::ServiceExt;

use crate::config::{Config, IssuerSource, Route, StoreKind, Validated};
use crate::proxy::{problem, Proxy};

/// The environment variable holding the gateway secret (challenge HMAC key, >= 32 bytes).
pub const SECRET_ENV: &str = "TOLLGATE_SECRET";

/// Why the gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The secret is unusable.
    #[error("{SECRET_ENV}: {0}")]
    Secret(String),
    /// The store could not be set up.
    #[error("store: {0}")]
    Store(String),
    /// An issuer could not be set up.
    #[error("issuers: {0}")]
    Issuer(String),
}

struct Matched {
    route: Arc<Route>,
    priced: Arc<PricedRoute>,
}

/// One configuration in force: replaced as a whole on reload; requests in flight keep the
/// snapshot they started with.
struct Inner {
    /// Connection limits (read when serving starts; a reload does not change them).
    limits: server::Limits,
    /// The store settings this snapshot's store was built from (a reload keeps the store --
    /// connections, memory state -- unless they change).
    store_config: crate::config::StoreConfig,
    /// x402 network id (catalog).
    network: String,
    /// Trusted issuer ids (catalog).
    issuers: Vec<String>,
    /// Agent endpoints prefix (catalog).
    agent_api: String,
    /// Suggested top-ups per currency (catalog).
    topups: std::collections::BTreeMap<String, Option<tollgate_middleware::Amount>>,
    /// Currencies (for the admin API's decimal amounts).
    currencies: std::collections::BTreeMap<String, tollgate_middleware::Currency>,
    /// Routes in match order, each with the price the payment layer sees.
    routes: Vec<Matched>,
    /// The payment engine.
    paywall: Paywall,
    /// Background pollers of issuers' mandate revocation lists (stopped with this snapshot).
    _pollers: AbortOnDrop,
}

/// Aborts background tasks when the configuration snapshot that started them is replaced.
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

struct Shared {
    /// The configuration in force.
    current: std::sync::RwLock<Arc<Inner>>,
    /// The gateway secret (challenge and token keys); not reloadable.
    secret: Vec<u8>,
    /// The config file, for reloads (SIGHUP, `POST /admin/v1/reload`).
    config_path: std::sync::RwLock<Option<std::path::PathBuf>>,
    /// Serializes reloads.
    reloading: tokio::sync::Mutex<()>,
    /// The pooled upstream client (kept across reloads).
    proxy: Proxy,
}

/// A configured gateway, ready to serve. Cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Shared>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.inner().routes.len())
            .finish()
    }
}

/// Why a reload was refused (the previous configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No config file to reload from.
    #[error("this gateway was not started from a config file")]
    NoFile,
    /// The new file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The new configuration could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
}

async fn build_store(config: &Config) -> Result<Arc<dyn Store>, BuildError> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(MemoryStore::default()),
        StoreKind::Redis => {
            let options = RedisStoreOptions {
                url: config.store.url.clone().unwrap_or_default(),
                cluster: config.store.cluster,
                prefix: config.store.prefix.clone(),
                timeout: Duration::from_millis(config.store.timeout_ms),
            };
            Arc::new(
                RedisStore::connect(options)
                    .await
                    .map_err(|e| BuildError::Store(e.to_string()))?,
            )
        }
    })
}

impl Gateway {
    /// Build from a validated config. `secret` is the challenge HMAC key; connects the store
    /// (a Redis that is down is not fatal: paid routes fail closed until it is back) and
    /// fetches JWKS once (a failure is retried on use).
    pub async fn build(
        config: &Config,
        validated: Validated,
        secret: &[u8],
    ) -> Result<Self, BuildError> {
        let store = build_store(config).await?;
        if let (Some(f), Some(x)) = (validated.x402_facilitator.clone(), &config.x402) {
            // One settler per process for x402 `deferred` payments (jobs are leased, so any
            // number of replicas can run one). Its facilitator and store are fixed at start-up.
            let mut settler = tollgate_middleware::x402::settler::Settler::new(store.clone(), f);
            settler.interval = Duration::from_millis(x.settle_interval_ms);
            settler.retry_base = Duration::from_millis(x.settle_retry_base_ms);
            settler.max_attempts = x.settle_max_attempts;
            tokio::spawn(settler.run());
        }
        let inner = build_inner(config, validated, secret, store).await?;
        Ok(Gateway(Arc::new(Shared {
            current: std::sync::RwLock::new(Arc::new(inner)),
            secret: secret.to_vec(),
            config_path: std::sync::RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
            proxy: Proxy::new(),
        })))
    }

    /// Remember the config file this gateway was started from (enables reloads).
    #[must_use]
    pub fn with_config_path(self, path: impl Into<std::path::PathBuf>) -> Self {
        if let Ok(mut p) = self.0.config_path.write() {
            *p = Some(path.into());
        }
        self
    }

    /// The configuration in force.
    fn inner(&self) -> Arc<Inner> {
        match self.0.current.read() {
            Ok(g) => g.clone(),
            // A panic while swapping cannot leave a half-written Arc: use it.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-read the config file and switch to it without dropping requests: in-flight requests
    /// finish on the configuration they started with. An invalid file is refused and the
    /// current configuration keeps serving. The store is kept unless `[store]` changed;
    /// `listen`, `[admin]` and the secret need a restart. Returns the number of routes.
    pub async fn reload(&self) -> Result<usize, ReloadError> {
        let _one_at_a_time = self.0.reloading.lock().await;
        let path = self
            .0
            .config_path
            .read()
            .ok()
            .and_then(|p| p.clone())
            .ok_or(ReloadError::NoFile)?;
        let (config, validated) = Config::load(&path)?;
        let old = self.inner();
        let store = if config.store == old.store_config {
            old.paywall.store().clone()
        } else {
            tracing::info!("reload: [store] changed; connecting the new store");
            build_store(&config).await?
        };
        let inner = build_inner(&config, validated, &self.0.secret, store).await?;
        let routes = inner.routes.len();
        if let Ok(mut current) = self.0.current.write() {
            *current = Arc::new(inner);
        }
        tracing::info!(routes, path = %path.display(), "configuration reloaded");
        Ok(routes)
    }
}

/// Build one configuration snapshot on a given store.
/// Ask the facilitator what it supports (in the background: it may be down at start-up) and
/// warn about offered networks it does not list.
fn check_facilitator(f: Arc<tollgate_middleware::x402::HttpFacilitator>, v: &Validated) {
    use tollgate_middleware::x402::{Facilitator as _, EXACT_SCHEME};
    let mut networks: Vec<String> = v
        .routes
        .iter()
        .filter_map(|r| r.x402.as_ref())
        .flat_map(|x| x.offers.iter().map(|o| o.network.clone()))
        .collect();
    networks.sort();
    networks.dedup();
    tokio::spawn(async move {
        match f.supported().await {
            Ok(kinds) => {
                for n in networks {
                    if !kinds
                        .iter()
                        .any(|(v, s, k)| *v == 2 && s == EXACT_SCHEME && *k == n)
                    {
                        tracing::warn!(network = %n, "the x402 facilitator does not list exact on this network (GET /supported)");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "x402 facilitator GET /supported failed"),
        }
    });
}

async fn build_inner(
    config: &Config,
    validated: Validated,
    secret: &[u8],
    store: Arc<dyn Store>,
) -> Result<Inner, BuildError> {
    let r = &config.receipts;
    let policy = ReceiptPolicy {
        clock_skew: Duration::from_secs(r.clock_skew_secs),
        max_lifetime: Duration::from_secs(r.max_lifetime_secs),
        max_bytes: r.max_bytes,
    };
    let mut builder = Paywall::builder(config.merchant.clone(), secret.to_vec())
        .network(config.network.clone())
        .policy(policy)
        .store(store)
        .challenge_ttl(Duration::from_secs(r.challenge_ttl_secs))
        .token_ttl(Duration::from_secs(config.agent.token_ttl_secs))
        .settle_retry(Duration::from_millis(config.store.settle_retry_ms))
        .agent_api(config.agent.api_prefix.clone());
    if let Some(f) = validated.x402_facilitator.clone() {
        check_facilitator(f, &validated);
    }
    let topups = validated
        .currencies
        .iter()
        .map(|(k, (_, t))| (k.clone(), *t))
        .collect();
    for (currency, suggested) in validated.currencies.values() {
        builder = builder.currency(currency.clone(), *suggested);
    }
    for plan in &validated.plans {
        builder = builder.plan(plan.clone());
    }
    let currencies = validated
        .currencies
        .iter()
        .map(|(k, (c, _))| (k.clone(), c.clone()))
        .collect();
    if let Some(u) = &config.public_url {
        builder = builder.public_base_url(u.clone());
    }
    for (id, source) in validated.issuers {
        let keys: Arc<dyn KeySource> = match source {
            IssuerSource::Static(keys) => Arc::new(StaticKeys(keys)),
            IssuerSource::Jwks(url) => {
                let jwks = JwksKeys::new(url.clone(), Duration::from_secs(r.jwks_min_refetch_secs))
                    .map_err(BuildError::Issuer)?;
                match jwks.refresh().await {
                    Ok(n) => tracing::info!(issuer = %id, keys = n, "fetched issuer JWKS"),
                    Err(e) => {
                        tracing::warn!(issuer = %id, error = %e, "issuer JWKS not fetched yet; will retry on use")
                    }
                }
                Arc::new(jwks)
            }
        };
        builder = builder.issuer(Issuer { id, keys });
    }
    let paywall = builder.build().map_err(BuildError::Secret)?;
    let routes = validated
        .routes
        .into_iter()
        .map(|route| {
            let c = &route.config;
            let priced = PricedRoute::new(c.id.clone(), route.price.clone())
                .description(
                    c.description
                        .clone()
                        .unwrap_or_else(|| format!("{} {}", config.merchant, c.path)),
                )
                .mime_type(c.mime_type.clone())
                .timeout(route.timeout)
                .capture_at_admission(c.capture.as_deref() == Some("admission"));
            let priced = match &c.group {
                Some(g) => priced.group(g.clone()),
                None => priced,
            };
            let priced = match route.x402.clone() {
                Some(x) => priced.x402(x),
                None => priced,
            };
            let priced = match c.rate_limit {
                Some(rl) => priced.rate_limit(tollgate_middleware::store::RateLimit {
                    per_second: rl.per_second,
                    burst: rl.burst.unwrap_or(rl.per_second),
                }),
                None => priced,
            };
            Matched {
                route: Arc::new(route),
                priced: Arc::new(priced),
            }
        })
        .collect();
    let mut pollers = AbortOnDrop::default();
    for iss in &config.issuers {
        if let Some(url) = &iss.mandate_revocations_url {
            let poller = tollgate_middleware::revocations::RevocationPoller::new(
                iss.id.clone(),
                url.clone(),
                paywall.store().clone(),
            )
            .map_err(BuildError::Issuer)?;
            let every = Duration::from_secs(iss.mandate_revocations_poll_secs);
            pollers
                .0
                .push(tokio::spawn(poller.run(every)).abort_handle());
        }
    }
    Ok(Inner {
        _pollers: pollers,
        network: config.network.clone(),
        issuers: config.issuers.iter().map(|i| i.id.clone()).collect(),
        agent_api: config.agent.api_prefix.clone(),
        topups,
        limits: server::Limits {
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            max_header_bytes: config.max_header_bytes,
        },
        store_config: config.store.clone(),
        currencies,
        routes,
        paywall,
    })
}

impl Gateway {
    /// The trusted issuer ids in force.
    pub fn issuer_ids(&self) -> Vec<String> {
        self.inner().issuers.clone()
    }

    /// The payment engine in force (its store holds the ledger).
    pub fn paywall(&self) -> Paywall {
        self.inner().paywall.clone()
    }

    /// Currencies in force.
    pub fn currencies(&self) -> std::collections::BTreeMap<String, tollgate_middleware::Currency> {
        self.inner().currencies.clone()
    }

    /// The HTTP application: `/healthz`, `/readyz`, and every other path through the
    /// payment layer to the proxy.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/.well-known/tollgate", get(catalog))
            .fallback(handle)
            .with_state(self.clone())
    }

    /// The admin API (see [`admin`]), guarded by `token`.
    pub fn admin_router(&self, token: &str) -> Router {
        admin::router(self.clone(), token)
    }

    /// Serve the admin API on `listener` until `shutdown` completes.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        token: String,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.admin_router(&token))
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serve on `listener` until `shutdown` completes, then stop accepting and let in-flight
    /// requests finish (and settle).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.inner().limits;
        server::serve(self.router(), listener, limits, shutdown).await
    }
}

impl Inner {
    /// The first route whose prefix (and host, if it has one) the request is under. The path
    /// is canonical by now ([`path::canonicalize_uri`]).
    fn match_route(&self, req: &Request) -> Option<&Matched> {
        let path = req.uri().path();
        let host = req
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| req.uri().host().map(str::as_bytes))
            .map(path::host_name);
        self.routes.iter().find(|m| {
            let c = &m.route.config;
            path::under_prefix(path, &c.path)
                && c.host.as_ref().is_none_or(|want| {
                    host.is_some_and(|h| h.eq_ignore_ascii_case(want.as_bytes()))
                })
        })
    }
}

/// A new request id: a random per-process prefix and a counter (unique, and no random-number
/// syscall per request; ids need not be unpredictable).
fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `<prefix>-<12 hex digits>`, written by hand (no formatting machinery per request).
    let mut id = String::with_capacity(prefix.len() + 13);
    id.push_str(prefix);
    id.push('-');
    for shift in (0..12).rev() {
        let digit = ((n >> (shift * 4)) & 0xf) as u8;
        id.push(char::from(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        }));
    }
    id
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request id: the client's `X-Request-Id` when it is short and printable, else a new one.
fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(&X_REQUEST_ID)
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .or_else(|| HeaderValue::from_str(&next_request_id()).ok())
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

/// Every request: a request id (propagated to the upstream and returned), a tracing span, and
/// the `tollgate_requests_total` count.
async fn handle(State(gw): State<Gateway>, mut req: Request) -> Response {
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
async fn route_request(gw: Gateway, mut req: Request) -> (String, Response) {
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
    // Agent endpoints (top-up, token, balance) are the gateway's own.
    if let Some(res) = inner
        .paywall
        .agent_api(req.method(), req.uri().path(), req.headers())
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
    (
        m.route.config.id.clone(),
        serve_route(&gw, &inner, m, req).await,
    )
}

async fn serve_route(gw: &Gateway, inner: &Inner, m: &Matched, mut req: Request) -> Response {
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
    if declared.is_some_and(|n| n > route.config.max_body_bytes) {
        return problem(
            ErrorCode::BodyTooLarge,
            &format!(
                "request body larger than {} bytes",
                route.config.max_body_bytes
            ),
        );
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
        req.extensions_mut().insert(route);
        return match gw.0.proxy.forward(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
    }
    req.extensions_mut().insert(m.priced.clone());
    req.extensions_mut().insert(route);
    let proxy = gw.0.proxy.clone();
    let upstream = tower::service_fn(move |req: Request| {
        let proxy = proxy.clone();
        async move { proxy.forward(req).await }
    });
    let paid = PaymentLayer::new(inner.paywall.clone(), Arc::new(RouteFromExtension));
    match tower::Layer::layer(&paid, upstream).oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    }
}

/// The price catalog for agents: what is sold, at what price, and how to pay -- so an agent can
/// choose before it calls. Built from the configuration in force (reloads apply).
async fn catalog(State(gw): State<Gateway>) -> Response {
    use serde_json::json;
    use tollgate_middleware::Price;
    let inner = gw.inner();
    let api = inner.agent_api.clone();
    let routes: Vec<serde_json::Value> = inner
        .routes
        .iter()
        .map(|m| {
            let c = &m.route.config;
            let price = match &m.route.price {
                Price::Fixed(money) => json!({
                    "kind": "fixed",
                    "amount": money.amount.to_string(),
                    "currency": money.currency.code(),
                    "decimals": money.currency.scale(),
                }),
                Price::Metered(metered) => json!({
                    "kind": "metered",
                    "currency": metered.currency.code(),
                    "decimals": metered.currency.scale(),
                    "reserve": metered.reserve.to_string(),
                    "cutoff": metered.cutoff,
                    "units": metered.meters.iter().map(|x| json!({"unit": x.unit, "price": x.price.to_string()})).collect::<Vec<_>>(),
                }),
                _ => json!("free"),
            };
            let mut route = json!({
                "id": c.id,
                "path": c.path,
                "methods": m.route.methods.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                "host": c.host,
                "description": m.priced.description,
                "mimeType": m.priced.mime_type,
                "group": m.priced.group_name(),
                "price": price,
            });
            if let Some(x) = &m.route.x402 {
                route["x402"] = json!({
                    "settlement": x.mode.as_str(),
                    "accepts": x.offers.iter().map(|o| o.requirements()).collect::<Vec<_>>(),
                });
            }
            route
        })
        .collect();
    let mut x402_networks: Vec<&str> = inner
        .routes
        .iter()
        .filter_map(|m| m.route.x402.as_ref())
        .flat_map(|x| x.offers.iter().map(|o| o.network.as_str()))
        .collect();
    x402_networks.sort_unstable();
    x402_networks.dedup();
    let currencies: serde_json::Map<String, serde_json::Value> = inner
        .currencies
        .iter()
        .map(|(code, c)| {
            let suggested = inner
                .topups
                .get(code)
                .copied()
                .flatten()
                .map(|a| a.to_string());
            (
                code.clone(),
                json!({"decimals": c.scale(), "topupSuggested": suggested}),
            )
        })
        .collect();
    let body = json!({
        "merchant": inner.paywall.merchant(),
        "network": inner.network,
        "currencies": currencies,
        "issuers": inner.issuers,
        "paymentMethods": [
            {"scheme": tollgate_middleware::credential::RECEIPT_SCHEME, "kind": "receipt", "headers": ["PAYMENT-SIGNATURE", "X-PAYMENT", "Authorization: Payment"], "algorithms": ["EdDSA", "ES256"]},
            {"scheme": "bearer", "kind": "access-token", "headers": ["Authorization: Bearer"], "obtain": format!("{api}/topup")},
        ],
        "x402Networks": x402_networks,
        "agentEndpoints": {"topup": format!("{api}/topup"), "token": format!("{api}/token"), "balance": format!("{api}/balance")},
        "mandates": {
            "accepted": true,
            "carry": ["receipt claim \"mandate\" (the mandate JWT)", "Tollgate-Mandate request header", "an access token bound at top-up or renewal"],
            "windows": ["hour", "day", "week", "month"],
            "windowKind": "UTC calendar",
        },
        "routes": routes,
        "plans": inner.paywall.plans().iter().map(|p| p.catalog()).collect::<Vec<_>>(),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    match gw.paywall().store().ping().await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: store unreachable");
            let mut res = problem(
                ErrorCode::StoreUnavailable,
                "the payment store is unreachable",
            );
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        }
    }
}

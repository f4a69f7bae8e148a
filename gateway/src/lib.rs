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
//! - `state`: building the gateway from a validated config, and reloading it (SIGHUP);
//! - `router`: every request -- its id (`request_id`), its canonical path, the agent API, the
//!   matched route, the payment layer in front of the proxy;
//! - `catalog` (`/.well-known/tollgate`), `discovery` (`/openapi.json`, `/llms.txt`),
//!   `health` (`/healthz`, `/readyz`);
//! - [`server`]: connections (HTTP/1 + HTTP/2, the drain layer, graceful shutdown, the
//!   optional TLS listener); [`tls`]: certificates and trust stores, both ways;
//! - `upgrade`: WebSocket pass-through on free routes;
//! - `mcp`: the agent MCP server (`<agent api>/mcp`) and paid tools of proxied MCP servers;
//! - this file: [`Gateway`], its routers and [`Gateway::serve`].

#![warn(missing_docs)]

pub mod admin;
pub mod admin_access;
mod admin_risk;
mod admin_webhooks;
pub mod config;
pub mod dashboard;
pub mod keygen;
pub mod path;
pub mod proxy;
pub mod server;
pub mod tls;

mod bill;
mod catalog;
mod discovery;
mod health;
mod ledger;
mod mcp;
mod refunds;
mod request_id;
mod router;
mod state;
mod upgrade;

use self::catalog::catalog;
use self::health::{healthz, readyz};
use self::request_id::{request_id, X_REQUEST_ID};
use self::router::handle;

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
    ErrorCode, Issuer, JwksKeys, KeySource, PaymentLayer, Paywall, Price, PricedRoute, RedisStore,
    RedisStoreOptions, RouteFromExtension, StaticKeys, Store,
};
use tower::ServiceExt;

use crate::config::{Config, IssuerSource, Route, StoreKind, Validated};
use crate::proxy::{problem, Proxies, Proxy};

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
    /// The ledger database cannot be used (its message names the setting).
    #[error("{0}")]
    Ledger(String),
}

struct Matched {
    route: Arc<Route>,
    priced: Arc<PricedRoute>,
    /// The upstream clients of the route's trust store (shared by routes with the same one).
    proxy: Arc<Proxy>,
    /// The tools sold, when the route proxies an MCP server (`[routes.mcp]`).
    tools: Option<Arc<mcp::tools::Tools>>,
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
    /// What `/openapi.json` and `/llms.txt` say.
    discovery: crate::config::DiscoveryConfig,
    /// The public base URL, if configured (discovery's `servers`).
    public_url: Option<String>,
    /// Suggested top-ups per currency (catalog).
    topups: std::collections::BTreeMap<String, Option<tollgate_middleware::Amount>>,
    /// Currencies (for the admin API's decimal amounts).
    currencies: std::collections::BTreeMap<String, tollgate_middleware::Currency>,
    /// Routes in match order, each with the price the payment layer sees.
    routes: Vec<Matched>,
    /// The upstream clients, one per trust store (a reload keeps those whose store is kept).
    proxies: Proxies,
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
    /// The TLS listener's certificate (`[tls]`; not reloadable).
    listener_tls: Option<tls::ListenerTls>,
    /// The admin listener serves TLS too (`[admin] tls`).
    admin_tls: bool,
    /// The ledger of record and this replica's drainer (`[ledger]`; not reloadable).
    ledger: Option<ledger::LedgerRuntime>,
    /// `[[webhooks]]` and their tasks (not reloadable).
    webhooks: Option<(tollgate_middleware::webhooks::Webhooks, AbortOnDrop)>,
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

impl Gateway {
    /// The trusted issuer ids in force.
    pub fn issuer_ids(&self) -> Vec<String> {
        self.inner().issuers.clone()
    }

    /// The payment engine in force (its store holds the ledger).
    pub fn paywall(&self) -> Paywall {
        self.inner().paywall.clone()
    }

    /// Where usage, summaries and payer totals are read: the ledger database when `[ledger]`
    /// is set (the Redis scripts then keep no aggregates), else the store.
    pub fn ledger_reader(&self) -> Arc<dyn tollgate_middleware::store::LedgerStore> {
        match &self.0.ledger {
            Some(l) => l.db.clone(),
            None => self.inner().paywall.store().clone(),
        }
    }

    /// The ledger database (`[ledger]` only): refunds of charges drained from Redis.
    pub(crate) fn ledger_db(&self) -> Option<Arc<tollgate_middleware::ledger::PgLedger>> {
        self.0.ledger.as_ref().map(|l| l.db.clone())
    }

    /// The webhooks (`[[webhooks]]` only).
    pub fn webhooks(&self) -> Option<&tollgate_middleware::webhooks::Webhooks> {
        self.0.webhooks.as_ref().map(|(w, _)| w)
    }

    /// What this replica's drainer last saw (`[ledger]` only).
    pub fn ledger_status(&self) -> Option<Arc<tollgate_middleware::ledger::DrainStatus>> {
        self.0.ledger.as_ref().map(|l| l.status.clone())
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
            .route("/openapi.json", get(discovery::openapi))
            .route("/llms.txt", get(discovery::llms))
            .fallback(handle)
            .with_state(self.clone())
    }

    /// The admin API (see [`admin`]), guarded by `token`.
    pub fn admin_router(&self, token: &str) -> Router {
        admin::router(self.clone(), token)
    }

    /// Serve the admin API on `listener` until `shutdown` completes, with the public
    /// listener's connection handling (head limits, refusals that keep the connection).
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        token: String,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.inner().limits;
        let tls = self.0.listener_tls.clone().filter(|_| self.0.admin_tls);
        server::serve(self.admin_router(&token), listener, limits, tls, shutdown).await
    }

    /// Serve on `listener` (over TLS when `[tls]` is set) until `shutdown` completes, then stop
    /// accepting and let in-flight requests finish (and settle).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let limits = self.inner().limits;
        let tls = self.0.listener_tls.clone();
        server::serve(self.router(), listener, limits, tls, shutdown).await
    }
}

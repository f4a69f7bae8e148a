//! Building the gateway from a validated config, and reloading it (SIGHUP): the store, the
//! payment engine, the routes and the facilitator check, swapped in one step.

use super::*;
use crate::config::SyncMode;
use tollgate_middleware::store::{SqliteOptions, SqliteStore, Synchronous};
use tollgate_middleware::webhooks::{WebhookConfig, Webhooks};

pub(crate) async fn build_store(config: &Config) -> Result<Arc<dyn Store>, BuildError> {
    Ok(match config.store.kind {
        StoreKind::Memory | StoreKind::Sqlite => {
            let path = match config.store.kind {
                StoreKind::Memory => ":memory:".to_owned(),
                _ => config.store.path.clone(),
            };
            let synchronous = match config.store.synchronous {
                SyncMode::Full => Synchronous::Full,
                SyncMode::Normal => Synchronous::Normal,
            };
            let opts = SqliteOptions {
                synchronous,
                ..SqliteOptions::new(path)
            };
            let opened = SqliteStore::open(opts).map_err(|e| {
                BuildError::Store(format!("store.path = {:?}: {e}", config.store.path))
            })?;
            Arc::new(opened)
        }
        StoreKind::Redis => {
            let options = RedisStoreOptions {
                url: config.store.url.clone().unwrap_or_default(),
                cluster: config.store.cluster,
                prefix: config.store.prefix.clone(),
                timeout: Duration::from_millis(config.store.timeout_ms),
            };
            let store = RedisStore::connect(options)
                .await
                .map_err(|e| BuildError::Store(e.to_string()))?;
            // With a ledger of record the aggregates are derived there, not in the scripts.
            match config.ledger {
                Some(_) => Arc::new(store.with_ledger_of_record()),
                None => Arc::new(store),
            }
        }
    })
}

impl Gateway {
    /// Build from a validated config. `secret` is the challenge HMAC key; connects the store
    /// (a Redis that is down is not fatal: paid routes fail closed until it is back) and
    /// fetches JWKS once (a failure is retried on use).
    pub async fn build(validated: Validated, secret: &[u8]) -> Result<Self, BuildError> {
        let config = &validated.config;
        let store = build_store(config).await?;
        let ledger = crate::ledger::start(config).await?;
        let webhooks = start_webhooks(&validated, &store, ledger.as_ref());
        if let (Some(f), Some(x)) = (validated.x402_facilitator.clone(), &config.x402) {
            // One settler per process for x402 `deferred` payments (jobs are leased, so any
            // number of replicas can run one). Its facilitator and store are fixed at start-up.
            let mut settler = tollgate_middleware::x402::settler::Settler::new(store.clone(), f);
            settler.interval = Duration::from_millis(x.settle_interval_ms);
            settler.retry_base = Duration::from_millis(x.settle_retry_base_ms);
            settler.max_attempts = x.settle_max_attempts;
            settler.webhooks = webhooks.as_ref().map(|(w, _)| w.clone());
            tokio::spawn(settler.run());
        }
        let listener_tls = validated.listener_tls.clone();
        let admin_tls = config.admin.tls;
        let hooks = webhooks.as_ref().map(|(w, _)| w.clone());
        let inner = build_inner(validated, secret, store, None, hooks).await?;
        Ok(Gateway(Arc::new(Shared {
            ledger,
            current: std::sync::RwLock::new(Arc::new(inner)),
            secret: secret.to_vec(),
            config_path: std::sync::RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
            listener_tls,
            admin_tls,
            webhooks,
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
    pub(crate) fn inner(&self) -> Arc<Inner> {
        match self.0.current.read() {
            Ok(g) => g.clone(),
            // A panic while swapping cannot leave a half-written Arc: use it.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-read the config file and switch to it without dropping requests: in-flight requests
    /// finish on the configuration they started with. An invalid file is refused and the
    /// current configuration keeps serving. The store is kept unless `[store]` changed, and the
    /// upstream connection pools of every trust store that did not change are kept;
    /// `listen`, `[tls]`, `[admin]` and the secret need a restart. Returns the number of routes.
    pub async fn reload(&self) -> Result<usize, ReloadError> {
        let _one_at_a_time = self.0.reloading.lock().await;
        let path = self
            .0
            .config_path
            .read()
            .ok()
            .and_then(|p| p.clone())
            .ok_or(ReloadError::NoFile)?;
        let validated = Config::load(&path)?;
        let old = self.inner();
        let store = if validated.config.store == old.store_config {
            old.paywall.store().clone()
        } else {
            tracing::info!("reload: [store] changed; connecting the new store");
            build_store(&validated.config).await?
        };
        let hooks = self.webhooks().cloned();
        let inner = build_inner(validated, &self.0.secret, store, Some(&old), hooks).await?;
        let routes = inner.routes.len();
        if let Ok(mut current) = self.0.current.write() {
            *current = Arc::new(inner);
        }
        tracing::info!(routes, path = %path.display(), "configuration reloaded");
        Ok(routes)
    }
}

/// Start the webhook dispatcher and deliverers (`[[webhooks]]`), on the ledger of record.
fn start_webhooks(
    v: &Validated,
    store: &Arc<dyn Store>,
    ledger: Option<&crate::ledger::LedgerRuntime>,
) -> Option<(Webhooks, AbortOnDrop)> {
    if v.webhooks.is_empty() {
        return None;
    }
    let reader: Arc<dyn tollgate_middleware::store::LedgerStore> = match ledger {
        Some(l) => l.db.clone(),
        None => store.clone(),
    };
    let metrics = tollgate_middleware::metrics::global();
    for e in &v.webhooks {
        metrics.init_webhook(&e.id);
        tokio::spawn(probe_webhook(e.id.clone(), e.url.clone()));
        tracing::info!(endpoint = %e.id, url = %e.url, events = ?e.events.iter().map(|k| k.name()).collect::<Vec<_>>(), "webhook endpoint");
    }
    let plan_routes = v
        .routes
        .iter()
        .filter_map(|r| {
            let plan = v.plans.iter().find(|p| p.covers(r.group_name()))?;
            Some((r.id.clone(), plan.id.clone()))
        })
        .collect();
    let config = WebhookConfig {
        endpoints: v.webhooks.clone(),
        thresholds: v.thresholds.clone(),
        mandate_percents: v.config.mandate_budget_percents.clone(),
        currencies: v
            .currencies
            .iter()
            .map(|(k, (c, _))| (k.clone(), c.clone()))
            .collect(),
        plan_routes,
        poll: Duration::from_millis(200),
        holder: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
    };
    let w = Webhooks::new(config, store.clone(), reader);
    let tasks = AbortOnDrop(w.spawn());
    Some((w, tasks))
}

/// Say at start-up when a webhook endpoint cannot be reached (its messages wait in the outbox
/// and are retried; a receiver may well start after the gateway, so this is a warning).
async fn probe_webhook(id: String, url: String) {
    let Ok(parsed) = url.parse::<http::Uri>() else {
        return;
    };
    let default = if parsed.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = parsed.port_u16().unwrap_or(default);
    let Some(host) = parsed.host() else {
        return;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(endpoint = %id, %url, error = %e, "webhook endpoint unreachable at start; its messages wait in the outbox and are retried")
        }
        Err(_) => {
            tracing::warn!(endpoint = %id, %url, "webhook endpoint did not accept a connection within 3 s at start; its messages wait in the outbox and are retried")
        }
    }
}

/// Build one configuration snapshot on a given store.
/// Ask the facilitator what it supports (in the background: it may be down at start-up) and
/// warn about offered (scheme, network) pairs it does not list.
pub(crate) fn check_facilitator(f: Arc<tollgate_middleware::x402::HttpFacilitator>, v: &Validated) {
    use tollgate_middleware::x402::upto::UPTO_SCHEME;
    use tollgate_middleware::x402::{Facilitator as _, EXACT_SCHEME};
    let mut wanted: Vec<(&'static str, String)> = v
        .routes
        .iter()
        .filter_map(|r| r.x402.as_ref())
        .flat_map(|x| {
            let exact = x.offers.iter().map(|o| (EXACT_SCHEME, o.network.clone()));
            exact.chain(x.upto.iter().map(|o| (UPTO_SCHEME, o.network.clone())))
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    tokio::spawn(async move {
        match f.supported().await {
            Ok(kinds) => {
                for (scheme, n) in wanted {
                    if !kinds
                        .iter()
                        .any(|(v, s, k)| *v == 2 && s == scheme && *k == n)
                    {
                        tracing::warn!(network = %n, scheme, "the x402 facilitator does not list this scheme on this network (GET /supported)");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "x402 facilitator GET /supported failed"),
        }
    });
}

pub(crate) async fn build_inner(
    validated: Validated,
    secret: &[u8],
    store: Arc<dyn Store>,
    previous: Option<&Inner>,
    webhooks: Option<Webhooks>,
) -> Result<Inner, BuildError> {
    let config = &validated.config;
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
        .dpop(config.agent.dpop_policy())
        .settle_retry(Duration::from_millis(config.store.settle_retry_ms))
        .agent_api(config.agent.api_prefix.clone());
    if let Some(l) = &config.store.lease {
        builder = builder.leases(l.to_config());
    }
    builder = builder.risk(validated.risk.clone());
    if let Some(w) = webhooks {
        builder = builder.webhooks(w);
    }
    if let Some(f) = validated.x402_facilitator.clone() {
        check_facilitator(f, &validated);
    }
    let topups = validated
        .currencies
        .iter()
        .map(|(k, (_, t))| (k.clone(), *t))
        .collect();
    let metrics = tollgate_middleware::metrics::global();
    for (currency, suggested) in validated.currencies.values() {
        metrics.init_currency(currency.code(), currency.scale());
        builder = builder.currency(currency.clone(), *suggested);
    }
    for route in &validated.routes {
        let currency = route.price.currency().map(|c| c.code());
        metrics.init_route(&route.id, currency);
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
    if let Some(r) = &config.realm {
        builder = builder.realm(r.clone());
    }
    for (id, source) in validated.issuers {
        let keys: Arc<dyn KeySource> = match source {
            IssuerSource::Static(keys) => Arc::new(StaticKeys(keys)),
            IssuerSource::Jwks(url) => {
                let jwks = JwksKeys::new(url.clone(), Duration::from_secs(r.jwks_min_refetch_secs))
                    .map_err(|e| BuildError::Issuer(e.to_string()))?;
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
    let paywall = builder
        .build()
        .map_err(|e| BuildError::Secret(e.to_string()))?;
    let mut proxies = Proxies::default();
    let routes = validated
        .routes
        .into_iter()
        .map(|route| {
            let proxy = proxies.for_trust(&route.trust, previous.map(|p| &p.proxies));
            let c = &route;
            let priced = PricedRoute::new(c.id.clone(), route.price.clone())
                .description(
                    c.description
                        .clone()
                        .unwrap_or_else(|| format!("{} {}", config.merchant, c.path)),
                )
                .mime_type(c.mime_type.clone())
                .timeout(route.timeout)
                .capture_at_admission(route.capture == crate::config::Capture::Admission);
            let priced = match &c.group {
                Some(g) => priced.group(g.clone()),
                None => priced,
            };
            let priced = match route.x402.clone() {
                Some(x) => priced.x402(x),
                None => priced,
            };
            let priced = match c.rate_limit {
                Some(rl) => priced.rate_limit(rl),
                None => priced,
            };
            let tools = route
                .mcp
                .as_ref()
                .map(|mcp| Arc::new(crate::mcp::tools::Tools::new(mcp, &priced)));
            Matched {
                route: Arc::new(route),
                priced: Arc::new(priced),
                proxy,
                tools,
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
            .map_err(|e| BuildError::Issuer(e.to_string()))?;
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
        discovery: config.discovery.clone(),
        public_url: config.public_url.clone(),
        topups,
        limits: server::Limits {
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            max_header_bytes: config.max_header_bytes,
        },
        store_config: config.store.clone(),
        currencies,
        routes,
        proxies,
        paywall,
    })
}

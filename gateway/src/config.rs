//! Configuration: one TOML file, parsed ([`Config::from_str`]), loaded ([`Config::load`]) and
//! validated ([`Config::validate`]) before any socket is bound. Every error names its field.
//! Secrets never live in the file: the gateway secret comes from `TOLLGATE_SECRET`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_middleware::jwk::Jwk;
use tollgate_middleware::money::{Amount, Currency, Money};
use tollgate_middleware::paywall::valid_caip2;
use tollgate_middleware::plan::{parse_period, Overage, Plan};
use tollgate_middleware::{IssuerKey, Meter, Metered, OnMissing, Price, UsageSource};

/// A configuration problem; `tollgate` exits with status 64 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field has the wrong type or an unknown name.
    #[error("invalid TOML: {0}")]
    Parse(String),
    /// A field has a value Tollgate cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `routes[1].price.amount`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// This merchant's id: the `aud` receipts must carry, and `payTo` in offers.
    pub merchant: String,
    /// x402 network id of receipt offers.
    #[serde(default = "default_network")]
    pub network: String,
    /// Public base URL shown in 402 `resource.url` (default: from the Host header).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// Time allowed for a request head to arrive (slow-header defence).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Largest request head in bytes (larger: 431).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Receipt limits.
    #[serde(default)]
    pub receipts: ReceiptsConfig,
    /// Currencies by code.
    pub currencies: BTreeMap<String, CurrencyConfig>,
    /// Trusted receipt issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Where payment state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// Routes, matched in order.
    pub routes: Vec<RouteConfig>,
    /// Plans sold (usage-based subscriptions and passes).
    #[serde(default)]
    pub plans: Vec<PlanConfig>,
    /// Agent endpoints (top-up, token renewal, balance) and access tokens.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The admin API listener (off unless `listen` is set).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Path prefix of the agent endpoints.
    pub api_prefix: String,
    /// Lifetime of access tokens (seconds).
    pub token_ttl_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            api_prefix: tollgate_middleware::paywall::DEFAULT_AGENT_API.into(),
            token_ttl_secs: 86_400,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; the admin API is off when unset. Its bearer token comes
    /// from `TOLLGATE_ADMIN_TOKEN`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8402))
}
fn default_network() -> String {
    tollgate_middleware::paywall::DEFAULT_NETWORK.into()
}
fn default_grace() -> u64 {
    30
}
fn default_header_timeout() -> u64 {
    10
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}

/// `[receipts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptsConfig {
    /// Allowed clock difference with issuers (seconds).
    pub clock_skew_secs: u64,
    /// Longest accepted `exp - iat` (seconds).
    pub max_lifetime_secs: u64,
    /// Largest accepted receipt (bytes).
    pub max_bytes: usize,
    /// How long a 402 challenge stays valid (seconds).
    pub challenge_ttl_secs: u64,
    /// Minimum seconds between JWKS refetches triggered by unknown `kid`s.
    pub jwks_min_refetch_secs: u64,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        ReceiptsConfig {
            clock_skew_secs: 30,
            max_lifetime_secs: 3600,
            max_bytes: 8192,
            challenge_ttl_secs: 300,
            jwks_min_refetch_secs: 30,
        }
    }
}

/// `[currencies.<CODE>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyConfig {
    /// Decimal places of one atomic unit (0..=18).
    pub scale: u32,
    /// Top-up amount offered to agents in 402s (decimal string); no top-up offer when unset.
    #[serde(default)]
    pub topup_suggested: Option<String>,
}

/// `[[issuers]]`: exactly one of `jwks_url`, `keys`, `pem_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub id: String,
    /// URL of the issuer's JWKS (fetched, cached, refetched on unknown `kid`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Inline public JWKs.
    #[serde(default)]
    pub keys: Option<Vec<toml::Value>>,
    /// A PEM (SPKI) public key file, relative to the config file.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// The `kid` of the PEM key, if receipts name one.
    #[serde(default)]
    pub kid: Option<String>,
    /// URL of the issuer's mandate revocation list (`{"revoked": ["<mandate id>", ...]}`),
    /// polled every `mandate_revocations_poll_secs`.
    #[serde(default)]
    pub mandate_revocations_url: Option<String>,
    /// Poll interval of the revocation list (seconds, 1 to 3600).
    #[serde(default = "default_revocations_poll")]
    pub mandate_revocations_poll_secs: u64,
}

fn default_revocations_poll() -> u64 {
    30
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (embedded, single process) or `redis`.
    #[serde(default)]
    pub kind: StoreKind,
    /// Redis URL (`redis://`, `rediss://`, `unix://`); required for `redis`. With
    /// `cluster = true`: comma-separated seed nodes of a Redis Cluster.
    #[serde(default)]
    pub url: Option<String>,
    /// The URL names a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Bound on each Redis call (milliseconds).
    #[serde(default = "default_store_timeout")]
    pub timeout_ms: u64,
    /// How long a capture whose outcome is unknown (Redis not answering) is retried before the
    /// response is withheld (milliseconds).
    #[serde(default = "default_settle_retry")]
    pub settle_retry_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            url: None,
            cluster: false,
            prefix: default_prefix(),
            timeout_ms: default_store_timeout(),
            settle_retry_ms: default_settle_retry(),
        }
    }
}

fn default_prefix() -> String {
    "tollgate".into()
}
fn default_store_timeout() -> u64 {
    500
}
fn default_settle_retry() -> u64 {
    5000
}

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In-process (default).
    #[default]
    Memory,
    /// Redis (production; shared by replicas).
    Redis,
}

/// A route's price as written in the file: `"free"`, `{ amount, currency }`, or a metered
/// price `{ currency, reserve, meters = [...] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PriceConfig {
    /// `"free"`.
    Keyword(String),
    /// A fixed price per request.
    Fixed {
        /// Decimal string.
        amount: String,
        /// Currency code from `[currencies]`.
        currency: String,
    },
    /// Per unit of usage, drawn from a prepaid balance.
    Metered {
        /// Currency code from `[currencies]`.
        currency: String,
        /// Held before forwarding (decimal string, > 0).
        reserve: String,
        /// The priced units.
        meters: Vec<MeterConfig>,
        /// `reserve` (default) or `zero`: the charge when usage cannot be read.
        #[serde(default)]
        on_missing: Option<String>,
        /// End a stream once the payer cannot pay for more.
        #[serde(default)]
        cutoff: bool,
    },
}

/// One meter of a metered price.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Unit name, e.g. `prompt_token`.
    pub unit: String,
    /// `header:<name>`, `json:<pointer>`, `sse:<pointer>`, `request_bytes`, `response_bytes`,
    /// `duration_ms`.
    pub usage: String,
    /// Price per unit (decimal string, any precision).
    pub price: String,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Stable id (appears in challenges and usage events).
    pub id: String,
    /// Path prefix, matched on segment boundaries (`/v1` matches `/v1` and `/v1/x`, not `/v1x`).
    pub path: String,
    /// Allowed methods (empty: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only for this Host (without port, case-insensitive).
    #[serde(default)]
    pub host: Option<String>,
    /// Upstream base URL (`http://host:port[/base]`).
    pub upstream: String,
    /// Price.
    pub price: PriceConfig,
    /// Time for the upstream to start answering (milliseconds).
    #[serde(default = "default_route_timeout")]
    pub timeout_ms: u64,
    /// Largest request body (bytes).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Shown to agents in the 402 `resource.description`.
    #[serde(default)]
    pub description: Option<String>,
    /// Shown to agents in the 402 `resource.mimeType`.
    #[serde(default = "default_mime")]
    pub mime_type: String,
    /// Per payer on this route: `{ per_second = 10, burst = 20 }` (429 beyond).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Route group (mandates may limit the groups they pay for). Default: the route id.
    #[serde(default)]
    pub group: Option<String>,
}

/// `[[plans]]`: a subscription sold for a period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Stable id (named by `subscribe` receipts).
    pub id: String,
    /// Price of one period: `{ amount = "5", currency = "USD" }`.
    pub price: MoneyConfig,
    /// Period: `90s`, `15m`, `1h`, `30d`.
    pub period: String,
    /// Route groups covered (a route's `group`, or its id).
    pub groups: Vec<String>,
    /// Calls included per period; omitted (and no `units`): unlimited (a pass).
    #[serde(default)]
    pub calls: Option<u64>,
    /// Units included per period instead of calls: `{ unit = "token", included = 1000000 }`
    /// (a meter unit of the covered metered routes).
    #[serde(default)]
    pub units: Option<PlanUnitsConfig>,
    /// Past the included calls, charge each call from the prepaid balance at this price
    /// (`"route"`: at the route's own price or meters); omitted: deny (`plan_exhausted`).
    #[serde(default)]
    pub overage_price: Option<String>,
}

/// `units = { unit, included }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanUnitsConfig {
    /// The meter unit counted.
    pub unit: String,
    /// How many per period.
    pub included: u64,
}

/// `{ amount, currency }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoneyConfig {
    /// Decimal string.
    pub amount: String,
    /// Currency code (in `[currencies]`).
    pub currency: String,
}

/// `rate_limit = { per_second, burst }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second (1 to 1000).
    pub per_second: u32,
    /// Requests allowed at once (1 to 10000; default = per_second).
    #[serde(default)]
    pub burst: Option<u32>,
}

fn default_route_timeout() -> u64 {
    30_000
}
fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
fn default_mime() -> String {
    "application/json".into()
}

/// A validated route, ready to serve.
#[derive(Debug, Clone)]
pub struct Route {
    /// As configured.
    pub config: RouteConfig,
    /// Upper-case methods (empty: any).
    pub methods: Vec<http::Method>,
    /// Parsed upstream.
    pub upstream: http::Uri,
    /// Parsed price.
    pub price: Price,
    /// Timeout.
    pub timeout: Duration,
}

impl Config {
    /// Parse TOML (no validation).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Result<Self, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Read, parse and validate a file; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<(Self, Validated), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::from_str(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let v = cfg.validate(base)?;
        Ok((cfg, v))
    }

    /// Check every field; returns the parsed pieces the gateway needs.
    pub fn validate(&self, base_dir: &Path) -> Result<Validated, ConfigError> {
        if self.merchant.is_empty() || self.merchant.len() > 128 {
            return Err(invalid("merchant", "must be 1 to 128 characters"));
        }
        if !valid_caip2(&self.network) {
            return Err(invalid(
                "network",
                "must match ^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$",
            ));
        }
        if let Some(u) = &self.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(invalid("public_url", "must start with http:// or https://"));
            }
        }
        if self.header_timeout_secs == 0 || self.header_timeout_secs > 300 {
            return Err(invalid("header_timeout_secs", "must be 1 to 300"));
        }
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid("max_header_bytes", "must be 8192 to 1048576"));
        }
        let r = &self.receipts;
        if r.max_lifetime_secs == 0 || r.max_lifetime_secs > 30 * 86400 {
            return Err(invalid(
                "receipts.max_lifetime_secs",
                "must be 1 to 2592000",
            ));
        }
        if r.clock_skew_secs > 600 {
            return Err(invalid("receipts.clock_skew_secs", "must be at most 600"));
        }
        if !(256..=65536).contains(&r.max_bytes) {
            return Err(invalid("receipts.max_bytes", "must be 256 to 65536"));
        }
        if r.challenge_ttl_secs == 0 || r.challenge_ttl_secs > 86400 {
            return Err(invalid("receipts.challenge_ttl_secs", "must be 1 to 86400"));
        }
        let mut currencies = BTreeMap::new();
        let mut topups = BTreeMap::new();
        for (code, c) in &self.currencies {
            let cur = Currency::try_new(code.clone(), c.scale)
                .map_err(|m| invalid(format!("currencies.{code}"), m))?;
            let suggested = match &c.topup_suggested {
                None => None,
                Some(t) => {
                    let field = format!("currencies.{code}.topup_suggested");
                    let a: Amount = t
                        .parse()
                        .map_err(|e| invalid(field.clone(), format!("{e}")))?;
                    match cur.to_minor(a) {
                        Ok(m) if m > 0 => Some(a),
                        Ok(_) => return Err(invalid(field, "must be greater than zero")),
                        Err(e) => return Err(invalid(field, e.to_string())),
                    }
                }
            };
            topups.insert(code.clone(), suggested);
            currencies.insert(code.clone(), cur);
        }
        let mut issuers = Vec::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let f = |k: &str| format!("issuers[{i}].{k}");
            if iss.id.is_empty() {
                return Err(invalid(f("id"), "must not be empty"));
            }
            if self.issuers[..i].iter().any(|o| o.id == iss.id) {
                return Err(invalid(f("id"), format!("duplicate issuer {:?}", iss.id)));
            }
            let n = usize::from(iss.jwks_url.is_some())
                + usize::from(iss.keys.is_some())
                + usize::from(iss.pem_file.is_some());
            if n != 1 {
                return Err(invalid(
                    format!("issuers[{i}]"),
                    "set exactly one of jwks_url, keys, pem_file",
                ));
            }
            let source = if let Some(url) = &iss.jwks_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(f("jwks_url"), "must be an http(s) URL"));
                }
                IssuerSource::Jwks(url.clone())
            } else if let Some(keys) = &iss.keys {
                if keys.is_empty() {
                    return Err(invalid(f("keys"), "must list at least one key"));
                }
                let mut parsed = Vec::new();
                for (k, v) in keys.iter().enumerate() {
                    let json = serde_json::to_value(v)
                        .map_err(|e| invalid(format!("issuers[{i}].keys[{k}]"), e.to_string()))?;
                    let jwk: Jwk = serde_json::from_value(json).map_err(|e| {
                        invalid(format!("issuers[{i}].keys[{k}]"), format!("not a JWK: {e}"))
                    })?;
                    parsed.push(
                        IssuerKey::from_jwk(&jwk)
                            .map_err(|m| invalid(format!("issuers[{i}].keys[{k}]"), m))?,
                    );
                }
                IssuerSource::Static(parsed)
            } else if let Some(pem) = &iss.pem_file {
                let path = base_dir.join(pem);
                let bytes = std::fs::read(&path).map_err(|e| {
                    invalid(
                        f("pem_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let key = IssuerKey::from_pem(&bytes, iss.kid.clone())
                    .map_err(|m| invalid(f("pem_file"), m))?;
                IssuerSource::Static(vec![key])
            } else {
                return Err(invalid(format!("issuers[{i}]"), "no key source"));
            };
            if let Some(url) = &iss.mandate_revocations_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        f("mandate_revocations_url"),
                        "must be an http(s) URL",
                    ));
                }
            }
            if !(1..=3600).contains(&iss.mandate_revocations_poll_secs) {
                return Err(invalid(
                    f("mandate_revocations_poll_secs"),
                    "must be 1 to 3600",
                ));
            }
            issuers.push((iss.id.clone(), source));
        }
        match self.store.kind {
            StoreKind::Memory => {}
            StoreKind::Redis => {
                let Some(url) = &self.store.url else {
                    return Err(invalid("store.url", "required when store.kind = \"redis\""));
                };
                let urls: Vec<&str> = url.split(',').map(str::trim).collect();
                if urls.iter().any(|u| redis_url_ok(u).is_err()) {
                    return Err(invalid("store.url", "must be a redis://, rediss:// or unix:// URL (comma-separated seed nodes with cluster = true)"));
                }
                if urls.len() > 1 && !self.store.cluster {
                    return Err(invalid(
                        "store.url",
                        "several URLs name a cluster: set store.cluster = true",
                    ));
                }
            }
        }
        if self.store.prefix.is_empty() || self.store.prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "store.prefix",
                "must be non-empty, without braces or spaces",
            ));
        }
        if self.store.timeout_ms == 0 || self.store.timeout_ms > 60_000 {
            return Err(invalid("store.timeout_ms", "must be 1 to 60000"));
        }
        if self.store.settle_retry_ms > 60_000 {
            return Err(invalid("store.settle_retry_ms", "must be at most 60000"));
        }
        if self.routes.is_empty() {
            return Err(invalid("routes", "at least one route is needed"));
        }
        let mut routes = Vec::new();
        for (i, rc) in self.routes.iter().enumerate() {
            let f = |k: &str| format!("routes[{i}].{k}");
            if rc.id.is_empty()
                || rc.id.len() > 64
                || !rc
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(invalid(f("id"), "must be 1 to 64 of [A-Za-z0-9._-]"));
            }
            if self.routes[..i].iter().any(|o| o.id == rc.id) {
                return Err(invalid(f("id"), format!("duplicate route id {:?}", rc.id)));
            }
            if !rc.path.starts_with('/')
                || rc.path.contains(['?', '#'])
                || rc.path.split('/').any(|s| s == "." || s == "..")
            {
                return Err(invalid(
                    f("path"),
                    "must be an absolute path prefix like /v1/compute",
                ));
            }
            let mut methods = Vec::new();
            for (m, name) in rc.methods.iter().enumerate() {
                let method = http::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        invalid(format!("routes[{i}].methods[{m}]"), "not an HTTP method")
                    })?;
                methods.push(method);
            }
            let upstream: http::Uri = rc
                .upstream
                .parse()
                .map_err(|_| invalid(f("upstream"), "not a URL"))?;
            if upstream.scheme_str() != Some("http")
                || upstream.authority().is_none()
                || upstream.query().is_some()
            {
                return Err(invalid(
                    f("upstream"),
                    "must be http://host:port[/base] (TLS to upstreams is not supported yet)",
                ));
            }
            let price = match &rc.price {
                PriceConfig::Keyword(k) if k == "free" => Price::Free,
                PriceConfig::Keyword(k) => {
                    return Err(invalid(
                        f("price"),
                        format!(
                            "{k:?}: use \"free\" or {{ amount = \"0.01\", currency = \"USD\" }}"
                        ),
                    ))
                }
                PriceConfig::Fixed { amount, currency } => {
                    let cur = currencies.get(currency).ok_or_else(|| {
                        invalid(
                            f("price.currency"),
                            format!("{currency:?} is not in [currencies]"),
                        )
                    })?;
                    let amount: Amount = amount
                        .parse()
                        .map_err(|e| invalid(f("price.amount"), format!("{e}")))?;
                    Price::fixed(Money {
                        amount,
                        currency: cur.clone(),
                    })
                    .map_err(|e| invalid(f("price.amount"), e.to_string()))?
                }
                PriceConfig::Metered {
                    currency,
                    reserve,
                    meters,
                    on_missing,
                    cutoff,
                } => {
                    let cur = currencies.get(currency).ok_or_else(|| {
                        invalid(
                            f("price.currency"),
                            format!("{currency:?} is not in [currencies]"),
                        )
                    })?;
                    let reserve: Amount = reserve
                        .parse()
                        .map_err(|e| invalid(f("price.reserve"), format!("{e}")))?;
                    match cur.to_minor(reserve) {
                        Ok(m) if m > 0 => {}
                        Ok(_) => {
                            return Err(invalid(f("price.reserve"), "must be greater than zero"))
                        }
                        Err(e) => return Err(invalid(f("price.reserve"), e.to_string())),
                    }
                    if meters.is_empty() {
                        return Err(invalid(f("price.meters"), "list at least one meter"));
                    }
                    let mut parsed: Vec<Meter> = Vec::new();
                    for (k, m) in meters.iter().enumerate() {
                        let mf = |x: &str| format!("routes[{i}].price.meters[{k}].{x}");
                        if m.unit.is_empty()
                            || m.unit.len() > 64
                            || m.unit.contains(['|', ' '])
                            || parsed.iter().any(|p| p.unit == m.unit)
                        {
                            return Err(invalid(
                                mf("unit"),
                                "a unique name of 1 to 64 characters without '|' or spaces",
                            ));
                        }
                        let source: UsageSource = m
                            .usage
                            .parse()
                            .map_err(|e: String| invalid(mf("usage"), e))?;
                        let price: Amount = m
                            .price
                            .parse()
                            .map_err(|e| invalid(mf("price"), format!("{e}")))?;
                        parsed.push(Meter {
                            unit: m.unit.clone(),
                            source,
                            price,
                        });
                    }
                    let on_missing = match on_missing.as_deref() {
                        None | Some("reserve") => OnMissing::Reserve,
                        Some("zero") => OnMissing::Zero,
                        Some(other) => {
                            return Err(invalid(
                                f("price.on_missing"),
                                format!("{other:?}: use \"reserve\" or \"zero\""),
                            ))
                        }
                    };
                    Price::Metered(Metered {
                        currency: cur.clone(),
                        meters: parsed,
                        reserve,
                        on_missing,
                        cutoff: *cutoff,
                    })
                }
            };
            if !matches!(price, Price::Free) && issuers.is_empty() {
                return Err(invalid(
                    f("price"),
                    "a priced route needs at least one [[issuers]] entry",
                ));
            }
            if rc.timeout_ms == 0 || rc.timeout_ms > 3_600_000 {
                return Err(invalid(f("timeout_ms"), "must be 1 to 3600000"));
            }
            if let Some(h) = &rc.host {
                if h.is_empty() || h.contains([':', '/', ' ']) {
                    return Err(invalid(f("host"), "a host name without port"));
                }
            }
            if let Some(rl) = rc.rate_limit {
                if !(1..=1000).contains(&rl.per_second) {
                    return Err(invalid(f("rate_limit.per_second"), "must be 1 to 1000"));
                }
                if rl.burst.is_some_and(|b| !(1..=10_000).contains(&b)) {
                    return Err(invalid(f("rate_limit.burst"), "must be 1 to 10000"));
                }
            }
            routes.push(Route {
                config: rc.clone(),
                methods,
                upstream,
                price,
                timeout: Duration::from_millis(rc.timeout_ms),
            });
        }
        let a = &self.agent;
        if !a.api_prefix.starts_with('/') || a.api_prefix.len() < 2 || a.api_prefix.ends_with('/') {
            return Err(invalid(
                "agent.api_prefix",
                "a path like /tollgate/v1 (no trailing slash)",
            ));
        }
        if a.token_ttl_secs == 0 || a.token_ttl_secs > 30 * 86_400 {
            return Err(invalid("agent.token_ttl_secs", "must be 1 to 2592000"));
        }
        if let Some(admin) = self.admin.listen {
            if admin == self.listen {
                return Err(invalid("admin.listen", "must differ from listen"));
            }
        }
        let mut plans: Vec<Plan> = Vec::new();
        for (i, p) in self.plans.iter().enumerate() {
            let f = |field: &str| format!("plans[{i}].{field}");
            if p.id.is_empty() || p.id.len() > 64 || plans.iter().any(|q| q.id == p.id) {
                return Err(invalid(f("id"), "must be unique, 1 to 64 characters"));
            }
            let cur: &Currency = currencies.get(&p.price.currency).ok_or_else(|| {
                invalid(
                    f("price.currency"),
                    format!("{:?} is not in [currencies]", p.price.currency),
                )
            })?;
            let money = |field: &str, s: &str| -> Result<Amount, ConfigError> {
                let a: Amount = s.parse().map_err(|e| invalid(f(field), format!("{e}")))?;
                match cur.to_minor(a) {
                    Ok(m) if m > 0 => Ok(a),
                    Ok(_) => Err(invalid(f(field), "must be greater than zero")),
                    Err(e) => Err(invalid(f(field), e.to_string())),
                }
            };
            let price = money("price.amount", &p.price.amount)?;
            let period = parse_period(&p.period).map_err(|e| invalid(f("period"), e))?;
            if p.groups.is_empty() {
                return Err(invalid(f("groups"), "list at least one route group"));
            }
            for g in &p.groups {
                if plans.iter().any(|q| q.covers(g)) {
                    return Err(invalid(
                        f("groups"),
                        format!("group {g:?} is already sold in another plan"),
                    ));
                }
                let known = routes
                    .iter()
                    .any(|r| r.config.group.as_deref().unwrap_or(&r.config.id) == g);
                if !known {
                    return Err(invalid(f("groups"), format!("no route is in group {g:?}")));
                }
            }
            if p.calls == Some(0) {
                return Err(invalid(
                    f("calls"),
                    "must be at least 1 (omit it for a pass)",
                ));
            }
            let (calls, unit) = match (&p.calls, &p.units) {
                (Some(_), Some(_)) => {
                    return Err(invalid(f("units"), "set calls or units, not both"))
                }
                (_, Some(u)) => {
                    if u.included == 0 || u.unit.is_empty() {
                        return Err(invalid(f("units"), "name a unit and include at least 1"));
                    }
                    (Some(u.included), Some(u.unit.clone()))
                }
                (c, None) => (*c, None),
            };
            let overage = match p.overage_price.as_deref() {
                Some("route") => Overage::RoutePrice,
                Some(_) if unit.is_some() => {
                    return Err(invalid(
                        f("overage_price"),
                        "a units plan's overage is \"route\" (the route's own meters) or omitted (deny)",
                    ))
                }
                Some(s) => Overage::Charge(money("overage_price", s)?),
                None => Overage::Deny,
            };
            plans.push(Plan {
                id: p.id.clone(),
                price: Money {
                    amount: price,
                    currency: cur.clone(),
                },
                period,
                groups: p.groups.clone(),
                calls,
                unit,
                overage,
            });
        }
        let currencies = currencies
            .into_iter()
            .map(|(code, c)| {
                let suggested = topups.get(&code).copied().flatten();
                (code, (c, suggested))
            })
            .collect();
        Ok(Validated {
            routes,
            issuers,
            currencies,
            plans,
        })
    }
}

fn redis_url_ok(url: &str) -> Result<(), ()> {
    let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|p| url.starts_with(p));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// Where an issuer's keys come from, after validation.
#[derive(Debug, Clone)]
pub enum IssuerSource {
    /// Fetched from a JWKS URL.
    Jwks(String),
    /// Given in config.
    Static(Vec<IssuerKey>),
}

/// The parsed pieces of a valid config.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Routes, in match order.
    pub routes: Vec<Route>,
    /// Issuers with their key sources.
    pub issuers: Vec<(String, IssuerSource)>,
    /// Currencies with their suggested top-up.
    pub currencies: BTreeMap<String, (Currency, Option<Amount>)>,
    /// Plans sold.
    pub plans: Vec<Plan>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
merchant = "m"
[currencies.USD]
scale = 6
[[issuers]]
id = "w"
keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid = "k" }]
[[routes]]
id = "paid"
path = "/v1/paid"
upstream = "http://127.0.0.1:9"
price = { amount = "0.01", currency = "USD" }
[[routes]]
id = "free"
path = "/"
upstream = "http://127.0.0.1:9"
price = "free"
"#;

    fn err(toml: &str) -> String {
        match Config::from_str(toml).and_then(|c| c.validate(Path::new("."))) {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_a_good_file() {
        let c = Config::from_str(GOOD).unwrap();
        let v = c.validate(Path::new(".")).unwrap();
        assert_eq!(v.routes.len(), 2);
        assert_eq!(c.listen.port(), 8402);
    }

    #[test]
    fn names_the_bad_field() {
        assert!(
            err(&GOOD.replace("\"0.01\"", "\"0.0000001\"")).starts_with("routes[0].price.amount")
        );
        assert!(err(&GOOD.replace("\"0.01\"", "\"-1\"")).starts_with("routes[0].price.amount"));
        assert!(err(&GOOD.replace("\"0.01\"", "\"0\"")).starts_with("routes[0].price.amount"));
        assert!(
            err(&GOOD.replace("currency = \"USD\"", "currency = \"EUR\""))
                .starts_with("routes[0].price.currency")
        );
        assert!(
            err(&GOOD.replace("http://127.0.0.1:9\"\nprice = {", "ftp://x\"\nprice = {"))
                .starts_with("routes[0].upstream")
        );
        assert!(err(&GOOD.replace("id = \"free\"", "id = \"paid\"")).starts_with("routes[1].id"));
        assert!(err(&GOOD.replace("scale = 6", "scale = 40")).starts_with("currencies.USD"));
        assert!(err(&GOOD.replace("x = \"11q", "x = \"!!")).starts_with("issuers[0].keys[0]"));
        assert!(err(&format!("{GOOD}\n[store]\nkind = \"redis\"\n")).starts_with("store.url"));
        assert!(
            err(&GOOD.replace("merchant = \"m\"", "merchant = \"m\"\nnetwork = \"Bad\""))
                .starts_with("network")
        );
        // Unknown fields are typos, not silently ignored.
        assert!(err(&GOOD.replace("scale = 6", "scale = 6\nscael = 2")).contains("unknown field"));
    }
}

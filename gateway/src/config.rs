//! Configuration: one TOML file, parsed ([`Config::from_str`]), loaded ([`Config::load`]) and
//! validated ([`Config::validate`]) before any socket is bound. Every error names its field.
//! Secrets never live in the file: the gateway secret comes from `TOLLGATE_SECRET`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tollgate_middleware::jwk::Jwk;
use tollgate_middleware::money::{Amount, Currency, Money};
use tollgate_middleware::paywall::valid_caip2;
use tollgate_middleware::plan::{parse_period, Overage, Plan};
use tollgate_middleware::x402::{
    ExactOffer, ExactRoute, Facilitator, HttpFacilitator, SettlementMode,
};
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
    /// x402 `exact` settlement: the facilitator (needed when a route has `[[routes.x402]]`).
    #[serde(default)]
    pub x402: Option<X402Config>,
}

/// `[x402]`: the facilitator that settles x402 `exact` payments on chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X402Config {
    /// Base URL of the facilitator (`POST /verify`, `POST /settle`, `GET /supported`).
    pub facilitator_url: String,
    /// Bound on every facilitator call (milliseconds).
    #[serde(default = "default_facilitator_timeout")]
    pub facilitator_timeout_ms: u64,
    /// Headers sent with every facilitator call, as header name -> the name of the environment
    /// variable holding its value (secrets never live in the file), e.g.
    /// `{ Authorization = "TOLLGATE_FACILITATOR_AUTH" }`.
    #[serde(default)]
    pub facilitator_headers: BTreeMap<String, String>,
    /// `validBefore` must be at least this many seconds ahead (time to settle).
    #[serde(default = "default_valid_before_margin")]
    pub valid_before_margin_secs: u64,
    /// `deferred` settler: pause between polls when nothing is due (milliseconds).
    #[serde(default = "default_settle_interval")]
    pub settle_interval_ms: u64,
    /// `deferred` settler: first retry delay, doubled per attempt (milliseconds).
    #[serde(default = "default_settle_interval")]
    pub settle_retry_base_ms: u64,
    /// `deferred` settler: attempts before a settlement fails for good (payer blocked).
    #[serde(default = "default_settle_attempts")]
    pub settle_max_attempts: u32,
}

fn default_settle_interval() -> u64 {
    1000
}
fn default_settle_attempts() -> u32 {
    10
}

fn default_facilitator_timeout() -> u64 {
    10_000
}
fn default_valid_before_margin() -> u64 {
    tollgate_middleware::x402::DEFAULT_VALID_BEFORE_MARGIN_SECS
}

/// `[[routes.x402]]`: one x402 `exact` offer (EIP-3009 on an EVM chain).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactOfferConfig {
    /// `eip155:<chain id>`, e.g. `eip155:8453` (Base).
    pub network: String,
    /// The token contract address.
    pub asset: String,
    /// The token's EIP-712 domain name (e.g. `USD Coin` on Base mainnet, `USDC` on Base Sepolia).
    pub name: String,
    /// The token's EIP-712 domain version (e.g. `2`).
    pub version: String,
    /// The address paid.
    pub pay_to: String,
    /// Exact amount in the token's atomic units (e.g. `10000` = 0.01 USDC).
    pub amount: String,
    /// Currency code in the ledger and `PAYMENT-RESPONSE`.
    #[serde(default = "default_x402_currency")]
    pub currency: String,
    /// The token's decimals (atomic scale in the ledger).
    #[serde(default = "default_x402_decimals")]
    pub decimals: u32,
    /// `maxTimeoutSeconds` of the offer; also the longest authorization window accepted.
    #[serde(default = "default_x402_timeout")]
    pub max_timeout_secs: u64,
}

fn default_x402_currency() -> String {
    "USDC".into()
}
fn default_x402_decimals() -> u32 {
    6
}
fn default_x402_timeout() -> u64 {
    60
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
    /// x402 `exact` offers (`[[routes.x402]]`), beside the native receipt offer.
    #[serde(default)]
    pub x402: Vec<ExactOfferConfig>,
    /// When x402 payments settle: `before` (default: settle, then serve), `after` (serve,
    /// settle a 2xx, release the response once settled) or `deferred` (serve, queue a 2xx for
    /// the background settler).
    #[serde(default)]
    pub x402_settlement: Option<String>,
    /// When a fixed price is captured: `response` (default: held at admission, captured once
    /// the upstream answered below 400, else released -- two store round trips) or
    /// `admission` (captured at admission, voided if the upstream answers 400+ or not at all
    /// -- one round trip for a served request).
    #[serde(default)]
    pub capture: Option<String>,
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
    /// x402 offers, settlement mode and facilitator.
    pub x402: Option<ExactRoute>,
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
        let facilitator = self.x402.as_ref().map(validate_x402).transpose()?;
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
            if let Err(e) = crate::path::check_prefix(&rc.path) {
                return Err(invalid(f("path"), e));
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
            let x402 = validate_route_x402(i, rc, &price, facilitator.as_ref())?;
            validate_capture(i, rc, &price)?;
            if !matches!(price, Price::Free) && issuers.is_empty() && x402.is_none() {
                return Err(invalid(
                    f("price"),
                    "a priced route needs at least one [[issuers]] entry (or [[routes.x402]] offers)",
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
                x402,
            });
        }
        let a = &self.agent;
        if !a.api_prefix.starts_with('/')
            || a.api_prefix.len() < 2
            || a.api_prefix.ends_with('/')
            || crate::path::check_prefix(&a.api_prefix).is_err()
        {
            return Err(invalid(
                "agent.api_prefix",
                "a path like /tollgate/v1 in canonical form (no trailing slash)",
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
            x402_facilitator: facilitator.map(|(f, _)| f),
        })
    }
}

/// `[x402]`: the facilitator client (headers read from the environment) and the margin.
fn validate_x402(x: &X402Config) -> Result<(Arc<HttpFacilitator>, u64), ConfigError> {
    if x.facilitator_timeout_ms == 0 || x.facilitator_timeout_ms > 120_000 {
        return Err(invalid(
            "x402.facilitator_timeout_ms",
            "must be 1 to 120000",
        ));
    }
    if x.valid_before_margin_secs > 600 {
        return Err(invalid(
            "x402.valid_before_margin_secs",
            "must be at most 600",
        ));
    }
    if !(10..=60_000).contains(&x.settle_interval_ms) {
        return Err(invalid("x402.settle_interval_ms", "must be 10 to 60000"));
    }
    if !(10..=600_000).contains(&x.settle_retry_base_ms) {
        return Err(invalid("x402.settle_retry_base_ms", "must be 10 to 600000"));
    }
    if !(1..=100).contains(&x.settle_max_attempts) {
        return Err(invalid("x402.settle_max_attempts", "must be 1 to 100"));
    }
    let mut headers = Vec::new();
    for (name, var) in &x.facilitator_headers {
        let value = std::env::var(var).map_err(|_| {
            invalid(
                format!("x402.facilitator_headers.{name}"),
                format!("environment variable {var} is not set"),
            )
        })?;
        headers.push((name.clone(), value));
    }
    let f = HttpFacilitator::try_new(
        &x.facilitator_url,
        Duration::from_millis(x.facilitator_timeout_ms),
        &headers,
    )
    .map_err(|m| {
        let field = if m.starts_with("must start") {
            "x402.facilitator_url".to_owned()
        } else {
            "x402.facilitator_headers".to_owned()
        };
        invalid(field, m)
    })?;
    Ok((Arc::new(f), x.valid_before_margin_secs))
}

/// A route's `capture`: `response` or `admission`, the latter only with a fixed price.
fn validate_capture(i: usize, rc: &RouteConfig, price: &Price) -> Result<(), ConfigError> {
    match rc.capture.as_deref() {
        None | Some("response") => Ok(()),
        Some("admission") if matches!(price, Price::Fixed(_)) => Ok(()),
        Some("admission") => Err(invalid(
            format!("routes[{i}].capture"),
            "\"admission\" needs a fixed price (a metered charge is known only after the response)",
        )),
        Some(other) => Err(invalid(
            format!("routes[{i}].capture"),
            format!("must be \"response\" or \"admission\", not {other:?}"),
        )),
    }
}

/// A route's `[[routes.x402]]` offers and `x402_settlement`.
fn validate_route_x402(
    i: usize,
    rc: &RouteConfig,
    price: &Price,
    facilitator: Option<&(Arc<HttpFacilitator>, u64)>,
) -> Result<Option<ExactRoute>, ConfigError> {
    let f = |k: &str| format!("routes[{i}].{k}");
    if rc.x402.is_empty() {
        if rc.x402_settlement.is_some() {
            return Err(invalid(
                f("x402_settlement"),
                "set only on a route with [[routes.x402]] offers",
            ));
        }
        return Ok(None);
    }
    if !matches!(price, Price::Fixed(_)) {
        return Err(invalid(
            f("x402"),
            "x402 exact offers need a fixed price (an exact amount cannot pay metered usage)",
        ));
    }
    let Some((facilitator, margin)) = facilitator else {
        return Err(invalid(
            "x402.facilitator_url",
            format!("required: routes[{i}] has [[routes.x402]] offers"),
        ));
    };
    let mode: SettlementMode = rc
        .x402_settlement
        .as_deref()
        .unwrap_or("before")
        .parse()
        .map_err(|m: String| invalid(f("x402_settlement"), m))?;
    let mut offers: Vec<ExactOffer> = Vec::new();
    for (k, o) in rc.x402.iter().enumerate() {
        let field = |x: &str| format!("routes[{i}].x402[{k}].{x}");
        let currency = Currency::try_new(o.currency.clone(), o.decimals)
            .map_err(|m| invalid(field("currency"), m))?;
        let offer = ExactOffer::try_new(
            &o.network,
            &o.asset,
            &o.name,
            &o.version,
            &o.pay_to,
            &o.amount,
            o.max_timeout_secs,
            currency,
        )
        .map_err(|(x, m)| invalid(field(x), m))?;
        if offers
            .iter()
            .any(|p| p.network == offer.network && p.asset == offer.asset)
        {
            return Err(invalid(
                field("asset"),
                "duplicate offer: one offer per network and asset",
            ));
        }
        offers.push(offer);
    }
    let facilitator: Arc<dyn Facilitator> = facilitator.clone();
    Ok(Some(ExactRoute {
        offers,
        mode,
        facilitator,
        valid_before_margin_secs: *margin,
    }))
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
    /// The x402 facilitator (when `[x402]` is set).
    pub x402_facilitator: Option<Arc<HttpFacilitator>>,
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

    /// GOOD with an x402 offer on the paid route (`extra` goes into the offer table).
    fn with_x402(top: &str, route: &str, extra: &str) -> String {
        let offer = format!(
            "x402_settlement = \"before\"\n{route}\n[[routes.x402]]\nnetwork = \"eip155:84532\"\nasset = \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"\namount = \"10000\"\n{extra}\n"
        );
        GOOD.replace("merchant = \"m\"", &format!("merchant = \"m\"\n{top}"))
            .replace(
                "price = { amount = \"0.01\", currency = \"USD\" }\n",
                &format!("price = {{ amount = \"0.01\", currency = \"USD\" }}\n{offer}"),
            )
    }

    const FACILITATOR: &str = "[x402]\nfacilitator_url = \"http://127.0.0.1:9\"";

    #[test]
    fn x402_offers() {
        let toml = with_x402(FACILITATOR, "", "");
        let v = Config::from_str(&toml)
            .unwrap()
            .validate(Path::new("."))
            .unwrap();
        let x = v.routes[0].x402.as_ref().unwrap();
        assert_eq!(x.offers.len(), 1);
        assert_eq!(x.offers[0].amount, 10000);
        assert_eq!(x.offers[0].chain_id, 84532);
        assert_eq!(x.offers[0].currency.code(), "USDC");
        assert_eq!(x.mode, SettlementMode::Before);
        assert!(v.x402_facilitator.is_some());
        assert!(v.routes[1].x402.is_none());
        // Each mistake names its field.
        assert!(err(&with_x402("", "", "")).starts_with("x402.facilitator_url"));
        assert!(err(&with_x402(FACILITATOR, "", "decimals = 40"))
            .starts_with("routes[0].x402[0].currency"));
        assert!(
            err(&with_x402(FACILITATOR, "", "").replace("\"10000\"", "\"1.5\""))
                .starts_with("routes[0].x402[0].amount")
        );
        assert!(
            err(&with_x402(FACILITATOR, "", "").replace("eip155:84532", "eip155:"))
                .starts_with("routes[0].x402[0].network")
        );
        assert!(
            err(&with_x402(FACILITATOR, "", "").replace("0x209693Bc", "0x209693bC"))
                .starts_with("routes[0].x402[0].pay_to")
        );
        assert!(err(&with_x402(FACILITATOR, "", "").replace(
            "x402_settlement = \"before\"",
            "x402_settlement = \"later\""
        ))
        .starts_with("routes[0].x402_settlement"));
        assert!(err(&with_x402(FACILITATOR, "", "colour = 1")).contains("unknown field"));
        assert!(
            err(&with_x402("[x402]\nfacilitator_url = \"ftp://x\"", "", ""))
                .starts_with("x402.facilitator_url")
        );
        assert!(err(&with_x402(
            "[x402]\nfacilitator_url = \"http://x\"\nfacilitator_headers = { Authorization = \"TOLLGATE_TEST_UNSET_VAR_0\" }",
            "",
            ""
        ))
        .starts_with("x402.facilitator_headers.Authorization"));
        // Only fixed prices take exact payments.
        let metered = with_x402(FACILITATOR, "", "").replace(
            "price = { amount = \"0.01\", currency = \"USD\" }",
            "price = { currency = \"USD\", reserve = \"0.01\", meters = [{ unit = \"b\", usage = \"response_bytes\", price = \"0.000001\" }] }",
        );
        assert!(err(&metered).starts_with("routes[0].x402"));
        // x402_settlement alone is a mistake.
        assert!(err(&GOOD.replace(
            "price = { amount = \"0.01\", currency = \"USD\" }\n",
            "price = { amount = \"0.01\", currency = \"USD\" }\nx402_settlement = \"after\"\n"
        ))
        .starts_with("routes[0].x402_settlement"));
    }

    #[test]
    fn capture_at_admission_needs_a_fixed_price() {
        let fixed = "price = { amount = \"0.01\", currency = \"USD\" }\n";
        let with = |line: &str| GOOD.replace(fixed, &format!("{fixed}{line}\n"));
        assert_eq!(err(&with("capture = \"admission\"")), "ok");
        assert_eq!(err(&with("capture = \"response\"")), "ok");
        assert!(err(&with("capture = \"later\"")).starts_with("routes[0].capture"));
        let metered = with("capture = \"admission\"").replace(
            "price = { amount = \"0.01\", currency = \"USD\" }",
            "price = { currency = \"USD\", reserve = \"0.01\", meters = [{ unit = \"b\", usage = \"response_bytes\", price = \"0.000001\" }] }",
        );
        assert!(err(&metered).starts_with("routes[0].capture"));
    }
}

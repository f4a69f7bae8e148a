//! Configuration: one TOML file, parsed ([`Config::from_str`]), loaded ([`Config::load`]) and
//! validated ([`Config::validate`]) before any socket is bound. Every error names its field.
//! Secrets never live in the file: the gateway secret comes from `TOLLGATE_SECRET`.
//!
//! # Layout
//! One file per part of the file: `issuers`, `store`, `routes` (with `price`), `x402`, `plans`;
//! this module holds the top-level tables and runs the parts' validations in order.

mod amount;
mod discovery;
mod issuers;
mod ledger;
mod mcp;
mod plans;
mod price;
mod risk;
mod routes;
mod store;
mod tls;
mod webhooks;
mod x402;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tollgate_middleware::money::{Amount, Currency};
use tollgate_middleware::paywall::valid_caip2;
use tollgate_middleware::plan::Plan;
use tollgate_middleware::x402::HttpFacilitator;

pub use discovery::DiscoveryConfig;
pub use issuers::{IssuerConfig, IssuerSource};
pub use ledger::{LedgerConfig, LEDGER_PASSWORD_ENV};
pub use mcp::{McpConfig, McpRoute, McpToolConfig};
pub use plans::{MoneyConfig, PlanConfig, PlanUnitsConfig};
pub use price::{MeterConfig, PriceConfig};
pub use risk::RiskConfig;
pub use routes::{Capture, ExactOfferConfig, RateLimitConfig, Route, RouteConfig};
pub use store::{StoreConfig, StoreKind, SyncMode};
pub use tls::{TlsConfig, UpstreamTlsConfig};
pub use webhooks::WebhookConfig;
pub use x402::X402Config;

use issuers::validate_issuers;
use plans::validate_plans;
use routes::validate_routes;
use store::validate_store;
use tls::{validate_listener_tls, validate_upstream_tls};
use x402::validate_x402;

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
    /// Not valid TOML.
    #[error("invalid TOML: {0}")]
    Parse(String),
    /// A table has a field Tollgate does not know (a typo is never ignored), lacks one it needs,
    /// or a field has the wrong type.
    #[error("{field}: {message} (line {line}, column {column})")]
    Field {
        /// Dotted path of the field, e.g. `routes[1].price.cutof`.
        field: String,
        /// What is wrong.
        message: String,
        /// 1-based line of the field in the file.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A field has a value Tollgate cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `routes[1].price.amount`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// `field` must be `lo` to `hi` (both included).
fn within<T: PartialOrd + std::fmt::Display>(
    field: impl Into<String>,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("must be {lo} to {hi}")));
    }
    Ok(())
}

fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

/// The configured currency `code` names, or an error for `field` that lists what is
/// configured (and the code in its configured spelling, when only the case differs).
fn configured<'a>(
    field: String,
    code: &str,
    currencies: &'a BTreeMap<String, Currency>,
) -> Result<&'a Currency, ConfigError> {
    if let Some(c) = currencies.get(code) {
        return Ok(c);
    }
    let message = if currencies.is_empty() {
        format!(
            "{code:?} is not in [currencies], and no currency is configured: add \
             [currencies.{}] with its scale (e.g. scale = 6)",
            code.to_ascii_uppercase()
        )
    } else {
        let known: Vec<&str> = currencies.keys().map(String::as_str).collect();
        let hint = known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(code))
            .map(|k| format!("; did you mean {k:?}? codes are case-sensitive"))
            .unwrap_or_default();
        format!(
            "{code:?} is not in [currencies] (configured: {}){hint}",
            known.join(", ")
        )
    };
    Err(invalid(field, message))
}

/// A currency code as the file must spell it: upper-case letters, digits, `.`, `_` or `-`,
/// starting with a letter (`USD`, `USDC`, `EUR`). Codes are compared exactly, so `Usd` would be
/// a different currency from a receipt's `USD`: refused, with the spelling to use.
fn check_currency_code(code: &str) -> Result<(), ConfigError> {
    let field = format!("currencies.{code}");
    let allowed =
        |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
    let starts = code.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    if starts && code.len() <= 32 && code.bytes().all(allowed) {
        return Ok(());
    }
    let upper = code.to_ascii_uppercase();
    if starts && upper.len() <= 32 && upper.bytes().all(allowed) {
        return Err(invalid(
            field,
            format!("currency codes are upper case: write [currencies.{upper}] (and currency = {upper:?} in prices)"),
        ));
    }
    Err(invalid(
        field,
        "a currency code is 1 to 32 upper-case letters, digits, '.', '_' or '-', starting with a \
         letter (e.g. USD, EUR, USDC)",
    ))
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve the public listener over TLS (off: plain HTTP, for a TLS terminator in front).
    pub tls: Option<TlsConfig>,
    /// The trust store of `https://` upstreams.
    #[serde(default)]
    pub upstream_tls: UpstreamTlsConfig,
    /// This merchant's id: the `aud` receipts must carry, and `payTo` in offers.
    pub merchant: String,
    /// x402 network id of receipt offers.
    #[serde(default = "default_network")]
    pub network: String,
    /// Public base URL shown in 402 `resource.url` (default: from the Host header).
    pub public_url: Option<String>,
    /// The `realm` of `WWW-Authenticate: Payment` challenges (default: the host of
    /// `public_url`, else the host each request was sent to).
    pub realm: Option<String>,
    /// What `/openapi.json` and `/llms.txt` say (`[discovery]`).
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Seconds to let in-flight requests finish on shutdown.
    #[serde(default = "n64::<30>")]
    pub shutdown_grace_secs: u64,
    /// Time allowed for a request head to arrive (slow-header defence).
    #[serde(default = "n64::<10>")]
    pub header_timeout_secs: u64,
    /// Largest request head in bytes (larger: 431).
    #[serde(default = "nsize::<{ 64 * 1024 }>")]
    pub max_header_bytes: usize,
    /// Receipt limits.
    #[serde(default)]
    pub receipts: ReceiptsConfig,
    /// Currencies by code (none needed when every route is free).
    #[serde(default)]
    pub currencies: BTreeMap<String, CurrencyConfig>,
    /// Trusted receipt issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Where payment state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// The PostgreSQL ledger of record (with a Redis store).
    pub ledger: Option<LedgerConfig>,
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
    pub x402: Option<X402Config>,
    /// `[[webhooks]]`: signed event deliveries.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// The percentages of a mandate's window budget that send `mandate.budget_crossed`.
    #[serde(default = "default_mandate_percents")]
    pub mandate_budget_percents: Vec<u32>,
    /// `[[risk]]`: risk rules.
    #[serde(default)]
    pub risk: Vec<RiskConfig>,
}

/// `[agent]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Path prefix of the agent endpoints.
    pub api_prefix: String,
    /// Lifetime of access tokens (seconds).
    pub token_ttl_secs: u64,
    /// Access tokens bound to the agent's key (RFC 9449): `off`, `optional`, `required`.
    pub dpop: tollgate_middleware::dpop::DpopMode,
    /// The oldest DPoP proof accepted (seconds since its `iat`).
    pub dpop_max_age_secs: u64,
    /// How far a DPoP proof's `iat` may be in the future (seconds).
    pub dpop_skew_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            api_prefix: tollgate_middleware::paywall::DEFAULT_AGENT_API.into(),
            token_ttl_secs: 86_400,
            dpop: Default::default(),
            dpop_max_age_secs: 60,
            dpop_skew_secs: 5,
        }
    }
}

impl AgentConfig {
    /// The DPoP policy these settings make.
    pub fn dpop_policy(&self) -> tollgate_middleware::dpop::DpopPolicy {
        tollgate_middleware::dpop::DpopPolicy {
            mode: self.dpop,
            max_age: std::time::Duration::from_secs(self.dpop_max_age_secs),
            skew: std::time::Duration::from_secs(self.dpop_skew_secs),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; the admin API is off when unset. Its bearer token comes
    /// from `TOLLGATE_ADMIN_TOKEN`.
    pub listen: Option<SocketAddr>,
    /// Serve the admin listener over TLS too, with the `[tls]` certificate.
    #[serde(default)]
    pub tls: bool,
}

/// Numeric defaults for `#[serde(default = "...")]`: `"n64::<250>"` is 250.
pub(super) const fn n64<const N: u64>() -> u64 {
    N
}
/// As [`n64`], for `usize` fields.
pub(super) const fn nsize<const N: usize>() -> usize {
    N
}
/// As [`n64`], for `u32` fields.
pub(super) const fn n32<const N: u32>() -> u32 {
    N
}

fn default_mandate_percents() -> Vec<u32> {
    vec![80, 100]
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8402))
}
fn default_network() -> String {
    tollgate_middleware::paywall::DEFAULT_NETWORK.into()
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
    #[serde(default, deserialize_with = "amount::opt_decimal")]
    pub topup_suggested: Option<String>,
    /// Default `balance.low` webhook threshold (decimal string); a payer's own threshold
    /// (admin API) wins.
    #[serde(default, deserialize_with = "amount::opt_decimal")]
    pub balance_low: Option<String>,
}

impl Config {
    /// Parse TOML (no validation).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(s)).map_err(|e| field_error(s, e))
    }

    /// Read, parse and validate a file; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Validated, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_str(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        // The sqlite file is the config's neighbour unless its path is absolute.
        if cfg.store.path != ":memory:" && Path::new(&cfg.store.path).is_relative() {
            cfg.store.path = base.join(&cfg.store.path).to_string_lossy().into_owned();
        }
        cfg.validate(base)
    }

    /// Check every field; returns the parsed pieces the gateway needs, with the checked file.
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
        if let Some(r) = &self.realm {
            discovery::validate_realm(r)?;
        }
        self.discovery.validate()?;
        within("header_timeout_secs", self.header_timeout_secs, 1, 300)?;
        within("max_header_bytes", self.max_header_bytes, 8192, 1024 * 1024)?;
        let r = &self.receipts;
        within(
            "receipts.max_lifetime_secs",
            r.max_lifetime_secs,
            1,
            30 * 86400,
        )?;
        if r.clock_skew_secs > 600 {
            return Err(invalid("receipts.clock_skew_secs", "must be at most 600"));
        }
        within("receipts.max_bytes", r.max_bytes, 256, 65536)?;
        within(
            "receipts.challenge_ttl_secs",
            r.challenge_ttl_secs,
            1,
            86400,
        )?;
        let mut currencies = BTreeMap::new();
        let mut topups = BTreeMap::new();
        for (code, c) in &self.currencies {
            check_currency_code(code)?;
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
        let issuers = validate_issuers(&self.issuers, base_dir)?;
        validate_store(&self.store)?;
        ledger::validate_ledger(self.ledger.as_ref(), &self.store)?;
        let facilitator = self.x402.as_ref().map(validate_x402).transpose()?;
        let listener_tls = validate_listener_tls(self.tls.as_ref(), base_dir)?;
        let upstream_trust = validate_upstream_tls(&self.upstream_tls, base_dir)?;
        let routes = validate_routes(
            &self.routes,
            &currencies,
            &issuers,
            facilitator.as_ref(),
            (&upstream_trust, base_dir),
        )?;
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
        within("agent.token_ttl_secs", a.token_ttl_secs, 1, 30 * 86_400)?;
        within("agent.dpop_max_age_secs", a.dpop_max_age_secs, 1, 600)?;
        within("agent.dpop_skew_secs", a.dpop_skew_secs, 0, 60)?;
        if let Some(admin) = self.admin.listen {
            if admin == self.listen {
                return Err(invalid("admin.listen", "must differ from listen"));
            }
        }
        if self.admin.tls && self.tls.is_none() {
            return Err(invalid(
                "admin.tls",
                "needs a [tls] table (cert_file, key_file): the admin listener uses its certificate",
            ));
        }
        let plans = validate_plans(&self.plans, &currencies, &routes)?;
        let (webhooks, thresholds) =
            webhooks::validate_webhooks(&self.webhooks, &self.currencies, &currencies)?;
        for (i, p) in self.mandate_budget_percents.iter().enumerate() {
            within(format!("mandate_budget_percents[{i}]"), *p, 1, 100)?;
        }
        let risk = risk::validate_risk(&self.risk, &currencies, &routes)?;
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
            listener_tls,
            webhooks,
            thresholds,
            risk,
            config: self.clone(),
        })
    }
}

/// A deserialization error, named by the dotted path of its field; syntax errors (no field)
/// keep toml's own report.
fn field_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = e.path().to_string();
    let e = e.into_inner();
    // A required field that is absent (serde's own message, not one of ours with a hint): name
    // it -- toml reports it on its table, often without a position -- with what it is.
    if let Some(key) = e
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .filter(|(_, after)| after.trim().is_empty())
        .map(|(key, _)| key)
    {
        let field = match path.as_str() {
            "." | "" => key.to_owned(),
            p => format!("{p}.{key}"),
        };
        let message = match field.as_str() {
            "merchant" => "required: this merchant's id, e.g. merchant = \"my-api\" (the `aud` of every receipt)",
            "routes" => "required: at least one [[routes]] table (id, path, upstream, price)",
            _ => "required, and missing",
        };
        return invalid(field, message);
    }
    let Some(span) = e.span() else {
        return ConfigError::Parse(e.to_string());
    };
    let message = e.message().trim_end().to_owned();
    // The path of an unknown key ends with the key; should a deserializer not report the key
    // string, the path stops at its table: name the key from the message then.
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    let last = path.rsplit('.').next().unwrap_or_default();
    let field = match (path.as_str(), unknown) {
        (".", None) => return ConfigError::Parse(e.to_string()),
        (".", Some(key)) => key.to_owned(),
        (p, Some(key)) if last != key => format!("{p}.{key}"),
        (p, _) => p.to_owned(),
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Field {
        field,
        message,
        line,
        column,
    }
}

/// A valid config: what [`Config::validate`] parsed into typed values, and the checked file
/// for the plain settings (listen address, timeouts, `[store]`, `[agent]`...). Only
/// validation makes one, so whoever holds a `Validated` holds a config that passed every
/// check; the gateway is built from it alone.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The file, every field of it checked. Read the typed fields below where there is one
    /// (routes, issuers, currencies, plans...), not their raw tables here.
    pub config: Config,
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
    /// The TLS listener's certificate (when `[tls]` is set).
    pub listener_tls: Option<crate::tls::ListenerTls>,
    /// The webhook endpoints, secrets read.
    pub webhooks: Vec<tollgate_middleware::webhooks::Endpoint>,
    /// `balance.low` thresholds per currency (atomic units).
    pub thresholds: BTreeMap<String, (Currency, u64)>,
    /// Risk rules.
    pub risk: Vec<tollgate_middleware::risk::RiskRule>,
}

#[cfg(test)]
mod tests;

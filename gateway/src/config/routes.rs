//! `[[routes]]`: what is sold where, and the offers of each route.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tollgate_middleware::money::Currency;
use tollgate_middleware::x402::{
    ExactOffer, ExactRoute, Facilitator, HttpFacilitator, SettlementMode, UptoOffer,
};
use tollgate_middleware::Price;

use super::price::{validate_price, PriceConfig};
use super::{invalid, within, ConfigError, IssuerSource};
use crate::tls::UpstreamTrust;

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
    pub host: Option<String>,
    /// Upstream base URL (`http://host:port[/base]` or `https://host[:port][/base]`).
    pub upstream: String,
    /// CA certificates (PEM) this route's `https://` upstream must chain to, instead of
    /// `[upstream_tls]` (an internal service with a private CA).
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Price.
    pub price: PriceConfig,
    /// Time for the upstream to start answering (milliseconds).
    #[serde(default = "super::n64::<30_000>")]
    pub timeout_ms: u64,
    /// Largest request body (bytes).
    #[serde(default = "super::n64::<{ 10 * 1024 * 1024 }>")]
    pub max_body_bytes: u64,
    /// Shown to agents in the 402 `resource.description`.
    pub description: Option<String>,
    /// Shown to agents in the 402 `resource.mimeType`.
    #[serde(default = "default_mime")]
    pub mime_type: String,
    /// Per payer on this route: `{ per_second = 10, burst = 20 }` (429 beyond).
    pub rate_limit: Option<RateLimitConfig>,
    /// Route group (mandates may limit the groups they pay for). Default: the route id.
    pub group: Option<String>,
    /// x402 `exact` offers (`[[routes.x402]]`), beside the native receipt offer.
    #[serde(default)]
    pub x402: Vec<ExactOfferConfig>,
    /// When x402 payments settle: `before` (default: settle, then serve), `after` (serve,
    /// settle a 2xx, release the response once settled) or `deferred` (serve, queue a 2xx for
    /// the background settler).
    pub x402_settlement: Option<String>,
    /// When a fixed price is captured: `response` (default: held at admission, captured once
    /// the upstream answered below 400, else released -- two store round trips) or
    /// `admission` (captured at admission, voided if the upstream answers 400+ or not at all
    /// -- one round trip for a served request).
    pub capture: Option<String>,
    /// The route proxies an MCP server and prices its tools (`[routes.mcp]`, see `mcp.rs`).
    #[serde(default)]
    pub mcp: Option<super::McpConfig>,
}

/// `rate_limit = { per_second, burst }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second (1 to 1000).
    pub per_second: u32,
    /// Requests allowed at once (1 to 10000; default = per_second).
    pub burst: Option<u32>,
}

fn default_mime() -> String {
    "application/json".into()
}

impl Route {
    /// Its group: the configured one, else its id.
    pub fn group_name(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.id)
    }
}

/// A validated route, ready to serve.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its id (metrics label, ledger `route`).
    pub id: String,
    /// The path prefix it serves (canonical form).
    pub path: String,
    /// The `Host` it answers for (`None`: any).
    pub host: Option<String>,
    /// Its group (plans, mandates, risk rules); `None`: the route's id is its group.
    pub group: Option<String>,
    /// Largest request body accepted (bytes).
    pub max_body_bytes: u64,
    /// Catalog and 402 description.
    pub description: Option<String>,
    /// MIME type of the paid response.
    pub mime_type: String,
    /// Per-payer rate limit (burst resolved).
    pub rate_limit: Option<tollgate_middleware::store::RateLimit>,
    /// Upper-case methods (empty: any).
    pub methods: Vec<http::Method>,
    /// Parsed upstream.
    pub upstream: http::Uri,
    /// The upstream's authority as the `Host` header sent to it (made once, not per request).
    pub upstream_host: Option<http::HeaderValue>,
    /// Whom an `https://` upstream must prove to be (`[upstream_tls]` or the route's own CA).
    pub trust: Arc<UpstreamTrust>,
    /// Parsed price.
    pub price: Price,
    /// Timeout.
    pub timeout: Duration,
    /// x402 offers, settlement mode and facilitator.
    pub x402: Option<ExactRoute>,
    /// When a fixed price is captured.
    pub capture: Capture,
    /// The tools sold, when the route proxies an MCP server.
    pub mcp: Option<super::McpRoute>,
}

/// `[[routes.x402]]`: one x402 offer on an EVM chain: `exact` (EIP-3009) on a fixed-price
/// route, `upto` (Permit2, settled at the measured cost) on a metered one.
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
    /// `exact` (fixed-price routes): the amount in the token's atomic units (e.g. `10000` =
    /// 0.01 USDC).
    #[serde(default, deserialize_with = "super::amount::atomic")]
    pub amount: String,
    /// `upto` (metered routes): the maximum a payer signs for, in atomic units (default: the
    /// route's reserve); the measured cost, at most this, is settled.
    #[serde(default, deserialize_with = "super::amount::opt_atomic")]
    pub max: Option<String>,
    /// `upto` (metered routes): the facilitator's address, the only one allowed to settle
    /// (`extra.facilitatorAddress`, signed into the permit's witness).
    #[serde(default)]
    pub facilitator_address: Option<String>,
    /// Currency code in the ledger and `PAYMENT-RESPONSE`.
    #[serde(default = "default_x402_currency")]
    pub currency: String,
    /// The token's decimals (atomic scale in the ledger).
    #[serde(default = "default_x402_decimals")]
    pub decimals: u32,
    /// `maxTimeoutSeconds` of the offer; also the longest authorization window accepted.
    #[serde(default = "super::n64::<60>")]
    pub max_timeout_secs: u64,
}

fn default_x402_currency() -> String {
    "USDC".into()
}
fn default_x402_decimals() -> u32 {
    6
}

/// Every `[[routes]]` entry, in match order.
pub(super) fn validate_routes(
    all: &[RouteConfig],
    currencies: &BTreeMap<String, Currency>,
    issuers: &[(String, IssuerSource)],
    facilitator: Option<&(Arc<HttpFacilitator>, u64)>,
    (default_trust, base_dir): (&Arc<UpstreamTrust>, &std::path::Path),
) -> Result<Vec<Route>, ConfigError> {
    if all.is_empty() {
        return Err(invalid("routes", "at least one route is needed"));
    }
    let mut routes = Vec::new();
    for (i, rc) in all.iter().enumerate() {
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
        if all[..i].iter().any(|o| o.id == rc.id) {
            return Err(invalid(f("id"), format!("duplicate route id {:?}", rc.id)));
        }
        if let Err(e) = crate::path::check_prefix(&rc.path) {
            return Err(invalid(f("path"), e));
        }
        let mut methods = Vec::new();
        for (m, name) in rc.methods.iter().enumerate() {
            let method = http::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid(format!("routes[{i}].methods[{m}]"), "not an HTTP method"))?;
            methods.push(method);
        }
        let upstream = validate_upstream(i, &rc.upstream)?;
        let trust = match &rc.upstream_ca_file {
            None => default_trust.clone(),
            Some(_) if upstream.scheme() != Some(&http::uri::Scheme::HTTPS) => {
                return Err(invalid(
                    f("upstream_ca_file"),
                    "set only on a route with an https:// upstream",
                ))
            }
            Some(p) => super::tls::validate_route_ca(f("upstream_ca_file"), p, base_dir)?,
        };
        let price = validate_price(i, &rc.price, currencies)?;
        let x402 = validate_route_x402(i, rc, &price, facilitator)?;
        let capture = validate_capture(i, rc, &price)?;
        let mcp = super::mcp::validate_mcp(i, rc, currencies, !issuers.is_empty())?;
        if !matches!(price, Price::Free) && issuers.is_empty() && x402.is_none() {
            return Err(invalid(
                f("price"),
                "a priced route needs at least one [[issuers]] entry (or [[routes.x402]] offers)",
            ));
        }
        within(f("timeout_ms"), rc.timeout_ms, 1, 3_600_000)?;
        if let Some(h) = &rc.host {
            if h.is_empty() || h.contains([':', '/', ' ']) {
                return Err(invalid(f("host"), "a host name without port"));
            }
        }
        if let Some(rl) = rc.rate_limit {
            within(f("rate_limit.per_second"), rl.per_second, 1, 1000)?;
            if rl.burst.is_some_and(|b| !(1..=10_000).contains(&b)) {
                return Err(invalid(f("rate_limit.burst"), "must be 1 to 10000"));
            }
        }
        routes.push(Route {
            id: rc.id.clone(),
            path: rc.path.clone(),
            host: rc.host.clone(),
            group: rc.group.clone(),
            max_body_bytes: rc.max_body_bytes,
            description: rc.description.clone(),
            mime_type: rc.mime_type.clone(),
            rate_limit: rc
                .rate_limit
                .map(|rl| tollgate_middleware::store::RateLimit {
                    per_second: rl.per_second,
                    burst: rl.burst.unwrap_or(rl.per_second),
                }),
            methods,
            upstream_host: upstream
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
            upstream,
            trust,
            price,
            timeout: Duration::from_millis(rc.timeout_ms),
            x402,
            capture,
            mcp,
        });
    }
    Ok(routes)
}

/// A route's `upstream`: `http://` or `https://`, a host (for `https://`, one a certificate
/// can name: a DNS name or an IP address), no query.
fn validate_upstream(i: usize, url: &str) -> Result<http::Uri, ConfigError> {
    let field = format!("routes[{i}].upstream");
    let shape = "must be http://host:port[/base] or https://host[:port][/base]";
    let upstream: http::Uri = url
        .parse()
        .map_err(|_| invalid(field.clone(), format!("not a URL: {shape}")))?;
    let https = match upstream.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(invalid(field, shape)),
    };
    let Some(host) = upstream.host().filter(|_| upstream.query().is_none()) else {
        return Err(invalid(field, shape));
    };
    if https {
        let name = host.trim_start_matches('[').trim_end_matches(']');
        if rustls::pki_types::ServerName::try_from(name).is_err() {
            return Err(invalid(
                field,
                format!("{host:?} is not a name a TLS certificate can carry (a DNS name or an IP address)"),
            ));
        }
    }
    Ok(upstream)
}

/// When a route's fixed price is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capture {
    /// Held at admission, captured once the upstream answered below 400 (the default).
    #[default]
    Response,
    /// Captured at admission, voided if the upstream answers 400+ or not at all.
    Admission,
}

/// A route's `capture`: `response` or `admission`, the latter only with a fixed price.
fn validate_capture(i: usize, rc: &RouteConfig, price: &Price) -> Result<Capture, ConfigError> {
    match rc.capture.as_deref() {
        None | Some("response") => Ok(Capture::Response),
        Some("admission") if matches!(price, Price::Fixed(_)) => Ok(Capture::Admission),
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
    if matches!(price, Price::Free) {
        return Err(invalid(f("x402"), "x402 offers need a price"));
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
        .map_err(|m| invalid(f("x402_settlement"), m))?;
    let mut offers: Vec<ExactOffer> = Vec::new();
    let mut upto: Vec<UptoOffer> = Vec::new();
    if let Price::Metered(m) = price {
        if mode == SettlementMode::After {
            return Err(invalid(
                f("x402_settlement"),
                "x402 upto (a metered route) settles after metering in \"before\" (verified first) or \"deferred\" mode; \"after\" is for fixed prices",
            ));
        }
        for (k, o) in rc.x402.iter().enumerate() {
            let offer = upto_offer(i, k, o, m)?;
            if upto
                .iter()
                .any(|p| p.network == offer.network && p.asset == offer.asset)
            {
                return Err(invalid(
                    format!("routes[{i}].x402[{k}].asset"),
                    "duplicate offer: one offer per network and asset",
                ));
            }
            upto.push(offer);
        }
    }
    for (k, o) in rc.x402.iter().enumerate().filter(|_| upto.is_empty()) {
        let field = |x: &str| format!("routes[{i}].x402[{k}].{x}");
        if o.max.is_some() || o.facilitator_address.is_some() {
            return Err(invalid(
                field(if o.max.is_some() {
                    "max"
                } else {
                    "facilitator_address"
                }),
                "set only on a metered route (x402 upto); a fixed price is paid with exact amount",
            ));
        }
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
        upto,
    }))
}

/// One `upto` offer of a metered route: the maximum is `max` or the route's reserve, in the
/// token's atomic units, which are the route currency's minor units (same decimals).
fn upto_offer(
    i: usize,
    k: usize,
    o: &ExactOfferConfig,
    m: &tollgate_middleware::meter::Metered,
) -> Result<UptoOffer, ConfigError> {
    let field = |x: &str| format!("routes[{i}].x402[{k}].{x}");
    if !o.amount.is_empty() {
        return Err(invalid(
            field("amount"),
            "a metered route's x402 offer is upto: set max (default: the route's reserve), not amount",
        ));
    }
    if o.decimals != m.currency.scale() {
        return Err(invalid(
            field("decimals"),
            format!(
                "must equal the scale of the route's currency {} ({}): the measured cost is settled in the token's atomic units one for one",
                m.currency.code(),
                m.currency.scale()
            ),
        ));
    }
    let currency = Currency::try_new(o.currency.clone(), o.decimals)
        .map_err(|e| invalid(field("currency"), e))?;
    let max = match &o.max {
        Some(s) => s.parse::<u64>().ok(),
        None => m.currency.to_minor(m.reserve).ok(),
    }
    .ok_or_else(|| invalid(field("max"), "must be an integer of atomic units"))?;
    let facilitator = o.facilitator_address.as_deref().ok_or_else(|| {
        invalid(
            field("facilitator_address"),
            "required on a metered route (x402 upto): the facilitator's address, signed into every permit",
        )
    })?;
    UptoOffer::try_new(
        &o.network,
        &o.asset,
        (&o.name, &o.version),
        &o.pay_to,
        facilitator,
        max,
        o.max_timeout_secs,
        currency,
    )
    .map_err(|(x, e)| invalid(field(x), e))
}

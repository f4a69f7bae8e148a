//! `[x402]`: the facilitator that settles x402 `exact` payments on chain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tollgate_middleware::x402::HttpFacilitator;

use super::{invalid, within, ConfigError};

/// `[x402]`: the facilitator that settles x402 `exact` payments on chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X402Config {
    /// Base URL of the facilitator (`POST /verify`, `POST /settle`, `GET /supported`).
    pub facilitator_url: String,
    /// Bound on every facilitator call (milliseconds).
    #[serde(default = "super::n64::<10_000>")]
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
    #[serde(default = "super::n64::<1000>")]
    pub settle_interval_ms: u64,
    /// `deferred` settler: first retry delay, doubled per attempt (milliseconds).
    #[serde(default = "super::n64::<1000>")]
    pub settle_retry_base_ms: u64,
    /// `deferred` settler: attempts before a settlement fails for good (payer blocked).
    #[serde(default = "super::n32::<10>")]
    pub settle_max_attempts: u32,
}

fn default_valid_before_margin() -> u64 {
    tollgate_middleware::x402::DEFAULT_VALID_BEFORE_MARGIN_SECS
}

/// `[x402]`: the facilitator client (headers read from the environment) and the margin.
pub(super) fn validate_x402(x: &X402Config) -> Result<(Arc<HttpFacilitator>, u64), ConfigError> {
    within(
        "x402.facilitator_timeout_ms",
        x.facilitator_timeout_ms,
        1,
        120_000,
    )?;
    if x.valid_before_margin_secs > 600 {
        return Err(invalid(
            "x402.valid_before_margin_secs",
            "must be at most 600",
        ));
    }
    within("x402.settle_interval_ms", x.settle_interval_ms, 10, 60_000)?;
    within(
        "x402.settle_retry_base_ms",
        x.settle_retry_base_ms,
        10,
        600_000,
    )?;
    within("x402.settle_max_attempts", x.settle_max_attempts, 1, 100)?;
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
        let field = if m == tollgate_middleware::x402::facilitator::FacilitatorConfigError::Scheme {
            "x402.facilitator_url".to_owned()
        } else {
            "x402.facilitator_headers".to_owned()
        };
        invalid(field, m)
    })?;
    Ok((Arc::new(f), x.valid_before_margin_secs))
}

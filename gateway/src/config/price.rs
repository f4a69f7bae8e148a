//! A route's `price`: `"free"`, a fixed price, or a metered price.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_middleware::money::{Amount, Currency, Money};
use tollgate_middleware::{Meter, Metered, OnMissing, Price, UsageSource};

use super::{invalid, ConfigError};

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

/// `routes[i].price`, against the configured currencies.
pub(super) fn validate_price(
    i: usize,
    price: &PriceConfig,
    currencies: &BTreeMap<String, Currency>,
) -> Result<Price, ConfigError> {
    let f = |k: &str| format!("routes[{i}].{k}");
    let price = match price {
        PriceConfig::Keyword(k) if k == "free" => Price::Free,
        PriceConfig::Keyword(k) => {
            return Err(invalid(
                f("price"),
                format!("{k:?}: use \"free\" or {{ amount = \"0.01\", currency = \"USD\" }}"),
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
                Ok(_) => return Err(invalid(f("price.reserve"), "must be greater than zero")),
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
    Ok(price)
}

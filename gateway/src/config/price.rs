//! A route's `price`: `"free"`, a fixed price, or a metered price.

use std::collections::BTreeMap;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_middleware::meter::{DEFAULT_PAUSE_SECS, MAX_PAUSE_SECS};
use tollgate_middleware::money::{Amount, Currency, Money};
use tollgate_middleware::{Meter, Metered, OnExhausted, OnMissing, Price, UsageSource};

use super::{configured, invalid, ConfigError};

/// A route's price as written in the file: `"free"`, `{ amount, currency }`, or a metered
/// price `{ currency, reserve, meters = [...] }`.
///
/// Not `#[serde(untagged)]`: an untagged enum takes the first variant whose fields are present
/// and ignores the rest, so `{ amount, currency, cutof = true }` passed. The table is read as one
/// `PriceTable` that refuses unknown fields, then sorted into its kind.
#[derive(Debug, Clone)]
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
        on_missing: Option<String>,
        /// End a stream once the payer cannot pay for more.
        cutoff: bool,
        /// `cut` (default) or `pause`: what `cutoff` does to an event stream.
        on_exhausted: Option<String>,
        /// How long a paused stream waits for a top-up (seconds).
        pause_timeout_secs: Option<u64>,
    },
}

impl<'de> Deserialize<'de> for PriceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PriceVisitor)
    }
}

struct PriceVisitor;

impl<'de> Visitor<'de> for PriceVisitor {
    type Value = PriceConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"free\", { amount, currency } or { currency, reserve, meters }")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PriceConfig, E> {
        Ok(PriceConfig::Keyword(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PriceConfig, A::Error> {
        // Through the same MapAccess: the path of a bad field inside stays known.
        let table = PriceTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        table.sort().map_err(de::Error::custom)
    }
}

/// Every field a price table may have; which ones are set decides its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceTable {
    #[serde(default, deserialize_with = "super::amount::opt_decimal")]
    amount: Option<String>,
    currency: String,
    #[serde(default, deserialize_with = "super::amount::opt_decimal")]
    reserve: Option<String>,
    meters: Option<Vec<MeterConfig>>,
    on_missing: Option<String>,
    cutoff: Option<bool>,
    on_exhausted: Option<String>,
    pause_timeout_secs: Option<u64>,
}

impl PriceTable {
    /// `amount`: a fixed price, which takes no metered field; otherwise a metered price, which
    /// needs `reserve` and `meters`.
    fn sort(self) -> Result<PriceConfig, String> {
        let PriceTable {
            amount,
            currency,
            reserve,
            meters,
            on_missing,
            cutoff,
            on_exhausted,
            pause_timeout_secs,
        } = self;
        if let Some(amount) = amount {
            let metered = [
                ("reserve", reserve.is_some()),
                ("meters", meters.is_some()),
                ("on_missing", on_missing.is_some()),
                ("cutoff", cutoff.is_some()),
                ("on_exhausted", on_exhausted.is_some()),
                ("pause_timeout_secs", pause_timeout_secs.is_some()),
            ];
            if let Some((field, _)) = metered.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "`{field}` belongs to a metered price; a fixed price is {{ amount, currency }}"
                ));
            }
            return Ok(PriceConfig::Fixed { amount, currency });
        }
        let needs = "a fixed price needs `amount`, a metered price `reserve` and `meters`";
        let Some(reserve) = reserve else {
            return Err(format!("missing field `reserve` ({needs})"));
        };
        let Some(meters) = meters else {
            return Err(format!("missing field `meters` ({needs})"));
        };
        Ok(PriceConfig::Metered {
            currency,
            reserve,
            meters,
            on_missing,
            cutoff: cutoff.unwrap_or(false),
            on_exhausted,
            pause_timeout_secs,
        })
    }
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
    #[serde(deserialize_with = "super::amount::decimal")]
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
            let cur = configured(f("price.currency"), currency, currencies)?;
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
            on_exhausted,
            pause_timeout_secs,
        } => {
            let cur = configured(f("price.currency"), currency, currencies)?;
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
                let source: UsageSource = m.usage.parse().map_err(|e| invalid(mf("usage"), e))?;
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
            let on_exhausted = validate_on_exhausted(
                i,
                (on_exhausted.as_deref(), *pause_timeout_secs),
                *cutoff,
                &parsed,
            )?;
            Price::Metered(Metered {
                currency: cur.clone(),
                meters: parsed,
                reserve,
                on_missing,
                cutoff: *cutoff,
                on_exhausted,
            })
        }
    };
    Ok(price)
}

/// `routes[i].price.on_exhausted` and `pause_timeout_secs`: a pause needs `cutoff`, a meter
/// read as the body streams (`response_bytes`, `sse:`), no `duration_ms` (time would be
/// charged while paused) and a timeout of 1 to [`MAX_PAUSE_SECS`] seconds.
fn validate_on_exhausted(
    i: usize,
    (on_exhausted, timeout): (Option<&str>, Option<u64>),
    cutoff: bool,
    meters: &[Meter],
) -> Result<OnExhausted, ConfigError> {
    let f = |k: &str| format!("routes[{i}].price.{k}");
    match on_exhausted {
        None | Some("cut") => {
            if timeout.is_some() {
                return Err(invalid(
                    f("pause_timeout_secs"),
                    "only a paused stream waits: set on_exhausted = \"pause\"",
                ));
            }
            Ok(OnExhausted::Cut)
        }
        Some("pause") => {
            if !cutoff {
                return Err(invalid(
                    f("on_exhausted"),
                    "\"pause\" acts where a stream would be cut off: set cutoff = true",
                ));
            }
            if meters.iter().any(|m| m.source == UsageSource::DurationMs) {
                return Err(invalid(
                    f("on_exhausted"),
                    "\"pause\" cannot be used with a duration_ms meter (the pause would be charged)",
                ));
            }
            let streamed =
                |m: &Meter| matches!(m.source, UsageSource::ResponseBytes | UsageSource::Sse(_));
            if !meters.iter().any(streamed) {
                return Err(invalid(
                    f("on_exhausted"),
                    "\"pause\" needs a meter read as the body streams (response_bytes or sse:...)",
                ));
            }
            let secs = timeout.unwrap_or(DEFAULT_PAUSE_SECS);
            if !(1..=MAX_PAUSE_SECS).contains(&secs) {
                return Err(invalid(
                    f("pause_timeout_secs"),
                    format!("{secs}: use 1 to {MAX_PAUSE_SECS} seconds"),
                ));
            }
            Ok(OnExhausted::Pause {
                timeout: std::time::Duration::from_secs(secs),
            })
        }
        Some(other) => Err(invalid(
            f("on_exhausted"),
            format!("{other:?}: use \"cut\" or \"pause\""),
        )),
    }
}

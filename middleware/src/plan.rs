//! Plans: usage-based subscriptions sold for a period.
//!
//! A plan has a price, a period, the route groups it covers, and what it includes: a number of
//! calls, or unlimited calls for the period (a *pass*; the routes' rate limits still apply).
//! Past the included calls it either denies (`plan_exhausted`, a 402 offering a renewal) or
//! charges each further call from the prepaid balance at the plan's overage price.
//!
//! An agent buys a period with a `kind: "subscribe"` receipt naming the plan
//! (`POST <agent api>/subscribe`) and gets an access token; calls with that token on a covered
//! route count against the period in the same atomic script that holds the balance. Buying
//! again while a period runs extends it by one period and adds the included calls (the
//! purchase is single-use like every receipt, and recorded in the usage ledger as revenue).

use std::time::Duration;

use crate::money::{Amount, Money};

/// What happens past the included calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overage {
    /// Refuse with `plan_exhausted` (402 with a renewal offer).
    Deny,
    /// Charge each further call from the prepaid balance at this price (plan currency).
    Charge(Amount),
    /// Charge further calls at the route's own price (or meters) from the prepaid balance.
    RoutePrice,
}

/// A plan, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Stable id (named by `subscribe` receipts).
    pub id: String,
    /// Price of one period.
    pub price: Money,
    /// Length of a period.
    pub period: Duration,
    /// Route groups covered.
    pub groups: Vec<String>,
    /// Calls (or, with `unit`, units) included per period; `None`: unlimited (a pass).
    pub calls: Option<u64>,
    /// Count this usage unit (a metered route's meter unit, e.g. `token`) instead of calls.
    pub unit: Option<String>,
    /// Past the included calls.
    pub overage: Overage,
}

impl Plan {
    /// Whether the plan covers a route group.
    pub fn covers(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The catalog entry.
    pub fn catalog(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "price": self.price.amount.to_string(),
            "currency": self.price.currency.code(),
            "decimals": self.price.currency.scale(),
            "periodSeconds": self.period.as_secs(),
            "groups": self.groups,
            "includedCalls": if self.unit.is_none() { self.calls } else { None },
            "includedUnits": self.unit.as_ref().map(|u| serde_json::json!({"unit": u, "included": self.calls})),
            "pass": self.calls.is_none(),
            "overage": match &self.overage {
                Overage::Deny => serde_json::json!("deny"),
                Overage::Charge(a) => serde_json::json!({"pricePerCall": a.to_string()}),
                Overage::RoutePrice => serde_json::json!("route price"),
            },
        })
    }
}

/// A period that does not parse (what was given, and what is wrong with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {problem}")]
pub struct PeriodError {
    /// The period as given.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Parse a period like `90s`, `15m`, `1h`, `30d`.
pub fn parse_period(s: &str) -> Result<Duration, PeriodError> {
    let s = s.trim();
    let bad = |problem| PeriodError {
        input: s.to_owned(),
        problem,
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| bad("expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(bad("the unit must be s, m, h or d")),
    };
    match secs {
        Some(secs) if secs > 0 && secs <= 400 * 86_400 => Ok(Duration::from_secs(secs)),
        _ => Err(bad("a period is 1 s to 400 days")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_period("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_period("90s").unwrap(), Duration::from_secs(90));
        for bad in ["", "h", "1", "1w", "0d", "401d", "-1h"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }
}

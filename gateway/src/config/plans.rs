//! `[[plans]]`: subscriptions and passes sold for a period.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_middleware::money::{Amount, Currency, Money};
use tollgate_middleware::plan::{parse_period, Overage, Plan};

use super::routes::Route;
use super::{configured, invalid, ConfigError};

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
    pub calls: Option<u64>,
    /// Units included per period instead of calls: `{ unit = "token", included = 1000000 }`
    /// (a meter unit of the covered metered routes).
    pub units: Option<PlanUnitsConfig>,
    /// Past the included calls, charge each call from the prepaid balance at this price
    /// (`"route"`: at the route's own price or meters); omitted: deny (`plan_exhausted`).
    #[serde(default, deserialize_with = "super::amount::opt_decimal")]
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
    #[serde(deserialize_with = "super::amount::decimal")]
    pub amount: String,
    /// Currency code (in `[currencies]`).
    pub currency: String,
}

/// Every `[[plans]]` entry: priced in a known currency, covering groups of configured routes.
pub(super) fn validate_plans(
    all: &[PlanConfig],
    currencies: &BTreeMap<String, Currency>,
    routes: &[Route],
) -> Result<Vec<Plan>, ConfigError> {
    let mut plans: Vec<Plan> = Vec::new();
    for (i, p) in all.iter().enumerate() {
        let f = |field: &str| format!("plans[{i}].{field}");
        if p.id.is_empty() || p.id.len() > 64 || plans.iter().any(|q| q.id == p.id) {
            return Err(invalid(f("id"), "must be unique, 1 to 64 characters"));
        }
        let cur: &Currency = configured(f("price.currency"), &p.price.currency, currencies)?;
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
            let known = routes.iter().any(|r| r.group_name() == g);
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
            (Some(_), Some(_)) => return Err(invalid(f("units"), "set calls or units, not both")),
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
            Some(_) if unit.is_some() => return Err(invalid(
                f("overage_price"),
                "a units plan's overage is \"route\" (the route's own meters) or omitted (deny)",
            )),
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
    Ok(plans)
}

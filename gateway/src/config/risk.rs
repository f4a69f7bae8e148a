//! `[[risk]]`: risk rules (see docs/risk.md) -- per payer request and spend velocity, a spike
//! against its own trailing hourly average, and a cap on new payers per issuer per minute,
//! each with an action (`refuse`, `flag`, `block`), for every priced route or for route groups.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use tollgate_middleware::money::{Amount, Currency};
use tollgate_middleware::risk::{RiskAction, RiskKind, RiskRule};

use super::{invalid, ConfigError, Route};

/// `[[risk]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// The rule's id (its counters are kept under it).
    pub id: String,
    /// `requests`, `spend`, `spike` or `new_payers`.
    pub rule: String,
    /// `minute` or `hour` (`requests`, `spend`).
    pub window: Option<String>,
    /// Requests per window (`requests`), new payers per minute (`new_payers`).
    pub limit: Option<u64>,
    /// Spend per window, a decimal string (`spend`).
    #[serde(default, deserialize_with = "super::amount::opt_decimal")]
    pub amount: Option<String>,
    /// The currency counted (`spend`, `spike`).
    pub currency: Option<String>,
    /// The multiple of the trailing hourly average (`spike`).
    pub factor: Option<u64>,
    /// The trailing hourly average below which `spike` does not apply (decimal string;
    /// default: the currency's smallest unit).
    #[serde(default, deserialize_with = "super::amount::opt_decimal")]
    pub min_baseline: Option<String>,
    /// `refuse` (429 `risk_limited`), `flag` (served, reported) or `block`.
    pub action: String,
    /// The route groups it applies to (a route's `group`, or its id); all priced routes when
    /// unset.
    pub groups: Option<Vec<String>>,
}

/// Every `[[risk]]` rule, checked.
pub(super) fn validate_risk(
    rules: &[RiskConfig],
    currencies: &BTreeMap<String, Currency>,
    routes: &[Route],
) -> Result<Vec<RiskRule>, ConfigError> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let f = |name: &str| format!("risk[{i}].{name}");
        let id_ok = !r.id.is_empty()
            && r.id.len() <= 64
            && r.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(invalid(f("id"), "1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if !ids.insert(r.id.clone()) {
            return Err(invalid(f("id"), format!("{:?} is used twice", r.id)));
        }
        let action = match r.action.as_str() {
            "refuse" => RiskAction::Refuse,
            "flag" => RiskAction::Flag,
            "block" => RiskAction::Block,
            other => {
                return Err(invalid(
                    f("action"),
                    format!("{other:?} is not an action: refuse, flag or block"),
                ))
            }
        };
        let window_ms = || match r.window.as_deref() {
            Some("minute") => Ok(60_000),
            Some("hour") => Ok(3_600_000),
            Some(w) => Err(invalid(f("window"), format!("{w:?}: minute or hour"))),
            None => Err(invalid(
                f("window"),
                "required for this rule: minute or hour",
            )),
        };
        let currency = || {
            let code = r
                .currency
                .as_deref()
                .ok_or_else(|| invalid(f("currency"), "required for this rule"))?;
            currencies.get(code).cloned().ok_or_else(|| {
                let known: Vec<&str> = currencies.keys().map(String::as_str).collect();
                invalid(
                    f("currency"),
                    format!(
                        "{code:?} is not in [currencies] (configured: {})",
                        known.join(", ")
                    ),
                )
            })
        };
        let minor = |field: &str, text: &str, cur: &Currency| -> Result<u64, ConfigError> {
            let a: Amount = text
                .parse()
                .map_err(|e| invalid(f(field), format!("{e}")))?;
            match cur.to_minor(a) {
                Ok(m) if m > 0 => Ok(m),
                Ok(_) => Err(invalid(f(field), "must be greater than zero")),
                Err(e) => Err(invalid(f(field), e.to_string())),
            }
        };
        let positive = |field: &str, v: Option<u64>| match v {
            Some(n) if n > 0 => Ok(n),
            Some(_) => Err(invalid(f(field), "must be at least 1")),
            None => Err(invalid(f(field), "required for this rule")),
        };
        // The fields a rule of this kind takes; any other one set is an error.
        let (kind, takes): (RiskKind, &[&str]) = match r.rule.as_str() {
            "requests" => (
                RiskKind::Requests {
                    window_ms: window_ms()?,
                    limit: positive("limit", r.limit)?,
                },
                &["window", "limit"],
            ),
            "spend" => {
                let cur = currency()?;
                let amount = r
                    .amount
                    .as_deref()
                    .ok_or_else(|| invalid(f("amount"), "required for this rule"))?;
                (
                    RiskKind::Spend {
                        window_ms: window_ms()?,
                        limit_minor: minor("amount", amount, &cur)?,
                        currency: cur.code().to_owned(),
                    },
                    &["window", "amount", "currency"],
                )
            }
            "spike" => {
                let cur = currency()?;
                let base = match r.min_baseline.as_deref() {
                    Some(b) => minor("min_baseline", b, &cur)?,
                    None => 1,
                };
                let factor = positive("factor", r.factor)?;
                if factor < 2 {
                    return Err(invalid(
                        f("factor"),
                        "must be at least 2 (times the trailing hourly average)",
                    ));
                }
                (
                    RiskKind::Spike {
                        factor,
                        min_baseline_minor: base,
                        currency: cur.code().to_owned(),
                    },
                    &["factor", "currency", "min_baseline"],
                )
            }
            "new_payers" => (
                RiskKind::NewPayers {
                    limit: positive("limit", r.limit)?,
                },
                &["limit"],
            ),
            other => {
                return Err(invalid(
                    f("rule"),
                    format!("{other:?} is not a rule: requests, spend, spike or new_payers"),
                ))
            }
        };
        let set = [
            ("window", r.window.is_some()),
            ("limit", r.limit.is_some()),
            ("amount", r.amount.is_some()),
            ("currency", r.currency.is_some()),
            ("factor", r.factor.is_some()),
            ("min_baseline", r.min_baseline.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(n, s)| *s && !takes.contains(n)) {
            return Err(invalid(
                f(field),
                format!(
                    "a {} rule does not take {field} (it takes {})",
                    r.rule,
                    takes.join(", ")
                ),
            ));
        }
        if let Some(groups) = &r.groups {
            if groups.is_empty() {
                return Err(invalid(
                    f("groups"),
                    "list at least one route group, or omit groups for every route",
                ));
            }
            for g in groups {
                let known = routes
                    .iter()
                    .any(|x| x.config.group.as_deref().unwrap_or(&x.config.id) == g);
                if !known {
                    return Err(invalid(f("groups"), format!("no route is in group {g:?}")));
                }
            }
        }
        out.push(RiskRule {
            id: r.id.clone(),
            kind,
            action,
            groups: r.groups.clone(),
        });
    }
    let new_payer_rules = out
        .iter()
        .filter(|r| matches!(r.kind, RiskKind::NewPayers { .. }))
        .count();
    if new_payer_rules > 1 {
        return Err(invalid(
            "risk",
            "at most one new_payers rule (one cap per issuer)",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn check(rules: &str) -> Result<usize, String> {
        let text = format!(
            "merchant = \"m\"\n[currencies.USD]\nscale = 6\n[[issuers]]\nid = \"w\"\n\
             keys = [{{ kty = \"OKP\", crv = \"Ed25519\", x = \"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\", kid = \"k\" }}]\n\
             [[routes]]\nid = \"f\"\npath = \"/f\"\nupstream = \"http://127.0.0.1:9\"\n\
             price = {{ amount = \"0.01\", currency = \"USD\" }}\ngroup = \"compute\"\n{rules}"
        );
        let cfg = Config::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate(std::path::Path::new("."))
            .map(|v| v.risk.len())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_rule_kind_and_its_errors() {
        let ok = "[[risk]]\nid = \"a\"\nrule = \"requests\"\nwindow = \"minute\"\nlimit = 60\naction = \"refuse\"\n\
                  [[risk]]\nid = \"b\"\nrule = \"spend\"\nwindow = \"hour\"\namount = \"5\"\ncurrency = \"USD\"\naction = \"block\"\ngroups = [\"compute\"]\n\
                  [[risk]]\nid = \"c\"\nrule = \"spike\"\nfactor = 10\ncurrency = \"USD\"\nmin_baseline = \"0.1\"\naction = \"flag\"\n\
                  [[risk]]\nid = \"d\"\nrule = \"new_payers\"\nlimit = 100\naction = \"refuse\"\n";
        assert_eq!(check(ok), Ok(4));
        let one = |body: &str| format!("[[risk]]\nid = \"x\"\n{body}");
        for (rules, field, says) in [
            (one("rule = \"velocity\"\naction = \"refuse\""), "risk[0].rule", "requests, spend, spike or new_payers"),
            (one("rule = \"requests\"\nwindow = \"day\"\nlimit = 1\naction = \"refuse\""), "risk[0].window", "minute or hour"),
            (one("rule = \"requests\"\nlimit = 1\naction = \"refuse\""), "risk[0].window", "required"),
            (one("rule = \"requests\"\nwindow = \"minute\"\nlimit = 0\naction = \"refuse\""), "risk[0].limit", "at least 1"),
            (one("rule = \"requests\"\nwindow = \"minute\"\nlimit = 1\naction = \"deny\""), "risk[0].action", "refuse, flag or block"),
            (one("rule = \"requests\"\nwindow = \"minute\"\nlimit = 1\ncurrency = \"USD\"\naction = \"flag\""), "risk[0].currency", "does not take currency"),
            (one("rule = \"spend\"\nwindow = \"minute\"\namount = \"5\"\ncurrency = \"EUR\"\naction = \"flag\""), "risk[0].currency", "configured: USD"),
            (one("rule = \"spend\"\nwindow = \"minute\"\namount = \"0.0000001\"\ncurrency = \"USD\"\naction = \"flag\""), "risk[0].amount", ""),
            (one("rule = \"spike\"\nfactor = 1\ncurrency = \"USD\"\naction = \"flag\""), "risk[0].factor", "at least 2"),
            (one("rule = \"new_payers\"\nlimit = 5\naction = \"flag\"\ngroups = [\"nope\"]"), "risk[0].groups", "no route is in group \"nope\""),
        ] {
            let err = check(&rules).unwrap_err();
            assert!(err.contains(field) && err.contains(says), "{rules}: {err}");
        }
        let twice = "[[risk]]\nid = \"a\"\nrule = \"new_payers\"\nlimit = 1\naction = \"flag\"\n\
                     [[risk]]\nid = \"b\"\nrule = \"new_payers\"\nlimit = 2\naction = \"flag\"\n";
        assert!(check(twice)
            .unwrap_err()
            .contains("at most one new_payers rule"));
    }
}

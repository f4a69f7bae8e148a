//! Risk rules (see docs/risk.md): per payer, limits on what it may be admitted in a window --
//! requests, spend, a spike against its own trailing hourly average -- and per issuer a cap on
//! new payers per minute. Each rule's action is `refuse`, `flag` (served, reported) or `block`
//! (the payer blocked, the request refused).
//!
//! The counters live in the store and are checked and moved in one atomic step per request
//! (the Redis script `risk.lua`, one sqlite transaction), so replicas share them. The
//! arithmetic is here ([`evaluate`]), once, for every backend that is not Lua; `risk.lua`
//! mirrors it and the conformance suite holds the two equal.
//!
//! Windows are fixed and aligned to the UTC clock (a minute rule counts from :00 of the
//! minute). Spend counts what is authorized at admission: the route's price, or a metered
//! route's reserve (an upper bound of its charge).

use serde::Serialize;

/// What a rule limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RiskKind {
    /// At most `limit` requests per window.
    Requests {
        /// The window (ms; 60,000 or 3,600,000).
        window_ms: i64,
        /// Requests admitted per window.
        limit: u64,
    },
    /// At most `limit_minor` admitted per window, in `currency`.
    Spend {
        /// The window (ms).
        window_ms: i64,
        /// Atomic units per window.
        limit_minor: u64,
        /// The currency counted (other currencies' requests pass this rule).
        currency: String,
    },
    /// The current hour's spend at most `factor` times the payer's average hourly spend over
    /// the 24 hours before it, once that average is at least `min_baseline_minor`.
    Spike {
        /// The multiple.
        factor: u64,
        /// Below this trailing average (atomic units per hour) the rule does not apply.
        min_baseline_minor: u64,
        /// The currency counted.
        currency: String,
    },
    /// At most `limit` payers per minute seen for the first time (in 30 days) per issuer.
    NewPayers {
        /// New payers per minute.
        limit: u64,
    },
}

/// What a rule does when it triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskAction {
    /// Serve, and report it.
    Flag,
    /// Refuse the request (429 `risk_limited`).
    Refuse,
    /// Block the payer and refuse the request.
    Block,
}

impl RiskAction {
    /// Its config and wire name.
    pub fn name(self) -> &'static str {
        match self {
            RiskAction::Flag => "flag",
            RiskAction::Refuse => "refuse",
            RiskAction::Block => "block",
        }
    }

    /// The action a store recorded by [`RiskAction::name`] (an unknown name reads as a flag,
    /// the mildest: a stored log never refuses anything).
    pub fn from_name(name: &str) -> RiskAction {
        match name {
            "block" => RiskAction::Block,
            "refuse" => RiskAction::Refuse,
            _ => RiskAction::Flag,
        }
    }
}

/// One configured rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RiskRule {
    /// Its id (counters are kept under it).
    pub id: String,
    /// What it limits.
    #[serde(flatten)]
    pub kind: RiskKind,
    /// What it does.
    pub action: RiskAction,
    /// The route groups it applies to (`None`: every priced route).
    pub groups: Option<Vec<String>>,
}

impl RiskRule {
    /// Whether it applies to a route of `group`.
    pub fn applies(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|g| g.iter().any(|x| x == group))
    }
}

/// The request being admitted.
#[derive(Debug, Clone)]
pub struct RiskCheck<'a> {
    /// Who pays.
    pub payer: &'a str,
    /// Who vouches for the payer (the receipt's or the token's issuer).
    pub issuer: &'a str,
    /// The route.
    pub route: &'a str,
    /// The currency of its price.
    pub currency: &'a str,
    /// What admission authorizes (atomic units).
    pub amount_minor: u64,
    /// Now, unix ms.
    pub now_ms: i64,
    /// The rules that apply to the route.
    pub rules: &'a [RiskRule],
}

/// A rule that triggered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RiskHit {
    /// The rule's id.
    pub rule: String,
    /// Its action.
    pub action: RiskAction,
    /// What was counted, this request included.
    pub value: u64,
    /// The limit it passed.
    pub limit: u64,
}

/// What the risk step decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RiskOutcome {
    /// The rules that triggered.
    pub hits: Vec<RiskHit>,
    /// Milliseconds until the earliest refusing rule's window ends (a `Retry-After`).
    pub retry_after_ms: i64,
}

impl RiskOutcome {
    /// The most severe action among the hits.
    pub fn action(&self) -> Option<RiskAction> {
        self.hits.iter().map(|h| h.action).max()
    }
}

/// A decision, as the admin API lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RiskDecision {
    /// When, unix ms.
    pub time_ms: i64,
    /// Who.
    pub payer: String,
    /// On which route.
    pub route: String,
    /// The rule's id.
    pub rule: String,
    /// What was done (stored by [`RiskAction::name`]).
    #[serde(deserialize_with = "action_named")]
    pub action: RiskAction,
    /// What was counted.
    pub value: u64,
    /// The limit.
    pub limit: u64,
}

/// A stored action name (an unknown one reads as a flag: [`RiskAction::from_name`]).
fn action_named<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RiskAction, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(d)?;
    Ok(RiskAction::from_name(&name))
}

/// Start of the fixed window holding `now`.
pub fn window_start(now_ms: i64, window_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(window_ms.max(1))
}

/// The hour number of `now` (unix hours).
pub fn hour_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(3_600_000)
}

/// The counters a check reads, one per rule in order (`Requests` and `Spend`: the window's
/// count; `Spike`: the current hour's spend and the 24 hours' before it; `NewPayers`: whether
/// the payer is new and the issuer's count this minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// A window's count.
    Window(u64),
    /// (this hour, the 24 hours before).
    Hours(u64, u64),
    /// (the payer is new, new payers this minute).
    New(bool, u64),
}

/// The rule arithmetic: which rules a request with these counters triggers.
pub fn evaluate(c: &RiskCheck<'_>, counters: &[Counter]) -> RiskOutcome {
    let mut hits = Vec::new();
    for (rule, counter) in c.rules.iter().zip(counters) {
        let hit = match (&rule.kind, *counter) {
            (RiskKind::Requests { limit, .. }, Counter::Window(n)) => {
                let value = n.saturating_add(1);
                (value > *limit).then_some((value, *limit))
            }
            (
                RiskKind::Spend {
                    limit_minor,
                    currency,
                    ..
                },
                Counter::Window(n),
            ) if currency == c.currency => {
                let value = n.saturating_add(c.amount_minor);
                (value > *limit_minor).then_some((value, *limit_minor))
            }
            (
                RiskKind::Spike {
                    factor,
                    min_baseline_minor,
                    currency,
                },
                Counter::Hours(hour, before),
            ) if currency == c.currency => {
                let average = before / 24;
                let value = hour.saturating_add(c.amount_minor);
                let limit = average.saturating_mul(*factor);
                (average >= *min_baseline_minor && average > 0 && value > limit)
                    .then_some((value, limit))
            }
            (RiskKind::NewPayers { limit }, Counter::New(true, n)) => {
                let value = n.saturating_add(1);
                (value > *limit).then_some((value, *limit))
            }
            _ => None,
        };
        if let Some((value, limit)) = hit {
            hits.push(RiskHit {
                rule: rule.id.clone(),
                action: rule.action,
                value,
                limit,
            });
        }
    }
    outcome(c, hits)
}

/// The outcome of `hits`: with the time until the earliest refusing rule's window ends.
pub fn outcome(c: &RiskCheck<'_>, hits: Vec<RiskHit>) -> RiskOutcome {
    let retry = hits
        .iter()
        .filter(|h| h.action != RiskAction::Flag)
        .filter_map(|h| c.rules.iter().find(|r| r.id == h.rule))
        .map(|r| {
            let w = r.window_ms();
            window_start(c.now_ms, w) + w - c.now_ms
        })
        .min()
        .unwrap_or(0);
    RiskOutcome {
        hits,
        retry_after_ms: retry,
    }
}

impl RiskRule {
    /// The window its counter resets with (ms).
    pub fn window_ms(&self) -> i64 {
        match &self.kind {
            RiskKind::Requests { window_ms, .. } | RiskKind::Spend { window_ms, .. } => *window_ms,
            RiskKind::Spike { .. } => 3_600_000,
            RiskKind::NewPayers { .. } => 60_000,
        }
    }

    /// Its kind's name (`requests`, `spend`, `spike`, `new_payers`).
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            RiskKind::Requests { .. } => "requests",
            RiskKind::Spend { .. } => "spend",
            RiskKind::Spike { .. } => "spike",
            RiskKind::NewPayers { .. } => "new_payers",
        }
    }

    /// The name of its payer counter at `now` (requests, spend: one per window; spike: one
    /// per payer, by hour).
    pub fn counter_name(&self, payer: &str, now_ms: i64) -> String {
        match &self.kind {
            RiskKind::Spike { .. } => format!("rk:h:{}:{payer}", self.id),
            _ => format!(
                "rk:w:{}:{payer}:{}",
                self.id,
                window_start(now_ms, self.window_ms())
            ),
        }
    }
}

/// The names of a new-payer rule's keys: (the issuer knows the payer, the issuer's count this
/// minute).
pub fn new_payer_names(
    rule: &RiskRule,
    issuer: &str,
    payer: &str,
    now_ms: i64,
) -> (String, String) {
    (
        format!("rk:seen:{issuer}:{payer}"),
        format!(
            "rk:np:{}:{issuer}:{}",
            rule.id,
            window_start(now_ms, 60_000)
        ),
    )
}

/// How long a payer counts as known to its issuer after it was last seen new (ms): 30 days.
pub const SEEN_FOR_MS: i64 = 30 * 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RiskKind, action: RiskAction) -> RiskRule {
        RiskRule {
            id: "r".into(),
            kind,
            action,
            groups: None,
        }
    }

    fn check(rules: &[RiskRule], amount: u64) -> RiskCheck<'_> {
        RiskCheck {
            payer: "p",
            issuer: "i",
            route: "x",
            currency: "USD",
            amount_minor: amount,
            now_ms: 90_000,
            rules,
        }
    }

    /// Each rule at its boundary: the limit itself passes, one more triggers.
    #[test]
    fn every_rule_at_its_boundary() {
        let req = [rule(
            RiskKind::Requests {
                window_ms: 60_000,
                limit: 3,
            },
            RiskAction::Refuse,
        )];
        assert!(evaluate(&check(&req, 0), &[Counter::Window(2)])
            .hits
            .is_empty());
        let o = evaluate(&check(&req, 0), &[Counter::Window(3)]);
        assert_eq!(
            (o.action(), o.hits[0].value, o.retry_after_ms),
            (Some(RiskAction::Refuse), 4, 30_000)
        );
        let spend = [rule(
            RiskKind::Spend {
                window_ms: 60_000,
                limit_minor: 100,
                currency: "USD".into(),
            },
            RiskAction::Block,
        )];
        assert!(evaluate(&check(&spend, 40), &[Counter::Window(60)])
            .hits
            .is_empty());
        assert_eq!(
            evaluate(&check(&spend, 41), &[Counter::Window(60)]).action(),
            Some(RiskAction::Block)
        );
        let mut other = check(&spend, 1_000);
        other.currency = "EUR";
        assert!(evaluate(&other, &[Counter::Window(60)]).hits.is_empty());
        let spike = [rule(
            RiskKind::Spike {
                factor: 10,
                min_baseline_minor: 5,
                currency: "USD".into(),
            },
            RiskAction::Flag,
        )];
        // Average 10 per hour: up to 100 this hour passes.
        assert!(evaluate(&check(&spike, 10), &[Counter::Hours(90, 240)])
            .hits
            .is_empty());
        let o = evaluate(&check(&spike, 11), &[Counter::Hours(90, 240)]);
        assert_eq!((o.action(), o.retry_after_ms), (Some(RiskAction::Flag), 0));
        // Below the baseline (average 4): no limit.
        assert!(evaluate(&check(&spike, 10_000), &[Counter::Hours(0, 96)])
            .hits
            .is_empty());
        let new = [rule(RiskKind::NewPayers { limit: 2 }, RiskAction::Refuse)];
        assert!(evaluate(&check(&new, 0), &[Counter::New(true, 1)])
            .hits
            .is_empty());
        assert!(!evaluate(&check(&new, 0), &[Counter::New(true, 2)])
            .hits
            .is_empty());
        assert!(evaluate(&check(&new, 0), &[Counter::New(false, 99)])
            .hits
            .is_empty());
    }

    #[test]
    fn the_most_severe_action_wins() {
        let rules = [
            rule(
                RiskKind::Requests {
                    window_ms: 60_000,
                    limit: 0,
                },
                RiskAction::Flag,
            ),
            rule(
                RiskKind::Requests {
                    window_ms: 3_600_000,
                    limit: 0,
                },
                RiskAction::Block,
            ),
            rule(
                RiskKind::Requests {
                    window_ms: 60_000,
                    limit: 0,
                },
                RiskAction::Refuse,
            ),
        ];
        let o = evaluate(&check(&rules, 0), &[Counter::Window(0); 3]);
        assert_eq!((o.hits.len(), o.action()), (3, Some(RiskAction::Block)));
        assert_eq!(o.retry_after_ms, 30_000);
        assert_eq!(window_start(3_599_999, 3_600_000), 0);
        assert_eq!(window_start(3_600_000, 3_600_000), 3_600_000);
    }
}

//! The engine's risk step (see [`crate::risk`]): before anything is held, the rules of the
//! route's group are checked and counted in one store step. `refuse` answers 429
//! `risk_limited` with `Retry-After`; `block` blocks the payer (in the same step) and answers
//! 403 `payer_blocked`; `flag` serves. A flag or a block is reported as a webhook
//! (`risk.flagged`, `payer.blocked`) when webhooks are configured.

use super::*;
use crate::risk::{RiskAction, RiskCheck, RiskHit};
use crate::webhooks::EventKind;

impl Paywall {
    /// Enforce the route's rate limit and the risk rules that apply to it, for `payer`
    /// vouched for by `issuer`.
    pub(super) async fn check_limits(
        &self,
        route: &PricedRoute,
        payer: &str,
        issuer: &str,
    ) -> Result<(), Refusal> {
        self.check_rate(route, payer).await?;
        let group = route.group_name();
        let rules: Vec<_> = self
            .0
            .settings
            .risk
            .iter()
            .filter(|r| r.applies(group))
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let (code, minor) = match Self::hold_amount(route) {
            Some((c, a)) => (c.code().to_owned(), c.to_minor(a).unwrap_or(0)),
            None => (String::new(), 0),
        };
        let check = RiskCheck {
            payer,
            issuer,
            route: &route.id,
            currency: &code,
            amount_minor: minor,
            now_ms: self.0.settings.clock.now_ms(),
            rules: &rules,
        };
        let outcome = crate::metrics::timed("risk", self.0.store.risk(&check))
            .await
            .map_err(|e| Refusal::store_down(e, "risk"))?;
        let metrics = crate::metrics::global();
        for h in &outcome.hits {
            metrics
                .risk_decisions
                .with_label_values(&[&h.rule, h.action.name()])
                .inc();
        }
        let Some(action) = outcome.action() else {
            return Ok(());
        };
        self.report_risk(payer, &route.id, &outcome.hits, action, check.now_ms)
            .await;
        let worst = outcome.hits.iter().filter(|h| h.action == action);
        let named: Vec<String> = worst.map(|h| h.rule.clone()).collect();
        let secs = u64::try_from(outcome.retry_after_ms.max(0))
            .unwrap_or(0)
            .div_ceil(1000)
            .max(1);
        match action {
            RiskAction::Flag => Ok(()),
            RiskAction::Refuse => Err(Refusal::plain(
                ErrorCode::RiskLimited,
                format!("refused by the provider's risk rule {} (spend or request velocity for this payer); retry in {secs} s", named.join(", ")),
            )
            .retry_after(secs)),
            RiskAction::Block => Err(Refusal::new(
                ErrorCode::PayerBlocked,
                format!("the payer was blocked by the provider's risk rule {}", named.join(", ")),
            )),
        }
    }

    /// Webhooks for a flag or a block (written after the store step; see docs/risk.md).
    async fn report_risk(
        &self,
        payer: &str,
        route: &str,
        hits: &[RiskHit],
        action: RiskAction,
        now_ms: i64,
    ) {
        let Some(w) = &self.0.settings.webhooks else {
            return;
        };
        let key = format!("risk_{}", uuid::Uuid::new_v4().simple());
        let (kind, data) = match action {
            RiskAction::Block => (
                EventKind::PayerBlocked,
                serde_json::json!({"payer": payer, "blocked": true, "by": "risk", "route": route, "rules": hits}),
            ),
            _ => (
                EventKind::RiskFlagged,
                serde_json::json!({"payer": payer, "route": route, "action": action, "rules": hits}),
            ),
        };
        if action == RiskAction::Refuse {
            return;
        }
        if let Err(e) = w.notify(kind, &key, payer, now_ms, data).await {
            tracing::error!(%payer, error = %e, "risk webhook not written");
        }
    }
}

//! Messages the dispatcher derives from a step's charges by reading state the ledger event does
//! not carry: a mandate's use of its window's budget (`mandate.budget_crossed`) and a plan's
//! included calls (`plan.exhausted`). Each is sent once per crossing: once per mandate, window
//! and percentage; once per payer, plan and period.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{message, EventKind, Webhooks};
use crate::money::Amount;
use crate::store::webhook::OutboxAdvance;
use crate::store::{StoreError, UsageEvent};

#[derive(Serialize)]
struct BudgetData<'a> {
    payer: &'a str,
    mandate: &'a serde_json::Value,
    issuer: &'a serde_json::Value,
    owner: &'a serde_json::Value,
    currency: &'a str,
    budget: String,
    spent: String,
    percent: u32,
    window_start: String,
    resets_at: String,
}

#[derive(Serialize)]
struct PlanData<'a> {
    payer: &'a str,
    plan: &'a str,
    calls: u64,
    used: u64,
    period_start: String,
    period_end: String,
}

/// `mandate.budget_crossed` for the payers charged in this step: every configured percentage
/// of a mandate's window budget that its spend has reached, once per window.
pub(super) async fn mandates(
    w: &Webhooks,
    bucket: u64,
    events: &[UsageEvent],
    advance: &mut OutboxAdvance,
) -> Result<(), StoreError> {
    let cfg = &w.0.config;
    if !w.wanted(EventKind::MandateBudgetCrossed) || cfg.mandate_percents.is_empty() {
        return Ok(());
    }
    let payers: BTreeSet<&str> = events
        .iter()
        .filter(|e| e.voids.is_none())
        .map(|e| e.payer.as_str())
        .collect();
    let Some(last) = events.last() else {
        return Ok(());
    };
    let now = last.time_ms;
    for payer in payers {
        let used = w.0.store.mandates(payer, now).await?;
        let mut keys = Vec::new();
        let mut found = Vec::new();
        for (summary, u) in &used {
            let (Some(id), Some(issuer)) = (summary["id"].as_str(), summary["issuer"].as_str())
            else {
                continue;
            };
            let code = summary["currency"].as_str().unwrap_or_default();
            let Some(currency) = cfg.currencies.get(code) else {
                continue;
            };
            let budget = summary["budget"]
                .as_str()
                .and_then(|b| b.parse::<Amount>().ok())
                .and_then(|b| currency.to_minor(b).ok())
                .unwrap_or(0);
            let Ok(window) =
                serde_json::from_value::<crate::mandate::Window>(summary["window"].clone())
            else {
                continue;
            };
            if budget == 0 {
                continue;
            }
            let key = crate::mandate::mandate_key(issuer, id);
            for pct in &cfg.mandate_percents {
                keys.push(format!("mb|{key}|{pct}"));
            }
            found.push((summary, u, currency, budget, window.bounds(now), key));
        }
        if found.is_empty() {
            continue;
        }
        let (_, state) = w.0.store.webhook_state(bucket, &keys).await?;
        for (summary, u, currency, budget, (start, end), key) in found {
            for pct in &cfg.mandate_percents {
                let flag = format!("mb|{key}|{pct}");
                let reached =
                    u128::from(u.spent_minor) * 100 >= u128::from(budget) * u128::from(*pct);
                let told = state.get(&flag).map(String::as_str) == Some(start.to_string().as_str());
                if !reached || told {
                    continue;
                }
                let data = BudgetData {
                    payer,
                    mandate: &summary["id"],
                    issuer: &summary["issuer"],
                    owner: &summary["owner"],
                    currency: currency.code(),
                    budget: currency.from_minor(budget).to_string(),
                    spent: currency.from_minor(u.spent_minor).to_string(),
                    percent: *pct,
                    window_start: crate::store::iso_time(start),
                    resets_at: crate::store::iso_time(end),
                };
                let id = format!("mandate_{key}_{start}_{pct}");
                let m = message(EventKind::MandateBudgetCrossed, &id, payer, now, data);
                advance.messages.push(m);
                advance.set.push((flag, start.to_string()));
            }
        }
    }
    Ok(())
}

/// `plan.exhausted` for the (payer, plan) pairs charged in this step whose period's included
/// calls are used up, once per period.
pub(super) async fn plans(
    w: &Webhooks,
    bucket: u64,
    events: &[UsageEvent],
    advance: &mut OutboxAdvance,
) -> Result<(), StoreError> {
    if !w.wanted(EventKind::PlanExhausted) {
        return Ok(());
    }
    let routes = &w.0.config.plan_routes;
    let pairs: BTreeSet<(&str, &str)> = events
        .iter()
        .filter(|e| e.voids.is_none())
        .filter_map(|e| routes.get(&e.route).map(|p| (e.payer.as_str(), p.as_str())))
        .collect();
    for (payer, plan) in pairs {
        let Some(period) = w.0.store.subscription(payer, plan).await? else {
            continue;
        };
        let Some(calls) = period.calls else {
            continue;
        };
        if period.used < calls {
            continue;
        }
        let flag = format!("pe|{payer}|{plan}");
        let (_, state) =
            w.0.store
                .webhook_state(bucket, std::slice::from_ref(&flag))
                .await?;
        let start = period.start_ms.to_string();
        if state.get(&flag) == Some(&start) {
            continue;
        }
        let data = PlanData {
            payer,
            plan,
            calls,
            used: period.used,
            period_start: crate::store::iso_time(period.start_ms),
            period_end: crate::store::iso_time(period.end_ms),
        };
        let id = format!("plan_{payer}_{plan}_{start}");
        let time = events.last().map_or(period.start_ms, |e| e.time_ms);
        let m = message(EventKind::PlanExhausted, &id, payer, time, data);
        advance.messages.push(m);
        advance.set.push((flag, start));
    }
    Ok(())
}

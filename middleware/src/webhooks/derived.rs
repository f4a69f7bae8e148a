//! Messages the dispatcher derives from a step's charges by reading state the ledger event does
//! not carry: a mandate's use of its window's budget (`mandate.budget_crossed`) and a plan's
//! included calls (`plan.exhausted`). Each is sent once per crossing: once per mandate, window
//! and percentage; once per payer, plan and period. And `plan.period_ended`: scheduled at a
//! purchase for its period's end, released when it is due.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{message, EventKind, Webhooks};
use crate::money::Amount;
use crate::store::webhook::{OutboxAdvance, WebhookMessage};
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

#[derive(Serialize)]
struct PeriodData<'a> {
    payer: &'a str,
    plan: &'a str,
    /// Calls included (`None`: a pass).
    calls: Option<u64>,
    /// Calls used in the period (when it ended).
    used: u64,
    period_start: String,
    period_end: String,
}

fn period_message(
    payer: &str,
    plan: &str,
    p: &crate::store::PlanPeriod,
    key: &str,
) -> WebhookMessage {
    let data = PeriodData {
        payer,
        plan,
        calls: p.calls,
        used: p.used,
        period_start: crate::store::iso_time(p.start_ms),
        period_end: crate::store::iso_time(p.end_ms),
    };
    message(EventKind::PlanPeriodEnded, key, payer, p.end_ms, data)
}

/// `plan.period_ended`, part one: a plan purchase in this step (a ledger event on route
/// `plan:<id>`) schedules the message for its period's end.
pub(super) async fn schedule_period_ends(
    w: &Webhooks,
    events: &[UsageEvent],
    advance: &mut OutboxAdvance,
) -> Result<(), StoreError> {
    if !w.wanted(EventKind::PlanPeriodEnded) {
        return Ok(());
    }
    for e in events.iter().filter(|e| e.voids.is_none()) {
        let Some(plan) = e.route.strip_prefix("plan:") else {
            continue;
        };
        let Some(period) = w.0.store.subscription(&e.payer, plan).await? else {
            continue;
        };
        let key = format!("plan_ended_{}_{plan}_{}", e.payer, period.end_ms);
        let m = period_message(&e.payer, plan, &period, &key);
        advance.schedule.push((period.end_ms, m));
    }
    Ok(())
}

/// `plan.period_ended`, part two: the scheduled messages now due in `bucket`, each checked
/// against its period (one renewed or extended in the meantime is dropped: its own purchase
/// scheduled the new end), released into the outbox in one step.
pub(super) async fn release_period_ends(
    w: &Webhooks,
    bucket: u64,
    now_ms: i64,
) -> Result<(), StoreError> {
    if !w.wanted(EventKind::PlanPeriodEnded) {
        return Ok(());
    }
    let store = &w.0.store;
    let due = store.webhook_due(bucket, now_ms, 100).await?;
    if due.is_empty() {
        return Ok(());
    }
    let (cursor, _) = store.webhook_state(bucket, &[]).await?;
    let Some(cursor) = cursor else {
        return Ok(());
    };
    let mut advance = OutboxAdvance {
        bucket,
        expected: Some(cursor.clone()),
        cursor,
        ..OutboxAdvance::default()
    };
    for (at, m) in due {
        advance.unschedule.push(m.id.clone());
        let body: serde_json::Value = serde_json::from_str(&m.body).unwrap_or_default();
        let Some(plan) = body["data"]["plan"].as_str() else {
            continue;
        };
        match store.subscription(&m.payer, plan).await? {
            Some(p) if p.end_ms == at => {
                let key = m.id.strip_prefix("msg_").unwrap_or(&m.id);
                let mut fresh = period_message(&m.payer, plan, &p, key);
                // The id it was scheduled under (a digest when the key was not plain).
                fresh.id = m.id.clone();
                advance.messages.push(fresh);
            }
            _ => {}
        }
    }
    // `false`: a dispatcher step moved the cursor first; the next round releases them.
    if store.webhook_advance(&advance).await? {
        let metrics = crate::metrics::global();
        for msg in &advance.messages {
            metrics
                .webhook_messages
                .with_label_values(&[&msg.kind])
                .inc();
        }
    }
    Ok(())
}

//! The dashboard's read endpoints: totals over a range of days (from the store's daily
//! aggregates), this process's traffic per minute, the top payers, and the charts drawn from
//! the same figures.
//!
//! Amounts are summed in atomic units (integers) and shown as decimal strings, as everywhere in
//! the admin API; the charts use floating point for geometry only.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_middleware::store::{add_days, days_between, utc_day, DailyUsage};
use tollgate_middleware::{Clock, ErrorCode, StoreError, SystemClock};

use super::svg::{BarChart, Series};
use crate::admin::{bad_request, store_error, Admin};
use crate::proxy::problem;

/// A range of UTC days; both ends default (to today, from six days before `to`).
#[derive(Debug, Deserialize)]
pub(crate) struct DayRange {
    from: Option<String>,
    to: Option<String>,
    /// Payer listing: how many (default 20, at most 200).
    limit: Option<usize>,
    /// Payer listing and revenue chart: the currency to rank / draw by.
    currency: Option<String>,
}

impl DayRange {
    /// `(from, to, days)`; a malformed or too long range is a `Protocol` error (400).
    fn days(&self) -> Result<(String, String, Vec<String>), StoreError> {
        let now = SystemClock.now_ms();
        let to = self.to.clone().unwrap_or_else(|| utc_day(now));
        let from = match &self.from {
            Some(f) => f.clone(),
            // A week, `to` included.
            None => add_days(&to, -6)?,
        };
        let days = days_between(&from, &to)?;
        Ok((from, to, days))
    }
}

fn range_error(e: StoreError) -> Response {
    match e {
        StoreError::Protocol(detail) => bad_request(&detail),
        other => store_error(other),
    }
}

/// A query string that does not parse (e.g. `limit=abc`): 400 `invalid_request`, as problem+json.
fn query_error(e: QueryRejection) -> Response {
    bad_request(&e.body_text())
}

fn add_amounts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (c, m) in from {
        *into.entry(c.clone()).or_default() += m;
    }
}

fn decimals(admin: &Admin, minor: &BTreeMap<String, u64>) -> BTreeMap<String, String> {
    minor
        .iter()
        .map(|(c, m)| (c.clone(), admin.decimal(c, *m)))
        .collect()
}

/// Totals of a range: per route, per day, overall.
struct Summary {
    from: String,
    to: String,
    days: Vec<String>,
    rows: Vec<DailyUsage>,
}

async fn load_summary(admin: &Admin, range: &DayRange) -> Result<Summary, StoreError> {
    let (from, to, days) = range.days()?;
    let rows = admin.ledger().usage(None, &from, &to).await?;
    Ok(Summary {
        from,
        to,
        days,
        rows,
    })
}

/// `GET /admin/v1/summary?from=&to=`: requests, revenue and units over a range of UTC days,
/// per route and per day (every day of the range, zeros included), from the daily aggregates.
pub(crate) async fn summary(
    State(admin): State<Admin>,
    q: Result<Query<DayRange>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return query_error(e),
    };
    let s = match load_summary(&admin, &q).await {
        Ok(s) => s,
        Err(e) => return range_error(e),
    };
    let mut routes: BTreeMap<String, DailyUsage> = BTreeMap::new();
    let mut by_day: BTreeMap<String, DailyUsage> = s
        .days
        .iter()
        .map(|d| {
            (
                d.clone(),
                DailyUsage {
                    day: d.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut total = DailyUsage::default();
    for r in &s.rows {
        let route = routes.entry(r.route.clone()).or_insert_with(|| DailyUsage {
            route: r.route.clone(),
            ..Default::default()
        });
        route.requests += r.requests;
        add_amounts(&mut route.amount_minor, &r.amount_minor);
        add_amounts(&mut route.units, &r.units);
        if let Some(day) = by_day.get_mut(&r.day) {
            day.requests += r.requests;
            add_amounts(&mut day.amount_minor, &r.amount_minor);
        }
        total.requests += r.requests;
        add_amounts(&mut total.amount_minor, &r.amount_minor);
    }
    let routes: Vec<Value> = routes
        .into_values()
        .map(|r| json!({"route": r.route, "requests": r.requests, "amount": decimals(&admin, &r.amount_minor), "amount_minor": r.amount_minor, "units": r.units}))
        .collect();
    let days: Vec<Value> = by_day
        .into_values()
        .map(|d| json!({"day": d.day, "requests": d.requests, "amount": decimals(&admin, &d.amount_minor), "amount_minor": d.amount_minor}))
        .collect();
    Json(json!({
        "from": s.from,
        "to": s.to,
        "currencies": admin.currency_codes(),
        "totals": {"requests": total.requests, "amount": decimals(&admin, &total.amount_minor), "amount_minor": total.amount_minor},
        "routes": routes,
        "days": days,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct TrafficQuery {
    /// How many minutes back (1..=1440, default 60).
    minutes: Option<usize>,
}

/// `GET /admin/v1/traffic?minutes=60`: this process's paid requests, 402s and refusals by
/// code, per minute (see [`tollgate_middleware::traffic`]).
pub(crate) async fn traffic(
    State(admin): State<Admin>,
    q: Result<Query<TrafficQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return query_error(e),
    };
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=tollgate_middleware::traffic::MINUTES).contains(&minutes) {
        return bad_request("minutes must be 1 to 1440");
    }
    let series = tollgate_middleware::traffic::global().last(SystemClock.now_ms(), minutes);
    let mut paid = 0;
    let mut status_402 = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut revenue: BTreeMap<String, u64> = BTreeMap::new();
    let rows: Vec<Value> = series
        .iter()
        .map(|m| {
            paid += m.paid;
            status_402 += m.status_402;
            add_amounts(&mut refused, &m.refused);
            add_amounts(&mut revenue, &m.revenue_minor);
            json!({"minute_ms": m.minute_ms, "paid": m.paid, "status_402": m.status_402, "refused": m.refused, "revenue": decimals(&admin, &m.revenue_minor)})
        })
        .collect();
    let refused_total: u64 = refused.values().sum();
    Json(json!({
        "minutes": minutes,
        "bucket_secs": 60,
        "scope": "process",
        "totals": {"paid": paid, "status_402": status_402, "refused": refused, "refused_total": refused_total, "revenue": decimals(&admin, &revenue), "revenue_minor": revenue},
        "series": rows,
    }))
    .into_response()
}

/// `GET /admin/v1/payers?from=&to=&limit=&currency=`: the payers who spent most over a range of
/// UTC days (by amount in `currency`, default the first configured one; then by requests), each
/// with its balances, holds in flight and blocked state.
pub(crate) async fn top_payers(
    State(admin): State<Admin>,
    q: Result<Query<DayRange>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return query_error(e),
    };
    let (from, to, _) = match q.days() {
        Ok(r) => r,
        Err(e) => return range_error(e),
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return bad_request("limit must be 1 to 200");
    }
    let currency = match &q.currency {
        Some(c) if admin.currency(c).is_none() => {
            return bad_request("currency: not a configured currency")
        }
        Some(c) => c.clone(),
        None => admin
            .currency_codes()
            .into_iter()
            .next()
            .unwrap_or_default(),
    };
    let store = admin.paywall().store().clone();
    let mut totals = match admin.ledger().payer_totals(&from, &to).await {
        Ok(t) => t,
        Err(e) => return range_error(e),
    };
    let spent = |p: &tollgate_middleware::store::PayerSpend| {
        p.amount_minor.get(&currency).copied().unwrap_or(0)
    };
    totals.sort_by(|a, b| {
        spent(b)
            .cmp(&spent(a))
            .then(b.requests.cmp(&a.requests))
            .then(a.payer.cmp(&b.payer))
    });
    let count = totals.len();
    totals.truncate(limit);
    let mut payers = Vec::with_capacity(totals.len());
    for p in totals {
        let account = match store.account(&p.payer).await {
            Ok(a) => a,
            Err(e) => return store_error(e),
        };
        let mut row = admin.paywall().account_json(&p.payer, &account);
        row["blocked"] = account.blocked.into();
        row["requests"] = p.requests.into();
        row["spent"] = json!(decimals(&admin, &p.amount_minor));
        row["spent_minor"] = json!(p.amount_minor);
        payers.push(row);
    }
    Json(json!({
        "from": from,
        "to": to,
        "currency": currency,
        "limit": limit,
        "payers_in_range": count,
        "payers": payers,
    }))
    .into_response()
}

fn svg(body: String) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    // Opened directly, the picture can run nothing and load nothing.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn to_f64(admin: &Admin, currency: &str, minor: u64) -> f64 {
    admin.decimal(currency, minor).parse().unwrap_or(0.0)
}

/// `GET /admin/v1/charts/{name}`: `revenue.svg?from=&to=&currency=` (revenue per day, stacked
/// by route), `requests.svg?from=&to=` (paid requests per day by route) or
/// `traffic.svg?minutes=` (this process's paid requests, 402s and other refusals per minute).
pub(crate) async fn chart(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let range = DayRange {
        from: q.get("from").cloned(),
        to: q.get("to").cloned(),
        limit: None,
        currency: q.get("currency").cloned(),
    };
    match name.as_str() {
        "revenue.svg" | "requests.svg" => {
            let s = match load_summary(&admin, &range).await {
                Ok(s) => s,
                Err(e) => return range_error(e),
            };
            let revenue = name == "revenue.svg";
            let currency = range
                .currency
                .clone()
                .or_else(|| admin.currency_codes().into_iter().next())
                .unwrap_or_default();
            let index: BTreeMap<&str, usize> = s
                .days
                .iter()
                .enumerate()
                .map(|(i, d)| (d.as_str(), i))
                .collect();
            let mut by_route: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in &s.rows {
                let Some(i) = index.get(r.day.as_str()) else {
                    continue;
                };
                let values = by_route
                    .entry(r.route.clone())
                    .or_insert_with(|| vec![0.0; s.days.len()]);
                values[*i] += if revenue {
                    to_f64(
                        &admin,
                        &currency,
                        r.amount_minor.get(&currency).copied().unwrap_or(0),
                    )
                } else {
                    r.requests as f64
                };
            }
            let chart = BarChart {
                title: if revenue {
                    format!(
                        "Revenue per day by route ({currency}), {} to {}",
                        s.from, s.to
                    )
                } else {
                    format!("Paid requests per day by route, {} to {}", s.from, s.to)
                },
                unit: if revenue { currency } else { "requests".into() },
                labels: s
                    .days
                    .iter()
                    .map(|d| format!("{}-{}", d.get(4..6).unwrap_or(""), d.get(6..).unwrap_or("")))
                    .collect(),
                series: by_route
                    .into_iter()
                    .map(|(name, values)| Series { name, values })
                    .collect(),
            };
            svg(chart.render())
        }
        "traffic.svg" => {
            let minutes = q
                .get("minutes")
                .and_then(|m| m.parse::<usize>().ok())
                .unwrap_or(60);
            if !(1..=tollgate_middleware::traffic::MINUTES).contains(&minutes) {
                return bad_request("minutes must be 1 to 1440");
            }
            let series = tollgate_middleware::traffic::global().last(SystemClock.now_ms(), minutes);
            let labels = series
                .iter()
                .map(|m| {
                    let mins = m.minute_ms.div_euclid(60_000).rem_euclid(1440);
                    format!("{:02}:{:02}", mins / 60, mins % 60)
                })
                .collect();
            let paid = series.iter().map(|m| m.paid as f64).collect();
            let s402 = series.iter().map(|m| m.status_402 as f64).collect();
            let other = series
                .iter()
                .map(|m| m.refused.values().sum::<u64>().saturating_sub(m.status_402) as f64)
                .collect();
            let chart = BarChart {
                title: format!(
                    "This gateway, last {minutes} min (UTC): paid vs 402 vs other refusals"
                ),
                unit: "requests".into(),
                labels,
                series: vec![
                    Series {
                        name: "paid".into(),
                        values: paid,
                    },
                    Series {
                        name: "402".into(),
                        values: s402,
                    },
                    Series {
                        name: "other refusals".into(),
                        values: other,
                    },
                ],
            };
            svg(chart.render())
        }
        _ => problem(ErrorCode::RouteNotFound, "no such chart"),
    }
}

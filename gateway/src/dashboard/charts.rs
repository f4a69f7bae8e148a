//! `GET /admin/v1/charts/{name}`: the dashboard's SVG charts, drawn from the same figures as
//! the JSON endpoints. Amounts are summed in atomic units and labelled exactly (`0.000068 USD`);
//! floating point is for the geometry only.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use tollgate_middleware::{Clock, ErrorCode, SystemClock};

use super::reports::{load_summary, range_error, DayRange, Summary};
use super::svg::{BarChart, Series};
use crate::admin::{bad_request, Admin};
use crate::proxy::problem;

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

/// `mm-dd` of a `yyyymmdd` day.
fn day_label(d: &str) -> String {
    format!("{}-{}", d.get(4..6).unwrap_or(""), d.get(6..).unwrap_or(""))
}

/// Revenue (in `currency`) or paid requests per day, one series per route.
fn per_day(admin: &Admin, s: &Summary, currency: Option<&str>) -> Vec<Series> {
    let index: BTreeMap<&str, usize> = s
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    // Exact per route and day: atomic units (revenue) or requests.
    let mut by_route: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &s.rows {
        let Some(i) = index.get(r.day.as_str()) else {
            continue;
        };
        let v = match currency {
            Some(c) => r.amount_minor.get(c).copied().unwrap_or(0),
            None => r.requests,
        };
        let values = by_route
            .entry(r.route.as_str())
            .or_insert_with(|| vec![0; s.days.len()]);
        values[*i] += v;
    }
    let text = |v: u64| match currency {
        Some(c) => admin.money(c, v),
        None => v.to_string(),
    };
    by_route
        .into_iter()
        .filter(|(_, v)| v.iter().any(|x| *x > 0))
        .map(|(name, values)| Series {
            name: name.to_owned(),
            values: values
                .iter()
                .map(|v| match currency {
                    Some(c) => admin.decimal(c, *v).parse().unwrap_or(0.0),
                    None => *v as f64,
                })
                .collect(),
            labels: values.iter().map(|v| text(*v)).collect(),
            total: Some(text(values.iter().sum())),
        })
        .collect()
}

async fn day_chart(admin: &Admin, range: &DayRange, revenue: bool) -> Response {
    let s = match load_summary(admin, range).await {
        Ok(s) => s,
        Err(e) => return range_error(e),
    };
    let currency = range
        .currency
        .clone()
        .or_else(|| admin.currency_codes().into_iter().next())
        .unwrap_or_default();
    let chart = BarChart {
        title: if revenue {
            format!(
                "Revenue per day by route ({currency}), {} to {}",
                s.from, s.to
            )
        } else {
            format!("Paid requests per day by route, {} to {}", s.from, s.to)
        },
        unit: if revenue {
            currency.clone()
        } else {
            "requests".into()
        },
        labels: s.days.iter().map(|d| day_label(d)).collect(),
        series: per_day(admin, &s, revenue.then_some(currency.as_str())),
    };
    svg(chart.render())
}

fn traffic_chart(minutes: usize) -> Response {
    let series = tollgate_middleware::traffic::global().last(SystemClock.now_ms(), minutes);
    let labels = series
        .iter()
        .map(|m| {
            let mins = m.minute_ms.div_euclid(60_000).rem_euclid(1440);
            format!("{:02}:{:02}", mins / 60, mins % 60)
        })
        .collect();
    let paid = series.iter().map(|m| m.paid as f64).collect();
    let challenges = series.iter().map(|m| m.challenges as f64).collect();
    let other = series
        .iter()
        .map(|m| m.refused.values().sum::<u64>().saturating_sub(m.challenges) as f64)
        .collect();
    let chart = BarChart {
        title: format!(
            "This gateway, last {minutes} min (UTC): paid vs 402 challenges vs other refusals"
        ),
        unit: "requests".into(),
        labels,
        series: vec![
            Series::plain("paid", paid),
            Series::plain("402 challenges", challenges),
            Series::plain("other refusals", other),
        ],
    };
    svg(chart.render())
}

/// `GET /admin/v1/charts/{name}`: `revenue.svg?from=&to=&currency=` (revenue per day, stacked
/// by route), `requests.svg?from=&to=` (paid requests per day by route) or
/// `traffic.svg?minutes=` (this process's paid requests, 402 challenges and other refusals
/// per minute).
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
            if range
                .currency
                .as_deref()
                .is_some_and(|c| admin.currency(c).is_none())
            {
                return bad_request("currency: not a configured currency");
            }
            day_chart(&admin, &range, name == "revenue.svg").await
        }
        "traffic.svg" => {
            let minutes = match q.get("minutes").map(|m| m.parse::<usize>()) {
                None => 60,
                Some(Ok(m)) if (1..=tollgate_middleware::traffic::MINUTES).contains(&m) => m,
                Some(_) => return bad_request("minutes must be 1 to 1440"),
            };
            traffic_chart(minutes)
        }
        _ => problem(ErrorCode::RouteNotFound, "no such chart"),
    }
}

//! The dashboard's read endpoints: totals over a range of days (from the store's daily
//! aggregates), this process's traffic per minute and per route (conversion, upstream), and
//! the top payers. The charts drawn from the same figures are in [`super::charts`].
//!
//! Amounts are summed in atomic units (integers) and shown as decimal strings, as everywhere in
//! the admin API.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_middleware::store::{add_days, days_between, utc_day, DailyUsage};
use tollgate_middleware::traffic::RouteTraffic;
use tollgate_middleware::{Clock, StoreError, SystemClock};

use crate::admin::{bad_request, store_error, Admin};

/// A range of UTC days; both ends default (to today, from six days before `to`).
#[derive(Debug, Deserialize)]
pub(crate) struct DayRange {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
    /// Payer listing: how many (default 20, at most 200).
    pub(super) limit: Option<usize>,
    /// Payer listing and revenue chart: the currency to rank / draw by.
    pub(super) currency: Option<String>,
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

pub(super) fn range_error(e: StoreError) -> Response {
    match e {
        StoreError::Protocol(detail) => bad_request(&detail),
        other => store_error(other),
    }
}

/// A parsed query string; one that does not parse (e.g. `limit=abc`) is answered 400
/// `invalid_request`, as problem+json.
pub(crate) struct ProblemQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ProblemQuery<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(ProblemQuery(q)),
            Err(e) => Err(bad_request(&e.body_text())),
        }
    }
}

fn add_amounts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (c, m) in from {
        *into.entry(c.clone()).or_default() += m;
    }
}

pub(super) fn decimals(admin: &Admin, minor: &BTreeMap<String, u64>) -> BTreeMap<String, String> {
    minor
        .iter()
        .map(|(c, m)| (c.clone(), admin.decimal(c, *m)))
        .collect()
}

/// Each configured currency's scale (atomic units per unit: 10^scale), for exact formatting.
fn scales(admin: &Admin) -> BTreeMap<String, u32> {
    admin
        .currency_codes()
        .into_iter()
        .filter_map(|c| admin.currency(&c).map(|cur| (c, cur.scale())))
        .collect()
}

/// Totals of a range: per route, per day, overall.
pub(super) struct Summary {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) days: Vec<String>,
    pub(super) rows: Vec<DailyUsage>,
}

pub(super) async fn load_summary(admin: &Admin, range: &DayRange) -> Result<Summary, StoreError> {
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
    ProblemQuery(q): ProblemQuery<DayRange>,
) -> Response {
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
        "scales": scales(&admin),
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

/// Paid requests per 402 challenge, in percent with one decimal (`"66.7"`), rounded half up
/// in integers; `None` without challenges. Above 100 when payers with tokens or balances pay
/// without being challenged first.
pub(crate) fn conversion_pct(paid: u64, challenges: u64) -> Option<String> {
    if challenges == 0 {
        return None;
    }
    let tenths = (u128::from(paid) * 1000 + u128::from(challenges) / 2) / u128::from(challenges);
    Some(format!("{}.{}", tenths / 10, tenths % 10))
}

/// A latency bound in microseconds as milliseconds (exact for the histogram's bounds).
fn ms(us: Option<u64>) -> Value {
    us.map_or(Value::Null, |us| json!(us as f64 / 1000.0))
}

/// One route's traffic over the window, as the API shows it.
fn route_json(admin: &Admin, route: &str, t: &RouteTraffic) -> Value {
    let u = &t.upstream;
    json!({
        "route": route,
        "paid": t.paid,
        "challenges": t.challenges,
        "refused_other": t.refused_other,
        "conversion_pct": conversion_pct(t.paid, t.challenges),
        "revenue": decimals(admin, &t.revenue_minor),
        "revenue_minor": t.revenue_minor,
        "upstream": {
            "answered": u.answered,
            "status_5xx": u.status_5xx,
            "unreachable": u.unreachable,
            "timeouts": u.timeouts,
            "errors": u.errors(),
            "p50_ms": ms(u.latency.quantile_us(0.5)),
            "p95_ms": ms(u.latency.quantile_us(0.95)),
        },
    })
}

/// `GET /admin/v1/traffic?minutes=60`: this process's paid requests, 402 challenges, other
/// refusals by code and revenue per minute, and per route over the window: the 402-to-paid
/// conversion and what the upstream did (answers, 5xx, unreachable, timeouts, p50/p95 time to
/// the response head). See [`tollgate_middleware::traffic`].
pub(crate) async fn traffic(
    State(admin): State<Admin>,
    ProblemQuery(q): ProblemQuery<TrafficQuery>,
) -> Response {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=tollgate_middleware::traffic::MINUTES).contains(&minutes) {
        return bad_request("minutes must be 1 to 1440");
    }
    let series = tollgate_middleware::traffic::global().last(SystemClock.now_ms(), minutes);
    let mut paid = 0;
    let mut challenges = 0;
    let mut status_402 = 0;
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut revenue: BTreeMap<String, u64> = BTreeMap::new();
    let rows: Vec<Value> = series
        .iter()
        .map(|m| {
            paid += m.paid;
            challenges += m.challenges;
            status_402 += m.status_402;
            add_amounts(&mut refused, &m.refused);
            add_amounts(&mut revenue, &m.revenue_minor);
            let refused_total: u64 = m.refused.values().sum();
            json!({"minute_ms": m.minute_ms, "paid": m.paid, "challenges": m.challenges, "refused_other": refused_total.saturating_sub(m.challenges), "status_402": m.status_402, "refused": m.refused, "revenue": decimals(&admin, &m.revenue_minor)})
        })
        .collect();
    let refused_total: u64 = refused.values().sum();
    // Every configured route (in match order, zeros included), then any other seen.
    let mut by_route = tollgate_middleware::traffic::by_route(&series);
    let mut routes: Vec<Value> = Vec::new();
    for m in &admin.gateway().inner().routes {
        let id = &m.route.id;
        let t = by_route.remove(id).unwrap_or_default();
        routes.push(route_json(&admin, id, &t));
    }
    routes.extend(by_route.iter().map(|(id, t)| route_json(&admin, id, t)));
    Json(json!({
        "minutes": minutes,
        "bucket_secs": 60,
        "scope": "process",
        "totals": {"paid": paid, "challenges": challenges, "refused_other": refused_total.saturating_sub(challenges), "conversion_pct": conversion_pct(paid, challenges), "status_402": status_402, "refused": refused, "refused_total": refused_total, "revenue": decimals(&admin, &revenue), "revenue_minor": revenue},
        "routes": routes,
        "series": rows,
    }))
    .into_response()
}

/// `GET /admin/v1/payers?from=&to=&limit=&currency=`: the payers who spent most over a range of
/// UTC days (by amount in `currency`, default the first configured one; then by requests), each
/// with its balances, holds in flight and blocked state.
pub(crate) async fn top_payers(
    State(admin): State<Admin>,
    ProblemQuery(q): ProblemQuery<DayRange>,
) -> Response {
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

//! The usage-event export of the admin API: `GET /admin/v1/events` (NDJSON) and
//! `GET /admin/v1/events.csv`, oldest first from a cursor or newest first (the dashboard's
//! recent payments), filtered by route, payer and time on the server.
//!
//! A filter is applied while the ledger is read page by page from its id index, so a query
//! never loads more than it answers; a scan stops after `SCAN_MAX` (100,000) events, at the time
//! bound, or at the end of the ledger. The `Tollgate-Next-After` (or `-Before`) header names
//! the last event *examined*, so asking again from it continues where the scan stopped, and
//! `Tollgate-More: true` says that it may find more.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;
use serde_json::Value;
use tollgate_middleware::store::{EventPage, LedgerStore, UsageEvent};
use tollgate_middleware::StoreError;

use crate::admin::{bad_request, store_error, Admin};

/// At most this many events are examined for one answer (a filter that matches rarely).
pub(crate) const SCAN_MAX: usize = 100_000;

/// Events are in id order, which follows their time up to the clocks' skew between replicas
/// and Redis: a newest-first scan stops only this far past `since`.
const SKEW_MS: i64 = 5 * 60_000;

const NEXT_AFTER: HeaderName = HeaderName::from_static("tollgate-next-after");
const NEXT_BEFORE: HeaderName = HeaderName::from_static("tollgate-next-before");
const MORE: HeaderName = HeaderName::from_static("tollgate-more");

/// The order of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Oldest first, from `after`.
    Asc,
    /// Newest first, from `before`.
    Desc,
}

/// A validated events query.
#[derive(Debug, Clone)]
struct EventQuery {
    order: Order,
    /// `after` (asc) or `before` (desc): a ledger id.
    cursor: Option<String>,
    limit: usize,
    route: Option<String>,
    payer: Option<String>,
    /// Unix ms, inclusive.
    since: Option<i64>,
    /// Unix ms, exclusive.
    until: Option<i64>,
}

const PARAMS: [&str; 8] = [
    "after", "before", "limit", "order", "route", "payer", "since", "until",
];

/// A ledger id: `<ms>-<seq>-<bucket>`, three decimal integers.
fn is_ledger_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn time_param(q: &BTreeMap<String, String>, name: &str) -> Result<Option<i64>, String> {
    match q.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(ms) if (0..=253_402_300_799_999).contains(&ms) => Ok(Some(ms)),
            _ => Err(format!("{name} must be a time in unix milliseconds")),
        },
    }
}

fn text_param(
    q: &BTreeMap<String, String>,
    name: &str,
    max: usize,
) -> Result<Option<String>, String> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > max => Err(format!("{name} must be 1 to {max} bytes")),
        Some(v) => Ok(Some(v.clone())),
    }
}

impl EventQuery {
    /// Parse and check the query string: every mistake is a 400 `invalid_request` naming it.
    fn parse(
        q: &BTreeMap<String, String>,
        max_limit: usize,
        default_limit: usize,
    ) -> Result<Self, String> {
        if let Some(unknown) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
            return Err(format!(
                "unknown parameter {unknown:?} (one of: {})",
                PARAMS.join(", ")
            ));
        }
        let order = match q.get("order").map(String::as_str) {
            None | Some("asc") => Order::Asc,
            Some("desc") => Order::Desc,
            Some(_) => return Err("order must be asc or desc".into()),
        };
        let cursor_name = match order {
            Order::Asc => "after",
            Order::Desc => "before",
        };
        let wrong = if order == Order::Asc {
            "before"
        } else {
            "after"
        };
        if q.get(wrong).is_some_and(|v| !v.is_empty()) {
            return Err(format!(
                "{wrong} goes with order={}",
                if order == Order::Asc { "desc" } else { "asc" }
            ));
        }
        let cursor = match q.get(cursor_name).map(String::as_str) {
            None | Some("") => None,
            Some(id) if is_ledger_id(id) => Some(id.to_owned()),
            Some(_) => {
                return Err(format!(
                    "{cursor_name} must be a ledger id (<ms>-<seq>-<bucket>)"
                ))
            }
        };
        let limit = match q.get("limit") {
            None => default_limit,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=max_limit).contains(&n) => n,
                _ => return Err(format!("limit must be an integer from 1 to {max_limit}")),
            },
        };
        let since = time_param(q, "since")?;
        let until = time_param(q, "until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err("since must be before until".into());
            }
        }
        Ok(EventQuery {
            order,
            cursor,
            limit,
            route: text_param(q, "route", 200)?,
            payer: text_param(q, "payer", 512)?,
            since,
            until,
        })
    }

    fn filtered(&self) -> bool {
        self.route.is_some() || self.payer.is_some() || self.since.is_some() || self.until.is_some()
    }

    fn matches(&self, e: &UsageEvent) -> bool {
        self.route.as_ref().is_none_or(|r| *r == e.route)
            && self.payer.as_ref().is_none_or(|p| *p == e.payer)
            && self.since.is_none_or(|s| e.time_ms >= s)
            && self.until.is_none_or(|u| e.time_ms < u)
    }

    /// Whether the scan has gone past the time bound in its direction (nothing later matches).
    fn past_bound(&self, e: &UsageEvent) -> bool {
        match self.order {
            Order::Desc => self
                .since
                .is_some_and(|s| e.time_ms < s.saturating_sub(SKEW_MS)),
            Order::Asc => self
                .until
                .is_some_and(|u| e.time_ms > u.saturating_add(SKEW_MS)),
        }
    }
}

/// What a scan found.
struct Scan {
    events: Vec<UsageEvent>,
    /// The last event examined (the cursor to continue from).
    last: Option<String>,
    /// Whether asking again from `last` may find more.
    more: bool,
}

async fn scan(ledger: &dyn LedgerStore, q: &EventQuery) -> Result<Scan, StoreError> {
    let page_size = if q.filtered() {
        1000
    } else {
        q.limit.min(1000)
    };
    let mut cursor = q.cursor.clone();
    let mut events = Vec::new();
    let mut examined = 0;
    loop {
        let page = match q.order {
            Order::Asc => EventPage::After {
                after: cursor.as_deref(),
                limit: page_size,
            },
            Order::Desc => EventPage::Before {
                before: cursor.as_deref(),
                limit: page_size,
            },
        };
        let page = ledger.events(page).await?;
        let full = page.len() == page_size;
        for e in page {
            examined += 1;
            if q.past_bound(&e) {
                return Ok(Scan {
                    events,
                    last: cursor,
                    more: false,
                });
            }
            cursor = Some(e.id.clone());
            if q.matches(&e) {
                events.push(e);
                if events.len() == q.limit {
                    return Ok(Scan {
                        events,
                        last: cursor,
                        more: true,
                    });
                }
            }
            if examined >= SCAN_MAX {
                return Ok(Scan {
                    events,
                    last: cursor,
                    more: true,
                });
            }
        }
        if !full {
            return Ok(Scan {
                events,
                last: cursor,
                more: false,
            });
        }
    }
}

/// One usage event as exported (decimal amount alongside the atomic units).
pub fn event_json(e: &UsageEvent) -> Value {
    e.to_json()
}

/// The query string's pairs (one that does not decode is a 400 problem, not axum's plain text).
type Pairs = Result<Query<BTreeMap<String, String>>, QueryRejection>;

async fn run(
    admin: &Admin,
    q: Pairs,
    (max, default): (usize, usize),
) -> Result<(EventQuery, Scan), Response> {
    let Query(q) = q.map_err(|e| bad_request(&e.body_text()))?;
    let query = EventQuery::parse(&q, max, default).map_err(|e| bad_request(&e))?;
    let found = scan(admin.ledger().as_ref(), &query)
        .await
        .map_err(store_error)?;
    Ok((query, found))
}

fn respond(content_type: &'static str, body: String, q: &EventQuery, s: &Scan) -> Response {
    let mut res = Response::new(Body::from(body));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = s
        .last
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        h.insert(
            if q.order == Order::Asc {
                NEXT_AFTER
            } else {
                NEXT_BEFORE
            },
            v,
        );
    }
    h.insert(
        MORE,
        HeaderValue::from_static(if s.more { "true" } else { "false" }),
    );
    res
}

/// `GET /admin/v1/events?order=&after=|before=&limit=&route=&payer=&since=&until=`: usage
/// events as NDJSON (limit 1 to 10000, default 1000).
pub(crate) async fn events(State(admin): State<Admin>, q: Pairs) -> Response {
    let (query, found) = match run(&admin, q, (10_000, 1000)).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    let mut out = String::new();
    for e in &found.events {
        out.push_str(&event_json(e).to_string());
        out.push('\n');
    }
    respond("application/x-ndjson", out, &query, &found)
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 19] = [
    "id",
    "time",
    "time_ms",
    "route",
    "payer",
    "method",
    "kind",
    "credential_kind",
    "credential",
    "amount",
    "currency",
    "amount_minor",
    "scale",
    "uncharged_minor",
    "units",
    "upstream_status",
    "voids",
    "reservation",
    "captured",
];

pub(crate) use tollgate_middleware::store::iso_time;

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote, CR or LF, quotes doubled.
/// A text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`, so a spreadsheet
/// shows it instead of running it as a formula (payer ids and routes are not ours to trust).
pub(crate) fn csv_field(value: &str, text: bool) -> String {
    let neutral = if text && value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if neutral.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// One event as a CSV record (without the line end), in [`CSV_COLUMNS`] order.
pub fn csv_record(e: &UsageEvent) -> String {
    let text = |v: &str| csv_field(v, true);
    let kind = if e.voids.is_some() { "void" } else { "charge" };
    let credential_kind = e.credential.split(':').next().unwrap_or_default();
    [
        text(&e.id),
        iso_time(e.time_ms),
        e.time_ms.to_string(),
        text(&e.route),
        text(&e.payer),
        text(&e.method),
        kind.to_owned(),
        text(credential_kind),
        text(&e.credential),
        e.amount().to_string(),
        text(&e.currency),
        e.amount_minor.to_string(),
        e.scale.to_string(),
        e.uncharged_minor.to_string(),
        csv_field(&serde_json::to_string(&e.units).unwrap_or_default(), false),
        e.known_upstream_status()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        text(e.voids.as_deref().unwrap_or("")),
        text(&e.reservation),
        e.captured_at().unwrap_or_default().to_owned(),
    ]
    .join(",")
}

/// `GET /admin/v1/events.csv` with the same parameters as [`events`] (limit 1 to 100000,
/// default 10000): a header row, then one record per event, CRLF line ends.
pub(crate) async fn events_csv(State(admin): State<Admin>, q: Pairs) -> Response {
    let (query, found) = match run(&admin, q, (100_000, 10_000)).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    for e in &found.events {
        out.push_str(&csv_record(e));
        out.push_str("\r\n");
    }
    let mut res = respond(
        "text/csv; charset=utf-8; header=present",
        out,
        &query,
        &found,
    );
    res.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"tollgate-events.csv\""),
    );
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(q: &[(&str, &str)]) -> Result<EventQuery, String> {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EventQuery::parse(&q, 10_000, 1000)
    }

    #[test]
    fn bad_parameters_are_named() {
        let long = "r".repeat(201);
        for (q, want) in [
            (vec![("limit", "0")], "limit must be"),
            (vec![("limit", "10001")], "limit must be"),
            (vec![("order", "newest")], "order must be"),
            (vec![("before", "1-2-3")], "before goes with order=desc"),
            (
                vec![("order", "desc"), ("after", "1-2-3")],
                "after goes with order=asc",
            ),
            (vec![("after", "x")], "after must be a ledger id"),
            (vec![("since", "yesterday")], "since must be a time"),
            (
                vec![("since", "5"), ("until", "5")],
                "since must be before until",
            ),
            (vec![("payer", "")], "payer must be 1 to 512"),
            (vec![("route", long.as_str())], "route must be"),
            (vec![("payer_id", "x")], "unknown parameter \"payer_id\""),
        ] {
            let err = parse(&q).unwrap_err();
            assert!(err.starts_with(want), "{q:?}: {err}");
        }
        let q = parse(&[("order", "desc"), ("before", "17-3-0"), ("payer", "a,b")]).unwrap();
        assert_eq!(
            (q.order, q.cursor.as_deref(), q.limit),
            (Order::Desc, Some("17-3-0"), 1000)
        );
        // An empty cursor is no cursor (the export's first page).
        assert_eq!(parse(&[("after", "")]).unwrap().cursor, None);
    }

    #[test]
    fn csv_fields_are_escaped_and_neutralized() {
        assert_eq!(csv_field("plain", true), "plain");
        assert_eq!(csv_field("a,b", true), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"", true), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines", true), "\"two\nlines\"");
        assert_eq!(csv_field("=SUM(A1)", true), "'=SUM(A1)");
        assert_eq!(csv_field("-1,2", true), "\"'-1,2\"");
        assert_eq!(csv_field("{\"unit\":7}", false), "\"{\"\"unit\"\":7}\"");
        assert_eq!(iso_time(1_795_370_405_123), "2026-11-22T18:00:05.123Z");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert!(
            is_ledger_id("1795370405123-0-15") && !is_ledger_id("1-2") && !is_ledger_id("a-b-c")
        );
    }
}

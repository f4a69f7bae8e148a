//! `GET <agent api>/usage`: the caller's own usage events -- its bill -- newest first, as NDJSON
//! (default) or CSV (`format=csv`), authenticated by its access token like the other agent
//! endpoints. Read from the ledger database when `[ledger]` is set, else from the store, through
//! [`tollgate_middleware::store::LedgerStore::payer_events`]. The events are the admin export's
//! (same fields, same CSV columns), limited to the caller's own: a payer never sees another's.
//!
//! Query: `limit` (1 to 1000, default 100), `before` (an event id: the page after it, as the
//! `Tollgate-Next-Before` header of a full page names), `format` (`ndjson` or `csv`).

use std::collections::BTreeMap;

use axum::extract::Query;

use super::*;
use crate::dashboard::events::{csv_record, event_json, CSV_COLUMNS};
use crate::proxy::problem;

/// The largest page.
const MAX_LIMIT: usize = 1000;

fn bad(detail: &str) -> Response {
    problem(tollgate_middleware::ErrorCode::InvalidRequest, detail)
}

/// The request's query pairs, checked: `(before, limit, csv)`, or what is wrong with them
/// (also the agent MCP server's `usage` tool arguments).
pub(crate) fn parse(q: &BTreeMap<String, String>) -> Result<(Option<String>, usize, bool), String> {
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "limit" | "before" | "format"))
    {
        return Err(format!(
            "unknown parameter {k:?}: use limit, before, format"
        ));
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(format!("limit must be 1 to {MAX_LIMIT}, not {v:?}")),
        },
    };
    let before = match q.get("before") {
        None => None,
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            Some(v.clone())
        }
        Some(v) => {
            return Err(format!(
                "before must be an event id (as Tollgate-Next-Before gives), not {v:?}"
            ))
        }
    };
    let csv = match q.get("format").map(String::as_str) {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(v) => return Err(format!("format must be ndjson or csv, not {v:?}")),
    };
    Ok((before, limit, csv))
}

/// One page of `payer`'s events, newest first, and the cursor of the next page (a full page
/// has one); `Err` when the ledger is unreachable (logged here).
pub(crate) async fn page(
    gw: &Gateway,
    payer: &str,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<tollgate_middleware::UsageEvent>, Option<String>), ()> {
    let events = gw
        .ledger_reader()
        .payer_events(payer, before, limit)
        .await
        .map_err(|e| tracing::error!(error = %e, "usage: the ledger is unreachable"))?;
    let next = (events.len() == limit)
        .then(|| events.last().map(|e| e.id.clone()))
        .flatten();
    Ok((events, next))
}

/// Serve the bill.
pub(crate) async fn bill(
    gw: &Gateway,
    inner: &Inner,
    headers: &http::HeaderMap,
    uri: &http::Uri,
) -> Response {
    let payer = match inner.paywall.bearer_payer(headers) {
        Ok(p) => p,
        Err(refusal) => return (*refusal).map(Body::from),
    };
    let Ok(Query(q)) = Query::<BTreeMap<String, String>>::try_from_uri(uri) else {
        return bad("the query string does not decode");
    };
    let (before, limit, csv) = match parse(&q) {
        Ok(p) => p,
        Err(detail) => return bad(&detail),
    };
    let Ok((events, next)) = page(gw, &payer, before.as_deref(), limit).await else {
        return problem(
            tollgate_middleware::ErrorCode::StoreUnavailable,
            "the ledger is unreachable; retry later",
        );
    };
    let (content_type, body) = if csv {
        let mut out = CSV_COLUMNS.join(",");
        out.push_str("\r\n");
        for e in &events {
            out.push_str(&csv_record(e));
            out.push_str("\r\n");
        }
        ("text/csv; charset=utf-8", out)
    } else {
        let mut out = String::new();
        for e in &events {
            out.push_str(&event_json(e).to_string());
            out.push('\n');
        }
        ("application/x-ndjson", out)
    };
    let mut res = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        res.headers_mut()
            .insert(http::HeaderName::from_static("tollgate-next-before"), v);
    }
    res
}

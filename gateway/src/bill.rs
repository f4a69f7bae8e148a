//! `GET <agent api>/usage`: the caller's own usage events and refunds -- its bill -- newest
//! first, each line with its `type` (`charge`, `void`, `refund`), as NDJSON
//! (default) or CSV (`format=csv`), authenticated by its access token like the other agent
//! endpoints. Read from the ledger database when `[ledger]` is set, else from the store, through
//! [`tollgate_middleware::store::EventPage::Payer`]. The events are the admin export's
//! (same fields, same CSV columns), limited to the caller's own: a payer never sees another's.
//!
//! Query: `limit` (1 to 1000, default 100), `before` (an event id: the page after it, as the
//! `Tollgate-Next-Before` header of a full page names), `format` (`ndjson` or `csv`).

use std::collections::BTreeMap;

use axum::extract::Query;
use tollgate_middleware::paywall::RequestLine;
use tollgate_middleware::store::EventPage;

use super::*;
use crate::dashboard::events::{csv_record, event_json, CSV_COLUMNS};
use crate::proxy::problem;

/// The largest page.
const MAX_LIMIT: usize = 1000;

/// A newest-first listing's `limit` (1 to [`MAX_LIMIT`], default 100) and `before` cursor (a
/// ledger id: digits and dashes; `what` names it in the error).
pub(crate) fn page_params(
    q: &BTreeMap<String, String>,
    what: &str,
) -> Result<(usize, Option<String>), String> {
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
        Some(v) => return Err(format!("before must be {what}, not {v:?}")),
    };
    Ok((limit, before))
}

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
    let (limit, before) = page_params(q, "an event id (as Tollgate-Next-Before gives)")?;
    let csv = match q.get("format").map(String::as_str) {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(v) => return Err(format!("format must be ndjson or csv, not {v:?}")),
    };
    Ok((before, limit, csv))
}

/// One line of the bill: a usage event (a charge or a void) or a refund of one.
pub(crate) enum BillLine {
    /// A usage event.
    Event(tollgate_middleware::UsageEvent),
    /// A refund of one of the payer's charges.
    Refund(tollgate_middleware::store::RefundRecord),
}

impl BillLine {
    fn id(&self) -> &str {
        match self {
            BillLine::Event(e) => &e.id,
            BillLine::Refund(r) => &r.id,
        }
    }

    /// Newest first; at an equal id (Redis: two streams), the refund first.
    fn order(&self) -> (u64, u64, u64, u8) {
        let (ms, seq, b) = tollgate_middleware::store::event_order(self.id());
        (ms, seq, b, matches!(self, BillLine::Refund(_)).into())
    }

    /// The line as JSON: the admin export's fields with `type` (`charge`, `void`, `refund`).
    pub(crate) fn json(&self) -> serde_json::Value {
        let (mut v, kind) = match self {
            BillLine::Event(e) => (
                event_json(e),
                if e.voids.is_some() { "void" } else { "charge" },
            ),
            BillLine::Refund(r) => (crate::refunds::refund_json(r), "refund"),
        };
        if let Some(m) = v.as_object_mut() {
            m.insert("type".into(), kind.into());
        }
        v
    }

    fn csv(&self) -> String {
        match self {
            BillLine::Event(e) => csv_record(e),
            BillLine::Refund(r) => crate::refunds::refund_csv_record(r),
        }
    }
}

/// One page of `payer`'s bill, newest first -- usage events and refunds merged by id -- and
/// the cursor of the next page (a full page has one); `Err` when the ledger is unreachable
/// (logged here). A refund and an event with the same id (Redis streams are separate) are
/// never split across pages: the page then has one line more.
pub(crate) async fn page(
    gw: &Gateway,
    payer: &str,
    before: Option<&str>,
    limit: usize,
) -> Result<(Vec<BillLine>, Option<String>), ()> {
    let events = gw
        .ledger_reader()
        .events(EventPage::Payer {
            payer,
            before,
            limit,
        })
        .await
        .map_err(|e| tracing::error!(error = %e, "usage: the ledger is unreachable"))?;
    let q = tollgate_middleware::store::RefundQuery {
        payer: Some(payer.to_owned()),
        owed: None,
        before: before.map(str::to_owned),
        limit,
    };
    let refunds = match gw.ledger_db() {
        Some(db) => db.refunds(&q).await,
        None => gw.inner().paywall.store().refunds(&q).await,
    }
    .map_err(|e| tracing::error!(error = %e, "usage: the ledger is unreachable"))?;
    Ok(merge(events, refunds, limit))
}

/// Events and refunds (each newest first, at most `limit`, before the same cursor) as one
/// page of at most `limit` lines -- one more when the last would split a refund from an event
/// with the same id -- and the next page's cursor when the page is full.
fn merge(
    events: Vec<tollgate_middleware::UsageEvent>,
    refunds: Vec<tollgate_middleware::store::RefundRecord>,
    limit: usize,
) -> (Vec<BillLine>, Option<String>) {
    let mut lines: Vec<BillLine> = events
        .into_iter()
        .map(BillLine::Event)
        .chain(refunds.into_iter().map(BillLine::Refund))
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.order()));
    let mut keep = lines.len().min(limit);
    if let (Some(last), Some(next)) = (
        keep.checked_sub(1).and_then(|i| lines.get(i)),
        lines.get(keep),
    ) {
        if last.id() == next.id() {
            keep += 1;
        }
    }
    lines.truncate(keep);
    let next = (lines.len() >= limit)
        .then(|| lines.last().map(|l| l.id().to_owned()))
        .flatten();
    (lines, next)
}

/// Serve the bill.
pub(crate) async fn bill(
    gw: &Gateway,
    inner: &Inner,
    headers: &http::HeaderMap,
    uri: &http::Uri,
) -> Response {
    let line = RequestLine {
        method: &http::Method::GET,
        uri,
    };
    let payer = match inner.paywall.bearer_payer(headers, line).await {
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
    let Ok((lines, next)) = page(gw, &payer, before.as_deref(), limit).await else {
        return problem(
            tollgate_middleware::ErrorCode::StoreUnavailable,
            "the ledger is unreachable; retry later",
        );
    };
    let (content_type, body) = if csv {
        let mut out = CSV_COLUMNS.join(",");
        out.push_str("\r\n");
        for l in &lines {
            out.push_str(&l.csv());
            out.push_str("\r\n");
        }
        ("text/csv; charset=utf-8", out)
    } else {
        let mut out = String::new();
        for l in &lines {
            out.push_str(&l.json().to_string());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tollgate_middleware::store::RefundRecord;
    use tollgate_middleware::UsageEvent;

    fn event(id: &str) -> UsageEvent {
        UsageEvent {
            id: id.into(),
            time_ms: 1,
            payer: "p".into(),
            route: "r".into(),
            method: "GET".into(),
            units: Default::default(),
            unit_prices: Default::default(),
            currency: "USD".into(),
            scale: 6,
            amount_minor: 10,
            uncharged_minor: 0,
            credential: "token:p".into(),
            reservation: "h".into(),
            upstream_status: 200,
            voids: None,
        }
    }

    fn refund(id: &str) -> RefundRecord {
        RefundRecord {
            id: id.into(),
            time_ms: 1,
            event_id: "1-0-3".into(),
            charge_time_ms: 1,
            payer: "p".into(),
            route: "r".into(),
            credential: "token:p".into(),
            currency: "USD".into(),
            scale: 6,
            amount_minor: 1,
            reason: "x".into(),
            owed_to: None,
            credit_id: None,
            remaining_minor: 9,
        }
    }

    fn ids(lines: &[BillLine]) -> Vec<(String, &'static str)> {
        lines
            .iter()
            .map(|l| {
                let kind = match l {
                    BillLine::Event(_) => "event",
                    BillLine::Refund(_) => "refund",
                };
                (l.id().to_owned(), kind)
            })
            .collect()
    }

    #[test]
    fn a_refund_and_an_event_with_one_id_share_a_page() {
        // Redis: the refund stream and the event stream can give the same id.
        let events = vec![event("5-0-3"), event("1-0-3")];
        let refunds = vec![refund("5-0-3"), refund("3-0-3")];
        let (page, next) = merge(events.clone(), refunds.clone(), 1);
        assert_eq!(
            ids(&page),
            [("5-0-3".into(), "refund"), ("5-0-3".into(), "event")]
        );
        assert_eq!(next.as_deref(), Some("5-0-3"));
        let (page, next) = merge(events, refunds, 3);
        assert_eq!(
            ids(&page),
            [
                ("5-0-3".into(), "refund"),
                ("5-0-3".into(), "event"),
                ("3-0-3".into(), "refund")
            ]
        );
        assert_eq!(next.as_deref(), Some("3-0-3"));
        let (page, next) = merge(vec![event("1-0-3")], vec![], 3);
        assert_eq!(ids(&page), [("1-0-3".into(), "event")]);
        assert_eq!(next, None);
    }
}

//! The event export over HTTP: filters by route, payer and time applied on the server, newest
//! first with a cursor, bad parameters refused as 400 problems, and the CSV export equal to
//! the JSON events, field by field, with awkward payer ids quoted and neutralized.

use serde_json::Value;
use tollgate_e2e::*;

use super::seed::*;

/// RFC 4180: records of fields; quoted fields may hold commas, quotes (doubled) and line ends.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted field");
    assert!(
        row.is_empty() && field.is_empty(),
        "the last record ends with CRLF"
    );
    rows
}

/// Unix ms of `2026-11-22T10:26:45.123Z`.
pub(crate) fn parse_iso(t: &str) -> i64 {
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    assert_eq!((&t[4..5], &t[10..11], &t[23..]), ("-", "T", "Z"), "{t}");
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400_000 + n(11, 13) * 3_600_000 + n(14, 16) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// A text cell as the export writes it: a leading `'` before what a spreadsheet would run.
fn neutral(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// The CSV record an event must be.
fn expected_record(e: &Value) -> Vec<String> {
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    let n = |k: &str| e[k].to_string();
    let credential = s("credential");
    vec![
        s("id"),
        String::new(), // the time, checked against time_ms
        n("time_ms"),
        neutral(&s("route")),
        neutral(&s("payer")),
        neutral(&s("method")),
        if e["voids"].is_null() {
            "charge"
        } else {
            "void"
        }
        .to_owned(),
        neutral(credential.split(':').next().unwrap()),
        neutral(&credential),
        s("amount"),
        s("currency"),
        n("amount_minor"),
        n("scale"),
        n("uncharged_minor"),
        serde_json::to_string(&e["units"]).unwrap(),
        if e["upstream_status"].is_null() {
            String::new()
        } else {
            n("upstream_status")
        },
        neutral(&s("voids")),
        neutral(&s("reservation")),
        s("captured"),
    ]
}

fn assert_csv_equals(csv: &str, events: &[Value]) {
    let rows = parse_csv(csv);
    assert_eq!(
        rows[0].join(","),
        "id,time,time_ms,route,payer,method,kind,credential_kind,credential,amount,currency,\
         amount_minor,scale,uncharged_minor,units,upstream_status,voids,reservation,captured"
    );
    assert_eq!(rows.len() - 1, events.len());
    for (row, e) in rows[1..].iter().zip(events) {
        let mut want = expected_record(e);
        assert_eq!(
            parse_iso(&row[1]),
            e["time_ms"].as_i64().unwrap(),
            "{row:?}"
        );
        want[1] = row[1].clone();
        assert_eq!(*row, want);
    }
}

async fn bad(gw: &TestGateway, path: &str) -> (u16, String, String) {
    let res = admin_res(gw, path).await;
    let status = res.status().as_u16();
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/problem+json", "{path}");
    let body: Value = res.json().await.unwrap();
    (
        status,
        body["code"].as_str().unwrap().to_owned(),
        body["detail"].as_str().unwrap().to_owned(),
    )
}

/// Every page of `path` (with `&limit=` and the cursor appended), concatenated.
pub(crate) async fn paged(gw: &TestGateway, path: &str, cursor: &str, header: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut at = String::new();
    for _ in 0..50 {
        let (h, text) = admin_text(gw, &format!("{path}&limit=2&{cursor}={at}")).await;
        let page: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let more = h["tollgate-more"] == "true";
        assert_eq!(more, page.len() == 2, "{path}: more only on a full page");
        if let Some(next) = h.get(header) {
            at = next.to_str().unwrap().to_owned();
        }
        all.extend(page);
        if !more {
            return all;
        }
    }
    panic!("{path}: too many pages");
}

#[tokio::test]
async fn event_filters_cursors_and_csv_equal_the_ledger() {
    let _serial = SERIAL.lock().await;
    let s = seeded().await;
    let gw = &s.gw;
    for payer in [ODD_PAYER, FORMULA_PAYER] {
        let receipt = s.wallet.receipt("m", payer, "0.01");
        assert_eq!(gw.pay_get("/v1/echo", &receipt).await.status(), 200);
    }
    let all = ledger(gw).await;
    assert_eq!(all.len(), 9);
    let newest_first: Vec<Value> = all.iter().rev().cloned().collect();
    assert_eq!(
        events(gw, "/admin/v1/events?order=desc").await,
        newest_first
    );
    // Filters, both orders.
    let only = |f: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        all.iter().filter(|e| f(e)).cloned().collect()
    };
    let echo = only(&|e| e["route"] == "echo");
    assert_eq!(echo.len(), 7);
    assert_eq!(events(gw, "/admin/v1/events?route=echo").await, echo);
    let alice = only(&|e| e["payer"] == "alice");
    assert_eq!(alice.len(), 4);
    let got = events(gw, "/admin/v1/events?order=desc&payer=alice").await;
    assert_eq!(got, alice.iter().rev().cloned().collect::<Vec<_>>());
    let alice_echo = events(gw, "/admin/v1/events?route=echo&payer=alice").await;
    assert_eq!(alice_echo.len(), 3);
    let odd = events(gw, "/admin/v1/events?payer=eve%2C%20%22the%22%0Asecond").await;
    assert_eq!(odd.len(), 1);
    assert_eq!(odd[0]["payer"], ODD_PAYER);
    // Time: `since` inclusive, `until` exclusive, on the event's time.
    let t = all[4]["time_ms"].as_i64().unwrap();
    let since = only(&|e| e["time_ms"].as_i64().unwrap() >= t);
    let until = only(&|e| e["time_ms"].as_i64().unwrap() < t);
    assert_eq!(since.len() + until.len(), 9);
    assert!(!since.is_empty() && !until.is_empty());
    assert_eq!(
        events(gw, &format!("/admin/v1/events?since={t}")).await,
        since
    );
    let got = events(gw, &format!("/admin/v1/events?order=desc&until={t}")).await;
    assert_eq!(got, until.iter().rev().cloned().collect::<Vec<_>>());
    assert!(events(gw, "/admin/v1/events?since=0&until=1")
        .await
        .is_empty());
    // Cursors: pages of two, newest first and oldest first, filtered or not.
    assert_eq!(
        paged(
            gw,
            "/admin/v1/events?order=desc",
            "before",
            "tollgate-next-before"
        )
        .await,
        newest_first
    );
    assert_eq!(
        paged(
            gw,
            "/admin/v1/events?route=echo",
            "after",
            "tollgate-next-after"
        )
        .await,
        echo
    );
    // Bad values: 400 invalid_request, naming the parameter.
    let long_route = format!("/admin/v1/events?route={}", "r".repeat(201));
    for (path, says) in [
        ("/admin/v1/events?limit=0", "limit must be"),
        ("/admin/v1/events?limit=10001", "limit must be"),
        ("/admin/v1/events?limit=abc", "limit must be"),
        ("/admin/v1/events?order=newest", "order must be"),
        ("/admin/v1/events?since=yesterday", "since must be"),
        ("/admin/v1/events?until=-5", "until must be"),
        (
            "/admin/v1/events?since=10&until=10",
            "since must be before until",
        ),
        ("/admin/v1/events?after=abc", "after must be a ledger id"),
        (
            "/admin/v1/events?before=1-2-3",
            "before goes with order=desc",
        ),
        ("/admin/v1/events?payer=", "payer must be"),
        (long_route.as_str(), "route must be"),
        ("/admin/v1/events?payer_id=alice", "unknown parameter"),
        ("/admin/v1/events.csv?limit=100001", "limit must be"),
        (
            "/admin/v1/events.csv?order=desc&since=soon",
            "since must be",
        ),
    ] {
        let (status, code, detail) = bad(gw, path).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{path}");
        assert!(detail.starts_with(says), "{path}: {detail}");
    }

    // CSV: a header row, then the same events as the JSON, field by field.
    let (h, csv) = admin_text(gw, "/admin/v1/events.csv").await;
    assert_eq!(h["content-type"], "text/csv; charset=utf-8; header=present");
    assert!(h["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename="));
    assert!(csv.ends_with("\r\n"));
    assert_csv_equals(&csv, &all);
    // The odd payer is one quoted field; the formula is shown, not run.
    assert!(csv.contains(",\"eve, \"\"the\"\"\nsecond\","), "{csv}");
    assert!(csv.contains(",\"'=HYPERLINK(\"\"x\"\")\","), "{csv}");
    // The same filters as the JSON.
    let (_, csv) = admin_text(gw, "/admin/v1/events.csv?order=desc&route=echo").await;
    assert_csv_equals(&csv, &echo.iter().rev().cloned().collect::<Vec<_>>());
    let (_, csv) = admin_text(gw, &format!("/admin/v1/events.csv?payer=alice&since={t}")).await;
    let want: Vec<Value> = alice
        .iter()
        .filter(|e| e["time_ms"].as_i64().unwrap() >= t)
        .cloned()
        .collect();
    assert_csv_equals(&csv, &want);
}

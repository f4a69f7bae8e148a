//! The page in headless Chromium: log in, every displayed figure equal to the admin API's
//! JSON (and the ledger's sums), recent payments filtered and exported as CSV, the routes'
//! conversion and upstream table, the settlement and ledger cards, the actions; screenshots
//! of each panel in the output directory.

use fantoccini::{Client, Locator};
use serde_json::{json, Value};
use tollgate_e2e::*;

use super::browser::*;
use super::seed::*;

type R = Result<(), fantoccini::error::CmdError>;

#[tokio::test]
async fn dashboard_in_headless_chromium() {
    let _serial = SERIAL.lock().await;
    let s = seeded().await;
    // Traffic for the routes table: a 5xx from the upstream, counted on its route.
    let res =
        s.gw.token_get("/v1/echo?status=503", &s.tokens["alice"])
            .await;
    assert_eq!(res.status(), 503);
    let downloads = tempfile::tempdir().unwrap();
    let driver = start_chromedriver().await;
    let c = browser(&driver, downloads.path()).await;
    let result = drive(&c, &s, downloads.path()).await;
    let _ = c.close().await;
    result.unwrap();
}

/// Open the page and log in (a wrong token first: refused, not kept).
pub(crate) async fn log_in(c: &Client, gw: &TestGateway) -> R {
    c.goto(&gw.admin_url("/admin/ui")).await?;
    // Logged out: the login form only, no data.
    assert!(c
        .find(Locator::Id("app"))
        .await?
        .attr("hidden")
        .await?
        .is_some());
    shoot_page(c, "dashboard-login.png").await?;
    type_into(c, Locator::Id("token"), "not-the-admin-token").await?;
    click(c, Locator::Id("login-submit")).await?;
    wait_js(
        c,
        "document.getElementById('login-error').textContent.includes('401')",
    )
    .await;
    type_into(c, Locator::Id("token"), ADMIN).await?;
    click(c, Locator::Id("login-submit")).await?;
    wait_js(c, "Number(document.body.dataset.loaded) >= 1").await;
    assert!(!c.current_url().await?.as_str().contains(ADMIN));
    let stored = c
        .execute(
            "return sessionStorage.getItem('tollgate-admin-token');",
            vec![],
        )
        .await?;
    assert_eq!(stored, json!(ADMIN));
    Ok(())
}

/// Stop the page's polling so the figures and the API are read at the same moment.
pub(crate) async fn stop_polling(c: &Client) -> R {
    c.execute(
        "const l = document.getElementById('live'); if (l.checked) l.click();",
        vec![],
    )
    .await?;
    Ok(())
}

async fn drive(c: &Client, s: &Seeded, downloads: &std::path::Path) -> R {
    let gw = &s.gw;
    log_in(c, gw).await?;
    // Every payer's mandates / plans cell has its answer.
    wait_js(
        c,
        "[...document.querySelectorAll('[data-figure$=\".mandates\"]')].length === 3 && [...document.querySelectorAll('[data-figure$=\".mandates\"]')].every(e => e.textContent !== '…')",
    )
    .await;
    stop_polling(c).await?;
    let shown = figures(c).await;
    let f = |k: &str| figure(&shown, k);
    let summary = admin_get(gw, "/admin/v1/summary").await;
    let payers = admin_get(gw, "/admin/v1/payers?limit=20").await;
    let traffic = admin_get(gw, "/admin/v1/traffic?minutes=60").await;
    summary_and_payers(s, &shown, &summary, &payers).await;

    // Live traffic: challenges and other refusals are separate cards, never the same count.
    let t = &traffic["totals"];
    assert_eq!(f("traffic.paid"), t["paid"].to_string());
    assert_eq!(f("traffic.challenges"), t["challenges"].to_string());
    assert_eq!(f("traffic.refused_other"), t["refused_other"].to_string());
    assert_eq!(
        f("traffic.conversion"),
        format!("{} %", t["conversion_pct"].as_str().unwrap())
    );
    assert_eq!(
        f("traffic.revenue.USD"),
        fmt_usd(t["revenue"]["USD"].as_str().unwrap())
    );
    assert_eq!(
        f("refused.payment_required"),
        t["refused"]["payment_required"].to_string()
    );
    assert_eq!(
        f("refused.receipt_replayed"),
        t["refused"]["receipt_replayed"].to_string()
    );
    routes_table(&shown, &traffic);

    // The settlement queue says what is configured: no x402 route here.
    let settlement = text_of(c, Locator::Id("settlement-status")).await?;
    assert_eq!(settlement, "Off: no route takes x402 payments.");
    assert_eq!(admin_get(gw, "/admin/v1/x402/queue").await["mode"], "off");
    let ledger_card = text_of(c, Locator::Id("ledger-status")).await?;
    assert!(ledger_card.starts_with("No ledger database ([ledger] is not set)"));
    // Charts were drawn (as images from blob: URLs).
    wait_js(
        c,
        "['chart-revenue-USD','chart-requests','chart-traffic'].every(id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); })",
    )
    .await;
    // The 0.000068 USD route is in the revenue chart the page shows (the same query's SVG).
    let q = c
        .execute(
            "return document.getElementById('chart-revenue-USD').dataset.query;",
            vec![],
        )
        .await?;
    let (_, svg) = admin_text(gw, q.as_str().unwrap()).await;
    super::live::assert_visible_segment(&svg, "tiny: 0.000068 USD");
    assert!(svg.contains(">tiny (0.000068 USD)</text>"));
    shoot(c, "revenue", "dashboard-revenue.png").await?;
    shoot(c, "traffic", "dashboard-traffic.png").await?;
    shoot(c, "conversion", "dashboard-routes.png").await?;
    shoot(c, "settlement", "dashboard-settlement.png").await?;
    shoot(c, "ledger", "dashboard-ledger-off.png").await?;

    payments(c, gw, downloads).await?;

    // A figure links to the query that produced it.
    c.execute("window.scrollTo(0, 0);", vec![]).await?;
    click(c, Locator::Css("[data-figure=\"summary.requests\"]")).await?;
    wait_js(
        c,
        "document.getElementById('api-body').textContent.includes('\"totals\"')",
    )
    .await;
    let api_url = text_of(c, Locator::Id("api-url")).await?;
    assert!(
        api_url.starts_with("GET /admin/v1/summary?from="),
        "{api_url}"
    );
    c.execute("window.scrollTo(0, 0);", vec![]).await?;
    shoot_page(c, "dashboard.png").await?;
    actions(c, s).await
}

/// Revenue cards, routes, units and the top payers, each equal to the API in the page's money
/// format (amount and code, six decimals for USD), and to the ledger's sums.
async fn summary_and_payers(
    s: &Seeded,
    shown: &std::collections::BTreeMap<String, String>,
    summary: &Value,
    payers: &Value,
) {
    let gw = &s.gw;
    let f = |k: &str| figure(shown, k);
    assert_eq!(
        f("summary.requests"),
        summary["totals"]["requests"].to_string()
    );
    assert_eq!(
        f("summary.revenue.USD"),
        fmt_usd(summary["totals"]["amount"]["USD"].as_str().unwrap())
    );
    let ledger_total: u64 = ledger(gw)
        .await
        .iter()
        .map(|e| e["amount_minor"].as_u64().unwrap())
        .sum();
    assert_eq!(f("summary.revenue.USD"), fmt_usd_minor(ledger_total));
    assert_eq!(f("summary.revenue.USD"), "0.057068 USD");
    for r in summary["routes"].as_array().unwrap() {
        let route = r["route"].as_str().unwrap();
        assert_eq!(
            f(&format!("route.{route}.requests")),
            r["requests"].to_string()
        );
        assert_eq!(
            f(&format!("route.{route}.revenue")),
            fmt_usd(r["amount"]["USD"].as_str().unwrap())
        );
    }
    assert_eq!(f("route.tiny.revenue"), "0.000068 USD");
    assert_eq!(f("units.units.unit"), "7");
    for p in payers["payers"].as_array().unwrap() {
        let id = p["payer"].as_str().unwrap();
        assert_eq!(
            f(&format!("payer.{id}.requests")),
            p["requests"].to_string()
        );
        assert_eq!(
            f(&format!("payer.{id}.spent")),
            fmt_usd(p["spent"]["USD"].as_str().unwrap())
        );
        // One format everywhere: a payer without a balance shows zero dollars, not "0".
        let available = p["balances"]["USD"]["available"]
            .as_str()
            .map_or_else(|| fmt_usd("0"), fmt_usd);
        assert_eq!(f(&format!("payer.{id}.available")), available);
        assert_eq!(f(&format!("payer.{id}.status")), "active");
        let detail = admin_get(gw, &format!("/admin/v1/payers/{id}")).await;
        assert_eq!(f(&format!("payer.{id}.mandates")), mandate_summary(&detail));
        match id {
            "carol" => {
                assert_eq!(
                    f("payer.carol.mandates"),
                    "1 mandate, 1 active",
                    "carol paid under a mandate"
                );
                assert_eq!(detail["mandates"][0]["spent"], "0.01");
            }
            // Nothing to say: an empty cell, not "0 mandate(s), 0 active; no plan".
            _ => assert_eq!(f(&format!("payer.{id}.mandates")), ""),
        }
    }
    assert_eq!(f("payer.carol.available"), "0.000000 USD");
}

/// The routes table: every route's conversion and upstream figures as the API has them.
fn routes_table(shown: &std::collections::BTreeMap<String, String>, traffic: &Value) {
    let f = |k: &str| figure(shown, k);
    let ms = |v: &Value| v.as_f64().map_or(String::new(), |m| format!("≤ {m} ms"));
    for r in traffic["routes"].as_array().unwrap() {
        let n = format!("routes.{}.", r["route"].as_str().unwrap());
        let u = &r["upstream"];
        for (k, v) in [
            ("paid", &r["paid"]),
            ("challenges", &r["challenges"]),
            ("refused_other", &r["refused_other"]),
            ("answered", &u["answered"]),
            ("status_5xx", &u["status_5xx"]),
            ("unreachable", &u["unreachable"]),
            ("timeouts", &u["timeouts"]),
        ] {
            assert_eq!(f(&format!("{n}{k}")), v.to_string(), "{n}{k}");
        }
        let pct = r["conversion_pct"]
            .as_str()
            .map_or(String::new(), |p| format!("{p} %"));
        assert_eq!(f(&format!("{n}conversion")), pct);
        assert_eq!(f(&format!("{n}p50")), ms(&u["p50_ms"]));
        assert_eq!(f(&format!("{n}p95")), ms(&u["p95_ms"]));
    }
    // The 503 the upstream answered is on its route.
    let echo = traffic_route(traffic, "echo");
    assert!(echo["upstream"]["status_5xx"].as_u64().unwrap() >= 1);
}

/// The rows of the recent-payments table, as the page shows them, against the events the
/// page's own query returns.
pub(crate) async fn payment_rows_equal_the_api(
    c: &Client,
    gw: &TestGateway,
) -> Result<Vec<Value>, fantoccini::error::CmdError> {
    let q = c
        .execute(
            "return document.getElementById('payments-table').dataset.api;",
            vec![],
        )
        .await?;
    let events = events(gw, q.as_str().unwrap()).await;
    let ids = c
        .execute(
            "return [...document.querySelectorAll('#payments-table tbody tr')].map(r => r.dataset.id).filter(x => x);",
            vec![],
        )
        .await?;
    let want: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, json!(want), "newest first, as the API");
    let shown = figures(c).await;
    for e in &events {
        let n = format!("payment.{}.", e["id"].as_str().unwrap());
        let f = |k: &str| figure(&shown, &format!("{n}{k}"));
        assert_eq!(f("route"), e["route"].as_str().unwrap());
        assert_eq!(f("payer"), e["payer"].as_str().unwrap());
        assert_eq!(
            f("amount"),
            fmt_usd_minor(e["amount_minor"].as_u64().unwrap())
        );
        assert_eq!(f("amount"), fmt_usd(e["amount"].as_str().unwrap()));
        let kind = e["credential"].as_str().unwrap().split(':').next().unwrap();
        assert_eq!(f("credential"), kind);
        assert_eq!(
            f("status"),
            if e["voids"].is_null() {
                "charged"
            } else {
                "void"
            }
        );
        let status = &e["upstream_status"];
        let shown = if status.is_null() {
            String::new()
        } else {
            status.to_string()
        };
        assert_eq!(f("upstream"), shown);
        // `2026-11-22 10:04:05 UTC`: the event's time to the second.
        let t = f("time");
        assert!(t.ends_with(" UTC") && t.len() == 23, "{t}");
        let iso = format!("{}T{}.000Z", &t[..10], &t[11..19]);
        let ms = e["time_ms"].as_i64().unwrap();
        assert_eq!(super::events::parse_iso(&iso), ms - ms.rem_euclid(1000));
    }
    Ok(events)
}

async fn payments(c: &Client, gw: &TestGateway, downloads: &std::path::Path) -> R {
    // Unfiltered (last 24 hours): every event of the seed, newest first.
    let all = payment_rows_equal_the_api(c, gw).await?;
    assert_eq!(all.len(), ledger(gw).await.len());
    assert!(all.iter().any(|e| e["route"] == "tiny"));
    shoot(c, "payments", "dashboard-payments.png").await?;
    // Filter: route echo, payer alice, the last hour -- applied by the server.
    c.execute(
        "document.getElementById('filter-route').value = 'echo'; document.getElementById('filter-window').value = '3600000';",
        vec![],
    )
    .await?;
    type_into(c, Locator::Id("filter-payer"), "alice").await?;
    click(c, Locator::Id("filter-apply")).await?;
    wait_js(c, "document.getElementById('payments-table').dataset.api.includes('payer=alice') && document.getElementById('payments-count').textContent.includes('payer alice')").await;
    let q = c
        .execute(
            "return document.getElementById('payments-table').dataset.api;",
            vec![],
        )
        .await?;
    let q = q.as_str().unwrap();
    assert!(
        q.starts_with("/admin/v1/events?order=desc&route=echo&payer=alice&since="),
        "{q}"
    );
    let filtered = payment_rows_equal_the_api(c, gw).await?;
    assert_eq!(filtered.len(), 3);
    assert!(filtered
        .iter()
        .all(|e| e["payer"] == "alice" && e["route"] == "echo"));
    shoot(c, "payments", "dashboard-payments-filtered.png").await?;
    // CSV of the same filter: fetched with the token, saved as a download; the file is the
    // endpoint's answer for the page's query.
    click(c, Locator::Id("payments-csv")).await?;
    wait_js(
        c,
        "document.getElementById('payments-export').textContent.startsWith('exported 3 rows')",
    )
    .await;
    let (name, file) = downloaded(downloads, ".csv").await;
    assert!(name.starts_with("tollgate-events-"), "{name}");
    let csv_q = c
        .execute(
            "return document.getElementById('payments-csv').dataset.api;",
            vec![],
        )
        .await?;
    let csv_q = csv_q.as_str().unwrap();
    assert!(csv_q.starts_with("/admin/v1/events.csv?order=desc&route=echo&payer=alice&since="));
    assert!(!csv_q.contains(ADMIN));
    assert_eq!(file, admin_text(gw, csv_q).await.1);
    assert_eq!(file.lines().count(), 4, "a header and three rows");
    for e in &filtered {
        assert!(file.contains(e["id"].as_str().unwrap()));
    }
    shoot(c, "payments", "dashboard-payments-csv.png").await?;
    // Back to every payment.
    c.execute(
        "document.getElementById('filter-route').value = ''; document.getElementById('filter-payer').value = '';",
        vec![],
    )
    .await?;
    click(c, Locator::Id("filter-apply")).await?;
    wait_js(
        c,
        "!document.getElementById('payments-table').dataset.api.includes('payer=')",
    )
    .await;
    Ok(())
}

/// Credit, debit, block, unblock, revoke: each checked through the API.
async fn actions(c: &Client, s: &Seeded) -> R {
    let gw = &s.gw;
    // The order of the top payers is the API's.
    let rows = c
        .execute(
            "return [...document.querySelectorAll('#payers-table tbody tr')].map(r => r.dataset.payer);",
            vec![],
        )
        .await?;
    assert_eq!(rows, json!(["alice", "carol", "bob"]));
    // Action: credit bob 1.25 USD with a reason.
    click(c, Locator::Css("tr[data-payer=\"bob\"] button")).await?;
    wait_js(c, "!document.getElementById('payer-detail').hidden && document.getElementById('payer-name').textContent === 'bob'").await;
    type_into(c, Locator::Id("credit-amount"), "1.25").await?;
    type_into(c, Locator::Id("credit-reason"), "goodwill after an outage").await?;
    click(c, Locator::Id("credit-submit")).await?;
    wait_js(c, "document.getElementById('action-result').textContent.startsWith('credited 1.250000 USD to bob: balance 3.243000 USD')").await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "3.243");
    assert_eq!(bob["balances"]["USD"]["credited"], "3.25");
    wait_js(
        c,
        "document.querySelector('[data-figure=\"detail.USD.available\"]').textContent === '3.243000 USD'",
    )
    .await;
    // A debit.
    click(c, Locator::Id("debit-submit")).await?;
    wait_js(
        c,
        "document.getElementById('action-result').textContent.startsWith('debited 1.250000 USD')",
    )
    .await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "1.993");

    // Action: block bob; the gateway refuses his token at once.
    click(c, Locator::Id("block")).await?;
    wait_js(
        c,
        "document.getElementById('payer-status').textContent === 'blocked'",
    )
    .await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["blocked"], true);
    let (status, code) = code_of(gw.token_get("/v1/echo", &s.tokens["bob"]).await).await;
    assert_eq!((status, code.as_str()), (403, "payer_blocked"));

    // Mandate revocation: the endpoint's answer is shown as it comes.
    type_into(c, Locator::Id("mandate-id"), "m-1").await?;
    type_into(c, Locator::Id("mandate-reason"), "owner asked").await?;
    click(c, Locator::Id("mandate-revoke")).await?;
    let (status, code) = admin_post(
        gw,
        "/admin/v1/mandates/m-1/revoke",
        json!({"reason": "owner asked"}),
    )
    .await;
    if status < 300 {
        wait_js(
            c,
            "document.getElementById('action-result').textContent === 'mandate m-1 revoked'",
        )
        .await;
    } else {
        wait_js(c, &format!("document.getElementById('action-result').textContent.includes('revoking mandate m-1 failed: {status} {code}')")).await;
    }
    // Receipt revocation likewise.
    type_into(c, Locator::Id("receipt-issuer"), "wallet").await?;
    type_into(c, Locator::Id("receipt-id"), "j-1").await?;
    click(c, Locator::Id("receipt-revoke")).await?;
    let (status, code) = admin_post(
        gw,
        "/admin/v1/receipts/revoke",
        json!({"issuer": "wallet", "id": "j-1"}),
    )
    .await;
    if status < 300 {
        wait_js(c, "document.getElementById('receipt-result').textContent === 'receipt j-1 of wallet revoked'").await;
    } else {
        wait_js(c, &format!("document.getElementById('receipt-result').textContent.includes('revoking the receipt failed: {status} {code}')")).await;
    }
    // Bob's last 30 days, as the API has them.
    let usage = &bob["usage_30d"][0];
    let day = usage["day"].as_str().unwrap();
    let shown = figures(c).await;
    assert_eq!(
        shown[&format!("detail.usage.{day}.units.requests")],
        usage["requests"].to_string()
    );
    assert_eq!(
        shown[&format!("detail.usage.{day}.units.amount")],
        fmt_usd(usage["amount"]["USD"].as_str().unwrap())
    );
    shoot_page(c, "dashboard-actions.png").await?;

    // Unblock again from the page.
    click(c, Locator::Id("unblock")).await?;
    wait_js(
        c,
        "document.getElementById('payer-status').textContent === 'active'",
    )
    .await;
    assert_eq!(
        admin_get(gw, "/admin/v1/payers/bob").await["blocked"],
        false
    );
    assert_eq!(
        gw.token_get("/v1/echo", &s.tokens["bob"]).await.status(),
        200
    );
    let _ = &s.wallet;
    Ok(())
}

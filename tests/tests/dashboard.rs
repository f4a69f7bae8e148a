//! The provider dashboard: its read endpoints (auth, figures equal to the ledger's sums), the
//! event export with its filters and CSV (`dashboard/events.rs`), per-route conversion and
//! upstream health and the settlement-queue and ledger cards (`dashboard/live.rs`), and the
//! page itself in a real headless Chromium driven over WebDriver (`dashboard/drive.rs`: log
//! in, compare the displayed figures with the admin API, filter and export payments, credit
//! and block a payer, screenshot; `dashboard/ledger_page.rs`: the ledger database's card).
//!
//! Every test here takes [`seed::SERIAL`]: the per-minute traffic view is process-wide, so
//! tests that count it must not overlap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dashboard/browser.rs"]
mod browser;
#[path = "dashboard/drive.rs"]
mod drive;
#[path = "dashboard/events.rs"]
mod events;
#[path = "dashboard/ledger_page.rs"]
mod ledger_page;
#[path = "dashboard/live.rs"]
mod live;
#[path = "dashboard/risk_page.rs"]
mod risk_page;
#[path = "dashboard/seed.rs"]
mod seed;

use std::collections::BTreeMap;

use serde_json::json;
use tollgate_e2e::*;

use seed::*;

#[tokio::test]
async fn read_endpoints_and_the_page_need_the_right_things() {
    let _serial = SERIAL.lock().await;
    let s = seeded().await;
    let gw = &s.gw;
    for path in [
        "/admin/v1/payers",
        "/admin/v1/summary",
        "/admin/v1/traffic",
        "/admin/v1/charts/revenue.svg",
        "/admin/v1/charts/traffic.svg",
        "/admin/v1/events?order=desc&limit=5",
        "/admin/v1/events.csv",
        "/admin/v1/x402/queue",
        "/admin/v1/ledger",
    ] {
        let (status, code) = code_of(gw.http.get(gw.admin_url(path)).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
        let (status, code) = code_of(
            gw.http
                .get(gw.admin_url(path))
                .bearer_auth("wrong-token-wrong-token")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
        admin_text(gw, path).await;
    }
    // The OpenAPI document describes each of them, and every parameter of the export.
    let openapi = admin_get(gw, "/admin/v1/openapi.json").await;
    for path in [
        "/admin/v1/payers",
        "/admin/v1/summary",
        "/admin/v1/traffic",
        "/admin/v1/charts/{name}",
        "/admin/v1/events",
        "/admin/v1/events.csv",
        "/admin/v1/x402/queue",
        "/admin/v1/ledger",
    ] {
        assert!(openapi["paths"][path]["get"].is_object(), "{path}");
    }
    for path in ["/admin/v1/events", "/admin/v1/events.csv"] {
        let names: Vec<String> = openapi["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let name = &p["name"];
                let r = p["$ref"].as_str().map(|r| r.rsplit('/').next().unwrap());
                match r {
                    Some(r) => openapi["components"]["parameters"][r]["name"].clone(),
                    None => name.clone(),
                }
                .as_str()
                .unwrap()
                .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            ["order", "after", "before", "limit", "route", "payer", "since", "until"],
            "{path}"
        );
    }
    // The page is static and served without the token; it holds no data.
    let res = gw.http.get(gw.admin_url("/admin/ui")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("id=\"login-form\""));
    assert!(!html.contains("alice") && !html.contains(ADMIN));
    // No inline script or style: every script is a file of the page's own.
    assert!(!html.contains("<script>") && !html.contains("style="));
    for asset in [
        "/admin/ui/app.js",
        "/admin/ui/lib.js",
        "/admin/ui/payments.js",
        "/admin/ui/status.js",
        "/admin/ui/app.css",
    ] {
        let res = gw.http.get(gw.admin_url(asset)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.headers().contains_key("content-security-policy"));
        let text = res.text().await.unwrap();
        assert!(
            !text.contains(".innerHTML") && !text.contains("insertAdjacentHTML"),
            "{asset} writes markup"
        );
    }
    // Not a way around the token: other methods, other paths, a token in the query string.
    let (status, _) = code_of(
        gw.http
            .post(gw.admin_url("/admin/ui"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = code_of(
        gw.http
            .get(gw.admin_url("/admin/ui/../v1/payers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = code_of(
        gw.http
            .get(gw.admin_url(&format!("/admin/ui?token={ADMIN}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // Bad ranges are 400 invalid_request.
    for path in [
        "/admin/v1/summary?from=2026&to=20261122",
        "/admin/v1/payers?from=20261122&to=20261101",
        "/admin/v1/payers?limit=0",
        "/admin/v1/payers?limit=abc",
        "/admin/v1/traffic?minutes=-1",
        "/admin/v1/payers?currency=XXX&limit=1",
        "/admin/v1/traffic?minutes=5000",
        "/admin/v1/charts/traffic.svg?minutes=0",
        "/admin/v1/charts/revenue.svg?currency=XXX",
    ] {
        let (status, code) = code_of(admin_res(gw, path).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{path}");
    }
}

#[tokio::test]
async fn summary_payers_and_traffic_equal_the_ledger() {
    let _serial = SERIAL.lock().await;
    let before = tollgate_middleware::traffic::global()
        .last(tollgate_e2e::now_secs() * 1000, 1440)
        .iter()
        .fold((0u64, 0u64, 0u64, 0u64), |(p, s, r, c), m| {
            (
                p + m.paid,
                s + m.status_402,
                r + m.refused.values().sum::<u64>(),
                c + m.challenges,
            )
        });
    let routes_before = route_traffic();
    let s = seeded().await;
    let gw = &s.gw;
    let events = ledger(gw).await;
    assert_eq!(events.len(), 7);
    let mut routes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut payers: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &events {
        let m = e["amount_minor"].as_u64().unwrap();
        let r = routes
            .entry(e["route"].as_str().unwrap().into())
            .or_default();
        r.0 += 1;
        r.1 += m;
        let p = payers
            .entry(e["payer"].as_str().unwrap().into())
            .or_default();
        p.0 += 1;
        p.1 += m;
    }
    let total: u64 = routes.values().map(|r| r.1).sum();

    let summary = admin_get(gw, "/admin/v1/summary").await;
    assert_eq!(summary["totals"]["requests"], 7);
    assert_eq!(summary["totals"]["amount_minor"]["USD"], total);
    assert_eq!(summary["totals"]["amount"]["USD"], usd(total));
    assert_eq!(summary["currencies"], json!(["USD"]));
    assert_eq!(summary["scales"], json!({"USD": 6}));
    assert_eq!(summary["days"].as_array().unwrap().len(), 7);
    for r in summary["routes"].as_array().unwrap() {
        let (n, m) = routes[r["route"].as_str().unwrap()];
        assert_eq!(r["requests"], n);
        assert_eq!(r["amount_minor"]["USD"], m);
    }
    assert_eq!(summary["routes"].as_array().unwrap().len(), routes.len());
    let units = summary["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "units")
        .unwrap();
    assert_eq!(units["units"]["unit"], 7);
    // 3 + 2 echo requests at 0.01, 7 units at 0.001 and one at 0.000068.
    assert_eq!(total, 5 * 10_000 + 7_000 + 68);
    assert_eq!(routes["tiny"], (1, 68));

    let listing = admin_get(gw, "/admin/v1/payers?limit=2").await;
    assert_eq!(listing["payers_in_range"], 3);
    let top: Vec<&str> = listing["payers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payer"].as_str().unwrap())
        .collect();
    // alice 0.030068, carol 0.02, bob 0.007.
    assert_eq!(top, ["alice", "carol"]);
    let all = admin_get(gw, "/admin/v1/payers").await;
    for p in all["payers"].as_array().unwrap() {
        let (n, m) = payers[p["payer"].as_str().unwrap()];
        assert_eq!(p["requests"], n);
        assert_eq!(p["spent_minor"]["USD"], m);
        assert_eq!(p["blocked"], false);
    }
    let alice = &all["payers"][0];
    assert_eq!(alice["balances"]["USD"]["available"], "4.969932");
    assert_eq!(alice["holds"], 0);
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "1.993");
    assert_eq!(bob["blocked"], false);

    // This process's traffic: exactly what was seeded (the tests here run one at a time).
    // Challenges (no credential) and other refusals are apart: 3 + 1, never the same figure.
    let traffic = admin_get(gw, "/admin/v1/traffic?minutes=1440").await;
    let t = &traffic["totals"];
    assert_eq!(t["paid"].as_u64().unwrap() - before.0, 7);
    assert_eq!(t["status_402"].as_u64().unwrap() - before.1, 4);
    assert_eq!(t["refused_total"].as_u64().unwrap() - before.2, 4);
    assert_eq!(t["challenges"].as_u64().unwrap() - before.3, 3);
    assert_eq!(
        t["refused_other"].as_u64().unwrap() - (before.2 - before.3),
        1
    );
    assert_eq!(traffic["series"].as_array().unwrap().len(), 1440);
    // Per route: the echo route's 5 paid, 3 challenges and the replayed receipt.
    let echo = traffic_route(&traffic, "echo");
    let was = routes_before.get("echo").cloned().unwrap_or_default();
    assert_eq!(echo["paid"].as_u64().unwrap() - was.paid, 5);
    assert_eq!(echo["challenges"].as_u64().unwrap() - was.challenges, 3);
    assert_eq!(
        echo["refused_other"].as_u64().unwrap() - was.refused_other,
        1
    );
    let listed: Vec<&str> = traffic["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    // Configured routes first, in order (routes seen by other gateways of this test process,
    // as routes removed by a reload would be, follow).
    assert_eq!(
        listed[..3],
        ["units", "tiny", "echo"],
        "configured routes, in order"
    );

    // The charts are SVG drawn from the same figures, labelled exactly.
    let (headers, svg) = admin_text(gw, "/admin/v1/charts/revenue.svg").await;
    assert_eq!(headers["content-type"], "image/svg+xml");
    assert!(svg.starts_with("<svg") && svg.contains("<title>echo: 0.050000 USD</title>"));
    assert!(svg.contains("<title>units: 0.007000 USD</title>"));
    live::assert_visible_segment(&svg, "tiny: 0.000068 USD");
    assert!(
        svg.contains(">tiny (0.000068 USD)</text>"),
        "the legend gives the total"
    );
    let (status, code) = code_of(admin_res(gw, "/admin/v1/charts/nope.svg").await).await;
    assert_eq!((status, code.as_str()), (404, "route_not_found"));
}

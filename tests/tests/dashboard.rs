//! The provider dashboard: its read endpoints (auth, figures equal to the ledger's sums) and
//! the page itself in a real headless Chromium driven over WebDriver (log in, compare the
//! displayed figures with the admin API, credit and block a payer, screenshot).
//!
//! Every test here takes [`SERIAL`]: the per-minute traffic view is process-wide, so tests that
//! count it must not overlap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tollgate_e2e::*;

const ADMIN: &str = "admin-token-dashboard-0123";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Seeded {
    _redis: RedisServer,
    wallet: TestIssuer,
    gw: TestGateway,
    /// Access tokens by payer.
    tokens: BTreeMap<&'static str, String>,
}

/// A gateway on its own redis-server with traffic: top-ups, paid requests by token and by
/// receipt, a metered request, 402s and a replayed receipt.
async fn seeded() -> Seeded {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .redis(&redis)
        .issuer(&wallet)
        .admin(ADMIN)
        .route(metered(
            "units",
            "/v1/echo/units",
            &up,
            "0.05",
            &[("unit", "header:x-units", "0.001")],
        ))
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let mut tokens = BTreeMap::new();
    tokens.insert("alice", gw.topup(&wallet, "alice", "5").await);
    tokens.insert("bob", gw.topup(&wallet, "bob", "2").await);
    for _ in 0..3 {
        let res = gw.token_get("/v1/echo", &tokens["alice"]).await;
        assert_eq!(res.status(), 200);
    }
    let res = gw.token_get("/v1/echo/units?units=7", &tokens["bob"]).await;
    assert_eq!(res.status(), 200);
    let receipt = wallet.receipt("m", "carol", "0.01");
    assert_eq!(gw.pay_get("/v1/echo", &receipt).await.status(), 200);
    // Carol's second payment is made under a mandate from her owner: the payer record (and the
    // page's mandates / plans cell) shows it.
    let now = tollgate_e2e::now_secs();
    let mandate = wallet.sign(&serde_json::json!({
        "iss": "wallet", "sub": "carol", "jti": "m-carol", "iat": now, "exp": now + 86_400,
        "kind": "mandate", "owner": "carol-owner", "currency": "USD", "budget": "1",
        "window": "day", "merchants": ["m"],
    }));
    let mut claims = wallet.claims("m", "carol", "0.01");
    claims["mandate"] = mandate.into();
    assert_eq!(
        gw.pay_get("/v1/echo", &wallet.sign(&claims)).await.status(),
        200
    );
    // Refusals: three unpaid requests and one replayed receipt.
    for _ in 0..3 {
        let (status, code) = code_of(gw.http.get(gw.url("/v1/echo")).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (402, "payment_required"));
    }
    let (status, code) = code_of(gw.pay_get("/v1/echo", &receipt).await).await;
    assert_eq!((status, code.as_str()), (402, "receipt_replayed"));
    gw.settled(&tokens["bob"]).await;
    Seeded {
        _redis: redis,
        wallet,
        gw,
        tokens,
    }
}

async fn admin_get(gw: &TestGateway, path: &str) -> Value {
    let res = gw
        .http
        .get(gw.admin_url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// POST JSON to the admin API: (status, problem code or "").
async fn admin_post(gw: &TestGateway, path: &str, body: Value) -> (u16, String) {
    let res = gw
        .http
        .post(gw.admin_url(path))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("").to_owned())
}

/// What the page shows in a payer's "mandates / plans" cell for its admin record: counts of
/// mandates (and active ones) and each plan's use, when the record carries them; else "-".
fn mandate_summary(detail: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = detail["mandates"].as_array() {
        // As in JavaScript: a mandate is active unless `revoked` is truthy.
        let truthy = |v: &Value| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        let active = m.iter().filter(|x| !truthy(&x["revoked"])).count();
        parts.push(format!("{} mandate(s), {active} active", m.len()));
    }
    if let Some(p) = detail["plans"].as_array() {
        let plans: Vec<String> = p
            .iter()
            .map(|x| {
                let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                format!("{} {}/{}", s(&x["plan"]), s(&x["used"]), s(&x["included"]))
            })
            .collect();
        parts.push(if plans.is_empty() {
            "no plan".to_owned()
        } else {
            plans.join(", ")
        });
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join("; ")
    }
}

/// The ledger (NDJSON export), every event.
async fn ledger(gw: &TestGateway) -> Vec<Value> {
    let text = gw
        .http
        .get(gw.admin_url("/admin/v1/events?limit=10000"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn usd(minor: u64) -> String {
    rust_decimal::Decimal::new(minor as i64, 6)
        .normalize()
        .to_string()
}

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
        let res = gw
            .http
            .get(gw.admin_url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    // The page is static and served without the token; it holds no data.
    let res = gw.http.get(gw.admin_url("/admin/ui")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("id=\"login-form\""));
    assert!(!html.contains("alice") && !html.contains(ADMIN));
    for asset in ["/admin/ui/app.js", "/admin/ui/app.css"] {
        let res = gw.http.get(gw.admin_url(asset)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
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
    ] {
        let (status, code) = code_of(
            gw.http
                .get(gw.admin_url(path))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{path}");
    }
}

#[tokio::test]
async fn summary_payers_and_traffic_equal_the_ledger() {
    let _serial = SERIAL.lock().await;
    let before = tollgate_middleware::traffic::global()
        .last(tollgate_e2e::now_secs() * 1000, 1440)
        .iter()
        .fold((0u64, 0u64, 0u64), |(p, s, r), m| {
            (
                p + m.paid,
                s + m.status_402,
                r + m.refused.values().sum::<u64>(),
            )
        });
    let s = seeded().await;
    let gw = &s.gw;
    let events = ledger(gw).await;
    assert_eq!(events.len(), 6);
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
    assert_eq!(summary["totals"]["requests"], 6);
    assert_eq!(summary["totals"]["amount_minor"]["USD"], total);
    assert_eq!(summary["totals"]["amount"]["USD"], usd(total));
    assert_eq!(summary["currencies"], json!(["USD"]));
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
    // 3 + 2 echo requests at 0.01 and 7 units at 0.001.
    assert_eq!(total, 5 * 10_000 + 7_000);

    let listing = admin_get(gw, "/admin/v1/payers?limit=2").await;
    assert_eq!(listing["payers_in_range"], 3);
    let top: Vec<&str> = listing["payers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payer"].as_str().unwrap())
        .collect();
    // alice 0.03, carol 0.02, bob 0.007.
    assert_eq!(top, ["alice", "carol"]);
    let all = admin_get(gw, "/admin/v1/payers").await;
    for p in all["payers"].as_array().unwrap() {
        let (n, m) = payers[p["payer"].as_str().unwrap()];
        assert_eq!(p["requests"], n);
        assert_eq!(p["spent_minor"]["USD"], m);
        assert_eq!(p["blocked"], false);
    }
    let alice = &all["payers"][0];
    assert_eq!(alice["balances"]["USD"]["available"], "4.97");
    assert_eq!(alice["holds"], 0);
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "1.993");
    assert_eq!(bob["blocked"], false);

    // This process's traffic: exactly what was seeded (the tests here run one at a time).
    let traffic = admin_get(gw, "/admin/v1/traffic?minutes=1440").await;
    let t = &traffic["totals"];
    assert_eq!(t["paid"].as_u64().unwrap() - before.0, 6);
    assert_eq!(t["status_402"].as_u64().unwrap() - before.1, 4);
    assert_eq!(t["refused_total"].as_u64().unwrap() - before.2, 4);
    assert_eq!(traffic["series"].as_array().unwrap().len(), 1440);

    // The charts are SVG drawn from the same figures.
    let res = gw
        .http
        .get(gw.admin_url("/admin/v1/charts/revenue.svg"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "image/svg+xml");
    let svg = res.text().await.unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<title>echo: 0.05</title>"));
    assert!(svg.contains("<title>units: 0.007</title>"));
    let (status, code) = code_of(
        gw.http
            .get(gw.admin_url("/admin/v1/charts/nope.svg"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "route_not_found"));
}

// ---- the page in a real browser ------------------------------------------------------------

/// A chromedriver process on a free port, killed on drop.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver_path() -> PathBuf {
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.exists(),
        "chromedriver not found at {} -- install Debian's `chromium` and `chromium-driver` \
         (bash tests/run.sh does it with apt-get) or set CHROMEDRIVER",
        path.display()
    );
    path
}

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "chromium not found at {} -- install Debian's `chromium` (bash tests/run.sh does it) or set CHROMIUM",
        path.display()
    );
    path
}

async fn start_chromedriver() -> ChromeDriver {
    let path = chromedriver_path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    let driver = ChromeDriver { child, port };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(res) = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
        {
            if res.status() == 200 {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on port {port}");
}

async fn browser(driver: &ChromeDriver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium_path(),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,3000", "--no-first-run", "--disable-extensions"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless chromium")
}

/// Every displayed figure: `data-figure` name -> text.
async fn figures(c: &Client) -> BTreeMap<String, String> {
    let v = c
        .execute(
            "const out = {}; for (const e of document.querySelectorAll('[data-figure]')) out[e.dataset.figure] = e.textContent; return out;",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Wait until `js` (an expression) is truthy in the page (up to 30 s: CI machines are small
/// and busy).
async fn wait_js(c: &Client, js: &str) {
    for _ in 0..300 {
        let v = c
            .execute(&format!("return !!({js});"), vec![])
            .await
            .unwrap();
        if v == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = c
        .execute("return document.body.innerText;", vec![])
        .await
        .unwrap();
    panic!("timed out waiting for `{js}`; page text:\n{}", body);
}

fn output_dir() -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn dashboard_in_headless_chromium() {
    let _serial = SERIAL.lock().await;
    let s = seeded().await;
    let driver = start_chromedriver().await;
    let c = browser(&driver).await;
    let result = drive(&c, &s).await;
    let _ = c.close().await;
    result.unwrap();
}

async fn drive(c: &Client, s: &Seeded) -> Result<(), fantoccini::error::CmdError> {
    let gw = &s.gw;
    c.goto(&gw.admin_url("/admin/ui")).await?;
    // Logged out: the login form only, no data.
    assert!(c
        .find(Locator::Id("app"))
        .await?
        .attr("hidden")
        .await?
        .is_some());
    std::fs::write(
        output_dir().join("dashboard-login.png"),
        c.screenshot().await?,
    )
    .unwrap();
    // A wrong token is refused and not kept.
    c.find(Locator::Id("token"))
        .await?
        .send_keys("not-the-admin-token")
        .await?;
    c.find(Locator::Id("login-submit")).await?.click().await?;
    wait_js(
        c,
        "document.getElementById('login-error').textContent.includes('401')",
    )
    .await;
    // The right one.
    c.find(Locator::Id("token")).await?.send_keys(ADMIN).await?;
    c.find(Locator::Id("login-submit")).await?.click().await?;
    wait_js(
        c,
        "Number(document.body.dataset.loaded) >= 1 && document.querySelector('[data-figure=\"payer.bob.mandates\"]') && document.querySelector('[data-figure=\"payer.bob.mandates\"]').textContent !== '…'",
    )
    .await;
    assert!(!c.current_url().await?.as_str().contains(ADMIN));
    let stored = c
        .execute(
            "return sessionStorage.getItem('tollgate-admin-token');",
            vec![],
        )
        .await?;
    assert_eq!(stored, json!(ADMIN));

    // Stop the page's polling so the figures and the API are read at the same moment.
    c.execute(
        "const l = document.getElementById('live'); if (l.checked) l.click();",
        vec![],
    )
    .await?;
    let shown = figures(c).await;
    let summary = admin_get(gw, "/admin/v1/summary").await;
    let payers = admin_get(gw, "/admin/v1/payers?limit=20").await;
    let traffic = admin_get(gw, "/admin/v1/traffic?minutes=60").await;
    let f = |k: &str| {
        shown
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("figure {k} not shown; shown: {shown:?}"))
    };
    assert_eq!(
        f("summary.requests"),
        summary["totals"]["requests"].to_string()
    );
    assert_eq!(
        f("summary.revenue.USD"),
        format!(
            "{} USD",
            summary["totals"]["amount"]["USD"].as_str().unwrap()
        )
    );
    assert_eq!(f("summary.revenue.USD"), "0.057 USD");
    for r in summary["routes"].as_array().unwrap() {
        let route = r["route"].as_str().unwrap();
        assert_eq!(
            f(&format!("route.{route}.requests")),
            r["requests"].to_string()
        );
        assert_eq!(
            f(&format!("route.{route}.revenue")),
            format!("{} USD", r["amount"]["USD"].as_str().unwrap())
        );
    }
    assert_eq!(f("units.units.unit"), "7");
    for p in payers["payers"].as_array().unwrap() {
        let id = p["payer"].as_str().unwrap();
        assert_eq!(
            f(&format!("payer.{id}.requests")),
            p["requests"].to_string()
        );
        assert_eq!(
            f(&format!("payer.{id}.spent")),
            format!("{} USD", p["spent"]["USD"].as_str().unwrap())
        );
        let available = p["balances"]["USD"]["available"]
            .as_str()
            .map_or("0".to_owned(), |a| format!("{a} USD"));
        assert_eq!(f(&format!("payer.{id}.available")), available);
        assert_eq!(f(&format!("payer.{id}.status")), "active");
        let detail = admin_get(gw, &format!("/admin/v1/payers/{id}")).await;
        assert_eq!(f(&format!("payer.{id}.mandates")), mandate_summary(&detail));
        if id == "carol" {
            assert_eq!(
                f("payer.carol.mandates"),
                "1 mandate(s), 1 active; no plan",
                "carol paid under a mandate"
            );
            assert_eq!(detail["mandates"][0]["spent"], "0.01");
        }
    }
    assert_eq!(f("traffic.paid"), traffic["totals"]["paid"].to_string());
    assert_eq!(
        f("traffic.402"),
        traffic["totals"]["status_402"].to_string()
    );
    assert_eq!(
        f("refused.payment_required"),
        traffic["totals"]["refused"]["payment_required"].to_string()
    );
    assert_eq!(
        f("refused.receipt_replayed"),
        traffic["totals"]["refused"]["receipt_replayed"].to_string()
    );
    // The order of the top payers is the API's.
    let rows = c
        .execute(
            "return [...document.querySelectorAll('#payers-table tbody tr')].map(r => r.dataset.payer);",
            vec![],
        )
        .await?;
    assert_eq!(rows, json!(["alice", "carol", "bob"]));
    // The settlement queue says what is there.
    let settlement = c
        .find(Locator::Id("settlement-status"))
        .await?
        .text()
        .await?;
    assert_eq!(settlement, "x402 deferred settlement is not enabled.");
    // Charts were drawn (as images from blob: URLs).
    wait_js(
        c,
        "['chart-revenue-USD','chart-requests','chart-traffic'].every(id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'); })",
    )
    .await;
    // A figure links to the query that produced it.
    c.find(Locator::Css("[data-figure=\"summary.requests\"]"))
        .await?
        .click()
        .await?;
    wait_js(
        c,
        "document.getElementById('api-body').textContent.includes('\"totals\"')",
    )
    .await;
    let api_url = c.find(Locator::Id("api-url")).await?.text().await?;
    assert!(
        api_url.starts_with("GET /admin/v1/summary?from="),
        "{api_url}"
    );
    std::fs::write(output_dir().join("dashboard.png"), c.screenshot().await?).unwrap();

    // Action: credit bob 1.25 USD with a reason.
    c.find(Locator::Css("tr[data-payer=\"bob\"] button"))
        .await?
        .click()
        .await?;
    wait_js(c, "!document.getElementById('payer-detail').hidden && document.getElementById('payer-name').textContent === 'bob'").await;
    c.find(Locator::Id("credit-amount"))
        .await?
        .send_keys("1.25")
        .await?;
    c.find(Locator::Id("credit-reason"))
        .await?
        .send_keys("goodwill after an outage")
        .await?;
    c.find(Locator::Id("credit-submit")).await?.click().await?;
    wait_js(c, "document.getElementById('action-result').textContent.startsWith('credited 1.25 USD to bob')").await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "3.243");
    assert_eq!(bob["balances"]["USD"]["credited"], "3.25");
    wait_js(
        c,
        "document.querySelector('[data-figure=\"detail.USD.available\"]').textContent === '3.243'",
    )
    .await;
    // A debit.
    c.find(Locator::Id("debit-submit")).await?.click().await?;
    wait_js(
        c,
        "document.getElementById('action-result').textContent.startsWith('debited 1.25 USD')",
    )
    .await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["balances"]["USD"]["available"], "1.993");

    // Action: block bob; the gateway refuses his token at once.
    c.find(Locator::Id("block")).await?.click().await?;
    wait_js(
        c,
        "document.getElementById('payer-status').textContent === 'blocked'",
    )
    .await;
    let bob = admin_get(gw, "/admin/v1/payers/bob").await;
    assert_eq!(bob["blocked"], true);
    let (status, code) = code_of(gw.token_get("/v1/echo", &s.tokens["bob"]).await).await;
    assert_eq!((status, code.as_str()), (403, "payer_blocked"));

    // Mandate revocation: the endpoint's answer is shown (404 until mandates exist).
    c.find(Locator::Id("mandate-id"))
        .await?
        .send_keys("m-1")
        .await?;
    c.find(Locator::Id("mandate-reason"))
        .await?
        .send_keys("owner asked")
        .await?;
    c.find(Locator::Id("mandate-revoke")).await?.click().await?;
    // Whatever the gateway answers is what the page says (404 until mandates exist).
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
    c.find(Locator::Id("receipt-issuer"))
        .await?
        .send_keys("wallet")
        .await?;
    c.find(Locator::Id("receipt-id"))
        .await?
        .send_keys("j-1")
        .await?;
    c.find(Locator::Id("receipt-revoke")).await?.click().await?;
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
        format!("{} USD", usage["amount"]["USD"].as_str().unwrap())
    );
    std::fs::write(
        output_dir().join("dashboard-actions.png"),
        c.screenshot().await?,
    )
    .unwrap();

    // Unblock again from the page.
    c.find(Locator::Id("unblock")).await?.click().await?;
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

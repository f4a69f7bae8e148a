//! The dashboard suites' fixture: a gateway with traffic, the admin API's JSON, the ledger,
//! and the page's money format written once more in Rust to compare with.

use std::collections::BTreeMap;

use serde_json::Value;
use tollgate_e2e::*;

pub(crate) const ADMIN: &str = "admin-token-dashboard-0123";

/// The tests here count the per-minute traffic view, which is process-wide: one at a time.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A payer id a CSV must quote: a comma, quotes and a newline.
pub(crate) const ODD_PAYER: &str = "eve, \"the\"\nsecond";

/// A payer id a spreadsheet would run as a formula.
pub(crate) const FORMULA_PAYER: &str = "=HYPERLINK(\"x\")";

pub(crate) struct Seeded {
    pub(crate) _redis: RedisServer,
    pub(crate) wallet: TestIssuer,
    pub(crate) gw: TestGateway,
    /// Access tokens by payer.
    pub(crate) tokens: BTreeMap<&'static str, String>,
}

/// A gateway on its own redis-server with traffic: top-ups, paid requests by token and by
/// receipt, a metered request, one at 0.000068 USD (`tiny`), 402s and a replayed receipt.
pub(crate) async fn seeded() -> Seeded {
    seeded_with(|g| g).await
}

/// [`seeded`] with more configuration (e.g. `[ledger]`).
pub(crate) async fn seeded_with(more: impl FnOnce(GatewayBuilder) -> GatewayBuilder) -> Seeded {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = more(
        gateway()
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
            .route(paid("tiny", "/v1/echo/tiny", &up, "0.000068"))
            .route(paid("echo", "/v1/echo", &up, "0.01")),
    )
    .start()
    .await;
    let mut tokens = BTreeMap::new();
    tokens.insert("alice", gw.topup(&wallet, "alice", "5").await);
    tokens.insert("bob", gw.topup(&wallet, "bob", "2").await);
    for _ in 0..3 {
        let res = gw.token_get("/v1/echo", &tokens["alice"]).await;
        assert_eq!(res.status(), 200);
    }
    assert_eq!(
        gw.token_get("/v1/echo/tiny", &tokens["alice"])
            .await
            .status(),
        200
    );
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
    // Refusals: three unpaid requests (402 challenges) and one replayed receipt.
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

/// GET on the admin API with the token.
pub(crate) async fn admin_res(gw: &TestGateway, path: &str) -> reqwest::Response {
    gw.http
        .get(gw.admin_url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
}

pub(crate) async fn admin_get(gw: &TestGateway, path: &str) -> Value {
    let text = admin_text(gw, path).await.1;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// GET on the admin API, answered 200: its headers and text (NDJSON, CSV, SVG).
pub(crate) async fn admin_text(
    gw: &TestGateway,
    path: &str,
) -> (reqwest::header::HeaderMap, String) {
    let res = admin_res(gw, path).await;
    assert_eq!(res.status(), 200, "{path}");
    let headers = res.headers().clone();
    (headers, res.text().await.unwrap())
}

/// GET `path` until `done` holds for its JSON (at most 30 s); the last answer.
pub(crate) async fn admin_until(
    gw: &TestGateway,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut v = Value::Null;
    for _ in 0..300 {
        v = admin_get(gw, path).await;
        if done(&v) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path} never got there: {v}");
}

/// One route of `GET /admin/v1/traffic`'s `routes`.
pub(crate) fn traffic_route<'a>(traffic: &'a Value, id: &str) -> &'a Value {
    traffic["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == id)
        .unwrap_or_else(|| panic!("no route {id} in {traffic}"))
}

/// POST JSON to the admin API: (status, problem code or "").
pub(crate) async fn admin_post(gw: &TestGateway, path: &str, body: Value) -> (u16, String) {
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

/// NDJSON events from the admin API.
pub(crate) async fn events(gw: &TestGateway, path: &str) -> Vec<Value> {
    admin_text(gw, path)
        .await
        .1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The ledger (NDJSON export), every event.
pub(crate) async fn ledger(gw: &TestGateway) -> Vec<Value> {
    events(gw, "/admin/v1/events?limit=10000").await
}

/// Decimal text of `minor` at scale 6, normalized (the API's decimal strings).
pub(crate) fn usd(minor: u64) -> String {
    rust_decimal::Decimal::new(minor as i64, 6)
        .normalize()
        .to_string()
}

/// The page's money format: `<amount> <CODE>` with exactly `scale` decimals, from an exact
/// decimal string.
pub(crate) fn money(decimal: &str, scale: usize, code: &str) -> String {
    let (int, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    assert!(
        frac.len() <= scale,
        "{decimal} has more than {scale} decimals"
    );
    if scale == 0 {
        format!("{int} {code}")
    } else {
        format!("{int}.{frac:0<scale$} {code}")
    }
}

/// USD (scale 6 in these tests) in the page's format.
pub(crate) fn fmt_usd(decimal: &str) -> String {
    money(decimal, 6, "USD")
}

/// USD from atomic units in the page's format.
pub(crate) fn fmt_usd_minor(minor: u64) -> String {
    fmt_usd(&usd(minor))
}

/// What the page shows in a payer's "mandates / plans" cell for its admin record: mandates
/// (and how many are active) and each plan's use, only where the payer has some.
pub(crate) fn mandate_summary(detail: &Value) -> String {
    let mut parts = Vec::new();
    let mandates = detail["mandates"].as_array().cloned().unwrap_or_default();
    if !mandates.is_empty() {
        // As in JavaScript: a mandate is active unless `revoked` is truthy.
        let truthy = |v: &Value| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        let active = mandates.iter().filter(|x| !truthy(&x["revoked"])).count();
        let noun = if mandates.len() == 1 {
            "mandate"
        } else {
            "mandates"
        };
        parts.push(format!("{} {noun}, {active} active", mandates.len()));
    }
    let plans = detail["plans"].as_array().cloned().unwrap_or_default();
    if !plans.is_empty() {
        let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let text: Vec<String> = plans
            .iter()
            .map(|x| format!("{} {}/{}", s(&x["plan"]), s(&x["used"]), s(&x["included"])))
            .collect();
        parts.push(text.join(", "));
    }
    parts.join("; ")
}

/// The traffic view's per-route figures (process-wide: tests take deltas).
pub(crate) fn route_traffic() -> BTreeMap<String, tollgate_middleware::traffic::RouteTraffic> {
    let ring = tollgate_middleware::traffic::global();
    tollgate_middleware::traffic::by_route(&ring.last(now_secs() * 1000, 1440))
}

//! This process's live view per route (402-to-paid conversion; upstream answers, 5xx,
//! unreachable, timeouts and latency), the settlement-queue card as configured (off,
//! immediate, deferred with its queue and failures) on both stores.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_e2e::facilitator::{facilitator, Mode};
use tollgate_e2e::*;
use tollgate_middleware::x402::signer::LocalSigner;

use super::seed::*;

/// The segment titled `title` in an SVG chart is drawn at least 3 px tall.
pub(crate) fn assert_visible_segment(svg: &str, title: &str) {
    let rect = svg
        .split("<rect ")
        .find(|r| r.contains(&format!("<title>{title}</title>")))
        .unwrap_or_else(|| panic!("no segment {title}: {svg}"));
    let height: f64 = rect
        .split("height=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(height >= 3.0, "{title} is {height} px tall");
}

/// An upstream that answers 200, 500 on `/v1/flaky/fail`, and late on `/v1/flaky/slow`.
async fn flaky_upstream() -> TestUpstream {
    let router = axum::Router::new()
        .route("/v1/flaky/ok", get(|| async { "ok" }))
        .route(
            "/v1/flaky/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/v1/flaky/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "late"
            }),
        );
    serve_router(router).await
}

#[tokio::test]
async fn conversion_and_upstream_errors_per_route() {
    let _serial = SERIAL.lock().await;
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let flaky = flaky_upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .route(paid("conv", "/v1/echo", &up, "0.01"))
        .route(free("flaky", "/v1/flaky", &flaky).with("timeout_ms = 300"))
        .route(free("down", "/v1/down", &dead_upstream()))
        .start()
        .await;
    // Unique route ids: nothing else in this process counted them.
    let token = gw.topup(&wallet, "pat", "1").await;
    for _ in 0..3 {
        let res = gw.http.get(gw.url("/v1/echo")).send().await.unwrap();
        assert_eq!(res.status(), 402);
    }
    for _ in 0..2 {
        assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    }
    for path in ["/v1/flaky/ok", "/v1/flaky/ok", "/v1/flaky/fail"] {
        let _ = gw.http.get(gw.url(path)).send().await.unwrap();
    }
    let (status, code) = code_of(gw.http.get(gw.url("/v1/flaky/slow")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    let (status, code) = code_of(gw.http.get(gw.url("/v1/down/x")).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (502, "upstream_unavailable"));

    let traffic = admin_get(&gw, "/admin/v1/traffic?minutes=15").await;
    let conv = traffic_route(&traffic, "conv");
    assert_eq!(
        (conv["paid"].as_u64(), conv["challenges"].as_u64()),
        (Some(2), Some(3))
    );
    // 2 paid per 3 challenges.
    assert_eq!(conv["conversion_pct"], "66.7");
    assert_eq!(conv["revenue"]["USD"], "0.02");
    assert_eq!(conv["upstream"]["answered"], 2);
    assert_eq!(conv["upstream"]["errors"], 0);
    let f = &traffic_route(&traffic, "flaky")["upstream"];
    assert_eq!(
        (
            &f["answered"],
            &f["status_5xx"],
            &f["unreachable"],
            &f["timeouts"],
            &f["errors"]
        ),
        (&json!(3), &json!(1), &json!(0), &json!(1), &json!(2))
    );
    // The local upstream answers within milliseconds: p50 <= p95, both small upper bounds.
    let (p50, p95) = (f["p50_ms"].as_f64().unwrap(), f["p95_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p95 && p95 <= 300.0, "{f}");
    let d = &traffic_route(&traffic, "down")["upstream"];
    assert_eq!(
        (&d["answered"], &d["unreachable"], &d["errors"]),
        (&json!(0), &json!(1), &json!(1))
    );
    assert_eq!(d["p50_ms"], Value::Null);
    // No challenge: no conversion to speak of.
    assert_eq!(
        traffic_route(&traffic, "flaky")["conversion_pct"],
        Value::Null
    );
    // The sqlite store answers newest first from its index, page by page.
    let all = ledger(&gw).await;
    assert_eq!(all.len(), 2);
    let newest_first: Vec<Value> = all.iter().rev().cloned().collect();
    let pages = super::events::paged(
        &gw,
        "/admin/v1/events?order=desc",
        "before",
        "tollgate-next-before",
    )
    .await;
    assert_eq!(pages, newest_first);
    // The live chart separates challenges from the other refusals.
    let (_, svg) = admin_text(&gw, "/admin/v1/charts/traffic.svg?minutes=15").await;
    assert!(svg.contains(">402 challenges</text>") && svg.contains(">other refusals</text>"));
}

const NETWORK: &str = "eip155:84532";
const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

fn x402_route(upstream: &TestUpstream, mode: &str) -> RouteSpec {
    paid("data", "/v1/echo/data", upstream, "0.01").with(&format!(
        "x402_settlement = \"{mode}\"\n[[routes.x402]]\nnetwork = \"{NETWORK}\"\nasset = \"{ASSET}\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"{PAY_TO}\"\namount = \"10000\"\nmax_timeout_secs = 120"
    ))
}

/// Pay `/v1/echo/data` once with x402 from a fresh key.
async fn pay_x402(gw: &TestGateway) {
    let res = gw.http.get(gw.url("/v1/echo/data")).send().await.unwrap();
    let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
    let offer = req["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["scheme"] == "exact")
        .unwrap()
        .clone();
    let payload = LocalSigner::random()
        .pay(&offer, u64::try_from(now_secs()).unwrap())
        .unwrap();
    let res = gw
        .http
        .get(gw.url("/v1/echo/data"))
        .header("payment-signature", STANDARD.encode(payload.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn queue_until(gw: &TestGateway, (queued, failed): (u64, u64)) -> Value {
    admin_until(gw, "/admin/v1/x402/queue", |q| {
        (q["queued"].as_u64(), q["failed"].as_u64()) == (Some(queued), Some(failed))
    })
    .await
}

#[tokio::test]
async fn the_settlement_queue_card_follows_the_config() {
    let _serial = SERIAL.lock().await;
    let up = upstream().await;
    let f = facilitator(&[NETWORK]).await;
    let x402 = format!(
        "[x402]\nfacilitator_url = \"{}\"\nfacilitator_timeout_ms = 300\nsettle_interval_ms = 20\nsettle_retry_base_ms = 600000\nsettle_max_attempts = 3",
        f.url()
    );
    // No x402 route: off.
    let gw = gateway()
        .issuer(&TestIssuer::ed25519("wallet"))
        .admin(ADMIN)
        .route(paid("p", "/v1/p", &up, "0.01"))
        .start()
        .await;
    assert_eq!(
        admin_get(&gw, "/admin/v1/x402/queue").await,
        json!({"mode": "off", "routes": [], "queued": 0, "failed": 0})
    );
    // Settled within the request: immediate.
    let gw = gateway()
        .top(&x402)
        .admin(ADMIN)
        .route(x402_route(&up, "before"))
        .start()
        .await;
    assert_eq!(
        admin_get(&gw, "/admin/v1/x402/queue").await,
        json!({"mode": "immediate", "routes": [{"route": "data", "mode": "before"}], "queued": 0, "failed": 0})
    );
    // Deferred, on both stores: one settlement refused for good, one waiting for its retry.
    let redis = RedisServer::start();
    for on_redis in [false, true] {
        let builder = gateway()
            .top(&x402)
            .admin(ADMIN)
            .route(x402_route(&up, "deferred"));
        let gw = if on_redis {
            builder.redis(&redis)
        } else {
            builder
        }
        .start()
        .await;
        let q = admin_get(&gw, "/admin/v1/x402/queue").await;
        assert_eq!(q["mode"], "deferred");
        assert_eq!(q["routes"], json!([{"route": "data", "mode": "deferred"}]));
        f.set_settle(Mode::Refuse("insufficient_funds".into()));
        pay_x402(&gw).await;
        queue_until(&gw, (0, 1)).await;
        f.set_settle(Mode::Hang(Duration::from_secs(2)));
        pay_x402(&gw).await;
        // The attempt times out and is retried in 10 minutes: it waits in the queue.
        let q = queue_until(&gw, (1, 1)).await;
        assert_eq!(q["mode"], "deferred", "redis: {on_redis}");
        let failed = admin_get(&gw, "/admin/v1/x402/settlements/failed").await;
        assert_eq!(failed["settlements"].as_array().unwrap().len(), 1);
    }
}

//! The prepaid-balance fixture shared by `balances.rs` and `operations.rs`: a gateway on a
//! private redis-server with fixed and metered routes, a wallet and the admin API.

use serde_json::Value;
use tollgate_e2e::*;

pub(crate) const ADMIN: &str = "admin-token-0123456789";

pub(crate) struct Fixture {
    /// Keeps the store's server(s) alive.
    pub(crate) _store: Box<dyn std::any::Any + Send>,
    pub(crate) wallet: TestIssuer,
    pub(crate) gw: TestGateway,
}

/// Routes: fixed `/v1/echo` at 0.01; metered chat (JSON and SSE token prices), header units,
/// response bytes, duration; all on one upstream.
pub(crate) async fn fixture() -> Fixture {
    let redis = RedisServer::start();
    let builder = gateway().redis(&redis);
    fixture_with(Box::new(redis), builder).await
}

pub(crate) async fn fixture_with(
    store: Box<dyn std::any::Any + Send>,
    builder: GatewayBuilder,
) -> Fixture {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let tokens = [
        ("prompt_token", "json:/usage/prompt_tokens", "0.000001"),
        (
            "completion_token",
            "json:/usage/completion_tokens",
            "0.000003",
        ),
    ];
    let gw = builder
        .issuer(&wallet)
        .admin(ADMIN)
        .route(metered(
            "chat",
            "/v1/chat/completions",
            &up,
            "0.01",
            &tokens,
        ))
        .route(metered(
            "units",
            "/v1/echo/units",
            &up,
            "0.05",
            &[("unit", "header:x-units", "0.001")],
        ))
        .route(metered(
            "bytes",
            "/v1/echo/bytes",
            &up,
            "0.05",
            &[("byte", "response_bytes", "0.000001")],
        ))
        .route(metered(
            "upload",
            "/v1/echo/upload",
            &up,
            "0.05",
            &[("byte", "request_bytes", "0.000001")],
        ))
        .route(metered(
            "time",
            "/v1/echo/time",
            &up,
            "0.05",
            &[("ms", "duration_ms", "0.000001")],
        ))
        .route(
            metered(
                "lenient",
                "/v1/echo/lenient",
                &up,
                "0.05",
                &[("unit", "header:x-units", "0.001")],
            )
            .with_price_option("on_missing = \"zero\""),
        )
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    Fixture {
        _store: store,
        wallet,
        gw,
    }
}

pub(crate) fn avail(b: &Value) -> String {
    b["balances"]["USD"]["available"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

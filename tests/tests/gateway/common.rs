//! What `gateway.rs` and `lifecycle.rs` build with: a paid `/v1/echo` and a free `/free` on one
//! upstream, behind a gateway on a private redis-server.

use tollgate_e2e::*;

/// `/v1/echo`'s price (USD).
pub(crate) const PRICE: &str = "0.01";

pub(crate) async fn setup(redis: &RedisServer) -> (TestIssuer, TestUpstream, TestGateway) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(redis)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .route(free("free", "/free", &up))
        .start()
        .await;
    (wallet, up, gw)
}

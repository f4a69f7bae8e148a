//! `GET /.well-known/tollgate`: the price catalog, from the config.

use super::*;

/// The price catalog for agents: what is sold, at what price, and how to pay -- so an agent can
/// choose before it calls. Built from the configuration in force (reloads apply).
pub(crate) async fn catalog(State(gw): State<Gateway>) -> Response {
    let body = catalog_json(&gw.inner());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A price as the catalog states it: `"free"`, `{"kind": "fixed", ...}` or
/// `{"kind": "metered", ...}`.
pub(crate) fn price_json(price: &tollgate_middleware::Price) -> serde_json::Value {
    use serde_json::json;
    use tollgate_middleware::Price;
    match price {
        Price::Fixed(money) => json!({
            "kind": "fixed",
            "amount": money.amount.to_string(),
            "currency": money.currency.code(),
            "decimals": money.currency.scale(),
        }),
        Price::Metered(metered) => {
            let mut v = json!({
                "kind": "metered",
                "currency": metered.currency.code(),
                "decimals": metered.currency.scale(),
                "reserve": metered.reserve.to_string(),
                "cutoff": metered.cutoff,
                "units": metered.meters.iter().map(|x| json!({"unit": x.unit, "price": x.price.to_string()})).collect::<Vec<_>>(),
            });
            // A stream that runs dry waits for a top-up (docs/payment-rules.md).
            if let tollgate_middleware::OnExhausted::Pause { timeout } = metered.on_exhausted {
                v["on_exhausted"] = "pause".into();
                v["pause_timeout_secs"] = timeout.as_secs().into();
            }
            v
        }
        _ => json!("free"),
    }
}

/// How tokens are bound to the agent's key here (`off`, `optional`, `required`).
fn dpop_mode(inner: &Inner) -> &'static str {
    use tollgate_middleware::dpop::DpopMode;
    match inner.paywall.dpop_policy().mode {
        DpopMode::Off => "off",
        DpopMode::Optional => "optional",
        DpopMode::Required => "required",
    }
}

/// The catalog document of a configuration (also the agent MCP server's `catalog` tool and
/// resource).
pub(crate) fn catalog_json(inner: &Inner) -> serde_json::Value {
    use serde_json::json;
    let api = inner.agent_api.clone();
    let routes: Vec<serde_json::Value> = inner
        .routes
        .iter()
        .map(|m| {
            let c = &*m.route;
            let price = price_json(&m.route.price);
            let mut route = json!({
                "id": c.id,
                "path": c.path,
                "methods": m.route.methods.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                "host": c.host,
                "description": m.priced.description,
                "mimeType": m.priced.mime_type,
                "group": m.priced.group_name(),
                "price": price,
            });
            if let Some(tools) = &m.tools {
                route["mcp"] = tools.catalog();
            }
            if let Some(x) = &m.route.x402 {
                route["x402"] = json!({
                    "settlement": x.mode.as_str(),
                    "accepts": x.offers.iter().map(|o| o.requirements())
                        .chain(x.upto.iter().map(|o| o.requirements()))
                        .collect::<Vec<_>>(),
                });
            }
            route
        })
        .collect();
    let mut x402_networks: Vec<&str> = inner
        .routes
        .iter()
        .filter_map(|m| m.route.x402.as_ref())
        .flat_map(|x| {
            let exact = x.offers.iter().map(|o| o.network.as_str());
            exact.chain(x.upto.iter().map(|o| o.network.as_str()))
        })
        .collect();
    x402_networks.sort_unstable();
    x402_networks.dedup();
    let currencies: serde_json::Map<String, serde_json::Value> = inner
        .currencies
        .iter()
        .map(|(code, c)| {
            let suggested = inner
                .topups
                .get(code)
                .copied()
                .flatten()
                .map(|a| a.to_string());
            (
                code.clone(),
                json!({"decimals": c.scale(), "topupSuggested": suggested}),
            )
        })
        .collect();
    json!({
        "merchant": inner.paywall.merchant(),
        "network": inner.network,
        "currencies": currencies,
        "issuers": inner.issuers,
        "paymentMethods": [
            {"scheme": tollgate_middleware::credential::RECEIPT_SCHEME, "kind": "receipt", "headers": ["PAYMENT-SIGNATURE", "X-PAYMENT", "Authorization: Payment"], "algorithms": ["EdDSA", "ES256"]},
            {"scheme": "bearer", "kind": "access-token", "headers": ["Authorization: Bearer"], "obtain": format!("{api}/topup")},
            {"scheme": "dpop", "kind": "access-token", "headers": ["Authorization: DPoP", "DPoP"], "obtain": format!("{api}/topup"), "binding": dpop_mode(inner), "algorithms": ["EdDSA", "ES256"], "maxProofAgeSeconds": inner.paywall.dpop_policy().max_age.as_secs()},
        ],
        "x402Networks": x402_networks,
        "agentEndpoints": {"topup": format!("{api}/topup"), "token": format!("{api}/token"), "balance": format!("{api}/balance"), "usage": format!("{api}/usage"), "mcp": format!("{api}/mcp")},
        "mandates": {
            "accepted": true,
            "carry": ["receipt claim \"mandate\" (the mandate JWT)", "Tollgate-Mandate request header", "an access token bound at top-up or renewal"],
            "windows": ["hour", "day", "week", "month"],
            "windowKind": "UTC calendar",
        },
        "routes": routes,
        "plans": inner.paywall.plans().iter().map(|p| p.catalog()).collect::<Vec<_>>(),
    })
}

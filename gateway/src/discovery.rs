//! Discovery in the ecosystem's formats, generated from the configuration in force (reloads
//! apply): `GET /openapi.json` -- OpenAPI 3.1 of the priced routes with `x-service-info` and a
//! per-operation `x-payment-info` (the Payment scheme's discovery, draft-payment-discovery) --
//! and `GET /llms.txt`, one page an LLM reads in one go: what is sold, at what price, how to pay
//! with each credential, the agent endpoints. Both are cacheable for 5 minutes; the 402
//! challenges stay authoritative. `[discovery] enabled = false` hands both paths to the routes.
//!
//! `x-payment-info` of a fixed price: `{intent: "charge", method: "tollgate", amount: <atomic
//! units>, currency}`, plus one offer per x402 `exact` option (`method: "x402"`, the token's
//! atomic amount and contract); of a metered route: `amount: null` (known once metered) with
//! the meters and the amount held per call.

use std::fmt::Write as _;

use serde_json::{json, Value};
use tollgate_middleware::Price;

use super::*;

/// How long the documents may be cached.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The base URL documents link to: `public_url`, else the request's host.
fn base_url(inner: &Inner, headers: &http::HeaderMap) -> String {
    if let Some(u) = &inner.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn title(inner: &Inner) -> String {
    inner
        .discovery
        .title
        .clone()
        .unwrap_or_else(|| inner.paywall.merchant().to_owned())
}

/// The methods a route is listed under (any method: GET and POST).
fn methods(m: &Matched) -> Vec<String> {
    if m.route.methods.is_empty() {
        vec!["get".into(), "post".into()]
    } else {
        m.route
            .methods
            .iter()
            .map(|x| x.as_str().to_ascii_lowercase())
            .collect()
    }
}

/// A route's `x-payment-info` (`None` for a free route).
fn payment_info(m: &Matched) -> Option<Value> {
    let description = &m.priced.description;
    let native = match &m.route.price {
        Price::Fixed(money) => json!({
            "intent": "charge",
            "method": tollgate_middleware::paywall::PAYMENT_METHOD,
            "amount": money.currency.to_minor(money.amount).ok()?.to_string(),
            "currency": money.currency.code(),
            "decimals": money.currency.scale(),
            "description": format!("{description}: {} {} per call", money.amount, money.currency.code()),
        }),
        Price::Metered(metered) => json!({
            "intent": "charge",
            "method": tollgate_middleware::paywall::PAYMENT_METHOD,
            "amount": null,
            "currency": metered.currency.code(),
            "decimals": metered.currency.scale(),
            "description": format!("{description}: metered ({}), up to {} {} held per call", meters_text(metered), metered.reserve, metered.currency.code()),
            "meters": metered.meters.iter().map(|x| json!({"unit": x.unit, "price": x.price.to_string()})).collect::<Vec<_>>(),
            "reserve": metered.reserve.to_string(),
        }),
        _ => return None,
    };
    let mut offers = vec![native];
    if let Some(x) = &m.route.x402 {
        let exact = x.offers.iter().map(|o| (o.requirements(), "x402 exact"));
        let upto = x.upto.iter().map(|o| {
            (
                o.requirements(),
                "x402 upto (a maximum; the measured cost is settled)",
            )
        });
        for (req, what) in exact.chain(upto) {
            offers.push(json!({
                "intent": "charge",
                "method": "x402",
                "amount": req["amount"],
                "currency": req["asset"],
                "description": format!("{what} on {}", req["network"].as_str().unwrap_or("")),
                "x402": req,
            }));
        }
    }
    Some(json!({ "offers": offers }))
}

fn meters_text(metered: &tollgate_middleware::meter::Metered) -> String {
    metered
        .meters
        .iter()
        .map(|x| format!("{} {} per {}", x.price, metered.currency.code(), x.unit))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 402 answer every paid operation may give.
fn payment_required() -> Value {
    json!({
        "description": "Payment required: the offers are in PAYMENT-REQUIRED (x402 v2, base64 JSON), WWW-Authenticate: Payment and the problem body",
        "headers": {
            "PAYMENT-REQUIRED": {"schema": {"type": "string"}, "description": "x402 v2 PaymentRequired, base64 JSON"},
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Payment challenge (draft-httpauth-payment)"},
        },
        "content": {"application/problem+json": {"schema": {"type": "object"}}},
    })
}

fn operation(m: &Matched, method: &str, info: &Value) -> Value {
    let c = &*m.route;
    let mut op = json!({
        "operationId": if methods(m).len() > 1 { format!("{}_{method}", c.id) } else { c.id.clone() },
        "summary": m.priced.description,
        "description": format!("Route `{}`: this path and every path under it.", c.id),
        "security": [{"payment": []}, {"accessToken": []}],
        "x-payment-info": info,
        "responses": {
            "200": {
                "description": "Served by the upstream; PAYMENT-RESPONSE says what was charged",
                "content": {m.priced.mime_type.as_str(): {}},
            },
            "402": payment_required(),
        },
    });
    if matches!(method, "post" | "put" | "patch") {
        op["requestBody"] = json!({
            "required": false,
            "description": "Passed to the upstream as sent",
            "content": {"application/json": {"schema": {}}},
        });
    }
    op
}

/// The OpenAPI document.
fn openapi_doc(inner: &Inner, base: &str) -> Value {
    let d = &inner.discovery;
    let mut paths = serde_json::Map::new();
    for m in &inner.routes {
        let Some(info) = payment_info(m) else {
            continue;
        };
        let item = paths
            .entry(m.route.path.clone())
            .or_insert_with(|| json!({}));
        for method in methods(m) {
            // The first route for a path and method is the one that matches.
            if item.get(&method).is_none() {
                item[method.as_str()] = operation(m, &method, &info);
            }
        }
    }
    let api = &inner.agent_api;
    for (path, method, summary) in [
        (format!("{api}/topup"), "post", "Credit the balance with a top-up receipt (Authorization: Payment <receipt JWT>); answers an access token"),
        (format!("{api}/token"), "post", "A new access token for the balance, with a receipt or a valid token"),
        (format!("{api}/balance"), "get", "The caller's balance (Authorization: Bearer <access token>)"),
    ] {
        paths.insert(
            path,
            json!({method: {"summary": summary, "responses": {"200": {"description": "OK"}, "401": {"description": "Credential missing or not valid"}}}}),
        );
    }
    let mut docs = json!({"llms": "/llms.txt", "apiReference": "/openapi.json"});
    if let Some(h) = &d.homepage {
        docs["homepage"] = json!(h);
    }
    let mut info = json!({
        "title": title(inner),
        "version": d.version.clone().unwrap_or_else(|| "1".into()),
        "x-tollgate-version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(desc) = &d.description {
        info["description"] = json!(desc);
    }
    json!({
        "openapi": "3.1.0",
        "info": info,
        "servers": [{"url": base}],
        "x-service-info": {"categories": d.categories, "docs": docs},
        "paths": paths,
        "components": {"securitySchemes": {
            "payment": {"type": "http", "scheme": "Payment", "description": "A signed receipt (JWT) from a trusted issuer, or the x402 PAYMENT-SIGNATURE header"},
            "accessToken": {"type": "http", "scheme": "bearer", "description": "A tg1. access token from a top-up, drawing down a prepaid balance"},
        }},
    })
}

/// The `llms.txt` page.
fn llms_text(inner: &Inner, base: &str) -> String {
    let d = &inner.discovery;
    let api = &inner.agent_api;
    let mut s = String::new();
    let _ = writeln!(s, "# {}\n", title(inner));
    let summary = d
        .description
        .as_deref()
        .unwrap_or("A paid API: agents pay per call with HTTP 402 -- no account, no sign-up.");
    let _ = writeln!(s, "> {}\n", summary.replace('\n', " "));
    let _ = writeln!(
        s,
        "Base URL: {base}. Machine-readable: {base}/openapi.json (OpenAPI with x-payment-info), \
         {base}/.well-known/tollgate (the full price catalog).\n"
    );
    let _ = writeln!(s, "## What is sold\n");
    for m in &inner.routes {
        let c = &*m.route;
        let methods = if m.route.methods.is_empty() {
            "any method".to_owned()
        } else {
            m.route
                .methods
                .iter()
                .map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let price = match &m.route.price {
            Price::Fixed(money) => format!("{} {} per call", money.amount, money.currency.code()),
            Price::Metered(metered) => format!(
                "metered: {}; up to {} {} is held per call and only what was used is charged",
                meters_text(metered),
                metered.reserve,
                metered.currency.code()
            ),
            _ => "free".to_owned(),
        };
        let _ = writeln!(
            s,
            "- `{}` ({methods}) -- {price}. {}",
            c.path, m.priced.description
        );
    }
    let plans = inner.paywall.plans();
    if !plans.is_empty() {
        let _ = writeln!(s, "\n## Plans\n");
        for p in plans {
            let period = p.period.as_secs();
            let included = match (&p.unit, p.calls) {
                (_, None) => "unlimited calls".to_owned(),
                (None, Some(n)) => format!("{n} calls"),
                (Some(u), Some(n)) => format!("{n} {u}"),
            };
            let _ = writeln!(
                s,
                "- `{}`: {} {} for {included} over {period} s (subscribe: POST {api}/subscribe with a receipt of kind \"subscribe\").",
                p.id,
                p.price.amount,
                p.price.currency.code()
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## How to pay\n\n\
         1. Call the route. Unpaid, it answers **402** with the offers: the `PAYMENT-REQUIRED` \
         header (x402 v2, base64 JSON), `WWW-Authenticate: Payment ...` and a problem+json body \
         that states the price. Amounts in offers are in atomic units (`decimals` says the scale).\n\
         2. Pay with one of:\n   \
         - **a signed receipt**: a JWT from a trusted issuer (your wallet; `aud` = `{merchant}`, \
         `kind: \"payment\"`, `amount` a decimal string), sent as `Authorization: Payment <jwt>` \
         (or `PAYMENT-SIGNATURE`). One receipt pays one call.\n   \
         - **an access token**: top up once with `POST {api}/topup` and a receipt of \
         `kind: \"topup\"` in `Authorization: Payment <jwt>`; the answer holds a `tg1.` token. \
         Then send `Authorization: Bearer <token>` on each call: the price is drawn from the \
         balance.\n   \
         - **x402 `exact`** (where the 402 lists an `exact` offer): a signed EIP-3009 \
         authorization in `PAYMENT-SIGNATURE`.\n\
         3. A paid answer carries `PAYMENT-RESPONSE` (base64 JSON: what was charged, the event \
         id, the balance left). A refused payment is a problem+json with a stable `code`.\n",
        merchant = inner.paywall.merchant(),
    );
    let _ = writeln!(
        s,
        "## Agent endpoints\n\n\
         - `POST {api}/topup` -- credit the balance with a top-up receipt; returns an access token.\n\
         - `POST {api}/token` -- a fresh access token for the same balance.\n\
         - `GET {api}/balance` -- the balance (`Authorization: Bearer <token>`).\n\
         - `POST {api}/subscribe` -- buy a plan with a receipt of kind \"subscribe\".\n\
         - `GET {api}/usage` -- your own charges, newest first (`Authorization: Bearer <token>`).\n\
         - `POST {api}/mcp` -- all of these as MCP tools (Streamable HTTP): catalog, plans, quote, \
         balance, usage, topup, subscribe, token. MCP routes sell tools per `tools/call`: an unpaid \
         call answers JSON-RPC error -32042 with the challenge; retry with \
         `_meta[\"org.paymentauth/credential\"]`, `_meta[\"x402/payment\"]` or a Bearer token.\n"
    );
    let currencies: Vec<String> = inner
        .currencies
        .iter()
        .map(|(code, c)| format!("{code} ({} decimals)", c.scale()))
        .collect();
    let _ = writeln!(
        s,
        "## Currencies and issuers\n\n- Currencies: {}\n- Trusted receipt issuers: {}",
        currencies.join(", "),
        inner.issuers.join(", ")
    );
    s
}

/// Hand the request to the routes when discovery is off.
async fn or_routes(
    gw: Gateway,
    req: Request,
    make: fn(&Inner, &str) -> (&'static str, String),
) -> Response {
    let inner = gw.inner();
    if !inner.discovery.enabled {
        return router::handle(State(gw), req).await;
    }
    let base = base_url(&inner, req.headers());
    let (content_type, body) = make(&inner, &base);
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        body,
    )
        .into_response()
}

/// `GET /openapi.json`.
pub(crate) async fn openapi(State(gw): State<Gateway>, req: Request) -> Response {
    or_routes(gw, req, |inner, base| {
        ("application/json", openapi_doc(inner, base).to_string())
    })
    .await
}

/// `GET /llms.txt`.
pub(crate) async fn llms(State(gw): State<Gateway>, req: Request) -> Response {
    or_routes(gw, req, |inner, base| {
        ("text/plain; charset=utf-8", llms_text(inner, base))
    })
    .await
}

//! `[routes.mcp]`: the route proxies an upstream MCP server (Streamable HTTP) and sells its
//! tools one `tools/call` at a time. The route's own `price` is what a tool not named under
//! `[routes.mcp.tools]` costs (`"free"`, or a price); `initialize`, `tools/list`, every other
//! method and notifications are always free.

use std::collections::BTreeMap;

use serde::Deserialize;
use tollgate_middleware::money::Currency;
use tollgate_middleware::Price;

use super::price::{validate_price, PriceConfig};
use super::{invalid, within, ConfigError, RouteConfig};

/// `[routes.mcp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Prices per tool name: `[routes.mcp.tools.<name>]`.
    #[serde(default)]
    pub tools: BTreeMap<String, McpToolConfig>,
    /// The largest upstream answer to a paid `tools/call` (bytes): it is read whole to find the
    /// result, meter it and add the settlement; a larger one is not delivered (nothing charged).
    #[serde(default = "super::n64::<{ 4 * 1024 * 1024 }>")]
    pub max_response_bytes: u64,
}

/// `[routes.mcp.tools.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolConfig {
    /// What one call costs: `"free"`, `{ amount, currency }`, or a metered price whose meters
    /// read the JSON-RPC response (`json:<pointer>` into it, `response_bytes` its size).
    pub price: PriceConfig,
    /// Shown to agents in offers (default: the route's description and the tool's name).
    pub description: Option<String>,
}

/// A validated `[routes.mcp]`.
#[derive(Debug, Clone)]
pub struct McpRoute {
    /// The price of each named tool.
    pub tools: BTreeMap<String, (Price, Option<String>)>,
    /// The largest paid answer read.
    pub max_response_bytes: usize,
}

/// An MCP tool name as `[routes.mcp.tools]` may name it (MCP's guidance: 1 to 128 of
/// `A-Z a-z 0-9 _ - .`); it becomes part of the route id of its usage events.
fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `routes[i].mcp`, if set.
pub(super) fn validate_mcp(
    i: usize,
    rc: &RouteConfig,
    currencies: &BTreeMap<String, Currency>,
    has_issuers: bool,
) -> Result<Option<McpRoute>, ConfigError> {
    let Some(mcp) = &rc.mcp else {
        return Ok(None);
    };
    let f = |k: &str| format!("routes[{i}].mcp.{k}");
    if !rc.x402.is_empty() {
        return Err(invalid(
            format!("routes[{i}].x402"),
            "x402 exact offers are not sold on MCP routes yet: tool calls pay with receipts and access tokens",
        ));
    }
    if !rc.methods.is_empty() && !rc.methods.iter().any(|m| m.eq_ignore_ascii_case("POST")) {
        return Err(invalid(
            format!("routes[{i}].methods"),
            "an MCP route must accept POST (Streamable HTTP sends every message with POST)",
        ));
    }
    within(
        f("max_response_bytes"),
        mcp.max_response_bytes,
        1024,
        64 * 1024 * 1024,
    )?;
    let mut tools = BTreeMap::new();
    for (name, tool) in &mcp.tools {
        let field = f(&format!("tools.{name}"));
        if !valid_tool_name(name) {
            return Err(invalid(
                field,
                "a tool name is 1 to 128 of A-Z a-z 0-9 _ - .",
            ));
        }
        // The price rules of a route's `price`, with the error naming this tool's field.
        let price = validate_price(i, &tool.price, currencies).map_err(|e| match e {
            ConfigError::Invalid { field: f2, message } => ConfigError::Invalid {
                field: f2.replacen(&format!("routes[{i}].price"), &format!("{field}.price"), 1),
                message,
            },
            other => other,
        })?;
        if !matches!(price, Price::Free) && !has_issuers {
            return Err(invalid(
                format!("{field}.price"),
                "a priced tool needs at least one [[issuers]] entry",
            ));
        }
        tools.insert(name.clone(), (price, tool.description.clone()));
    }
    Ok(Some(McpRoute {
        tools,
        max_response_bytes: usize::try_from(mcp.max_response_bytes).unwrap_or(usize::MAX),
    }))
}

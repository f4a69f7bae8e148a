//! # tollgate-middleware
//!
//! The Tollgate payment engine: answer unpaid requests with HTTP 402 and x402-compatible
//! payment requirements, verify signed payment receipts, make each receipt single-use
//! (atomically, in Redis or in memory), and record exactly one usage event per served request.
//! Use it through [`PaymentLayer`] in any tower/axum service, or through the `tollgate`
//! gateway binary.
//!
//! # Layout
//! - [`money`]: `Amount`, `Currency`, the one decimal <-> minor-unit conversion;
//! - [`price`]: `Price`, `PricedRoute`;
//! - [`challenge`]: stateless HMAC challenge ids;
//! - [`receipt`]: receipt verification and issuer keys (inline, PEM, JWKS URL);
//! - [`issuer`]: signing receipts (wallets, tests);
//! - [`credential`]: finding the credential in request headers;
//! - [`store`]: the `Store` trait, `RedisStore` (Lua scripts) and `SqliteStore` (embedded, persistent);
//! - [`meter`]: usage sources, reading usage from responses, unit pricing;
//! - [`token`]: gateway-issued access tokens (HMAC); [`dpop`]: binding them to the agent's key
//!   (RFC 9449 proofs);
//! - [`paywall`]: the engine phases (challenge, admit, settle);
//! - [`layer`]: `PaymentLayer` (tower); [`pause`]: metered streams paused for a top-up;
//! - [`drain`]: `DrainLayer`, which keeps keep-alive connections usable after a refusal left
//!   the request body unread;
//! - [`error`]: `ErrorCode` and problem+json; [`jsonrpc`]: JSON-RPC 2.0 messages (MCP);
//! - [`clock`]: injected time;
//! - [`metrics`]: Prometheus counters; [`traffic`]: the last day's traffic per minute (dashboard).
//! - [`x402`]: x402 `exact` EVM offers, local verification, the facilitator client.
//! - `client` (feature `client`): `PayingClient`, which pays the 402s it meets by policy.
//! - `ledger` (feature `postgres`): the PostgreSQL ledger of record and the drainer that moves
//!   the Redis store's streams into it.

#![warn(missing_docs)]

/// `Debug` for `$ty` that prints only the named fields: keys, caches and handles stay out of
/// logs (`Type { a: .., b: .., .. }`).
macro_rules! debug_fields {
    ($ty:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}

pub mod challenge;
#[cfg(feature = "client")]
pub mod client;
pub mod clock;
pub mod content_coding;
pub mod credential;
pub mod dpop;
pub mod drain;
pub mod error;
mod fetch;
pub mod issuer;
pub mod jsonrpc;
pub mod layer;
#[cfg(feature = "postgres")]
pub mod ledger;
pub mod mandate;
pub mod meter;
pub mod metrics;
pub mod money;
pub mod pause;
pub mod paywall;
pub mod plan;
pub mod price;
pub mod receipt;
pub mod receipt_amount;
pub mod revocations;
pub mod risk;
pub mod store;
pub mod token;
pub mod traffic;
pub mod webhooks;
pub mod x402;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, Problem};
pub use layer::{PaymentBody, PaymentLayer, PaymentService, RouteFromExtension, RouteResolver};
pub use meter::{Meter, Metered, OnExhausted, OnMissing, UsageSource};
pub use money::{Amount, Currency, Money, MoneyError};
pub use paywall::{
    Admission, BodyEnd, Head, LeaseConfig, OwnedHead, Payment, Paywall, PaywallBuilder, Refusal,
    Reply, RequestBodyCounter,
};
pub use price::{Price, PricedRoute};
pub use receipt::{
    Issuer, IssuerKey, JwksKeys, KeySource, Receipt, ReceiptKind, ReceiptPolicy, ReceiptVerifier,
    StaticKeys,
};
pub use store::{RedisStore, RedisStoreOptions, SqliteStore, Store, StoreError, UsageEvent};

/// The JWT crate this engine verifies with (for wallets and tests that sign receipts).
pub use jsonwebtoken;
/// JWK types, re-exported from `jsonwebtoken` for configuring issuer keys.
pub use jsonwebtoken::jwk;

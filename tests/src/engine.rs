//! The payment engine without a gateway, for suites that drive it directly (an injected
//! clock, a store of their choosing): merchant `m`, USD at 6 decimals, one trusted issuer.

use std::sync::Arc;

use tollgate_middleware::receipt::{Issuer, IssuerKey, StaticKeys};
use tollgate_middleware::{Clock, Currency, PaywallBuilder, Store};

use crate::TestIssuer;

/// USD with 6 decimals (atomic unit 0.000001).
pub fn usd() -> Currency {
    Currency::try_new("USD", 6).expect("USD")
}

/// An engine builder for merchant `m` over `store`, on `clock`, trusting `issuer`; callers
/// add what their suite needs (hold margin, plans...) and `build()`.
pub fn engine_builder(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    issuer: &TestIssuer,
) -> PaywallBuilder {
    let key = IssuerKey::from_jwk(issuer.signer.public_jwk()).expect("issuer key");
    tollgate_middleware::Paywall::builder("m", vec![7u8; 32])
        .store(store)
        .clock(clock)
        .currency(usd(), None)
        .issuer(Issuer {
            id: issuer.id.clone(),
            keys: Arc::new(StaticKeys(vec![key])),
        })
}

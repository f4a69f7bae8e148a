//! Store fixtures shared by the store suites (`tests/store.rs`, `tests/conformance/`): a
//! receipt reservation and the usage event of its capture.

use std::time::Duration;

use tollgate_middleware::store::Reservation;
use tollgate_middleware::UsageEvent;

/// A 60 s hold of receipt `jti` (issuer `iss`) for `payer`, spent for 10 minutes.
pub fn reservation(payer: &str, jti: &str) -> Reservation {
    Reservation {
        id: uuid::Uuid::new_v4().to_string(),
        payer: payer.into(),
        issuer: "iss".into(),
        receipt_id: jti.into(),
        hold: Duration::from_secs(60),
        spent_until_ms: (crate::now_secs() + 600) * 1000,
        mandate: None,
    }
}

/// A 0.01 USD request event of `r` (time 1 ms: day 19700101).
pub fn event(r: &Reservation) -> UsageEvent {
    UsageEvent {
        id: String::new(),
        time_ms: 1,
        payer: r.payer.clone(),
        route: "compute".into(),
        method: "POST".into(),
        units: [("request".to_owned(), 1)].into(),
        unit_prices: Default::default(),
        amount_minor: 10_000,
        uncharged_minor: 0,
        currency: "USD".into(),
        scale: 6,
        credential: format!("receipt:iss:{}", r.receipt_id),
        reservation: r.id.clone(),
        upstream_status: 200,
        voids: None,
    }
}

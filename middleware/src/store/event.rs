//! The usage event: one settled request as the ledger records it, and its field encoding
//! (the Redis stream's fields; the memory store keeps the struct).

use super::*;

/// One settled request, as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct UsageEvent {
    /// Ledger id assigned by the store: `<ms>-<seq>-<bucket>` (empty until recorded). Ids
    /// order events; [`EventPage::After`] resumes from one.
    pub id: String,
    /// When the request was settled, unix ms (gateway clock).
    pub time_ms: i64,
    /// Who paid.
    pub payer: String,
    /// Route id.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Units served, by unit (`request`, `prompt_token`, `byte`, ...).
    pub units: BTreeMap<String, u64>,
    /// Price per unit, by unit (decimal strings; empty for fixed prices).
    pub unit_prices: BTreeMap<String, String>,
    /// Currency code.
    pub currency: String,
    /// The currency's atomic scale.
    pub scale: u32,
    /// Amount charged, in minor units.
    pub amount_minor: u64,
    /// Usage that could not be charged (balance exhausted), in minor units.
    pub uncharged_minor: u64,
    /// The credential that paid: `receipt:<iss>:<jti>` or `token:<payer>`.
    pub credential: String,
    /// The reservation it settles.
    pub reservation: String,
    /// The upstream's HTTP status (0: no answer, or charged at admission before the upstream
    /// answered).
    pub upstream_status: u16,
    /// Set on a void event: the id of the charge it undoes (its amount and units count
    /// negatively; the aggregates were moved back).
    pub voids: Option<String>,
}

impl UsageEvent {
    /// The upstream's status, if it was known when the event was written. `None` for a charge
    /// at admission (`capture = "admission"`: written in the admission step, before the upstream
    /// answered -- the charge stands only because the answer was below 400, else a void event
    /// follows) and for a void whose upstream never answered (timeout, unreachable, client
    /// gone). Stores keep `0` for "not known".
    pub fn known_upstream_status(&self) -> Option<u16> {
        (self.upstream_status != 0).then_some(self.upstream_status)
    }

    /// When a charge was captured: `"admission"` (in the step that authorized it) or
    /// `"response"` (after the upstream answered); `None` for a void. Every capture after the
    /// response records the upstream's status, so a charge without one was taken at admission.
    pub fn captured_at(&self) -> Option<&'static str> {
        match (&self.voids, self.upstream_status) {
            (Some(_), _) => None,
            (None, 0) => Some("admission"),
            (None, _) => Some("response"),
        }
    }

    /// The amount charged as a decimal.
    pub fn amount(&self) -> Amount {
        match Currency::try_new(self.currency.clone(), self.scale) {
            Ok(c) => c.from_minor(self.amount_minor),
            Err(_) => Amount::ZERO,
        }
    }

    /// The event as exported (admin API, the agent's bill, webhooks): the decimal amount
    /// alongside the atomic units.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "time_ms": self.time_ms,
            "payer": self.payer,
            "route": self.route,
            "method": self.method,
            "units": self.units,
            "unit_prices": self.unit_prices,
            "amount": self.amount().to_string(),
            "amount_minor": self.amount_minor,
            "uncharged_minor": self.uncharged_minor,
            "currency": self.currency,
            "scale": self.scale,
            "credential": self.credential,
            "reservation": self.reservation,
            "upstream_status": self.known_upstream_status(),
            "captured": self.captured_at(),
            "voids": self.voids,
        })
    }

    /// Fields written by Rust (the scripts add `amount_minor` / `uncharged_minor` where they
    /// decide them).
    pub(super) fn to_fields(&self, with_amounts: bool) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("time_ms", self.time_ms.to_string()),
            ("payer", self.payer.clone()),
            ("route", self.route.clone()),
            ("method", self.method.clone()),
            (
                "units",
                serde_json::to_string(&self.units).unwrap_or_default(),
            ),
            (
                "unit_prices",
                serde_json::to_string(&self.unit_prices).unwrap_or_default(),
            ),
            ("currency", self.currency.clone()),
            ("scale", self.scale.to_string()),
            ("credential", self.credential.clone()),
            ("reservation", self.reservation.clone()),
            ("upstream_status", self.upstream_status.to_string()),
        ];
        if with_amounts {
            f.push(("amount_minor", self.amount_minor.to_string()));
            f.push(("uncharged_minor", self.uncharged_minor.to_string()));
        }
        if let Some(v) = &self.voids {
            f.push(("voids", v.clone()));
        }
        f
    }

    /// Aggregate increments for this event (the amount is added by the caller).
    pub(super) fn aggregate_fields(&self) -> Vec<(String, u64)> {
        let mut v = vec![(format!("{}|requests", self.route), 1)];
        for (unit, n) in &self.units {
            v.push((format!("{}|units|{unit}", self.route), *n));
        }
        v
    }

    pub(super) fn amount_field(&self) -> String {
        format!("{}|amount|{}", self.route, self.currency)
    }

    /// A Redis stream entry (`id`: its ledger id).
    pub(super) fn from_fields(id: String, fields: &[(String, String)]) -> Result<Self, StoreError> {
        Self::from_columns(&Fields::new("usage event", &id, fields))
    }
}

/// The fields of a stream entry (a Redis `XRANGE` answer), read by name; a missing or
/// unreadable field is a [`StoreError::Protocol`] that names the entry.
pub(crate) struct Fields<'a> {
    what: &'a str,
    id: &'a str,
    fields: &'a [(String, String)],
}

impl<'a> Fields<'a> {
    /// The fields of entry `id`, a `what` ("refund", "credit"...).
    pub(crate) fn new(what: &'a str, id: &'a str, fields: &'a [(String, String)]) -> Self {
        Fields { what, id, fields }
    }
}

/// By field name; `id` is the entry's own id unless a field is named so.
impl Columns for Fields<'_> {
    fn opt(&self, k: &str) -> Result<Option<String>, StoreError> {
        let field = self.fields.iter().find(|(f, _)| f == k);
        Ok(match field {
            Some((_, v)) => Some(v.clone()),
            None if k == "id" => Some(self.id.to_owned()),
            None => None,
        })
    }

    fn what(&self) -> String {
        format!("{} {}", self.what, self.id)
    }
}

/// Order of ledger ids `<ms>-<seq>-<bucket>`.
pub fn event_order(id: &str) -> (u64, u64, u64) {
    let mut p = id.split('-').map(|x| x.parse::<u64>().unwrap_or(0));
    (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    )
}

/// The UTC day (`yyyymmdd`) of a unix-ms time (aggregates are per UTC day).
pub fn utc_day(time_ms: i64) -> String {
    let (y, m, d) = crate::mandate::civil_from_days(time_ms.div_euclid(86_400_000));
    format!("{y:04}{m:02}{d:02}")
}

/// `2026-11-22T10:04:05.123Z`: a unix-ms time in RFC 3339, UTC, with milliseconds.
pub fn iso_time(ms: i64) -> String {
    let (y, m, d) = crate::mandate::civil_from_days(ms.div_euclid(86_400_000));
    let t = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_without_an_upstream_status_was_taken_at_admission() {
        let e = UsageEvent {
            id: "1-0-0".into(),
            time_ms: 1,
            payer: "p".into(),
            route: "r".into(),
            method: "GET".into(),
            units: BTreeMap::new(),
            unit_prices: BTreeMap::new(),
            currency: "USD".into(),
            scale: 6,
            amount_minor: 10,
            uncharged_minor: 0,
            credential: "token:p".into(),
            reservation: "h".into(),
            upstream_status: 0,
            voids: None,
        };
        assert_eq!(
            (e.known_upstream_status(), e.captured_at()),
            (None, Some("admission"))
        );
        let served = UsageEvent {
            upstream_status: 201,
            ..e.clone()
        };
        assert_eq!(
            (served.known_upstream_status(), served.captured_at()),
            (Some(201), Some("response"))
        );
        for status in [0, 500] {
            let void = UsageEvent {
                upstream_status: status,
                voids: Some("1-0-0".into()),
                ..e.clone()
            };
            assert_eq!(void.captured_at(), None);
            assert_eq!(
                void.known_upstream_status(),
                (status != 0).then_some(status)
            );
        }
    }
}

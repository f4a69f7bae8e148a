//! Mandates: spending authority an owner gives an agent, enforced by the gateway.
//!
//! A mandate is a JWT signed by a trusted issuer (the owner's wallet), with `kind: "mandate"`:
//!
//! ```json
//! {"iss": "wallet", "sub": "agent-1", "jti": "m-42", "iat": 1, "exp": 2, "kind": "mandate",
//!  "owner": "alice", "currency": "USD", "budget": "10.00", "window": "day",
//!  "max_per_payment": "0.50", "merchants": ["acme"], "routes": ["chat"]}
//! ```
//!
//! - `sub` is the agent (the payer it binds); `owner` who granted it (shown to the provider).
//! - `budget` per `window`: UTC calendar windows `hour`, `day`, `week` (ISO, from Monday) or
//!   `month`. Calendar, not rolling: one counter per window, exact and O(1) in one script, and
//!   the reset time is a fixed instant the agent can be told (`resets_at`). The demo wallet
//!   offers rolling budgets on its own side; the gateway's are calendar windows.
//! - `max_per_payment` (optional): no single payment (a fixed price, or a metered request's
//!   reservation and final charge) may exceed it.
//! - `merchants` (required): the merchant ids it may pay; `routes` (optional): the route groups.
//!
//! A request carries its mandate in the receipt's `mandate` claim (the compact JWT), or in the
//! `Tollgate-Mandate` request header; an access token issued with a mandate is bound to it (the
//! token, MAC'd by the gateway, carries the verified limits). Reservations count against the
//! window, a released reservation gives its room back, a capture spends.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ErrorCode;
use crate::money::{Amount, Currency};
use crate::receipt::{ReceiptError, ReceiptVerifier};
use crate::store::MandateCharge;

/// The request header that carries a mandate JWT.
pub const TOLLGATE_MANDATE: &str = "tollgate-mandate";

/// How long a mandate window's counters are kept after the window ends (admin reporting).
pub const WINDOW_KEEP_MS: i64 = 35 * 86_400_000;

/// A budget window: a UTC calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// From the top of the hour.
    Hour,
    /// From 00:00 UTC.
    Day,
    /// From Monday 00:00 UTC (ISO week).
    Week,
    /// From the first of the month, 00:00 UTC.
    Month,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

impl Window {
    /// The window containing `now_ms`: `(start_ms, end_ms)`, end exclusive.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        match self {
            Window::Hour => {
                let s = now_ms.div_euclid(HOUR_MS) * HOUR_MS;
                (s, s + HOUR_MS)
            }
            Window::Day => {
                let s = now_ms.div_euclid(DAY_MS) * DAY_MS;
                (s, s + DAY_MS)
            }
            Window::Week => {
                let d = now_ms.div_euclid(DAY_MS);
                // 1970-01-01 was a Thursday: Monday-based weekday = (d + 3) mod 7.
                let start = d - (d + 3).rem_euclid(7);
                (start * DAY_MS, (start + 7) * DAY_MS)
            }
            Window::Month => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * DAY_MS,
                    days_from_civil(ny, nm, 1) * DAY_MS,
                )
            }
        }
    }
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's algorithm, valid for
/// any proleptic Gregorian date).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day number since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A verified mandate (also what an access token bound to it carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// `iss`: the issuer that signed it.
    pub issuer: String,
    /// `jti`: the mandate id.
    pub id: String,
    /// `sub`: the agent (payer) it authorizes.
    pub payer: String,
    /// `owner`: who granted it.
    pub owner: String,
    /// Currency of the budget.
    pub currency: String,
    /// Budget per window.
    pub budget: Amount,
    /// The window.
    pub window: Window,
    /// Largest single payment, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_payment: Option<Amount>,
    /// Merchants it may pay.
    pub merchants: Vec<String>,
    /// Route groups it may pay for (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// `exp`, unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MandateKind {
    Mandate,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    jti: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[allow(dead_code)]
    kind: MandateKind,
    owner: String,
    currency: String,
    budget: String,
    window: Window,
    #[serde(default)]
    max_per_payment: Option<String>,
    merchants: Vec<String>,
    #[serde(default)]
    routes: Option<Vec<String>>,
}

fn invalid(detail: impl Into<String>) -> ReceiptError {
    ReceiptError::new(ErrorCode::MandateInvalid, detail)
}

impl Mandate {
    /// Verify a mandate JWT: a trusted issuer's signature, `kind: "mandate"`, times, limits, and
    /// that it names this merchant.
    pub async fn verify(verifier: &ReceiptVerifier, token: &str) -> Result<Mandate, ReceiptError> {
        let (iss, c) = verifier
            .verify_jws::<Claims>(token)
            .await
            .map_err(|e| match e.code {
                ErrorCode::IssuerUnavailable => e,
                _ => invalid(format!("mandate: {}", e.detail)),
            })?;
        if c.iss != iss {
            return Err(invalid("mandate: inconsistent iss"));
        }
        let now_ms = verifier.clock().now_ms();
        let now = now_ms.div_euclid(1000);
        let skew = i64::try_from(verifier.policy().clock_skew.as_secs()).unwrap_or(0);
        if !verifier.policy().accepts_at(c.exp, now_ms) {
            return Err(invalid("the mandate expired"));
        }
        if c.iat > now + skew || c.nbf.is_some_and(|n| n > now + skew) {
            return Err(invalid("the mandate is not valid yet"));
        }
        for (name, v) in [("sub", &c.sub), ("jti", &c.jti), ("owner", &c.owner)] {
            if v.is_empty() || v.len() > 256 {
                return Err(invalid(format!(
                    "mandate {name} must be 1 to 256 characters"
                )));
            }
        }
        let amount = |name: &str, s: &str| -> Result<Amount, ReceiptError> {
            s.parse::<Amount>()
                .map_err(|e| invalid(format!("mandate {name}: {e}")))
        };
        let budget = amount("budget", &c.budget)?;
        let max_per_payment = c
            .max_per_payment
            .as_deref()
            .map(|s| amount("max_per_payment", s))
            .transpose()?;
        if !c.merchants.iter().any(|m| m == verifier.merchant()) {
            return Err(ReceiptError::new(
                ErrorCode::MandateForbidden,
                format!(
                    "the mandate does not allow paying merchant {:?}",
                    verifier.merchant()
                ),
            ));
        }
        Ok(Mandate {
            issuer: c.iss,
            id: c.jti,
            payer: c.sub,
            owner: c.owner,
            currency: c.currency,
            budget,
            window: c.window,
            max_per_payment,
            merchants: c.merchants,
            routes: c.routes,
            expires_at: c.exp,
        })
    }

    /// A fixed-length key of (issuer, id): names the mandate's counters and revocation.
    pub fn key(&self) -> String {
        mandate_key(&self.issuer, &self.id)
    }

    /// Check one payment of `amount_minor` (a price or a reservation) by `payer` on a route
    /// of `group`, and give the store its charge. `now_ms` picks the window.
    pub fn charge(
        &self,
        payer: &str,
        group: &str,
        currency: &Currency,
        amount_minor: u64,
        now_ms: i64,
    ) -> Result<MandateCharge, (ErrorCode, String)> {
        if self.payer != payer {
            return Err((
                ErrorCode::MandateInvalid,
                "the mandate was granted to another agent (sub)".into(),
            ));
        }
        if self.expires_at.saturating_mul(1000) <= now_ms {
            return Err((ErrorCode::MandateInvalid, "the mandate expired".into()));
        }
        if self.currency != currency.code() {
            return Err((
                ErrorCode::MandateForbidden,
                format!(
                    "the mandate's budget is in {}; this route is priced in {}",
                    self.currency,
                    currency.code()
                ),
            ));
        }
        if let Some(routes) = &self.routes {
            if !routes.iter().any(|r| r == group) {
                return Err((
                    ErrorCode::MandateForbidden,
                    format!("the mandate does not allow route group {group:?}"),
                ));
            }
        }
        let budget_minor = currency
            .to_minor(self.budget)
            .map_err(|e| (ErrorCode::MandateInvalid, format!("mandate budget: {e}")))?;
        if let Some(max) = self.max_per_payment {
            let max_minor = currency
                .to_minor(max)
                .map_err(|e| (ErrorCode::MandateInvalid, format!("max_per_payment: {e}")))?;
            if amount_minor > max_minor {
                return Err((
                    ErrorCode::MandateForbidden,
                    format!(
                        "this payment ({} {}) is above the mandate's per-payment maximum ({max} {})",
                        currency.from_minor(amount_minor),
                        currency.code(),
                        currency.code()
                    ),
                ));
            }
        }
        let (start, end) = self.window.bounds(now_ms);
        Ok(MandateCharge {
            key: self.key(),
            budget_minor,
            amount_minor,
            window_start_ms: start,
            window_end_ms: end,
            summary: serde_json::to_string(&self.summary()).unwrap_or_default(),
        })
    }

    /// What the provider sees of a mandate (no signature, no secrets).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "issuer": self.issuer,
            "owner": self.owner,
            "currency": self.currency,
            "budget": self.budget.to_string(),
            "window": self.window,
            "max_per_payment": self.max_per_payment.map(|a| a.to_string()),
            "routes": self.routes,
            "expires_at": self.expires_at,
        })
    }
}

/// The key of mandate `id` from `issuer` (hex SHA-256 prefix).
pub fn mandate_key(issuer: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"mandate");
    h.update((issuer.len() as u64).to_be_bytes());
    h.update(issuer.as_bytes());
    h.update(id.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22T20:38:03Z, a Sunday.
    const NOW: i64 = 1_795_379_883_000;

    #[test]
    fn calendar_windows() {
        let (s, e) = Window::Hour.bounds(NOW);
        assert_eq!((s % HOUR_MS, e - s), (0, HOUR_MS));
        assert!(s <= NOW && NOW < e);
        let (s, e) = Window::Day.bounds(NOW);
        assert_eq!(crate::store::utc_day(s), "20261122");
        assert_eq!(crate::store::utc_day(e), "20261123");
        let (s, e) = Window::Week.bounds(NOW);
        assert_eq!(crate::store::utc_day(s), "20261116"); // Monday
        assert_eq!(crate::store::utc_day(e), "20261123");
        let (s, e) = Window::Month.bounds(NOW);
        assert_eq!(crate::store::utc_day(s), "20261101");
        assert_eq!(crate::store::utc_day(e), "20261201");
        // December rolls into January; February of a leap year has 29 days.
        let dec = days_from_civil(2026, 12, 31) * DAY_MS;
        let (s, e) = Window::Month.bounds(dec);
        assert_eq!(
            (
                crate::store::utc_day(s).as_str(),
                crate::store::utc_day(e).as_str()
            ),
            ("20261201", "20270101")
        );
        let (s, e) = Window::Month.bounds(days_from_civil(2028, 2, 10) * DAY_MS);
        assert_eq!((e - s) / DAY_MS, 29);
        // The last millisecond of a window is inside it; the next one starts the next window.
        let (s, e) = Window::Day.bounds(NOW);
        assert_eq!(Window::Day.bounds(e - 1).0, s);
        assert_eq!(Window::Day.bounds(e).0, e);
    }

    #[test]
    fn civil_round_trip() {
        for d in [-1000, 0, 59, 60, 365, 11_000, 20_414, 100_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}

//! The `Payment` HTTP authentication scheme (draft-httpauth-payment) beside x402: every 402
//! that offers the native receipt method also carries
//!
//! ```text
//! WWW-Authenticate: Payment id="c1.<expiry>.<mac>", realm="<host>", method="tollgate",
//!     intent="charge", request="<base64url(JCS JSON)>", expires="<RFC 3339>", description="..."
//! ```
//!
//! `id` is the offer's stateless challenge id: an HMAC (gateway secret) over the merchant,
//! route, method, amount, currency and expiry, i.e. over everything `request` states, so the
//! binding the draft asks for needs no storage. `request` is JCS-serialized (string values
//! only, keys sorted, no whitespace): `{"amount", "currency", "decimals", "method", "recipient",
//! "route"}` with `amount` in atomic units. The credential answers in `Authorization: Payment`,
//! either the receipt JWT itself or the draft's base64url JSON `{challenge, payload: {receipt}}`
//! (see [`crate::credential`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderValue;
use serde_json::json;

use super::wire::Requirements;

/// The Payment scheme's method name for Tollgate receipts. The draft's method names are
/// lowercase letters only (`1*LOWERALPHA`), so it is not the x402 scheme name
/// (`tollgate-receipt`, which x402 offers keep).
pub const PAYMENT_METHOD: &str = "tollgate";

/// RFC 3339 UTC time of a unix time (seconds).
pub(super) fn rfc3339(secs: i64) -> String {
    let day = crate::store::utc_day(secs.saturating_mul(1000));
    let t = secs.rem_euclid(86_400);
    format!(
        "{}-{}-{}T{:02}:{:02}:{:02}Z",
        &day[..4],
        &day[4..6],
        &day[6..8],
        t / 3600,
        (t / 60) % 60,
        t % 60
    )
}

/// A quoted-string auth-param value (RFC 9110): `"` and `\` escaped, controls dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A challenge's `request`: what the payment offer states (strings only), the same object in
/// `WWW-Authenticate` (JCS, base64url) and in the MCP transport's challenge (native JSON).
pub(super) fn challenge_request(
    offer: &super::wire::ReceiptOffer<'_>,
    extra: &super::wire::PaymentExtra<'_>,
) -> serde_json::Value {
    json!({
        "amount": offer.amount,
        "currency": offer.asset,
        "decimals": extra.decimals.to_string(),
        "method": extra.method,
        "recipient": offer.pay_to,
        "route": extra.route,
    })
}

/// The `WWW-Authenticate: Payment ...` value for a 402's requirements (`None` when they
/// offer no native payment, e.g. a free route).
pub(super) fn challenge(requirements: &Requirements<'_>, realm: &str) -> Option<HeaderValue> {
    let (offer, extra) = requirements.payment_offer()?;
    // serde_json's map is sorted by key and `to_vec` is compact: with string values only,
    // that is the JCS form.
    let request = challenge_request(offer, extra);
    let mut v = format!(
        "Payment id={}, realm={}, method={}, intent=\"charge\", request=\"{}\", expires=\"{}\"",
        quoted(&extra.challenge),
        quoted(realm),
        quoted(PAYMENT_METHOD),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&request).ok()?),
        rfc3339(extra.challenge_expires),
    );
    v.push_str(", description=");
    v.push_str(&quoted(requirements.resource.description));
    HeaderValue::from_str(&v).ok()
}

/// The draft's `Payment-Receipt` value for a captured payment: base64url (no padding) of the
/// JSON `{status: "success", method, timestamp (RFC 3339), reference}`, `reference` being the
/// usage event id of the capture (the ledger's id for it); `receipt`, the spent receipt's id
/// (`jti`), is a method-specific extra the draft allows.
pub(super) fn receipt(
    event_id: &str,
    time_ms: i64,
    receipt_id: Option<&str>,
) -> Option<HeaderValue> {
    let mut v = json!({
        "status": "success",
        "method": PAYMENT_METHOD,
        "timestamp": rfc3339(time_ms.div_euclid(1000)),
        "reference": event_id,
    });
    if let Some(r) = receipt_id {
        v["receipt"] = r.into();
    }
    HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(v.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::super::wire::{Accept, OfferExtra, PaymentExtra, ReceiptOffer, Resource};
    use super::*;
    use crate::credential::RECEIPT_SCHEME;
    use serde_json::Value;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_370_540), "2026-11-22T18:02:20Z");
    }

    #[test]
    fn receipts_are_base64url_json() {
        let v = receipt("1795370540000-0@03", 1_795_370_540_123, Some("r-1")).unwrap();
        let v = v.to_str().unwrap();
        assert!(!v.contains(['=', '+', '/']), "{v}");
        let decoded: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(v).unwrap()).unwrap();
        assert_eq!(
            decoded,
            json!({"status": "success", "method": "tollgate",
                   "timestamp": "2026-11-22T18:02:20Z", "reference": "1795370540000-0@03",
                   "receipt": "r-1"})
        );
    }

    #[test]
    fn builds_the_challenge_from_the_receipt_offer() {
        let resource = || Resource {
            url: "http://x/compute".into(),
            description: "Run a \"job\"",
            mime_type: "application/json",
        };
        let req = Requirements {
            x402_version: 2,
            resource: resource(),
            accepts: vec![Accept::Receipt(Box::new(ReceiptOffer {
                scheme: RECEIPT_SCHEME,
                network: "tollgate:receipts",
                amount: "10000".into(),
                asset: "USD",
                pay_to: "m",
                max_timeout_seconds: 300,
                extra: OfferExtra::Payment(PaymentExtra {
                    price: "0.01".into(),
                    metered: None,
                    unit_prices: None,
                    challenge: "c1.5.abc".into(),
                    challenge_expires: 5,
                    currency: "USD",
                    decimals: 6,
                    route: "compute",
                    method: "POST",
                    issuers: &[],
                    token_accepted: true,
                }),
            }))],
        };
        let v = challenge(&req, "m").unwrap();
        let v = v.to_str().unwrap();
        assert!(v.starts_with("Payment id=\"c1.5.abc\", realm=\"m\", method=\"tollgate\", intent=\"charge\", request=\""), "{v}");
        assert!(
            v.ends_with("expires=\"1970-01-01T00:00:05Z\", description=\"Run a \\\"job\\\"\""),
            "{v}"
        );
        let b64 = v
            .split("request=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap();
        assert_eq!(
            decoded,
            r#"{"amount":"10000","currency":"USD","decimals":"6","method":"POST","recipient":"m","route":"compute"}"#
        );
        let none = Requirements {
            x402_version: 2,
            resource: resource(),
            accepts: vec![],
        };
        assert!(challenge(&none, "m").is_none());
    }
}

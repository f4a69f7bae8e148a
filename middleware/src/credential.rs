//! Finding the payment credential in a request.
//!
//! Accepted forms (exactly one per request):
//! - `PAYMENT-SIGNATURE: <base64 JSON>` -- an x402 v2 `PaymentPayload` whose `payload.receipt`
//!   is the receipt JWT and whose `accepted.scheme` is ours, or whose `accepted.scheme` is
//!   `exact` (an EIP-3009 authorization) or `upto` (a Permit2 permit), checked by
//!   [`crate::x402`];
//! - `X-PAYMENT: <base64 JSON>` -- the x402 v1 equivalent (`scheme` at the top level);
//! - `Authorization: Payment <jwt>` -- the receipt alone, for simple clients.
//!
//! `Authorization` with any other scheme (e.g. `Bearer`) is not ours and is left for the
//! upstream. Base64 may be standard or URL-safe, padded or not.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use serde::Deserialize;

use crate::error::ErrorCode;
use crate::token::TOKEN_PREFIX;

/// The scheme name of Tollgate's native receipt offers.
pub const RECEIPT_SCHEME: &str = "tollgate-receipt";
/// x402 v2 request header.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// x402 v1 request header.
pub const X_PAYMENT: &str = "x-payment";
/// The largest payment header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Where a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    /// x402 v2 `PAYMENT-SIGNATURE`.
    PaymentSignature,
    /// x402 v1 `X-PAYMENT`.
    XPayment,
    /// `Authorization: Payment`.
    AuthorizationPayment,
}

/// A payment credential found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A gateway-issued access token (`Authorization: Bearer tg1....`, or `Authorization: DPoP
    /// tg1....` for a token bound to a key, RFC 9449).
    AccessToken {
        /// The token.
        token: String,
        /// Sent with the `DPoP` scheme (a bound token must be; a bearer token may not be).
        dpop: bool,
    },
    /// A signed receipt (compact JWS).
    Receipt {
        /// The JWT.
        token: String,
        /// The header it came in.
        source: CredentialSource,
        /// The challenge `id` echoed by a Payment-scheme credential (`challenge.id`), checked
        /// against the request like the receipt's own `challenge` claim.
        challenge: Option<String>,
    },
    /// An x402 v2 `PaymentPayload` with `accepted.scheme` `exact` or `upto` (decoded, not yet
    /// checked).
    X402(Box<serde_json::Value>),
}

/// Why the payment headers could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CredentialError {
    /// `credential_malformed`, `credential_ambiguous` or `scheme_unsupported`.
    pub code: ErrorCode,
    /// Human detail.
    pub detail: String,
}

fn malformed(detail: impl Into<String>) -> CredentialError {
    CredentialError {
        code: ErrorCode::CredentialMalformed,
        detail: detail.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayloadV2 {
    x402_version: u32,
    accepted: AcceptedV2,
    payload: serde_json::Value,
}

#[derive(Deserialize)]
struct AcceptedV2 {
    scheme: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayloadV1 {
    x402_version: u32,
    scheme: String,
    payload: serde_json::Value,
}

/// The Payment HTTP authentication scheme's credential: the receipt in `payload`, and the
/// echoed challenge, whose `id` (our stateless challenge id, which binds every other echoed
/// parameter) is checked against the request.
#[derive(Deserialize)]
struct PaymentAuthCredential {
    #[serde(default)]
    challenge: Option<EchoedChallenge>,
    payload: serde_json::Value,
}

#[derive(Deserialize)]
struct EchoedChallenge {
    #[serde(default)]
    id: Option<String>,
}

/// `payload.receipt`, read only once the scheme is known to be ours.
fn receipt_of(name: &str, payload: serde_json::Value) -> Result<String, CredentialError> {
    match payload.get("receipt") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(malformed(format!(
            "{name}: payload.receipt must be a non-empty string"
        ))),
    }
}

/// Decode base64 in any of its common alphabets and paddings.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, CredentialError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError {
            code: ErrorCode::CredentialAmbiguous,
            detail: format!("{name} appears more than once"),
        });
    }
    if v.len() > MAX_HEADER_BYTES {
        return Err(malformed(format!(
            "{name} is larger than {MAX_HEADER_BYTES} bytes"
        )));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| malformed(format!("{name} is not visible ASCII")))
}

fn decode_json<T: for<'de> Deserialize<'de>>(name: &str, v: &str) -> Result<T, CredentialError> {
    let bytes = decode_base64(v).ok_or_else(|| malformed(format!("{name} is not base64")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        malformed(format!(
            "{name} is not a payment payload: {}",
            e.to_string().chars().take(120).collect::<String>()
        ))
    })
}

fn check_scheme(scheme: &str) -> Result<(), CredentialError> {
    if scheme == RECEIPT_SCHEME {
        Ok(())
    } else {
        Err(CredentialError {
            code: ErrorCode::SchemeUnsupported,
            detail: format!("scheme {scheme:?} is not accepted; use {RECEIPT_SCHEME:?}"),
        })
    }
}

/// The x402 EVM schemes whose payloads are checked by [`crate::x402`].
fn is_x402_evm(scheme: &str) -> bool {
    scheme == crate::x402::EXACT_SCHEME || scheme == crate::x402::upto::UPTO_SCHEME
}

/// Find the payment credential, if any. More than one payment header is an error.
pub fn extract(headers: &HeaderMap) -> Result<Option<Credential>, CredentialError> {
    let v2 = header_str(headers, PAYMENT_SIGNATURE)?;
    let v1 = header_str(headers, X_PAYMENT)?;
    let mut bearer = None;
    let auth = match header_str(headers, AUTHORIZATION.as_str())? {
        Some(a) => {
            let (scheme, rest) = a.split_once(' ').unwrap_or((a, ""));
            let rest = rest.trim();
            if rest.starts_with(TOKEN_PREFIX) {
                if scheme.eq_ignore_ascii_case("bearer") {
                    bearer = Some((rest.to_owned(), false));
                } else if scheme.eq_ignore_ascii_case("dpop") {
                    bearer = Some((rest.to_owned(), true));
                }
            }
            scheme
                .eq_ignore_ascii_case("payment")
                .then(|| rest.to_owned())
        }
        None => None,
    };
    let found = usize::from(v2.is_some())
        + usize::from(v1.is_some())
        + usize::from(auth.is_some())
        + usize::from(bearer.is_some());
    if found > 1 {
        return Err(CredentialError {
            code: ErrorCode::CredentialAmbiguous,
            detail: "send exactly one of PAYMENT-SIGNATURE, X-PAYMENT, Authorization: Payment, Authorization: Bearer tg1.*".into(),
        });
    }
    if let Some(v) = v2 {
        let bytes = decode_base64(v).ok_or_else(|| malformed("PAYMENT-SIGNATURE is not base64"))?;
        // The receipt shape first (the hot path: one typed parse); anything else may be an
        // x402 `exact` payload, kept whole for its own checks.
        let p = match serde_json::from_slice::<PayloadV2>(&bytes) {
            Ok(p) if !is_x402_evm(&p.accepted.scheme) => p,
            typed => {
                if let Ok(raw) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    if raw
                        .pointer("/accepted/scheme")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(is_x402_evm)
                    {
                        return Ok(Some(Credential::X402(Box::new(raw))));
                    }
                }
                let e = typed.err().map(|e| e.to_string()).unwrap_or_default();
                return Err(malformed(format!(
                    "PAYMENT-SIGNATURE is not a payment payload: {}",
                    e.chars().take(120).collect::<String>()
                )));
            }
        };
        if p.x402_version != 2 {
            return Err(malformed("PAYMENT-SIGNATURE must carry x402Version 2"));
        }
        check_scheme(&p.accepted.scheme)?;
        return Ok(Some(Credential::Receipt {
            token: receipt_of("PAYMENT-SIGNATURE", p.payload)?,
            source: CredentialSource::PaymentSignature,
            challenge: None,
        }));
    }
    if let Some(v) = v1 {
        let p: PayloadV1 = decode_json("X-PAYMENT", v)?;
        if p.x402_version != 1 {
            return Err(malformed("X-PAYMENT must carry x402Version 1"));
        }
        check_scheme(&p.scheme)?;
        return Ok(Some(Credential::Receipt {
            token: receipt_of("X-PAYMENT", p.payload)?,
            source: CredentialSource::XPayment,
            challenge: None,
        }));
    }
    if let Some((token, dpop)) = bearer {
        return Ok(Some(Credential::AccessToken { token, dpop }));
    }
    if let Some(token) = auth {
        if token.is_empty() {
            return Err(malformed("Authorization: Payment needs a receipt"));
        }
        // A JWS has dots; base64url never does: without dots it may be the Payment scheme's
        // credential (`{"challenge", "payload": {"receipt"}}`, draft-httpauth-payment).
        // Anything else stays a (malformed) receipt, refused by the receipt checks.
        let parsed = if token.contains('.') {
            None
        } else {
            decode_base64(&token)
                .and_then(|b| serde_json::from_slice::<PaymentAuthCredential>(&b).ok())
                .and_then(|p| {
                    let receipt = receipt_of("Authorization: Payment", p.payload).ok()?;
                    // An echoed challenge must name an id: an empty or missing one is refused
                    // as an invalid challenge, not ignored.
                    let id = p.challenge.map(|c| c.id.unwrap_or_default());
                    Some((receipt, id))
                })
        };
        let (token, challenge) = parsed.unwrap_or((token, None));
        return Ok(Some(Credential::Receipt {
            token,
            source: CredentialSource::AuthorizationPayment,
            challenge,
        }));
    }
    Ok(None)
}

/// Remove every payment header (they must never reach the upstream).
pub fn strip(headers: &mut HeaderMap) {
    // One scan of the names present (usually none of these) instead of two hash lookups.
    if headers
        .keys()
        .any(|k| k == PAYMENT_SIGNATURE || k == X_PAYMENT)
    {
        headers.remove(PAYMENT_SIGNATURE);
        headers.remove(X_PAYMENT);
    }
    let is_payment = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            scheme.eq_ignore_ascii_case("payment")
                || ((scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop"))
                    && rest.trim().starts_with(TOKEN_PREFIX))
        });
    if is_payment {
        headers.remove(AUTHORIZATION);
        // The proof that went with our token is ours too (a proof for the upstream's own
        // tokens goes with its own Authorization and stays).
        headers.remove(crate::dpop::DPOP_HEADER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn b64(v: serde_json::Value) -> String {
        STANDARD.encode(v.to_string())
    }

    #[test]
    fn reads_each_form() {
        let v2 = b64(
            serde_json::json!({"x402Version": 2, "accepted": {"scheme": RECEIPT_SCHEME}, "payload": {"receipt": "a.b.c"}}),
        );
        let c = extract(&h(&[("payment-signature", &v2)])).unwrap().unwrap();
        assert_eq!(
            c,
            Credential::Receipt {
                token: "a.b.c".into(),
                source: CredentialSource::PaymentSignature,
                challenge: None
            }
        );
        let v1 = URL_SAFE_NO_PAD.encode(serde_json::json!({"x402Version": 1, "scheme": RECEIPT_SCHEME, "network": "n", "payload": {"receipt": "x.y.z"}}).to_string());
        let c = extract(&h(&[("x-payment", &v1)])).unwrap().unwrap();
        assert_eq!(
            c,
            Credential::Receipt {
                token: "x.y.z".into(),
                source: CredentialSource::XPayment,
                challenge: None
            }
        );
        let c = extract(&h(&[("authorization", "Payment  j.w.t ")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            Credential::Receipt {
                token: "j.w.t".into(),
                source: CredentialSource::AuthorizationPayment,
                challenge: None
            }
        );
        assert_eq!(
            extract(&h(&[("authorization", "Bearer abc")])).unwrap(),
            None
        );
        // The Payment scheme's base64url credential.
        let cred = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"challenge": {"id": "c1.5.x"}, "payload": {"receipt": "r.e.c"}})
                .to_string(),
        );
        let c = extract(&h(&[("authorization", &format!("Payment {cred}"))]))
            .unwrap()
            .unwrap();
        assert_eq!(
            c,
            Credential::Receipt {
                token: "r.e.c".into(),
                source: CredentialSource::AuthorizationPayment,
                challenge: Some("c1.5.x".into())
            }
        );
        // Not that form: still a receipt (refused later as receipt_malformed).
        assert_eq!(
            extract(&h(&[("authorization", "Payment nodots")]))
                .unwrap()
                .unwrap(),
            Credential::Receipt {
                token: "nodots".into(),
                source: CredentialSource::AuthorizationPayment,
                challenge: None
            }
        );
        assert_eq!(extract(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn refuses_bad_shapes() {
        let code = |m: HeaderMap| extract(&m).unwrap_err().code;
        assert_eq!(
            code(h(&[("payment-signature", "!!!")])),
            ErrorCode::CredentialMalformed
        );
        assert_eq!(
            code(h(&[("payment-signature", &STANDARD.encode("{}"))])),
            ErrorCode::CredentialMalformed
        );
        let other = b64(
            serde_json::json!({"x402Version": 2, "accepted": {"scheme": "permit"}, "payload": {"receipt": "a"}}),
        );
        assert_eq!(
            code(h(&[("payment-signature", &other)])),
            ErrorCode::SchemeUnsupported
        );
        let exact_v1 = b64(
            serde_json::json!({"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}}),
        );
        assert_eq!(
            code(h(&[("x-payment", &exact_v1)])),
            ErrorCode::SchemeUnsupported
        );
        let v1_in_v2 = b64(
            serde_json::json!({"x402Version": 1, "accepted": {"scheme": RECEIPT_SCHEME}, "payload": {"receipt": "a"}}),
        );
        assert_eq!(
            code(h(&[("payment-signature", &v1_in_v2)])),
            ErrorCode::CredentialMalformed
        );
        assert_eq!(
            code(h(&[("authorization", "Payment a"), ("x-payment", "e30=")])),
            ErrorCode::CredentialAmbiguous
        );
        assert_eq!(
            code(h(&[
                ("payment-signature", "e30="),
                ("payment-signature", "e30=")
            ])),
            ErrorCode::CredentialAmbiguous
        );
        assert_eq!(
            code(h(&[("authorization", "Payment")])),
            ErrorCode::CredentialMalformed
        );
    }

    #[test]
    fn reads_x402_exact_payloads_whole() {
        let p = serde_json::json!({"x402Version": 2, "accepted": {"scheme": "exact", "network": "eip155:1"}, "payload": {"signature": "0x"}});
        let c = extract(&h(&[("payment-signature", &b64(p.clone()))]))
            .unwrap()
            .unwrap();
        assert_eq!(c, Credential::X402(Box::new(p)));
        // Its shape is checked later (with the x402 reasons), never here.
        let odd = serde_json::json!({"x402Version": 7, "accepted": {"scheme": "exact"}});
        assert!(matches!(
            extract(&h(&[("payment-signature", &b64(odd))])),
            Ok(Some(Credential::X402(_)))
        ));
    }

    #[test]
    fn strips_payment_headers_only() {
        let mut m = h(&[
            ("payment-signature", "x"),
            ("x-payment", "y"),
            ("authorization", "Payment z"),
            ("accept", "a"),
        ]);
        strip(&mut m);
        assert_eq!(m.len(), 1);
        let mut m = h(&[("authorization", "Bearer t")]);
        strip(&mut m);
        assert_eq!(m.len(), 1);
        let mut m = h(&[("authorization", "Bearer tg1.x.y")]);
        strip(&mut m);
        assert_eq!(m.len(), 0);
        // Our DPoP-bound token and its proof go; the upstream's own DPoP token and proof stay.
        let mut m = h(&[("authorization", "DPoP tg1.x.y"), ("dpop", "a.b.c")]);
        strip(&mut m);
        assert_eq!(m.len(), 0);
        let mut m = h(&[("authorization", "DPoP upstream-token"), ("dpop", "a.b.c")]);
        strip(&mut m);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn reads_the_dpop_scheme_as_a_bound_token() {
        let c = extract(&h(&[("authorization", "DPoP tg1.x.y")])).unwrap();
        assert_eq!(
            c,
            Some(Credential::AccessToken {
                token: "tg1.x.y".into(),
                dpop: true
            })
        );
        let c = extract(&h(&[("authorization", "bearer tg1.x.y")])).unwrap();
        assert_eq!(
            c,
            Some(Credential::AccessToken {
                token: "tg1.x.y".into(),
                dpop: false
            })
        );
        // Another DPoP token is the upstream's.
        assert_eq!(extract(&h(&[("authorization", "DPoP abc")])).unwrap(), None);
    }
}

//! Paid MCP tool calls on the same engine: a tool call is admitted, settled and recorded
//! exactly like an HTTP request ([`Paywall::admit`], [`Admission::settle`]); only the wire
//! differs, and it is written here.
//!
//! - **Credential in.** A `tools/call` may carry its payment in `params._meta`: x402's MCP
//!   transport (`_meta["x402/payment"]`, a `PaymentPayload`) or the Payment scheme's
//!   (`_meta["org.paymentauth/credential"]`, `{challenge, payload: {receipt}}` or a receipt
//!   JWT). [`admission_headers`] puts it where the credential phase reads credentials (as
//!   `PAYMENT-SIGNATURE` or `Authorization: Payment`), replacing any credential header of the
//!   HTTP request; without one, the request's own headers (an access token, a receipt) pay.
//! - **Refusal out.** [`Paywall::render_jsonrpc`] writes a [`Refusal`] as a JSON-RPC error:
//!   `-32042` (payment required) or `-32043` (a credential refused), whose `data` carries the
//!   Payment scheme's `challenges` and x402's `PaymentRequired` members (`x402Version`,
//!   `resource`, `accepts`) side by side, plus the RFC 9457 `problem` with the stable `code`;
//!   other refusals get [`jsonrpc::REFUSED`], [`jsonrpc::UNAVAILABLE`],
//!   [`jsonrpc::INVALID_PARAMS`] or [`jsonrpc::INTERNAL_ERROR`].
//! - **Settlement out.** [`settled_meta`]: what a paid result carries in `_meta`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{json, Map};

use super::wire::Requirements;
use super::*;
use crate::jsonrpc;

/// x402's MCP transport: the payment payload in a request's `_meta`.
pub const X402_PAYMENT: &str = "x402/payment";
/// x402's MCP transport: the settlement in a result's `_meta`.
pub const X402_PAYMENT_RESPONSE: &str = "x402/payment-response";
/// The Payment scheme's MCP transport: the credential in a request's `_meta`.
pub const PAYMENT_CREDENTIAL: &str = "org.paymentauth/credential";
/// The Payment scheme's MCP transport: the receipt in a result's `_meta`.
pub const PAYMENT_RECEIPT: &str = "org.paymentauth/receipt";

fn malformed(detail: &'static str) -> Refusal {
    Refusal::new(ErrorCode::CredentialMalformed, detail)
}

/// The headers a tool call is admitted with: `headers`, with the credential of `meta` (the
/// call's `params._meta`) in place of any credential header. Two credentials in `_meta` are
/// `credential_ambiguous`; one of the wrong shape is `credential_malformed`.
pub fn admission_headers(headers: &HeaderMap, meta: Option<&Value>) -> Result<HeaderMap, Refusal> {
    let mut out = headers.clone();
    let Some(meta) = meta else {
        return Ok(out);
    };
    let Some(meta) = meta.as_object() else {
        return Err(malformed("params._meta must be an object"));
    };
    let (name, value) = match (meta.get(X402_PAYMENT), meta.get(PAYMENT_CREDENTIAL)) {
        (None, None) => return Ok(out),
        (Some(_), Some(_)) => {
            return Err(Refusal::new(
                ErrorCode::CredentialAmbiguous,
                "send one of _meta[\"x402/payment\"] and _meta[\"org.paymentauth/credential\"]",
            ))
        }
        (Some(payload @ Value::Object(_)), None) => (
            http::HeaderName::from_static(credential::PAYMENT_SIGNATURE),
            STANDARD.encode(payload.to_string()),
        ),
        (Some(_), None) => {
            return Err(malformed(
                "_meta[\"x402/payment\"] must be an x402 PaymentPayload object",
            ))
        }
        (None, Some(Value::String(receipt))) => {
            (header::AUTHORIZATION, format!("Payment {}", receipt.trim()))
        }
        (None, Some(c @ Value::Object(_))) => (
            header::AUTHORIZATION,
            format!("Payment {}", URL_SAFE_NO_PAD.encode(c.to_string())),
        ),
        (None, Some(_)) => {
            return Err(malformed(
                "_meta[\"org.paymentauth/credential\"] must be {challenge, payload: {receipt}} or a receipt",
            ))
        }
    };
    if value.len() > credential::MAX_HEADER_BYTES {
        return Err(malformed("the credential in _meta is over 16 KiB"));
    }
    let value = HeaderValue::from_str(&value)
        .map_err(|_| malformed("the credential in _meta has characters a credential cannot"))?;
    credential::strip(&mut out);
    out.insert(name, value);
    Ok(out)
}

/// The JSON-RPC code and message a refusal with `code` is answered with (stable per code).
pub fn jsonrpc_code(code: ErrorCode) -> (i64, &'static str) {
    match code {
        ErrorCode::PaymentRequired
        | ErrorCode::BalanceInsufficient
        | ErrorCode::AmountInsufficient
        | ErrorCode::PlanExhausted
        | ErrorCode::MandateExceeded => (jsonrpc::PAYMENT_REQUIRED, "Payment Required"),
        ErrorCode::Internal => (jsonrpc::INTERNAL_ERROR, "Internal error"),
        _ => match code.status().as_u16() {
            402 => (
                jsonrpc::PAYMENT_VERIFICATION_FAILED,
                "Payment verification failed",
            ),
            400 | 413 | 422 => (jsonrpc::INVALID_PARAMS, "Invalid params"),
            409 | 429 | 502..=504 => (jsonrpc::UNAVAILABLE, "Unavailable; retry later"),
            _ => (jsonrpc::REFUSED, "Refused"),
        },
    }
}

/// The Payment scheme's challenge as a JSON object (its MCP transport uses native JSON where
/// HTTP has `WWW-Authenticate` parameters; `request` is the same JCS object, not base64url).
fn challenge_object(requirements: &Requirements<'_>, realm: &str) -> Option<Value> {
    let (offer, extra) = requirements.payment_offer()?;
    Some(json!({
        "id": extra.challenge,
        "realm": realm,
        "method": PAYMENT_METHOD,
        "intent": "charge",
        "request": payment_auth::challenge_request(offer, extra),
        "expires": payment_auth::rfc3339(extra.challenge_expires),
        "description": requirements.resource.description,
    }))
}

impl Paywall {
    /// Write a refusal as a JSON-RPC error. `request`: the (tool's) route and the HTTP request
    /// it answers -- a payment refusal then carries fresh challenges and offers for them.
    pub fn render_jsonrpc(
        &self,
        r: &Refusal,
        request: Option<(&PricedRoute, Head<'_>)>,
    ) -> jsonrpc::Error {
        let (code, message) = jsonrpc_code(r.code);
        let problem = Problem::new(r.code).detail(r.detail.as_ref());
        let mut data = Map::new();
        data.insert("httpStatus".into(), r.status().as_u16().into());
        if let Some((route, head)) = request.filter(|_| r.offers) {
            crate::metrics::global()
                .payment_required
                .with_label_values(&[route.id.as_str(), r.code.as_str()])
                .inc();
            let req = self.requirements(route, (head.method, head.uri, head.headers));
            let base = self.base_url(head.headers, head.uri);
            if let Some(c) = challenge_object(&req, self.realm(&base)) {
                data.insert("challenges".into(), json!([c]));
            }
            // x402's PaymentRequired, flattened into the same object (x402 MCP clients read
            // `x402Version` and `accepts` from an error's data).
            if let Ok(Value::Object(x)) = serde_json::to_value(&req) {
                data.extend(x);
            }
            data.insert("error".into(), r.code.as_str().into());
        }
        if let Some(secs) = r.retry_after_secs {
            data.insert("retryAfter".into(), secs.into());
        }
        let standing = match r.standing.as_deref() {
            None => None,
            Some(Standing::Balance(b)) => Some(("balance", json!(b))),
            Some(Standing::Plan(p)) => serde_json::to_value(p).ok().map(|v| ("plan", v)),
            Some(Standing::Mandate(m)) => serde_json::to_value(m).ok().map(|v| ("mandate", v)),
            Some(Standing::Served(s)) => serde_json::to_value(s).ok().map(|v| ("served", v)),
            Some(Standing::X402(x)) => Some(("errorReason", json!(x.reason))),
            Some(Standing::Dpop(reason)) => Some(("reason", json!(reason))),
        };
        if let Some((k, v)) = standing {
            data.insert(k.into(), v);
        }
        data.insert(
            "problem".into(),
            serde_json::to_value(&problem).unwrap_or(Value::Null),
        );
        jsonrpc::Error::new(code, message).with_data(Value::Object(data))
    }
}

/// What a paid tool result carries in `_meta`: `x402/payment-response`, the settlement (the
/// object whose base64 is the HTTP answer's `PAYMENT-RESPONSE`), and for a call paid with the
/// Payment scheme's credential `org.paymentauth/receipt` (its `Payment-Receipt`, as JSON, with
/// the `challengeId` the credential echoed).
pub fn settled_meta(settled: &Settled, challenge_id: Option<&str>) -> Map<String, Value> {
    let mut meta = Map::new();
    let decode = |v: &HeaderValue, url_safe: bool| -> Option<Value> {
        let text = v.to_str().ok()?;
        let bytes = if url_safe {
            URL_SAFE_NO_PAD.decode(text).ok()?
        } else {
            STANDARD.decode(text).ok()?
        };
        serde_json::from_slice(&bytes).ok()
    };
    if let Some(v) = settled
        .payment_response
        .as_ref()
        .and_then(|v| decode(v, false))
    {
        meta.insert(X402_PAYMENT_RESPONSE.into(), v);
    }
    if let Some(Value::Object(mut r)) = settled
        .payment_receipt
        .as_ref()
        .and_then(|v| decode(v, true))
    {
        if let Some(id) = challenge_id {
            r.insert("challengeId".into(), id.into());
        }
        meta.insert(PAYMENT_RECEIPT.into(), Value::Object(r));
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};

    fn route() -> PricedRoute {
        let usd = Currency::try_new("USD", 6).unwrap();
        let price = Money {
            amount: "0.01".parse().unwrap(),
            currency: usd,
        };
        PricedRoute::new("mcp/search", Price::fixed(price).unwrap())
    }

    #[test]
    fn a_credential_in_meta_replaces_the_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tg1.a.b"),
        );
        let same = admission_headers(&h, None).unwrap();
        assert_eq!(same[header::AUTHORIZATION], "Bearer tg1.a.b");
        let out = admission_headers(&h, Some(&json!({PAYMENT_CREDENTIAL: "a.b.c"}))).unwrap();
        assert_eq!(out[header::AUTHORIZATION], "Payment a.b.c");
        let out = admission_headers(
            &h,
            Some(&json!({X402_PAYMENT: {"x402Version": 2, "payload": {}}})),
        )
        .unwrap();
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert!(out.contains_key(credential::PAYMENT_SIGNATURE));
        let obj =
            json!({PAYMENT_CREDENTIAL: {"challenge": {"id": "c"}, "payload": {"receipt": "r"}}});
        let out = admission_headers(&h, Some(&obj)).unwrap();
        let v = out[header::AUTHORIZATION].to_str().unwrap();
        assert!(v.starts_with("Payment ") && !v.contains('.'), "{v}");
        for (meta, code) in [
            (json!([1]), ErrorCode::CredentialMalformed),
            (json!({X402_PAYMENT: "x"}), ErrorCode::CredentialMalformed),
            (
                json!({PAYMENT_CREDENTIAL: 5}),
                ErrorCode::CredentialMalformed,
            ),
            (
                json!({PAYMENT_CREDENTIAL: "a\nb"}),
                ErrorCode::CredentialMalformed,
            ),
            (
                json!({PAYMENT_CREDENTIAL: "a", X402_PAYMENT: {}}),
                ErrorCode::CredentialAmbiguous,
            ),
        ] {
            assert_eq!(admission_headers(&h, Some(&meta)).unwrap_err().code, code);
        }
    }

    #[test]
    fn refusals_become_stable_jsonrpc_errors() {
        let p = Paywall::builder("m", vec![7u8; 32]).build().unwrap();
        let (method, uri, headers) = (
            Method::POST,
            Uri::from_static("http://gw.example/mcp"),
            HeaderMap::new(),
        );
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let route = route();
        let e = p.render_jsonrpc(
            &Refusal::new(ErrorCode::PaymentRequired, "pay"),
            Some((&route, head)),
        );
        assert_eq!((e.code, e.message.as_str()), (-32042, "Payment Required"));
        let d = e.data.unwrap();
        assert_eq!(d["httpStatus"], 402);
        assert_eq!(d["x402Version"], 2);
        assert_eq!(d["accepts"][0]["amount"], "10000");
        assert_eq!(d["accepts"][0]["extra"]["route"], "mcp/search");
        let c = &d["challenges"][0];
        assert_eq!(c["id"], d["accepts"][0]["extra"]["challenge"]);
        assert_eq!(c["method"], "tollgate");
        assert_eq!(c["realm"], "gw.example");
        assert_eq!(c["request"]["amount"], "10000");
        assert_eq!(d["problem"]["code"], "payment_required");
        for (code, want) in [
            (ErrorCode::ReceiptReplayed, -32043),
            (ErrorCode::BalanceInsufficient, -32042),
            (ErrorCode::CredentialMalformed, -32602),
            (ErrorCode::TokenInvalid, -32030),
            (ErrorCode::PayerBlocked, -32030),
            (ErrorCode::ReceiptInUse, -32031),
            (ErrorCode::RateLimited, -32031),
            (ErrorCode::StoreUnavailable, -32031),
            (ErrorCode::Internal, -32603),
        ] {
            let e = p.render_jsonrpc(&Refusal::new(code, "x"), Some((&route, head)));
            assert_eq!(e.code, want, "{code:?}");
            let d = e.data.unwrap();
            assert_eq!(d["problem"]["code"], code.as_str());
            assert_eq!(d.get("challenges").is_some(), code.status().as_u16() == 402);
        }
        let e = p.render_jsonrpc(&Refusal::store_down("down", "test"), None);
        assert_eq!(e.data.unwrap()["retryAfter"], 2);
    }
}

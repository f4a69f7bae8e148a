//! The x402 facilitator: the service that submits `transferWithAuthorization` on chain.
//!
//! [`HttpFacilitator`] speaks the facilitator HTTP API: `POST /verify` and `POST /settle`
//! with `{"x402Version": 2, "paymentPayload", "paymentRequirements"}`, and `GET /supported`.
//! Answers are read defensively: the spec's bodies (`isValid`/`invalidReason`,
//! `success`/`errorReason`/`transaction`) and the error bodies common implementations send
//! (`{"error": ...}`, `{"message": ...}`, `{"reason": ...}`). Anything else -- a timeout, a
//! 5xx, HTML, truncated JSON, a success without a transaction, `settlement_pending` -- is
//! [`FacilitatorError::Unavailable`] or [`FacilitatorError::Pending`]: never a success, so
//! nothing is served on it.

use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// The largest facilitator answer read (bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A transfer the facilitator reports as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChain {
    /// Transaction hash.
    pub transaction: String,
    /// The network it settled on (as the facilitator says).
    pub network: String,
}

/// Why the facilitator did not settle (or verify).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorError {
    /// A definite refusal, with the facilitator's reason (e.g. `insufficient_funds`).
    #[error("refused: {reason}")]
    Refused {
        /// The reason string, passed through.
        reason: String,
    },
    /// Accepted but not confirmed (`settlement_pending`): the outcome is not known yet.
    #[error("settlement pending")]
    Pending,
    /// No usable answer: timeout, connection error, 5xx, not JSON, truncated, unexpected shape.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What Tollgate needs from a facilitator.
#[async_trait]
pub trait Facilitator: Send + Sync + std::fmt::Debug + 'static {
    /// Ask whether the payment would settle (balance, simulation), without settling it.
    async fn verify(&self, payload: &Value, requirements: &Value) -> Result<(), FacilitatorError>;
    /// Settle the payment on chain.
    async fn settle(
        &self,
        payload: &Value,
        requirements: &Value,
    ) -> Result<OnChain, FacilitatorError>;
    /// The `(x402Version, scheme, network)` kinds it supports.
    async fn supported(&self) -> Result<Vec<(u64, String, String)>, FacilitatorError>;
}

/// A facilitator reached over HTTP.
#[derive(Debug, Clone)]
pub struct HttpFacilitator {
    /// Base URL, without a trailing slash.
    base: String,
    /// Redirects off (a facilitator URL is configuration, never followed elsewhere).
    client: reqwest::Client,
    /// Sent with every call (e.g. `Authorization`), from the environment.
    headers: HeaderMap,
}

/// Why a facilitator client cannot be made from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorConfigError {
    /// The URL is not `http://` or `https://`.
    #[error("must start with http:// or https://")]
    Scheme,
    /// A configured header name is invalid.
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    /// A configured header value is invalid (the value is not repeated: it may be a secret).
    #[error("the value of {0} is not a header value")]
    HeaderValue(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl HttpFacilitator {
    /// A client for `base` (e.g. `https://x402.org/facilitator`), each call bounded by
    /// `timeout`, sending `headers` (name, value) with every call.
    pub fn try_new(
        base: &str,
        timeout: Duration,
        headers: &[(String, String)],
    ) -> Result<Self, FacilitatorConfigError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(FacilitatorConfigError::Scheme);
        }
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| FacilitatorConfigError::HeaderName(k.clone()))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| FacilitatorConfigError::HeaderValue(k.clone()))?;
            value.set_sensitive(true);
            map.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| FacilitatorConfigError::Client(e.to_string()))?;
        Ok(HttpFacilitator {
            base: base.trim_end_matches('/').to_owned(),
            client,
            headers: map,
        })
    }

    /// POST (or GET, without a body) and read a bounded JSON answer.
    async fn call(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), FacilitatorError> {
        let url = format!("{}{path}", self.base);
        let req = match body {
            Some(b) => self.client.post(url).json(&b),
            None => self.client.get(url),
        };
        let mut res = req
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| FacilitatorError::Unavailable(without_url(&e)))?;
        let status = res.status().as_u16();
        let mut bytes = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(c)) => {
                    if bytes.len() + c.len() > MAX_ANSWER_BYTES {
                        return Err(FacilitatorError::Unavailable("answer too large".into()));
                    }
                    bytes.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => return Err(FacilitatorError::Unavailable(without_url(&e))),
            }
        }
        if status >= 500 {
            return Err(FacilitatorError::Unavailable(format!("HTTP {status}")));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            FacilitatorError::Unavailable(format!("HTTP {status} answer is not JSON"))
        })?;
        if !v.is_object() {
            return Err(FacilitatorError::Unavailable(format!(
                "HTTP {status} answer is not a JSON object"
            )));
        }
        Ok((status, v))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "transport error"
    };
    kind.to_owned()
}

fn body(payload: &Value, requirements: &Value) -> Value {
    json!({
        "x402Version": 2,
        "paymentPayload": payload,
        "paymentRequirements": requirements,
    })
}

/// The first reason-like string in an error body.
fn reason_of(v: &Value) -> Option<String> {
    ["errorReason", "invalidReason", "error", "reason", "message"]
        .iter()
        .find_map(|k| match v.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Object(o)) => o
                .get("code")
                .or_else(|| o.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        })
        .map(|s| s.chars().take(120).collect())
}

fn is_pending(v: &Value, reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.eq_ignore_ascii_case("settlement_pending"))
        || v.get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("pending"))
}

/// Read a `/settle` answer (status below 500, JSON object).
pub fn read_settle(status: u16, v: &Value) -> Result<OnChain, FacilitatorError> {
    let reason = reason_of(v);
    if is_pending(v, reason.as_deref()) || status == 202 {
        return Err(FacilitatorError::Pending);
    }
    match v.get("success") {
        Some(Value::Bool(true)) if (200..300).contains(&status) => {
            let tx = v
                .get("transaction")
                .or_else(|| v.get("txHash"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.len() <= 200)
                .ok_or_else(|| {
                    FacilitatorError::Unavailable("success without a transaction".into())
                })?;
            Ok(OnChain {
                transaction: tx.to_owned(),
                network: v
                    .get("network")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(64)
                    .collect(),
            })
        }
        flag => Err(not_done(status, flag, reason, "settle", "settlement")),
    }
}

/// Why an answer whose success flag (`success`, `isValid`) is `flag` is not a success: refused
/// (flag false, or a 4xx with a reason) or unavailable (anything else).
fn not_done(
    status: u16,
    flag: Option<&Value>,
    reason: Option<String>,
    op: &str,
    what: &str,
) -> FacilitatorError {
    match (flag, reason) {
        (Some(Value::Bool(false)), reason) => FacilitatorError::Refused {
            reason: reason.unwrap_or_else(|| format!("unexpected_{op}_error")),
        },
        (_, Some(reason)) if (400..500).contains(&status) => FacilitatorError::Refused { reason },
        (_, None) if (400..500).contains(&status) => {
            FacilitatorError::Unavailable(format!("HTTP {status} without a reason"))
        }
        _ => FacilitatorError::Unavailable(format!("HTTP {status}: not a {what} answer")),
    }
}

/// Read a `/verify` answer (status below 500, JSON object).
pub fn read_verify(status: u16, v: &Value) -> Result<(), FacilitatorError> {
    let reason = reason_of(v);
    match v.get("isValid") {
        Some(Value::Bool(true)) if (200..300).contains(&status) => Ok(()),
        flag => Err(not_done(status, flag, reason, "verify", "verification")),
    }
}

#[async_trait]
impl Facilitator for HttpFacilitator {
    async fn verify(&self, payload: &Value, requirements: &Value) -> Result<(), FacilitatorError> {
        let (status, v) = self
            .call("/verify", Some(body(payload, requirements)))
            .await?;
        read_verify(status, &v)
    }

    async fn settle(
        &self,
        payload: &Value,
        requirements: &Value,
    ) -> Result<OnChain, FacilitatorError> {
        let (status, v) = self
            .call("/settle", Some(body(payload, requirements)))
            .await?;
        read_settle(status, &v)
    }

    async fn supported(&self) -> Result<Vec<(u64, String, String)>, FacilitatorError> {
        let (status, v) = self.call("/supported", None).await?;
        if !(200..300).contains(&status) {
            return Err(FacilitatorError::Unavailable(format!("HTTP {status}")));
        }
        let kinds = v
            .get("kinds")
            .and_then(Value::as_array)
            .ok_or_else(|| FacilitatorError::Unavailable("no kinds".into()))?;
        Ok(kinds
            .iter()
            .filter_map(|k| {
                Some((
                    k.get("x402Version")?.as_u64()?,
                    k.get("scheme")?.as_str()?.to_owned(),
                    k.get("network")?.as_str()?.to_owned(),
                ))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_answers() {
        let ok = json!({"success": true, "transaction": "0xabc", "network": "eip155:8453", "payer": "0x1"});
        assert_eq!(
            read_settle(200, &ok),
            Ok(OnChain {
                transaction: "0xabc".into(),
                network: "eip155:8453".into()
            })
        );
        let refused = |s, v: Value| match read_settle(s, &v) {
            Err(FacilitatorError::Refused { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(
                200,
                json!({"success": false, "errorReason": "insufficient_funds"})
            ),
            "insufficient_funds"
        );
        assert_eq!(
            refused(
                400,
                json!({"success": false, "errorReason": "invalid_transaction_state"})
            ),
            "invalid_transaction_state"
        );
        assert_eq!(refused(400, json!({"error": "bad nonce"})), "bad nonce");
        assert_eq!(
            refused(
                422,
                json!({"error": {"code": "invalid_payload", "message": "x"}})
            ),
            "invalid_payload"
        );
        assert_eq!(
            refused(200, json!({"success": false})),
            "unexpected_settle_error"
        );
        let unavailable =
            |s, v: Value| matches!(read_settle(s, &v), Err(FacilitatorError::Unavailable(_)));
        assert!(unavailable(200, json!({"success": true})));
        assert!(unavailable(
            200,
            json!({"success": true, "transaction": ""})
        ));
        assert!(unavailable(200, json!({"ok": 1})));
        assert!(unavailable(400, json!({})));
        assert!(unavailable(
            302,
            json!({"success": true, "transaction": "0x1"})
        ));
        for pending in [
            json!({"success": false, "errorReason": "settlement_pending"}),
            json!({"success": true, "transaction": "0x1", "status": "pending"}),
        ] {
            assert_eq!(read_settle(200, &pending), Err(FacilitatorError::Pending));
        }
        assert_eq!(
            read_settle(202, &json!({"success": true, "transaction": "0x1"})),
            Err(FacilitatorError::Pending)
        );
    }

    #[test]
    fn verify_answers() {
        assert_eq!(
            read_verify(200, &json!({"isValid": true, "payer": "0x1"})),
            Ok(())
        );
        assert_eq!(
            read_verify(
                200,
                &json!({"isValid": false, "invalidReason": "insufficient_funds"})
            ),
            Err(FacilitatorError::Refused {
                reason: "insufficient_funds".into()
            })
        );
        assert!(matches!(
            read_verify(200, &json!({"valid": true})),
            Err(FacilitatorError::Unavailable(_))
        ));
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(HttpFacilitator::try_new("ftp://x", Duration::from_secs(1), &[]).is_err());
        assert!(HttpFacilitator::try_new(
            "http://x",
            Duration::from_secs(1),
            &[("bad header".into(), "v".into())]
        )
        .is_err());
        assert!(HttpFacilitator::try_new(
            "http://x/",
            Duration::from_secs(1),
            &[("authorization".into(), "Bearer t".into())]
        )
        .is_ok());
    }
}

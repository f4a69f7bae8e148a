//! Request `Idempotency-Key` (draft-httpauth-payment, "Idempotency and Side Effects"; the key
//! itself as in draft-ietf-httpapi-idempotency-key-header): a paid request retried with the same
//! key by the same payer is never charged twice.
//!
//! The key is claimed for the payer (per-payer scope: keys of different payers never meet)
//! before anything is held, together with a fingerprint of the request (method, route and
//! target; not the body). While the first request is in flight a retry gets 409
//! `idempotency_key_in_use`; once it was served and charged, 409 `idempotency_key_used` with the
//! original usage event id (the response itself is not stored, so it cannot be replayed); if
//! it was not charged (refused, upstream error, client gone) the key is forgotten and a retry
//! runs again. The same key for another request is 422 `idempotency_key_mismatch`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

use crate::error::ErrorCode;
use crate::store::{KeyClaim, Store};

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest key accepted (characters).
pub const MAX_KEY_LEN: usize = 128;
/// How long a key is remembered from its first use.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The request's `Idempotency-Key`, if any. It may be sent bare or as a structured-field string
/// (`"..."`, as the IETF draft writes it); the key is 1 to [`MAX_KEY_LEN`] characters of
/// `A-Z a-z 0-9 - _ . ~ + / =` (a UUID, a ULID or base64 fit). Anything else, or the header
/// twice, is refused.
pub(super) fn parse(headers: &HeaderMap) -> Result<Option<String>, (ErrorCode, String)> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = |d: &str| (ErrorCode::IdempotencyKeyInvalid, d.to_owned());
    if values.next().is_some() {
        return Err(bad("send Idempotency-Key at most once"));
    }
    let v = v
        .to_str()
        .map_err(|_| bad("Idempotency-Key must be visible ASCII"))?
        .trim();
    let v = match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| bad("Idempotency-Key has an unterminated quote"))?,
        None => v,
    };
    if v.is_empty() || v.len() > MAX_KEY_LEN {
        return Err(bad(&format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b))
    {
        return Err(bad(
            "Idempotency-Key may only hold A-Z a-z 0-9 - _ . ~ + / =",
        ));
    }
    Ok(Some(v.to_owned()))
}

/// What makes two requests "the same" for a key: method, route and target (path and query).
pub(super) fn fingerprint(method: &Method, route: &str, uri: &Uri) -> String {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let digest = Sha256::digest(format!("{method}\n{route}\n{target}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A claimed key. Dropped while still armed (the request was not settled: refused after the
/// claim, or the admission was dropped) it is forgotten in the background.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) store: Arc<dyn Store>,
    pub(super) claim: KeyClaim,
    armed: bool,
}

impl Claim {
    pub(super) fn new(store: Arc<dyn Store>, payer: &str, key: String) -> Self {
        Claim {
            store,
            claim: KeyClaim {
                payer: payer.to_owned(),
                key,
                token: uuid::Uuid::new_v4().to_string(),
            },
            armed: true,
        }
    }

    /// Served and charged: a retry learns the event instead of paying again.
    pub(super) async fn done(mut self, event_id: &str, time_ms: i64) {
        self.armed = false;
        let r = self
            .store
            .idempotency_finish(&self.claim, Some((event_id, time_ms)))
            .await;
        if let Err(e) = r {
            // The claim stays "in flight" until it expires: retries get 409, never a charge.
            tracing::warn!(error = %e, "could not record the idempotency key as used");
        }
    }

    /// Not charged: forget the key, so a retry runs again.
    pub(super) async fn forget(mut self) {
        self.armed = false;
        let r = self.store.idempotency_finish(&self.claim, None).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not forget an unused idempotency key; it expires by itself");
        }
    }

    /// The outcome is unknown (a capture may still land): keep the claim in flight until it
    /// expires, so a retry can never be charged twice.
    pub(super) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, claim) = (self.store.clone(), self.claim.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.idempotency_finish(&claim, None).await {
                    tracing::warn!(error = %e, "could not forget an unused idempotency key; it expires by itself");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(IDEMPOTENCY_KEY, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn keys_are_bounded() {
        assert_eq!(parse(&h(&[])).unwrap(), None);
        assert_eq!(parse(&h(&["abc-123"])).unwrap().as_deref(), Some("abc-123"));
        assert_eq!(
            parse(&h(&["\"8e03978e-40d5-43e8-bc93-6894a57f9324\""]))
                .unwrap()
                .as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        let long = "a".repeat(MAX_KEY_LEN);
        assert_eq!(parse(&h(&[&long])).unwrap(), Some(long.clone()));
        for bad in [
            vec!["".to_owned()],
            vec!["\"\"".to_owned()],
            vec![format!("{long}a")],
            vec!["a b".to_owned()],
            vec!["a:b".to_owned()],
            vec!["\"abc".to_owned()],
            vec!["a".to_owned(), "b".to_owned()],
        ] {
            let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
            let e = parse(&h(&refs)).unwrap_err();
            assert_eq!(e.0, ErrorCode::IdempotencyKeyInvalid, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let a = fingerprint(&Method::POST, "jobs", &u("/v1/jobs?x=1"));
        assert_eq!(a, fingerprint(&Method::POST, "jobs", &u("/v1/jobs?x=1")));
        assert_ne!(a, fingerprint(&Method::PUT, "jobs", &u("/v1/jobs?x=1")));
        assert_ne!(a, fingerprint(&Method::POST, "jobs", &u("/v1/jobs?x=2")));
        assert_eq!(a.len(), 64);
    }
}

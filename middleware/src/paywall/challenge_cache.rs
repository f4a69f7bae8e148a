//! A 402 answer is a pure function of (route, method, base URL, path and query, code, detail)
//! and the current second (the challenge id is an HMAC of the terms and the expiry second), so
//! the answers of the current second are kept and cloned: a flood of unpaid requests costs a
//! lookup and a copy, not a fresh set of requirements, challenge and problem body each.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use super::Reply as Refusal;
use crate::error::ErrorCode;

/// At most this many distinct answers per second are kept (then the rest is built each time).
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, Default)]
pub(super) struct ChallengeCache(Mutex<(i64, HashMap<String, Cached>)>);

#[derive(Debug)]
struct Cached {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    code: Option<ErrorCode>,
}

impl ChallengeCache {
    /// The key of an answer (one allocation).
    pub(super) fn key(parts: &[&str]) -> String {
        let mut k = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for p in parts {
            k.push_str(p);
            k.push('\u{1f}');
        }
        k
    }

    /// The answer built for `key` during second `now`, if any.
    pub(super) fn get(&self, now: i64, key: &str) -> Option<Refusal> {
        let guard = self.0.lock().ok()?;
        if guard.0 != now {
            return None;
        }
        let c = guard.1.get(key)?;
        let mut res = Response::new(c.body.clone());
        *res.status_mut() = c.status;
        *res.headers_mut() = c.headers.clone();
        if let Some(code) = c.code {
            res.extensions_mut().insert(code);
        }
        Some(res)
    }

    /// Keep `res` as the answer for `key` during second `now`.
    pub(super) fn put(&self, now: i64, key: String, res: &Refusal) {
        let Ok(mut guard) = self.0.lock() else {
            return;
        };
        if guard.0 != now {
            guard.0 = now;
            guard.1.clear();
        }
        if guard.1.len() >= MAX_ENTRIES {
            return;
        }
        guard.1.insert(
            key,
            Cached {
                status: res.status(),
                headers: res.headers().clone(),
                body: res.body().clone(),
                code: res.extensions().get::<ErrorCode>().copied(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &'static str) -> Refusal {
        let mut res = Response::new(Bytes::from_static(body.as_bytes()));
        *res.status_mut() = StatusCode::PAYMENT_REQUIRED;
        res.headers_mut()
            .insert("payment-required", http::HeaderValue::from_static("x"));
        res.extensions_mut().insert(ErrorCode::PaymentRequired);
        res
    }

    #[test]
    fn answers_are_kept_for_their_second_only() {
        let cache = ChallengeCache::default();
        let k = ChallengeCache::key(&["r", "GET", "http://h", "/a", "payment_required", "d"]);
        assert!(cache.get(10, &k).is_none());
        cache.put(10, k.clone(), &answer("one"));
        let hit = cache.get(10, &k).unwrap();
        assert_eq!(hit.status(), StatusCode::PAYMENT_REQUIRED);
        assert_eq!(hit.body().as_ref(), b"one");
        assert_eq!(hit.headers()["payment-required"], "x");
        assert_eq!(
            hit.extensions().get::<ErrorCode>(),
            Some(&ErrorCode::PaymentRequired)
        );
        // Another path, or the next second: not the same answer.
        let other = ChallengeCache::key(&["r", "GET", "http://h", "/b", "payment_required", "d"]);
        assert!(cache.get(10, &other).is_none());
        assert!(cache.get(11, &k).is_none());
        cache.put(11, other.clone(), &answer("two"));
        assert!(
            cache.get(11, &k).is_none(),
            "a new second forgets the last one's"
        );
        assert_eq!(cache.get(11, &other).unwrap().body().as_ref(), b"two");
        // Parts are separated: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(
            ChallengeCache::key(&["ab", "c"]),
            ChallengeCache::key(&["a", "bc"])
        );
    }
}

//! Request ids: the client's `X-Request-Id` when it is short and printable, else a new one
//! (a per-process prefix and a counter).

use super::*;

/// A new request id: a random per-process prefix and a counter (unique, and no random-number
/// syscall per request; ids need not be unpredictable).
pub(crate) fn next_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `<prefix>-<12 hex digits>`, written by hand (no formatting machinery per request).
    let mut id = String::with_capacity(prefix.len() + 13);
    id.push_str(prefix);
    id.push('-');
    for shift in (0..12).rev() {
        let digit = ((n >> (shift * 4)) & 0xf) as u8;
        id.push(char::from(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        }));
    }
    id
}

pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request id: the client's `X-Request-Id` when it is short and printable, else a new one.
pub(crate) fn request_id(req: &Request) -> HeaderValue {
    req.headers()
        .get(&X_REQUEST_ID)
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        // The id's own buffer becomes the header's (its capacity is its length: no copy).
        .or_else(|| HeaderValue::from_maybe_shared(bytes::Bytes::from(next_request_id())).ok())
        .unwrap_or_else(|| HeaderValue::from_static("-"))
}

//! Metering: where a route's usage comes from, how it is read from a response as it passes,
//! and what it costs.
//!
//! Usage sources (per meter, in config as strings):
//! - `header:<name>` -- a response header holding a number;
//! - `json:<pointer>` -- a JSON pointer into the response body (buffered, bounded);
//! - `sse:<pointer>` -- a JSON pointer into the `data:` events of a `text/event-stream`
//!   response, read as the events pass (the last value seen wins; nothing is buffered beyond
//!   one line); when the upstream answers with JSON instead (a non-streamed
//!   call on the same token API), the pointer is read from the JSON body instead;
//! - `request_bytes`, `response_bytes` -- body sizes as streamed;
//! - `duration_ms` -- from forwarding the request to the end of the response body.
//!
//! Units must be non-negative numbers; a fractional unit count is rounded up. The cost is
//! `sum(units x unit price)`, computed exactly, then rounded **up** to the currency's scale (in
//! the provider's favour, by less than one atomic unit).

use std::collections::BTreeMap;
use std::str::FromStr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::money::{Amount, Currency};

/// The largest response body buffered for `json:` usage. Beyond it, the usage is missing.
pub const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;
/// The longest SSE line inspected for `sse:` usage.
pub const MAX_SSE_LINE: usize = 1024 * 1024;

/// Where one meter's units come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageSource {
    /// A response header.
    Header(HeaderName),
    /// A JSON pointer into the (buffered) response body.
    Json(String),
    /// A JSON pointer into SSE `data:` events.
    Sse(String),
    /// Request body bytes.
    RequestBytes,
    /// Response body bytes.
    ResponseBytes,
    /// Milliseconds from forwarding to the end of the response.
    DurationMs,
}

/// A usage source that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageSourceError {
    /// `json:` / `sse:` with something that is not a JSON pointer.
    #[error("{0:?} is not a JSON pointer (it starts with '/')")]
    Pointer(String),
    /// `header:` with an invalid header name.
    #[error("{0:?} is not a header name")]
    HeaderName(String),
    /// None of the known forms.
    #[error("{0:?}: use header:<name>, json:<pointer>, sse:<pointer>, request_bytes, response_bytes or duration_ms")]
    Unknown(String),
}

impl FromStr for UsageSource {
    type Err = UsageSourceError;

    fn from_str(s: &str) -> Result<Self, UsageSourceError> {
        let pointer = |p: &str| {
            if p.is_empty() || p.starts_with('/') {
                Ok(p.to_owned())
            } else {
                Err(UsageSourceError::Pointer(p.to_owned()))
            }
        };
        match s.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(UsageSource::Header)
                .map_err(|_| UsageSourceError::HeaderName(name.to_owned())),
            Some(("json", p)) => pointer(p).map(UsageSource::Json),
            Some(("sse", p)) => pointer(p).map(UsageSource::Sse),
            None if s == "request_bytes" => Ok(UsageSource::RequestBytes),
            None if s == "response_bytes" => Ok(UsageSource::ResponseBytes),
            None if s == "duration_ms" => Ok(UsageSource::DurationMs),
            _ => Err(UsageSourceError::Unknown(s.to_owned())),
        }
    }
}

impl UsageSource {
    /// Whether the units are known once the response head (and, for `json:`, the bounded
    /// body) has arrived, so the request can be settled before answering.
    pub fn known_before_answer(&self) -> bool {
        matches!(
            self,
            UsageSource::Header(_) | UsageSource::Json(_) | UsageSource::RequestBytes
        )
    }
}

/// One priced unit of a metered route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    /// Unit name (`prompt_token`, `byte`, `ms`, ...).
    pub unit: String,
    /// Where its count comes from.
    pub source: UsageSource,
    /// Price per unit (any precision; the total is rounded up to the currency scale).
    pub price: Amount,
}

/// What happens when a served response's usage cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissing {
    /// Charge the reservation (default: the upstream did serve).
    #[default]
    Reserve,
    /// Charge nothing.
    Zero,
}

/// A metered price: per-unit prices, the amount reserved before forwarding, and the rule for
/// missing usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// The currency.
    pub currency: Currency,
    /// The meters (e.g. prompt and completion tokens).
    pub meters: Vec<Meter>,
    /// Held from the balance before forwarding (> 0).
    pub reserve: Amount,
    /// Missing usage rule.
    pub on_missing: OnMissing,
    /// End a streamed response once its measured cost would exceed what the payer can pay
    /// (hold + available balance, and a receipt's cap). Acts on usage measured as the body
    /// passes: `response_bytes`, `duration_ms`, and `sse:` values seen in events so far.
    pub cutoff: bool,
    /// What `cutoff` does to an event stream the payer can no longer pay for: end it
    /// (default), or pause it for a top-up (see [`crate::pause`]).
    pub on_exhausted: OnExhausted,
}

/// What a cut-off event stream does when the money runs out (`on_exhausted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExhausted {
    /// End the stream with a last `event: tollgate` (the default).
    #[default]
    Cut,
    /// Hold the upstream and ask for a top-up (`event: payment-need-topup`) for up to
    /// `timeout`; continue when the payer's balance covers the next chunk, otherwise end with
    /// `event: session-timeout`.
    Pause {
        /// How long the stream waits, paused, for a top-up.
        timeout: std::time::Duration,
    },
}

/// `pause_timeout_secs` when a route does not say.
pub const DEFAULT_PAUSE_SECS: u64 = 30;
/// The longest `pause_timeout_secs` a route may configure.
pub const MAX_PAUSE_SECS: u64 = 600;

impl Metered {
    /// Whether every meter can be read before answering.
    pub fn settles_before_answer(&self) -> bool {
        self.meters.iter().all(|m| m.source.known_before_answer())
    }

    /// Whether a meter reads the response body (`json:` or `sse:`): its content coding then
    /// matters (see [`crate::content_coding`]).
    pub fn reads_body(&self) -> bool {
        self.meters
            .iter()
            .any(|m| matches!(m.source, UsageSource::Json(_) | UsageSource::Sse(_)))
    }

    /// Whether the body must be buffered (a `json:` meter).
    pub fn needs_json(&self) -> bool {
        self.meters
            .iter()
            .any(|m| matches!(m.source, UsageSource::Json(_)))
    }

    /// The cost of `units` in minor units, rounded up to the scale. `None` on overflow.
    pub fn cost_minor(&self, units: &BTreeMap<String, u64>) -> Option<u64> {
        let mut total = Decimal::ZERO;
        for m in &self.meters {
            let n = Decimal::from(*units.get(&m.unit).unwrap_or(&0));
            total = total.checked_add(n.checked_mul(m.price.as_decimal())?)?;
        }
        let rounded =
            total.round_dp_with_strategy(self.currency.scale(), RoundingStrategy::AwayFromZero);
        self.currency
            .to_minor(Amount::try_from_decimal(rounded).ok()?)
            .ok()
    }
}

/// Reads a JSON number as a unit count (non-negative; fractions rounded up).
fn units_of(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && (0.0..9.0e15).contains(&f)).then(|| f.ceil() as u64)
}

/// Usage observed on one response, fed frame by frame.
#[derive(Debug, Default)]
pub struct UsageReading {
    /// Response body bytes seen.
    pub response_bytes: u64,
    /// Request body bytes (set by the caller).
    pub request_bytes: u64,
    /// Duration (set by the caller).
    pub duration_ms: u64,
    /// Values read from headers, JSON or SSE, by unit.
    found: BTreeMap<String, u64>,
    /// Buffered body for `json:` meters (`None` once over the limit).
    json: Option<Vec<u8>>,
    /// The response is not an event stream: `sse:` pointers read the JSON body instead (a
    /// token API answering a non-streamed call on the same route).
    sse_as_json: bool,
    /// The SSE line being assembled.
    sse_line: Vec<u8>,
    /// Whether the current SSE line overflowed (skip it).
    sse_skip: bool,
    /// Decodes a compressed body for reading (see [`crate::content_coding`]); the bytes
    /// delivered are not changed.
    decoder: crate::content_coding::Decoder,
    /// Decoded bytes read so far (bounded).
    decoded_bytes: u64,
}

impl UsageReading {
    /// A reading for these meters, taking header values from the response head.
    pub fn start(metered: &Metered, headers: &HeaderMap) -> Self {
        let has_sse = metered
            .meters
            .iter()
            .any(|m| matches!(m.source, UsageSource::Sse(_)));
        let json_answer = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
        let sse_as_json = has_sse && json_answer;
        let reads_body = has_sse || metered.needs_json();
        let mut r = UsageReading {
            json: (metered.needs_json() || sse_as_json).then(Vec::new),
            sse_as_json,
            decoder: if reads_body {
                crate::content_coding::Decoder::for_response(headers)
            } else {
                crate::content_coding::Decoder::Identity
            },
            ..Default::default()
        };
        for m in &metered.meters {
            if let UsageSource::Header(name) = &m.source {
                let v = headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<serde_json::Value>().ok())
                    .and_then(|v| units_of(&v));
                if let Some(n) = v {
                    r.found.insert(m.unit.clone(), n);
                }
            }
        }
        r
    }

    /// Observe a body chunk (as delivered: possibly compressed).
    pub fn feed(&mut self, metered: &Metered, chunk: &Bytes) {
        self.response_bytes += chunk.len() as u64;
        if self.decoder.is_identity() {
            self.read(metered, chunk);
        } else {
            let decoded = self.decoder.decode(chunk, self.decoded_bytes);
            self.decoded_bytes += decoded.len() as u64;
            self.read(metered, &decoded);
        }
    }

    /// Read the body's (decoded) bytes for usage.
    fn read(&mut self, metered: &Metered, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if let Some(buf) = &mut self.json {
            if buf.len() + chunk.len() <= MAX_JSON_BYTES {
                buf.extend_from_slice(chunk);
            } else {
                self.json = None;
            }
        }
        if !self.sse_as_json
            && metered
                .meters
                .iter()
                .any(|m| matches!(m.source, UsageSource::Sse(_)))
        {
            for &b in chunk.iter() {
                if b == b'\n' {
                    if !self.sse_skip {
                        let line = std::mem::take(&mut self.sse_line);
                        self.sse_event_line(metered, &line);
                    }
                    self.sse_line.clear();
                    self.sse_skip = false;
                } else if self.sse_line.len() < MAX_SSE_LINE {
                    self.sse_line.push(b);
                } else {
                    self.sse_skip = true;
                }
            }
        }
    }

    fn sse_event_line(&mut self, metered: &Metered, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
            return;
        };
        for m in &metered.meters {
            if let UsageSource::Sse(p) = &m.source {
                if let Some(n) = v.pointer(p).and_then(units_of) {
                    self.found.insert(m.unit.clone(), n);
                }
            }
        }
    }

    /// The units measured so far (missing ones as zero), without ending the reading.
    pub fn so_far(&self, metered: &Metered, duration_ms: u64) -> BTreeMap<String, u64> {
        metered
            .meters
            .iter()
            .map(|m| {
                let n = match &m.source {
                    UsageSource::Header(_) | UsageSource::Sse(_) => {
                        self.found.get(&m.unit).copied().unwrap_or(0)
                    }
                    UsageSource::Json(_) => 0,
                    UsageSource::RequestBytes => self.request_bytes,
                    UsageSource::ResponseBytes => self.response_bytes,
                    UsageSource::DurationMs => duration_ms,
                };
                (m.unit.clone(), n)
            })
            .collect()
    }

    /// Forget a chunk that was counted but will not be delivered (cut-off).
    pub fn unfeed_bytes(&mut self, n: usize) {
        self.response_bytes = self.response_bytes.saturating_sub(n as u64);
    }

    /// The values read from headers and SSE events so far, for [`Self::forget_chunk`] if the
    /// chunk about to be fed is never delivered (a paused stream that ends unpaid).
    pub fn found_snapshot(&self) -> BTreeMap<String, u64> {
        self.found.clone()
    }

    /// Forget a chunk of `n` bytes that was read but will never be delivered, with the
    /// values of [`Self::found_snapshot`] taken before it: neither its bytes nor the SSE usage
    /// in it (nor a line it left unfinished) are charged.
    pub fn forget_chunk(&mut self, n: usize, found: BTreeMap<String, u64>) {
        self.unfeed_bytes(n);
        self.found = found;
        self.sse_line.clear();
        self.sse_skip = false;
    }

    /// The units per meter, after the body ended (or stopped). `None` for a meter whose
    /// usage could not be read.
    pub fn finish(&mut self, metered: &Metered) -> BTreeMap<String, Option<u64>> {
        if !self.decoder.is_identity() {
            let rest = self.decoder.finish();
            self.read(metered, &rest);
        }
        let undecodable = self.decoder.failed();
        // A last SSE line without a trailing newline still counts.
        if !self.sse_line.is_empty() && !self.sse_skip {
            let line = std::mem::take(&mut self.sse_line);
            self.sse_event_line(metered, &line);
        }
        let json: Option<serde_json::Value> = self
            .json
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok());
        metered
            .meters
            .iter()
            .map(|m| {
                let n = match &m.source {
                    // A body that could not be decoded: its usage is missing.
                    UsageSource::Sse(_) | UsageSource::Json(_) if undecodable => None,
                    UsageSource::Sse(p) if self.sse_as_json => {
                        json.as_ref().and_then(|j| j.pointer(p)).and_then(units_of)
                    }
                    UsageSource::Header(_) | UsageSource::Sse(_) => {
                        self.found.get(&m.unit).copied()
                    }
                    UsageSource::Json(p) => {
                        json.as_ref().and_then(|j| j.pointer(p)).and_then(units_of)
                    }
                    UsageSource::RequestBytes => Some(self.request_bytes),
                    UsageSource::ResponseBytes => Some(self.response_bytes),
                    UsageSource::DurationMs => Some(self.duration_ms),
                };
                (m.unit.clone(), n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(sources: &[(&str, &str, &str)]) -> Metered {
        Metered {
            currency: Currency::try_new("USD", 6).unwrap(),
            meters: sources
                .iter()
                .map(|(u, s, p)| Meter {
                    unit: (*u).into(),
                    source: s.parse().unwrap(),
                    price: p.parse().unwrap(),
                })
                .collect(),
            reserve: "0.05".parse().unwrap(),
            on_missing: OnMissing::Reserve,
            cutoff: false,
            on_exhausted: OnExhausted::Cut,
        }
    }

    #[test]
    fn parses_sources() {
        assert_eq!(
            "json:/usage/total_tokens".parse(),
            Ok(UsageSource::Json("/usage/total_tokens".into()))
        );
        assert_eq!(
            "sse:/usage/completion_tokens".parse(),
            Ok(UsageSource::Sse("/usage/completion_tokens".into()))
        );
        assert!(matches!(
            "header:x-units".parse::<UsageSource>(),
            Ok(UsageSource::Header(_))
        ));
        assert_eq!("duration_ms".parse(), Ok(UsageSource::DurationMs));
        for bad in ["json:usage", "header:bad header", "tokens", "sse"] {
            assert!(bad.parse::<UsageSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cost_is_exact_then_rounded_up() {
        let m = metered(&[
            ("prompt_token", "json:/p", "0.0000005"),
            ("completion_token", "json:/c", "0.000002"),
        ]);
        let units = BTreeMap::from([("prompt_token".into(), 3), ("completion_token".into(), 10)]);
        // 3 x 0.0000005 + 10 x 0.000002 = 0.0000215 -> 0.000022 (22 atomic units, rounded up).
        assert_eq!(m.cost_minor(&units), Some(22));
        let units = BTreeMap::from([("prompt_token".into(), 2), ("completion_token".into(), 0)]);
        assert_eq!(m.cost_minor(&units), Some(1));
        assert_eq!(m.cost_minor(&BTreeMap::new()), Some(0));
    }

    #[test]
    fn reads_sse_usage_across_chunk_boundaries() {
        let m = metered(&[(
            "completion_token",
            "sse:/usage/completion_tokens",
            "0.000001",
        )]);
        let mut r = UsageReading::start(&m, &HeaderMap::new());
        for chunk in [
            "data: {\"delta\":\"hi\"}\n\n",
            "data: {\"usage\":{\"compl",
            "etion_tokens\":42}}\r\n\r\n",
            "data: [DONE]\n\n",
        ] {
            r.feed(&m, &Bytes::from(chunk));
        }
        assert_eq!(r.finish(&m)["completion_token"], Some(42));
        let mut none = UsageReading::start(&m, &HeaderMap::new());
        none.feed(&m, &Bytes::from("data: {\"delta\":\"x\"}\n\n"));
        assert_eq!(none.finish(&m)["completion_token"], None);
    }

    #[test]
    fn a_chunk_never_delivered_is_forgotten_with_its_sse_usage() {
        let m = metered(&[("t", "sse:/usage/total_tokens", "0.000001")]);
        let mut r = UsageReading::start(&m, &HeaderMap::new());
        r.feed(
            &m,
            &Bytes::from("data: {\"usage\":{\"total_tokens\":5}}\n\n"),
        );
        let before = r.found_snapshot();
        let kept = Bytes::from("data: {\"usage\":{\"total_tokens\":9}}\n\ndata: {\"usa");
        r.feed(&m, &kept);
        assert_eq!(r.so_far(&m, 0)["t"], 9);
        r.forget_chunk(kept.len(), before);
        // Neither its usage, its bytes nor the line it left unfinished count.
        assert_eq!(r.response_bytes, 36);
        assert_eq!(r.finish(&m)["t"], Some(5));
    }

    #[test]
    fn sse_pointers_read_a_json_answer_too() {
        let m = metered(&[(
            "completion_token",
            "sse:/usage/completion_tokens",
            "0.000001",
        )]);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let mut r = UsageReading::start(&m, &headers);
        r.feed(&m, &Bytes::from("{\"usage\":{\"completion_tokens\":9}}"));
        assert_eq!(r.finish(&m)["completion_token"], Some(9));
    }

    #[test]
    fn reads_json_headers_and_bytes() {
        let m = metered(&[
            ("t", "json:/usage/total", "0.1"),
            ("h", "header:x-units", "0.1"),
            ("b", "response_bytes", "0.1"),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert("x-units", "7".parse().unwrap());
        let mut r = UsageReading::start(&m, &headers);
        r.feed(&m, &Bytes::from("{\"usage\":"));
        r.feed(&m, &Bytes::from("{\"total\":2.5}}"));
        let u = r.finish(&m);
        assert_eq!((u["t"], u["h"], u["b"]), (Some(3), Some(7), Some(23)));
        let mut bad = UsageReading::start(&m, &HeaderMap::new());
        bad.feed(&m, &Bytes::from("{\"usage\":{\"total\":-1}}"));
        let u = bad.finish(&m);
        assert_eq!((u["t"], u["h"]), (None, None));
    }
}

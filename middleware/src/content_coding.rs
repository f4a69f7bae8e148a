//! Content codings on metered routes: the usage in a compressed body is never lost.
//!
//! A meter that reads the response body (`json:`, `sse:`) must see the body's bytes as the
//! upstream meant them. The rule, in two halves:
//!
//! 1. **Request**: the client's `Accept-Encoding` is narrowed to the codings this module can
//!    decode (`gzip`, `x-gzip`, `deflate`, `br`, `identity`; parameters such as `q` kept as the
//!    client wrote them); a header that names none of them becomes `identity`. Clients keep
//!    compression; upstreams that honour the header only use codings we read.
//! 2. **Response**: a body in one of those codings is decoded *for reading only* -- the bytes
//!    delivered to the client pass through unchanged (and `response_bytes` counts them as
//!    delivered). A body in any other coding (or a stack of several) cannot be metered: the
//!    request is refused with 502 `upstream_unavailable` and nothing is charged or delivered
//!    ([`readable`] tells, from the response head). A body that fails to decode half-way
//!    counts as usage missing (`on_missing` applies).
//!
//! Decoded output is bounded: past [`MAX_DECODED_BYTES`] the reading stops and the usage
//! counts as missing, so a compression bomb costs bounded work.

use std::io::Write as _;

use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use http::{HeaderMap, HeaderValue};

/// The most decoded bytes a reading inspects (a compressed body's usage past it is missing).
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

/// Codings decoded for reading (lowercase, as in `Accept-Encoding`).
const DECODABLE: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "identity"];

/// Narrow `Accept-Encoding` to the codings a meter can read (see the module docs).
pub fn narrow_accept_encoding(headers: &mut HeaderMap) {
    let mut kept: Vec<String> = Vec::new();
    let mut any = false;
    for value in headers.get_all(ACCEPT_ENCODING) {
        any = true;
        let Ok(v) = value.to_str() else { continue };
        for item in v.split(',') {
            let item = item.trim();
            let coding = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if DECODABLE.contains(&coding.as_str()) {
                kept.push(item.to_owned());
            }
        }
    }
    if !any {
        return;
    }
    let narrowed = if kept.is_empty() {
        HeaderValue::from_static("identity")
    } else {
        HeaderValue::from_str(&kept.join(", ")).unwrap_or(HeaderValue::from_static("identity"))
    };
    headers.insert(ACCEPT_ENCODING, narrowed);
}

/// The response's content coding, if its body can be read: `None` for a coding (or a stack
/// of codings) this module does not decode.
pub fn readable(headers: &HeaderMap) -> Option<Coding> {
    let mut codings = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().ok().into_iter().flat_map(|s| s.split(',')))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity");
    let first = codings.next();
    if codings.next().is_some() {
        return None;
    }
    match first.as_deref() {
        None => Some(Coding::Identity),
        Some("gzip" | "x-gzip") => Some(Coding::Gzip),
        Some("deflate") => Some(Coding::Deflate),
        Some("br") => Some(Coding::Brotli),
        Some(_) => None,
    }
}

/// A content coding this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No coding.
    Identity,
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate` (zlib-wrapped, or raw deflate as some servers send it).
    Deflate,
    /// `br`.
    Brotli,
}

/// Decodes a body chunk by chunk, for reading.
#[derive(Default)]
pub(crate) enum Decoder {
    /// Nothing to decode.
    #[default]
    Identity,
    /// `deflate`, before its first two bytes tell zlib from raw deflate (those seen so far).
    DeflateUnknown(Vec<u8>),
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Zlib(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
    RawDeflate(Box<flate2::write::DeflateDecoder<Vec<u8>>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
    /// Failed, or past [`MAX_DECODED_BYTES`]: nothing more is read.
    Failed,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Decoder::Identity => "identity",
            Decoder::DeflateUnknown(_) | Decoder::Zlib(_) | Decoder::RawDeflate(_) => "deflate",
            Decoder::Gzip(_) => "gzip",
            Decoder::Brotli(_) => "br",
            Decoder::Failed => "failed",
        };
        f.write_str(name)
    }
}

impl Decoder {
    /// A decoder for the response's coding; a coding it cannot read starts failed.
    pub(crate) fn for_response(headers: &HeaderMap) -> Self {
        match readable(headers) {
            Some(Coding::Identity) => Decoder::Identity,
            Some(Coding::Gzip) => {
                Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some(Coding::Deflate) => Decoder::DeflateUnknown(Vec::new()),
            Some(Coding::Brotli) => Decoder::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 8 * 1024),
            )),
            None => Decoder::Failed,
        }
    }

    /// Whether the body is read as is.
    pub(crate) fn is_identity(&self) -> bool {
        matches!(self, Decoder::Identity)
    }

    /// Whether decoding failed (the body-read usage is then missing).
    pub(crate) fn failed(&self) -> bool {
        matches!(self, Decoder::Failed)
    }

    /// Decode one chunk; the decoded bytes (possibly none yet). `total` is the decoded count
    /// so far, for the bound.
    pub(crate) fn decode(&mut self, chunk: &[u8], total: u64) -> Vec<u8> {
        let head: Vec<u8>;
        let chunk = if let Decoder::DeflateUnknown(seen) = self {
            // RFC 9110 says zlib; some servers send raw deflate. A zlib header is two bytes
            // with CM = 8 and a multiple of 31; anything else is read as raw deflate.
            seen.extend_from_slice(chunk);
            let &[cmf, flg, ..] = seen.as_slice() else {
                return Vec::new();
            };
            head = std::mem::take(seen);
            *self = if cmf & 0x0f == 8 && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0 {
                Decoder::Zlib(Box::new(flate2::write::ZlibDecoder::new(Vec::new())))
            } else {
                Decoder::RawDeflate(Box::new(flate2::write::DeflateDecoder::new(Vec::new())))
            };
            head.as_slice()
        } else {
            chunk
        };
        // flate2's writers keep their output until flushed: flush after every chunk, so an
        // event's usage is read as it passes.
        let out = match self {
            Decoder::Identity => return chunk.to_vec(),
            Decoder::Failed | Decoder::DeflateUnknown(_) => return Vec::new(),
            Decoder::Gzip(d) => d
                .write_all(chunk)
                .and_then(|()| d.flush())
                .map(|()| std::mem::take(d.get_mut())),
            Decoder::Zlib(d) => d
                .write_all(chunk)
                .and_then(|()| d.flush())
                .map(|()| std::mem::take(d.get_mut())),
            Decoder::RawDeflate(d) => d
                .write_all(chunk)
                .and_then(|()| d.flush())
                .map(|()| std::mem::take(d.get_mut())),
            Decoder::Brotli(d) => d.write_all(chunk).map(|()| std::mem::take(d.get_mut())),
        };
        match out {
            Ok(bytes) if total.saturating_add(bytes.len() as u64) <= MAX_DECODED_BYTES => bytes,
            _ => {
                *self = Decoder::Failed;
                Vec::new()
            }
        }
    }

    /// The decoded bytes still buffered at the end of the body.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let out = match self {
            Decoder::Gzip(d) => d.try_finish().map(|()| std::mem::take(d.get_mut())),
            Decoder::Zlib(d) => d.try_finish().map(|()| std::mem::take(d.get_mut())),
            Decoder::RawDeflate(d) => d.try_finish().map(|()| std::mem::take(d.get_mut())),
            Decoder::Brotli(d) => d.close().map(|()| std::mem::take(d.get_mut())),
            // A deflate body shorter than two bytes is not a deflate body.
            Decoder::DeflateUnknown(seen) if !seen.is_empty() => {
                *self = Decoder::Failed;
                return Vec::new();
            }
            Decoder::Identity | Decoder::Failed | Decoder::DeflateUnknown(_) => return Vec::new(),
        };
        out.unwrap_or_else(|_| {
            *self = Decoder::Failed;
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> String {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        narrow_accept_encoding(&mut h);
        h[ACCEPT_ENCODING].to_str().unwrap().to_owned()
    }

    #[test]
    fn accept_encoding_is_narrowed_to_what_a_meter_reads() {
        assert_eq!(accept("gzip, deflate, br, zstd"), "gzip, deflate, br");
        assert_eq!(accept("zstd;q=1.0, GZIP;q=0.5"), "GZIP;q=0.5");
        assert_eq!(accept("zstd, compress"), "identity");
        assert_eq!(accept("*"), "identity");
        let mut none = HeaderMap::new();
        narrow_accept_encoding(&mut none);
        assert!(none.get(ACCEPT_ENCODING).is_none());
    }

    #[test]
    fn content_encodings_readable_or_not() {
        let coding = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
            readable(&h)
        };
        assert_eq!(readable(&HeaderMap::new()), Some(Coding::Identity));
        assert_eq!(coding("identity"), Some(Coding::Identity));
        assert_eq!(coding("GZip"), Some(Coding::Gzip));
        assert_eq!(coding("x-gzip"), Some(Coding::Gzip));
        assert_eq!(coding("deflate"), Some(Coding::Deflate));
        assert_eq!(coding("br"), Some(Coding::Brotli));
        for bad in ["zstd", "compress", "gzip, br", "br, gzip", "exotic"] {
            assert_eq!(coding(bad), None, "{bad}");
        }
    }

    /// 20 SSE deltas, then `usage.total_tokens = 400`, then `[DONE]`: 1,072 bytes.
    fn sse_body() -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..20 {
            b.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"word \"}}]}\n\n");
        }
        b.extend_from_slice(b"data: {\"usage\":{\"total_tokens\":400}}\n\ndata: [DONE]\n\n");
        b
    }

    /// `sse_body()` compressed by Python's `brotli` module (the reference encoder).
    const SSE_BR: &str = "1b2f04609d05765b3299a231182cbd6fd63ed4227b5b345b01a6ab4feb887ccd0d10a71cb0971558fa459f9f980e3b60e7d94cdaa0cadc364f9b9b78097cfcc5be214b1c4dc2140fa9f7996eeb3fa61300";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn encoded(coding: &str, plain: &[u8]) -> Vec<u8> {
        use flate2::Compression;
        let mut out = Vec::new();
        match coding {
            "gzip" => {
                let mut e = flate2::write::GzEncoder::new(&mut out, Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap();
            }
            "deflate-zlib" => {
                let mut e = flate2::write::ZlibEncoder::new(&mut out, Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap();
            }
            "deflate-raw" => {
                let mut e = flate2::write::DeflateEncoder::new(&mut out, Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap();
            }
            "br" => return unhex(SSE_BR),
            _ => unreachable!(),
        }
        out
    }

    #[test]
    fn every_coding_decodes_the_same_bytes_whatever_the_chunking() {
        let plain = sse_body();
        for (coding, header) in [
            ("gzip", "gzip"),
            ("deflate-zlib", "deflate"),
            ("deflate-raw", "deflate"),
            ("br", "br"),
        ] {
            let body = encoded(coding, &plain);
            let mut h = HeaderMap::new();
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(header));
            for chunk in [1, 2, 3, 7, 64, body.len()] {
                let mut d = Decoder::for_response(&h);
                let mut out = Vec::new();
                for c in body.chunks(chunk) {
                    let part = d.decode(c, out.len() as u64);
                    out.extend(part);
                }
                out.extend(d.finish());
                assert!(!d.failed(), "{coding} in chunks of {chunk}");
                assert_eq!(out, plain, "{coding} in chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_truncated_or_corrupt_body_fails_and_a_bomb_is_bounded() {
        let plain = sse_body();
        let body = encoded("gzip", &plain);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut d = Decoder::for_response(&h);
        let _ = d.decode(&body[..body.len() / 2], 0);
        let _ = d.finish();
        assert!(d.failed(), "truncated");
        let mut d = Decoder::for_response(&h);
        let _ = d.decode(b"this is not gzip at all", 0);
        assert!(d.failed(), "corrupt");
        // Past the bound, decoding stops.
        let mut d = Decoder::for_response(&h);
        let _ = d.decode(&body, MAX_DECODED_BYTES);
        assert!(d.failed(), "bounded");
    }
}

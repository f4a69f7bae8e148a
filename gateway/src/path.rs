//! Request paths in one canonical form: the form routes are matched on, the agent endpoints
//! are recognized on, and the upstream receives.
//!
//! An upstream decodes a path before it acts on it, and some normalize it further (merge `//`,
//! remove `.` and `..`, drop `;` parameters, read `\` as `/`, decode twice). If the gateway
//! matched the raw bytes, `/files/%70aid`, `/v1%2fcompute` or `/free/..;/v1/compute` would be
//! priced as one route and served as another. So every request path is rewritten, once and
//! before anything else, into its canonical form, or refused with 400 `path_invalid`.
//!
//! # The rule
//! Read the path as a sequence of raw `/` separators and *characters*, a character being a
//! raw byte or a `%XX` escape (two hex digits, either case; anything else after `%` is
//! refused). Each character stands for one decoded byte. Refused, raw or encoded:
//! - `\`, `;`, NUL and every control byte (`0x00`-`0x1F`, `0x7F`);
//! - encoded only (they cannot appear raw in a path): `/` (`%2F`), `%` (`%25`), `?` (`%3F`),
//!   `#` (`%23`);
//! - an empty segment (`//`, also at the start), except the trailing one of a path that ends
//!   in `/` (`/` itself, `/files/`);
//! - a `.` or `..` segment, after decoding (`%2e`, `.%2E`);
//! - decoded bytes that are not valid UTF-8 (overlong forms such as `%C0%AE` for `.` or
//!   `%C0%AF` for `/`).
//!
//! Every other decoded byte has exactly one spelling in the canonical form:
//! - raw when it is unreserved (`A-Z a-z 0-9 - . _ ~`), a sub-delimiter other than `;`
//!   (`! $ & ' ( ) * + , =`), `:` or `@` -- so `%70` becomes `p` and `%3A` becomes `:`;
//! - `%XX` with upper-case hex otherwise (space, `" < > [ ] ^ ` { | }` and every byte from
//!   `0x80`) -- so a raw `{` or `é` becomes `%7B` / `%C3%A9` and `%c3%a9` becomes `%C3%A9`.
//!
//! The query string is left as it is.
//!
//! # Why every decoding of the forwarded path is the priced path
//! Let `D` be the canonical path `C` fully decoded. The rule guarantees:
//! 1. `C` is a function of `D` alone (one spelling per byte) and `D` of `C`: two requests reach
//!    the same canonical path exactly when they decode to the same bytes.
//! 2. Decoding never moves a segment boundary: no character decodes to `/`, so `C` and `D` have
//!    the same segments, each decoded on its own.
//! 3. Decoding twice is decoding once: `D` contains no `%`.
//! 4. The normalizations upstreams apply after decoding change nothing in `D`: no `.` or `..`
//!    segment, no empty segment but a trailing one, no `\`, no `;` parameter, no `?` or `#`
//!    to re-split on, no NUL to truncate at, no invalid UTF-8 to mis-decode. (Removing a
//!    trailing `/` does not change which route prefix matches, see [`under_prefix`].)
//!
//! Route prefixes must themselves be canonical (checked when the config is loaded), and the
//! encoding is byte by byte, so `C` is under a prefix `P` (on a segment boundary) exactly when
//! `D` is under `P` decoded. Hence whichever of `C`, `D`, or anything in between (an upstream
//! decoding only some escapes, or none) the upstream acts on, it names the route the gateway
//! matched and priced.
//!
//! Not covered (they depend on the upstream, not on the URL): case-insensitive file systems
//! (`/FILES/PAID`), Unicode normalization (full-width `．` `／`), Windows' trimming of trailing
//! dots and spaces in file names, `+` read as a space. Give such upstreams a route table that
//! does not rely on the distinction, or put nothing free in front of them.
//!
//! The common path (plain ASCII, nothing to change) is checked in one pass and not copied.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a path was refused (400 `path_invalid`); the message is the problem's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin path (`*`, an authority alone).
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("a % in the path must be followed by two hex digits")]
    BadEscape,
    /// `%2F`: an upstream that decodes it sees another path.
    #[error("an encoded / (%2F) is not allowed in paths")]
    EncodedSlash,
    /// `\` or `%5C`: some upstreams read it as `/`.
    #[error("backslashes (raw or %5C) are not allowed in paths")]
    Backslash,
    /// `;` or `%3B`: some upstreams drop `;` parameters from segments.
    #[error("; (raw or %3B) is not allowed in paths")]
    Semicolon,
    /// `%25`: a second decoding would make new escapes.
    #[error("an encoded % (%25) is not allowed in paths")]
    EncodedPercent,
    /// `%3F` or `%23`: an upstream that re-parses the decoded path would split there.
    #[error("an encoded ? or # (%3F, %23) is not allowed in paths")]
    EncodedDelimiter,
    /// NUL and other control bytes, raw or encoded.
    #[error("control characters (raw or encoded) are not allowed in paths")]
    Control,
    /// `//`: some upstreams merge them.
    #[error("empty segments (//) are not allowed in paths")]
    EmptySegment,
    /// `.` or `..`, raw or encoded: upstreams resolve them.
    #[error("dot segments (. or .., raw or encoded) are not allowed in paths")]
    DotSegment,
    /// The decoded bytes are not UTF-8 (e.g. an overlong `%C0%AE`).
    #[error("the decoded path is not valid UTF-8")]
    NotUtf8,
    /// The request target's authority names another host than `Host`.
    #[error("the request target's host differs from the Host header")]
    HostMismatch,
}

/// What one decoded byte becomes in the canonical form.
#[derive(Clone, Copy)]
enum Class {
    /// Written raw.
    Raw,
    /// Written `%XX`, upper-case hex.
    Encoded,
    /// Refused.
    Refused(PathError),
}

const CLASSES: [Class; 256] = classes();

const fn classes() -> [Class; 256] {
    let mut t = [Class::Encoded; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Raw,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
                Class::Raw
            }
            b'/' => Class::Refused(PathError::EncodedSlash),
            b'\\' => Class::Refused(PathError::Backslash),
            b';' => Class::Refused(PathError::Semicolon),
            b'%' => Class::Refused(PathError::EncodedPercent),
            b'?' | b'#' => Class::Refused(PathError::EncodedDelimiter),
            0x00..=0x1f | 0x7f => Class::Refused(PathError::Control),
            _ => Class::Encoded,
        };
        i += 1;
    }
    t
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// The canonical output, copied only from the first character that changes.
struct Out<'a> {
    src: &'a [u8],
    buf: Option<Vec<u8>>,
}

impl Out<'_> {
    /// `src[from..to]` stays as it is.
    fn keep(&mut self, from: usize, to: usize) {
        if let Some(buf) = &mut self.buf {
            buf.extend_from_slice(&self.src[from..to]);
        }
    }

    /// The character at `at` is written differently: the buffer, started if need be.
    fn change(&mut self, at: usize) -> &mut Vec<u8> {
        let src = self.src;
        self.buf.get_or_insert_with(|| {
            let mut buf = Vec::with_capacity(src.len() + 16);
            buf.extend_from_slice(&src[..at]);
            buf
        })
    }
}

/// The segment being read: how many characters, how many of them `.`.
#[derive(Default)]
struct Segment {
    len: usize,
    dots: usize,
}

impl Segment {
    fn push(&mut self, decoded: u8) {
        self.len += 1;
        if decoded == b'.' {
            self.dots += 1;
        }
    }

    /// At the end of the segment; `last` is the one after the final `/`.
    fn check(&self, last: bool) -> Result<(), PathError> {
        if self.len == 0 && !last {
            return Err(PathError::EmptySegment);
        }
        if self.len > 0 && self.len <= 2 && self.dots == self.len {
            return Err(PathError::DotSegment);
        }
        Ok(())
    }
}

/// The canonical form of `path` (see the module docs), borrowed when it already is canonical.
pub fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let src = path.as_bytes();
    if src.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = Out { src, buf: None };
    out.keep(0, 1);
    let mut segment = Segment::default();
    // Whether an escape decoded to a byte from 0x80 (then the decoded path is checked for UTF-8).
    let mut high_escape = false;
    let mut i = 1;
    while i < src.len() {
        let b = src[i];
        if b == b'/' {
            segment.check(false)?;
            segment = Segment::default();
            out.keep(i, i + 1);
            i += 1;
            continue;
        }
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                src.get(i + 1).copied().and_then(hex_value),
                src.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(PathError::BadEscape);
            };
            let decoded = hi << 4 | lo;
            match CLASSES[usize::from(decoded)] {
                Class::Refused(e) => return Err(e),
                Class::Raw => out.change(i).push(decoded),
                Class::Encoded => {
                    high_escape |= decoded >= 0x80;
                    if src[i + 1].is_ascii_lowercase() || src[i + 2].is_ascii_lowercase() {
                        out.change(i).extend_from_slice(&escape(decoded));
                    } else {
                        out.keep(i, i + 3);
                    }
                }
            }
            segment.push(decoded);
            i += 3;
            continue;
        }
        match CLASSES[usize::from(b)] {
            // Raw `\`, `;` or a control byte (in a request path a raw `?` or `#` ends the
            // path, so only a configured prefix can hold one).
            Class::Refused(e) => return Err(e),
            Class::Raw => out.keep(i, i + 1),
            Class::Encoded => out.change(i).extend_from_slice(&escape(b)),
        }
        segment.push(b);
        i += 1;
    }
    segment.check(true)?;
    let canonical = match out.buf {
        None => Cow::Borrowed(path),
        // Only ASCII is ever written to the buffer.
        Some(buf) => Cow::Owned(String::from_utf8(buf).map_err(|_| PathError::NotUtf8)?),
    };
    if high_escape && std::str::from_utf8(&decode(canonical.as_bytes())).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(canonical)
}

fn escape(b: u8) -> [u8; 3] {
    [
        b'%',
        HEX_UPPER[usize::from(b >> 4)],
        HEX_UPPER[usize::from(b & 0xf)],
    ]
}

/// Percent-decode every valid escape (an invalid one is kept as it is).
fn decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                s.get(i + 1).copied().and_then(hex_value),
                s.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Rewrite the request target to its canonical path (query, scheme and authority unchanged),
/// or refuse it. Also refuses an absolute-form target (`GET http://a/x`) whose host is not
/// the `Host` header's: the gateway, the payment layer and the upstream would disagree on it.
pub fn canonicalize_uri(uri: &Uri, host_header: Option<&[u8]>) -> Result<Option<Uri>, PathError> {
    if let (Some(authority), Some(host)) = (uri.authority(), host_header) {
        if !host_name(host).eq_ignore_ascii_case(authority.host().as_bytes()) {
            return Err(PathError::HostMismatch);
        }
    }
    let Cow::Owned(path) = canonicalize(uri.path())? else {
        return Ok(None);
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(path_and_query).map_err(|_| PathError::BadEscape)?);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::BadEscape)
}

/// The host name of a `Host` value: without a numeric `:port` (an IPv6 literal keeps its
/// brackets).
pub fn host_name(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|&b| b == b':') {
        Some(colon)
            if colon + 1 < host.len() && host[colon + 1..].iter().all(u8::is_ascii_digit) =>
        {
            &host[..colon]
        }
        _ => host,
    }
}

/// Why `prefix` cannot be a configured path prefix: requests are matched in canonical form,
/// so a prefix in any other form would never match, or match less than it says.
pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    match canonicalize(prefix) {
        Ok(Cow::Borrowed(_)) => Ok(()),
        Ok(Cow::Owned(canonical)) => Err(PrefixError::NotCanonical(canonical)),
        Err(e) => Err(PrefixError::NotAPath(e.to_string())),
    }
}

/// Why a configured path prefix is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Another spelling of a canonical prefix (which is what requests are matched in).
    #[error("not in canonical form (see docs/payment-rules.md#paths): write it as {0}")]
    NotCanonical(String),
    /// Not an absolute path.
    #[error("must be an absolute path prefix like /v1/compute: {0}")]
    NotAPath(String),
}

/// Whether `path` is `prefix` or below it, on a segment boundary (a trailing `/` on the prefix
/// is ignored; an empty prefix or `/` matches everything). On canonical paths, `p` and `p/`
/// are under the same prefixes.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonicalize(p).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/v1/compute",
            "/files/",
            "/a/.b/b..c/.../x.json",
            "/a:b@c!$&'()*+,=~_-",
            "/my%20docs/%C3%A9t%C3%A9",
            "/%7B%7D",
        ] {
            assert!(matches!(canonicalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn unreserved_and_safe_escapes_are_decoded_and_hex_is_upper_cased() {
        for (raw, want) in [
            ("/files/%70aid/report.txt", "/files/paid/report.txt"),
            ("/v1/%63ompute", "/v1/compute"),
            ("/%7Euser/%2Dx%5F%2e%2E%2eyz", "/~user/-x_...yz"),
            ("/v1/models%3Agenerate", "/v1/models:generate"),
            ("/a%2cb%40c", "/a,b@c"),
            ("/my%20docs", "/my%20docs"),
            ("/%c3%a9", "/%C3%A9"),
            ("/\u{e9}t\u{e9}", "/%C3%A9t%C3%A9"),
            ("/{\"a\"}|^[x]", "/%7B%22a%22%7D%7C%5E%5Bx%5D"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn every_shape_of_the_audit_finding_is_refused() {
        use PathError::*;
        for (p, e) in [
            ("/files/public/..%2fpaid/report.txt", EncodedSlash),
            ("/files/paid%2freport.txt", EncodedSlash),
            ("/v1%2Fcompute", EncodedSlash),
            ("//v1/compute", EmptySegment),
            ("/v1//compute", EmptySegment),
            ("/v1/compute;x", Semicolon),
            ("/free/..;/v1/compute", Semicolon),
            ("/v1/compute%3bx", Semicolon),
            ("/v1/cheap/..%2fcompute", EncodedSlash),
            ("/v1/cheap/../compute", DotSegment),
            ("/v1/cheap/%2e%2e/compute", DotSegment),
            ("/v1/cheap/.%2E/compute", DotSegment),
            ("/v1/./compute", DotSegment),
            ("/v1/compute/..", DotSegment),
            ("/v1/compute/.", DotSegment),
            ("/files/%2570aid/report.txt", EncodedPercent),
            ("/a\\b", Backslash),
            ("/a/%5c/b", Backslash),
            ("/a%00b", Control),
            ("/a%0ab", Control),
            ("/a%7fb", Control),
            ("/v1/compute%3Fx", EncodedDelimiter),
            ("/v1/compute%23x", EncodedDelimiter),
            ("/a%zz", BadEscape),
            ("/a%2", BadEscape),
            ("/a%", BadEscape),
            ("/%C0%AE%C0%AE/x", NotUtf8),
            ("/%C0%AF", NotUtf8),
            ("/%E0%80%AF", NotUtf8),
            ("/%C3", NotUtf8),
            ("/%C3\u{e9}", NotUtf8),
            ("*", NotAbsolute),
            ("", NotAbsolute),
        ] {
            assert_eq!(canon(p), Err(e), "{p}");
        }
    }

    #[test]
    fn absolute_form_keeps_its_authority_and_must_agree_with_host() {
        let uri: Uri = "http://api.example/v1/%63ompute?x=%2F".parse().unwrap();
        let out = canonicalize_uri(&uri, Some(b"API.example:8080"))
            .unwrap()
            .unwrap();
        assert_eq!(out.to_string(), "http://api.example/v1/compute?x=%2F");
        assert_eq!(
            canonicalize_uri(&uri, Some(b"free.example")),
            Err(PathError::HostMismatch)
        );
        // HTTP/1.0 without Host: the target's authority stands.
        assert!(canonicalize_uri(&uri, None).unwrap().is_some());
        let plain: Uri = "/v1/compute?a=b".parse().unwrap();
        assert_eq!(canonicalize_uri(&plain, Some(b"x")), Ok(None));
        let root: Uri = "http://api.example".parse().unwrap();
        assert_eq!(root.path(), "/");
        assert_eq!(canonicalize_uri(&root, None), Ok(None));
    }

    #[test]
    fn host_names_lose_only_a_numeric_port() {
        assert_eq!(host_name(b"a.example:80"), b"a.example");
        assert_eq!(host_name(b"a.example"), b"a.example");
        assert_eq!(host_name(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_name(b"[::1]"), b"[::1]");
        assert_eq!(host_name(b"a:"), b"a:");
    }

    #[test]
    fn configured_prefixes_must_be_canonical() {
        assert_eq!(check_prefix("/v1/models:generate"), Ok(()));
        assert_eq!(check_prefix("/files/"), Ok(()));
        let e = check_prefix("/v1/%63ompute").unwrap_err().to_string();
        assert!(e.ends_with("write it as /v1/compute"), "{e}");
        let e = check_prefix("/a b").unwrap_err().to_string();
        assert!(e.ends_with("write it as /a%20b"), "{e}");
        for bad in ["v1", "/v1/../x", "/v1?x", "/v1;x", "//v1"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under_prefix("/v1/compute", "/v1/compute"));
        assert!(under_prefix("/v1/compute/", "/v1/compute"));
        assert!(under_prefix("/v1/compute/x", "/v1/compute/"));
        assert!(!under_prefix("/v1/computex", "/v1/compute"));
        assert!(under_prefix("/anything", "/"));
    }
}

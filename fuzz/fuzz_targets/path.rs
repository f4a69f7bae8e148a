//! Path canonicalization (issue 14: encoded paths): any request path either is refused or
//! canonicalizes to a fixed point that decodes to itself once and twice alike -- no decoding
//! of it makes a new `/`, `%`, dot segment or empty segment appear.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate::path::canonicalize;

/// Percent-decode once (invalid escapes left as they are).
fn decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let Ok(canonical) = canonicalize(path) else { return };
    let c = canonical.as_ref();
    // A fixed point.
    assert_eq!(canonicalize(c).ok().as_deref(), Some(c), "{path:?} -> {c:?}");
    let once = decode(c.as_bytes());
    // Decoding twice is decoding once: nothing decodes to '%'.
    assert_eq!(decode(&once), once, "{c:?}");
    assert!(!once.contains(&b'\\') && !once.contains(&b';') && !once.contains(&0), "{c:?}");
    // Decoding adds no separator: the segments are the same ones.
    assert_eq!(
        once.iter().filter(|b| **b == b'/').count(),
        c.bytes().filter(|b| *b == b'/').count(),
        "{c:?}"
    );
    for seg in once.split(|b| *b == b'/').skip(1) {
        assert!(seg != b"." && seg != b"..", "{c:?}");
    }
});

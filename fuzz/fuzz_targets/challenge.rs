//! Challenge ids: any string is decoded or refused cleanly, never accepted without the MAC.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate_middleware::challenge::{ChallengeKey, ChallengeTerms};

fuzz_target!(|data: &[u8]| {
    let Ok(id) = std::str::from_utf8(data) else { return };
    let key = ChallengeKey::try_new(&[7u8; 32]).expect("key");
    let terms = ChallengeTerms { merchant: "m", route: "r", method: "GET", amount_minor: 1, currency: "USD" };
    assert!(key.verify(id, &terms, 0).is_err(), "a forged challenge was accepted");
});

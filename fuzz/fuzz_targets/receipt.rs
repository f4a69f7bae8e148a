//! Receipt verification: any token string is refused cleanly (never a panic, and never
//! accepted: the fuzzer cannot sign with the issuer's key).
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tollgate_middleware::jwk::Jwk;
use tollgate_middleware::{Issuer, IssuerKey, ReceiptPolicy, ReceiptVerifier, StaticKeys, SystemClock};

const JWK: &str = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}"#;

fn verifier() -> &'static (tokio::runtime::Runtime, ReceiptVerifier) {
    static V: OnceLock<(tokio::runtime::Runtime, ReceiptVerifier)> = OnceLock::new();
    V.get_or_init(|| {
        let jwk: Jwk = serde_json::from_str(JWK).expect("jwk");
        let key = IssuerKey::from_jwk(&jwk).expect("key");
        let issuer = Issuer { id: "wallet".into(), keys: Arc::new(StaticKeys(vec![key])) };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        (rt, ReceiptVerifier::new("m", vec![issuer], ReceiptPolicy::default(), Arc::new(SystemClock)))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let (rt, v) = verifier();
    assert!(rt.block_on(v.verify(token)).is_err(), "an unsigned token was accepted");
});

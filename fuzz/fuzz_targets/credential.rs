//! Payment headers: any bytes, in any of the three headers, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').take(4).enumerate() {
        let name = ["payment-signature", "x-payment", "authorization", "authorization"][i];
        if let Ok(v) = http::HeaderValue::from_bytes(part) {
            headers.append(name, v);
        }
    }
    let _ = tollgate_middleware::credential::extract(&headers);
    tollgate_middleware::credential::strip(&mut headers);
});

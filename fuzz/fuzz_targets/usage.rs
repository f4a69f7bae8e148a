//! Usage parsing: SSE events, JSON bodies and headers in any chunking, plain or under any
//! content coding (the second byte picks gzip, deflate, br or none: random bytes through each
//! decoder), never panic, and cost computation never overflows into a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tollgate_middleware::meter::{Meter, Metered, OnMissing, UsageReading};
use tollgate_middleware::money::Currency;

fuzz_target!(|data: &[u8]| {
    let metered = Metered {
        currency: Currency::try_new("USD", 6).expect("currency"),
        meters: vec![
            Meter { unit: "a".into(), source: "sse:/usage/completion_tokens".parse().expect("sse"), price: "0.000001".parse().expect("p") },
            Meter { unit: "b".into(), source: "json:/usage/prompt_tokens".parse().expect("json"), price: "0.5".parse().expect("p") },
            Meter { unit: "c".into(), source: "header:x-units".parse().expect("header"), price: "3".parse().expect("p") },
        ],
        reserve: "1".parse().expect("reserve"),
        on_missing: OnMissing::Reserve,
        cutoff: true,
        on_exhausted: Default::default(),
    };
    let mut headers = http::HeaderMap::new();
    if let Some((head, _)) = data.split_first() {
        if let Ok(v) = http::HeaderValue::from_bytes(&data[..(*head as usize).min(data.len())]) {
            headers.insert("x-units", v);
        }
    }
    const CODINGS: [&str; 5] = ["identity", "gzip", "deflate", "br", "zstd"];
    if let Some(pick) = data.get(1) {
        let coding = CODINGS[usize::from(*pick) % CODINGS.len()];
        headers.insert("content-encoding", http::HeaderValue::from_static(coding));
    }
    let mut reading = UsageReading::start(&metered, &headers);
    for chunk in data.chunks(7) {
        reading.feed(&metered, &bytes::Bytes::copy_from_slice(chunk));
        let _ = metered.cost_minor(&reading.so_far(&metered, 5));
    }
    let units = reading.finish(&metered);
    let flat = units.into_iter().map(|(k, v)| (k, v.unwrap_or(0))).collect();
    let _ = metered.cost_minor(&flat);
});

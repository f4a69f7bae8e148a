//! Compressed responses never lose a metered charge: a stock Python upstream (http.server with
//! the standard library's gzip/zlib) compresses JSON and SSE answers the way real servers do,
//! behind a gateway whose metered routes say `on_missing = "zero"` (the worst case: a lost
//! reading would be a free call).
//!
//! The family: every coding the client may ask for (gzip, deflate, br, zstd, none), both usage
//! sources (a JSON body, an SSE tail), an upstream that ignores `Accept-Encoding` (raw deflate,
//! a coding the client never accepted). Each call is either charged exactly 400 tokens with the
//! compressed bytes delivered unchanged, or refused with nothing charged -- never free.
//!
//! And the audit's long stream at full length: 60 s of compressed SSE through a hold of 31 s,
//! with the balance read every second, on the memory store and on Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;

use serde_json::Value;
use tollgate_e2e::*;

/// The upstream script (killed on drop) and its address.
struct PythonUpstream {
    _server: python::PythonServer,
    up: TestUpstream,
}

fn compressing_upstream() -> PythonUpstream {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/upstreams/compressing.py");
    let server = python::PythonServer::start([script]);
    PythonUpstream {
        up: TestUpstream {
            addr: server.addr(),
        },
        _server: server,
    }
}

/// 0.0001 USD per token: 400 tokens cost 0.04 USD (40,000 atomic units).
const CHARGE_MINOR: u64 = 40_000;

async fn fixture() -> (PythonUpstream, TestIssuer, TestGateway) {
    let up = compressing_upstream();
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .route(
            metered(
                "json",
                "/json",
                &up.up,
                "0.01",
                &[("token", "json:/usage/total_tokens", "0.0001")],
            )
            .with_price_option("on_missing = \"zero\""),
        )
        .route(
            metered(
                "sse",
                "/sse",
                &up.up,
                "0.01",
                &[("token", "sse:/usage/total_tokens", "0.0001")],
            )
            .with_price_option("on_missing = \"zero\""),
        )
        .start()
        .await;
    (up, wallet, gw)
}

/// Decode a body as the client would (the bytes came through unchanged).
fn decode(coding: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        None => out.extend_from_slice(body),
        Some("gzip") => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        Some("deflate") => {
            if flate2::read::ZlibDecoder::new(body)
                .read_to_end(&mut out)
                .is_err()
            {
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
            }
        }
        Some(other) => panic!("unexpected coding {other}"),
    }
    out
}

/// The usage events charged so far.
async fn charges(gw: &TestGateway) -> Vec<u64> {
    gw.paywall
        .store()
        .usage_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.amount_minor)
        .collect()
}

#[tokio::test]
async fn every_coding_and_usage_source_is_charged_exactly() {
    let (_up, wallet, gw) = fixture().await;
    let token = gw.topup(&wallet, "agent", "10").await;
    let mut expected = Vec::new();
    for path in [
        "/json",
        "/sse",
        "/json?force=deflate-raw",
        "/sse?force=deflate-raw",
    ] {
        for accept in [
            Some("gzip, deflate, br, zstd"),
            Some("deflate"),
            Some("br;q=1.0, gzip;q=0.5"),
            Some("zstd"),
            None,
        ] {
            let mut req = gw.with_token(reqwest::Method::GET, path, &token);
            if let Some(a) = accept {
                req = req.header("accept-encoding", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200, "{path} {accept:?}");
            let seen = res.headers()["x-seen-accept-encoding"]
                .to_str()
                .unwrap()
                .to_owned();
            let coding = res
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = res.bytes().await.unwrap();
            // The upstream only heard codings a meter reads.
            let narrowed = match accept {
                Some("gzip, deflate, br, zstd") => "gzip, deflate, br",
                Some("deflate") => "deflate",
                Some("br;q=1.0, gzip;q=0.5") => "br;q=1.0, gzip;q=0.5",
                Some(_) => "identity",
                None => "",
            };
            assert_eq!(seen, narrowed, "{path} {accept:?}");
            // The bytes delivered are the upstream's, still compressed, and decode to the answer.
            let plain = String::from_utf8(decode(coding.as_deref(), &body)).unwrap();
            assert!(
                plain.contains("\"total_tokens\": 400"),
                "{path} {accept:?}: {plain}"
            );
            expected.push(CHARGE_MINOR);
            let _ = gw.settled(&token).await;
            assert_eq!(
                charges(&gw).await,
                expected,
                "{path} {accept:?} coding {coding:?}"
            );
        }
    }
    let balance: Value = gw.settled(&token).await;
    let spent = CHARGE_MINOR * u64::try_from(expected.len()).unwrap();
    let available: rust_decimal::Decimal = balance["balances"]["USD"]["available"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = 10_000_000 - spent;
    assert_eq!(
        available,
        rust_decimal::Decimal::new(i64::try_from(left).unwrap(), 6)
    );
}

#[tokio::test]
async fn a_coding_the_meter_cannot_read_is_refused_and_not_charged() {
    let (_up, wallet, gw) = fixture().await;
    let token = gw.topup(&wallet, "agent", "10").await;
    for path in ["/json?force=zstd", "/sse?force=zstd"] {
        let res = gw.token_get(path, &token).await;
        let (status, code) = code_of(res).await;
        assert_eq!(
            (status, code.as_str()),
            (502, "upstream_unavailable"),
            "{path}"
        );
    }
    let _ = gw.settled(&token).await;
    assert!(charges(&gw).await.is_empty());
}

/// The audit's case, at full length, through the gateway: a 60 s SSE stream from the stock
/// upstream on a route whose hold lasts 31 s (`timeout_ms = 1000` + 30 s), with the payer's
/// balance read every second throughout (each read gives expired holds back). Charged in full.
async fn sixty_second_stream(redis: Option<&RedisServer>) {
    let up = compressing_upstream();
    let wallet = TestIssuer::ed25519("wallet");
    let mut gw = gateway().issuer(&wallet);
    if let Some(r) = redis {
        gw = gw.redis(r);
    }
    let gw = gw
        .route(
            metered(
                "sse",
                "/sse",
                &up.up,
                "0.01",
                &[("token", "sse:/usage/total_tokens", "0.0001")],
            )
            .with_price_option("on_missing = \"zero\"")
            .with("timeout_ms = 1000"),
        )
        .start()
        .await;
    let token = gw.topup(&wallet, "agent", "10").await;
    let res = gw
        .with_token(reqwest::Method::GET, "/sse?events=120&every_ms=500", &token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let reads = async {
        let mut held = Vec::new();
        for _ in 0..58 {
            let b = gw.balance(&token).await;
            held.push(b["balances"]["USD"]["held"].as_str().unwrap().to_owned());
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        held
    };
    let (body, held) = tokio::join!(res.bytes(), reads);
    let plain = String::from_utf8(decode(Some("gzip"), &body.unwrap())).unwrap();
    assert_eq!(
        plain.matches("data: ").count(),
        122,
        "120 deltas, the usage, [DONE]"
    );
    assert!(
        held.iter().all(|h| h == "0.01"),
        "the hold was given back mid-stream: {held:?}"
    );
    let _ = gw.settled(&token).await;
    assert_eq!(charges(&gw).await, vec![CHARGE_MINOR]);
}

#[tokio::test]
async fn a_sixty_second_stream_with_account_reads_is_charged_in_full_memory() {
    sixty_second_stream(None).await;
}

#[tokio::test]
async fn a_sixty_second_stream_with_account_reads_is_charged_in_full_redis() {
    let redis = RedisServer::start();
    sixty_second_stream(Some(&redis)).await;
}

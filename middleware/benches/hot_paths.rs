//! Criterion micro-benchmarks of the per-request hot paths (issue 9):
//! receipt verification (Ed25519 and ES256, through `ReceiptVerifier::verify` and the bare
//! signature check), challenge creation, credential parsing and access-token verification.
//!
//!     cargo bench -p tollgate-middleware --bench hot_paths -- --warm-up-time 1 --measurement-time 3
//!
//! `bench/run.sh` runs this and turns the Ed25519 verification time into the "verification
//! ceiling" of the paid scenario (verifications/s of one core x gateway worker threads).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use tollgate_middleware::challenge::{ChallengeKey, ChallengeTerms};
use tollgate_middleware::credential;
use tollgate_middleware::issuer::{ReceiptClaims, ReceiptSigner};
use tollgate_middleware::receipt::{
    Issuer, IssuerKey, ReceiptKind, ReceiptPolicy, ReceiptVerifier, StaticKeys,
};
use tollgate_middleware::token::TokenKey;
use tollgate_middleware::SystemClock;

const MERCHANT: &str = "bench-merchant";
const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn es256_signer(id: &str) -> ReceiptSigner {
    use p256::pkcs8::EncodePrivateKey;
    let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut jwk: serde_json::Value =
        serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
    jwk["kid"] = serde_json::json!("p1");
    let jwk: Jwk = serde_json::from_value(jwk).unwrap();
    ReceiptSigner::new(id, Some("p1".into()), Algorithm::ES256, key, jwk)
}

fn claims(issuer: &str, jti: &str) -> ReceiptClaims {
    let now = now();
    ReceiptClaims {
        iss: issuer.into(),
        sub: "bench-payer-1".into(),
        aud: MERCHANT.into(),
        jti: jti.into(),
        iat: now - 5,
        exp: now + 3000,
        amount: "0.01".into(),
        currency: "USD".into(),
        kind: ReceiptKind::Payment,
        challenge: None,
    }
}

fn verifier(signer: &ReceiptSigner) -> ReceiptVerifier {
    let key = IssuerKey::from_jwk(signer.public_jwk()).unwrap();
    ReceiptVerifier::new(
        MERCHANT,
        vec![Issuer {
            id: signer.issuer().to_owned(),
            keys: Arc::new(StaticKeys(vec![key])),
        }],
        ReceiptPolicy::default(),
        Arc::new(SystemClock),
    )
}

fn receipt_verification(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("receipt_verify");
    g.throughput(Throughput::Elements(1));
    for (name, signer) in [
        (
            "ed25519",
            ReceiptSigner::generate_ed25519("bench-issuer", "k1").unwrap(),
        ),
        ("es256", es256_signer("bench-issuer-p256")),
    ] {
        let v = verifier(&signer);
        let token = signer.sign(&claims(signer.issuer(), "jti-1")).unwrap();
        // sanity: it verifies
        rt.block_on(v.verify(&token)).unwrap();
        // The whole receipt check the gateway does per paid request (header, issuer lookup,
        // signature, claims). Same receipt every iteration: verification is stateless, single use
        // is the store's job.
        g.bench_function(format!("{name}/ReceiptVerifier::verify"), |b| {
            b.iter(|| rt.block_on(v.verify(black_box(&token))).unwrap())
        });
    }
    // The bare signature check, for reference (what the JWT layer adds on top of it).
    let sk = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let vk = sk.verifying_key();
    let msg = [7u8; 200];
    let sig = ed25519_dalek::Signer::sign(&sk, &msg);
    g.bench_function("ed25519/bare_dalek_verify_200B", |b| {
        b.iter(|| vk.verify_strict(black_box(&msg), black_box(&sig)).unwrap())
    });
    g.finish();
}

fn challenge_creation(c: &mut Criterion) {
    let key = ChallengeKey::try_new(SECRET).unwrap();
    let terms = ChallengeTerms {
        merchant: MERCHANT,
        route: "paid",
        method: "GET",
        amount_minor: 10_000,
        currency: "USD",
    };
    let exp = now() + 300;
    let mut g = c.benchmark_group("challenge");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ChallengeKey::issue", |b| {
        b.iter(|| key.issue(black_box(&terms), black_box(exp)))
    });
    let id = key.issue(&terms, exp);
    let t = now();
    g.bench_function("ChallengeKey::verify", |b| {
        b.iter(|| key.verify(black_box(&id), black_box(&terms), t).unwrap())
    });
    g.finish();
}

fn credential_parsing(c: &mut Criterion) {
    let signer = ReceiptSigner::generate_ed25519("bench-issuer", "k1").unwrap();
    let token = signer.sign(&claims(signer.issuer(), "jti-2")).unwrap();
    let payload = serde_json::json!({
        "x402Version": 2,
        "accepted": {
            "scheme": "tollgate-receipt",
            "network": "tollgate:receipts",
            "amount": "10000",
            "asset": "USD",
            "payTo": MERCHANT,
            "maxTimeoutSeconds": 300,
            "extra": {"price": "0.01", "currency": "USD", "decimals": 6, "kind": "payment", "route": "paid", "method": "GET"}
        },
        "payload": {"receipt": token}
    });
    let mut v2 = HeaderMap::new();
    v2.insert(
        credential::PAYMENT_SIGNATURE,
        HeaderValue::from_str(&STANDARD.encode(payload.to_string())).unwrap(),
    );
    let mut auth = HeaderMap::new();
    auth.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Payment {token}")).unwrap(),
    );
    let tk = TokenKey::derive(SECRET).unwrap();
    let mut bearer = HeaderMap::new();
    bearer.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!(
            "Bearer {}",
            tk.issue("bench-payer", now(), 86_400)
        ))
        .unwrap(),
    );
    let mut g = c.benchmark_group("credential_extract");
    g.throughput(Throughput::Elements(1));
    for (name, h) in [
        ("PAYMENT-SIGNATURE", &v2),
        ("Authorization_Payment", &auth),
        ("Authorization_Bearer", &bearer),
    ] {
        assert!(credential::extract(h).unwrap().is_some());
        g.bench_function(name, |b| {
            b.iter(|| credential::extract(black_box(h)).unwrap())
        });
    }
    g.finish();
}

fn token_verification(c: &mut Criterion) {
    let tk = TokenKey::derive(SECRET).unwrap();
    let t = now();
    let token = tk.issue("bench-payer", t, 86_400);
    let mut g = c.benchmark_group("access_token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("TokenKey::verify", |b| {
        b.iter(|| tk.verify(black_box(&token), t).unwrap())
    });
    g.bench_function("TokenKey::issue", |b| {
        b.iter(|| tk.issue(black_box("bench-payer"), t, 86_400))
    });
    g.finish();
}

/// x402 `exact`: the local verification of an EIP-3009 authorization (EIP-712 digest +
/// secp256k1 recovery), and parsing its `PAYMENT-SIGNATURE` header.
fn x402_verification(c: &mut Criterion) {
    use tollgate_middleware::money::Currency;
    use tollgate_middleware::x402::{self, signer::LocalSigner, ExactOffer};
    let offer = ExactOffer::try_new(
        "eip155:8453",
        "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "USD Coin",
        "2",
        "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "10000",
        60,
        Currency::try_new("USDC", 6).unwrap(),
    )
    .unwrap();
    let t = u64::try_from(now()).unwrap();
    let payload = LocalSigner::random().pay(&offer.requirements(), t).unwrap();
    let offers = [offer];
    let mut h = HeaderMap::new();
    h.insert(
        credential::PAYMENT_SIGNATURE,
        HeaderValue::from_str(&STANDARD.encode(payload.to_string())).unwrap(),
    );
    let mut g = c.benchmark_group("x402_exact");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify", |b| {
        b.iter(|| x402::verify(black_box(&payload), &offers, t, 6).unwrap())
    });
    g.bench_function("credential_extract", |b| {
        b.iter(|| credential::extract(black_box(&h)).unwrap())
    });
    g.finish();
}

/// DPoP (RFC 9449): what a bound token adds to each request besides the store's `jti` claim --
/// the proof's parse and signature check, per algorithm.
fn dpop_verification(c: &mut Criterion) {
    use tollgate_middleware::dpop::{self, DpopKey, DpopPolicy, Expected};
    let t = now();
    let token = "tg1.payload.mac";
    let url = "https://api.example.com/free/hello";
    let mut g = c.benchmark_group("dpop");
    g.throughput(Throughput::Elements(1));
    for key in [DpopKey::ed25519(), DpopKey::es256()] {
        let proof = key.proof("GET", url, Some(token), t);
        let expected = Expected {
            method: "GET",
            url,
            any_scheme: false,
            access_token: Some(token),
            now_secs: t,
        };
        let policy = DpopPolicy::default();
        g.bench_function(format!("{}/verify", key.alg()), |b| {
            b.iter(|| dpop::verify(black_box(&proof), &expected, &policy).unwrap())
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    dpop_verification,
    receipt_verification,
    challenge_creation,
    credential_parsing,
    token_verification,
    x402_verification
);
criterion_main!(benches);

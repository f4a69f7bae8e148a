//! Every receipt refusal, one test each, over HTTP against a gateway on a private Redis.
//! None of these may ever be served; each answers its stable code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate_e2e::*;

const PRICE: &str = "0.01";

struct Fixture {
    _redis: RedisServer,
    wallet: TestIssuer,
    gw: TestGateway,
}

async fn fixture() -> Fixture {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(paid("echo", "/v1/echo", &up, PRICE))
        .start()
        .await;
    Fixture {
        _redis: redis,
        wallet,
        gw,
    }
}

impl Fixture {
    async fn refused(&self, receipt: &str) -> (u16, String) {
        let res = self.gw.pay_get("/v1/echo", receipt).await;
        if res.status() == 402 {
            // Every payment refusal carries fresh requirements to pay again.
            let req = b64_json(res.headers()["payment-required"].to_str().unwrap());
            assert_eq!(req["accepts"][0]["scheme"], "tollgate-receipt");
        }
        code_of(res).await
    }

    fn claims(&self) -> Value {
        self.wallet.claims("m", "agent", PRICE)
    }

    fn with(&self, key: &str, value: Value) -> String {
        let mut c = self.claims();
        c[key] = value;
        self.wallet.sign(&c)
    }

    async fn nothing_was_charged(&self) {
        assert!(self
            .gw
            .paywall
            .store()
            .usage_events()
            .await
            .unwrap()
            .is_empty());
    }
}

fn code(s: &str) -> (u16, String) {
    (402, s.into())
}

#[tokio::test]
async fn forged_signature() {
    let f = fixture().await;
    // Same issuer name and kid, another key.
    let forger = TestIssuer::ed25519("wallet");
    assert_eq!(
        f.refused(&forger.receipt("m", "agent", PRICE)).await,
        code("receipt_invalid_signature")
    );
    // A valid receipt whose payload was edited (amount raised, signature kept).
    let good = f.wallet.receipt("m", "agent", "0.01");
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["amount"] = "100".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        f.refused(&tampered).await,
        code("receipt_invalid_signature")
    );
    f.nothing_was_charged().await;
}

#[tokio::test]
async fn es256_receipt_signed_by_the_wrong_curve_key_is_refused() {
    let f = fixture().await;
    let p256 = TestIssuer::es256("wallet");
    // alg ES256 with kid p1: the wallet only has an EdDSA key k1.
    assert_eq!(
        f.refused(&p256.receipt("m", "agent", PRICE)).await,
        code("receipt_unknown_key")
    );
}

#[tokio::test]
async fn expired() {
    let f = fixture().await;
    let now = now_secs();
    let mut c = f.claims();
    c["iat"] = (now - 400).into();
    c["exp"] = (now - 100).into();
    assert_eq!(f.refused(&f.wallet.sign(&c)).await, code("receipt_expired"));
    // Within the 30 s clock skew it is still accepted.
    c["jti"] = "skew".into();
    c["exp"] = (now - 10).into();
    assert_eq!(
        f.gw.pay_get("/v1/echo", &f.wallet.sign(&c)).await.status(),
        200
    );
}

#[tokio::test]
async fn not_yet_valid() {
    let f = fixture().await;
    let now = now_secs();
    assert_eq!(
        f.refused(&f.with("iat", (now + 300).into())).await,
        code("receipt_not_yet_valid")
    );
    assert_eq!(
        f.refused(&f.with("nbf", (now + 300).into())).await,
        code("receipt_not_yet_valid")
    );
}

#[tokio::test]
async fn lifetime_too_long() {
    let f = fixture().await;
    assert_eq!(
        f.refused(&f.with("exp", (now_secs() + 86_400).into()))
            .await,
        code("receipt_lifetime_too_long")
    );
}

#[tokio::test]
async fn wrong_audience() {
    let f = fixture().await;
    assert_eq!(
        f.refused(&f.with("aud", "another-merchant".into())).await,
        code("receipt_wrong_audience")
    );
    assert_eq!(
        f.refused(&f.with("aud", json!(["x", "y"]))).await,
        code("receipt_wrong_audience")
    );
    // An audience array that names us is fine.
    assert_eq!(
        f.gw.pay_get("/v1/echo", &f.with("aud", json!(["x", "m"])))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn untrusted_issuer() {
    let f = fixture().await;
    let evil = TestIssuer::ed25519("evil");
    assert_eq!(
        f.refused(&evil.receipt("m", "agent", PRICE)).await,
        code("receipt_untrusted_issuer")
    );
}

#[tokio::test]
async fn unknown_key_id() {
    let f = fixture().await;
    let other_kid = TestIssuer::ed25519_kid("wallet", "not-a-key");
    assert_eq!(
        f.refused(&other_kid.receipt("m", "agent", PRICE)).await,
        code("receipt_unknown_key")
    );
    let weird = TestIssuer::ed25519_kid("wallet", "../../etc/passwd' OR 1=1 --");
    assert_eq!(
        f.refused(&weird.receipt("m", "agent", PRICE)).await,
        code("receipt_unknown_key")
    );
}

#[tokio::test]
async fn disallowed_algorithms() {
    let f = fixture().await;
    let payload = URL_SAFE_NO_PAD.encode(f.claims().to_string());
    // alg: none, no signature.
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
    );
    assert_eq!(
        f.refused(&none).await,
        code("receipt_unsupported_algorithm")
    );
    // HS256 "signed" with the issuer's public key bytes (the classic confusion attack).
    use hmac_sha256_helper::sign_hs256;
    let public_x = f.wallet.signer.public_jwk().clone();
    let x = serde_json::to_value(&public_x).unwrap()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
    let msg = format!("{header}.{payload}");
    let sig = sign_hs256(&URL_SAFE_NO_PAD.decode(&x).unwrap(), msg.as_bytes());
    assert_eq!(
        f.refused(&format!("{msg}.{sig}")).await,
        code("receipt_unsupported_algorithm")
    );
    // RS256 is not on the allow-list either.
    let rs = format!(
        "{}.{payload}.AAAA",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k1"}"#)
    );
    assert_eq!(f.refused(&rs).await, code("receipt_unsupported_algorithm"));
    f.nothing_was_charged().await;
}

mod hmac_sha256_helper {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use tollgate_middleware::jsonwebtoken::{crypto, Algorithm, EncodingKey};

    pub(crate) fn sign_hs256(key: &[u8], msg: &[u8]) -> String {
        let sig = crypto::sign(msg, &EncodingKey::from_secret(key), Algorithm::HS256).unwrap();
        // Already base64url; re-encode check keeps the helper honest.
        assert!(URL_SAFE_NO_PAD.decode(&sig).is_ok());
        sig
    }
}

#[tokio::test]
async fn embedded_jwk_and_jku_headers_are_ignored() {
    let f = fixture().await;
    // An attacker signs with its own key and points the header at it (jwk, jku, x5u).
    let attacker = TestIssuer::ed25519_kid("wallet", "k1");
    let jwk = serde_json::to_value(attacker.signer.public_jwk()).unwrap();
    let header = json!({"alg": "EdDSA", "kid": "k1", "jwk": jwk, "jku": "http://127.0.0.1:1/jwks", "x5u": "http://127.0.0.1:1/x"});
    let token = attacker
        .signer
        .sign_raw(&header.to_string(), &f.claims().to_string())
        .unwrap();
    assert_eq!(f.refused(&token).await, code("receipt_invalid_signature"));
}

#[tokio::test]
async fn malformed_receipts() {
    let f = fixture().await;
    for bad in ["abc", "a.b", "a.b.c", "...", "eyJhbGciOiJFZERTQSJ9.!!!.x"] {
        let (status, c) = f.refused(bad).await;
        assert_eq!(status, 402, "{bad}");
        assert!(
            c == "receipt_malformed" || c == "receipt_unsupported_algorithm",
            "{bad}: {c}"
        );
    }
    // Claims of the wrong type.
    assert_eq!(
        f.refused(&f.with("amount", json!(0.01))).await,
        code("receipt_malformed")
    );
    assert_eq!(
        f.refused(&f.with("exp", json!("tomorrow"))).await,
        code("receipt_malformed")
    );
    // Missing jti.
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        f.refused(&f.wallet.sign(&c)).await,
        code("receipt_malformed")
    );
    // Duplicate claims: which "amount" would count? Refused.
    let mut raw = f.claims().to_string();
    raw.pop();
    raw.push_str(r#","amount":"999"}"#);
    let header = json!({"alg": "EdDSA", "kid": "k1"}).to_string();
    let dup = f.wallet.signer.sign_raw(&header, &raw).unwrap();
    assert_eq!(f.refused(&dup).await, code("receipt_malformed"));
    f.nothing_was_charged().await;
}

#[tokio::test]
async fn oversized_receipt() {
    let f = fixture().await;
    let big = f.with("padding", "x".repeat(10_000).into());
    assert_eq!(f.refused(&big).await, code("receipt_too_large"));
}

#[tokio::test]
async fn replayed() {
    let f = fixture().await;
    let r = f.wallet.receipt("m", "agent", PRICE);
    assert_eq!(f.gw.pay_get("/v1/echo", &r).await.status(), 200);
    assert_eq!(f.refused(&r).await, code("receipt_replayed"));
    // The same receipt in another header form is the same receipt.
    let res =
        f.gw.http
            .get(f.gw.url("/v1/echo"))
            .header("payment-signature", payment_signature(&r))
            .send()
            .await
            .unwrap();
    assert_eq!(code_of(res).await, code("receipt_replayed"));
    // Re-encoding the signature (non-canonical base64) does not make it new.
    let padded = format!("{r}==");
    assert_ne!(f.gw.pay_get("/v1/echo", &padded).await.status(), 200);
    assert_eq!(f.gw.paywall.store().usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn amounts() {
    let f = fixture().await;
    assert_eq!(
        f.refused(&f.with("amount", "0.009999".into())).await,
        code("amount_insufficient")
    );
    for bad in [
        "0.0000001",
        "-1",
        "1e-2",
        "abc",
        "",
        " 1",
        "99999999999999999999999999999",
    ] {
        assert_eq!(
            f.refused(&f.with("amount", bad.into())).await,
            code("amount_invalid"),
            "{bad:?}"
        );
    }
    assert_eq!(
        f.refused(&f.with("currency", "EUR".into())).await,
        code("currency_mismatch")
    );
    // Over-payment is accepted; the charge is the route's price (see docs/payment-rules.md).
    let res =
        f.gw.pay_get("/v1/echo", &f.with("amount", "0.5".into()))
            .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        b64_json(res.headers()["payment-response"].to_str().unwrap())["amount"],
        "0.01"
    );
}

#[tokio::test]
async fn kind_must_be_payment() {
    let f = fixture().await;
    assert_eq!(
        f.refused(&f.with("kind", "topup".into())).await,
        code("receipt_kind_unsupported")
    );
    assert_eq!(
        f.refused(&f.with("kind", "gift".into())).await,
        code("receipt_malformed")
    );
}

#[tokio::test]
async fn blocked_payer() {
    let f = fixture().await;
    f.gw.paywall
        .store()
        .set_blocked("agent", true)
        .await
        .unwrap();
    assert_eq!(
        f.refused(&f.wallet.receipt("m", "agent", PRICE)).await,
        (403, "payer_blocked".into())
    );
    f.gw.paywall
        .store()
        .set_blocked("agent", false)
        .await
        .unwrap();
    assert_eq!(
        f.gw.pay_get("/v1/echo", &f.wallet.receipt("m", "agent", PRICE))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn malformed_credential_headers_are_400_never_5xx() {
    let f = fixture().await;
    let send = |name: &'static str, value: String| {
        let gw = &f.gw;
        async move {
            code_of(
                gw.http
                    .get(gw.url("/v1/echo"))
                    .header(name, value)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    assert_eq!(
        send("payment-signature", "%%%".into()).await,
        (400, "credential_malformed".into())
    );
    assert_eq!(
        send("payment-signature", STANDARD.encode("not json")).await,
        (400, "credential_malformed".into())
    );
    assert_eq!(
        send("payment-signature", STANDARD.encode("{\"x402Version\":2}")).await,
        (400, "credential_malformed".into())
    );
    assert_eq!(
        send("x-payment", STANDARD.encode("[]")).await,
        (400, "credential_malformed".into())
    );
    assert_eq!(
        send("payment-signature", "x".repeat(20_000)).await,
        (400, "credential_malformed".into())
    );
    let exact = STANDARD.encode(
        json!({"x402Version": 2, "accepted": {"scheme": "exact"}, "payload": {"signature": "0x"}})
            .to_string(),
    );
    assert_eq!(
        send("payment-signature", exact).await,
        (402, "scheme_unsupported".into())
    );
    let r = f.wallet.receipt("m", "agent", PRICE);
    let res =
        f.gw.http
            .get(f.gw.url("/v1/echo"))
            .header("authorization", format!("Payment {r}"))
            .header("payment-signature", payment_signature(&r))
            .send()
            .await
            .unwrap();
    assert_eq!(code_of(res).await, (400, "credential_ambiguous".into()));
    f.nothing_was_charged().await;
}

/// Issue 19 item 3: one unit per claim. `amount_atomic` pays in atomic units (offers' unit);
/// `amount` in decimal; both must agree; an offer's atomic amount copied into the decimal claim
/// of a top-up (`"2000000"` for 2 USD) is refused loudly instead of crediting two million.
#[tokio::test]
async fn amounts_have_one_unit_per_claim() {
    let f = fixture().await;
    // The route's offer states atomic units.
    let res = f.gw.http.get(f.gw.url("/v1/echo")).send().await.unwrap();
    let offer = b64_json(res.headers()["payment-required"].to_str().unwrap());
    assert_eq!(offer["accepts"][0]["amount"], "10000");

    // Paying in atomic units, with or without the decimal beside it.
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("amount");
    c["amount_atomic"] = "10000".into();
    assert_eq!(
        f.gw.pay_get("/v1/echo", &f.wallet.sign(&c)).await.status(),
        200
    );
    let mut c = f.claims();
    c["amount_atomic"] = "10000".into();
    assert_eq!(
        f.gw.pay_get("/v1/echo", &f.wallet.sign(&c)).await.status(),
        200
    );
    // Disagreeing, malformed or missing.
    let mut c = f.claims();
    c["amount_atomic"] = "20000".into();
    assert_eq!(f.refused(&f.wallet.sign(&c)).await, code("amount_invalid"));
    assert_eq!(
        f.refused(&f.with("amount_atomic", "1.5".into())).await,
        code("amount_invalid")
    );
    let mut c = f.claims();
    c.as_object_mut().unwrap().remove("amount");
    assert_eq!(f.refused(&f.wallet.sign(&c)).await, code("amount_invalid"));

    // The top-up mistake: the atomic "2000000" (2 USD) as a decimal amount.
    let topup = |claims: Value| {
        let mut claims = claims;
        claims["kind"] = "topup".into();
        f.gw.http
            .post(f.gw.url("/tollgate/v1/topup"))
            .header(
                "authorization",
                format!("Payment {}", f.wallet.sign(&claims)),
            )
            .send()
    };
    let res = topup(f.wallet.claims("m", "copier", "2000000"))
        .await
        .unwrap();
    let (status, body) = (res.status().as_u16(), res.json::<Value>().await.unwrap());
    assert_eq!(
        (status, body["code"].as_str()),
        (402, Some("amount_invalid")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("amount_atomic = \"2000000\" for 2 USD"),
        "{detail}"
    );
    let account = f.gw.paywall.store().account("copier").await.unwrap();
    assert!(account.balances.is_empty(), "nothing credited: {account:?}");
    // Stated in atomic units, the same top-up credits 2 USD.
    let mut c = f.wallet.claims("m", "copier", "0");
    c.as_object_mut().unwrap().remove("amount");
    c["amount_atomic"] = "2000000".into();
    let res = topup(c).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["credited"], "2", "{body}");
    let b =
        f.gw.paywall
            .store()
            .account("copier")
            .await
            .unwrap()
            .balances["USD"];
    assert_eq!(b.available, 2_000_000);
}

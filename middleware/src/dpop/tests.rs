use super::*;
use serde_json::json;

const URL: &str = "https://api.example.com/v1/data";
const NOW: i64 = 1_800_000_000;

fn policy() -> DpopPolicy {
    DpopPolicy {
        mode: DpopMode::Optional,
        ..DpopPolicy::default()
    }
}

fn expect(token: Option<&str>) -> Expected<'_> {
    Expected {
        method: "GET",
        url: URL,
        any_scheme: false,
        access_token: token,
        now_secs: NOW,
    }
}

fn header(k: &DpopKey) -> Value {
    json!({"typ": "dpop+jwt", "alg": k.alg(), "jwk": k.jwk()})
}

fn claims(iat: i64) -> Value {
    json!({"jti": "a-unique-id", "htm": "GET", "htu": URL, "iat": iat})
}

#[test]
fn both_algorithms_verify_and_name_their_key() {
    for k in [DpopKey::ed25519(), DpopKey::es256()] {
        let p = k.proof("GET", URL, Some("tg1.x.y"), NOW);
        let proof = verify(&p, &expect(Some("tg1.x.y")), &policy()).unwrap();
        assert_eq!(proof.jkt, k.thumbprint(), "{}", k.alg());
        assert_eq!(proof.iat, NOW);
        // Another access token (its hash is not ath), and no token: the latter is a
        // token-endpoint proof, which needs no ath.
        assert_eq!(
            verify(&p, &expect(Some("tg1.other")), &policy()),
            Err(ProofError::TokenHash)
        );
        assert!(verify(&p, &expect(None), &policy()).is_ok());
        let without_ath = k.proof("GET", URL, None, NOW);
        assert_eq!(
            verify(&without_ath, &expect(Some("tg1.x.y")), &policy()),
            Err(ProofError::TokenHash)
        );
    }
}

#[test]
fn thumbprints_follow_rfc_7638() {
    // RFC 8037 appendix A.3: the Ed25519 key's thumbprint.
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    let k = key::PublicKey::from_jwk(key::Alg::EdDsa, jwk.as_object().unwrap()).unwrap();
    assert_eq!(
        k.thumbprint(),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
    // P-256: the same as jsonwebtoken's own RFC 7638 thumbprint of the key.
    let es = DpopKey::es256();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(es.jwk()).unwrap();
    assert_eq!(
        jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap(),
        es.thumbprint()
    );
}

#[test]
fn iat_is_judged_at_both_boundaries() {
    let k = DpopKey::ed25519();
    let p = policy();
    let at = |iat| verify(&k.proof("GET", URL, None, iat), &expect(None), &p);
    assert!(at(NOW - 60).is_ok());
    assert_eq!(at(NOW - 61), Err(ProofError::Stale));
    assert!(at(NOW + 5).is_ok());
    assert_eq!(at(NOW + 6), Err(ProofError::Future));
    // A fractional NumericDate is floored.
    let frac = k.sign(
        &header(&k),
        &json!({"jti": "j", "htm": "GET", "htu": URL, "iat": (NOW - 61) as f64 + 0.5}),
    );
    assert_eq!(verify(&frac, &expect(None), &p), Err(ProofError::Stale));
    // Remembered as used until it is too old anyway.
    assert_eq!(p.remember_until_ms(NOW), (NOW + 61) * 1000);
}

#[test]
fn the_request_must_be_the_one_signed_for() {
    let k = DpopKey::es256();
    let p = policy();
    let check =
        |method: &str, url: &str| verify(&k.proof(method, url, None, NOW), &expect(None), &p);
    assert_eq!(check("POST", URL), Err(ProofError::Method));
    assert_eq!(check("get", URL), Err(ProofError::Method));
    assert_eq!(
        check("GET", "https://api.example.com/v1/other"),
        Err(ProofError::Url)
    );
    assert_eq!(
        check("GET", "https://evil.example.com/v1/data"),
        Err(ProofError::Url)
    );
    assert_eq!(
        check("GET", "http://api.example.com/v1/data"),
        Err(ProofError::Url)
    );
    assert_eq!(
        check("GET", "https://api.example.com/v1/data/"),
        Err(ProofError::Url)
    );
    // The same URL written otherwise, or with a query or fragment, is the same target.
    for same in [
        "HTTPS://API.example.COM/v1/data",
        "https://api.example.com:443/v1/data",
        "https://api.example.com/v1/data?page=2",
        "https://api.example.com/v1/data#top",
    ] {
        assert!(check("GET", same).is_ok(), "{same}");
    }
    // Without a known scheme, http and https both name it.
    let any = Expected {
        any_scheme: true,
        url: "http://api.example.com/v1/data",
        ..expect(None)
    };
    assert!(verify(&k.proof("GET", URL, None, NOW), &any, &p).is_ok());
    assert!(same_url("http://h:80/", "https://h", true));
    assert!(!same_url("ftp://h/", "ftp://h/", false));
    assert!(!same_url("https://user@h/", "https://h/", false));
    assert!(!same_url("not a url", URL, true));
}

#[test]
fn malformed_and_hostile_proofs_are_refused() {
    let k = DpopKey::ed25519();
    let p = policy();
    let v = |proof: &str| verify(proof, &expect(None), &p);
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        "e30.e30.",
        "bm90IGpzb24.e30.AA",
    ] {
        assert!(
            matches!(v(bad), Err(ProofError::Malformed | ProofError::Type)),
            "{bad}: {:?}",
            v(bad)
        );
    }
    let big = "a".repeat(MAX_PROOF_BYTES + 1);
    assert_eq!(v(&big), Err(ProofError::TooLarge));
    // typ, alg, jwk.
    let mut h = header(&k);
    h["typ"] = "JWT".into();
    assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(ProofError::Type));
    for alg in ["none", "HS256", "RS256", "ES256"] {
        let mut h = header(&k);
        h["alg"] = alg.into();
        let want = if alg == "ES256" {
            ProofError::Key
        } else {
            ProofError::Algorithm
        };
        assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(want), "{alg}");
    }
    let mut h = header(&k);
    h.as_object_mut().unwrap().remove("jwk");
    assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(ProofError::Key));
    let mut h = header(&k);
    h["jwk"]["x"] = "c2hvcnQ".into();
    assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(ProofError::Key));
    let mut h = header(&k);
    h["jwk"]["d"] = "secret".into();
    assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(ProofError::PrivateKey));
    // A symmetric "key" is not a proof key.
    let mut h = header(&k);
    h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"});
    assert_eq!(v(&k.sign(&h, &claims(NOW))), Err(ProofError::Key));
    // Signed by one key, naming another.
    let other = DpopKey::ed25519();
    assert_eq!(
        v(&other.sign(&header(&k), &claims(NOW))),
        Err(ProofError::Signature)
    );
    // An edited claim breaks the signature.
    let good = k.sign(&header(&k), &claims(NOW));
    let (signed, sig) = good.rsplit_once('.').unwrap();
    let (h64, _) = signed.split_once('.').unwrap();
    let forged = format!(
        "{h64}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(claims(NOW + 1).to_string())
    );
    assert_eq!(v(&forged), Err(ProofError::Signature));
    assert_eq!(v(&format!("{signed}.AAAA")), Err(ProofError::Signature));
    // Missing or mistyped claims; an overlong jti.
    for c in [
        json!({"htm": "GET", "htu": URL, "iat": NOW}),
        json!({"jti": "j", "htu": URL, "iat": NOW}),
        json!({"jti": "j", "htm": "GET", "iat": NOW}),
        json!({"jti": "j", "htm": "GET", "htu": URL}),
        json!({"jti": "j", "htm": "GET", "htu": URL, "iat": "now"}),
        json!({"jti": "", "htm": "GET", "htu": URL, "iat": NOW}),
        json!({"jti": "x".repeat(MAX_JTI_CHARS + 1), "htm": "GET", "htu": URL, "iat": NOW}),
    ] {
        let r = v(&k.sign(&header(&k), &c));
        assert!(
            matches!(r, Err(ProofError::Claims | ProofError::Malformed)),
            "{c}: {r:?}"
        );
    }
    // Reasons are stable names.
    assert_eq!(ProofError::Stale.reason(), "proof_stale");
}

#[test]
fn a_proof_made_by_another_implementation_verifies() {
    // Made by bench/gen_dpop.py (Python, pyca/cryptography's Ed25519, its own JWS encoding)
    // for GET URL at NOW with the token "tg1.x.y"; its thumbprint computed there too.
    let proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVkRFNBIiwiandrIjp7Imt0eSI6Ik9LUCIsImNydiI6IkVkMjU1MTkiLCJ4IjoiejdLdlJ0MndHLUk3aHQyaHFHckpoMFk4YUxfaWZGZE5Yd2lDZnhCbHJGVSJ9fQ.eyJqdGkiOiJweS1tYWRlLTEiLCJodG0iOiJHRVQiLCJodHUiOiJodHRwczovL2FwaS5leGFtcGxlLmNvbS92MS9kYXRhIiwiaWF0IjoxODAwMDAwMDAwLCJhdGgiOiJXVFdWQXZPQmI3a0cyOTNXTTJkRDJQN1NzeldaRjUxbERQTnRHdGllYXFRIn0.mmxJfeF8UHBTmAVztG65Op_uSyVWkdc3GK7sah0VkSkBdJ2vxJ4MyBWqDxh2WuzW5jdVZt2xheJAzgcn6_XyCQ";
    let p = verify(proof, &expect(Some("tg1.x.y")), &policy()).unwrap();
    assert_eq!(p.jkt, "dTTGQ8tm_K_W2k8LWPF4g21a56OA2fsv3wDovgX2X0M");
    assert_eq!(p.jti, "py-made-1");
}

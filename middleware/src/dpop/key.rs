//! DPoP keys: the public key a proof carries (checked), and the agent's signing key (proofs
//! made by Rust agents, the demo and the tests).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::ProofError;

/// A proof algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    EdDsa,
    Es256,
}

/// A proof's public key, checked against its algorithm.
pub(super) enum PublicKey {
    Ed25519([u8; 32]),
    P256([u8; 32], [u8; 32]),
}

fn coordinate(jwk: &Map<String, Value>, name: &str) -> Result<[u8; 32], ProofError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .and_then(|b| <[u8; 32]>::try_from(&b[..]).ok())
        .ok_or(ProofError::Key)
}

impl PublicKey {
    pub(super) fn from_jwk(alg: Alg, jwk: &Map<String, Value>) -> Result<Self, ProofError> {
        if jwk.contains_key("d") {
            return Err(ProofError::PrivateKey);
        }
        let s = |k: &str| jwk.get(k).and_then(Value::as_str);
        match (alg, s("kty"), s("crv")) {
            (Alg::EdDsa, Some("OKP"), Some("Ed25519")) => {
                Ok(PublicKey::Ed25519(coordinate(jwk, "x")?))
            }
            (Alg::Es256, Some("EC"), Some("P-256")) => Ok(PublicKey::P256(
                coordinate(jwk, "x")?,
                coordinate(jwk, "y")?,
            )),
            _ => Err(ProofError::Key),
        }
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), ProofError> {
        match self {
            PublicKey::Ed25519(x) => {
                let vk = ed25519_dalek::VerifyingKey::from_bytes(x).map_err(|_| ProofError::Key)?;
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| ProofError::Signature)?;
                vk.verify_strict(message, &sig)
                    .map_err(|_| ProofError::Signature)
            }
            PublicKey::P256(x, y) => {
                use p256::ecdsa::signature::Verifier as _;
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&(*x).into(), &(*y).into(), false);
                let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| ProofError::Key)?;
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| ProofError::Signature)?;
                vk.verify(message, &sig).map_err(|_| ProofError::Signature)
            }
        }
    }

    /// The RFC 7638 thumbprint: SHA-256 of the required members in lexical order, written
    /// from the decoded coordinates (so two spellings of one key have one thumbprint).
    pub(super) fn thumbprint(&self) -> String {
        let e = |b: &[u8; 32]| URL_SAFE_NO_PAD.encode(b);
        let canonical = match self {
            PublicKey::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, e(x)),
            PublicKey::P256(x, y) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                e(x),
                e(y)
            ),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// An agent's DPoP signing key (Ed25519 or P-256): makes proofs.
#[derive(Clone)]
pub enum DpopKey {
    /// EdDSA proofs.
    Ed25519(ed25519_dalek::SigningKey),
    /// ES256 proofs.
    Es256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DpopKey({})", self.thumbprint())
    }
}

impl DpopKey {
    /// A new random Ed25519 key.
    pub fn ed25519() -> Self {
        DpopKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A new random P-256 key.
    pub fn es256() -> Self {
        DpopKey::Es256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// The proof algorithm's name.
    pub fn alg(&self) -> &'static str {
        match self {
            DpopKey::Ed25519(_) => "EdDSA",
            DpopKey::Es256(_) => "ES256",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            DpopKey::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": e(k.verifying_key().as_bytes())})
            }
            DpopKey::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": e(point.x().map(|x| &x[..]).unwrap_or_default()),
                    "y": e(point.y().map(|y| &y[..]).unwrap_or_default()),
                })
            }
        }
    }

    /// The RFC 7638 thumbprint of the public key (what a bound token's `cnf.jkt` holds).
    pub fn thumbprint(&self) -> String {
        let public = match self {
            DpopKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key().to_bytes()),
            DpopKey::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                let c = |b: Option<&p256::FieldBytes>| {
                    b.and_then(|b| <[u8; 32]>::try_from(&b[..]).ok())
                        .unwrap_or([0; 32])
                };
                PublicKey::P256(c(point.x()), c(point.y()))
            }
        };
        public.thumbprint()
    }

    /// A proof for `method url` made at `iat` (a fresh random `jti`), with `ath` when it goes
    /// with an access token.
    pub fn proof(&self, method: &str, url: &str, access_token: Option<&str>, iat: i64) -> String {
        let mut claims = json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": method,
            "htu": url,
            "iat": iat,
        });
        if let Some(t) = access_token {
            claims["ath"] = super::token_hash(t).into();
        }
        self.sign(
            &json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()}),
            &claims,
        )
    }

    /// Sign any header and claims as a compact JWS with this key (tests craft bad proofs).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let e = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", e(header), e(claims));
        let signature = match self {
            DpopKey::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(signed.as_bytes()).to_bytes().to_vec()
            }
            DpopKey::Es256(k) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = k.sign(signed.as_bytes());
                sig.to_bytes().to_vec()
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

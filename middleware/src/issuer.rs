//! Signing receipts: what a wallet or payment provider does. Tollgate itself only verifies;
//! this module exists for wallets written in Rust, the demo wallet and the tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::receipt::ReceiptKind;

/// Why a key could not be made or loaded, or a receipt signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The key could not be generated, encoded or loaded.
    #[error("key: {0}")]
    Key(String),
    /// The claims could not be signed.
    #[error("signing: {0}")]
    Sign(String),
}

impl SignError {
    fn key(e: impl std::fmt::Display) -> Self {
        SignError::Key(e.to_string())
    }

    fn sign(e: impl std::fmt::Display) -> Self {
        SignError::Sign(e.to_string())
    }
}

/// The claims of a receipt to sign.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptClaims {
    /// Issuer id.
    pub iss: String,
    /// Payer id.
    pub sub: String,
    /// Merchant id.
    pub aud: String,
    /// Unique id.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// Decimal amount string.
    pub amount: String,
    /// Currency code.
    pub currency: String,
    /// What it pays for.
    pub kind: ReceiptKind,
    /// The 402 challenge id it answers, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
}

/// An Ed25519 key pair in the forms a signer and a gateway read (what `tollgate keygen` shows).
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedKey {
    /// Private JWK (keep secret; the wallet signs with it).
    pub private_jwk: serde_json::Value,
    /// Public JWK (goes into the gateway config or the issuer's JWKS).
    pub public_jwk: serde_json::Value,
    /// The private key as PKCS#8 PEM.
    pub private_pem: String,
    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`): what `[[issuers]] pem_file`
    /// reads.
    pub public_pem: String,
}

/// Generate an Ed25519 key pair with a `kid`.
pub fn generate_ed25519(kid: &str) -> Result<(GeneratedKey, SigningKey), SignError> {
    let sk = SigningKey::generate(&mut rand::rngs::OsRng);
    let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
    let d = URL_SAFE_NO_PAD.encode(sk.to_bytes());
    // PKCS#8 v1 (no embedded public key): the form OpenSSL and most libraries load.
    let pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: sk.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(Default::default())
    .map_err(SignError::key)?
    .to_string();
    let public_pem = sk
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(SignError::key)?;
    let public_jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
    let private_jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "d": d, "kid": kid, "alg": "EdDSA", "use": "sig"});
    Ok((
        GeneratedKey {
            private_jwk,
            public_jwk,
            private_pem: pem,
            public_pem,
        },
        sk,
    ))
}

/// Signs receipts for one issuer with one key.
#[derive(Clone)]
pub struct ReceiptSigner {
    issuer: String,
    kid: Option<String>,
    algorithm: Algorithm,
    key: EncodingKey,
    public_jwk: Jwk,
}

debug_fields!(ReceiptSigner { issuer, kid });

impl ReceiptSigner {
    /// A signer from an encoding key and the matching public JWK.
    pub fn new(
        issuer: impl Into<String>,
        kid: Option<String>,
        algorithm: Algorithm,
        key: EncodingKey,
        public_jwk: Jwk,
    ) -> Self {
        ReceiptSigner {
            issuer: issuer.into(),
            kid,
            algorithm,
            key,
            public_jwk,
        }
    }

    /// A signer with a freshly generated Ed25519 key.
    pub fn generate_ed25519(issuer: impl Into<String>, kid: &str) -> Result<Self, SignError> {
        let (generated, _) = generate_ed25519(kid)?;
        let key =
            EncodingKey::from_ed_pem(generated.private_pem.as_bytes()).map_err(SignError::key)?;
        let public_jwk: Jwk =
            serde_json::from_value(generated.public_jwk).map_err(SignError::key)?;
        Ok(Self::new(
            issuer,
            Some(kid.to_owned()),
            Algorithm::EdDSA,
            key,
            public_jwk,
        ))
    }

    /// A signer from an Ed25519 private key in PKCS#8 PEM (what `tollgate keygen` prints or
    /// writes as `<kid>.key.pem`).
    pub fn from_ed25519_pem(
        issuer: impl Into<String>,
        kid: Option<&str>,
        pem: &str,
    ) -> Result<Self, SignError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let sk = SigningKey::from_pkcs8_pem(pem).map_err(SignError::key)?;
        let x = URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        let mut jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig"});
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        let public_jwk: Jwk = serde_json::from_value(jwk).map_err(SignError::key)?;
        let key = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(SignError::key)?;
        Ok(Self::new(
            issuer,
            kid.map(str::to_owned),
            Algorithm::EdDSA,
            key,
            public_jwk,
        ))
    }

    /// The issuer id (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public_jwk
    }

    /// The public key set to serve at the issuer's JWKS URL.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public_jwk.clone()],
        }
    }

    /// Sign arbitrary claims (tests use this to build hostile receipts).
    pub fn sign_json<T: Serialize>(&self, claims: &T) -> Result<String, SignError> {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(SignError::sign)
    }

    /// Sign raw header and payload JSON exactly as given (tests use this to build receipts a
    /// serializer would never produce: duplicate claims, odd headers).
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> Result<String, SignError> {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(payload_json)
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.algorithm)
            .map_err(SignError::sign)?;
        Ok(format!("{message}.{sig}"))
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Sign a receipt.
    pub fn sign(&self, claims: &ReceiptClaims) -> Result<String, SignError> {
        self.sign_json(claims)
    }
}

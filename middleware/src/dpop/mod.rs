//! DPoP (RFC 9449): access tokens bound to the agent's own key.
//!
//! A top-up, subscribe or token request that carries a `DPoP` proof gets a token bound to the
//! proof key's RFC 7638 thumbprint (`cnf.jkt`). Every request made with a bound token must carry
//! a fresh proof signed by that key, for that request: a copied token alone pays for nothing.
//!
//! A proof is a compact JWS. Checked here, in this order (each failure has its
//! [`ProofError::reason`]):
//! 1. at most [`MAX_PROOF_BYTES`], three base64url parts, JSON header and claims;
//! 2. header `typ` is `dpop+jwt`, `alg` is `EdDSA` or `ES256`, `jwk` is a public key of that
//!    algorithm (OKP/Ed25519 or EC/P-256, 32-byte coordinates, no private `d`);
//! 3. the signature verifies with that `jwk`;
//! 4. claims `jti` (1-256 chars), `htm`, `htu` and `iat` are present;
//! 5. `htm` is the request's method, `htu` its URL (scheme and host compared case-blind,
//!    default ports ignored, query and fragment not part of it);
//! 6. `now - max_age <= iat <= now + skew`;
//! 7. with an access token: `ath` is base64url(SHA-256(token)) and the key is the token's
//!    `cnf.jkt`.
//!
//! Single use of `jti` (per key, until the proof is too old to pass step 6) is the store's
//! part ([`crate::store::PayerControl::claim_once`]), so a proof replayed at another replica
//! is refused too.

mod key;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use self::key::DpopKey;

/// The request header carrying a proof.
pub const DPOP_HEADER: &str = "dpop";
/// The largest proof accepted, in bytes (an ES256 proof with its key is about 600).
pub const MAX_PROOF_BYTES: usize = 4096;
/// The proof algorithms accepted, as `WWW-Authenticate: DPoP algs="..."` lists them.
pub const ALGS: &str = "EdDSA ES256";
/// The longest `jti` accepted.
pub const MAX_JTI_CHARS: usize = 256;

/// Whether token requests bind tokens to the agent's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpopMode {
    /// DPoP proofs are not read at the token endpoints (a bound token is still checked).
    #[default]
    Off,
    /// A token request with a proof gets a bound token; one without, a bearer token.
    Optional,
    /// Every token request needs a proof, and only bound tokens are accepted.
    Required,
}

/// How proofs are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopPolicy {
    /// Whether tokens are bound (see [`DpopMode`]).
    pub mode: DpopMode,
    /// The oldest proof accepted (`iat` at most this far in the past).
    pub max_age: Duration,
    /// How far in the future `iat` may be (the agent's clock running ahead).
    pub skew: Duration,
}

impl Default for DpopPolicy {
    fn default() -> Self {
        DpopPolicy {
            mode: DpopMode::Off,
            max_age: Duration::from_secs(60),
            skew: Duration::from_secs(5),
        }
    }
}

impl DpopPolicy {
    /// Until when (ms) a proof issued at `iat` must be remembered as used: after that it is
    /// too old to be accepted anyway.
    pub fn remember_until_ms(&self, iat: i64) -> i64 {
        let age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        iat.saturating_add(age)
            .saturating_add(1)
            .saturating_mul(1000)
    }
}

/// Why a proof was refused. [`ProofError::reason`] is the stable name in the problem body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Larger than [`MAX_PROOF_BYTES`].
    #[error("the DPoP proof is larger than 4096 bytes")]
    TooLarge,
    /// More than one `DPoP` header.
    #[error("send exactly one DPoP header")]
    Multiple,
    /// Not a compact JWS with JSON header and claims.
    #[error("the DPoP proof is not a compact JWS with a JSON header and claims")]
    Malformed,
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ must be dpop+jwt")]
    Type,
    /// `alg` is not EdDSA or ES256.
    #[error("the DPoP proof's alg must be EdDSA or ES256")]
    Algorithm,
    /// The `jwk` is missing, not a key of `alg`'s type or has malformed coordinates.
    #[error("the DPoP proof's jwk must be a public Ed25519 (OKP) key for EdDSA or P-256 (EC) key for ES256")]
    Key,
    /// The `jwk` carries a private key.
    #[error("the DPoP proof's jwk carries a private key (d)")]
    PrivateKey,
    /// The signature does not verify with the `jwk`.
    #[error("the DPoP proof's signature does not verify with its jwk")]
    Signature,
    /// `jti`, `htm`, `htu` or `iat` missing or of the wrong type.
    #[error("the DPoP proof needs string claims jti (1-256 chars), htm, htu and a numeric iat")]
    Claims,
    /// `htm` is not the request's method.
    #[error("the DPoP proof's htm is not this request's method")]
    Method,
    /// `htu` is not the request's URL.
    #[error("the DPoP proof's htu is not this request's URL")]
    Url,
    /// `iat` is older than the policy's `max_age`.
    #[error("the DPoP proof is too old (iat): make a fresh one for each request")]
    Stale,
    /// `iat` is further in the future than the policy's `skew`.
    #[error("the DPoP proof's iat is in the future")]
    Future,
    /// `ath` is missing or not the access token's hash.
    #[error("the DPoP proof's ath is not the hash of the access token sent with it")]
    TokenHash,
    /// Signed by another key than the token is bound to.
    #[error("the DPoP proof is signed by another key than the access token is bound to")]
    WrongKey,
}

impl ProofError {
    /// The stable reason name (`reason` in the problem body).
    pub fn reason(&self) -> &'static str {
        match self {
            ProofError::TooLarge => "proof_too_large",
            ProofError::Multiple => "proof_multiple",
            ProofError::Malformed => "proof_malformed",
            ProofError::Type => "proof_type",
            ProofError::Algorithm => "proof_algorithm",
            ProofError::Key => "proof_key",
            ProofError::PrivateKey => "proof_private_key",
            ProofError::Signature => "proof_signature",
            ProofError::Claims => "proof_claims",
            ProofError::Method => "proof_method",
            ProofError::Url => "proof_url",
            ProofError::Stale => "proof_stale",
            ProofError::Future => "proof_future",
            ProofError::TokenHash => "proof_token_hash",
            ProofError::WrongKey => "proof_wrong_key",
        }
    }
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The key's RFC 7638 SHA-256 thumbprint (base64url).
    pub jkt: String,
    /// The proof's unique id.
    pub jti: String,
    /// When it was made (Unix seconds).
    pub iat: i64,
}

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request URL (scheme, authority, path; a query is ignored).
    pub url: &'a str,
    /// Whether the scheme may differ (`http` vs `https`): the gateway behind a TLS
    /// terminator with no `public_base_url` cannot know which one the agent used.
    pub any_scheme: bool,
    /// The access token sent with the proof (its hash must be `ath`).
    pub access_token: Option<&'a str>,
    /// Now (Unix seconds).
    pub now_secs: i64,
}

#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: Option<String>,
    jwk: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<serde_json::Number>,
    ath: Option<String>,
}

/// The base64url SHA-256 of an access token (`ath`).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Verify a proof for the `expected` request (every step but `jti` single use).
pub fn verify(
    proof: &str,
    expected: &Expected<'_>,
    policy: &DpopPolicy,
) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| ProofError::Malformed);
    let header: Header = serde_json::from_slice(&decode(h)?).map_err(|_| ProofError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&decode(c)?).map_err(|_| ProofError::Malformed)?;
    let signature = decode(s)?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(ProofError::Type);
    }
    let alg = match header.alg.as_deref() {
        Some("EdDSA") => key::Alg::EdDsa,
        Some("ES256") => key::Alg::Es256,
        _ => return Err(ProofError::Algorithm),
    };
    let jwk = header.jwk.ok_or(ProofError::Key)?;
    let public = key::PublicKey::from_jwk(alg, &jwk)?;
    let signed = &proof[..h.len() + 1 + c.len()];
    public.verify(signed.as_bytes(), &signature)?;
    let (Some(jti), Some(htm), Some(htu), Some(iat)) = (
        claims.jti,
        claims.htm,
        claims.htu,
        claims.iat.and_then(|n| {
            n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
        }),
    ) else {
        return Err(ProofError::Claims);
    };
    if jti.is_empty() || jti.chars().count() > MAX_JTI_CHARS {
        return Err(ProofError::Claims);
    }
    if htm != expected.method {
        return Err(ProofError::Method);
    }
    if !same_url(&htu, expected.url, expected.any_scheme) {
        return Err(ProofError::Url);
    }
    let max_age = i64::try_from(policy.max_age.as_secs()).unwrap_or(i64::MAX);
    let skew = i64::try_from(policy.skew.as_secs()).unwrap_or(i64::MAX);
    if iat < expected.now_secs.saturating_sub(max_age) {
        return Err(ProofError::Stale);
    }
    if iat > expected.now_secs.saturating_add(skew) {
        return Err(ProofError::Future);
    }
    if let Some(token) = expected.access_token {
        if claims.ath.as_deref() != Some(token_hash(token).as_str()) {
            return Err(ProofError::TokenHash);
        }
    }
    Ok(Proof {
        jkt: public.thumbprint(),
        jti,
        iat,
    })
}

/// A URL cut to what `htu` names: (scheme, authority, path), scheme and authority lower-cased,
/// a default port dropped, an empty path as `/`; query and fragment gone.
fn url_parts(url: &str) -> Option<(String, String, &str)> {
    let url = url.split(['#', '?']).next().unwrap_or("");
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.ends_with(default) {
        authority.truncate(authority.len() - default.len());
    }
    Some((scheme, authority, path))
}

/// Whether `htu` names the URL `expected` (RFC 9449 section 4.3 step 9).
pub fn same_url(htu: &str, expected: &str, any_scheme: bool) -> bool {
    let (Some(a), Some(b)) = (url_parts(htu), url_parts(expected)) else {
        return false;
    };
    // Without a known scheme the authority's default port cannot be judged either: compare
    // the host with the default ports of both schemes dropped.
    let strip = |s: &str| {
        s.strip_suffix(":443")
            .or_else(|| s.strip_suffix(":80"))
            .unwrap_or(s)
            .to_owned()
    };
    if any_scheme {
        strip(&a.1) == strip(&b.1) && a.2 == b.2
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests;

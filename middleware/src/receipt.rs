//! Signed payment receipts: JWTs from trusted issuers, verified with no I/O on the hot path.
//!
//! A receipt is a compact JWS signed with EdDSA (Ed25519) or ES256 by an issuer listed in
//! config. Verification is, in order: size limit, header (`alg` on the allow-list; `jku`,
//! `x5u` and `jwk` headers are ignored and never fetched), the `iss` read from the unverified
//! payload only to pick the issuer's key, the signature, then the claims (`aud`, `exp`, `nbf`,
//! `iat`, lifetime, amount syntax). Every failure has its own [`ErrorCode`].
//!
//! Keys come from a [`KeySource`]: inline JWKs / PEM files ([`StaticKeys`]) or a JWKS URL
//! ([`JwksKeys`], cached, refetched on an unknown `kid` at most once per interval so a flood
//! of random `kid`s cannot hammer the issuer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

use crate::clock::Clock;
use crate::error::ErrorCode;
use crate::receipt_amount::ReceiptAmount;

/// The only signature algorithms a receipt may use.
pub const ALLOWED_ALGORITHMS: [Algorithm; 2] = [Algorithm::EdDSA, Algorithm::ES256];

/// What a receipt pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// Pays for this request.
    Payment,
    /// Credits a prepaid balance (not accepted yet).
    Topup,
    /// Buys a plan period (not accepted yet).
    Subscribe,
}

/// A verified receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// `iss`: the trusted issuer that signed it.
    pub issuer: String,
    /// `sub`: the payer.
    pub payer: String,
    /// `jti`: unique per issuer, single use.
    pub id: String,
    /// `iat`, unix seconds.
    pub issued_at: i64,
    /// `exp`, unix seconds.
    pub expires_at: i64,
    /// `amount` (decimal) and/or `amount_atomic` (atomic units): resolved against the
    /// currency by [`ReceiptAmount::minor`].
    pub amount: ReceiptAmount,
    /// `currency` code.
    pub currency: String,
    /// `kind`.
    pub kind: ReceiptKind,
    /// `challenge`: binds the receipt to one 402 challenge id.
    pub challenge: Option<String>,
    /// `plan` (subscriptions, later).
    pub plan: Option<String>,
    /// `mandate` (spending authority, later).
    pub mandate: Option<String>,
}

/// The claims as they appear in the JWT. Field types are strict: a number where a string is
/// expected is `receipt_malformed`; serde also refuses duplicate claims.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    jti: String,
    iat: i64,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    amount_atomic: Option<String>,
    currency: String,
    kind: ReceiptKind,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    mandate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Only `iss`, read before the signature is checked to choose the key.
#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ReceiptError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human detail (safe to send: it never contains key material).
    pub detail: String,
}

impl ReceiptError {
    pub(crate) fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ReceiptError {
            code,
            detail: detail.into(),
        }
    }
}

/// Why a key could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The issuer has no such key.
    #[error("no key with kid {0:?} for this algorithm")]
    Unknown(Option<String>),
    /// The issuer's key set could not be fetched.
    #[error("issuer key set unavailable: {0}")]
    Unavailable(String),
}

/// Why a verification key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerKeyError {
    /// RSA, symmetric or another curve.
    #[error("only OKP/Ed25519 and EC/P-256 keys are accepted")]
    UnsupportedKeyType,
    /// The JWK's `alg` names another algorithm than its curve.
    #[error("key alg {0} does not match its curve")]
    AlgorithmMismatch(String),
    /// The JWK does not decode.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    /// Not a public key in PEM (SPKI) form.
    #[error("not an Ed25519 or P-256 public key in PEM (SPKI) form")]
    InvalidPem,
    /// The HTTP client for a JWKS URL could not be built.
    #[error("JWKS client: {0}")]
    Client(String),
}

/// One verification key with its algorithm.
#[derive(Clone)]
pub struct IssuerKey {
    /// `kid`, if the key has one.
    pub kid: Option<String>,
    /// EdDSA or ES256.
    pub algorithm: Algorithm,
    /// The public key.
    pub key: Arc<DecodingKey>,
}

debug_fields!(IssuerKey { kid, algorithm });

impl IssuerKey {
    /// A key from a public JWK (OKP/Ed25519 or EC/P-256). Private members are ignored;
    /// RSA, symmetric and other curves are refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, IssuerKeyError> {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => return Err(IssuerKeyError::UnsupportedKeyType),
        };
        match jwk.common.key_algorithm {
            None | Some(KeyAlgorithm::EdDSA) if algorithm == Algorithm::EdDSA => {}
            None | Some(KeyAlgorithm::ES256) if algorithm == Algorithm::ES256 => {}
            Some(other) => return Err(IssuerKeyError::AlgorithmMismatch(format!("{other:?}"))),
            None => {}
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| IssuerKeyError::InvalidJwk(e.to_string()))?;
        Ok(IssuerKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key: Arc::new(key),
        })
    }

    /// A key from a PEM public key (SPKI), Ed25519 or P-256.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, IssuerKeyError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(IssuerKey {
                kid,
                algorithm: Algorithm::EdDSA,
                key: Arc::new(key),
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(IssuerKey {
                kid,
                algorithm: Algorithm::ES256,
                key: Arc::new(key),
            });
        }
        Err(IssuerKeyError::InvalidPem)
    }
}

fn pick(keys: &[IssuerKey], kid: Option<&str>, alg: Algorithm) -> Option<Arc<DecodingKey>> {
    let mut candidates = keys.iter().filter(|k| k.algorithm == alg);
    match kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.algorithm == alg && k.kid.as_deref() == Some(kid))
            .map(|k| k.key.clone()),
        // Without a `kid` the choice must be unambiguous.
        None => {
            let first = candidates.next()?;
            candidates.next().is_none().then(|| first.key.clone())
        }
    }
}

/// Where an issuer's verification keys come from.
#[async_trait]
pub trait KeySource: Send + Sync + std::fmt::Debug + 'static {
    /// The key for a `kid` (if the token names one) and algorithm.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyError>;
}

/// Keys given in config (inline JWKs or PEM files).
#[derive(Debug, Clone)]
pub struct StaticKeys(pub Vec<IssuerKey>);

#[async_trait]
impl KeySource for StaticKeys {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyError> {
        pick(&self.0, kid, alg).ok_or_else(|| KeyError::Unknown(kid.map(str::to_owned)))
    }
}

/// Keys fetched from an issuer's JWKS URL, cached, refetched when a token names an unknown
/// `kid` -- at most once per `min_refetch` interval.
#[derive(Debug)]
pub struct JwksKeys {
    url: String,
    client: reqwest::Client,
    /// The last successfully fetched key set.
    cache: RwLock<Vec<IssuerKey>>,
    /// When the last fetch was attempted; serializes fetches and rate-limits them.
    last_fetch: Mutex<Option<Instant>>,
    min_refetch: Duration,
}

impl JwksKeys {
    /// A source for `url`; nothing is fetched until [`JwksKeys::refresh`] or the first lookup.
    pub fn new(url: impl Into<String>, min_refetch: Duration) -> Result<Self, IssuerKeyError> {
        let client = crate::fetch::client().map_err(IssuerKeyError::Client)?;
        Ok(JwksKeys {
            url: url.into(),
            client,
            cache: RwLock::new(Vec::new()),
            last_fetch: Mutex::new(None),
            min_refetch,
        })
    }

    /// Fetch the key set now (keys of unsupported types are skipped).
    pub async fn refresh(&self) -> Result<usize, KeyError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, KeyError> {
        let body = crate::fetch::get_bounded(&self.client, &self.url, 256 * 1024)
            .await
            .map_err(|e| {
                KeyError::Unavailable(match e {
                    crate::fetch::FetchError::Transport(e) => e,
                    crate::fetch::FetchError::Status(s) => format!("HTTP {s}"),
                    crate::fetch::FetchError::TooLarge => "JWKS larger than 256 KiB".into(),
                })
            })?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| KeyError::Unavailable(format!("invalid JWKS: {e}")))?;
        let keys: Vec<IssuerKey> = set
            .keys
            .iter()
            .filter_map(|k| IssuerKey::from_jwk(k).ok())
            .collect();
        let n = keys.len();
        *self.cache.write().await = keys;
        Ok(n)
    }
}

#[async_trait]
impl KeySource for JwksKeys {
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<DecodingKey>, KeyError> {
        if let Some(k) = pick(&self.cache.read().await, kid, alg) {
            return Ok(k);
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have refetched while we waited for the lock.
        if let Some(k) = pick(&self.cache.read().await, kid, alg) {
            return Ok(k);
        }
        let recently = last.is_some_and(|t| t.elapsed() < self.min_refetch);
        if !recently {
            *last = Some(Instant::now());
            let fetched = self.fetch_locked().await;
            if let Err(e) = fetched {
                if self.cache.read().await.is_empty() {
                    return Err(e);
                }
                tracing::warn!(url = %self.url, error = %e, "JWKS refetch failed; keeping cached keys");
            }
            if let Some(k) = pick(&self.cache.read().await, kid, alg) {
                return Ok(k);
            }
        } else if self.cache.read().await.is_empty() {
            return Err(KeyError::Unavailable(
                "key set not fetched yet (retrying later)".into(),
            ));
        }
        Err(KeyError::Unknown(kid.map(str::to_owned)))
    }
}

/// A trusted issuer: its `iss` value and where its keys come from.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The exact `iss` value.
    pub id: String,
    /// Its keys.
    pub keys: Arc<dyn KeySource>,
}

/// Limits applied to every receipt.
#[derive(Debug, Clone, Copy)]
pub struct ReceiptPolicy {
    /// Allowed clock difference with issuers, for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// The longest `exp - iat` accepted.
    pub max_lifetime: Duration,
    /// The largest token accepted, in bytes.
    pub max_bytes: usize,
}

/// How long a spent credential's single-use record outlives the last instant at which the
/// credential can be accepted: it covers the clock difference between gateway replicas (each
/// decides acceptance on its own clock) and between them and the store. Gateways' clocks must
/// agree within this margin (NTP keeps them within milliseconds).
pub const SINGLE_USE_MARGIN: Duration = Duration::from_secs(60);

impl ReceiptPolicy {
    /// The first instant (unix ms) at which a credential whose `exp` is `exp` (unix seconds) is
    /// refused as expired. It is accepted during the whole second `exp + skew`: every earlier
    /// instant, to the millisecond, accepts it.
    ///
    /// This is the one definition of acceptance in time; the single-use record's lifetime
    /// ([`ReceiptPolicy::single_use_until_ms`]) is derived from it, in the same unit.
    pub fn refused_from_ms(&self, exp: i64) -> i64 {
        exp.saturating_add(secs(self.clock_skew))
            .saturating_add(1)
            .saturating_mul(1000)
    }

    /// Whether a credential with this `exp` is still acceptable at `now_ms`.
    pub fn accepts_at(&self, exp: i64, now_ms: i64) -> bool {
        now_ms < self.refused_from_ms(exp)
    }

    /// Until when (unix ms) the single-use record of a spent credential with this `exp` must
    /// be kept: past every instant at which it can be accepted, plus [`SINGLE_USE_MARGIN`].
    pub fn single_use_until_ms(&self, exp: i64) -> i64 {
        self.refused_from_ms(exp)
            .saturating_add(i64::try_from(SINGLE_USE_MARGIN.as_millis()).unwrap_or(i64::MAX))
    }
}

impl Default for ReceiptPolicy {
    fn default() -> Self {
        ReceiptPolicy {
            clock_skew: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
            max_bytes: 8 * 1024,
        }
    }
}

/// Verifies receipts for one merchant.
#[derive(Debug, Clone)]
pub struct ReceiptVerifier {
    merchant: String,
    issuers: Arc<HashMap<String, Issuer>>,
    policy: ReceiptPolicy,
    clock: Arc<dyn Clock>,
    /// Ed25519 public keys already decompressed, by their bytes (see [`EdKeys`]).
    ed_keys: Arc<EdKeys>,
}

impl ReceiptVerifier {
    /// A verifier for `merchant` (the required `aud`).
    pub fn new(
        merchant: impl Into<String>,
        issuers: Vec<Issuer>,
        policy: ReceiptPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ReceiptVerifier {
            merchant: merchant.into(),
            issuers: Arc::new(issuers.into_iter().map(|i| (i.id.clone(), i)).collect()),
            policy,
            clock,
            ed_keys: Arc::default(),
        }
    }

    /// The trusted issuer ids, sorted (shown to wallets in 402 offers).
    pub fn issuer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.issuers.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The policy in force.
    pub fn policy(&self) -> &ReceiptPolicy {
        &self.policy
    }

    /// The merchant id (the required audience).
    pub fn merchant(&self) -> &str {
        &self.merchant
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Check a compact JWS from a trusted issuer -- size, `alg` allow-list, issuer, key,
    /// signature -- and decode its claims as `T`. Returns the issuer id with the claims.
    /// Claim semantics (`aud`, `exp`, ...) are the caller's.
    pub async fn verify_jws<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
    ) -> Result<(String, T), ReceiptError> {
        use ErrorCode as C;
        if token.len() > self.policy.max_bytes {
            return Err(ReceiptError::new(
                C::ReceiptTooLarge,
                format!(
                    "receipt is {} bytes; the limit is {}",
                    token.len(),
                    self.policy.max_bytes
                ),
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                ReceiptError::new(C::ReceiptUnsupportedAlgorithm, "alg is not EdDSA or ES256")
            }
            // An unknown alg name (e.g. "none") fails header parsing as JSON.
            ErrorKind::Json(j) if j.to_string().contains("unknown variant") => {
                ReceiptError::new(C::ReceiptUnsupportedAlgorithm, "alg is not EdDSA or ES256")
            }
            _ => ReceiptError::new(C::ReceiptMalformed, "not a compact JWS"),
        })?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(ReceiptError::new(
                C::ReceiptUnsupportedAlgorithm,
                format!("alg {:?} is not allowed; use EdDSA or ES256", header.alg),
            ));
        }
        let iss = peek_issuer(token)
            .ok_or_else(|| ReceiptError::new(C::ReceiptMalformed, "payload has no string iss"))?;
        let issuer = self.issuers.get(&iss).ok_or_else(|| {
            ReceiptError::new(C::ReceiptUntrustedIssuer, "iss is not a trusted issuer")
        })?;
        let key = issuer
            .keys
            .key(header.kid.as_deref(), header.alg)
            .await
            .map_err(|e| match e {
                KeyError::Unknown(_) => ReceiptError::new(
                    C::ReceiptUnknownKey,
                    "the issuer has no key with this kid and alg",
                ),
                KeyError::Unavailable(why) => {
                    tracing::warn!(issuer = %iss, error = %why, "issuer keys unavailable");
                    ReceiptError::new(C::IssuerUnavailable, "issuer keys could not be fetched")
                }
            })?;

        if header.alg == Algorithm::EdDSA {
            return self.verify_eddsa(token, &key).map(|claims| (iss, claims));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<T>(token, &key, &validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidAlgorithm => {
                    ReceiptError::new(C::ReceiptInvalidSignature, "signature does not verify")
                }
                ErrorKind::Json(j) => ReceiptError::new(
                    C::ReceiptMalformed,
                    format!("claims: {}", truncate(&j.to_string(), 160)),
                ),
                _ => ReceiptError::new(C::ReceiptMalformed, "not a valid receipt JWT"),
            })?;
        Ok((iss, data.claims))
    }

    /// EdDSA: the signature checked with the issuer key decompressed once (jsonwebtoken
    /// decompresses the key point on every call: ~6% of a paid request's CPU), the same
    /// `ed25519_dalek` verification jsonwebtoken runs; then the claims decoded.
    fn verify_eddsa<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        key: &DecodingKey,
    ) -> Result<T, ReceiptError> {
        use ed25519_dalek::Verifier as _;
        use ErrorCode as C;
        let bad_signature =
            || ReceiptError::new(C::ReceiptInvalidSignature, "signature does not verify");
        let vk = key
            .try_get_as_bytes()
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.get(..32)?).ok())
            .and_then(|b| self.ed_keys.get(&b))
            .ok_or_else(bad_signature)?;
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or_else(|| ReceiptError::new(C::ReceiptMalformed, "not a compact JWS"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| ed25519_dalek::Signature::from_slice(&s).ok())
            .ok_or_else(bad_signature)?;
        vk.verify(message.as_bytes(), &signature)
            .map_err(|_| bad_signature())?;
        jsonwebtoken::dangerous::insecure_decode_claims::<T>(token).map_err(|e| match e.kind() {
            ErrorKind::Json(j) => ReceiptError::new(
                C::ReceiptMalformed,
                format!("claims: {}", truncate(&j.to_string(), 160)),
            ),
            _ => ReceiptError::new(C::ReceiptMalformed, "not a valid receipt JWT"),
        })
    }

    /// Verify a compact JWS receipt.
    pub async fn verify(&self, token: &str) -> Result<Receipt, ReceiptError> {
        use ErrorCode as C;
        let (iss, c) = self.verify_jws::<Claims>(token).await?;
        if c.iss != iss {
            return Err(ReceiptError::new(C::ReceiptMalformed, "inconsistent iss"));
        }
        let aud_ok = match &c.aud {
            Audience::One(a) => *a == self.merchant,
            Audience::Many(list) => list.contains(&self.merchant),
        };
        if !aud_ok {
            return Err(ReceiptError::new(
                C::ReceiptWrongAudience,
                format!("aud must be {:?}", self.merchant),
            ));
        }
        let now_ms = self.clock.now_ms();
        let now = now_ms.div_euclid(1000);
        let skew = secs(self.policy.clock_skew);
        if !self.policy.accepts_at(c.exp, now_ms) {
            return Err(ReceiptError::new(C::ReceiptExpired, "exp is in the past"));
        }
        if c.iat > now + skew || c.nbf.is_some_and(|nbf| nbf > now + skew) {
            return Err(ReceiptError::new(
                C::ReceiptNotYetValid,
                "iat or nbf is in the future",
            ));
        }
        if c.exp < c.iat || c.exp - c.iat > secs(self.policy.max_lifetime) {
            return Err(ReceiptError::new(
                C::ReceiptLifetimeTooLong,
                format!(
                    "exp - iat must be between 0 and {} seconds",
                    self.policy.max_lifetime.as_secs()
                ),
            ));
        }
        if c.sub.is_empty() || c.sub.len() > 256 || c.jti.is_empty() || c.jti.len() > 256 {
            return Err(ReceiptError::new(
                C::ReceiptMalformed,
                "sub and jti must be 1 to 256 characters",
            ));
        }
        let amount = ReceiptAmount::parse(c.amount.as_deref(), c.amount_atomic.as_deref())
            .map_err(|e| ReceiptError::new(C::AmountInvalid, e.to_string()))?;
        Ok(Receipt {
            issuer: c.iss,
            payer: c.sub,
            id: c.jti,
            issued_at: c.iat,
            expires_at: c.exp,
            amount,
            currency: c.currency,
            kind: c.kind,
            challenge: c.challenge,
            plan: c.plan,
            mandate: c.mandate,
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Read `iss` from the (unverified) payload, only to choose which issuer's keys to try.
fn peek_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<IssuerOnly>(&bytes)
        .ok()
        .map(|c| c.iss)
}

/// Ed25519 verifying keys by their 32 bytes, decompressed once. Bounded: past 1,024 distinct keys
/// (key rotation over a long uptime) it starts again.
#[derive(Debug, Default)]
struct EdKeys(std::sync::RwLock<HashMap<[u8; 32], ed25519_dalek::VerifyingKey>>);

impl EdKeys {
    fn get(&self, bytes: &[u8; 32]) -> Option<ed25519_dalek::VerifyingKey> {
        if let Some(vk) = self.0.read().ok().and_then(|m| m.get(bytes).copied()) {
            return Some(vk);
        }
        let vk = ed25519_dalek::VerifyingKey::from_bytes(bytes).ok()?;
        if let Ok(mut m) = self.0.write() {
            if m.len() >= 1024 {
                m.clear();
            }
            m.insert(*bytes, vk);
        }
        Some(vk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_and_single_use_share_one_boundary() {
        // Every skew, every exp: accepted through the last millisecond of second exp + skew,
        // refused from the next one, and the single-use record outlives acceptance by the margin.
        for skew in [0u64, 1, 30, 600] {
            let policy = ReceiptPolicy {
                clock_skew: Duration::from_secs(skew),
                ..ReceiptPolicy::default()
            };
            for exp in [0i64, 1_700_000_000, 1_800_000_123] {
                let end = (exp + i64::try_from(skew).unwrap_or(0) + 1) * 1000;
                assert!(policy.accepts_at(exp, end - 1));
                assert!(!policy.accepts_at(exp, end));
                assert_eq!(policy.refused_from_ms(exp), end);
                assert_eq!(policy.single_use_until_ms(exp), end + 60_000);
            }
        }
    }
}

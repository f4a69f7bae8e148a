//! Access tokens: issued by the gateway itself after a top-up, checked on every request.
//!
//! The gateway both issues and checks them, so a MAC suffices (HMAC-SHA256, about a
//! microsecond) -- no asymmetric signature on the hot path. Format:
//! `tg1.<base64url(JSON {sub, iat, exp, kid})>.<base64url(HMAC(key, "tg1." + payload))>`.
//! The key is derived from the gateway secret, so every replica sharing `TOLLGATE_SECRET`
//! accepts every other replica's tokens; `kid` names the key so a rotated secret refuses old
//! tokens cleanly (`token_invalid`) instead of mis-verifying them. Revocation is per payer
//! (the block list, checked in the same atomic step as the balance).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The token prefix (also how a Tollgate bearer token is told apart from the upstream's own).
pub const TOKEN_PREFIX: &str = "tg1.";

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed token, or issued under another key.
    #[error("invalid access token")]
    Invalid,
    /// Past its expiry.
    #[error("access token expired")]
    Expired,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The payer.
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
    /// Key id.
    pub kid: String,
    /// The mandate this token is bound to (verified when the token was issued): every
    /// payment with the token counts against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mandate: Option<crate::mandate::Mandate>,
    /// The key this token is bound to (RFC 9449 `cnf`): every use needs a DPoP proof signed
    /// by it ([`crate::dpop`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// A bound token's key (RFC 7800 / RFC 9449 `cnf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The key's RFC 7638 SHA-256 thumbprint (base64url).
    pub jkt: String,
}

/// What a new token is bound to besides its payer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Binding<'a> {
    /// A mandate (the token expires with it at the latest).
    pub mandate: Option<&'a crate::mandate::Mandate>,
    /// A DPoP key thumbprint (`cnf.jkt`).
    pub jkt: Option<&'a str>,
}

/// The access-token MAC key.
#[derive(Clone)]
pub struct TokenKey {
    mac: HmacSha256,
    kid: String,
    /// Tokens whose MAC checked out, by their exact text: a busy agent sends the same token on
    /// every request, and a lookup is cheaper than the MAC and the JSON (a profile of the lease
    /// path put them at a tenth of the gateway's instructions). Only a verified token's text
    /// gets in, so a hit is that same token; expiry is checked on every use.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, TokenClaims>>>,
}

/// Most tokens remembered as verified (then the memory starts over).
const VERIFIED_MAX: usize = 8192;

debug_fields!(TokenKey { kid });

impl TokenKey {
    /// Derive the token key from the gateway secret (domain-separated from challenge ids).
    pub fn derive(secret: &[u8]) -> Result<Self, crate::challenge::SecretError> {
        use crate::challenge::SecretError;
        let mut derive = HmacSha256::new_from_slice(secret).map_err(|_| SecretError::KeyLength)?;
        derive.update(b"tollgate access token key v1");
        let key = derive.finalize().into_bytes();
        let kid: String = Sha256::digest(key)[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mac = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::KeyLength)?;
        Ok(TokenKey {
            mac,
            kid,
            verified: Default::default(),
        })
    }

    /// Issue a token for `payer`, valid for `ttl_secs` from `now`.
    pub fn issue(&self, payer: &str, now: i64, ttl_secs: i64) -> String {
        self.issue_bound(payer, now, ttl_secs, Binding::default())
    }

    /// Issue a token bound to a mandate (it expires with the mandate at the latest) and to a
    /// DPoP key.
    pub fn issue_bound(&self, payer: &str, now: i64, ttl_secs: i64, bound: Binding<'_>) -> String {
        let mandate = bound.mandate;
        let exp = mandate.map_or(now + ttl_secs, |m| (now + ttl_secs).min(m.expires_at));
        let claims = TokenClaims {
            sub: payer.to_owned(),
            iat: now,
            exp,
            kid: self.kid.clone(),
            mandate: mandate.cloned(),
            cnf: bound.jkt.map(|jkt| Confirmation {
                jkt: jkt.to_owned(),
            }),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signed = format!("{TOKEN_PREFIX}{payload}");
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Check a token's MAC and expiry.
    pub fn verify(&self, token: &str, now: i64) -> Result<TokenClaims, TokenError> {
        if token.len() > 2048 {
            return Err(TokenError::Invalid);
        }
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(token).cloned());
        let claims = match known {
            Some(c) => c,
            None => {
                let c = self.check_mac(token)?;
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_MAX {
                        m.clear();
                    }
                    m.insert(token.to_owned(), c.clone());
                }
                c
            }
        };
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// The MAC, the payload and the key id of a token (not its expiry).
    fn check_mac(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let payload = signed
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let claims: TokenClaims =
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid)?;
        if claims.kid != self.kid || claims.sub.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_and_tampering() {
        let k = TokenKey::derive(&[3u8; 32]).unwrap();
        let t = k.issue("agent", 1000, 60);
        assert!(t.starts_with("tg1."));
        let c = k.verify(&t, 1059).unwrap();
        assert_eq!((c.sub.as_str(), c.exp), ("agent", 1060));
        assert_eq!(k.verify(&t, 1060), Err(TokenError::Expired));
        // Another secret, or an edited payload, is refused.
        let other = TokenKey::derive(&[4u8; 32]).unwrap();
        assert_eq!(other.verify(&t, 1000), Err(TokenError::Invalid));
        let (signed, tag) = t.rsplit_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"other","iat":1000,"exp":9999,"kid":"x"}"#);
        assert_eq!(
            k.verify(&format!("tg1.{forged_payload}.{tag}"), 1000),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            k.verify(&format!("{signed}.AAAA"), 1000),
            Err(TokenError::Invalid)
        );
        for bad in ["", "tg1.", "tg1..", "abc.def", "tg1.!!.!!"] {
            assert_eq!(k.verify(bad, 0), Err(TokenError::Invalid), "{bad}");
        }
    }

    #[test]
    fn a_bound_token_carries_its_key_and_mandate_binding() {
        let k = TokenKey::derive(&[3u8; 32]).unwrap();
        let t = k.issue_bound(
            "agent",
            1000,
            60,
            Binding {
                mandate: None,
                jkt: Some("thumb"),
            },
        );
        let c = k.verify(&t, 1000).unwrap();
        assert_eq!(
            c.cnf,
            Some(Confirmation {
                jkt: "thumb".into()
            })
        );
        // An unbound token has no cnf (and its payload no "cnf" member).
        let plain = k.issue("agent", 1000, 60);
        assert_eq!(k.verify(&plain, 1000).unwrap().cnf, None);
        let payload = plain.split('.').nth(1).unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert!(!json.contains("cnf"), "{json}");
    }

    #[test]
    fn a_remembered_token_is_only_that_token() {
        let k = TokenKey::derive(&[3u8; 32]).unwrap();
        let t = k.issue("agent", 1000, 60);
        assert!(k.verify(&t, 1000).is_ok());
        // Remembered now: every other text is still checked in full.
        let (signed, tag) = t.rsplit_once('.').unwrap();
        let mut flipped = tag.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{signed}.{}", String::from_utf8(flipped).unwrap());
        assert_eq!(k.verify(&flipped, 1000), Err(TokenError::Invalid));
        assert_eq!(k.verify(&format!("{t}x"), 1000), Err(TokenError::Invalid));
        // Expiry is judged on every use, remembered or not.
        assert_eq!(k.verify(&t, 1060), Err(TokenError::Expired));
        // Another key (another secret) never sees this key's memory.
        let other = TokenKey::derive(&[4u8; 32]).unwrap();
        assert_eq!(other.verify(&t, 1000), Err(TokenError::Invalid));
        // Past the bound the memory starts over; tokens keep verifying.
        for i in 0..(VERIFIED_MAX + 10) {
            let t = k.issue(&format!("p{i}"), 1000, 60);
            assert_eq!(k.verify(&t, 1000).unwrap().sub, format!("p{i}"));
        }
        assert!(k.verified.lock().unwrap().len() <= VERIFIED_MAX);
        assert!(k.verify(&t, 1000).is_ok());
    }
}

//! Stateless challenge ids.
//!
//! A 402 answer names a challenge id a wallet can bind its receipt to. Issuing one must write
//! nothing anywhere (a flood of unpaid requests cannot fill Redis), so the id *is* its own
//! record: `c1.<expiry unix seconds>.<base64url HMAC-SHA256>`, where the MAC covers the merchant,
//! route, method, price in minor units, currency and expiry under the gateway secret. Checking
//! one recomputes the MAC for the request at hand; a challenge for another route, method or
//! price does not verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The minimum secret length, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a challenge id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Not of the form `c1.<expiry>.<mac>`.
    #[error("malformed challenge id")]
    Malformed,
    /// The MAC does not match this request's route, method and price.
    #[error("challenge was issued for another route, method or price")]
    Mismatch,
    /// Past its expiry.
    #[error("challenge expired")]
    Expired,
}

/// What a challenge binds: everything a payment for it must agree with.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeTerms<'a> {
    /// Merchant id (receipt `aud`).
    pub merchant: &'a str,
    /// Route id.
    pub route: &'a str,
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Price in minor units.
    pub amount_minor: u64,
    /// Currency code.
    pub currency: &'a str,
}

/// The HMAC key for challenge ids (the gateway secret). Replicas share it.
#[derive(Clone)]
pub struct ChallengeKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(..)")
    }
}

/// Why the gateway secret cannot key challenge ids and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Under [`MIN_SECRET_LEN`] bytes.
    #[error("the gateway secret must be at least {MIN_SECRET_LEN} bytes")]
    TooShort,
    /// The MAC refused the key length (does not happen with HMAC).
    #[error("the gateway secret cannot key HMAC-SHA256")]
    KeyLength,
}

impl ChallengeKey {
    /// A key from a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn try_new(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| SecretError::KeyLength)?;
        Ok(ChallengeKey { mac })
    }

    /// The MAC state over the terms and expiry (length-prefixed, so no two different term sets
    /// share a byte string).
    fn mac(&self, t: &ChallengeTerms<'_>, expires: i64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        for part in [t.merchant, t.route, t.method, t.currency] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&t.amount_minor.to_be_bytes());
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// Issue a challenge id for these terms, valid until `expires` (unix seconds).
    pub fn issue(&self, terms: &ChallengeTerms<'_>, expires: i64) -> String {
        format!(
            "c1.{expires}.{}",
            URL_SAFE_NO_PAD.encode(self.mac(terms, expires).finalize().into_bytes())
        )
    }

    /// Check a challenge id against the terms of the request at hand. Returns its expiry.
    pub fn verify(
        &self,
        id: &str,
        terms: &ChallengeTerms<'_>,
        now_secs: i64,
    ) -> Result<i64, ChallengeError> {
        let mut parts = id.split('.');
        let (Some("c1"), Some(exp), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ChallengeError::Malformed);
        };
        if exp.is_empty() || exp.len() > 12 || !exp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ChallengeError::Malformed);
        }
        let expires: i64 = exp.parse().map_err(|_| ChallengeError::Malformed)?;
        let given = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| ChallengeError::Malformed)?;
        if given.len() != 32 {
            return Err(ChallengeError::Malformed);
        }
        // `verify_slice` compares in constant time.
        self.mac(terms, expires)
            .verify_slice(&given)
            .map_err(|_| ChallengeError::Mismatch)?;
        if expires < now_secs {
            return Err(ChallengeError::Expired);
        }
        Ok(expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> ChallengeTerms<'static> {
        ChallengeTerms {
            merchant: "m",
            route: "compute",
            method: "POST",
            amount_minor: 10_000,
            currency: "USD",
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let k = ChallengeKey::try_new(&[7u8; 32]).unwrap();
        let id = k.issue(&terms(), 1_000);
        assert_eq!(k.verify(&id, &terms(), 999), Ok(1_000));
        assert_eq!(k.verify(&id, &terms(), 1_001), Err(ChallengeError::Expired));
        // Every term is bound: changing any one of them is a mismatch.
        let t = terms();
        for other in [
            ChallengeTerms { merchant: "n", ..t },
            ChallengeTerms {
                route: "storage",
                ..t
            },
            ChallengeTerms { method: "GET", ..t },
            ChallengeTerms {
                amount_minor: 1,
                ..t
            },
            ChallengeTerms {
                currency: "EUR",
                ..t
            },
        ] {
            assert_eq!(k.verify(&id, &other, 0), Err(ChallengeError::Mismatch));
        }
        // Extending the expiry invalidates the MAC.
        let forged = id.replacen("c1.1000.", "c1.9000.", 1);
        assert_eq!(
            k.verify(&forged, &terms(), 0),
            Err(ChallengeError::Mismatch)
        );
        let other_key = ChallengeKey::try_new(&[8u8; 32]).unwrap();
        assert_eq!(
            other_key.verify(&id, &terms(), 0),
            Err(ChallengeError::Mismatch)
        );
    }

    #[test]
    fn malformed_ids() {
        let k = ChallengeKey::try_new(&[7u8; 32]).unwrap();
        for bad in [
            "",
            "c1",
            "c1.1.",
            "c2.1.AAAA",
            "c1.x.AAAA",
            "c1.1.AAAA.extra",
            "c1.1.!!",
        ] {
            assert_eq!(
                k.verify(bad, &terms(), 0),
                Err(ChallengeError::Malformed),
                "{bad}"
            );
        }
        assert!(ChallengeKey::try_new(b"short").is_err());
    }
}

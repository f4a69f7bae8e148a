//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `webhook-signature` is
//! `v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the
//! endpoint's secret (`whsec_` and the base64 key, as the spec's libraries take it).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a secret is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not `whsec_<base64>`.
    #[error("a webhook secret is \"whsec_\" and base64 (e.g. whsec_ followed by the base64 of 32 random bytes: `openssl rand -base64 32`)")]
    Format,
    /// Shorter than 16 bytes.
    #[error("a webhook secret's key must be at least 16 bytes (24 base64 characters); use 32 random bytes")]
    Short,
}

/// The HMAC key of a `whsec_<base64>` secret.
pub fn parse_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .ok_or(SecretError::Format)?;
    let key = STANDARD.decode(b64).map_err(|_| SecretError::Format)?;
    if key.len() < 16 {
        return Err(SecretError::Short);
    }
    Ok(key)
}

/// The `webhook-signature` header value for one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and its reference libraries).
    #[test]
    fn signs_the_specifications_example() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                r#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(
            parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Format)
        );
        assert_eq!(parse_secret("whsec_not base64!"), Err(SecretError::Format));
        assert_eq!(parse_secret("whsec_c2hvcnQ="), Err(SecretError::Short));
    }
}

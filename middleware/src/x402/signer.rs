//! The paying side of x402 `exact` and `upto`: a local EVM key that signs EIP-3009
//! `TransferWithAuthorization`s (and Permit2 `upto` permits) for an offer found in a 402's
//! `accepts` (for agents, wallets and tests).
//!
//! ```
//! use tollgate_middleware::x402::signer::LocalSigner;
//! # fn demo(offer: &serde_json::Value) -> Result<(), tollgate_middleware::x402::signer::SignerError> {
//! let signer = LocalSigner::random();
//! let payload = signer.pay(offer, 1_795_370_000)?; // base64 it into PAYMENT-SIGNATURE
//! # Ok(()) }
//! ```

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use k256::ecdsa::SigningKey;
use serde_json::{json, Value};

use super::upto::{
    permit2_domain, PermitWitnessTransferFrom, TokenPermissions, Witness, UPTO_PROXY, UPTO_SCHEME,
};
use super::{chain_id_of, parse_address, parse_uint, TransferWithAuthorization, EXACT_SCHEME};

/// How far back `validAfter` is set (seconds), as the reference clients do: a little clock
/// skew between payer and server never makes an authorization "not yet valid".
pub const VALID_AFTER_BACKDATE_SECS: u64 = 600;

/// The terms of one EIP-3009 transfer authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Payer.
    pub from: Address,
    /// Recipient (`payTo`).
    pub to: Address,
    /// Amount in atomic units.
    pub value: U256,
    /// Not valid before (unix seconds).
    pub valid_after: u64,
    /// Not valid after (unix seconds).
    pub valid_before: u64,
    /// Single-use nonce.
    pub nonce: B256,
}

/// A secp256k1 key held in memory.
#[derive(Clone)]
pub struct LocalSigner {
    /// The private key.
    key: SigningKey,
    /// Its address.
    address: Address,
}

// Never print the key.
debug_fields!(LocalSigner { address });

/// Why an offer cannot be signed for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The offer is not an x402 `exact` EVM offer this signer understands (which field).
    #[error("{0}")]
    Offer(&'static str),
    /// Not a valid secp256k1 key.
    #[error("not a valid secp256k1 key")]
    Key,
    /// The signature could not be made.
    #[error("signing failed")]
    Signing,
}

impl From<&'static str> for SignerError {
    fn from(what: &'static str) -> Self {
        SignerError::Offer(what)
    }
}

/// The token's EIP-712 domain named by a `PaymentRequirements` entry.
fn domain_of(requirements: &Value) -> Result<Eip712Domain, SignerError> {
    let s = |p: &str| requirements.pointer(p).and_then(Value::as_str);
    let chain = s("/network")
        .and_then(chain_id_of)
        .ok_or("network is not eip155:<chain id>")?;
    let asset = s("/asset")
        .and_then(parse_address)
        .ok_or("asset is not an address")?;
    let name = s("/extra/name").ok_or("extra.name is missing")?;
    let version = s("/extra/version").ok_or("extra.version is missing")?;
    Ok(Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain)),
        Some(asset),
        None,
    ))
}

impl LocalSigner {
    /// A key from its 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, SignerError> {
        let key = SigningKey::from_bytes(secret.into()).map_err(|_| SignerError::Key)?;
        let address = Address::from_public_key(key.verifying_key());
        Ok(LocalSigner { key, address })
    }

    /// A fresh random key.
    pub fn random() -> Self {
        loop {
            if let Ok(s) = Self::from_bytes(&rand::random::<[u8; 32]>()) {
                return s;
            }
        }
    }

    /// The payer address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The usual terms for an offer: exact amount to `payTo`, valid from 10 minutes ago until
    /// `now + maxTimeoutSeconds`, a random nonce.
    pub fn authorization_for(
        &self,
        requirements: &Value,
        now: u64,
    ) -> Result<Authorization, SignerError> {
        if requirements.get("scheme").and_then(Value::as_str) != Some(EXACT_SCHEME) {
            return Err("not an exact offer".into());
        }
        let to = requirements
            .get("payTo")
            .and_then(Value::as_str)
            .and_then(parse_address)
            .ok_or("payTo is not an address")?;
        let value = parse_uint(requirements.get("amount")).ok_or("amount is not an integer")?;
        let timeout = requirements
            .get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60);
        Ok(Authorization {
            from: self.address,
            to,
            value,
            valid_after: now.saturating_sub(VALID_AFTER_BACKDATE_SECS),
            valid_before: now.saturating_add(timeout),
            nonce: B256::from(rand::random::<[u8; 32]>()),
        })
    }

    /// Sign `auth` under the offer's token domain: the x402 v2 `PaymentPayload` (with the
    /// offer echoed as `accepted`).
    pub fn payload(
        &self,
        requirements: &Value,
        auth: &Authorization,
    ) -> Result<Value, SignerError> {
        let domain = domain_of(requirements)?;
        let msg = TransferWithAuthorization {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            validAfter: U256::from(auth.valid_after),
            validBefore: U256::from(auth.valid_before),
            nonce: auth.nonce,
        };
        let signature = self.sign(msg.eip712_signing_hash(&domain))?;
        Ok(json!({
            "x402Version": 2,
            "accepted": requirements,
            "payload": {
                "signature": signature,
                "authorization": {
                    "from": auth.from.to_checksum(None),
                    "to": auth.to.to_checksum(None),
                    "value": auth.value.to_string(),
                    "validAfter": auth.valid_after.to_string(),
                    "validBefore": auth.valid_before.to_string(),
                    "nonce": auth.nonce.to_string(),
                }
            }
        }))
    }

    /// Pay an offer with the usual terms.
    pub fn pay(&self, requirements: &Value, now: u64) -> Result<Value, SignerError> {
        self.payload(requirements, &self.authorization_for(requirements, now)?)
    }

    /// The terms the official SDK signs for an `upto` offer: its maximum of its asset, the
    /// upto proxy as spender, `validAfter` 0, `deadline = now + maxTimeoutSeconds`, a random
    /// nonce, `witness.facilitator = extra.facilitatorAddress`.
    pub fn permit_for(&self, requirements: &Value, now: u64) -> Result<Permit, SignerError> {
        if requirements.get("scheme").and_then(Value::as_str) != Some(UPTO_SCHEME) {
            return Err("not an upto offer".into());
        }
        let addr = |p: &str, what: &'static str| {
            requirements
                .pointer(p)
                .and_then(Value::as_str)
                .and_then(parse_address)
                .ok_or(SignerError::Offer(what))
        };
        let timeout = requirements
            .get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60);
        Ok(Permit {
            token: addr("/asset", "asset is not an address")?,
            amount: parse_uint(requirements.get("amount")).ok_or("amount is not an integer")?,
            spender: UPTO_PROXY,
            nonce: U256::from_be_bytes(rand::random::<[u8; 32]>()),
            deadline: now.saturating_add(timeout),
            to: addr("/payTo", "payTo is not an address")?,
            facilitator: addr(
                "/extra/facilitatorAddress",
                "extra.facilitatorAddress is not an address",
            )?,
            valid_after: 0,
        })
    }

    /// Sign `permit` under Permit2's domain on the offer's chain: the x402 v2 `upto`
    /// `PaymentPayload` (with the offer echoed as `accepted`), as the official SDK sends it.
    pub fn upto_payload(&self, requirements: &Value, p: &Permit) -> Result<Value, SignerError> {
        let chain = requirements
            .get("network")
            .and_then(Value::as_str)
            .and_then(chain_id_of)
            .ok_or("network is not eip155:<chain id>")?;
        let msg = PermitWitnessTransferFrom {
            permitted: TokenPermissions {
                token: p.token,
                amount: p.amount,
            },
            spender: p.spender,
            nonce: p.nonce,
            deadline: U256::from(p.deadline),
            witness: Witness {
                to: p.to,
                facilitator: p.facilitator,
                validAfter: U256::from(p.valid_after),
            },
        };
        let digest = msg.eip712_signing_hash(&permit2_domain(chain));
        let signature = self.sign(digest)?;
        Ok(json!({
            "x402Version": 2,
            "accepted": requirements,
            "payload": {
                "signature": signature,
                "permit2Authorization": {
                    "from": self.address.to_checksum(None),
                    "permitted": {"token": p.token.to_checksum(None), "amount": p.amount.to_string()},
                    "spender": p.spender.to_checksum(None),
                    "nonce": p.nonce.to_string(),
                    "deadline": p.deadline.to_string(),
                    "witness": {
                        "to": p.to.to_checksum(None),
                        "facilitator": p.facilitator.to_checksum(None),
                        "validAfter": p.valid_after.to_string(),
                    },
                }
            }
        }))
    }

    /// Pay an `upto` offer with the usual terms.
    pub fn pay_upto(&self, requirements: &Value, now: u64) -> Result<Value, SignerError> {
        self.upto_payload(requirements, &self.permit_for(requirements, now)?)
    }

    /// A 65-byte `r || s || v` signature of a digest, as `0x` hex.
    fn sign(&self, digest: B256) -> Result<String, SignerError> {
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest.as_slice())
            .map_err(|_| SignerError::Signing)?;
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(27 + recid.to_byte());
        Ok(format!("0x{}", alloy_primitives::hex::encode(bytes)))
    }
}

/// The terms of one Permit2 `upto` permit (see [`super::upto`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The token (`permitted.token`).
    pub token: Address,
    /// The maximum (`permitted.amount`, atomic units).
    pub amount: U256,
    /// Who may pull the funds (the x402 upto proxy).
    pub spender: Address,
    /// Permit2's single-use nonce.
    pub nonce: U256,
    /// Not valid after (unix seconds).
    pub deadline: u64,
    /// Recipient (`payTo`).
    pub to: Address,
    /// The facilitator allowed to settle.
    pub facilitator: Address,
    /// Not valid before (unix seconds).
    pub valid_after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use crate::x402::{verify, ExactOffer};

    #[test]
    fn pays_an_offer_that_verifies() {
        let o = ExactOffer::try_new(
            "eip155:8453",
            "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "USD Coin",
            "2",
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
            "1000",
            60,
            Currency::try_new("USDC", 6).unwrap(),
        )
        .unwrap();
        let s = LocalSigner::random();
        let p = s.pay(&o.requirements(), 1_000_000).unwrap();
        let v = verify(&p, std::slice::from_ref(&o), 1_000_000, 6).unwrap();
        assert_eq!(v.from, s.address());
        assert!(format!("{s:?}").contains("address"));
        assert!(s.pay(&json!({"scheme": "upto"}), 1).is_err());
        let mut r = o.requirements();
        r["network"] = "eip155:x".into();
        assert!(s.pay(&r, 1).is_err());
    }
}

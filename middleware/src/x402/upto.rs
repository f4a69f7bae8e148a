//! x402 `upto` payments on EVM chains (Permit2): the payer signs a **maximum**; the server
//! settles the amount actually used, at most that maximum (possibly nothing).
//!
//! The payer signs Permit2's `PermitWitnessTransferFrom` with the `upto` witness
//! `Witness(address to,address facilitator,uint256 validAfter)`, under the domain
//! `(name = "Permit2", chainId, verifyingContract = Permit2)`, naming the x402 upto proxy
//! ([`UPTO_PROXY`]) as spender; the facilitator named in the witness later calls the proxy's
//! `settle(permit, amount, owner, witness, signature)` with the measured `amount`. This is
//! the wire format of the official x402 SDK (2.25.0, `x402/mechanisms/evm/upto`).
//!
//! - [`UptoOffer`]: one way to pay a metered route (its `requirements` carry the maximum as
//!   `amount`, and `extra: {name, version, assetTransferMethod: "permit2",
//!   facilitatorAddress}`).
//! - [`verify`]: the local checks of a payload, in the SDK facilitator's order and with its
//!   reason strings (see docs/x402.md).

use alloy_primitives::{address, Address, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use serde_json::{json, Value};

use super::{
    accepted_offer, chain_id_of, check_max_timeout, check_token_domain, latest_expiry,
    parse_address, parse_hex, parse_uint, recover_signer, refuse, Echoed, ExactError, Offer,
    Reason, MAX_AMOUNT,
};
use crate::money::Currency;

/// The x402 scheme name handled here.
pub const UPTO_SCHEME: &str = "upto";
/// The asset transfer method of `upto` offers.
pub const PERMIT2_METHOD: &str = "permit2";
/// The canonical Permit2 contract (same address on every EVM chain).
pub const PERMIT2: Address = address!("000000000022D473030F116dDEE9F6B43aC78BA3");
/// The x402 upto Permit2 proxy: the only spender accepted.
pub const UPTO_PROXY: Address = address!("4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");
/// The `issuer` of `upto` authorizations in the store's single-use records:
/// `(STORE_ISSUER, nonce)` under the payer's address.
pub const STORE_ISSUER: &str = "x402:upto";
/// The longest hex signature read (65 bytes = 130 hex digits, plus `0x`); anything longer
/// (ERC-6492 wrappers, contract-wallet proofs) cannot be checked locally and is refused
/// before it is decoded.
pub const MAX_SIGNATURE_CHARS: usize = 132;

#[allow(missing_docs, unreachable_pub)]
mod typed {
    alloy_sol_types::sol! {
        /// Permit2's token and maximum amount.
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        /// The x402 `upto` witness.
        struct Witness {
            address to;
            address facilitator;
            uint256 validAfter;
        }
        /// Permit2's signed message with the `upto` witness.
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            Witness witness;
        }
    }
}

pub(crate) use self::typed::{PermitWitnessTransferFrom, TokenPermissions, Witness};

/// Permit2's EIP-712 domain on `chain_id` (no `version`).
pub fn permit2_domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some("Permit2".into()),
        None,
        Some(U256::from(chain_id)),
        Some(PERMIT2),
        None,
    )
}

/// One way to pay a metered route with x402 `upto` on an EVM chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UptoOffer {
    /// `eip155:<chain id>`.
    pub network: String,
    /// The chain id (Permit2 domain `chainId`).
    pub chain_id: u64,
    /// The token contract (`permitted.token`).
    pub asset: Address,
    /// The token's EIP-712 `name` (passed in `extra`, as the SDK does).
    pub name: String,
    /// The token's EIP-712 `version`.
    pub version: String,
    /// Who is paid (`witness.to`).
    pub pay_to: Address,
    /// The facilitator allowed to settle (`witness.facilitator`, `extra.facilitatorAddress`).
    pub facilitator: Address,
    /// The maximum in the token's atomic units (`permitted.amount` must equal it).
    pub max: u64,
    /// `maxTimeoutSeconds` (the longest permit accepted).
    pub max_timeout_secs: u64,
    /// The ledger's currency for this offer (code and decimals).
    pub currency: Currency,
}

impl UptoOffer {
    /// An offer; fails with the offending field named.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        network: &str,
        asset: &str,
        (name, version): (&str, &str),
        pay_to: &str,
        facilitator: &str,
        max: u64,
        max_timeout_secs: u64,
        currency: Currency,
    ) -> Result<Self, (&'static str, String)> {
        let addr = |s: &str, field: &'static str| {
            parse_address(s).filter(|a| *a != Address::ZERO).ok_or((
                field,
                "must be a non-zero 0x-prefixed 20-byte address (EIP-55 checksum when mixed case)"
                    .to_owned(),
            ))
        };
        let chain_id = chain_id_of(network)
            .ok_or(("network", format!("{network:?} is not eip155:<chain id>")))?;
        let asset = addr(asset, "asset")?;
        let pay_to = addr(pay_to, "pay_to")?;
        let facilitator = addr(facilitator, "facilitator_address")?;
        check_token_domain(name, version)?;
        if max == 0 || max > MAX_AMOUNT {
            return Err((
                "max",
                format!("must be an integer of atomic units, 1 to {MAX_AMOUNT}"),
            ));
        }
        check_max_timeout(max_timeout_secs)?;
        Ok(UptoOffer {
            network: network.to_owned(),
            chain_id,
            asset,
            name: name.to_owned(),
            version: version.to_owned(),
            pay_to,
            facilitator,
            max,
            max_timeout_secs,
            currency,
        })
    }

    /// The x402 v2 `PaymentRequirements` asking `amount` atomic units: the maximum in the
    /// 402's `accepts` and at `/verify`, the measured cost at `/settle`.
    pub fn requirements_for(&self, amount: u64) -> Value {
        json!({
            "scheme": UPTO_SCHEME,
            "network": self.network,
            "amount": amount.to_string(),
            "asset": self.asset.to_checksum(None),
            "payTo": self.pay_to.to_checksum(None),
            "maxTimeoutSeconds": self.max_timeout_secs,
            "extra": {
                "name": self.name,
                "version": self.version,
                "assetTransferMethod": PERMIT2_METHOD,
                "facilitatorAddress": self.facilitator.to_checksum(None),
            },
        })
    }

    /// The offer as listed in `accepts` (amount = the maximum).
    pub fn requirements(&self) -> Value {
        self.requirements_for(self.max)
    }
}

impl Offer for UptoOffer {
    const SCHEME: &'static str = UPTO_SCHEME;
    const OTHER_SCHEME: Reason = Reason::UptoScheme;
    const OTHER_NETWORK: Reason = Reason::UptoNetworkMismatch;
    const ECHOED: &'static str = "scheme, network, asset, payTo, amount, extra.facilitatorAddress";

    fn echoed(&self) -> Echoed<'_> {
        Echoed {
            network: &self.network,
            asset: self.asset,
            pay_to: self.pay_to,
            amount: self.max,
        }
    }

    /// The facilitator allowed to settle (the token's name and version are not checked).
    fn extra_matches(&self, extra: &Value) -> bool {
        let s = |k: &str| extra.get(k).and_then(Value::as_str);
        s("facilitatorAddress").and_then(parse_address) == Some(self.facilitator)
            && s("assetTransferMethod").is_none_or(|m| m == PERMIT2_METHOD)
    }
}

/// An `upto` payload that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Index of the offer it pays.
    pub offer: usize,
    /// The payer (`permit2Authorization.from`).
    pub from: Address,
    /// The Permit2 nonce (single use per payer, on chain and here).
    pub nonce: U256,
    /// Unix seconds after which the permit is void on chain.
    pub deadline: u64,
}

/// The terms read from `payload.permit2Authorization`, before any check.
struct Terms {
    from: Address,
    token: Option<Address>,
    amount: U256,
    spender: Option<Address>,
    nonce: U256,
    deadline: U256,
    to: Option<Address>,
    facilitator: Option<Address>,
    valid_after: U256,
}

/// Read the permit; a missing or malformed field is `invalid_permit2_payload_format`.
/// Addresses that do not parse are kept as `None`: their own check names them.
fn terms(inner: &Value) -> Result<Terms, ExactError> {
    let bad = |what: &str| {
        refuse(
            Reason::Permit2PayloadFormat,
            format!("payload.permit2Authorization.{what} is missing or malformed"),
        )
    };
    let auth = inner
        .get("permit2Authorization")
        .filter(|a| a.is_object())
        .ok_or_else(|| bad("(the object)"))?;
    let addr = |p: &str| {
        auth.pointer(p)
            .and_then(Value::as_str)
            .and_then(parse_address)
    };
    let uint = |p: &str, what: &str| parse_uint(auth.pointer(p)).ok_or_else(|| bad(what));
    if !auth.get("witness").is_some_and(Value::is_object)
        || !auth.get("permitted").is_some_and(Value::is_object)
    {
        return Err(bad("permitted / witness"));
    }
    Ok(Terms {
        from: addr("/from").ok_or_else(|| bad("from"))?,
        token: addr("/permitted/token"),
        amount: uint("/permitted/amount", "permitted.amount")?,
        spender: addr("/spender"),
        nonce: uint("/nonce", "nonce")?,
        deadline: uint("/deadline", "deadline")?,
        to: addr("/witness/to"),
        facilitator: addr("/witness/facilitator"),
        valid_after: uint("/witness/validAfter", "witness.validAfter")?,
    })
}

/// Check an x402 v2 `upto` `PaymentPayload` against a route's offers at `now` (unix
/// seconds), with no network call: the SDK facilitator's checks 1-10, in its order.
pub fn verify(
    payload: &Value,
    offers: &[UptoOffer],
    now: u64,
    margin_secs: u64,
) -> Result<Verified, ExactError> {
    let index = accepted_offer(payload, offers)?;
    let offer = &offers[index];
    let inner = payload
        .get("payload")
        .filter(|p| p.is_object())
        .ok_or_else(|| refuse(Reason::Permit2PayloadFormat, "payload must be an object"))?;
    let t = terms(inner)?;
    let fail = |reason: Reason, detail: String| ExactError {
        payer: Some(t.from),
        ..refuse(reason, detail)
    };
    let checksum = |a: Address| a.to_checksum(None);
    if t.spender != Some(UPTO_PROXY) {
        return Err(fail(
            Reason::Permit2Spender,
            format!(
                "spender must be the x402 upto proxy {}",
                checksum(UPTO_PROXY)
            ),
        ));
    }
    if t.to != Some(offer.pay_to) {
        return Err(fail(
            Reason::Permit2Recipient,
            format!("witness.to must be {}", checksum(offer.pay_to)),
        ));
    }
    if t.facilitator != Some(offer.facilitator) {
        return Err(fail(
            Reason::UptoFacilitatorMismatch,
            format!(
                "witness.facilitator must be {}",
                checksum(offer.facilitator)
            ),
        ));
    }
    if t.deadline < U256::from(now.saturating_add(margin_secs)) {
        return Err(fail(
            Reason::Permit2DeadlineExpired,
            format!("deadline must be at least {margin_secs} s ahead"),
        ));
    }
    let latest = latest_expiry(now, offer.max_timeout_secs);
    if t.deadline > U256::from(latest) {
        return Err(fail(
            Reason::Permit2DeadlineTooFar,
            format!(
                "deadline may be at most maxTimeoutSeconds ({}) ahead",
                offer.max_timeout_secs
            ),
        ));
    }
    if t.valid_after > U256::from(now) {
        return Err(fail(
            Reason::Permit2NotYetValid,
            "witness.validAfter is in the future".into(),
        ));
    }
    if t.amount != U256::from(offer.max) {
        return Err(fail(
            Reason::Permit2AmountMismatch,
            format!(
                "permitted.amount must be exactly the offer's maximum {}",
                offer.max
            ),
        ));
    }
    if t.token != Some(offer.asset) {
        return Err(fail(
            Reason::Permit2TokenMismatch,
            format!("permitted.token must be {}", checksum(offer.asset)),
        ));
    }
    let signature = inner
        .get("signature")
        .and_then(Value::as_str)
        .filter(|s| s.len() <= MAX_SIGNATURE_CHARS)
        .and_then(parse_hex);
    let message = PermitWitnessTransferFrom {
        permitted: TokenPermissions {
            token: offer.asset,
            amount: t.amount,
        },
        spender: UPTO_PROXY,
        nonce: t.nonce,
        deadline: t.deadline,
        witness: Witness {
            to: offer.pay_to,
            facilitator: offer.facilitator,
            validAfter: t.valid_after,
        },
    };
    let digest = message.eip712_signing_hash(&permit2_domain(offer.chain_id));
    let recovered = signature.and_then(|s| recover_signer(&s, &digest));
    if recovered != Some(t.from) {
        return Err(fail(
            Reason::Permit2Signature,
            "the signature does not recover to permit2Authorization.from (a 65-byte EOA signature over Permit2's PermitWitnessTransferFrom with the upto witness is required)".into(),
        ));
    }
    Ok(Verified {
        offer: index,
        from: t.from,
        nonce: t.nonce,
        deadline: t.deadline.saturating_to::<u64>(),
    })
}

#[cfg(test)]
#[path = "upto_tests.rs"]
mod tests;

//! x402 `exact` payments on EVM chains: an EIP-3009 `transferWithAuthorization` signed by the
//! payer, verified here with no network call, and settled on chain by an x402 facilitator.
//!
//! - [`ExactOffer`]: one way to pay a route (network `eip155:<chain id>`, token contract,
//!   the token's EIP-712 `name`/`version`, `payTo`, amount in atomic units). Its
//!   [`ExactOffer::requirements`] is the x402 v2 `PaymentRequirements` entry of `accepts`.
//! - [`verify`]: the local checks of an x402 v2 `PaymentPayload` against a route's offers:
//!   `accepted` is one of our offers; the EIP-712 digest of
//!   `TransferWithAuthorization(from,to,value,validAfter,validBefore,nonce)` under the domain
//!   `(name, version, chainId, verifyingContract = asset)` recovers (secp256k1) to `from`;
//!   `to == payTo`; `value == amount` exactly; `validAfter <= now` and
//!   `validBefore >= now + margin`. Every failure carries the spec's reason string
//!   ([`Reason`]).
//! - [`facilitator`]: the facilitator client (`/verify`, `/settle`, `/supported`);
//! - [`settler`]: the background settler of `deferred` payments;
//! - [`signer`]: the paying side, a local EVM key that signs authorizations for an offer;
//! - [`upto`]: x402 `upto` (Permit2): the payer signs a maximum, the measured cost is settled.
//!
//! Single use of `(from, nonce)` is the store's job (the same atomic hold / spend state
//! machine as receipts, see [`crate::store`]); when to settle is the engine's
//! ([`SettlementMode`]).

pub mod facilitator;
pub mod settler;
pub mod signer;
pub mod upto;

use std::str::FromStr;
use std::sync::Arc;

use alloy_primitives::{Address, Signature, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use serde_json::{json, Value};

use crate::money::Currency;

pub use self::facilitator::{Facilitator, FacilitatorError, HttpFacilitator, OnChain};
pub use self::upto::UptoOffer;

/// The x402 scheme name handled here.
pub const EXACT_SCHEME: &str = "exact";
/// The asset transfer method of the offers (EIP-3009).
pub const EIP3009: &str = "eip3009";
/// Default margin: `validBefore` must leave at least this long to settle (seconds).
pub const DEFAULT_VALID_BEFORE_MARGIN_SECS: u64 = 6;
/// An authorization may not outlive `now + maxTimeoutSeconds` by more than this (seconds):
/// clients set `validBefore = now + maxTimeoutSeconds`, give or take their clock.
pub const VALID_BEFORE_SLACK_SECS: u64 = 60;
/// The `issuer` of x402 authorizations in the store's single-use records (receipts use their
/// `iss`): `(STORE_ISSUER, nonce)` under the payer's address.
pub const STORE_ISSUER: &str = "x402:exact";
/// The largest amount accepted (exact in the store's Lua numbers).
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

#[allow(missing_docs, unreachable_pub)]
mod typed {
    alloy_sol_types::sol! {
        /// EIP-3009's signed message.
        struct TransferWithAuthorization {
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
        }
    }
}

pub(crate) use self::typed::TransferWithAuthorization;

/// When an x402 payment is settled on chain, per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementMode {
    /// Settle through the facilitator first; serve only once the transfer succeeded.
    Before,
    /// Verify (locally and with the facilitator), serve, then settle only a 2xx answer to a
    /// non-HEAD request; the response is released only once the transfer succeeded.
    After,
    /// Verify locally, serve, and queue a 2xx answer to a non-HEAD request for the background
    /// settler ([`settler`]); a payer whose settlement fails is blocked until resolved.
    Deferred,
}

impl SettlementMode {
    /// `before` / `after`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SettlementMode::Before => "before",
            SettlementMode::After => "after",
            SettlementMode::Deferred => "deferred",
        }
    }
}

/// A settlement mode that is not one of `before`, `after`, `deferred`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown settlement mode {0:?} (before, after, deferred)")]
pub struct UnknownSettlementMode(pub String);

impl FromStr for SettlementMode {
    type Err = UnknownSettlementMode;
    fn from_str(s: &str) -> Result<Self, UnknownSettlementMode> {
        match s {
            "before" => Ok(SettlementMode::Before),
            "after" => Ok(SettlementMode::After),
            "deferred" => Ok(SettlementMode::Deferred),
            other => Err(UnknownSettlementMode(other.to_owned())),
        }
    }
}

/// Why an x402 payment was refused: the spec's reason strings (`invalidReason` /
/// `errorReason`), so an x402 client can branch on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The payload is not a well-formed `exact` EVM payload.
    InvalidPayload,
    /// `x402Version` is not 2.
    InvalidX402Version,
    /// `accepted.scheme` is not `exact`.
    UnsupportedScheme,
    /// No offer on this route is on `accepted.network`.
    InvalidNetwork,
    /// `accepted` is not one of this route's offers.
    InvalidPaymentRequirements,
    /// The signature does not recover to `authorization.from`.
    Signature,
    /// `authorization.to` is not the offer's `payTo`.
    RecipientMismatch,
    /// `authorization.value` is not the offer's amount.
    Value,
    /// `authorization.validAfter` is in the future.
    ValidAfter,
    /// `authorization.validBefore` is too soon (or absurdly far away).
    ValidBefore,
    /// The authorization was used already (nonce spent).
    TransactionState,
    /// The facilitator could not be asked, or answered something unusable.
    UnexpectedSettleError,
    /// The facilitator accepted but has not confirmed the transfer.
    SettlementPending,
    /// `upto`: `accepted.scheme` is not `upto`.
    UptoScheme,
    /// `upto`: no offer on this route is on `accepted.network`.
    UptoNetworkMismatch,
    /// `upto`: the permit is missing or has a malformed field.
    Permit2PayloadFormat,
    /// `upto`: the spender is not the x402 upto proxy.
    Permit2Spender,
    /// `upto`: `witness.to` is not the offer's `payTo`.
    Permit2Recipient,
    /// `upto`: `witness.facilitator` is not the offer's facilitator.
    UptoFacilitatorMismatch,
    /// `upto`: the deadline has passed (or leaves too little time to settle).
    Permit2DeadlineExpired,
    /// `upto`: the deadline is further away than the offer's `maxTimeoutSeconds` (Tollgate's
    /// own check: a used nonce is remembered until the deadline).
    Permit2DeadlineTooFar,
    /// `upto`: `witness.validAfter` is in the future.
    Permit2NotYetValid,
    /// `upto`: `permitted.amount` is not the offer's maximum.
    Permit2AmountMismatch,
    /// `upto`: `permitted.token` is not the offer's asset.
    Permit2TokenMismatch,
    /// `upto`: the signature does not recover to `from`.
    Permit2Signature,
    /// A reason given by the facilitator (passed through).
    Facilitator(String),
}

impl Reason {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            Reason::InvalidPayload => "invalid_payload",
            Reason::InvalidX402Version => "invalid_x402_version",
            Reason::UnsupportedScheme => "unsupported_scheme",
            Reason::InvalidNetwork => "invalid_network",
            Reason::InvalidPaymentRequirements => "invalid_payment_requirements",
            Reason::Signature => "invalid_exact_evm_payload_signature",
            Reason::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            Reason::Value => "invalid_exact_evm_payload_authorization_value",
            Reason::ValidAfter => "invalid_exact_evm_payload_authorization_valid_after",
            Reason::ValidBefore => "invalid_exact_evm_payload_authorization_valid_before",
            Reason::TransactionState => "invalid_transaction_state",
            Reason::UnexpectedSettleError => "unexpected_settle_error",
            Reason::SettlementPending => "settlement_pending",
            Reason::UptoScheme => "invalid_upto_evm_scheme",
            Reason::UptoNetworkMismatch => "invalid_upto_evm_network_mismatch",
            Reason::Permit2PayloadFormat => "invalid_permit2_payload_format",
            Reason::Permit2Spender => "invalid_permit2_spender",
            Reason::Permit2Recipient => "invalid_permit2_recipient_mismatch",
            Reason::UptoFacilitatorMismatch => "upto_facilitator_mismatch",
            Reason::Permit2DeadlineExpired => "permit2_deadline_expired",
            Reason::Permit2DeadlineTooFar => "permit2_deadline_too_far",
            Reason::Permit2NotYetValid => "permit2_not_yet_valid",
            Reason::Permit2AmountMismatch => "permit2_amount_mismatch",
            Reason::Permit2TokenMismatch => "permit2_token_mismatch",
            Reason::Permit2Signature => "invalid_permit2_signature",
            Reason::Facilitator(s) => s,
        }
    }
}

/// A refused x402 payment: the spec reason and a human detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct ExactError {
    /// The spec's reason.
    pub reason: Reason,
    /// What exactly is wrong.
    pub detail: String,
    /// `authorization.from`, once known.
    pub payer: Option<Address>,
}

fn refuse(reason: Reason, detail: impl Into<String>) -> ExactError {
    ExactError {
        reason,
        detail: detail.into(),
        payer: None,
    }
}

/// One way to pay a route with x402 `exact` on an EVM chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactOffer {
    /// `eip155:<chain id>`.
    pub network: String,
    /// The chain id (EIP-712 domain `chainId`).
    pub chain_id: u64,
    /// The token contract (EIP-712 domain `verifyingContract`).
    pub asset: Address,
    /// The token's EIP-712 domain `name` (e.g. `USD Coin` or `USDC`).
    pub name: String,
    /// The token's EIP-712 domain `version` (e.g. `2`).
    pub version: String,
    /// Who is paid.
    pub pay_to: Address,
    /// Exact amount in the token's atomic units.
    pub amount: u64,
    /// `maxTimeoutSeconds` of the offer (and the longest authorization accepted).
    pub max_timeout_secs: u64,
    /// The ledger's currency for this offer (code and decimals, e.g. `USDC`/6).
    pub currency: Currency,
}

/// Parse `eip155:<chain id>`.
pub fn chain_id_of(network: &str) -> Option<u64> {
    let id = network.strip_prefix("eip155:")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok().filter(|n| *n > 0)
}

/// Parse a 20-byte `0x` address (any case; a mixed-case one must carry a valid EIP-55
/// checksum, as a typo guard).
pub fn parse_address(s: &str) -> Option<Address> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mixed =
        hex.bytes().any(|b| b.is_ascii_lowercase()) && hex.bytes().any(|b| b.is_ascii_uppercase());
    if mixed {
        Address::parse_checksummed(format!("0x{hex}"), None).ok()
    } else {
        Address::from_str(hex).ok()
    }
}

/// A payload integer: a JSON string, decimal or `0x` hex (the spec's encoding), or a JSON
/// number (some clients send numbers).
pub(crate) fn parse_uint(v: Option<&Value>) -> Option<U256> {
    match v? {
        Value::String(s) => {
            let s = s.trim();
            if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                U256::from_str_radix(h, 16).ok()
            } else {
                if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                U256::from_str_radix(s, 10).ok()
            }
        }
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
}

/// `0x`-prefixed hex (either case of `x`), decoded.
fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    alloy_primitives::hex::decode(h).ok()
}

/// Who signed `digest`: only a 65-byte EOA signature is checked locally.
fn recover_signer(signature: &[u8], digest: &B256) -> Option<Address> {
    (signature.len() == 65)
        .then(|| Signature::from_raw(signature).ok())
        .flatten()
        .and_then(|sig| sig.recover_address_from_prehash(digest).ok())
}

/// The latest expiry (`validBefore`, an `upto` `deadline`) accepted at `now` for an offer
/// of `max_timeout_secs`, give or take the payer's clock.
fn latest_expiry(now: u64, max_timeout_secs: u64) -> u64 {
    now.saturating_add(max_timeout_secs)
        .saturating_add(VALID_BEFORE_SLACK_SECS)
}

/// An offer's token EIP-712 `name` and `version`: 1-64 and 1-16 characters.
fn check_token_domain(name: &str, version: &str) -> Result<(), (&'static str, String)> {
    if name.is_empty() || name.len() > 64 || version.is_empty() || version.len() > 16 {
        return Err((
            "name",
            "name (1-64 chars) and version (1-16 chars) are the token's EIP-712 domain".into(),
        ));
    }
    Ok(())
}

/// An offer's `maxTimeoutSeconds`: 1 to 3600.
fn check_max_timeout(max_timeout_secs: u64) -> Result<(), (&'static str, String)> {
    if max_timeout_secs == 0 || max_timeout_secs > 3600 {
        return Err(("max_timeout_secs", "must be 1 to 3600".into()));
    }
    Ok(())
}

/// A 32-byte `0x` nonce.
fn parse_nonce(v: Option<&Value>) -> Option<B256> {
    let s = v?.as_str()?;
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.len() != 64 {
        return None;
    }
    B256::from_str(h).ok()
}

impl ExactOffer {
    /// An offer; fails with the offending field named.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        network: &str,
        asset: &str,
        name: &str,
        version: &str,
        pay_to: &str,
        amount: &str,
        max_timeout_secs: u64,
        currency: Currency,
    ) -> Result<Self, (&'static str, String)> {
        let chain_id = chain_id_of(network)
            .ok_or(("network", format!("{network:?} is not eip155:<chain id>")))?;
        let asset = parse_address(asset).ok_or((
            "asset",
            "must be a 0x-prefixed 20-byte address (EIP-55 checksum when mixed case)".to_owned(),
        ))?;
        let pay_to = parse_address(pay_to).ok_or((
            "pay_to",
            "must be a 0x-prefixed 20-byte address (EIP-55 checksum when mixed case)".to_owned(),
        ))?;
        if pay_to == Address::ZERO {
            return Err(("pay_to", "must not be the zero address".into()));
        }
        check_token_domain(name, version)?;
        let amount_ok = !amount.is_empty()
            && amount.len() <= 16
            && amount.bytes().all(|b| b.is_ascii_digit())
            && !(amount.len() > 1 && amount.starts_with('0'));
        let amount: u64 = amount
            .parse()
            .ok()
            .filter(|a| amount_ok && *a > 0 && *a <= MAX_AMOUNT)
            .ok_or((
                "amount",
                format!("must be an integer of atomic units, 1 to {MAX_AMOUNT}"),
            ))?;
        check_max_timeout(max_timeout_secs)?;
        Ok(ExactOffer {
            network: network.to_owned(),
            chain_id,
            asset,
            name: name.to_owned(),
            version: version.to_owned(),
            pay_to,
            amount,
            max_timeout_secs,
            currency,
        })
    }

    /// The x402 v2 `PaymentRequirements` of this offer (an entry of `accepts`).
    pub fn requirements(&self) -> Value {
        json!({
            "scheme": EXACT_SCHEME,
            "network": self.network,
            "amount": self.amount.to_string(),
            "asset": self.asset.to_checksum(None),
            "payTo": self.pay_to.to_checksum(None),
            "maxTimeoutSeconds": self.max_timeout_secs,
            "extra": {
                "name": self.name,
                "version": self.version,
                "assetTransferMethod": EIP3009,
            },
        })
    }

    /// The EIP-712 domain of the token.
    fn domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some(self.name.clone().into()),
            Some(self.version.clone().into()),
            Some(U256::from(self.chain_id)),
            Some(self.asset),
            None,
        )
    }
}

impl Offer for ExactOffer {
    const SCHEME: &'static str = EXACT_SCHEME;
    const OTHER_SCHEME: Reason = Reason::UnsupportedScheme;
    const OTHER_NETWORK: Reason = Reason::InvalidNetwork;
    const ECHOED: &'static str = "scheme, network, asset, payTo, amount, extra.name, extra.version";

    fn echoed(&self) -> Echoed<'_> {
        Echoed {
            network: &self.network,
            asset: self.asset,
            pay_to: self.pay_to,
            amount: self.amount,
        }
    }

    /// The token's EIP-712 name and version.
    fn extra_matches(&self, extra: &Value) -> bool {
        let s = |k: &str| extra.get(k).and_then(Value::as_str);
        s("name") == Some(self.name.as_str())
            && s("version") == Some(self.version.as_str())
            && s("assetTransferMethod").is_none_or(|m| m == EIP3009)
    }
}

/// What a payload's `accepted` must echo of an offer, in either scheme.
struct Echoed<'a> {
    /// `eip155:<chain id>`.
    network: &'a str,
    /// The token contract.
    asset: Address,
    /// Who is paid.
    pay_to: Address,
    /// `amount`, in atomic units (`exact`: the amount; `upto`: the maximum).
    amount: u64,
}

/// An offer of either scheme (`exact`, [`upto`]), as the checks both make first see it.
trait Offer {
    /// The scheme's name.
    const SCHEME: &'static str;
    /// Why a payload of another scheme is refused.
    const OTHER_SCHEME: Reason;
    /// Why a payload on a network no offer of the route is on is refused.
    const OTHER_NETWORK: Reason;
    /// The fields of `accepted` that must be echoed unchanged (named in the refusal).
    const ECHOED: &'static str;
    /// The terms every scheme echoes.
    fn echoed(&self) -> Echoed<'_>;
    /// Whether `accepted.extra` carries the scheme's own terms of this offer.
    fn extra_matches(&self, extra: &Value) -> bool;

    /// Whether a payload's `accepted` names this offer: scheme, network, asset, payTo,
    /// amount and the scheme's `extra` (addresses compared as addresses, not as strings).
    fn is(&self, accepted: &Value) -> bool {
        let s = |k: &str| accepted.get(k).and_then(Value::as_str);
        let terms = self.echoed();
        s("scheme") == Some(Self::SCHEME)
            && s("network") == Some(terms.network)
            && s("asset").and_then(parse_address) == Some(terms.asset)
            && s("payTo").and_then(parse_address) == Some(terms.pay_to)
            && parse_uint(accepted.get("amount")) == Some(U256::from(terms.amount))
            && self.extra_matches(&accepted["extra"])
    }
}

/// The checks both schemes make first, in this order: `x402Version` 2, `accepted` an object
/// of the scheme, on a network of the route, naming one of its offers: that offer's index.
fn accepted_offer<O: Offer>(payload: &Value, offers: &[O]) -> Result<usize, ExactError> {
    if payload.get("x402Version").and_then(Value::as_u64) != Some(2) {
        return Err(refuse(
            Reason::InvalidX402Version,
            "PAYMENT-SIGNATURE must carry x402Version 2",
        ));
    }
    let accepted = payload
        .get("accepted")
        .filter(|a| a.is_object())
        .ok_or_else(|| refuse(Reason::InvalidPayload, "accepted must be an object"))?;
    if accepted.get("scheme").and_then(Value::as_str) != Some(O::SCHEME) {
        return Err(refuse(
            O::OTHER_SCHEME,
            format!("accepted.scheme must be {}", O::SCHEME),
        ));
    }
    let network = accepted
        .get("network")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !offers.iter().any(|o| o.echoed().network == network) {
        return Err(refuse(
            O::OTHER_NETWORK,
            format!("this route takes no {} payment on {network:?}", O::SCHEME),
        ));
    }
    offers.iter().position(|o| o.is(accepted)).ok_or_else(|| {
        refuse(
            Reason::InvalidPaymentRequirements,
            format!(
                "accepted is not one of this route's offers ({} must be echoed unchanged)",
                O::ECHOED
            ),
        )
    })
}

/// The x402 settings of one route.
#[derive(Debug, Clone)]
pub struct ExactRoute {
    /// The offers (in `accepts` order, after the native ones).
    pub offers: Vec<ExactOffer>,
    /// When to settle.
    pub mode: SettlementMode,
    /// Who settles.
    pub facilitator: Arc<dyn Facilitator>,
    /// `validBefore` (`upto`: the permit's deadline) must be at least this many seconds ahead.
    pub valid_before_margin_secs: u64,
    /// `upto` offers (metered routes: the payer signs a maximum, the measured cost is
    /// settled); listed after the `exact` ones.
    pub upto: Vec<UptoOffer>,
}

/// A payload that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Index of the offer it pays.
    pub offer: usize,
    /// The payer.
    pub from: Address,
    /// The EIP-3009 nonce (single use per payer).
    pub nonce: B256,
    /// Unix seconds after which the authorization is void on chain.
    pub valid_before: u64,
}

/// Check an x402 v2 `PaymentPayload` against a route's offers at `now` (unix seconds),
/// with no network call.
pub fn verify(
    payload: &Value,
    offers: &[ExactOffer],
    now: u64,
    margin_secs: u64,
) -> Result<Verified, ExactError> {
    let index = accepted_offer(payload, offers)?;
    let offer = &offers[index];
    let inner = payload
        .get("payload")
        .ok_or_else(|| refuse(Reason::InvalidPayload, "payload is missing"))?;
    let auth = inner
        .get("authorization")
        .filter(|a| a.is_object())
        .ok_or_else(|| {
            refuse(
                Reason::InvalidPayload,
                "payload.authorization must be an object",
            )
        })?;
    let field = |k: &'static str| {
        move || {
            refuse(
                Reason::InvalidPayload,
                format!("payload.authorization.{k} is missing or malformed"),
            )
        }
    };
    let addr = |k: &'static str| {
        auth.get(k)
            .and_then(Value::as_str)
            .and_then(parse_address)
            .ok_or_else(field(k))
    };
    let from = addr("from")?;
    let to = addr("to")?;
    let value = parse_uint(auth.get("value")).ok_or_else(field("value"))?;
    let valid_after = parse_uint(auth.get("validAfter")).ok_or_else(field("validAfter"))?;
    let valid_before = parse_uint(auth.get("validBefore")).ok_or_else(field("validBefore"))?;
    let nonce = parse_nonce(auth.get("nonce")).ok_or_else(field("nonce"))?;
    let signature = inner
        .get("signature")
        .and_then(Value::as_str)
        .and_then(parse_hex)
        .ok_or_else(|| {
            refuse(
                Reason::InvalidPayload,
                "payload.signature must be 0x-prefixed hex",
            )
        })?;
    let with_payer = |e: ExactError| ExactError {
        payer: Some(from),
        ..e
    };
    // 1. The signature: EIP-712 digest under the token's domain, recovered to `from`.
    let message = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: valid_after,
        validBefore: valid_before,
        nonce,
    };
    let digest = message.eip712_signing_hash(&offer.domain());
    let recovered = recover_signer(&signature, &digest);
    if recovered != Some(from) {
        return Err(with_payer(refuse(
            Reason::Signature,
            "the signature does not recover to authorization.from (a 65-byte EOA signature over TransferWithAuthorization under the token's EIP-712 domain is required)",
        )));
    }
    // 2. The terms.
    if to != offer.pay_to {
        return Err(with_payer(refuse(
            Reason::RecipientMismatch,
            format!(
                "authorization.to must be {}",
                offer.pay_to.to_checksum(None)
            ),
        )));
    }
    if value != U256::from(offer.amount) {
        return Err(with_payer(refuse(
            Reason::Value,
            format!("authorization.value must be exactly {}", offer.amount),
        )));
    }
    // 3. The window.
    if valid_after > U256::from(now) {
        return Err(with_payer(refuse(
            Reason::ValidAfter,
            "authorization.validAfter is in the future",
        )));
    }
    let soonest = now.saturating_add(margin_secs);
    let latest = latest_expiry(now, offer.max_timeout_secs);
    if valid_before < U256::from(soonest) {
        return Err(with_payer(refuse(
            Reason::ValidBefore,
            format!("authorization.validBefore must be at least {margin_secs} s ahead"),
        )));
    }
    if valid_before > U256::from(latest) {
        return Err(with_payer(refuse(
            Reason::ValidBefore,
            format!(
                "authorization.validBefore may be at most maxTimeoutSeconds ({}) ahead",
                offer.max_timeout_secs
            ),
        )));
    }
    Ok(Verified {
        offer: index,
        from,
        nonce,
        valid_before: valid_before.to::<u64>(),
    })
}

#[cfg(test)]
pub(crate) mod tests;

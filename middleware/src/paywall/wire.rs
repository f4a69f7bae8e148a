//! The engine's response headers as typed structs, serialized once: `PAYMENT-RESPONSE` of a
//! captured payment (receipts, balances, x402) and of a metered response settled after its
//! body. (Refusal bodies are in `render.rs`.)

use serde::Serialize;

/// `PAYMENT-RESPONSE` of a captured payment (x402 v2 fields and Tollgate's).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PaymentResponse<'a> {
    pub success: bool,
    /// The ledger event id (a receipt or balance), or the chain transaction (x402).
    pub transaction: &'a str,
    pub network: &'a str,
    pub payer: &'a str,
    /// Decimal.
    pub amount: String,
    /// Atomic units.
    pub amount_atomic: String,
    pub currency: &'a str,
    pub decimals: u32,
    /// `None` only when an x402 transfer is on chain but the ledger could not record it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// x402: the route's settlement mode (`before`, `after`, `deferred`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement: Option<&'a str>,
    /// x402 `deferred`: the queued settlement's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settlement_id: Option<&'a str>,
}

/// `PAYMENT-RESPONSE` of a metered response whose charge is settled after its body: what is
/// held now.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PendingResponse<'a> {
    pub success: bool,
    pub settlement: &'static str,
    pub network: &'a str,
    pub payer: &'a str,
    /// Decimal.
    pub held: String,
    pub currency: &'a str,
    pub decimals: u32,
    /// Decimal.
    pub balance: String,
    pub reservation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<&'a str>,
}

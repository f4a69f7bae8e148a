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

/// x402 v2 payment requirements of a 402: in `PAYMENT-REQUIRED` (with `error`) and in the
/// problem body (without it).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements<'a> {
    /// Always 2.
    pub x402_version: u8,
    /// What is being paid for.
    pub resource: Resource<'a>,
    /// One offer per accepted way to pay.
    pub accepts: Vec<Accept<'a>>,
}

/// `PAYMENT-REQUIRED`: the requirements and the refusal's code.
#[derive(Serialize)]
pub(super) struct PaymentRequired<'a> {
    #[serde(flatten)]
    pub requirements: &'a Requirements<'a>,
    pub error: &'a str,
}

/// The resource a 402 is for.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<'a> {
    /// The public URL of the request.
    pub url: String,
    /// The route's description.
    pub description: &'a str,
    /// The route's MIME type.
    pub mime_type: &'a str,
}

/// One way to pay.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Accept<'a> {
    /// A Tollgate receipt (a payment, a top-up or a plan).
    Receipt(Box<ReceiptOffer<'a>>),
    /// An x402 `exact` offer, as the x402 module writes it.
    Exact(serde_json::Value),
}

/// An offer paid with a Tollgate receipt.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptOffer<'a> {
    /// `tollgate-receipt`.
    pub scheme: &'static str,
    /// The receipt network id.
    pub network: &'a str,
    /// Atomic units.
    pub amount: String,
    /// The currency code.
    pub asset: &'a str,
    /// The merchant.
    pub pay_to: &'a str,
    /// How long the offer holds.
    pub max_timeout_seconds: i64,
    /// What the receipt buys.
    pub extra: OfferExtra<'a>,
}

/// What a receipt offer buys, by `kind`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OfferExtra<'a> {
    /// This request.
    Payment(PaymentExtra<'a>),
    /// Credit on the prepaid balance.
    Topup(TopupExtra<'a>),
    /// A plan period.
    Subscribe(SubscribeExtra<'a>),
}

/// A payment offer's terms.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentExtra<'a> {
    /// The price (fixed) or the reservation (metered), decimal.
    pub price: String,
    /// A metered route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metered: Option<bool>,
    /// Decimal price per unit of each meter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_prices: Option<std::collections::BTreeMap<&'a str, String>>,
    /// The stateless challenge id a receipt may bind to.
    pub challenge: String,
    /// When the challenge expires (Unix seconds).
    pub challenge_expires: i64,
    /// The currency code.
    pub currency: &'a str,
    /// Its atomic scale.
    pub decimals: u32,
    /// The route id.
    pub route: &'a str,
    /// The request method.
    pub method: &'a str,
    /// Trusted receipt issuers.
    pub issuers: &'a [String],
    /// An access token can pay too.
    pub token_accepted: bool,
}

/// A top-up offer's terms.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopupExtra<'a> {
    /// Where the top-up receipt goes.
    pub topup_url: String,
    /// The suggested amount, decimal.
    pub price: String,
    /// The currency code.
    pub currency: &'a str,
    /// Its atomic scale.
    pub decimals: u32,
    /// Trusted receipt issuers.
    pub issuers: &'a [String],
}

/// A plan offer's terms: the plan as the catalog shows it, and where to subscribe.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeExtra<'a> {
    /// The plan as in the catalog.
    #[serde(flatten)]
    pub catalog: serde_json::Value,
    /// The plan id.
    pub plan: &'a str,
    /// Where the subscribe receipt goes.
    pub subscribe_url: String,
    /// Trusted receipt issuers.
    pub issuers: &'a [String],
}

impl Requirements<'_> {
    /// The native payment offer (what the Payment scheme's challenge states).
    pub(super) fn payment_offer(&self) -> Option<(&ReceiptOffer<'_>, &PaymentExtra<'_>)> {
        self.accepts.iter().find_map(|a| match a {
            Accept::Receipt(o) => match &o.extra {
                OfferExtra::Payment(p) => Some((o.as_ref(), p)),
                _ => None,
            },
            Accept::Exact(_) => None,
        })
    }
}

//! The payment engine: the phases of a paid request, independent of how requests arrive.
//!
//! - [`Paywall::challenge`] builds the 402 answer (stateless, no store call);
//! - [`Paywall::admit`] extracts and verifies the credential (pure CPU) and authorizes it in
//!   the store (one atomic step), returning an [`Admission`] or the refusal to send;
//! - [`Admission::settle`] captures (spend + one usage event) or releases, after the upstream
//!   answered (or, for streamed metered responses, after the body ended);
//! - [`Paywall::agent_api`] serves the agent endpoints: top-up, token renewal, balance.
//!
//! Two ways to pay: a single-use **receipt** (fixed-price routes spend the receipt itself; on a
//! metered route its amount is credited to the payer's balance first, and the request is then
//! served from the balance with the receipt's amount as a cap), or a gateway-issued **access
//! token** that draws down the prepaid balance (a hold before forwarding, the actual charge
//! captured after).
//!
//! [`crate::PaymentLayer`] drives these phases for any tower service; the gateway uses the
//! same layer in front of its reverse proxy.
//!
//! Files, by phase: `builder.rs` (settings and their defaults), `offer.rs` (the 402's offers
//! and requirements), `admit.rs` (credential,
//! verification, authorization), `holds.rs` (balance holds with plan coverage, receipt
//! reservations, mandates), `admission.rs` (what an admitted request secured: one
//! `admission::Secured` variant per way of paying, each with its own settle and drop),
//! `settle.rs` (capture or release), `charged.rs` (capture at admission and voids), `x402/`
//! (x402 `exact`), `keepalive.rs` (holds of long streams), `pause.rs` (streams paused for a
//! top-up), `reconcile.rs` (captures whose outcome is unknown); decisions as data in `refusal.rs`, written to the wire only by
//! `render.rs` (problem bodies, 402 requirements) and `wire.rs` (`PAYMENT-RESPONSE`);
//! `challenge_cache.rs` (this second's 402 answers), `payment_auth.rs` (the Payment HTTP
//! authentication scheme), `idempotency.rs` (request `Idempotency-Key`), `agent.rs` (agent
//! endpoints), `dpop.rs` (access tokens bound to the agent's key).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::Value;

use crate::challenge::{ChallengeError, ChallengeKey, ChallengeTerms};
use crate::clock::{Clock, SystemClock};
use crate::credential::{self, Credential, RECEIPT_SCHEME};
use crate::error::{ErrorCode, Problem};
use crate::meter::{Metered, OnMissing};
use crate::money::{Amount, Currency, Money};
use crate::plan::{Overage, Plan};
use crate::price::{Price, PricedRoute};
use crate::receipt::{Issuer, Receipt, ReceiptKind, ReceiptPolicy, ReceiptVerifier};
use crate::store::{
    Credit, CreditOutcome, Hold, HoldSettleOutcome, Idempotency, IdempotencyClaim, PlanUse,
    Reservation, SettleOutcome, Settlement, SqliteStore, Store, UsageEvent,
};
use crate::token::{TokenError, TokenKey};

mod admission;
pub use self::admission::Admission;
use self::admission::{BalanceHold, Held, Secured};
mod admit;
mod builder;
pub use self::builder::{valid_caip2, BuildError, PaywallBuilder};
mod agent;
mod challenge_cache;
mod charged;
mod dpop;
mod holds;
mod keepalive;
mod lease;
pub mod mcp;
pub(crate) use self::keepalive::HoldKeepalive;
pub use self::lease::LeaseConfig;
pub mod idempotency;
mod offer;
mod pause;
pub use self::pause::POLL_EVERY as PAUSE_POLL_EVERY;
pub(crate) use self::pause::{PauseEnd, PausePoint};
mod payment_auth;
mod reconcile;
mod refusal;
mod render;
mod risk;
mod settle;
mod wire;
mod x402;

pub use self::dpop::RequestLine;
pub use self::payment_auth::PAYMENT_METHOD;
use self::reconcile::{reconcile, retry_unknown};
pub use self::refusal::{MandateStanding, PlanStanding, Refusal, Served, Standing, X402Failure};
use self::render::{b64_header, json_response};
pub use self::render::{Head, OwnedHead, Reply};

/// x402 v2 response header with the payment requirements.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// x402 response header with the settlement result.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// The Payment HTTP authentication scheme's response header (draft-httpauth-payment).
pub const PAYMENT_RECEIPT: &str = "payment-receipt";
/// Request header telling the upstream who paid (set by Tollgate; stripped from clients).
pub const TOLLGATE_PAYER: &str = "tollgate-payer";
/// Request header telling the upstream what was charged (fixed) or held (metered), e.g. `0.01 USD`.
pub const TOLLGATE_CHARGE: &str = "tollgate-charge";
/// The default x402 network id of the native receipt method.
pub const DEFAULT_NETWORK: &str = "tollgate:receipts";
/// The default path prefix of the agent endpoints (top-up, token, balance).
pub const DEFAULT_AGENT_API: &str = "/tollgate/v1";

#[derive(Debug)]
struct Inner {
    /// Merchant id: receipts' required `aud`, and `payTo` in offers.
    merchant: String,
    /// x402 network id of receipt offers.
    network: String,
    /// HMAC key for stateless challenge ids.
    challenge_key: ChallengeKey,
    /// HMAC key for access tokens.
    token_key: TokenKey,
    /// Signature and claims checks.
    verifier: ReceiptVerifier,
    /// The trusted issuers' ids, sorted (offered in every 402).
    issuer_ids: Vec<String>,
    /// Single use, balances and the ledger.
    store: Arc<dyn Store>,
    /// The settings kept as given.
    settings: builder::Settings,
    /// This second's 402 answers (see `challenge_cache.rs`).
    challenges: challenge_cache::ChallengeCache,
    /// Balance leases, when the store keeps them.
    leases: Option<Arc<lease::LeaseBook>>,
    /// Credits announced to streams paused for a top-up (see `pause.rs`).
    topups: pause::TopupSignal,
}

impl Drop for Inner {
    /// A paywall replaced (a reload) records its leases' charges and returns them.
    fn drop(&mut self) {
        if let (Some(book), Ok(rt)) = (self.leases.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { book.close().await });
        }
    }
}

/// The payment engine for one merchant. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Paywall(Arc<Inner>);

/// Who pays for an admitted request; inserted into the request's extensions so an embedding
/// handler can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The payer (`sub`).
    pub payer: String,
    /// Fixed price: what the request is charged if served. Metered: what is held (the most
    /// it can cost unless the balance covers more).
    pub charge: Money,
    /// `receipt:<iss>:<jti>` or `token:<payer>`.
    pub credential: String,
    /// Whether the final charge is measured from the response.
    pub metered: bool,
}

/// Counts request body bytes for `request_bytes` meters. The layer puts one in the request's
/// extensions; a body-forwarding service (the gateway's proxy) adds the bytes it forwards.
/// Without it, the `Content-Length` header is used.
#[derive(Debug, Clone, Default)]
pub struct RequestBodyCounter(pub Arc<AtomicU64>);

/// Settlement result of a served request.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// Value for `PAYMENT-RESPONSE` (set when captured).
    pub payment_response: Option<HeaderValue>,
    /// Value for the Payment scheme's `Payment-Receipt` (set when captured for a 2xx answer
    /// to a request paid with `Authorization: Payment`).
    pub payment_receipt: Option<HeaderValue>,
}

/// How a response ended, for settling metered requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The whole body was delivered.
    Complete,
    /// The client went away before the end.
    ClientGone,
    /// The upstream failed mid-body.
    UpstreamFailed,
    /// The gateway ended the stream: the payer could not pay for more.
    CutOff,
}

impl Paywall {
    /// The merchant id.
    pub fn merchant(&self) -> &str {
        &self.0.merchant
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    /// Issue an access token for `payer` (tests, admin tools).
    pub fn issue_token(&self, payer: &str) -> String {
        let ttl = i64::try_from(self.0.settings.token_ttl.as_secs()).unwrap_or(86_400);
        self.0
            .token_key
            .issue(payer, self.0.settings.clock.now_secs(), ttl)
    }

    /// The plans sold.
    pub fn plans(&self) -> &[Plan] {
        &self.0.settings.plans
    }

    /// Record every balance lease's pending charges and return the leases to the payers'
    /// balances (call at shutdown, after the server drained; without leases, nothing to do).
    pub async fn close(&self) {
        if let Some(book) = &self.0.leases {
            book.close().await;
        }
    }
}

/// Currencies by code, as configured.
pub type Currencies = HashMap<String, Currency>;

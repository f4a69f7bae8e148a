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
//! Files, by phase: `offer.rs` (the 402's offers and requirements), `admit.rs` (credential,
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

/// Setters that store their argument as is: `name: Type` gives `fn name(self, name: Type)`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)+) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )+
    };
}

/// Builds a [`Paywall`].
#[derive(Debug)]
#[must_use]
pub struct PaywallBuilder {
    merchant: String,
    secret: Vec<u8>,
    network: String,
    issuers: Vec<Issuer>,
    policy: ReceiptPolicy,
    store: Option<Arc<dyn Store>>,
    clock: Arc<dyn Clock>,
    challenge_ttl: Duration,
    hold_margin: Duration,
    public_base_url: Option<String>,
    realm: Option<String>,
    currencies: HashMap<String, (Currency, Option<Amount>)>,
    token_ttl: Duration,
    agent_api: String,
    settle_retry: Duration,
    plans: Vec<Plan>,
    leases: Option<LeaseConfig>,
    risk: Vec<crate::risk::RiskRule>,
    webhooks: Option<crate::webhooks::Webhooks>,
    dpop: crate::dpop::DpopPolicy,
}

impl PaywallBuilder {
    setters! {
        /// Access tokens bound to the agent's key (RFC 9449; default off).
        dpop: crate::dpop::DpopPolicy,
        /// Receipt limits (clock skew, lifetime, size).
        policy: ReceiptPolicy,
        /// The clock (default: system).
        clock: Arc<dyn Clock>,
        /// How long a challenge id stays valid (default 300 s).
        challenge_ttl: Duration,
        /// Added to a route's timeout to bound a hold if the process dies (default 30 s).
        hold_margin: Duration,
        /// Lifetime of access tokens (default 24 h).
        token_ttl: Duration,
        /// How long a capture whose outcome is unknown (store not answering) is retried before the
        /// response is withheld (default 5 s).
        settle_retry: Duration,
    }

    /// Serve token-paid requests from balance leases kept in the store (see `paywall/lease.rs`
    /// and docs/leases.md): no store call per request, charges recorded in batches. Requests
    /// with a mandate, a plan, an `Idempotency-Key` or `capture = "admission"` keep the
    /// per-request path.
    pub fn leases(mut self, config: LeaseConfig) -> Self {
        self.leases = Some(config);
        self
    }

    /// Enforce risk rules (see [`crate::risk`]).
    pub fn risk(mut self, rules: Vec<crate::risk::RiskRule>) -> Self {
        self.risk = rules;
        self
    }

    /// Report risk flags and blocks as webhooks.
    pub fn webhooks(mut self, webhooks: crate::webhooks::Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Sell a plan (see [`crate::plan`]).
    pub fn plan(mut self, plan: Plan) -> Self {
        self.plans.push(plan);
        self
    }

    /// Trust an issuer.
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// The store (default: a fresh in-memory [`SqliteStore`]: nothing survives the process).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The x402 `network` of receipt offers (CAIP-2 shaped; default `tollgate:receipts`).
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = network.into();
        self
    }

    /// The public base URL used in 402 `resource.url` (default: from the Host header).
    pub fn public_base_url(mut self, url: impl Into<String>) -> Self {
        self.public_base_url = Some(url.into().trim_end_matches('/').to_owned());
        self
    }

    /// The `realm` of `WWW-Authenticate: Payment` challenges (default: the public host --
    /// `public_base_url`'s, else the request's `Host` without its port).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// Accept top-ups in a currency; `suggested` is the top-up amount offered in 402s.
    pub fn currency(mut self, currency: Currency, suggested: Option<Amount>) -> Self {
        self.currencies
            .insert(currency.code().to_owned(), (currency, suggested));
        self
    }

    /// Path prefix of the agent endpoints (default `/tollgate/v1`).
    pub fn agent_api(mut self, prefix: impl Into<String>) -> Self {
        self.agent_api = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Build; fails on a short secret or an invalid network id.
    pub fn build(self) -> Result<Paywall, BuildError> {
        let challenge_key = ChallengeKey::try_new(&self.secret)?;
        let token_key = TokenKey::derive(&self.secret)?;
        if !valid_caip2(&self.network) {
            return Err(BuildError::Network(self.network));
        }
        let verifier = ReceiptVerifier::new(
            self.merchant.clone(),
            self.issuers,
            self.policy,
            self.clock.clone(),
        );
        let store = match self.store {
            Some(s) => s,
            None => Arc::new(
                SqliteStore::memory(self.clock.clone())
                    .map_err(|e| BuildError::Store(e.to_string()))?,
            ),
        };
        let leases = self.leases.map(|c| {
            let keeper: Arc<dyn crate::store::LeaseStore> = store.clone();
            Arc::new(lease::LeaseBook::new(keeper, c, self.settle_retry))
        });
        Ok(Paywall(Arc::new(Inner {
            merchant: self.merchant,
            network: self.network,
            challenge_key,
            token_key,
            issuer_ids: verifier.issuer_ids(),
            verifier,
            store,
            clock: self.clock,
            challenge_ttl: self.challenge_ttl,
            hold_margin: self.hold_margin,
            public_base_url: self.public_base_url,
            realm: self.realm,
            currencies: self.currencies,
            token_ttl: self.token_ttl,
            agent_api: self.agent_api,
            leases,
            settle_retry: self.settle_retry,
            plans: self.plans,
            risk: self.risk,
            webhooks: self.webhooks,
            dpop: self.dpop,
            challenges: Default::default(),
            topups: Default::default(),
        })))
    }
}

/// Why a [`Paywall`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The gateway secret.
    #[error(transparent)]
    Secret(#[from] crate::challenge::SecretError),
    /// The receipt network id.
    #[error("network {0:?} is not CAIP-2 shaped (namespace:reference)")]
    Network(String),
    /// The default (in-memory) store could not be started.
    #[error("the default in-memory store: {0}")]
    Store(String),
}

/// CAIP-2 shape: `^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$`.
pub fn valid_caip2(s: &str) -> bool {
    let Some((ns, reference)) = s.split_once(':') else {
        return false;
    };
    (3..=8).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit())
        && (1..=32).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b == b'-' || b == b'_' || b.is_ascii_alphanumeric())
}

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
    /// Injected time.
    clock: Arc<dyn Clock>,
    /// Challenge validity.
    challenge_ttl: Duration,
    /// Extra hold time beyond the route timeout.
    hold_margin: Duration,
    /// Base for `resource.url`.
    public_base_url: Option<String>,
    /// The challenges' realm (`None`: the public host).
    realm: Option<String>,
    /// Currencies accepted for top-ups, with the suggested top-up amount.
    currencies: HashMap<String, (Currency, Option<Amount>)>,
    /// Access token lifetime.
    token_ttl: Duration,
    /// Prefix of the agent endpoints.
    agent_api: String,
    /// Retry window for captures whose outcome is unknown.
    settle_retry: Duration,
    /// Plans sold.
    plans: Vec<Plan>,
    /// Risk rules.
    risk: Vec<crate::risk::RiskRule>,
    /// Where risk flags and blocks are reported.
    webhooks: Option<crate::webhooks::Webhooks>,
    /// How DPoP proofs are judged.
    dpop: crate::dpop::DpopPolicy,
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
    /// Start building an engine for `merchant`, with the gateway secret (>= 32 bytes).
    pub fn builder(merchant: impl Into<String>, secret: impl Into<Vec<u8>>) -> PaywallBuilder {
        PaywallBuilder {
            merchant: merchant.into(),
            secret: secret.into(),
            network: DEFAULT_NETWORK.into(),
            issuers: Vec::new(),
            policy: ReceiptPolicy::default(),
            store: None,
            clock: Arc::new(SystemClock),
            challenge_ttl: Duration::from_secs(300),
            hold_margin: Duration::from_secs(30),
            public_base_url: None,
            realm: None,
            currencies: HashMap::new(),
            token_ttl: Duration::from_secs(86_400),
            agent_api: DEFAULT_AGENT_API.into(),
            settle_retry: Duration::from_secs(5),
            plans: Vec::new(),
            leases: None,
            risk: Vec::new(),
            webhooks: None,
            dpop: Default::default(),
        }
    }

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
        let ttl = i64::try_from(self.0.token_ttl.as_secs()).unwrap_or(86_400);
        self.0.token_key.issue(payer, self.0.clock.now_secs(), ttl)
    }

    /// The plans sold.
    pub fn plans(&self) -> &[Plan] {
        &self.0.plans
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

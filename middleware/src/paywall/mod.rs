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
//! Files: `holds.rs` (balance holds with plan coverage, receipt reservations, mandates),
//! `charged.rs` (capture at admission and voids), `challenge_cache.rs` (this second's 402
//! answers), `payment_auth.rs` (the Payment HTTP authentication scheme), `idempotency.rs`
//! (request `Idempotency-Key`), `x402.rs` (x402 `exact`), `agent.rs` (agent endpoints),
//! `reconcile.rs` (captures whose outcome is unknown).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::{json, Value};

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
    Credit, CreditOutcome, Hold, HoldSettleOutcome, Idempotency, IdempotencyClaim, MemoryStore,
    PlanUse, Reservation, SettleOutcome, Settlement, Store, UsageEvent,
};
use crate::token::{TokenError, TokenKey};

mod agent;
mod challenge_cache;
mod charged;
mod holds;
mod keepalive;
pub(crate) use self::keepalive::HoldKeepalive;
pub mod idempotency;
mod payment_auth;
mod reconcile;
mod x402;

use self::reconcile::{reconcile, retry_unknown};

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
    currencies: HashMap<String, (Currency, Option<Amount>)>,
    token_ttl: Duration,
    agent_api: String,
    settle_retry: Duration,
    plans: Vec<Plan>,
}

impl PaywallBuilder {
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

    /// Receipt limits (clock skew, lifetime, size).
    pub fn policy(mut self, policy: ReceiptPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The store (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The clock (default: system).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How long a challenge id stays valid (default 300 s).
    pub fn challenge_ttl(mut self, ttl: Duration) -> Self {
        self.challenge_ttl = ttl;
        self
    }

    /// Added to a route's timeout to bound a hold if the process dies (default 30 s).
    pub fn hold_margin(mut self, margin: Duration) -> Self {
        self.hold_margin = margin;
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

    /// Accept top-ups in a currency; `suggested` is the top-up amount offered in 402s.
    pub fn currency(mut self, currency: Currency, suggested: Option<Amount>) -> Self {
        self.currencies
            .insert(currency.code().to_owned(), (currency, suggested));
        self
    }

    /// Lifetime of access tokens (default 24 h).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// How long a capture whose outcome is unknown (store not answering) is retried before the
    /// response is withheld (default 5 s).
    pub fn settle_retry(mut self, window: Duration) -> Self {
        self.settle_retry = window;
        self
    }

    /// Path prefix of the agent endpoints (default `/tollgate/v1`).
    pub fn agent_api(mut self, prefix: impl Into<String>) -> Self {
        self.agent_api = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Build; fails on a short secret or an invalid network id.
    pub fn build(self) -> Result<Paywall, String> {
        let challenge_key = ChallengeKey::try_new(&self.secret)?;
        let token_key = TokenKey::derive(&self.secret)?;
        if !valid_caip2(&self.network) {
            return Err(format!(
                "network {:?} is not CAIP-2 shaped (namespace:reference)",
                self.network
            ));
        }
        let verifier = ReceiptVerifier::new(
            self.merchant.clone(),
            self.issuers,
            self.policy,
            self.clock.clone(),
        );
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(self.clock.clone())));
        Ok(Paywall(Arc::new(Inner {
            merchant: self.merchant,
            network: self.network,
            challenge_key,
            token_key,
            verifier,
            store,
            clock: self.clock,
            challenge_ttl: self.challenge_ttl,
            hold_margin: self.hold_margin,
            public_base_url: self.public_base_url,
            currencies: self.currencies,
            token_ttl: self.token_ttl,
            agent_api: self.agent_api,
            settle_retry: self.settle_retry,
            plans: self.plans,
            challenges: Default::default(),
        })))
    }
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
    /// This second's 402 answers (see `challenge_cache.rs`).
    challenges: challenge_cache::ChallengeCache,
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

#[derive(Debug, Clone)]
enum Held {
    /// A fixed-price receipt, held single-use.
    Receipt(Reservation),
    /// An amount held from the prepaid balance.
    Balance {
        hold: Hold,
        /// Most the request may be charged (a payment receipt's amount on a metered route).
        cap_minor: Option<u64>,
        /// Available balance right after the hold.
        balance_minor: u64,
        /// A token issued with this request (a metered payment receipt funds a balance).
        new_token: Option<String>,
        /// The charge decided at admission (a plan-covered call: 0; overage: the overage
        /// price), instead of the route's price or meters.
        fixed_charge: Option<u64>,
    },
}

/// How a call's hold was placed.
#[derive(Debug, Clone, Copy)]
enum Placed {
    /// From the balance at the route's price; the balance left.
    Balance(u64),
    /// Covered by a plan.
    Plan,
    /// The plan's calls are used up: the overage price held; the balance left.
    Overage(u64),
}

/// A request that may proceed: its receipt or balance is held until [`Admission::settle`].
#[derive(Debug)]
#[must_use = "an admission holds a receipt or balance until it is settled"]
pub struct Admission {
    paywall: Paywall,
    payment: Payment,
    held: Held,
    route: Arc<PricedRoute>,
    method: String,
    started: Instant,
    request_bytes: RequestBodyCounter,
    declared_request_bytes: Option<u64>,
    /// Set once settled; an admission dropped unsettled (client gone, future cancelled)
    /// releases its hold in the background.
    settled: bool,
    /// An x402 `exact` payment: its offer, payload and on-chain state (see `x402.rs`).
    x402: Option<Box<x402::X402Pending>>,
    /// A fixed price charged at admission (see `charged.rs`).
    charged: Option<Box<charged::Charged>>,
    /// Paid through the Payment HTTP authentication scheme (`Authorization: Payment`): a
    /// served 2xx answer carries the draft's `Payment-Receipt`.
    payment_scheme: bool,
    /// The request's `Idempotency-Key`, claimed for this payer until the request is settled.
    idempotency: Option<idempotency::Claim>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        crate::metrics::global().holds_in_flight.dec();
        if self.abandon_x402() || self.abandon_charged() {
            return;
        }
        let store = self.paywall.0.store.clone();
        let held = std::mem::replace(&mut self.held, Held::Receipt(Reservation::empty()));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let result = match &held {
                    Held::Receipt(r) => {
                        crate::metrics::timed("release", store.settle(r, &Settlement::Release))
                            .await
                            .map(|_| ())
                    }
                    Held::Balance { hold, .. } => {
                        crate::metrics::timed("release_hold", store.release_hold(hold))
                            .await
                            .map(|_| ())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "release after cancel failed; hold will expire");
                }
            });
        }
    }
}

/// A response built by the engine (402s and other refusals, agent endpoints).
pub type Refusal = Response<Bytes>;

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

/// `PAYMENT-RESPONSE` of a captured request (x402 v2 fields and Tollgate's).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentResponse<'a> {
    success: bool,
    transaction: &'a str,
    network: &'a str,
    payer: &'a str,
    amount: String,
    amount_atomic: String,
    currency: &'a str,
    decimals: u32,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
}

fn b64_header(v: &Value) -> Option<HeaderValue> {
    // `to_vec`, not `to_string`: the `Display` path goes through `fmt` (slower on every 402).
    HeaderValue::from_str(&STANDARD.encode(serde_json::to_vec(v).ok()?)).ok()
}

fn json_response(status: StatusCode, v: &Value) -> Refusal {
    let mut res = Response::new(Bytes::from(v.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
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
            currencies: HashMap::new(),
            token_ttl: Duration::from_secs(86_400),
            agent_api: DEFAULT_AGENT_API.into(),
            settle_retry: Duration::from_secs(5),
            plans: Vec::new(),
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

    fn base_url(&self, headers: &HeaderMap, uri: &Uri) -> String {
        match &self.0.public_base_url {
            Some(base) => base.clone(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| uri.authority().map(|a| a.as_str()))
                    .unwrap_or("localhost");
                format!("http://{host}")
            }
        }
    }

    fn offer(&self, amount_minor: u64, currency: &Currency, ttl: i64, extra: Value) -> Value {
        json!({
            "scheme": RECEIPT_SCHEME,
            "network": self.0.network,
            "amount": amount_minor.to_string(),
            "asset": currency.code(),
            "payTo": self.0.merchant,
            "maxTimeoutSeconds": ttl.max(1),
            "extra": extra,
        })
    }

    fn topup_offer(&self, currency: &Currency, base: &str, ttl: i64) -> Option<Value> {
        let (_, suggested) = self.0.currencies.get(currency.code())?;
        let amount = (*suggested)?;
        let minor = currency.to_minor(amount).ok().filter(|m| *m > 0)?;
        Some(self.offer(
            minor,
            currency,
            ttl,
            json!({
                "kind": "topup",
                "topupUrl": format!("{base}{}/topup", self.0.agent_api),
                "price": amount.to_string(),
                "currency": currency.code(),
                "decimals": currency.scale(),
                "issuers": self.0.verifier.issuer_ids(),
            }),
        ))
    }

    /// The x402 v2 payment requirements for a route (one offer per accepted way to pay).
    pub fn requirements(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        error: &str,
    ) -> Value {
        let now = self.0.clock.now_secs();
        let ttl = i64::try_from(self.0.challenge_ttl.as_secs()).unwrap_or(300);
        let base = self.base_url(headers, uri);
        let (due, currency, extra) = match &route.price {
            Price::Free => (None, None, json!({})),
            Price::Fixed(money) => (
                money.minor().ok(),
                Some(&money.currency),
                json!({"price": money.amount.to_string()}),
            ),
            Price::Metered(m) => {
                let prices: BTreeMap<&str, String> = m
                    .meters
                    .iter()
                    .map(|x| (x.unit.as_str(), x.price.to_string()))
                    .collect();
                (
                    m.currency.to_minor(m.reserve).ok(),
                    Some(&m.currency),
                    json!({"price": m.reserve.to_string(), "metered": true, "unitPrices": prices}),
                )
            }
        };
        let mut accepts = Vec::new();
        if let (Some(minor), Some(currency)) = (due, currency) {
            let terms = ChallengeTerms {
                merchant: &self.0.merchant,
                route: &route.id,
                method: method.as_str(),
                amount_minor: minor,
                currency: currency.code(),
            };
            let id = self.0.challenge_key.issue(&terms, now + ttl);
            let mut extra = extra;
            if let Value::Object(m) = &mut extra {
                m.insert("challenge".into(), id.into());
                m.insert("challengeExpires".into(), (now + ttl).into());
                m.insert("currency".into(), currency.code().into());
                m.insert("decimals".into(), currency.scale().into());
                m.insert("kind".into(), "payment".into());
                m.insert("route".into(), route.id.clone().into());
                m.insert("method".into(), method.as_str().into());
                m.insert("issuers".into(), json!(self.0.verifier.issuer_ids()));
                m.insert("tokenAccepted".into(), true.into());
            }
            accepts.push(self.offer(minor, currency, ttl, extra));
            accepts.extend(self.topup_offer(currency, &base, ttl));
            if let Some(plan) = self.plan_for(route) {
                if let Ok(price) = plan.price.minor() {
                    let mut extra = plan.catalog();
                    extra["kind"] = "subscribe".into();
                    extra["plan"] = plan.id.clone().into();
                    extra["subscribeUrl"] = format!("{base}{}/subscribe", self.0.agent_api).into();
                    extra["issuers"] = json!(self.0.verifier.issuer_ids());
                    accepts.push(self.offer(price, &plan.price.currency, ttl, extra));
                }
            }
        }
        if let Some(x) = &route.x402 {
            accepts.extend(x.offers.iter().map(crate::x402::ExactOffer::requirements));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        json!({
            "x402Version": 2,
            "error": error,
            "resource": {
                "url": format!("{base}{path}"),
                "description": route.description,
                "mimeType": route.mime_type,
            },
            "accepts": accepts,
        })
    }

    /// A 402 (or other payment refusal) carrying fresh payment requirements: the
    /// `PAYMENT-REQUIRED` header and a problem+json body with the same requirements.
    pub fn challenge(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        code: ErrorCode,
        detail: &str,
    ) -> Refusal {
        crate::metrics::global()
            .payment_required
            .with_label_values(&[route.id.as_str(), code.as_str()])
            .inc();
        let now = self.0.clock.now_secs();
        let base = self.base_url(headers, uri);
        let key = challenge_cache::ChallengeCache::key(&[
            &route.id,
            method.as_str(),
            &base,
            uri.path_and_query().map_or("/", |p| p.as_str()),
            code.as_str(),
            detail,
        ]);
        if let Some(res) = self.0.challenges.get(now, &key) {
            return res;
        }
        let res = self.build_challenge(route, method, uri, headers, code, detail);
        self.0.challenges.put(now, key, &res);
        res
    }

    fn build_challenge(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        code: ErrorCode,
        detail: &str,
    ) -> Refusal {
        let req = self.requirements(route, method, uri, headers, code.as_str());
        let header_value = b64_header(&req);
        let www_authenticate = payment_auth::challenge(&req, &self.0.merchant);
        let mut problem = Problem::new(code).detail(detail);
        if let Some(id) = payment_auth::challenge_id(&req) {
            problem = problem.with("challengeId", id.into());
        }
        if let Value::Object(map) = req {
            for (k, v) in map {
                if k != "error" {
                    problem.extra.insert(k, v);
                }
            }
        }
        let mut res: Refusal = problem.into_response();
        if let Some(v) = header_value {
            res.headers_mut().insert(PAYMENT_REQUIRED, v);
        }
        if let Some(v) = www_authenticate {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }

    /// A plain problem response (no payment requirements).
    pub fn problem(code: ErrorCode, detail: &str) -> Refusal {
        let mut res: Refusal = Problem::new(code).detail(detail).into_response();
        if matches!(code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired) {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        res
    }

    fn store_down(e: impl std::fmt::Display, during: &str) -> Refusal {
        tracing::error!(error = %e, during, "store unavailable; failing closed");
        Self::problem(
            ErrorCode::StoreUnavailable,
            "payments are temporarily unavailable; retry later (nothing was charged)",
        )
    }

    fn hold_time(&self, route: &PricedRoute) -> Duration {
        route.timeout.unwrap_or(Duration::from_secs(60)) + self.0.hold_margin
    }

    /// Phases 1-3 for a priced route: find the credential, verify it, authorize it. Free routes
    /// return `Ok(None)`.
    pub async fn admit(
        &self,
        route: &Arc<PricedRoute>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Admission>, Refusal> {
        let Some((currency, due)) = Self::hold_amount(route) else {
            return Ok(None);
        };
        // Parsed once: the engine and the metrics both use it.
        let credential = credential::extract(headers);
        let kind = match &credential {
            Ok(Some(Credential::AccessToken(_))) => "token",
            Ok(Some(Credential::Receipt { .. })) => "receipt",
            Ok(Some(Credential::X402Exact(_))) => "x402",
            _ => "none",
        };
        // A claimed Idempotency-Key comes back here: on a refusal after the claim it is
        // forgotten before answering (nothing was charged), so a retry is never told "in use".
        let mut claim = None;
        let mut result = self
            .admit_inner(
                route,
                (method, uri, headers),
                (currency, due),
                credential,
                &mut claim,
            )
            .await;
        match (&mut result, claim) {
            (Ok(Some(a)), c) => a.idempotency = c,
            (_, Some(c)) => c.forget().await,
            (_, None) => {}
        }
        let m = crate::metrics::global();
        match &result {
            Ok(Some(_)) => {
                m.credentials.with_label_values(&[kind, "accepted"]).inc();
                m.holds_in_flight.inc();
            }
            Ok(None) => {}
            Err(res) => {
                let code = res.extensions().get::<ErrorCode>().copied();
                m.credentials
                    .with_label_values(&[kind, code.map_or("unknown", |c| c.as_str())])
                    .inc();
                if let Some(code) = code {
                    crate::traffic::global().record_refusal(
                        self.0.clock.now_ms(),
                        code,
                        res.status().as_u16(),
                    );
                }
            }
        }
        result
    }

    async fn admit_inner(
        &self,
        route: &Arc<PricedRoute>,
        (method, uri, headers): (&Method, &Uri, &HeaderMap),
        (currency, due): (&Currency, Amount),
        credential: Result<Option<Credential>, credential::CredentialError>,
        claimed: &mut Option<idempotency::Claim>,
    ) -> Result<Option<Admission>, Refusal> {
        let refuse = |code: ErrorCode, detail: &str| -> Refusal {
            if code.status() == StatusCode::PAYMENT_REQUIRED {
                self.challenge(route, method, uri, headers, code, detail)
            } else {
                Self::problem(code, detail)
            }
        };
        let idempotency_key = idempotency::parse(headers).map_err(|(c, d)| refuse(c, &d))?;
        let credential = match credential {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(refuse(ErrorCode::PaymentRequired, "this route is paid: pay with a receipt or an access token (see accepts) and retry"));
            }
            Err(e) => return Err(refuse(e.code, &e.detail)),
        };
        let payment_scheme = matches!(
            &credential,
            Credential::Receipt {
                source: credential::CredentialSource::AuthorizationPayment,
                ..
            }
        );
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let admission = |payment: Payment, held: Held| Admission {
            paywall: self.clone(),
            payment,
            held,
            route: route.clone(),
            method: method.as_str().to_owned(),
            started: Instant::now(),
            request_bytes: RequestBodyCounter::default(),
            declared_request_bytes: declared,
            settled: false,
            x402: None,
            charged: None,
            payment_scheme,
            idempotency: None,
        };
        match credential {
            Credential::X402Exact(payload) => {
                self.admit_x402(route, (method, uri, headers), *payload, admission)
                    .await
            }
            Credential::AccessToken(token) => {
                let claims = self
                    .0
                    .token_key
                    .verify(&token, self.0.clock.now_secs())
                    .map_err(|e| match e {
                        TokenError::Invalid => Self::problem(
                            ErrorCode::TokenInvalid,
                            "the access token is not valid here",
                        ),
                        TokenError::Expired => Self::problem(
                            ErrorCode::TokenExpired,
                            "the access token expired: renew it or top up again",
                        ),
                    })?;
                self.check_rate(route, &claims.sub).await?;
                *claimed = self
                    .claim_idempotency(idempotency_key, &claims.sub, route, method, uri)
                    .await?;
                let amount = due;
                let amount_minor = currency
                    .to_minor(amount)
                    .map_err(|_| Self::problem(ErrorCode::Internal, "internal error"))?;
                let mandate = self
                    .mandate_for(None, claims.mandate.clone(), headers)
                    .await
                    .map_err(|(c, d)| refuse(c, &d))?;
                let (charge, max_minor) = self
                    .mandate_charge(mandate.as_ref(), &claims.sub, route, currency, amount_minor)
                    .map_err(|(c, d)| refuse(c, &d))?;
                let plan = self.plan_for(route);
                if route.capture_at_admission && charge.is_none() && plan.is_none() {
                    if let Price::Fixed(price) = &route.price {
                        let hold = Hold {
                            id: uuid::Uuid::new_v4().to_string(),
                            payer: claims.sub.clone(),
                            currency: currency.code().to_owned(),
                            amount_minor,
                            ttl: self.hold_time(route),
                            mandate: None,
                            plan: None,
                        };
                        let payment = Payment {
                            payer: claims.sub.clone(),
                            charge: price.clone(),
                            credential: format!("token:{}", claims.sub),
                            metered: false,
                        };
                        let charged = self
                            .charge_balance(&hold, route, (method, uri, headers), &payment)
                            .await?;
                        let held = Held::Balance {
                            hold,
                            cap_minor: None,
                            balance_minor: 0,
                            new_token: None,
                            fixed_charge: None,
                        };
                        return Ok(Some(admission(payment, held).charged(charged)));
                    }
                }
                let mut hold = Hold {
                    id: uuid::Uuid::new_v4().to_string(),
                    payer: claims.sub.clone(),
                    currency: currency.code().to_owned(),
                    amount_minor,
                    ttl: self.hold_time(route),
                    mandate: charge,
                    plan: plan.map(|p| PlanUse {
                        plan: p.id.clone(),
                        deny: matches!(p.overage, Overage::Deny),
                        route_price: matches!(p.overage, Overage::RoutePrice),
                        unit: p.unit.clone(),
                        overage_minor: match &p.overage {
                            Overage::Charge(a) => currency.to_minor(*a).unwrap_or(u64::MAX),
                            Overage::Deny | Overage::RoutePrice => 0,
                        },
                        now_ms: self.0.clock.now_ms(),
                        covered: false,
                    }),
                };
                let placed = self
                    .place_hold_plan(&mut hold, route, method, uri, headers)
                    .await?;
                let mut credential = format!("token:{}", claims.sub);
                let mut charge_amount = amount;
                let fixed_charge = match placed {
                    Placed::Balance(_) => None,
                    Placed::Plan => {
                        let id = hold.plan.as_ref().map_or("", |p| p.plan.as_str());
                        credential = format!("plan:{id}:{}", claims.sub);
                        charge_amount = Amount::ZERO;
                        Some(0)
                    }
                    Placed::Overage(_) => {
                        let o = hold.plan.as_ref().map_or(0, |p| p.overage_minor);
                        charge_amount = currency.from_minor(o);
                        Some(o)
                    }
                };
                let balance_minor = match placed {
                    Placed::Balance(b) | Placed::Overage(b) => b,
                    Placed::Plan => 0,
                };
                let payment = Payment {
                    payer: claims.sub.clone(),
                    charge: Money {
                        amount: charge_amount,
                        currency: currency.clone(),
                    },
                    credential,
                    metered: matches!(route.price, Price::Metered(_)),
                };
                Ok(Some(admission(
                    payment,
                    Held::Balance {
                        hold,
                        cap_minor: max_minor,
                        balance_minor,
                        new_token: None,
                        fixed_charge,
                    },
                )))
            }
            Credential::Receipt {
                token, challenge, ..
            } => {
                let due_minor = currency
                    .to_minor(due)
                    .map_err(|_| Self::problem(ErrorCode::Internal, "internal error"))?;
                // The Payment scheme's echoed challenge first: a forged, tampered or expired
                // id is refused before any signature work.
                if let Some(id) = &challenge {
                    self.check_challenge(id, route, currency, due_minor, method)
                        .map_err(|(c, d)| refuse(c, &d))?;
                }
                let receipt = self
                    .0
                    .verifier
                    .verify(&token)
                    .await
                    .map_err(|e| refuse(e.code, &e.detail))?;
                match receipt.kind {
                    ReceiptKind::Payment => {}
                    ReceiptKind::Topup => {
                        return Err(refuse(
                            ErrorCode::ReceiptKindUnsupported,
                            &format!("top-up receipts go to POST {}/topup", self.0.agent_api),
                        ))
                    }
                    ReceiptKind::Subscribe => {
                        return Err(refuse(
                            ErrorCode::ReceiptKindUnsupported,
                            &format!(
                                "subscribe receipts go to POST {}/subscribe",
                                self.0.agent_api
                            ),
                        ))
                    }
                }
                if let (Some(echoed), Some(bound)) = (&challenge, &receipt.challenge) {
                    if echoed != bound {
                        return Err(refuse(
                            ErrorCode::ChallengeMismatch,
                            "the credential's challenge id is not the one the receipt is bound to",
                        ));
                    }
                }
                let paid_minor = self
                    .check_terms(&receipt, route, currency, due_minor, method)
                    .map_err(|(c, d)| refuse(c, &d))?;
                self.check_rate(route, &receipt.payer).await?;
                *claimed = self
                    .claim_idempotency(idempotency_key, &receipt.payer, route, method, uri)
                    .await?;
                let mandate = self
                    .mandate_for(receipt.mandate.as_deref(), None, headers)
                    .await
                    .map_err(|(c, d)| refuse(c, &d))?;
                let (charge, max_minor) = self
                    .mandate_charge(mandate.as_ref(), &receipt.payer, route, currency, due_minor)
                    .map_err(|(c, d)| refuse(c, &d))?;
                let credential = format!("receipt:{}:{}", receipt.issuer, receipt.id);
                match &route.price {
                    Price::Fixed(price) if route.capture_at_admission && charge.is_none() => {
                        let reservation = self.reservation(&receipt, route, None);
                        let payment = Payment {
                            payer: receipt.payer,
                            charge: price.clone(),
                            credential,
                            metered: false,
                        };
                        let charged = self
                            .charge_receipt(&reservation, route, method, &payment, refuse)
                            .await?;
                        Ok(Some(
                            admission(payment, Held::Receipt(reservation)).charged(charged),
                        ))
                    }
                    Price::Fixed(price) => {
                        let reservation = self
                            .reserve_receipt(&receipt, route, charge)
                            .await
                            .map_err(|(c, d, room)| match room {
                                Some((m, room)) => {
                                    self.mandate_exceeded(refuse(c, &d), &m, room, currency)
                                }
                                None => refuse(c, &d),
                            })?;
                        let payment = Payment {
                            payer: receipt.payer,
                            charge: price.clone(),
                            credential,
                            metered: false,
                        };
                        Ok(Some(admission(payment, Held::Receipt(reservation))))
                    }
                    Price::Metered(_) => {
                        // The receipt funds the balance (once), then the request is served from it
                        // with the receipt's amount as the cap.
                        self.credit_receipt(&receipt, currency, paid_minor, "payment")
                            .await
                            .map_err(|(c, d)| refuse(c, &d))?;
                        let hold = Hold {
                            id: uuid::Uuid::new_v4().to_string(),
                            payer: receipt.payer.clone(),
                            currency: currency.code().to_owned(),
                            amount_minor: due_minor,
                            ttl: self.hold_time(route),
                            mandate: charge,
                            plan: None,
                        };
                        let balance_minor =
                            self.place_hold(&hold, route, method, uri, headers).await?;
                        let payment = Payment {
                            payer: receipt.payer.clone(),
                            charge: Money {
                                amount: due,
                                currency: currency.clone(),
                            },
                            credential,
                            metered: true,
                        };
                        let new_token = Some(self.issue_token(&receipt.payer));
                        Ok(Some(admission(
                            payment,
                            Held::Balance {
                                hold,
                                cap_minor: Some(
                                    max_minor.map_or(paid_minor, |m| m.min(paid_minor)),
                                ),
                                balance_minor,
                                new_token,
                                fixed_charge: None,
                            },
                        )))
                    }
                    Price::Free => Ok(None),
                }
            }
        }
    }

    /// Claim the request's `Idempotency-Key` for `payer` (see [`idempotency`]), before anything
    /// is held: a retry of a request in flight or already charged is answered here.
    async fn claim_idempotency(
        &self,
        key: Option<String>,
        payer: &str,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
    ) -> Result<Option<idempotency::Claim>, Refusal> {
        let Some(key) = key else {
            return Ok(None);
        };
        let fingerprint = idempotency::fingerprint(method, &route.id, uri);
        let claim = idempotency::Claim::new(self.0.store.clone(), payer, key);
        let found = crate::metrics::timed(
            "idempotency_claim",
            self.0.store.idempotency_claim(
                payer,
                &claim.key,
                &fingerprint,
                &claim.token,
                idempotency::KEY_TTL,
            ),
        )
        .await;
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                claim.keep();
                return Err(Self::store_down(e, "idempotency claim"));
            }
        };
        match found {
            IdempotencyClaim::Claimed => Ok(Some(claim)),
            other => {
                // Not ours: never forget someone else's key.
                claim.keep();
                Err(match other {
                    IdempotencyClaim::Done { event_id, time_ms } => {
                        let mut p = Problem::new(ErrorCode::IdempotencyKeyUsed)
                            .detail("a request with this Idempotency-Key was already served and charged; it was not charged again")
                            .with("eventId", event_id.into());
                        if time_ms > 0 {
                            p = p.with(
                                "paidAt",
                                payment_auth::rfc3339(time_ms.div_euclid(1000)).into(),
                            );
                        }
                        p.into_response()
                    }
                    IdempotencyClaim::Mismatch => Self::problem(
                        ErrorCode::IdempotencyKeyMismatch,
                        "this Idempotency-Key was used for a different request (method, route or target)",
                    ),
                    _ => {
                        let mut res = Self::problem(
                            ErrorCode::IdempotencyKeyInUse,
                            "a request with this Idempotency-Key is in flight; retry when it finishes",
                        );
                        res.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        res
                    }
                })
            }
        }
    }

    /// Enforce the route's per-payer rate limit (before anything is held).
    async fn check_rate(&self, route: &PricedRoute, payer: &str) -> Result<(), Refusal> {
        let Some(limit) = route.rate_limit else {
            return Ok(());
        };
        match crate::metrics::timed("rate", self.0.store.rate(payer, &route.id, limit)).await {
            Ok(None) => Ok(()),
            Ok(Some(retry)) => {
                let secs = retry.as_millis().div_ceil(1000).max(1);
                let mut res = Self::problem(
                    ErrorCode::RateLimited,
                    &format!("at most {} requests per second (burst {}) on this route; retry in {secs} s", limit.per_second, limit.burst),
                );
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    res.headers_mut().insert(header::RETRY_AFTER, v);
                }
                Err(res)
            }
            Err(e) => Err(Self::store_down(e, "rate")),
        }
    }

    /// What a request on this route holds: the fixed price or the metered reservation.
    fn hold_amount(route: &PricedRoute) -> Option<(&Currency, Amount)> {
        match &route.price {
            Price::Fixed(m) => Some((&m.currency, m.amount)),
            Price::Metered(m) => Some((&m.currency, m.reserve)),
            Price::Free => None,
        }
    }

    /// The plan that covers a route's group, if one is sold.
    fn plan_for(&self, route: &PricedRoute) -> Option<&Plan> {
        let group = route.group_name();
        self.0.plans.iter().find(|p| p.covers(group))
    }

    /// The plans sold.
    pub fn plans(&self) -> &[Plan] {
        &self.0.plans
    }

    /// Credit a receipt's amount to its payer's balance, exactly once.
    async fn credit_receipt(
        &self,
        receipt: &Receipt,
        currency: &Currency,
        minor: u64,
        reason: &str,
    ) -> Result<(String, u64, bool), (ErrorCode, String)> {
        let credit = Credit {
            payer: receipt.payer.clone(),
            currency: currency.code().to_owned(),
            amount_minor: i64::try_from(minor)
                .map_err(|_| (ErrorCode::AmountInvalid, "amount too large".to_owned()))?,
            idempotency: Idempotency::Receipt {
                issuer: receipt.issuer.clone(),
                receipt_id: receipt.id.clone(),
            },
            keep_until_ms: self
                .0
                .verifier
                .policy()
                .single_use_until_ms(receipt.expires_at),
            reason: reason.to_owned(),
            source: format!("receipt:{}:{}", receipt.issuer, receipt.id),
        };
        match crate::metrics::timed("credit", self.0.store.credit(&credit)).await {
            Ok(CreditOutcome::Applied {
                credit_id,
                balance_minor,
            }) => Ok((credit_id, balance_minor, false)),
            Ok(CreditOutcome::Duplicate {
                credit_id,
                balance_minor,
            }) if reason == "topup" => Ok((credit_id, balance_minor, true)),
            Ok(CreditOutcome::Duplicate { .. } | CreditOutcome::ReceiptUsed) => Err((
                ErrorCode::ReceiptReplayed,
                "this receipt was already spent (its amount is in your balance)".into(),
            )),
            Ok(CreditOutcome::Insufficient { .. }) => {
                Err((ErrorCode::Internal, "internal error".into()))
            }
            Err(e) => {
                tracing::error!(error = %e, "store unavailable during credit; failing closed");
                Err((
                    ErrorCode::StoreUnavailable,
                    "payments are temporarily unavailable; retry later (nothing was charged)"
                        .into(),
                ))
            }
        }
    }

    /// Check a payment receipt against what the route asks; returns the paid amount in minor units.
    fn check_terms(
        &self,
        r: &Receipt,
        route: &PricedRoute,
        currency: &Currency,
        due: u64,
        method: &Method,
    ) -> Result<u64, (ErrorCode, String)> {
        if r.currency != currency.code() {
            return Err((
                ErrorCode::CurrencyMismatch,
                format!("this route is priced in {}", currency.code()),
            ));
        }
        let paid = currency
            .to_minor(r.amount)
            .map_err(|e| (ErrorCode::AmountInvalid, e.to_string()))?;
        if paid < due {
            let due_amount = currency.from_minor(due);
            return Err((
                ErrorCode::AmountInsufficient,
                format!(
                    "the price is {due_amount} {}; the receipt pays {} {}",
                    currency.code(),
                    r.amount,
                    r.currency
                ),
            ));
        }
        if let Some(id) = &r.challenge {
            self.check_challenge(id, route, currency, due, method)?;
        }
        Ok(paid)
    }

    /// Check a challenge id (a receipt's `challenge` claim, or the one a Payment-scheme
    /// credential echoes) against this request: forged or tampered -> `challenge_invalid`,
    /// issued for other terms -> `challenge_mismatch`, expired -> `challenge_expired`.
    fn check_challenge(
        &self,
        id: &str,
        route: &PricedRoute,
        currency: &Currency,
        due: u64,
        method: &Method,
    ) -> Result<(), (ErrorCode, String)> {
        let terms = ChallengeTerms {
            merchant: &self.0.merchant,
            route: &route.id,
            method: method.as_str(),
            amount_minor: due,
            currency: currency.code(),
        };
        self.0
            .challenge_key
            .verify(id, &terms, self.0.clock.now_secs())
            .map_err(|e| match e {
                ChallengeError::Malformed => (ErrorCode::ChallengeInvalid, e.to_string()),
                ChallengeError::Mismatch => (ErrorCode::ChallengeMismatch, e.to_string()),
                ChallengeError::Expired => (ErrorCode::ChallengeExpired, e.to_string()),
            })
            .map(|_| ())
    }
}

impl Admission {
    /// Who pays.
    pub fn payment(&self) -> &Payment {
        &self.payment
    }

    /// The route.
    pub fn route(&self) -> &Arc<PricedRoute> {
        &self.route
    }

    /// The metered price, if the route is metered.
    pub fn metered(&self) -> Option<&Metered> {
        match &self.route.price {
            Price::Metered(m) => Some(m),
            _ => None,
        }
    }

    /// The request-body counter to put into the request's extensions.
    pub fn request_counter(&self) -> RequestBodyCounter {
        self.request_bytes.clone()
    }

    /// How long since admission.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Request body bytes forwarded (counted, or as declared).
    pub fn request_bytes(&self) -> u64 {
        match self.request_bytes.0.load(Ordering::Relaxed) {
            0 => self.declared_request_bytes.unwrap_or(0),
            n => n,
        }
    }

    /// The most this request can be charged (hold + available balance, within a receipt's
    /// cap), in minor units; `None` for a receipt-paid fixed price.
    pub fn charge_limit_minor(&self) -> Option<u64> {
        match &self.held {
            Held::Balance {
                hold,
                cap_minor,
                balance_minor,
                ..
            } => {
                let limit = hold.amount_minor.saturating_add(*balance_minor);
                Some(cap_minor.map_or(limit, |c| limit.min(c)))
            }
            Held::Receipt(_) => None,
        }
    }

    /// `PAYMENT-RESPONSE` for a metered response settled after its body: what is held now.
    pub fn pending_response(&self) -> Option<HeaderValue> {
        let Held::Balance {
            hold,
            balance_minor,
            new_token,
            ..
        } = &self.held
        else {
            return None;
        };
        let c = &self.payment.charge.currency;
        let mut v = json!({
            "success": true,
            "settlement": "deferred",
            "network": self.paywall.0.network,
            "payer": self.payment.payer,
            "held": c.from_minor(hold.amount_minor).to_string(),
            "currency": c.code(),
            "decimals": c.scale(),
            "balance": c.from_minor(*balance_minor).to_string(),
            "reservation": hold.id,
        });
        if let Some(t) = new_token {
            v["accessToken"] = t.clone().into();
        }
        b64_header(&v)
    }

    /// Settle. `status`: the upstream's status (`None`: it failed before answering).
    /// `usage`: for metered routes, the units per meter (`None` entries: could not be read)
    /// and how the body ended.
    ///
    /// Below 400 captures; 400 and above, or no answer, releases. Returns the
    /// `PAYMENT-RESPONSE` value on capture, or the refusal to send instead of the upstream's
    /// response when the capture could not be recorded (fail closed).
    pub async fn settle(
        mut self,
        status: Option<u16>,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> Result<Settled, Refusal> {
        if let Some(x) = self.x402.take() {
            return self.settle_x402(*x, status).await;
        }
        if let Some(c) = self.charged.take() {
            return self.settle_charged(*c, status).await;
        }
        // From here on this call owns the outcome; if it is cancelled mid-way the hold simply
        // expires (a capture may or may not have landed: never both, never twice).
        self.settled = true;
        crate::metrics::global().holds_in_flight.dec();
        let store = self.paywall.0.store.clone();
        let served = status.is_some_and(|s| s < 400);
        let held = std::mem::replace(&mut self.held, Held::Receipt(Reservation::empty()));
        if !served {
            let released = match &held {
                Held::Receipt(r) => {
                    crate::metrics::timed("release", store.settle(r, &Settlement::Release))
                        .await
                        .map(|_| ())
                }
                Held::Balance { hold, .. } => {
                    crate::metrics::timed("release_hold", store.release_hold(hold))
                        .await
                        .map(|_| ())
                }
            };
            // On failure the hold expires by itself; the agent can retry after that.
            if let Err(e) = released {
                tracing::warn!(error = %e, "release failed; hold will expire");
            }
            // Nothing was charged: a retry with the same Idempotency-Key runs again.
            if let Some(claim) = self.idempotency.take() {
                claim.forget().await;
            }
            return Ok(Settled::default());
        }
        let claim = self.idempotency.take();
        let status = status.unwrap_or(0);
        let currency = self.payment.charge.currency.clone();
        let (units, unit_prices, actual_minor) = self.measure(&held, usage);
        let units_seen = units.clone();
        let time_ms = self.paywall.0.clock.now_ms();
        let event = UsageEvent {
            id: String::new(),
            time_ms,
            payer: self.payment.payer.clone(),
            route: self.route.id.clone(),
            method: self.method.clone(),
            units,
            unit_prices,
            currency: currency.code().to_owned(),
            scale: currency.scale(),
            amount_minor: actual_minor,
            uncharged_minor: 0,
            credential: self.payment.credential.clone(),
            reservation: String::new(),
            upstream_status: status,
            voids: None,
        };
        let withheld = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "capture failed; response withheld");
            Paywall::problem(
                ErrorCode::StoreUnavailable,
                "the payment could not be recorded; nothing was charged, retry later",
            )
        };
        let retry = self.paywall.0.settle_retry;
        let (event_id, charged, balance, token) = match &held {
            Held::Receipt(r) => {
                let event = UsageEvent {
                    reservation: r.id.clone(),
                    ..event
                };
                let capture = Settlement::Capture(Box::new(event));
                let outcome = match retry_unknown(retry, || {
                    crate::metrics::timed("capture", store.settle(r, &capture))
                })
                .await
                {
                    Ok(o) => o,
                    Err(e) => {
                        reconcile(
                            store.clone(),
                            held.clone(),
                            actual_minor,
                            currency.code().to_owned(),
                            capture.clone(),
                        );
                        if let Some(c) = claim {
                            c.keep();
                        }
                        return Err(withheld(&e));
                    }
                };
                match outcome {
                    SettleOutcome::Captured { event_id }
                    | SettleOutcome::AlreadyCaptured { event_id } => {
                        (event_id, actual_minor, None, None)
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost");
                        return Err(Paywall::problem(
                            ErrorCode::ReceiptInUse,
                            "the receipt's hold expired and it was taken by another request",
                        ));
                    }
                }
            }
            Held::Balance {
                hold, new_token, ..
            } => {
                let event = UsageEvent {
                    reservation: hold.id.clone(),
                    ..event
                };
                let captured = retry_unknown(retry, || {
                    crate::metrics::timed(
                        "capture_hold",
                        store.capture_hold(hold, actual_minor, &event),
                    )
                })
                .await;
                let captured = match captured {
                    Ok(c) => c,
                    Err(e) => {
                        reconcile(
                            store.clone(),
                            held.clone(),
                            actual_minor,
                            currency.code().to_owned(),
                            Settlement::Capture(Box::new(event.clone())),
                        );
                        if let Some(c) = claim {
                            c.keep();
                        }
                        return Err(withheld(&e));
                    }
                };
                match captured {
                    HoldSettleOutcome::Captured {
                        event_id,
                        charged_minor,
                        uncharged_minor,
                        balance_minor,
                    } => {
                        if uncharged_minor > 0 {
                            tracing::warn!(payer = %self.payment.payer, uncharged_minor, "usage beyond the balance was not charged");
                            crate::metrics::global()
                                .uncharged_minor
                                .with_label_values(&[self.route.id.as_str(), currency.code()])
                                .inc_by(uncharged_minor);
                        }
                        (
                            event_id,
                            charged_minor,
                            Some(balance_minor),
                            new_token.clone(),
                        )
                    }
                    other => {
                        tracing::error!(?other, "capture refused: the hold was lost (expired)");
                        return Err(Paywall::problem(
                            ErrorCode::BalanceInsufficient,
                            "the balance hold expired before the response; nothing was charged",
                        ));
                    }
                }
            }
        };
        if let Some(c) = claim {
            c.done(&event_id, time_ms).await;
        }
        Ok(self.paid(
            &event_id,
            (charged, balance, token),
            Some(&units_seen),
            (status, time_ms),
        ))
    }

    /// A captured request: revenue and usage metrics, traffic, its `PAYMENT-RESPONSE` and
    /// (Payment scheme, 2xx) `Payment-Receipt`. `status`: the upstream's; `time_ms`: the
    /// capture's time.
    fn paid(
        &self,
        event_id: &str,
        (charged, balance, token): (u64, Option<u64>, Option<String>),
        units_seen: Option<&BTreeMap<String, u64>>,
        (status, time_ms): (u16, i64),
    ) -> Settled {
        let currency = &self.payment.charge.currency;
        let charged_amount = currency.from_minor(charged);
        let m = crate::metrics::global();
        m.revenue_minor
            .with_label_values(&[self.route.id.as_str(), currency.code()])
            .inc_by(charged);
        crate::traffic::global().record_paid(
            self.paywall.0.clock.now_ms(),
            currency.code(),
            charged,
        );
        if let (Price::Metered(_), Some(units_seen)) = (&self.route.price, units_seen) {
            for (unit, n) in units_seen {
                m.usage_units
                    .with_label_values(&[self.route.id.as_str(), unit.as_str()])
                    .inc_by(*n);
            }
        }
        // Per-request detail stays at debug: at info, a busy gateway would log thousands of
        // lines a second (the ledger is the record).
        tracing::debug!(payer = %self.payment.payer, route = %self.route.id, amount = %charged_amount, currency = %currency.code(), event = %event_id, "payment captured");
        let receipt_id = self
            .payment
            .credential
            .rsplit(':')
            .next()
            .filter(|_| self.payment.credential.starts_with("receipt:"));
        // The Payment scheme's receipt: only for a 2xx answer (the draft issues none on error
        // responses) to a request paid with `Authorization: Payment`.
        let payment_receipt = if self.payment_scheme && (200..300).contains(&status) {
            payment_auth::receipt(event_id, time_ms, receipt_id)
        } else {
            None
        };
        // Serialized from a struct (no intermediate JSON map): this runs on every paid request.
        let body = PaymentResponse {
            success: true,
            transaction: event_id,
            network: &self.paywall.0.network,
            payer: &self.payment.payer,
            amount: charged_amount.to_string(),
            amount_atomic: charged.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            event_id,
            receipt: receipt_id,
            balance: balance.map(|b| currency.from_minor(b).to_string()),
            access_token: token,
        };
        let payment_response = serde_json::to_vec(&body)
            .ok()
            .and_then(|v| HeaderValue::from_str(&STANDARD.encode(v)).ok());
        Settled {
            payment_response,
            payment_receipt,
        }
    }

    /// Units, unit prices and the amount to capture, by the documented rules.
    fn measure(
        &self,
        held: &Held,
        usage: Option<(BTreeMap<String, Option<u64>>, BodyEnd)>,
    ) -> (BTreeMap<String, u64>, BTreeMap<String, String>, u64) {
        let Price::Metered(m) = &self.route.price else {
            let minor = self.payment.charge.minor().unwrap_or(0);
            return (
                BTreeMap::from([("request".to_owned(), 1)]),
                BTreeMap::new(),
                minor,
            );
        };
        let hold_minor = match held {
            Held::Balance { hold, .. } => hold.amount_minor,
            Held::Receipt(_) => 0,
        };
        let cap = match held {
            Held::Balance { cap_minor, .. } => *cap_minor,
            Held::Receipt(_) => None,
        };
        let prices = m
            .meters
            .iter()
            .map(|x| (x.unit.clone(), x.price.to_string()))
            .collect();
        // No reading at all (should not happen for a served metered response): all missing.
        let (readings, end) = usage.unwrap_or_else(|| {
            (
                m.meters.iter().map(|x| (x.unit.clone(), None)).collect(),
                BodyEnd::Complete,
            )
        });
        let missing = readings.values().any(Option::is_none);
        let units: BTreeMap<String, u64> = readings
            .iter()
            .map(|(u, n)| (u.clone(), n.unwrap_or(0)))
            .collect();
        let actual = if missing
            && matches!(end, BodyEnd::Complete | BodyEnd::ClientGone)
            && m.on_missing == OnMissing::Reserve
        {
            // Served, but the usage could not be read: the reservation is the charge.
            hold_minor
        } else {
            m.cost_minor(&units).unwrap_or(hold_minor)
        };
        let actual = match held {
            Held::Balance {
                fixed_charge: Some(c),
                ..
            } => *c,
            _ => actual,
        };
        let actual = cap.map_or(actual, |c| actual.min(c));
        (units, prices, actual)
    }
}

/// Currencies by code, as configured.
pub type Currencies = HashMap<String, Currency>;

//! The payment engine: the phases of a paid request, independent of how requests arrive.
//!
//! - [`Paywall::challenge`] builds the 402 answer (stateless, no store call);
//! - [`Paywall::admit`] extracts and verifies the credential (pure CPU) and authorizes it in
//!   the store (one atomic step), returning an [`Admission`] or the refusal to send;
//! - [`Admission::settle`] captures (spend + one usage event) or releases, after the upstream
//!   answered.
//!
//! [`crate::PaymentLayer`] drives these phases for any tower service; the gateway uses the
//! same layer in front of its reverse proxy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, Uri};
use serde_json::json;

use crate::challenge::{ChallengeError, ChallengeKey, ChallengeTerms};
use crate::clock::{Clock, SystemClock};
use crate::credential::{self, Credential, RECEIPT_SCHEME};
use crate::error::{ErrorCode, Problem};
use crate::money::{Currency, Money};
use crate::price::{Price, PricedRoute};
use crate::receipt::{Issuer, Receipt, ReceiptKind, ReceiptPolicy, ReceiptVerifier};
use crate::store::{
    AuthorizeOutcome, MemoryStore, Reservation, SettleOutcome, Settlement, Store, UsageEvent,
};

/// x402 v2 response header with the payment requirements.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// x402 response header with the settlement result.
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// Request header telling the upstream who paid (set by Tollgate; stripped from clients).
pub const TOLLGATE_PAYER: &str = "tollgate-payer";
/// Request header telling the upstream what was charged, e.g. `0.01 USD`.
pub const TOLLGATE_CHARGE: &str = "tollgate-charge";
/// The default x402 network id of the native receipt method.
pub const DEFAULT_NETWORK: &str = "tollgate:receipts";

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
}

impl PaywallBuilder {
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

    /// Build; fails on a short secret or an invalid network id.
    pub fn build(self) -> Result<Paywall, String> {
        let challenge_key = ChallengeKey::try_new(&self.secret)?;
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
            verifier,
            store,
            clock: self.clock,
            challenge_ttl: self.challenge_ttl,
            hold_margin: self.hold_margin,
            public_base_url: self.public_base_url,
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
    /// Signature and claims checks.
    verifier: ReceiptVerifier,
    /// Single use and the ledger.
    store: Arc<dyn Store>,
    /// Injected time.
    clock: Arc<dyn Clock>,
    /// Challenge validity.
    challenge_ttl: Duration,
    /// Extra hold time beyond the route timeout.
    hold_margin: Duration,
    /// Base for `resource.url`.
    public_base_url: Option<String>,
}

/// The payment engine for one merchant. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Paywall(Arc<Inner>);

/// Who paid for an admitted request; inserted into the request's extensions so an embedding
/// handler can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The payer (`sub`).
    pub payer: String,
    /// What the request is charged if served.
    pub charge: Money,
    /// The receipt's issuer.
    pub issuer: String,
    /// The receipt's id.
    pub receipt_id: String,
}

/// A request that may proceed: its receipt is held until [`Admission::settle`].
#[derive(Debug)]
#[must_use = "an admission holds a receipt until it is settled"]
pub struct Admission {
    paywall: Paywall,
    payment: Payment,
    reservation: Reservation,
    route: String,
    method: String,
    /// Set once settled; an admission dropped unsettled (client gone, future cancelled)
    /// releases its hold in the background.
    settled: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let store = self.paywall.0.store.clone();
        let reservation = self.reservation.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.settle(&reservation, &Settlement::Release).await {
                    tracing::warn!(error = %e, reservation = %reservation.id, "release after cancel failed; hold will expire");
                }
            });
        }
    }
}

/// A response built by the engine (402s and other refusals).
pub type Refusal = Response<Bytes>;

/// Settlement result of a served request.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Value for `PAYMENT-RESPONSE` (set only when captured).
    pub payment_response: Option<HeaderValue>,
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

    fn resource_url(&self, uri: &Uri, headers: &HeaderMap) -> String {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        match &self.0.public_base_url {
            Some(base) => format!("{base}{path}"),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| uri.authority().map(|a| a.as_str()))
                    .unwrap_or("localhost");
                format!("http://{host}{path}")
            }
        }
    }

    /// The x402 v2 payment requirements for a route (one offer per accepted method).
    pub fn requirements(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        error: &str,
    ) -> serde_json::Value {
        let accepts = match &route.price {
            Price::Fixed(money) => {
                let minor = money.minor().unwrap_or(0);
                let now = self.0.clock.now_secs();
                let ttl = i64::try_from(self.0.challenge_ttl.as_secs()).unwrap_or(300);
                let terms = ChallengeTerms {
                    merchant: &self.0.merchant,
                    route: &route.id,
                    method: method.as_str(),
                    amount_minor: minor,
                    currency: money.currency.code(),
                };
                let id = self.0.challenge_key.issue(&terms, now + ttl);
                vec![json!({
                    "scheme": RECEIPT_SCHEME,
                    "network": self.0.network,
                    "amount": minor.to_string(),
                    "asset": money.currency.code(),
                    "payTo": self.0.merchant,
                    "maxTimeoutSeconds": ttl.max(1),
                    "extra": {
                        "challenge": id,
                        "challengeExpires": now + ttl,
                        "price": money.amount.to_string(),
                        "currency": money.currency.code(),
                        "decimals": money.currency.scale(),
                        "kind": "payment",
                        "route": route.id,
                        "method": method.as_str(),
                        "issuers": self.0.verifier.issuer_ids(),
                    }
                })]
            }
            Price::Free => Vec::new(),
        };
        json!({
            "x402Version": 2,
            "error": error,
            "resource": {
                "url": self.resource_url(uri, headers),
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
        let req = self.requirements(route, method, uri, headers, code.as_str());
        let header_value = STANDARD.encode(req.to_string());
        let mut problem = Problem::new(code).detail(detail);
        if let serde_json::Value::Object(map) = req {
            for (k, v) in map {
                if k != "error" {
                    problem.extra.insert(k, v);
                }
            }
        }
        let mut res: Refusal = problem.into_response();
        if let Ok(v) = HeaderValue::from_str(&header_value) {
            res.headers_mut().insert(PAYMENT_REQUIRED, v);
        }
        res
    }

    /// A plain problem response (no payment requirements).
    pub fn problem(code: ErrorCode, detail: &str) -> Refusal {
        Problem::new(code).detail(detail).into_response()
    }

    /// Phases 1-3 for a priced route: find the credential, verify it, authorize it. Free routes
    /// return `Ok(None)`.
    pub async fn admit(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Admission>, Refusal> {
        let Price::Fixed(price) = &route.price else {
            return Ok(None);
        };
        let refuse = |code: ErrorCode, detail: &str| -> Refusal {
            if code.status() == http::StatusCode::PAYMENT_REQUIRED {
                self.challenge(route, method, uri, headers, code, detail)
            } else {
                Self::problem(code, detail)
            }
        };
        let credential = match credential::extract(headers) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(refuse(
                    ErrorCode::PaymentRequired,
                    "this route is paid: pay with a receipt (see accepts) and retry",
                ));
            }
            Err(e) => return Err(refuse(e.code, &e.detail)),
        };
        let Credential::Receipt { token, .. } = credential;
        let receipt = self
            .0
            .verifier
            .verify(&token)
            .await
            .map_err(|e| refuse(e.code, &e.detail))?;
        self.check_terms(&receipt, route, price, method)
            .map_err(|(c, d)| refuse(c, &d))?;

        let skew = self.0.verifier.policy().clock_skew;
        let hold = route.timeout.unwrap_or(Duration::from_secs(60)) + self.0.hold_margin;
        let reservation = Reservation {
            id: uuid::Uuid::new_v4().to_string(),
            payer: receipt.payer.clone(),
            issuer: receipt.issuer.clone(),
            receipt_id: receipt.id.clone(),
            hold,
            spent_until_ms: receipt
                .expires_at
                .saturating_mul(1000)
                .saturating_add(i64::try_from(skew.as_millis()).unwrap_or(0)),
        };
        let outcome = self.0.store.authorize(&reservation).await.map_err(|e| {
            tracing::error!(error = %e, "store unavailable during authorize; failing closed");
            Self::problem(
                ErrorCode::StoreUnavailable,
                "payments are temporarily unavailable; retry later (nothing was charged)",
            )
        })?;
        match outcome {
            AuthorizeOutcome::Reserved => {}
            AuthorizeOutcome::Replayed => {
                return Err(refuse(
                    ErrorCode::ReceiptReplayed,
                    "this receipt was already spent",
                ))
            }
            AuthorizeOutcome::InUse => {
                return Err(refuse(
                    ErrorCode::ReceiptInUse,
                    "another request is using this receipt; retry when it finishes",
                ))
            }
            AuthorizeOutcome::PayerBlocked => {
                return Err(refuse(
                    ErrorCode::PayerBlocked,
                    "this payer is blocked by the provider",
                ))
            }
        }
        Ok(Some(Admission {
            paywall: self.clone(),
            payment: Payment {
                payer: receipt.payer,
                charge: price.clone(),
                issuer: receipt.issuer,
                receipt_id: receipt.id,
            },
            reservation,
            route: route.id.clone(),
            method: method.as_str().to_owned(),
            settled: false,
        }))
    }

    fn check_terms(
        &self,
        r: &Receipt,
        route: &PricedRoute,
        price: &Money,
        method: &Method,
    ) -> Result<(), (ErrorCode, String)> {
        if r.kind != ReceiptKind::Payment {
            return Err((
                ErrorCode::ReceiptKindUnsupported,
                "only kind \"payment\" receipts pay for a request".into(),
            ));
        }
        let currency: &Currency = &price.currency;
        if r.currency != currency.code() {
            return Err((
                ErrorCode::CurrencyMismatch,
                format!("this route is priced in {}", currency.code()),
            ));
        }
        let paid = currency
            .to_minor(r.amount)
            .map_err(|e| (ErrorCode::AmountInvalid, e.to_string()))?;
        let due = price
            .minor()
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        if paid < due {
            return Err((
                ErrorCode::AmountInsufficient,
                format!(
                    "the price is {price}; the receipt pays {} {}",
                    r.amount, r.currency
                ),
            ));
        }
        if let Some(id) = &r.challenge {
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
                })?;
        }
        Ok(())
    }
}

impl Admission {
    /// Who pays.
    pub fn payment(&self) -> &Payment {
        &self.payment
    }

    /// Phase 5: settle after the upstream answered with `status` (`None`: it failed before
    /// answering). Below 400 captures (spends the receipt, appends one usage event); 400 and
    /// above, or no answer, releases the hold so the receipt can be used again.
    ///
    /// Returns the `PAYMENT-RESPONSE` value on capture, or the refusal to send instead of the
    /// upstream's response when the capture could not be recorded (fail closed).
    pub async fn settle(mut self, status: Option<u16>) -> Result<Settled, Refusal> {
        // From here on this call owns the outcome; if it is cancelled mid-way the hold
        // simply expires (a capture may or may not have landed: never both, never twice).
        self.settled = true;
        let store = self.paywall.0.store.clone();
        let served = status.is_some_and(|s| s < 400);
        if !served {
            match store.settle(&self.reservation, &Settlement::Release).await {
                Ok(_) => {}
                // The hold expires by itself; the agent can retry the receipt after that.
                Err(e) => {
                    tracing::warn!(error = %e, reservation = %self.reservation.id, "release failed; hold will expire")
                }
            }
            return Ok(Settled {
                payment_response: None,
            });
        }
        let charge = &self.payment.charge;
        let amount_minor = charge
            .minor()
            .map_err(|_| Paywall::problem(ErrorCode::Internal, "internal error"))?;
        let event = UsageEvent {
            id: String::new(),
            time_ms: self.paywall.0.clock.now_ms(),
            payer: self.payment.payer.clone(),
            route: self.route.clone(),
            method: self.method.clone(),
            units: 1,
            unit: "request".into(),
            amount: charge.amount,
            amount_minor,
            currency: charge.currency.code().to_owned(),
            credential: format!(
                "receipt:{}:{}",
                self.payment.issuer, self.payment.receipt_id
            ),
            reservation: self.reservation.id.clone(),
            upstream_status: status.unwrap_or(0),
        };
        let outcome = store.settle(&self.reservation, &Settlement::Capture(Box::new(event))).await.map_err(|e| {
            tracing::error!(error = %e, reservation = %self.reservation.id, "capture failed; response withheld");
            Paywall::problem(ErrorCode::StoreUnavailable, "the payment could not be recorded; nothing was charged, retry later")
        })?;
        let event_id = match outcome {
            SettleOutcome::Captured { event_id } | SettleOutcome::AlreadyCaptured { event_id } => {
                event_id
            }
            other => {
                tracing::error!(?other, reservation = %self.reservation.id, "capture refused: the hold was lost");
                return Err(Paywall::problem(
                    ErrorCode::ReceiptInUse,
                    "the receipt's hold expired and it was taken by another request",
                ));
            }
        };
        tracing::info!(
            payer = %self.payment.payer,
            route = %self.route,
            amount = %charge,
            status = status.unwrap_or(0),
            event = %event_id,
            "payment captured"
        );
        let body = json!({
            "success": true,
            "transaction": event_id,
            "network": self.paywall.0.network,
            "payer": self.payment.payer,
            "amount": charge.amount.to_string(),
            "amountAtomic": amount_minor.to_string(),
            "currency": charge.currency.code(),
            "decimals": charge.currency.scale(),
            "receipt": self.payment.receipt_id,
            "eventId": event_id,
        });
        let v = HeaderValue::from_str(&STANDARD.encode(body.to_string())).ok();
        Ok(Settled {
            payment_response: v,
        })
    }
}

/// Currencies by code, as configured.
pub type Currencies = HashMap<String, Currency>;

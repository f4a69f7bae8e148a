//! The paying side (feature `client`): a [`PayingClient`] wraps a `reqwest::Client` and pays
//! the HTTP 402s it meets.
//!
//! On a 402 it decodes `PAYMENT-REQUIRED` (x402 v2), picks one offer of `accepts` by its
//! [`Policy`] (per-call cap and budget per asset, allowed merchants, preferred schemes), asks the
//! [`Wallet`] for that scheme for a [`Credential`], and sends the request again with it -- once.
//! A logical request is never paid twice: if the paid attempt meets a transport error, a 5xx or
//! a 409, further attempts (up to [`PayingClient::retries`]) reuse the *same* credential, which
//! is correct because a gateway releases a credential whose request failed. Every paid attempt
//! of one logical request also carries one `Idempotency-Key` (the caller's, or a fresh one), so
//! a gateway that already served and charged it answers 409 `idempotency_key_used` with the
//! charge's event id instead of serving it twice. When no offer fits the policy the client
//! refuses with [`ClientError::Refused`] and pays nothing.
//!
//! ```no_run
//! use tollgate_middleware::client::{ExactWallet, PayingClient, Policy, ReceiptWallet};
//! use tollgate_middleware::x402::signer::LocalSigner;
//! # async fn demo() -> Result<(), tollgate_middleware::client::ClientError> {
//! let policy = Policy::new()
//!     .max_per_call("USD", 50_000) // 0.05 USD (scale 6) per call
//!     .budget("USD", 1_000_000) // 1.00 USD in total
//!     .allow_merchant("acme");
//! let client = PayingClient::new(reqwest::Client::new(), policy)
//!     .wallet(ReceiptWallet::new("http://127.0.0.1:7402", "agent-007"))
//!     .wallet(ExactWallet::new(LocalSigner::random()));
//! let paid = client.get("http://127.0.0.1:8080/v1/echo").await?;
//! println!("{} paid {:?}", paid.response.status(), paid.payment.map(|p| p.offer.amount));
//! # Ok(()) }
//! ```

mod policy;
mod wallet;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

pub use self::policy::{Offer, OfferRefusal, Policy, RECEIPT_SCHEME};
pub use self::wallet::{
    Credential, ExactWallet, ReceiptWallet, Wallet, WalletError, PAYMENT_SIGNATURE,
};

/// The header a 402's requirements travel in.
pub const PAYMENT_REQUIRED: &str = "payment-required";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The unpaid request failed (nothing was paid).
    #[error("request failed: {0}")]
    Http(#[source] reqwest::Error),
    /// A 402 without readable x402 requirements (nothing was paid).
    #[error("402 without readable PAYMENT-REQUIRED: {0}")]
    MissingRequirements(String),
    /// No offer fits the policy (nothing was paid); why each offer was refused.
    #[error("no offer fits the policy: {}", join(.0))]
    Refused(Vec<OfferRefusal>),
    /// The wallet gave no credential (nothing was paid); `Pending` carries the approval id.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// A 402 for a request whose body cannot be sent twice (a stream; nothing was paid).
    #[error("the request body cannot be sent again")]
    NotRepeatable,
    /// Paid, but every paid attempt failed in transport: the credential is in `payment`; send
    /// the request again with [`PayingClient::send_with`] rather than paying anew.
    #[error("paid request failed: {source}")]
    AfterPayment {
        /// What was paid, with its credential.
        payment: Box<Payment>,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
}

fn join(refusals: &[OfferRefusal]) -> String {
    let all: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    if all.is_empty() {
        "no offers".into()
    } else {
        all.join("; ")
    }
}

/// What was paid for one logical request.
#[derive(Debug, Clone)]
pub struct Payment {
    /// The offer paid.
    pub offer: Offer,
    /// The credential sent (reuse it, never pay again, if the request must be repeated).
    pub credential: Credential,
    /// The decoded `PAYMENT-REQUIRED` the offer came from.
    pub required: Value,
}

/// The final answer of a call, and the payment made for it, if any.
#[derive(Debug)]
pub struct Paid {
    /// The last response.
    pub response: reqwest::Response,
    /// `None` when the server did not ask for payment.
    pub payment: Option<Payment>,
}

/// An HTTP client that pays 402s by policy.
#[derive(Debug, Clone)]
pub struct PayingClient {
    /// Sends the requests.
    http: reqwest::Client,
    /// One per scheme the client pays.
    wallets: Vec<Arc<dyn Wallet>>,
    /// What may be paid.
    policy: Policy,
    /// Spent so far per asset (lower-case), shared by clones so a budget holds across them.
    spent: Arc<Mutex<BTreeMap<String, u128>>>,
    /// Extra attempts with the same credential after a failed paid attempt.
    retries: u32,
}

impl PayingClient {
    /// A client paying by `policy`, with no wallets yet.
    pub fn new(http: reqwest::Client, policy: Policy) -> Self {
        PayingClient {
            http,
            wallets: Vec::new(),
            policy,
            spent: Arc::default(),
            retries: 0,
        }
    }

    /// Pay the wallet's scheme with it (a later wallet for the same scheme is ignored).
    #[must_use]
    pub fn wallet(mut self, wallet: impl Wallet + 'static) -> Self {
        self.wallets.push(Arc::new(wallet));
        self
    }

    /// After a paid attempt fails in transport, with a 5xx or a 409, try up to `retries` more
    /// times with the same credential (default 0: the caller gets the answer and the payment).
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The underlying HTTP client (to build requests).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Atomic units of `asset` paid so far.
    pub fn spent(&self, asset: &str) -> u128 {
        self.ledger()
            .get(&Policy::asset_key(asset))
            .copied()
            .unwrap_or(0)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u128>> {
        self.spent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET url`, paying if asked to.
    pub async fn get(&self, url: &str) -> Result<Paid, ClientError> {
        let request = self.http.get(url).build().map_err(ClientError::Http)?;
        self.send(request).await
    }

    /// Send `request`; on a 402, pay one offer by policy and send it again.
    pub async fn send(&self, request: reqwest::Request) -> Result<Paid, ClientError> {
        let again = request.try_clone();
        let first = self
            .http
            .execute(request)
            .await
            .map_err(ClientError::Http)?;
        if first.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
            return Ok(Paid {
                response: first,
                payment: None,
            });
        }
        let required = requirements(&first)?;
        let again = again.ok_or(ClientError::NotRepeatable)?;
        let payment = self.pay(required).await?;
        self.send_with(again, payment).await
    }

    /// Choose an offer, reserve its amount in the budget and get a credential for it.
    async fn pay(&self, required: Value) -> Result<Payment, ClientError> {
        let accepts = required
            .get("accepts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let offer = {
            // Choose and reserve under one lock: concurrent calls never overspend the budget.
            let mut spent = self.ledger();
            let offer = self
                .policy
                .select(
                    &accepts,
                    |asset| spent.get(asset).copied().unwrap_or(0),
                    |scheme| self.wallet_for(scheme).is_some(),
                )
                .map_err(ClientError::Refused)?;
            *spent.entry(Policy::asset_key(&offer.asset)).or_default() += offer.amount;
            offer
        };
        let paid = match self.wallet_for(&offer.scheme) {
            Some(wallet) => wallet.pay(&offer, &required).await,
            None => Err(WalletError::Invalid("no wallet".into())),
        };
        match paid {
            Ok(credential) => Ok(Payment {
                offer,
                credential,
                required,
            }),
            Err(e) => {
                // Nothing was paid: give the reservation back.
                let mut spent = self.ledger();
                let s = spent.entry(Policy::asset_key(&offer.asset)).or_default();
                *s = s.saturating_sub(offer.amount);
                Err(e.into())
            }
        }
    }

    fn wallet_for(&self, scheme: &str) -> Option<&Arc<dyn Wallet>> {
        self.wallets.iter().find(|w| w.scheme() == scheme)
    }

    /// Send `request` with an already obtained payment's credential (never pays again),
    /// repeating up to [`retries`](Self::retries) times on a transport error, 5xx or 409.
    pub async fn send_with(
        &self,
        request: reqwest::Request,
        payment: Payment,
    ) -> Result<Paid, ClientError> {
        let mut attempts_left = self.retries;
        let mut next = request;
        // One key for every attempt of this logical request (unless the caller chose one).
        if !next.headers().contains_key(IDEMPOTENCY_KEY) {
            if let Ok(key) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())
            {
                next.headers_mut().insert(IDEMPOTENCY_KEY, key);
            }
        }
        loop {
            // A copy for the next attempt, while attempts are left (none for a streaming body).
            let spare = if attempts_left > 0 {
                next.try_clone()
            } else {
                None
            };
            let mut attempt = next;
            attempt.headers_mut().insert(
                payment.credential.header.clone(),
                payment.credential.value.clone(),
            );
            let result = self.http.execute(attempt).await;
            let failed = match &result {
                Ok(res) => {
                    res.status().is_server_error() || res.status() == reqwest::StatusCode::CONFLICT
                }
                Err(_) => true,
            };
            match spare {
                Some(spare) if failed => {
                    next = spare;
                    attempts_left -= 1;
                }
                _ => {
                    return match result {
                        Ok(response) => Ok(Paid {
                            response,
                            payment: Some(payment),
                        }),
                        Err(source) => Err(ClientError::AfterPayment {
                            payment: Box::new(payment),
                            source,
                        }),
                    }
                }
            }
        }
    }
}

/// The request header naming one logical request across retries.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The decoded `PAYMENT-REQUIRED` of a 402.
fn requirements(res: &reqwest::Response) -> Result<Value, ClientError> {
    let header = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ClientError::MissingRequirements("no header".into()))?;
    let bytes = STANDARD
        .decode(header.trim())
        .map_err(|e| ClientError::MissingRequirements(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::MissingRequirements(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use async_trait::async_trait;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::any;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out numbered credentials, counting them.
    #[derive(Debug, Default)]
    struct CountingWallet(Arc<AtomicUsize>);

    #[async_trait]
    impl Wallet for CountingWallet {
        fn scheme(&self) -> &str {
            RECEIPT_SCHEME
        }
        async fn pay(&self, _: &Offer, _: &Value) -> Result<Credential, WalletError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Credential {
                header: http::HeaderName::from_static("x-credential"),
                value: http::HeaderValue::from_str(&format!("c{n}")).unwrap(),
            })
        }
    }

    fn required() -> String {
        STANDARD.encode(
            json!({"x402Version": 2, "accepts": [{"scheme": RECEIPT_SCHEME, "amount": "10",
                   "asset": "USD", "payTo": "m", "extra": {"kind": "payment"}}]})
            .to_string(),
        )
    }

    /// A server that asks for payment, then answers `statuses` in turn to paid attempts,
    /// recording the credentials it saw.
    async fn server(statuses: Vec<u16>, header: bool) -> (String, Arc<Mutex<Vec<String>>>) {
        let (url, seen, _) = server_with_keys(statuses, header).await;
        (url, seen)
    }

    /// [`server`], also recording each paid attempt's `Idempotency-Key`.
    #[allow(clippy::type_complexity)]
    async fn server_with_keys(
        statuses: Vec<u16>,
        header: bool,
    ) -> (String, Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let all_keys = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let k = all_keys.clone();
        let app = axum::Router::new().route(
            "/",
            any(move |h: HeaderMap| {
                let s = s.clone();
                let keys = k.clone();
                let statuses = statuses.clone();
                async move {
                    let Some(c) = h.get("x-credential") else {
                        let mut res = StatusCode::PAYMENT_REQUIRED.into_response();
                        if header {
                            res.headers_mut()
                                .insert(PAYMENT_REQUIRED, required().parse().unwrap());
                        }
                        return res;
                    };
                    let mut seen = s.lock().unwrap();
                    seen.push(c.to_str().unwrap().to_owned());
                    let key = h
                        .get(IDEMPOTENCY_KEY)
                        .map(|k| k.to_str().unwrap().to_owned());
                    keys.lock().unwrap().push(key.unwrap_or_default());
                    let status = statuses.get(seen.len() - 1).copied().unwrap_or(200);
                    StatusCode::from_u16(status).unwrap().into_response()
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, seen, all_keys)
    }

    fn client(calls: &Arc<AtomicUsize>, retries: u32) -> PayingClient {
        PayingClient::new(
            reqwest::Client::new(),
            Policy::new().max_per_call("USD", 10),
        )
        .wallet(CountingWallet(calls.clone()))
        .retries(retries)
    }

    #[tokio::test]
    async fn retries_reuse_the_one_credential() {
        let (url, seen, keys) = server_with_keys(vec![409, 503, 200], true).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let paid = client(&calls, 2).get(&url).await.unwrap();
        assert_eq!(paid.response.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(*seen.lock().unwrap(), ["c0", "c0", "c0"]);
        // One Idempotency-Key for the three attempts of the one logical request.
        let keys = keys.lock().unwrap().clone();
        assert_eq!(keys.len(), 3);
        assert!(
            !keys[0].is_empty() && keys.iter().all(|k| *k == keys[0]),
            "{keys:?}"
        );
        // Retries run out: the caller gets the failure and the payment.
        let (url, seen) = server(vec![500, 500], true).await;
        let c = client(&calls, 1);
        let paid = c.get(&url).await.unwrap();
        assert_eq!(paid.response.status(), 500);
        assert_eq!(paid.payment.unwrap().credential.value, "c1");
        assert_eq!(*seen.lock().unwrap(), ["c1", "c1"]);
        assert_eq!(c.spent("usd"), 10);
    }

    #[tokio::test]
    async fn an_unreadable_402_costs_nothing() {
        let (url, seen) = server(vec![], false).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let c = client(&calls, 0);
        let err = c.get(&url).await.unwrap_err();
        assert!(matches!(err, ClientError::MissingRequirements(_)), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(c.spent("USD"), 0);
        assert!(seen.lock().unwrap().is_empty());
    }
}

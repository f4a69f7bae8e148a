//! Building a [`Paywall`]: its settings, with their defaults, and the checks made once.

use super::*;

/// Setters that store their argument as is: `name: Type` gives `fn name(self, name: Type)`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)+) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $name: $ty) -> Self {
                self.settings.$name = $name;
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
    leases: Option<LeaseConfig>,
    settings: Settings,
}

/// The settings the engine keeps as given (a builder's, then the engine's).
#[derive(Debug)]
pub(super) struct Settings {
    /// Injected time.
    pub clock: Arc<dyn Clock>,
    /// Challenge validity.
    pub challenge_ttl: Duration,
    /// Extra hold time beyond the route timeout.
    pub hold_margin: Duration,
    /// Base for `resource.url`.
    pub public_base_url: Option<String>,
    /// The challenges' realm (`None`: the public host).
    pub realm: Option<String>,
    /// Currencies accepted for top-ups, with the suggested top-up amount.
    pub currencies: HashMap<String, (Currency, Option<Amount>)>,
    /// Access token lifetime.
    pub token_ttl: Duration,
    /// Prefix of the agent endpoints.
    pub agent_api: String,
    /// Retry window for captures whose outcome is unknown.
    pub settle_retry: Duration,
    /// Plans sold.
    pub plans: Vec<Plan>,
    /// Risk rules.
    pub risk: Vec<crate::risk::RiskRule>,
    /// Where risk flags and blocks are reported.
    pub webhooks: Option<crate::webhooks::Webhooks>,
    /// How DPoP proofs are judged.
    pub dpop: crate::dpop::DpopPolicy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
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
            risk: Vec::new(),
            webhooks: None,
            dpop: Default::default(),
        }
    }
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
            leases: None,
            settings: Settings::default(),
        }
    }
}

impl PaywallBuilder {
    /// Receipt limits (clock skew, lifetime, size).
    pub fn policy(mut self, policy: ReceiptPolicy) -> Self {
        self.policy = policy;
        self
    }

    setters! {
        /// Access tokens bound to the agent's key (RFC 9449; default off).
        dpop: crate::dpop::DpopPolicy,
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
        self.settings.risk = rules;
        self
    }

    /// Report risk flags and blocks as webhooks.
    pub fn webhooks(mut self, webhooks: crate::webhooks::Webhooks) -> Self {
        self.settings.webhooks = Some(webhooks);
        self
    }

    /// Sell a plan (see [`crate::plan`]).
    pub fn plan(mut self, plan: Plan) -> Self {
        self.settings.plans.push(plan);
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
        self.settings.public_base_url = Some(url.into().trim_end_matches('/').to_owned());
        self
    }

    /// The `realm` of `WWW-Authenticate: Payment` challenges (default: the public host --
    /// `public_base_url`'s, else the request's `Host` without its port).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.settings.realm = Some(realm.into());
        self
    }

    /// Accept top-ups in a currency; `suggested` is the top-up amount offered in 402s.
    pub fn currency(mut self, currency: Currency, suggested: Option<Amount>) -> Self {
        self.settings
            .currencies
            .insert(currency.code().to_owned(), (currency, suggested));
        self
    }

    /// Path prefix of the agent endpoints (default `/tollgate/v1`).
    pub fn agent_api(mut self, prefix: impl Into<String>) -> Self {
        self.settings.agent_api = prefix.into().trim_end_matches('/').to_owned();
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
            self.settings.clock.clone(),
        );
        let store = match self.store {
            Some(s) => s,
            None => Arc::new(
                SqliteStore::memory(self.settings.clock.clone())
                    .map_err(|e| BuildError::Store(e.to_string()))?,
            ),
        };
        let leases = self.leases.map(|c| {
            let keeper: Arc<dyn crate::store::LeaseStore> = store.clone();
            Arc::new(lease::LeaseBook::new(keeper, c, self.settings.settle_retry))
        });
        Ok(Paywall(Arc::new(Inner {
            merchant: self.merchant,
            network: self.network,
            challenge_key,
            token_key,
            issuer_ids: verifier.issuer_ids(),
            verifier,
            store,
            leases,
            settings: self.settings,
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

//! An admitted request: who pays, and what admission secured for it in the store -- one
//! variant of [`Secured`] per way a request is paid, each with its own settle (`settle.rs`,
//! `charged.rs`, `x402/`) and its own drop (below: a request abandoned unsettled gives back
//! what it secured, in the background).

use super::*;

/// A hold in the store: what is given back, renewed or reconciled.
#[derive(Debug, Clone)]
pub(super) enum Held {
    /// A receipt (or an x402 authorization), held single use.
    Receipt(Reservation),
    /// An amount held from the prepaid balance.
    Balance(Hold),
}

impl Held {
    /// Give the hold back (the request was not served).
    pub(super) async fn release(&self, store: &dyn Store) -> Result<(), crate::store::StoreError> {
        match self {
            Held::Receipt(r) => {
                crate::metrics::timed("release", store.settle(r, &Settlement::Release))
                    .await
                    .map(|_| ())
            }
            Held::Balance(hold) => crate::metrics::timed("release_hold", store.release_hold(hold))
                .await
                .map(|_| ()),
        }
    }

    /// Give the hold back in the background (an admission dropped unsettled).
    fn release_later(self, store: Arc<dyn Store>) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = self.release(store.as_ref()).await {
                    tracing::warn!(error = %e, "release after cancel failed; hold will expire");
                }
            });
        }
    }

    /// Extend the hold to `ttl` from now (its request is still being served).
    pub(super) async fn renew(
        &self,
        store: &dyn Store,
        ttl: Duration,
    ) -> Result<bool, crate::store::StoreError> {
        let renewal = match self {
            Held::Receipt(r) => crate::store::Renewal::Receipt(r),
            Held::Balance(hold) => crate::store::Renewal::Balance(hold),
        };
        crate::metrics::timed("renew", store.renew(renewal, ttl)).await
    }

    /// How long the hold lasts unrenewed.
    pub(super) fn ttl(&self) -> Duration {
        match self {
            Held::Receipt(r) => r.hold,
            Held::Balance(hold) => hold.ttl,
        }
    }
}

/// An amount held from the prepaid balance, with what admission decided about it.
#[derive(Debug, Clone)]
pub(super) struct BalanceHold {
    pub(super) hold: Hold,
    /// Most the request may be charged (a payment receipt's amount on a metered route, a
    /// mandate's per-payment maximum).
    pub(super) cap_minor: Option<u64>,
    /// Available balance right after the hold.
    pub(super) balance_minor: u64,
    /// A token issued with this request (a metered payment receipt funds a balance).
    pub(super) new_token: Option<String>,
    /// The charge decided at admission (a plan-covered call: 0; overage: the overage price),
    /// instead of the route's price or meters.
    pub(super) fixed_charge: Option<u64>,
}

/// What an admission secured in the store, until it is settled.
#[derive(Debug)]
pub(super) enum Secured {
    /// A fixed-price receipt held single use: captured after a served response, released
    /// otherwise.
    Receipt(Reservation),
    /// An amount held from the prepaid balance: the actual cost captured after the response
    /// (for a streamed metered body, after its end), the rest released.
    Balance(BalanceHold),
    /// Drawn from this replica's balance lease (no store call): the charge is recorded by the
    /// lease's next sync; a request not served gives the draw back in process.
    Lease(BalanceHold, super::lease::Draw),
    /// A fixed price charged at admission (`capture = "admission"`): voided if not served.
    Charged(Held, Box<super::charged::Charged>),
    /// An x402 `exact` payment: its authorization held single use, settled by the route's mode.
    X402(Reservation, Box<super::x402::X402Pending>),
    /// An x402 `upto` payment: its permit held single use (renewed while a body streams),
    /// settled at the measured cost.
    Upto(Reservation, Box<super::x402::UptoPending>),
    /// Settled, or being settled: nothing left to give back.
    Settled,
}

impl Secured {
    /// The hold that a streaming response keeps alive: only holds captured after the
    /// response (not a charge made at admission, not an x402 authorization).
    pub(super) fn renewable(&self) -> Option<Held> {
        match self {
            Secured::Receipt(r) | Secured::Upto(r, _) => Some(Held::Receipt(r.clone())),
            Secured::Balance(b) => Some(Held::Balance(b.hold.clone())),
            // A lease is kept alive by its own syncs while a draw is in flight.
            Secured::Lease(..) | Secured::Charged(..) | Secured::X402(..) | Secured::Settled => {
                None
            }
        }
    }

    /// How long what was secured lasts unrenewed.
    pub(super) fn ttl(&self) -> Duration {
        match self {
            Secured::Receipt(r) | Secured::X402(r, _) | Secured::Upto(r, _) => r.hold,
            Secured::Balance(b) | Secured::Lease(b, _) => b.hold.ttl,
            Secured::Charged(h, _) => h.ttl(),
            Secured::Settled => Duration::ZERO,
        }
    }
}

/// A request that may proceed: what it secured stays secured until [`Admission::settle`].
#[derive(Debug)]
#[must_use = "an admission holds a receipt or balance until it is settled"]
pub struct Admission {
    pub(super) paywall: Paywall,
    pub(super) payment: Payment,
    pub(super) secured: Secured,
    pub(super) route: Arc<PricedRoute>,
    pub(super) method: String,
    pub(super) started: Instant,
    pub(super) request_bytes: RequestBodyCounter,
    pub(super) declared_request_bytes: Option<u64>,
    /// Paid through the Payment HTTP authentication scheme (`Authorization: Payment`): a
    /// served 2xx answer carries the draft's `Payment-Receipt`.
    pub(super) payment_scheme: bool,
    /// The request's `Idempotency-Key`, claimed for this payer until the request is settled.
    pub(super) idempotency: Option<idempotency::Claim>,
    /// The response body has reached the client (a stream settled at its end): a payment that
    /// fails now cannot withhold it.
    pub(super) delivered: bool,
}

impl Admission {
    /// Take what was secured, for settling: from here on the caller owns the outcome (if it
    /// is cancelled mid-way the hold simply expires: a capture may or may not have landed,
    /// never both, never twice).
    pub(super) fn take_secured(&mut self) -> Secured {
        let secured = std::mem::replace(&mut self.secured, Secured::Settled);
        if !matches!(secured, Secured::Settled) {
            crate::metrics::global().holds_in_flight.dec();
        }
        secured
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let store = self.paywall.0.store.clone();
        match self.take_secured() {
            Secured::Settled => {}
            Secured::Receipt(r) | Secured::Upto(r, _) => Held::Receipt(r).release_later(store),
            Secured::Balance(b) => Held::Balance(b.hold).release_later(store),
            Secured::Lease(_, draw) => draw.give_back(),
            Secured::Charged(held, charge) => self.abandon_charged(held, *charge),
            Secured::X402(r, x) => self.abandon_x402(r, *x),
        }
    }
}

impl Admission {
    /// Mark the response as delivered (called by the layer before settling a streamed body).
    pub(crate) fn mark_delivered(&mut self) {
        self.delivered = true;
    }

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
}

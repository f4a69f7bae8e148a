//! The engine's side of a stream paused for a top-up (`on_exhausted = "pause"`; the body's
//! side is [`crate::pause`]): which admissions can pause, the store step that grows their hold
//! from a top-up, the wait for that top-up, and the two events the client is sent.
//!
//! A paused stream learns of a top-up two ways: at once, when the top-up is credited on this
//! replica ([`TopupSignal`], announced by every credited receipt); and by asking the store
//! every [`POLL_EVERY`] (a top-up on another replica sharing the store). Either way the answer
//! comes from the store: one atomic [`crate::store::HoldExtension::extend_hold`] step moves
//! what the balance has, up to what the stream needs plus one reserve, into the hold.

use serde::Serialize;
use tokio::sync::broadcast;

use super::wire::Accept;
use super::*;
use crate::store::{HoldExtended, StoreError};

/// How often a paused stream asks the store whether its payer's balance grew (a top-up on
/// another replica). A top-up on this replica wakes it at once.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Top-ups credited on this replica, by payer: a paused stream of that payer wakes at once.
#[derive(Debug)]
pub(crate) struct TopupSignal(broadcast::Sender<Arc<str>>);

impl Default for TopupSignal {
    fn default() -> Self {
        // A waiter that falls behind is told it lagged and asks the store anyway.
        TopupSignal(broadcast::channel(64).0)
    }
}

impl TopupSignal {
    /// `payer`'s balance was credited.
    pub(super) fn announce(&self, payer: &str) {
        // No receiver (no paused stream) is the usual case, not an error.
        let _ = self.0.send(Arc::from(payer));
    }
}

/// What a paused stream needs of its admission: the hold to grow and how to ask for a top-up.
#[derive(Debug)]
pub(crate) struct PausePoint {
    paywall: Paywall,
    hold: Hold,
    /// Grown beyond the need by one route reserve, so the stream does not stop again at once.
    step_minor: u64,
    /// Where the top-up offer points (the request's own base URL).
    base: String,
    /// The route's id (metrics).
    route: String,
    /// The route's currency.
    currency: Currency,
}

/// How a wait for a top-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PauseEnd {
    /// The hold covers the pending chunk now: `held_minor` held, `balance_minor` available.
    Covered {
        /// What the hold holds.
        held_minor: u64,
        /// Available balance besides.
        balance_minor: u64,
    },
    /// Not covered yet: what the hold holds after moving what the balance had.
    Short {
        /// What the hold holds.
        held_minor: u64,
    },
    /// The pause timeout passed.
    TimedOut,
    /// The payer was blocked meanwhile.
    Blocked,
    /// The hold is gone (swept, or settled elsewhere).
    Lost,
}

impl Admission {
    /// Whether this stream can pause for a top-up: a balance hold without a receipt's or a
    /// mandate's cap (a top-up cannot raise a cap) and without a charge fixed at admission;
    /// any other admission is cut off as with `on_exhausted = "cut"`.
    pub(crate) fn pause_point(&self, head: &OwnedHead) -> Option<PausePoint> {
        let Secured::Balance(b) = &self.secured else {
            return None;
        };
        if b.cap_minor.is_some() || b.fixed_charge.is_some() || b.hold.mandate.is_some() {
            return None;
        }
        let metered = self.metered()?;
        let step_minor = metered.currency.to_minor(metered.reserve).unwrap_or(0);
        let h = head.head();
        Some(PausePoint {
            paywall: self.paywall.clone(),
            hold: b.hold.clone(),
            step_minor,
            base: self.paywall.base_url(h.headers, h.uri),
            route: self.route.id.clone(),
            currency: metered.currency.clone(),
        })
    }
}

impl PausePoint {
    /// Count a pause's step (`tollgate_stream_pauses_total`).
    pub(crate) fn count(&self, outcome: &str) {
        crate::metrics::global()
            .stream_pauses
            .with_label_values(&[self.route.as_str(), outcome])
            .inc();
    }

    /// What the hold holds at admission.
    pub(crate) fn held_at_admission(&self) -> u64 {
        self.hold.amount_minor
    }

    /// Listen for this replica's top-ups (before the first extension, so none is missed).
    pub(crate) fn listen(&self) -> broadcast::Receiver<Arc<str>> {
        self.paywall.0.topups.0.subscribe()
    }

    /// One store step: grow the hold (now `held_minor`) towards `cost_minor` plus one step.
    pub(crate) async fn extend(
        &self,
        held_minor: u64,
        cost_minor: u64,
    ) -> Result<PauseEnd, StoreError> {
        let want = cost_minor
            .saturating_add(self.step_minor)
            .saturating_sub(held_minor);
        let store = self.paywall.0.store.clone();
        let extended =
            crate::metrics::timed("extend_hold", store.extend_hold(&self.hold, want)).await?;
        Ok(match extended {
            HoldExtended::Extended {
                held_minor,
                balance_minor,
                ..
            } if held_minor >= cost_minor => PauseEnd::Covered {
                held_minor,
                balance_minor,
            },
            HoldExtended::Extended { held_minor, .. } => PauseEnd::Short { held_minor },
            HoldExtended::NotHeld => PauseEnd::Lost,
            HoldExtended::PayerBlocked => PauseEnd::Blocked,
        })
    }

    /// Wait until the hold covers `cost_minor` (a top-up: announced here, or seen by a poll of
    /// the store), or `deadline`.
    pub(crate) async fn wait(
        self: Arc<Self>,
        mut held_minor: u64,
        cost_minor: u64,
        deadline: tokio::time::Instant,
        mut topups: broadcast::Receiver<Arc<str>>,
    ) -> PauseEnd {
        let payer = self.hold.payer.clone();
        loop {
            let poll = tokio::time::sleep(POLL_EVERY);
            let announced = async {
                loop {
                    match topups.recv().await {
                        Ok(p) if *p == *payer => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        // No sender left (the engine was replaced by a reload): poll only.
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return PauseEnd::TimedOut,
                _ = poll => {}
                _ = announced => {}
            }
            match self.extend(held_minor, cost_minor).await {
                Ok(PauseEnd::Short { held_minor: h }) => held_minor = h,
                Ok(end) => return end,
                // Asked again at the next poll; the deadline still holds.
                Err(e) => tracing::warn!(error = %e, "a paused stream could not extend its hold"),
            }
        }
    }

    /// The `payment-need-topup` event: what is needed, the top-up offer, the deadline.
    pub(crate) fn need_event(&self, needed_minor: u64, timeout: Duration) -> Bytes {
        let (p, currency) = (&self.paywall, &self.currency);
        let ttl = i64::try_from(p.0.settings.challenge_ttl.as_secs()).unwrap_or(300);
        let issuers = p.0.issuer_ids.as_slice();
        let offer = p.topup_offer(currency, &self.base, ttl, (issuers, needed_minor));
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let body = NeedTopup {
            code: "balance_insufficient",
            detail: "the stream is paused: the balance is exhausted; top up (see accepts) before the deadline to continue",
            needed: currency.from_minor(needed_minor).to_string(),
            needed_atomic: needed_minor.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            deadline: p.0.settings.clock.now_ms().saturating_add(timeout_ms).div_euclid(1000),
            timeout_secs: timeout.as_secs(),
            topup_url: format!("{}{}/topup", self.base, p.0.settings.agent_api),
            // Empty when top-ups in this currency are not accepted here (an admin credit
            // still ends the pause).
            accepts: offer.into_iter().collect(),
        };
        sse_event("payment-need-topup", &body)
    }

    /// The `session-timeout` event that ends a paused stream: why it ended.
    pub(crate) fn end_event(end: PauseEnd, timeout: Duration) -> Bytes {
        let (code, detail) = match end {
            PauseEnd::Blocked => (
                "payer_blocked",
                "the stream ended while paused: the payer is blocked; charged what was delivered"
                    .to_owned(),
            ),
            _ => (
                "session_timeout",
                format!(
                    "no top-up arrived within {} s: the stream ended; charged what was delivered",
                    timeout.as_secs()
                ),
            ),
        };
        sse_event(
            "session-timeout",
            &SessionTimeout {
                code,
                detail: &detail,
            },
        )
    }
}

fn sse_event(name: &str, body: &impl Serialize) -> Bytes {
    let data = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The `payment-need-topup` event's data.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NeedTopup<'a> {
    /// Stable code (as the 402 of a request the balance does not cover).
    code: &'static str,
    /// For humans.
    detail: &'static str,
    /// The least top-up that lets the stream continue, decimal.
    needed: String,
    /// The same in atomic units.
    needed_atomic: String,
    /// Currency code.
    currency: &'a str,
    /// Its scale.
    decimals: u32,
    /// Until when the stream waits (Unix seconds).
    deadline: i64,
    /// How long it waits from the pause.
    timeout_secs: u64,
    /// Where the top-up receipt goes (the offer's `topupUrl`).
    topup_url: String,
    /// The top-up offer, as in a 402 (amount at least `needed`).
    accepts: Vec<Accept<'a>>,
}

/// The `session-timeout` event's data.
#[derive(Serialize)]
struct SessionTimeout<'a> {
    code: &'static str,
    detail: &'a str,
}

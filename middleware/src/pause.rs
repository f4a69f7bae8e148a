//! A metered event stream that runs dry **pauses for a top-up** instead of being cut
//! (`on_exhausted = "pause"` on a price with `cutoff = true`).
//!
//! When the next upstream chunk would cost more than the payer can pay, the chunk is kept --
//! not delivered, not charged -- and the upstream is not read further (backpressure). First
//! one store step grows the hold from the available balance (a top-up may have landed already:
//! the stream then goes on without a word). Otherwise the client gets
//!
//! ```text
//! event: payment-need-topup
//! data: {"code":"balance_insufficient","needed":"0.00012","neededAtomic":"120","currency":"USD",
//!        "decimals":6,"deadline":1796165700,"timeoutSecs":30,"topupUrl":"...","accepts":[...]}
//! ```
//!
//! and the stream waits up to the route's `pause_timeout_secs`, with an SSE comment every
//! [`KEEPALIVE_EVERY`]. A top-up by the same payer (the agent API; on this replica it wakes
//! the stream at once, on another one the next poll of the store sees it) is moved into the
//! hold -- once per need, up to the need plus one reserve -- and the kept chunk is delivered.
//! No top-up by the deadline: `event: session-timeout`, and the request is settled at what was
//! delivered (the kept chunk, its bytes and the usage in it, is not). A client that leaves
//! while paused is settled the same way. The engine's side is `paywall/pause.rs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::paywall::{PauseEnd, PausePoint};
use crate::store::StoreError;

/// How often a paused stream sends its client an SSE comment (`: paused ...`), so that idle
/// timeouts of proxies on the way do not close it.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

type Wait<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A stream that may pause: set up when its metered body starts streaming.
#[derive(Debug)]
pub(crate) struct Pausing {
    point: Arc<PausePoint>,
    /// The route's `pause_timeout_secs`.
    timeout: Duration,
    /// What the hold holds (the store's word after each extension).
    held_minor: u64,
}

impl Pausing {
    pub(crate) fn new(point: PausePoint, timeout: Duration) -> Self {
        let held_minor = point.held_at_admission();
        Pausing {
            point: Arc::new(point),
            timeout,
            held_minor,
        }
    }

    /// Pause on `chunk`, which would bring the stream's cost to `cost_minor`; `found`: the
    /// usage values read before it.
    pub(crate) fn pause(
        &self,
        chunk: Bytes,
        found: BTreeMap<String, u64>,
        cost_minor: u64,
    ) -> Paused {
        let topups = self.point.listen();
        let (point, held) = (self.point.clone(), self.held_minor);
        Paused {
            chunk,
            found,
            cost_minor,
            stage: Stage::First(
                Box::pin(async move { point.extend(held, cost_minor).await }),
                Some(topups),
            ),
            keepalive: Box::pin(tokio::time::sleep(KEEPALIVE_EVERY)),
        }
    }
}

/// A stream paused on a chunk it cannot pay for.
pub(crate) struct Paused {
    /// The upstream chunk: read (and metered) but not delivered.
    chunk: Bytes,
    /// The usage values read before it (put back if it is never delivered).
    found: BTreeMap<String, u64>,
    /// The stream's cost with it.
    cost_minor: u64,
    stage: Stage,
    keepalive: Pin<Box<tokio::time::Sleep>>,
}

enum Stage {
    /// One store step before anything is said: the balance may cover the chunk already.
    First(
        Wait<Result<PauseEnd, StoreError>>,
        Option<broadcast::Receiver<Arc<str>>>,
    ),
    /// The client was told; waiting for a top-up or the deadline.
    Waiting(Wait<PauseEnd>),
}

/// What a paused body does next.
pub(crate) enum Step {
    /// Send this (the need event, a keep-alive comment) and stay paused.
    Send(Bytes),
    /// Paid for: deliver `chunk`; the stream may now cost up to `limit_minor`.
    Resume { chunk: Bytes, limit_minor: u64 },
    /// Ended unpaid: forget the kept chunk ([`Paused::forget`]), send `notice`, settle.
    End(Bytes),
}

impl Paused {
    /// The kept chunk's length and the usage values before it, to take it out of the reading.
    pub(crate) fn forget(self) -> (usize, BTreeMap<String, u64>) {
        (self.chunk.len(), self.found)
    }

    /// The client left while paused: [`Self::forget`], counted.
    pub(crate) fn abandon(self, p: &Pausing) -> (usize, BTreeMap<String, u64>) {
        if matches!(self.stage, Stage::Waiting(_)) {
            p.point.count("client_gone");
        }
        self.forget()
    }

    pub(crate) fn poll_step(&mut self, cx: &mut Context<'_>, p: &mut Pausing) -> Poll<Step> {
        let end = match &mut self.stage {
            Stage::First(first, topups) => match first.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(PauseEnd::Covered {
                    held_minor,
                    balance_minor,
                })) => return Poll::Ready(self.resume(p, held_minor, balance_minor)),
                Poll::Ready(Ok(PauseEnd::Short { held_minor })) => {
                    p.held_minor = held_minor;
                    let topups = topups.take();
                    return Poll::Ready(self.announce(cx, p, topups));
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "a paused stream could not extend its hold");
                    let topups = topups.take();
                    return Poll::Ready(self.announce(cx, p, topups));
                }
                Poll::Ready(Ok(end)) => end,
            },
            Stage::Waiting(wait) => match wait.as_mut().poll(cx) {
                Poll::Ready(PauseEnd::Covered {
                    held_minor,
                    balance_minor,
                }) => {
                    p.point.count("resumed");
                    return Poll::Ready(self.resume(p, held_minor, balance_minor));
                }
                Poll::Ready(end) => end,
                Poll::Pending => {
                    if self.keepalive.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let next = tokio::time::Instant::now() + KEEPALIVE_EVERY;
                    self.keepalive.as_mut().reset(next);
                    return Poll::Ready(Step::Send(Bytes::from_static(
                        b": paused, waiting for a top-up\n\n",
                    )));
                }
            },
        };
        p.point.count(match end {
            PauseEnd::Blocked => "blocked",
            _ => "timed_out",
        });
        Poll::Ready(Step::End(PausePoint::end_event(end, p.timeout)))
    }

    fn resume(&mut self, p: &mut Pausing, held_minor: u64, balance_minor: u64) -> Step {
        p.held_minor = held_minor;
        Step::Resume {
            chunk: std::mem::take(&mut self.chunk),
            limit_minor: held_minor.saturating_add(balance_minor),
        }
    }

    /// Not covered: tell the client what is needed, then wait.
    fn announce(
        &mut self,
        cx: &mut Context<'_>,
        p: &Pausing,
        topups: Option<broadcast::Receiver<Arc<str>>>,
    ) -> Step {
        let needed = self.cost_minor.saturating_sub(p.held_minor).max(1);
        let deadline = tokio::time::Instant::now() + p.timeout;
        let topups = topups.unwrap_or_else(|| p.point.listen());
        let wait = p
            .point
            .clone()
            .wait(p.held_minor, self.cost_minor, deadline, topups);
        self.stage = Stage::Waiting(Box::pin(wait));
        self.keepalive
            .as_mut()
            .reset(tokio::time::Instant::now() + KEEPALIVE_EVERY);
        // Polled once the event is sent (the wait's timers must be registered).
        cx.waker().wake_by_ref();
        p.point.count("paused");
        Step::Send(p.point.need_event(needed, p.timeout))
    }
}

//! What the engine decides when it will not let a request through: a [`Refusal`] is plain data
//! (a stable code, a detail, the facts an agent needs to recover). `render.rs` writes it to the
//! wire -- the problem body, fresh payment requirements for a 402, `Retry-After`, an x402
//! `PAYMENT-RESPONSE` -- from typed structs, once, with nothing parsed back.

use std::borrow::Cow;

use serde::Serialize;

use crate::error::ErrorCode;

/// `Retry-After` of a 503 `store_unavailable`: a store that times out is usually back within
/// seconds (a Redis failover, a restart); agents back off from here.
pub(super) const STORE_RETRY_AFTER_SECS: u64 = 2;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Refusal {
    /// The stable code (its status is [`ErrorCode::status`]).
    pub code: ErrorCode,
    /// Human detail (for 5xx it stays generic; the cause is logged, never sent).
    pub detail: Cow<'static, str>,
    /// A 402 that carries fresh payment requirements (offers) for the request's route.
    pub offers: bool,
    /// When to retry, in seconds (`Retry-After`).
    pub retry_after_secs: Option<u64>,
    /// What the refusal tells besides (boxed: refusals are returned by value everywhere).
    pub standing: Option<Box<Standing>>,
}

/// What a refusal tells the agent besides its code, so it can act without another call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The available prepaid balance (a decimal string), for `balance_insufficient`.
    Balance(String),
    /// The plan whose included usage is used up, for `plan_exhausted`.
    Plan(PlanStanding),
    /// The spending mandate's window, for `mandate_exceeded`.
    Mandate(MandateStanding),
    /// The request this `Idempotency-Key` was used for, for `idempotency_key_used`.
    Served(Served),
    /// An x402 payment's failure (`errorReason`, and a `PAYMENT-RESPONSE` with
    /// `success: false`).
    X402(X402Failure),
    /// Which DPoP check failed (`reason`, e.g. `proof_stale`), for `dpop_proof_invalid`.
    Dpop(&'static str),
}

/// A plan used up for its period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStanding {
    /// The plan id.
    pub id: String,
    /// When the period ends (Unix seconds).
    pub period_end: i64,
}

/// A mandate's budget and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MandateStanding {
    /// Room left in this window (decimal).
    pub room_left: String,
    /// The window's budget (decimal).
    pub budget: String,
    /// The mandate's currency.
    pub currency: String,
    /// What this request asked (decimal).
    pub requested: String,
    /// When the window started (Unix seconds).
    pub window_start: i64,
    /// When the window resets (Unix seconds).
    pub resets_at: i64,
}

/// The earlier request an `Idempotency-Key` was used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    /// Its ledger event.
    pub event_id: String,
    /// When it was charged (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
}

/// An x402 payment's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X402Failure {
    /// The x402 reason (e.g. `invalid_exact_evm_payload_signature`).
    pub reason: String,
    /// The offer's network.
    pub network: String,
    /// The payer's address, when known.
    pub payer: Option<String>,
}

impl Refusal {
    /// A refusal; a 402 code carries fresh payment requirements.
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
            offers: code.status() == http::StatusCode::PAYMENT_REQUIRED,
            retry_after_secs: None,
            standing: None,
        }
    }

    /// A refusal that carries no payment requirements, whatever its status.
    pub fn plain(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            offers: false,
            ..Refusal::new(code, detail)
        }
    }

    /// The generic 500 (the cause is logged where it happens).
    pub fn internal() -> Self {
        Refusal::plain(ErrorCode::Internal, "internal error")
    }

    /// The store did not answer: fail closed (503), nothing charged.
    pub fn store_down(e: impl std::fmt::Display, during: &str) -> Self {
        tracing::error!(error = %e, during, "store unavailable; failing closed");
        Refusal::plain(
            ErrorCode::StoreUnavailable,
            "payments are temporarily unavailable; retry later (nothing was charged)",
        )
        .retry_after(STORE_RETRY_AFTER_SECS)
    }

    /// Retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Tell where the payer stands.
    pub fn standing(mut self, standing: Standing) -> Self {
        self.standing = Some(Box::new(standing));
        self
    }

    /// The x402 failure this refusal carries, if any.
    pub fn x402_failure(&self) -> Option<&X402Failure> {
        match self.standing.as_deref() {
            Some(Standing::X402(x)) => Some(x),
            _ => None,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> http::StatusCode {
        self.code.status()
    }

    /// Whether nothing but the code and detail is said (a 402 of this kind is cacheable).
    pub(super) fn is_bare(&self) -> bool {
        self.retry_after_secs.is_none() && self.standing.is_none()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

impl std::error::Error for Refusal {}

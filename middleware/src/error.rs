//! Refusals: one [`ErrorCode`] enum whose snake_case names are a stable public contract, and
//! the RFC 9457 `application/problem+json` body every refusal carries.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

/// Every reason Tollgate refuses a request. The serialized (snake_case) names are part of the
/// wire protocol: agents branch on them, so a code is never renamed once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No payment credential on a priced route.
    PaymentRequired,
    /// A payment header is present but cannot be decoded (bad base64, bad JSON, wrong shape).
    CredentialMalformed,
    /// More than one payment header on one request.
    CredentialAmbiguous,
    /// The payment names a scheme this route does not accept.
    SchemeUnsupported,
    /// The receipt is larger than the configured limit.
    ReceiptTooLarge,
    /// The receipt is not a well-formed JWT or its claims have the wrong types.
    ReceiptMalformed,
    /// The JWT `alg` is not on the allow-list (EdDSA, ES256).
    ReceiptUnsupportedAlgorithm,
    /// The `iss` is not a trusted issuer.
    ReceiptUntrustedIssuer,
    /// The issuer has no key with the receipt's `kid`.
    ReceiptUnknownKey,
    /// The signature does not verify.
    ReceiptInvalidSignature,
    /// `exp` is in the past (beyond the allowed clock skew).
    ReceiptExpired,
    /// `nbf` or `iat` is in the future (beyond the allowed clock skew).
    ReceiptNotYetValid,
    /// `exp - iat` exceeds the configured maximum lifetime.
    ReceiptLifetimeTooLong,
    /// `aud` does not name this merchant.
    ReceiptWrongAudience,
    /// The receipt's `kind` cannot pay for this request.
    ReceiptKindUnsupported,
    /// The receipt was already spent.
    ReceiptReplayed,
    /// The receipt is being used by another request that has not finished.
    ReceiptInUse,
    /// The provider revoked the receipt.
    ReceiptRevoked,
    /// The receipt's `amount` is not a valid decimal amount for its currency.
    AmountInvalid,
    /// The receipt's `amount` is below the route's price.
    AmountInsufficient,
    /// The receipt's `currency` is not the route's currency.
    CurrencyMismatch,
    /// The receipt's `challenge` is not a valid challenge id.
    ChallengeInvalid,
    /// The receipt's `challenge` has expired.
    ChallengeExpired,
    /// The receipt's `challenge` was issued for another route, method or price.
    ChallengeMismatch,
    /// The payer is blocked by the provider.
    PayerBlocked,
    /// The payer exceeded the route's rate limit (see `Retry-After`).
    RateLimited,
    /// A risk rule refused the request (spend or request velocity, a spike, the issuer's cap
    /// on new payers; see `Retry-After`).
    RiskLimited,
    /// The access token is malformed, forged or from a rotated key.
    TokenInvalid,
    /// The access token has expired (top up again or renew it).
    TokenExpired,
    /// A DPoP proof is needed: the access token is bound to a key (RFC 9449), or the gateway
    /// takes only bound tokens (`[agent] dpop = "required"`).
    DpopProofRequired,
    /// The DPoP proof failed a check (`reason` in the body names it).
    DpopProofInvalid,
    /// The DPoP proof (its `jti`) was used already.
    DpopProofReplayed,
    /// The prepaid balance does not cover the price or reservation.
    BalanceInsufficient,
    /// The top-up's currency is not accepted here.
    CurrencyUnsupported,
    /// An x402 `exact` payment failed a local check (`errorReason` in the body and in
    /// `PAYMENT-RESPONSE` carries the x402 reason, e.g. `invalid_exact_evm_payload_signature`).
    X402PaymentInvalid,
    /// This x402 authorization (`from`, `nonce`) was used already.
    X402AuthorizationReplayed,
    /// Another request is using this x402 authorization right now.
    X402AuthorizationInUse,
    /// The facilitator refused to settle (or verify) the payment (`errorReason`: its reason).
    X402SettlementFailed,
    /// The facilitator could not be reached or gave no usable answer (or the settlement is
    /// pending): nothing was served.
    FacilitatorUnavailable,
    /// The issuer's key set could not be fetched.
    IssuerUnavailable,
    /// The payment store (Redis) is unreachable: paid routes fail closed.
    StoreUnavailable,
    /// A malformed admin request (missing field, bad JSON, missing idempotency key).
    InvalidRequest,
    /// No or wrong admin token.
    Unauthorized,
    /// The request path has `.`/`..` segments (raw or percent-encoded), refused so an
    /// upstream's path normalization cannot reach a different route than the one priced.
    PathInvalid,
    /// No route matches the request.
    RouteNotFound,
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// A protocol upgrade (WebSocket) on a route that does not allow it: priced routes serve
    /// plain requests only (a spliced connection cannot be metered).
    UpgradeNotSupported,
    /// The request body is larger than the route allows.
    BodyTooLarge,
    /// The upstream could not be reached or failed before answering.
    UpstreamUnavailable,
    /// The upstream did not answer within the route's timeout.
    UpstreamTimeout,
    /// The mandate (spending authority) is malformed, forged, expired or not the payer's.
    MandateInvalid,
    /// The mandate was revoked (by the provider or its issuer).
    MandateRevoked,
    /// The mandate does not allow this payment (merchant, route group, currency, or the
    /// per-payment maximum).
    MandateForbidden,
    /// The mandate's budget for the current window does not cover this payment (the body
    /// tells the room left and when the window resets).
    MandateExceeded,
    /// The plan's included usage for this period is used up and the plan denies more (the
    /// 402 offers a renewal).
    PlanExhausted,
    /// The plan named by a subscription receipt is not sold here.
    PlanUnknown,
    /// The `Idempotency-Key` header is malformed (empty, too long, outside its character
    /// set, or sent more than once).
    IdempotencyKeyInvalid,
    /// A request with this `Idempotency-Key` is still being served; retry when it finishes.
    IdempotencyKeyInUse,
    /// A request with this `Idempotency-Key` was already served and charged (`eventId` in the
    /// body names the original usage event); nothing was charged again.
    IdempotencyKeyUsed,
    /// This `Idempotency-Key` was used for a different request (method, route or target).
    IdempotencyKeyMismatch,
    /// An admin operation that moves money was sent without its `Idempotency-Key` header.
    IdempotencyKeyRequired,
    /// No ledger entry has this id.
    EventNotFound,
    /// The ledger entry cannot be refunded (a void, not a charge).
    EventNotRefundable,
    /// The charge was voided (its money given back already): nothing to refund.
    ChargeVoided,
    /// The refund is larger than what remains refundable of the charge (the body's
    /// `refundable` says how much does).
    RefundExceedsCharge,
    /// The refund amount is not a positive decimal within the currency's scale.
    RefundAmountInvalid,
    /// The charge is too old to be refunded here.
    RefundWindowClosed,
    /// An unexpected internal failure (details in the gateway log only).
    Internal,
}

impl ErrorCode {
    /// The stable wire name, e.g. `receipt_replayed`.
    pub fn as_str(&self) -> &'static str {
        use ErrorCode::*;
        match self {
            PaymentRequired => "payment_required",
            CredentialMalformed => "credential_malformed",
            CredentialAmbiguous => "credential_ambiguous",
            SchemeUnsupported => "scheme_unsupported",
            ReceiptTooLarge => "receipt_too_large",
            ReceiptMalformed => "receipt_malformed",
            ReceiptUnsupportedAlgorithm => "receipt_unsupported_algorithm",
            ReceiptUntrustedIssuer => "receipt_untrusted_issuer",
            ReceiptUnknownKey => "receipt_unknown_key",
            ReceiptInvalidSignature => "receipt_invalid_signature",
            ReceiptExpired => "receipt_expired",
            ReceiptNotYetValid => "receipt_not_yet_valid",
            ReceiptLifetimeTooLong => "receipt_lifetime_too_long",
            ReceiptWrongAudience => "receipt_wrong_audience",
            ReceiptKindUnsupported => "receipt_kind_unsupported",
            ReceiptReplayed => "receipt_replayed",
            ReceiptInUse => "receipt_in_use",
            ReceiptRevoked => "receipt_revoked",
            AmountInvalid => "amount_invalid",
            AmountInsufficient => "amount_insufficient",
            CurrencyMismatch => "currency_mismatch",
            ChallengeInvalid => "challenge_invalid",
            ChallengeExpired => "challenge_expired",
            ChallengeMismatch => "challenge_mismatch",
            PayerBlocked => "payer_blocked",
            RateLimited => "rate_limited",
            RiskLimited => "risk_limited",
            TokenInvalid => "token_invalid",
            TokenExpired => "token_expired",
            DpopProofRequired => "dpop_proof_required",
            DpopProofInvalid => "dpop_proof_invalid",
            DpopProofReplayed => "dpop_proof_replayed",
            BalanceInsufficient => "balance_insufficient",
            CurrencyUnsupported => "currency_unsupported",
            X402PaymentInvalid => "x402_payment_invalid",
            X402AuthorizationReplayed => "x402_authorization_replayed",
            X402AuthorizationInUse => "x402_authorization_in_use",
            X402SettlementFailed => "x402_settlement_failed",
            FacilitatorUnavailable => "facilitator_unavailable",
            IssuerUnavailable => "issuer_unavailable",
            StoreUnavailable => "store_unavailable",
            InvalidRequest => "invalid_request",
            Unauthorized => "unauthorized",
            PathInvalid => "path_invalid",
            RouteNotFound => "route_not_found",
            MethodNotAllowed => "method_not_allowed",
            UpgradeNotSupported => "upgrade_not_supported",
            BodyTooLarge => "body_too_large",
            UpstreamUnavailable => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            MandateInvalid => "mandate_invalid",
            MandateRevoked => "mandate_revoked",
            MandateForbidden => "mandate_forbidden",
            MandateExceeded => "mandate_exceeded",
            PlanExhausted => "plan_exhausted",
            PlanUnknown => "plan_unknown",
            IdempotencyKeyInvalid => "idempotency_key_invalid",
            IdempotencyKeyInUse => "idempotency_key_in_use",
            IdempotencyKeyUsed => "idempotency_key_used",
            IdempotencyKeyMismatch => "idempotency_key_mismatch",
            IdempotencyKeyRequired => "idempotency_key_required",
            EventNotFound => "event_not_found",
            EventNotRefundable => "event_not_refundable",
            ChargeVoided => "charge_voided",
            RefundExceedsCharge => "refund_exceeds_charge",
            RefundAmountInvalid => "refund_amount_invalid",
            RefundWindowClosed => "refund_window_closed",
            Internal => "internal",
        }
    }

    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        use ErrorCode::*;
        match self {
            CredentialMalformed
            | CredentialAmbiguous
            | PathInvalid
            | InvalidRequest
            | UpgradeNotSupported
            | IdempotencyKeyInvalid
            | IdempotencyKeyRequired
            | RefundAmountInvalid => StatusCode::BAD_REQUEST,
            IdempotencyKeyInUse | IdempotencyKeyUsed => StatusCode::CONFLICT,
            IdempotencyKeyMismatch | EventNotRefundable => StatusCode::UNPROCESSABLE_ENTITY,
            ChargeVoided | RefundExceedsCharge | RefundWindowClosed => StatusCode::CONFLICT,
            EventNotFound => StatusCode::NOT_FOUND,
            Unauthorized => StatusCode::UNAUTHORIZED,
            PayerBlocked | MandateRevoked | MandateForbidden | ReceiptRevoked => {
                StatusCode::FORBIDDEN
            }
            MandateInvalid => StatusCode::UNAUTHORIZED,
            RateLimited | RiskLimited => StatusCode::TOO_MANY_REQUESTS,
            TokenInvalid | TokenExpired | DpopProofRequired | DpopProofInvalid
            | DpopProofReplayed => StatusCode::UNAUTHORIZED,
            ReceiptInUse | X402AuthorizationInUse => StatusCode::CONFLICT,
            RouteNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            StoreUnavailable | IssuerUnavailable | FacilitatorUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // Every other refusal concerns the payment itself: answer 402 with a fresh
            // challenge, so the agent can pay again correctly.
            _ => StatusCode::PAYMENT_REQUIRED,
        }
    }

    /// A short human title for the problem body.
    pub fn title(&self) -> &'static str {
        use ErrorCode::*;
        match self {
            PaymentRequired => "Payment required",
            CredentialMalformed => "Malformed payment credential",
            CredentialAmbiguous => "More than one payment credential",
            SchemeUnsupported => "Payment scheme not accepted here",
            ReceiptTooLarge => "Receipt too large",
            ReceiptMalformed => "Malformed receipt",
            ReceiptUnsupportedAlgorithm => "Receipt signature algorithm not allowed",
            ReceiptUntrustedIssuer => "Receipt issuer not trusted",
            ReceiptUnknownKey => "Receipt signing key unknown",
            ReceiptInvalidSignature => "Receipt signature invalid",
            ReceiptExpired => "Receipt expired",
            ReceiptNotYetValid => "Receipt not yet valid",
            ReceiptLifetimeTooLong => "Receipt lifetime too long",
            ReceiptWrongAudience => "Receipt issued for another merchant",
            ReceiptKindUnsupported => "Receipt kind not accepted here",
            ReceiptReplayed => "Receipt already spent",
            ReceiptInUse => "Receipt in use by another request",
            ReceiptRevoked => "Receipt revoked",
            AmountInvalid => "Invalid amount",
            AmountInsufficient => "Amount does not cover the price",
            CurrencyMismatch => "Wrong currency",
            ChallengeInvalid => "Invalid challenge",
            ChallengeExpired => "Challenge expired",
            ChallengeMismatch => "Challenge issued for another request",
            PayerBlocked => "Payer blocked",
            RateLimited => "Rate limit exceeded",
            RiskLimited => "Refused by a risk rule",
            TokenInvalid => "Invalid access token",
            TokenExpired => "Access token expired",
            DpopProofRequired => "DPoP proof required",
            DpopProofInvalid => "Invalid DPoP proof",
            DpopProofReplayed => "DPoP proof replayed",
            BalanceInsufficient => "Prepaid balance too low",
            CurrencyUnsupported => "Currency not accepted",
            X402PaymentInvalid => "x402 payment invalid",
            X402AuthorizationReplayed => "x402 authorization already used",
            X402AuthorizationInUse => "x402 authorization in use by another request",
            X402SettlementFailed => "x402 settlement refused",
            FacilitatorUnavailable => "x402 facilitator unavailable",
            IssuerUnavailable => "Receipt issuer unavailable",
            StoreUnavailable => "Payment store unavailable",
            InvalidRequest => "Invalid request",
            Unauthorized => "Unauthorized",
            PathInvalid => "Invalid request path",
            RouteNotFound => "No such route",
            MethodNotAllowed => "Method not allowed",
            UpgradeNotSupported => "Protocol upgrade not allowed on this route",
            BodyTooLarge => "Request body too large",
            UpstreamUnavailable => "Upstream unavailable",
            UpstreamTimeout => "Upstream timed out",
            MandateInvalid => "Invalid spending mandate",
            MandateRevoked => "Spending mandate revoked",
            MandateForbidden => "Payment not allowed by the spending mandate",
            MandateExceeded => "Spending mandate budget exceeded",
            PlanExhausted => "Plan usage used up for this period",
            PlanUnknown => "No such plan",
            IdempotencyKeyInvalid => "Invalid Idempotency-Key",
            IdempotencyKeyInUse => "Idempotency-Key in use by a request in flight",
            IdempotencyKeyUsed => "Idempotency-Key already used: request already served",
            IdempotencyKeyMismatch => "Idempotency-Key used for a different request",
            IdempotencyKeyRequired => "Idempotency-Key required",
            EventNotFound => "No such ledger entry",
            EventNotRefundable => "Ledger entry not refundable",
            ChargeVoided => "Charge voided",
            RefundExceedsCharge => "Refund larger than what remains refundable",
            RefundAmountInvalid => "Invalid refund amount",
            RefundWindowClosed => "Charge too old to refund",
            Internal => "Internal error",
        }
    }
}

/// Base URI of the problem types of the Payment HTTP authentication scheme
/// (draft-httpauth-payment, "Error Codes").
pub const PAYMENT_PROBLEM_BASE: &str = "https://paymentauth.org/problems/";

impl ErrorCode {
    /// The draft-httpauth-payment problem type this refusal is an instance of, if one fits
    /// (e.g. `verification-failed`); `None`: only Tollgate's own `urn:tollgate:problem:<code>`.
    /// The mapping depends on the code alone, whatever header carried the credential: the
    /// stable `code` member stays the thing to branch on, `type` is the draft's view of it.
    pub fn payment_problem(&self) -> Option<&'static str> {
        use ErrorCode::*;
        Some(match self {
            PaymentRequired => "payment-required",
            AmountInsufficient | BalanceInsufficient => "payment-insufficient",
            ReceiptExpired | ChallengeExpired => "payment-expired",
            ReceiptUnsupportedAlgorithm
            | ReceiptUntrustedIssuer
            | ReceiptUnknownKey
            | ReceiptInvalidSignature
            | ReceiptNotYetValid
            | ReceiptLifetimeTooLong
            | ReceiptWrongAudience
            | ReceiptReplayed
            | AmountInvalid
            | CurrencyMismatch
            | X402PaymentInvalid
            | X402AuthorizationReplayed
            | X402SettlementFailed => "verification-failed",
            CredentialMalformed | CredentialAmbiguous => "malformed-credential",
            ReceiptMalformed | ReceiptTooLarge | ReceiptKindUnsupported => "invalid-payload",
            ChallengeInvalid | ChallengeMismatch => "invalid-challenge",
            SchemeUnsupported => "method-unsupported",
            IdempotencyKeyInvalid => "bad-request",
            _ => return None,
        })
    }

    /// The problem `type` URI: the draft's (`https://paymentauth.org/problems/<type>`) where
    /// one fits, else `urn:tollgate:problem:<code>`.
    pub fn problem_type(&self) -> String {
        match self.payment_problem() {
            Some(t) => format!("{PAYMENT_PROBLEM_BASE}{t}"),
            None => format!("urn:tollgate:problem:{}", self.as_str()),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RFC 9457 problem document. `type` is derived from the code ([`ErrorCode::problem_type`]).
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// [`ErrorCode::problem_type`]: the Payment scheme's problem type where one fits, else
    /// `urn:tollgate:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human summary.
    pub title: &'static str,
    /// The HTTP status, repeated as the RFC asks.
    pub status: u16,
    /// The stable machine-readable code.
    pub code: ErrorCode,
    /// Human detail. For 5xx it stays generic; the cause is logged, never sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (e.g. the x402 payment requirements).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem for a code, with its default status and title.
    pub fn new(code: ErrorCode) -> Self {
        Problem {
            kind: code.problem_type(),
            title: code.title(),
            status: code.status().as_u16(),
            code,
            detail: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Add a human-readable detail.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Add an extension member.
    #[must_use]
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// The JSON body.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing this struct cannot fail (string keys, plain values); fall back to a
        // minimal body rather than panic on a request path.
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"code\":\"internal\"}"))
    }

    /// An HTTP response with `application/problem+json` and `Cache-Control: no-store`.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        problem_response(self.code, self.to_bytes())
    }
}

/// A problem body as a response: the code's status, `application/problem+json`,
/// `Cache-Control: no-store`, and the code in the extensions (for metrics and logs).
pub(crate) fn problem_response<B: From<Bytes>>(code: ErrorCode, body: Bytes) -> Response<B> {
    let mut res = Response::new(B::from(body));
    *res.status_mut() = code.status();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.extensions_mut().insert(code);
    res
}

/// An error with its causes (`client error (Connect): tcp connect error: Connection refused`):
/// hyper's and reqwest's own messages name only the stage.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_names_match_as_str() {
        for code in [
            ErrorCode::PaymentRequired,
            ErrorCode::ReceiptReplayed,
            ErrorCode::ReceiptWrongAudience,
            ErrorCode::StoreUnavailable,
            ErrorCode::UpstreamTimeout,
            ErrorCode::X402PaymentInvalid,
            ErrorCode::X402AuthorizationInUse,
            ErrorCode::FacilitatorUnavailable,
        ] {
            let v = serde_json::to_value(code).unwrap();
            assert_eq!(v, serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn problem_body_is_rfc9457_shaped() {
        let p = Problem::new(ErrorCode::ReceiptExpired).detail("exp 5 s ago");
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(
            v["type"],
            "https://paymentauth.org/problems/payment-expired"
        );
        assert_eq!(v["status"], 402);
        assert_eq!(v["code"], "receipt_expired");
        assert_eq!(v["detail"], "exp 5 s ago");
        let v: serde_json::Value =
            serde_json::from_slice(&Problem::new(ErrorCode::RouteNotFound).to_bytes()).unwrap();
        assert_eq!(v["type"], "urn:tollgate:problem:route_not_found");
    }

    #[test]
    fn payment_problem_types_follow_the_draft() {
        for (code, t) in [
            (ErrorCode::PaymentRequired, "payment-required"),
            (ErrorCode::AmountInsufficient, "payment-insufficient"),
            (ErrorCode::BalanceInsufficient, "payment-insufficient"),
            (ErrorCode::ChallengeExpired, "payment-expired"),
            (ErrorCode::ReceiptExpired, "payment-expired"),
            (ErrorCode::ReceiptInvalidSignature, "verification-failed"),
            (ErrorCode::ReceiptReplayed, "verification-failed"),
            (ErrorCode::CredentialMalformed, "malformed-credential"),
            (ErrorCode::ReceiptMalformed, "invalid-payload"),
            (ErrorCode::ChallengeInvalid, "invalid-challenge"),
            (ErrorCode::ChallengeMismatch, "invalid-challenge"),
            (ErrorCode::SchemeUnsupported, "method-unsupported"),
            (ErrorCode::IdempotencyKeyInvalid, "bad-request"),
        ] {
            assert_eq!(
                code.problem_type(),
                format!("https://paymentauth.org/problems/{t}"),
                "{code}"
            );
        }
        for code in [
            ErrorCode::ReceiptInUse,
            ErrorCode::PayerBlocked,
            ErrorCode::StoreUnavailable,
            ErrorCode::IdempotencyKeyUsed,
            ErrorCode::Internal,
        ] {
            assert_eq!(code.problem_type(), format!("urn:tollgate:problem:{code}"));
        }
    }
}

//! The one renderer: a [`Refusal`] (data) becomes a response here, and only here -- the RFC 9457
//! problem body, for a 402 the fresh payment requirements (`PAYMENT-REQUIRED`, the Payment
//! scheme's `WWW-Authenticate`, the same requirements in the body), `Retry-After`, and for an
//! x402 failure a `PAYMENT-RESPONSE` with `success: false`. Bodies are serialized once from
//! typed structs; nothing rendered is parsed back.

use serde::Serialize;

use super::refusal::{MandateStanding, PlanStanding, Served, Standing};
use super::wire::{PaymentRequired, Requirements};
use super::*;

/// A response written by the engine (refusals, the agent endpoints).
pub type Reply = Response<Bytes>;

/// The request a refusal answers: what a 402's fresh offers are written for.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers (`Host` for the resource URL).
    pub headers: &'a HeaderMap,
}

impl<'a> Head<'a> {
    /// The head of a request.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Head {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
        }
    }
}

/// What a refusal after the request was forwarded needs of it (the request itself is gone):
/// its method, target and `Host`.
#[derive(Debug, Clone)]
pub struct OwnedHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl OwnedHead {
    /// Keep what a later refusal needs of `req`.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(h) = req.headers().get(header::HOST) {
            headers.insert(header::HOST, h.clone());
        }
        OwnedHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers,
        }
    }

    /// Borrowed, for [`Paywall::render`].
    pub fn head(&self) -> Head<'_> {
        Head {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
        }
    }
}

/// A refusal's body: the problem (with the requirements of a 402) and what the refusal tells
/// besides.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    problem: &'a Problem,
    #[serde(rename = "challengeId", skip_serializing_if = "Option::is_none")]
    challenge_id: Option<&'a str>,
    #[serde(flatten)]
    requirements: Option<&'a Requirements<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a PlanStanding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mandate: Option<&'a MandateStanding>,
    #[serde(flatten)]
    served: Option<&'a Served>,
    #[serde(rename = "errorReason", skip_serializing_if = "Option::is_none")]
    error_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl<'a> Body<'a> {
    fn new(problem: &'a Problem, standing: Option<&'a Standing>) -> Self {
        let mut body = Body {
            problem,
            challenge_id: None,
            requirements: None,
            balance: None,
            plan: None,
            mandate: None,
            served: None,
            error_reason: None,
            reason: None,
        };
        match standing {
            None => {}
            Some(Standing::Balance(b)) => body.balance = Some(b),
            Some(Standing::Plan(p)) => body.plan = Some(p),
            Some(Standing::Mandate(m)) => body.mandate = Some(m),
            Some(Standing::Served(s)) => body.served = Some(s),
            Some(Standing::X402(x)) => body.error_reason = Some(&x.reason),
            Some(Standing::Dpop(reason)) => body.reason = Some(reason),
        }
        body
    }
}

impl Body<'_> {
    fn to_bytes(&self) -> Bytes {
        // Plain strings and numbers: serializing cannot fail; fall back to a minimal body
        // rather than panic on a request path.
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"code\":\"internal\"}"))
    }
}

/// x402 `PAYMENT-RESPONSE` of a failed payment.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PaymentFailure<'a> {
    success: bool,
    error_reason: &'a str,
    transaction: &'a str,
    network: &'a str,
    payer: &'a str,
}

/// A value as base64 JSON, for a header.
pub(super) fn b64_header<T: Serialize + ?Sized>(v: &T) -> Option<HeaderValue> {
    // Runs on every paid response and every 402: the JSON written into one buffer sized for a
    // typical answer (no regrowth), the base64 into one string the header value then owns
    // (`from_maybe_shared` checks it without copying).
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, v).ok()?;
    let mut out = String::with_capacity(json.len().div_ceil(3) * 4);
    STANDARD.encode_string(&json, &mut out);
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// A JSON answer of the agent endpoints.
pub(super) fn json_response(status: StatusCode, v: &Value) -> Reply {
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
    /// Write a refusal. `request`: the route and request it answers (a 402 then carries fresh
    /// payment requirements for them; `None`: a plain problem).
    pub fn render(&self, r: &Refusal, request: Option<(&PricedRoute, Head<'_>)>) -> Reply {
        let mut res = match request.filter(|_| r.offers) {
            // The common 402 (no credential, a bad one): this second's cached answer.
            Some((route, head)) if r.is_bare() => self.challenge(
                route,
                head.method,
                head.uri,
                head.headers,
                r.code,
                &r.detail,
            ),
            Some((route, head)) => {
                self.count_challenge(route, r.code);
                self.build_challenge(route, head, r)
            }
            None => Self::plain(r),
        };
        let h = res.headers_mut();
        if let Some(secs) = r.retry_after_secs {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(x) = r.x402_failure() {
            let failure = PaymentFailure {
                success: false,
                error_reason: &x.reason,
                transaction: "",
                network: &x.network,
                payer: x.payer.as_deref().unwrap_or_default(),
            };
            if let Some(v) = b64_header(&failure) {
                h.insert(PAYMENT_RESPONSE, v);
            }
        }
        res
    }

    /// A plain problem response (no payment requirements).
    pub fn problem(code: ErrorCode, detail: &str) -> Reply {
        Self::plain(&Refusal::plain(code, detail.to_owned()))
    }

    fn plain(r: &Refusal) -> Reply {
        let problem = Problem::new(r.code).detail(r.detail.as_ref());
        let mut res = Self::respond(&problem, r);
        let challenge = match r.code {
            ErrorCode::TokenInvalid | ErrorCode::TokenExpired => {
                Some("Bearer error=\"invalid_token\"")
            }
            // RFC 9449 section 7.1: the DPoP scheme, the algorithms taken, and the error when
            // a proof was sent but is not good.
            ErrorCode::DpopProofRequired => Some("DPoP algs=\"EdDSA ES256\""),
            ErrorCode::DpopProofInvalid | ErrorCode::DpopProofReplayed => {
                Some("DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA ES256\"")
            }
            _ => None,
        };
        if let Some(c) = challenge {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        res
    }

    fn respond(problem: &Problem, r: &Refusal) -> Reply {
        let body = Body::new(problem, r.standing.as_deref());
        crate::error::problem_response(r.code, body.to_bytes())
    }

    fn count_challenge(&self, route: &PricedRoute, code: ErrorCode) {
        crate::metrics::global()
            .payment_required
            .with_label_values(&[route.id.as_str(), code.as_str()])
            .inc();
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
    ) -> Reply {
        self.count_challenge(route, code);
        let now = self.0.settings.clock.now_secs();
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
        let head = Head {
            method,
            uri,
            headers,
        };
        let res = self.build_challenge(route, head, &Refusal::new(code, detail.to_owned()));
        self.0.challenges.put(now, key, &res);
        res
    }

    pub(super) fn build_challenge(
        &self,
        route: &PricedRoute,
        head: Head<'_>,
        r: &Refusal,
    ) -> Reply {
        let req = self.requirements(route, (head.method, head.uri, head.headers));
        let header_value = b64_header(&PaymentRequired {
            requirements: &req,
            error: r.code.as_str(),
        });
        let base = self.base_url(head.headers, head.uri);
        let www_authenticate = payment_auth::challenge(&req, self.realm(&base));
        let problem = Problem::new(r.code).detail(r.detail.as_ref());
        let mut body = Body::new(&problem, r.standing.as_deref());
        body.challenge_id = req.payment_offer().map(|(_, p)| p.challenge.as_str());
        body.requirements = Some(&req);
        let mut res = crate::error::problem_response(r.code, body.to_bytes());
        if let Some(v) = header_value {
            res.headers_mut().insert(PAYMENT_REQUIRED, v);
        }
        if let Some(v) = www_authenticate {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::super::refusal::{MandateStanding, X402Failure};
    use super::*;
    use crate::money::{Currency, Money};

    fn paywall() -> Paywall {
        Paywall::builder("m", vec![7u8; 32]).build().unwrap()
    }

    fn route() -> PricedRoute {
        let usd = Currency::try_new("USD", 6).unwrap();
        let price = Money {
            amount: "0.01".parse().unwrap(),
            currency: usd,
        };
        PricedRoute::new("r", Price::fixed(price).unwrap())
    }

    fn body(res: &Reply) -> Value {
        serde_json::from_slice(res.body()).unwrap()
    }

    fn rendered(r: &Refusal) -> Reply {
        let (method, uri, headers) = (Method::GET, Uri::from_static("/r"), HeaderMap::new());
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        paywall().render(r, Some((&route(), head)))
    }

    #[test]
    fn the_realm_is_the_public_host_unless_configured() {
        let p = paywall();
        for (base, realm) in [
            ("http://api.example.com", "api.example.com"),
            ("https://api.example.com:8443", "api.example.com"),
            ("http://127.0.0.1:8402", "127.0.0.1"),
            ("http://[::1]:8402", "[::1]"),
            ("http://[::1]", "[::1]"),
            ("https://user@api.example.com/base", "api.example.com"),
            ("http://", "m"),
            ("", "m"),
        ] {
            assert_eq!(p.realm(base), realm, "{base}");
        }
        let configured = Paywall::builder("m", vec![7u8; 32])
            .realm("example.com")
            .build()
            .unwrap();
        assert_eq!(configured.realm("http://api.example.com"), "example.com");
        // The challenge names it: the request's Host without its port.
        let (method, uri) = (Method::GET, Uri::from_static("/r"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("api.example.com:8402"),
        );
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let res = p.render(
            &Refusal::new(ErrorCode::PaymentRequired, "pay"),
            Some((&route(), head)),
        );
        let www = res.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(www.contains("realm=\"api.example.com\""), "{www}");
    }

    #[test]
    fn a_402_carries_offers_and_the_standing_in_one_body() {
        let r = Refusal::new(ErrorCode::BalanceInsufficient, "top up")
            .standing(Standing::Balance("0.004".into()));
        let res = rendered(&r);
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(res.headers().contains_key(PAYMENT_REQUIRED));
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        let b = body(&res);
        assert_eq!(b["code"], "balance_insufficient");
        assert_eq!(b["detail"], "top up");
        assert_eq!(b["balance"], "0.004");
        assert_eq!(b["accepts"][0]["amount"], "10000");
        assert!(b["challengeId"].is_string());
        assert_eq!(res.extensions().get::<ErrorCode>(), Some(&r.code));
    }

    #[test]
    fn a_plain_refusal_carries_no_offers_whatever_its_status() {
        let res = rendered(&Refusal::plain(ErrorCode::BalanceInsufficient, "expired"));
        assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
        assert!(!res.headers().contains_key(PAYMENT_REQUIRED));
        assert!(body(&res).get("accepts").is_none());
        // Without a route there is nothing to offer either.
        let res = paywall().render(&Refusal::new(ErrorCode::PaymentRequired, "pay"), None);
        assert!(!res.headers().contains_key(PAYMENT_REQUIRED));
    }

    #[test]
    fn retry_after_mandate_and_x402_reason_are_written() {
        let m = MandateStanding {
            room_left: "0.05".into(),
            budget: "0.35".into(),
            currency: "USD".into(),
            requested: "0.10".into(),
            window_start: 1,
            resets_at: 2,
        };
        let r = Refusal::new(ErrorCode::MandateExceeded, "over")
            .standing(Standing::Mandate(m))
            .retry_after(42);
        let res = rendered(&r);
        assert_eq!(res.headers()[header::RETRY_AFTER], "42");
        let b = body(&res);
        assert_eq!(b["mandate"]["room_left"], "0.05");
        assert_eq!(b["mandate"]["resets_at"], 2);
        assert!(b["accepts"].is_array());

        let x = Refusal::new(ErrorCode::X402PaymentInvalid, "bad").standing(Standing::X402(
            X402Failure {
                reason: "invalid_exact_evm_payload_signature".into(),
                network: "eip155:8453".into(),
                payer: None,
            },
        ));
        let res = rendered(&x);
        assert_eq!(
            body(&res)["errorReason"],
            "invalid_exact_evm_payload_signature"
        );
        let pr = res.headers()[PAYMENT_RESPONSE].to_str().unwrap();
        let pr: Value = serde_json::from_slice(&STANDARD.decode(pr).unwrap()).unwrap();
        assert_eq!(pr["success"], false);
        assert_eq!(pr["errorReason"], "invalid_exact_evm_payload_signature");
        assert_eq!(pr["network"], "eip155:8453");
    }

    #[test]
    fn the_bare_402_is_the_cached_one_and_standing_is_never_cached() {
        let p = paywall();
        let (method, uri, headers) = (Method::GET, Uri::from_static("/r"), HeaderMap::new());
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let route = route();
        let bare = Refusal::new(ErrorCode::PaymentRequired, "pay");
        let a = p.render(&bare, Some((&route, head)));
        let b = p.render(&bare, Some((&route, head)));
        assert_eq!(a.body(), b.body());
        let rich = bare.clone().standing(Standing::Balance("1".into()));
        let c = p.render(&rich, Some((&route, head)));
        assert_eq!(body(&c)["balance"], "1");
        assert!(body(&a).get("balance").is_none());
    }

    #[tokio::test]
    async fn agent_endpoints_name_the_method_to_use() {
        let p = paywall();
        let h = HeaderMap::new();
        for (method, path, want) in [
            (
                Method::GET,
                "/tollgate/v1/topup",
                "use POST /tollgate/v1/topup",
            ),
            (
                Method::GET,
                "/tollgate/v1/token",
                "use POST /tollgate/v1/token",
            ),
            (
                Method::PUT,
                "/tollgate/v1/subscribe",
                "use POST /tollgate/v1/subscribe",
            ),
            (
                Method::POST,
                "/tollgate/v1/balance",
                "use GET /tollgate/v1/balance",
            ),
        ] {
            let res = p.agent_api(&method, path, &h).await.unwrap();
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(body(&res)["detail"], want);
        }
    }
}

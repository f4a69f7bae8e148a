//! The agent endpoints: top-up, token renewal and the balance view.

use std::collections::BTreeMap;

use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Value};

use super::admit::CreditReason;
use super::{json_response, Paywall, Refusal, Reply, RequestLine};
use crate::credential::{self, Credential};
use crate::error::ErrorCode;
use crate::mandate::Mandate;
use crate::receipt::ReceiptKind;
use crate::store::{Account, SubscribeOutcome, Subscription, UsageEvent};
use crate::token::{Binding, TokenClaims};

impl Paywall {
    /// Whether `path` is one of the agent endpoints.
    pub fn is_agent_api(&self, path: &str) -> bool {
        path.strip_prefix(self.0.settings.agent_api.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Serve an agent endpoint (`None` if `path` is not one):
    /// - `POST <prefix>/topup` with a `kind: "topup"` receipt: credit it (once) and return an
    ///   access token;
    /// - `POST <prefix>/token` with `Authorization: Bearer <token>`: a fresh token;
    /// - `GET <prefix>/balance` with `Authorization: Bearer <token>`: the prepaid balances.
    ///
    /// (`GET <prefix>/usage`, the caller's own events, is the gateway's: it reads the ledger
    /// database when there is one.)
    ///
    /// A DPoP proof names this request (`method` and `path`); see [`Paywall::agent_api_as`].
    pub async fn agent_api(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Reply> {
        path.strip_prefix(self.0.settings.agent_api.as_str())?;
        let uri = Uri::try_from(path).unwrap_or_default();
        self.agent_api_as(method, path, headers, RequestLine { method, uri: &uri })
            .await
    }

    /// [`Paywall::agent_api`] for an endpoint reached through another request (the MCP
    /// server's): `line` is the request as the agent sent it, which a DPoP proof names.
    pub async fn agent_api_as(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        line: RequestLine<'_>,
    ) -> Option<Reply> {
        let rest = path.strip_prefix(self.0.settings.agent_api.as_str())?;
        let res = match (method.as_str(), rest) {
            ("POST", "/topup") => self.topup(headers, line).await,
            ("POST", "/token") => self.renew(headers, line).await,
            ("POST", "/subscribe") => self.subscribe(headers, line).await,
            ("GET", "/balance") => self.balance(headers, line).await,
            (_, "/topup" | "/token" | "/subscribe") => Self::problem(
                ErrorCode::MethodNotAllowed,
                &format!("use POST {}{rest}", self.0.settings.agent_api),
            ),
            (_, "/balance" | "/usage") => Self::problem(
                ErrorCode::MethodNotAllowed,
                &format!("use GET {}{rest}", self.0.settings.agent_api),
            ),
            _ => Self::problem(ErrorCode::RouteNotFound, "no such agent endpoint"),
        };
        Some(res)
    }

    fn token_body(&self, payer: &str, mandate: Option<&Mandate>, jkt: Option<&str>) -> Value {
        let now = self.0.settings.clock.now_secs();
        let ttl = i64::try_from(self.0.settings.token_ttl.as_secs()).unwrap_or(86_400);
        let exp = mandate.map_or(now + ttl, |m| (now + ttl).min(m.expires_at));
        let bound = Binding { mandate, jkt };
        let mut body = json!({
            "access_token": self.0.token_key.issue_bound(payer, now, ttl, bound),
            // RFC 9449 section 5: a bound token is of type DPoP.
            "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
            "expires_at": exp,
            "payer": payer,
        });
        if let Some(m) = mandate {
            body["mandate"] = m.summary();
        }
        if let Some(jkt) = jkt {
            body["cnf"] = json!({ "jkt": jkt });
        }
        body
    }

    /// The mandate a new token is bound to: the one the old token was bound to (a renewal
    /// cannot shed it), else the top-up receipt's `mandate` claim or the `Tollgate-Mandate`
    /// header -- verified and granted to `payer`.
    async fn bind_mandate(
        &self,
        payer: &str,
        bound: Option<Mandate>,
        claim: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Option<Mandate>, Refusal> {
        let m = self.mandate_for(claim, bound, headers).await?;
        if let Some(m) = &m {
            if m.payer != payer {
                return Err(Refusal::plain(
                    ErrorCode::MandateInvalid,
                    "the mandate was granted to another agent (sub)",
                ));
            }
        }
        Ok(m)
    }

    /// The verified receipt of `kind` (top-up or subscribe) the request carries, or the
    /// problem to answer.
    async fn receipt_of_kind(
        &self,
        headers: &HeaderMap,
        kind: ReceiptKind,
    ) -> Result<crate::receipt::Receipt, Reply> {
        let (missing, wrong) = match kind {
            ReceiptKind::Subscribe => (
                "send a kind \"subscribe\" receipt naming the plan",
                "only kind \"subscribe\" receipts buy a plan",
            ),
            _ => (
                "send a kind \"topup\" receipt (Authorization: Payment or PAYMENT-SIGNATURE)",
                "only kind \"topup\" receipts credit a balance",
            ),
        };
        let token = match credential::extract(headers) {
            Ok(Some(Credential::Receipt { token, .. })) => token,
            Ok(_) => return Err(Self::problem(ErrorCode::PaymentRequired, missing)),
            Err(e) => return Err(Self::problem(e.code, &e.detail)),
        };
        let receipt = self
            .0
            .verifier
            .verify(&token)
            .await
            .map_err(|e| Self::problem(e.code, &e.detail))?;
        if receipt.kind != kind {
            return Err(Self::problem(ErrorCode::ReceiptKindUnsupported, wrong));
        }
        Ok(receipt)
    }

    async fn topup(&self, headers: &HeaderMap, line: RequestLine<'_>) -> Reply {
        let receipt = match self.receipt_of_kind(headers, ReceiptKind::Topup).await {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let Some((currency, _)) = self.0.settings.currencies.get(&receipt.currency) else {
            return Self::problem(
                ErrorCode::CurrencyUnsupported,
                &format!("{:?} is not accepted here", receipt.currency),
            );
        };
        let minor = match receipt.amount.minor(currency) {
            Ok(m) if m > 0 => m,
            Ok(_) => {
                return Self::problem(
                    ErrorCode::AmountInvalid,
                    "a top-up must be greater than zero",
                )
            }
            Err(e) => return Self::problem(ErrorCode::AmountInvalid, &e.to_string()),
        };
        let mandate = match self
            .bind_mandate(&receipt.payer, None, receipt.mandate.as_deref(), headers)
            .await
        {
            Ok(m) => m,
            Err(r) => return self.render(&r, None),
        };
        // Before the credit: a refused proof spends nothing.
        let jkt = match self.binding_key(headers, line, None).await {
            Ok(k) => k,
            Err(r) => return self.render(&r, None),
        };
        match self
            .credit_receipt(&receipt, currency, minor, CreditReason::Topup)
            .await
        {
            Ok((credit_id, balance_minor, duplicate)) => {
                tracing::info!(payer = %receipt.payer, amount = %currency.from_minor(minor), currency = %receipt.currency, duplicate, "top-up");
                if !duplicate {
                    crate::metrics::global()
                        .topups_minor
                        .with_label_values(&[currency.code()])
                        .inc_by(minor);
                }
                let mut body = self.token_body(&receipt.payer, mandate.as_ref(), jkt.as_deref());
                body["credited"] = currency.from_minor(minor).to_string().into();
                body["currency"] = currency.code().into();
                body["balance"] = currency.from_minor(balance_minor).to_string().into();
                body["credit_id"] = credit_id.into();
                body["duplicate"] = duplicate.into();
                json_response(StatusCode::OK, &body)
            }
            Err(r) => self.render(&r, None),
        }
    }

    /// `POST <prefix>/subscribe` with a `kind: "subscribe"` receipt naming a plan (`plan`
    /// claim), paying at least its price: one period bought (exactly once per receipt), and an
    /// access token whose calls on the plan's routes count against it.
    async fn subscribe(&self, headers: &HeaderMap, line: RequestLine<'_>) -> Reply {
        let receipt = match self.receipt_of_kind(headers, ReceiptKind::Subscribe).await {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let Some(plan) = receipt
            .plan
            .as_deref()
            .and_then(|id| self.0.settings.plans.iter().find(|p| p.id == id))
        else {
            return Self::problem(
                ErrorCode::PlanUnknown,
                "the receipt's plan claim names no plan sold here (see /.well-known/tollgate)",
            );
        };
        let currency = &plan.price.currency;
        if receipt.currency != currency.code() {
            return Self::problem(
                ErrorCode::CurrencyMismatch,
                &format!("plan {} is priced in {}", plan.id, currency.code()),
            );
        }
        let paid = match receipt.amount.minor(currency) {
            Ok(p) => p,
            Err(e) => return Self::problem(ErrorCode::AmountInvalid, &e.to_string()),
        };
        let price = match plan.price.minor() {
            Ok(q) => q,
            Err(e) => return Self::problem(ErrorCode::AmountInvalid, &e.to_string()),
        };
        if paid < price {
            return Self::problem(
                ErrorCode::AmountInsufficient,
                &format!(
                    "plan {} costs {} {}",
                    plan.id,
                    plan.price.amount,
                    currency.code()
                ),
            );
        }
        let jkt = match self.binding_key(headers, line, None).await {
            Ok(k) => k,
            Err(r) => return self.render(&r, None),
        };
        let now = self.0.settings.clock.now_ms();
        let sub = Subscription {
            payer: receipt.payer.clone(),
            plan: plan.id.clone(),
            period_ms: i64::try_from(plan.period.as_millis()).unwrap_or(i64::MAX),
            calls: plan.calls,
            now_ms: now,
            issuer: receipt.issuer.clone(),
            receipt_id: receipt.id.clone(),
            keep_until_ms: self.single_use_until_ms(&receipt),
            event: UsageEvent {
                id: String::new(),
                time_ms: now,
                payer: receipt.payer.clone(),
                route: format!("plan:{}", plan.id),
                method: "POST".into(),
                units: BTreeMap::from([("period".to_owned(), 1)]),
                unit_prices: BTreeMap::new(),
                currency: currency.code().to_owned(),
                scale: currency.scale(),
                amount_minor: price,
                uncharged_minor: 0,
                credential: format!("receipt:{}:{}", receipt.issuer, receipt.id),
                reservation: String::new(),
                upstream_status: 0,
                voids: None,
            },
        };
        let (event_id, end, duplicate) = match self.0.store.subscribe(&sub).await {
            Ok(SubscribeOutcome::Subscribed {
                event_id,
                period_end_ms,
            }) => (event_id, period_end_ms, false),
            Ok(SubscribeOutcome::Duplicate {
                event_id,
                period_end_ms,
            }) => (event_id, period_end_ms, true),
            Ok(SubscribeOutcome::ReceiptUsed) => {
                return Self::problem(ErrorCode::ReceiptReplayed, "this receipt was already spent")
            }
            Err(e) => return self.render(&Refusal::store_down(e, "subscribe"), None),
        };
        if !duplicate {
            crate::metrics::global()
                .revenue_minor
                .with_label_values(&[sub.event.route.as_str(), currency.code()])
                .inc_by(price);
        }
        tracing::info!(payer = %receipt.payer, plan = %plan.id, duplicate, "plan bought");
        let mut body = self.token_body(&receipt.payer, None, jkt.as_deref());
        body["plan"] = plan.catalog();
        body["period_end"] = end.div_euclid(1000).into();
        body["event_id"] = event_id.into();
        body["duplicate"] = duplicate.into();
        json_response(StatusCode::OK, &body)
    }

    /// The payer an `Authorization: Bearer <access token>` request speaks for (or `DPoP
    /// <token>` with its proof, for a bound token), or the refusal to answer (401
    /// `token_invalid` / `token_expired` / `dpop_proof_*`, problem+json).
    pub async fn bearer_payer(
        &self,
        headers: &HeaderMap,
        line: RequestLine<'_>,
    ) -> Result<String, Box<Reply>> {
        self.bearer_claims(headers, line)
            .await
            .map(|(c, _)| c.sub)
            .map_err(|r| Box::new(self.render(&r, None)))
    }

    /// The access token and its claims (binding honoured).
    async fn bearer_claims(
        &self,
        headers: &HeaderMap,
        line: RequestLine<'_>,
    ) -> Result<(TokenClaims, String), Refusal> {
        match credential::extract(headers) {
            Ok(Some(Credential::AccessToken { token, dpop })) => {
                let (claims, _) = self.token_claims(&token, dpop, line, headers).await?;
                Ok((claims, token))
            }
            Ok(_) => Err(Refusal::new(
                ErrorCode::TokenInvalid,
                "send Authorization: Bearer <access token>",
            )),
            Err(e) => Err(Refusal::new(e.code, e.detail)),
        }
    }

    async fn renew(&self, headers: &HeaderMap, line: RequestLine<'_>) -> Reply {
        let (claims, token) = match self.bearer_claims(headers, line).await {
            Ok(c) => c,
            Err(r) => return self.render(&r, None),
        };
        // A bound token renews bound to the same key (its proof was checked above); an
        // unbound one is bound now if the request carries a proof.
        let jkt = match &claims.cnf {
            Some(cnf) => Some(cnf.jkt.clone()),
            None => match self.binding_key(headers, line, Some(&token)).await {
                Ok(k) => k,
                Err(r) => return self.render(&r, None),
            },
        };
        match self
            .bind_mandate(&claims.sub, claims.mandate, None, headers)
            .await
        {
            Ok(m) => json_response(
                StatusCode::OK,
                &self.token_body(&claims.sub, m.as_ref(), jkt.as_deref()),
            ),
            Err(r) => self.render(&r, None),
        }
    }

    async fn balance(&self, headers: &HeaderMap, line: RequestLine<'_>) -> Reply {
        let payer = match self.bearer_claims(headers, line).await {
            Ok((c, _)) => c.sub,
            Err(r) => return self.render(&r, None),
        };
        match self.0.store.account(&payer).await {
            Ok(account) => json_response(StatusCode::OK, &self.account_json(&payer, &account)),
            Err(e) => self.render(&Refusal::store_down(e, "balance"), None),
        }
    }

    /// An account as decimal strings per currency (unknown currencies in minor units).
    pub fn account_json(&self, payer: &str, account: &Account) -> Value {
        let balances: BTreeMap<&String, Value> = account
            .balances
            .iter()
            .map(|(code, b)| {
                let fmt = |v: i64| match self.0.settings.currencies.get(code) {
                    Some((c, _)) if v >= 0 => c.from_minor(u64::try_from(v).unwrap_or(0)).to_string(),
                    _ => v.to_string(),
                };
                (code, json!({"available": fmt(b.available), "held": fmt(b.held), "credited": fmt(b.credited), "captured": fmt(b.captured)}))
            })
            .collect();
        json!({"payer": payer, "balances": balances, "holds": account.holds})
    }
}

//! The challenge phase: the 402 answer -- offers (a price, a top-up), `PAYMENT-REQUIRED`
//! requirements, the challenge id -- written from the route and the request, storing nothing.

use super::*;

impl Paywall {
    pub(super) fn base_url(&self, headers: &HeaderMap, uri: &Uri) -> String {
        match &self.0.public_base_url {
            Some(base) => base.clone(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| uri.authority().map(|a| a.as_str()))
                    .unwrap_or("localhost");
                format!("http://{host}")
            }
        }
    }

    pub(super) fn offer(
        &self,
        amount_minor: u64,
        currency: &Currency,
        ttl: i64,
        extra: Value,
    ) -> Value {
        json!({
            "scheme": RECEIPT_SCHEME,
            "network": self.0.network,
            "amount": amount_minor.to_string(),
            "asset": currency.code(),
            "payTo": self.0.merchant,
            "maxTimeoutSeconds": ttl.max(1),
            "extra": extra,
        })
    }

    pub(super) fn topup_offer(&self, currency: &Currency, base: &str, ttl: i64) -> Option<Value> {
        let (_, suggested) = self.0.currencies.get(currency.code())?;
        let amount = (*suggested)?;
        let minor = currency.to_minor(amount).ok().filter(|m| *m > 0)?;
        Some(self.offer(
            minor,
            currency,
            ttl,
            json!({
                "kind": "topup",
                "topupUrl": format!("{base}{}/topup", self.0.agent_api),
                "price": amount.to_string(),
                "currency": currency.code(),
                "decimals": currency.scale(),
                "issuers": self.0.verifier.issuer_ids(),
            }),
        ))
    }

    /// The x402 v2 payment requirements for a route (one offer per accepted way to pay).
    pub fn requirements(
        &self,
        route: &PricedRoute,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        error: &str,
    ) -> Value {
        let now = self.0.clock.now_secs();
        let ttl = i64::try_from(self.0.challenge_ttl.as_secs()).unwrap_or(300);
        let base = self.base_url(headers, uri);
        let (due, currency, extra) = match &route.price {
            Price::Free => (None, None, json!({})),
            Price::Fixed(money) => (
                money.minor().ok(),
                Some(&money.currency),
                json!({"price": money.amount.to_string()}),
            ),
            Price::Metered(m) => {
                let prices: BTreeMap<&str, String> = m
                    .meters
                    .iter()
                    .map(|x| (x.unit.as_str(), x.price.to_string()))
                    .collect();
                (
                    m.currency.to_minor(m.reserve).ok(),
                    Some(&m.currency),
                    json!({"price": m.reserve.to_string(), "metered": true, "unitPrices": prices}),
                )
            }
        };
        let mut accepts = Vec::new();
        if let (Some(minor), Some(currency)) = (due, currency) {
            let terms = ChallengeTerms {
                merchant: &self.0.merchant,
                route: &route.id,
                method: method.as_str(),
                amount_minor: minor,
                currency: currency.code(),
            };
            let id = self.0.challenge_key.issue(&terms, now + ttl);
            let mut extra = extra;
            if let Value::Object(m) = &mut extra {
                m.insert("challenge".into(), id.into());
                m.insert("challengeExpires".into(), (now + ttl).into());
                m.insert("currency".into(), currency.code().into());
                m.insert("decimals".into(), currency.scale().into());
                m.insert("kind".into(), "payment".into());
                m.insert("route".into(), route.id.clone().into());
                m.insert("method".into(), method.as_str().into());
                m.insert("issuers".into(), json!(self.0.verifier.issuer_ids()));
                m.insert("tokenAccepted".into(), true.into());
            }
            accepts.push(self.offer(minor, currency, ttl, extra));
            accepts.extend(self.topup_offer(currency, &base, ttl));
            if let Some(plan) = self.plan_for(route) {
                if let Ok(price) = plan.price.minor() {
                    let mut extra = plan.catalog();
                    extra["kind"] = "subscribe".into();
                    extra["plan"] = plan.id.clone().into();
                    extra["subscribeUrl"] = format!("{base}{}/subscribe", self.0.agent_api).into();
                    extra["issuers"] = json!(self.0.verifier.issuer_ids());
                    accepts.push(self.offer(price, &plan.price.currency, ttl, extra));
                }
            }
        }
        if let Some(x) = &route.x402 {
            accepts.extend(x.offers.iter().map(crate::x402::ExactOffer::requirements));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        json!({
            "x402Version": 2,
            "error": error,
            "resource": {
                "url": format!("{base}{path}"),
                "description": route.description,
                "mimeType": route.mime_type,
            },
            "accepts": accepts,
        })
    }
}

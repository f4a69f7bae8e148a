//! The challenge phase: the 402 answer -- offers (a price, a top-up), `PAYMENT-REQUIRED`
//! requirements, the challenge id -- written from the route and the request, storing nothing.

use super::wire::{
    Accept, OfferExtra, PaymentExtra, ReceiptOffer, Requirements, Resource, SubscribeExtra,
    TopupExtra,
};
use super::*;

impl Paywall {
    pub(super) fn base_url(&self, headers: &HeaderMap, uri: &Uri) -> String {
        match &self.0.settings.public_base_url {
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

    /// The realm of a challenge served under `base` (a URL): the configured one, else the
    /// base's host without its port (`https://api.example.com:8443` -> `api.example.com`),
    /// else the merchant id.
    pub(super) fn realm<'a>(&'a self, base: &'a str) -> &'a str {
        if let Some(r) = &self.0.settings.realm {
            return r;
        }
        let authority = base.split_once("://").map_or(base, |(_, rest)| rest);
        let authority = authority.split(['/', '?']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match authority.strip_prefix('[') {
            // An IPv6 literal keeps its brackets: `[::1]:8402` -> `[::1]`.
            Some(rest) => rest
                .split_once(']')
                .map_or(authority, |(ip, _)| &authority[..ip.len() + 2]),
            None => authority.split(':').next().unwrap_or(""),
        };
        if host.is_empty() {
            &self.0.merchant
        } else {
            host
        }
    }

    fn receipt_offer<'a>(
        &'a self,
        amount_minor: u64,
        currency: &'a Currency,
        ttl: i64,
        extra: OfferExtra<'a>,
    ) -> Accept<'a> {
        Accept::Receipt(Box::new(ReceiptOffer {
            scheme: RECEIPT_SCHEME,
            network: &self.0.network,
            amount: amount_minor.to_string(),
            asset: currency.code(),
            pay_to: &self.0.merchant,
            max_timeout_seconds: ttl.max(1),
            extra,
        }))
    }

    /// The top-up offer: the suggested amount, or `at_least_minor` when that is more (a
    /// paused stream's need); `None` when top-ups in `currency` are not accepted, or no amount
    /// is suggested and none needed.
    pub(super) fn topup_offer<'a>(
        &'a self,
        currency: &'a Currency,
        base: &str,
        ttl: i64,
        (issuers, at_least_minor): (&'a [String], u64),
    ) -> Option<Accept<'a>> {
        let (_, suggested) = self.0.settings.currencies.get(currency.code())?;
        let suggested = suggested.and_then(|a| Some((a, currency.to_minor(a).ok()?)));
        let (amount, minor) = match suggested {
            Some((a, m)) if m >= at_least_minor => (a, m),
            _ => (currency.from_minor(at_least_minor), at_least_minor),
        };
        let minor = Some(minor).filter(|m| *m > 0)?;
        let extra = OfferExtra::Topup(TopupExtra {
            topup_url: format!("{base}{}/topup", self.0.settings.agent_api),
            price: amount.to_string(),
            currency: currency.code(),
            decimals: currency.scale(),
            issuers,
        });
        Some(self.receipt_offer(minor, currency, ttl, extra))
    }

    /// The x402 v2 payment requirements for a route (one offer per accepted way to pay).
    pub fn requirements<'a>(
        &'a self,
        route: &'a PricedRoute,
        (method, uri, headers): (&'a Method, &Uri, &HeaderMap),
    ) -> Requirements<'a> {
        let issuers = self.0.issuer_ids.as_slice();
        let now = self.0.settings.clock.now_secs();
        let ttl = i64::try_from(self.0.settings.challenge_ttl.as_secs()).unwrap_or(300);
        let base = self.base_url(headers, uri);
        let (due, currency, price, metered, unit_prices) = match &route.price {
            Price::Free => (None, None, String::new(), None, None),
            Price::Fixed(money) => (
                money.minor().ok(),
                Some(&money.currency),
                money.amount.to_string(),
                None,
                None,
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
                    m.reserve.to_string(),
                    Some(true),
                    Some(prices),
                )
            }
        };
        let mut accepts = Vec::new();
        if let (Some(minor), Some(currency)) = (due, currency) {
            let terms = self.challenge_terms(route, method, minor, currency);
            let extra = OfferExtra::Payment(PaymentExtra {
                price,
                metered,
                unit_prices,
                challenge: self.0.challenge_key.issue(&terms, now + ttl),
                challenge_expires: now + ttl,
                currency: currency.code(),
                decimals: currency.scale(),
                route: &route.id,
                method: method.as_str(),
                issuers,
                token_accepted: true,
            });
            accepts.push(self.receipt_offer(minor, currency, ttl, extra));
            accepts.extend(self.topup_offer(currency, &base, ttl, (issuers, 0)));
            if let Some(plan) = self.plan_for(route) {
                if let Ok(price) = plan.price.minor() {
                    let extra = OfferExtra::Subscribe(SubscribeExtra {
                        catalog: plan.catalog(),
                        plan: &plan.id,
                        subscribe_url: format!("{base}{}/subscribe", self.0.settings.agent_api),
                        issuers,
                    });
                    accepts.push(self.receipt_offer(price, &plan.price.currency, ttl, extra));
                }
            }
        }
        if let Some(x) = &route.x402 {
            accepts.extend(x.offers.iter().map(|o| Accept::Exact(o.requirements())));
            accepts.extend(x.upto.iter().map(|o| Accept::Exact(o.requirements())));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Requirements {
            x402_version: 2,
            resource: Resource {
                url: format!("{base}{path}"),
                description: &route.description,
                mime_type: &route.mime_type,
            },
            accepts,
        }
    }
}

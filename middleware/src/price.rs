//! Prices and the routes they are attached to.

use crate::money::{Currency, Money, MoneyError};

/// What a route costs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Price {
    /// Served without payment.
    Free,
    /// A fixed amount per request.
    Fixed(Money),
    /// Per unit of measured usage, drawn from a prepaid balance.
    Metered(crate::meter::Metered),
}

impl Price {
    /// A fixed price; the amount must be positive and exact at the currency's scale.
    pub fn fixed(money: Money) -> Result<Self, MoneyError> {
        let minor = money.minor()?;
        if minor == 0 {
            return Err(MoneyError::Syntax(
                "a fixed price must be greater than zero (use `free`)".into(),
            ));
        }
        Ok(Price::Fixed(money))
    }
}

impl Price {
    /// The currency, for priced routes.
    pub fn currency(&self) -> Option<&Currency> {
        match self {
            Price::Free => None,
            Price::Fixed(m) => Some(&m.currency),
            Price::Metered(m) => Some(&m.currency),
        }
    }
}

/// A route as the payment engine sees it: a stable id (part of every challenge and usage
/// event), what it costs, and how it is described to agents.
#[derive(Debug, Clone)]
pub struct PricedRoute {
    /// Stable identifier, e.g. `compute`. Challenge ids are bound to it.
    pub id: String,
    /// The price.
    pub price: Price,
    /// Human description shown in the 402 `resource`.
    pub description: String,
    /// The MIME type of a served response, shown in the 402 `resource`.
    pub mime_type: String,
    /// How long serving may take; a receipt's hold lasts this long plus a margin, so a
    /// crashed process cannot lock a receipt forever. `None`: 60 s.
    pub timeout: Option<std::time::Duration>,
    /// Per payer on this route (GCRA in the store): over it, 429 with `Retry-After`.
    pub rate_limit: Option<crate::store::RateLimit>,
    /// The route group (mandates may name the groups they allow). Default: the route id.
    pub group: Option<String>,
    /// x402 `exact` offers and their settlement (fixed-price routes only). `None`: not offered.
    pub x402: Option<std::sync::Arc<crate::x402::ExactRoute>>,
    /// Capture a fixed price at admission (one store round trip; a request that is not
    /// served is voided) instead of after the upstream's answer (two). Ignored for metered
    /// prices and for payments under a mandate or a plan, which always capture after.
    pub capture_at_admission: bool,
}

impl PricedRoute {
    /// A route with a price and default description.
    pub fn new(id: impl Into<String>, price: Price) -> Self {
        let id = id.into();
        PricedRoute {
            description: format!("Tollgate route {id}"),
            id,
            price,
            mime_type: "application/json".into(),
            timeout: None,
            rate_limit: None,
            group: None,
            x402: None,
            capture_at_admission: false,
        }
    }

    /// The route group: the configured one, or the route id.
    pub fn group_name(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.id)
    }

    /// Put the route in a group.
    #[must_use]
    pub fn group(mut self, g: impl Into<String>) -> Self {
        self.group = Some(g.into());
        self
    }

    /// Set the description.
    #[must_use]
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    /// Set the serving timeout (bounds the receipt hold).
    #[must_use]
    pub fn timeout(mut self, t: std::time::Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Limit each payer's request rate on this route.
    #[must_use]
    pub fn rate_limit(mut self, limit: crate::store::RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Offer x402 `exact` payments on this route (beside the native ones).
    #[must_use]
    pub fn x402(mut self, x402: crate::x402::ExactRoute) -> Self {
        self.x402 = Some(std::sync::Arc::new(x402));
        self
    }

    /// Capture the fixed price at admission (see [`PricedRoute::capture_at_admission`]).
    #[must_use]
    pub fn capture_at_admission(mut self, yes: bool) -> Self {
        self.capture_at_admission = yes;
        self
    }

    /// Set the MIME type.
    #[must_use]
    pub fn mime_type(mut self, m: impl Into<String>) -> Self {
        self.mime_type = m.into();
        self
    }
}

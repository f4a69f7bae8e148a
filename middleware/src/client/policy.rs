//! Which offer of a 402 the client may pay: per-call price caps and budgets per asset, the
//! merchants it may pay, and the schemes it prefers, in order.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The scheme of Tollgate's own signed-receipt offers.
pub const RECEIPT_SCHEME: &str = "tollgate-receipt";

/// One entry of a 402's `accepts`, with the fields the policy reads parsed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// `scheme` (`tollgate-receipt`, `exact`, ...).
    pub scheme: String,
    /// `payTo`: the merchant.
    pub pay_to: String,
    /// `asset`: a currency code (receipt offers) or a token contract (`exact`).
    pub asset: String,
    /// `amount` in the asset's atomic (minor) units.
    pub amount: u128,
    /// `extra.kind`, when the offer names one (`payment`, `topup`, `subscribe`).
    pub kind: Option<String>,
    /// The entry as sent: wallets echo it back as `accepted`.
    pub raw: Value,
}

impl Offer {
    /// Parse one `accepts` entry; `None` when it lacks a scheme, payTo, asset or integer amount.
    pub fn parse(raw: &Value) -> Option<Offer> {
        let s = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let amount = match raw.get("amount")? {
            Value::String(a) => a.parse().ok()?,
            Value::Number(n) => u128::from(n.as_u64()?),
            _ => return None,
        };
        Some(Offer {
            scheme: s("scheme")?,
            pay_to: s("payTo")?,
            asset: s("asset")?,
            amount,
            kind: raw
                .pointer("/extra/kind")
                .and_then(Value::as_str)
                .map(str::to_owned),
            raw: raw.clone(),
        })
    }
}

/// Why one offer was not paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferRefusal {
    /// The entry could not be read (no scheme, payTo, asset or integer amount).
    Malformed,
    /// Not a payment for this request (`extra.kind` is `topup` or `subscribe`).
    NotAPayment {
        /// The offer's kind.
        kind: String,
    },
    /// A scheme the policy does not prefer, or no wallet pays it.
    UnknownScheme {
        /// The offer's scheme.
        scheme: String,
    },
    /// `payTo` is not on the allow list.
    MerchantNotAllowed {
        /// The offer's `payTo`.
        pay_to: String,
    },
    /// No per-call cap is set for this asset: the client pays only assets it was told about.
    AssetNotAllowed {
        /// The offer's asset.
        asset: String,
    },
    /// Dearer than the per-call cap.
    PriceTooHigh {
        /// The offer's asset.
        asset: String,
        /// Asked (atomic units).
        amount: u128,
        /// The cap (atomic units).
        max: u128,
    },
    /// Paying would exceed the budget.
    BudgetExhausted {
        /// The offer's asset.
        asset: String,
        /// Asked (atomic units).
        amount: u128,
        /// What is left of the budget (atomic units).
        left: u128,
    },
}

impl std::fmt::Display for OfferRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OfferRefusal::Malformed => write!(f, "malformed offer"),
            OfferRefusal::NotAPayment { kind } => write!(f, "a {kind} offer, not a payment"),
            OfferRefusal::UnknownScheme { scheme } => write!(f, "scheme {scheme} not paid"),
            OfferRefusal::MerchantNotAllowed { pay_to } => {
                write!(f, "merchant {pay_to} not allowed")
            }
            OfferRefusal::AssetNotAllowed { asset } => write!(f, "asset {asset} not allowed"),
            OfferRefusal::PriceTooHigh { asset, amount, max } => {
                write!(f, "{amount} {asset} is over the {max} per-call cap")
            }
            OfferRefusal::BudgetExhausted {
                asset,
                amount,
                left,
            } => write!(f, "{amount} {asset} is over the {left} left in the budget"),
        }
    }
}

/// Assets are compared case-insensitively (EVM addresses arrive checksummed or not).
fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// The spending rules of a [`PayingClient`](super::PayingClient). All amounts are in the
/// offer's atomic units (its `amount` field: minor units for receipt offers, token units for
/// `exact`), keyed by the offer's `asset`.
///
/// An asset with no per-call cap is never paid; an asset with no budget is limited per call
/// only; with no allowed merchants every `payTo` is allowed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Per-call cap per asset: also the list of assets the client pays at all.
    max_per_call: BTreeMap<String, u128>,
    /// Total spend allowed per asset over the client's life.
    budget: BTreeMap<String, u128>,
    /// `payTo` values the client pays (empty: any).
    merchants: BTreeSet<String>,
    /// Schemes in order of preference: an offer of an earlier scheme wins.
    schemes: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_per_call: BTreeMap::new(),
            budget: BTreeMap::new(),
            merchants: BTreeSet::new(),
            schemes: vec![
                RECEIPT_SCHEME.to_owned(),
                crate::x402::EXACT_SCHEME.to_owned(),
            ],
        }
    }
}

impl Policy {
    /// Pays nothing until caps are set; prefers `tollgate-receipt`, then `exact`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pay up to `amount` atomic units of `asset` per call.
    #[must_use]
    pub fn max_per_call(mut self, asset: &str, amount: u128) -> Self {
        self.max_per_call.insert(key(asset), amount);
        self
    }

    /// Spend at most `amount` atomic units of `asset` in total.
    #[must_use]
    pub fn budget(mut self, asset: &str, amount: u128) -> Self {
        self.budget.insert(key(asset), amount);
        self
    }

    /// Pay this merchant (`payTo`); once one is named, only named merchants are paid.
    #[must_use]
    pub fn allow_merchant(mut self, pay_to: &str) -> Self {
        self.merchants.insert(key(pay_to));
        self
    }

    /// The schemes to pay, most preferred first (replaces the default order).
    #[must_use]
    pub fn schemes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, schemes: I) -> Self {
        self.schemes = schemes.into_iter().map(Into::into).collect();
        self
    }

    /// Whether one offer may be paid, given what was already spent of its asset.
    pub fn check(&self, offer: &Offer, spent: u128) -> Result<(), OfferRefusal> {
        if let Some(kind) = offer.kind.as_deref().filter(|k| *k != "payment") {
            return Err(OfferRefusal::NotAPayment { kind: kind.into() });
        }
        if !self.schemes.contains(&offer.scheme) {
            return Err(OfferRefusal::UnknownScheme {
                scheme: offer.scheme.clone(),
            });
        }
        if !self.merchants.is_empty() && !self.merchants.contains(&key(&offer.pay_to)) {
            return Err(OfferRefusal::MerchantNotAllowed {
                pay_to: offer.pay_to.clone(),
            });
        }
        let asset = key(&offer.asset);
        let Some(&max) = self.max_per_call.get(&asset) else {
            return Err(OfferRefusal::AssetNotAllowed {
                asset: offer.asset.clone(),
            });
        };
        if offer.amount > max {
            return Err(OfferRefusal::PriceTooHigh {
                asset: offer.asset.clone(),
                amount: offer.amount,
                max,
            });
        }
        if let Some(&budget) = self.budget.get(&asset) {
            let left = budget.saturating_sub(spent);
            if offer.amount > left {
                return Err(OfferRefusal::BudgetExhausted {
                    asset: offer.asset.clone(),
                    amount: offer.amount,
                    left,
                });
            }
        }
        Ok(())
    }

    /// The offer to pay among `accepts`: the first one that passes [`Policy::check`] in the most
    /// preferred scheme that `can_pay`; otherwise why each offer was refused.
    pub fn select(
        &self,
        accepts: &[Value],
        spent: impl Fn(&str) -> u128,
        can_pay: impl Fn(&str) -> bool,
    ) -> Result<Offer, Vec<OfferRefusal>> {
        let mut refusals = Vec::new();
        let mut fits = Vec::new();
        for raw in accepts {
            let Some(offer) = Offer::parse(raw) else {
                refusals.push(OfferRefusal::Malformed);
                continue;
            };
            let verdict = if can_pay(&offer.scheme) {
                self.check(&offer, spent(&key(&offer.asset)))
            } else {
                Err(OfferRefusal::UnknownScheme {
                    scheme: offer.scheme.clone(),
                })
            };
            match verdict {
                Ok(()) => fits.push(offer),
                Err(r) => refusals.push(r),
            }
        }
        for scheme in &self.schemes {
            if let Some(i) = fits.iter().position(|o| &o.scheme == scheme) {
                return Ok(fits.swap_remove(i));
            }
        }
        Err(refusals)
    }

    /// The key spending is tracked under for an asset.
    pub(crate) fn asset_key(asset: &str) -> String {
        key(asset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

    fn receipt(amount: u64, kind: &str) -> Value {
        json!({"scheme": RECEIPT_SCHEME, "network": "tollgate", "amount": amount.to_string(),
               "asset": "USD", "payTo": "m", "extra": {"kind": kind, "price": "0.01"}})
    }

    fn exact(amount: u64, pay_to: &str) -> Value {
        json!({"scheme": "exact", "network": "eip155:84532", "amount": amount.to_string(),
               "asset": USDC, "payTo": pay_to, "extra": {"name": "USDC", "version": "2"}})
    }

    fn policy() -> Policy {
        Policy::new()
            .max_per_call("USD", 10_000)
            .max_per_call(USDC, 20_000)
    }

    fn pick(p: &Policy, accepts: &[Value], spent: u128) -> Result<Offer, Vec<OfferRefusal>> {
        p.select(accepts, |_| spent, |_| true)
    }

    #[test]
    fn prefers_schemes_in_order_and_skips_topups_and_plans() {
        let accepts = [
            receipt(5000, "topup"),
            exact(10_000, "0xaa"),
            receipt(10_000, "payment"),
            receipt(3000, "subscribe"),
        ];
        let o = pick(&policy(), &accepts, 0).unwrap();
        assert_eq!((o.scheme.as_str(), o.amount), (RECEIPT_SCHEME, 10_000));
        let p = policy().schemes(["exact", RECEIPT_SCHEME]);
        let o = pick(&p, &accepts, 0).unwrap();
        assert_eq!((o.scheme.as_str(), o.amount), ("exact", 10_000));
        // Only topup and subscribe offers: nothing to pay, and why.
        let e = pick(
            &policy(),
            &[receipt(1, "topup"), receipt(1, "subscribe")],
            0,
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                OfferRefusal::NotAPayment {
                    kind: "topup".into()
                },
                OfferRefusal::NotAPayment {
                    kind: "subscribe".into()
                }
            ]
        );
    }

    #[test]
    fn refuses_over_cap_unknown_scheme_asset_and_merchant() {
        assert_eq!(
            pick(&policy(), &[receipt(10_001, "payment")], 0).unwrap_err(),
            [OfferRefusal::PriceTooHigh {
                asset: "USD".into(),
                amount: 10_001,
                max: 10_000
            }]
        );
        let upto = json!({"scheme": "upto", "amount": "1", "asset": "USD", "payTo": "m"});
        assert_eq!(
            pick(&policy(), &[upto], 0).unwrap_err(),
            [OfferRefusal::UnknownScheme {
                scheme: "upto".into()
            }]
        );
        assert_eq!(
            pick(
                &Policy::new().max_per_call("EUR", 1),
                &[receipt(1, "payment")],
                0
            )
            .unwrap_err(),
            [OfferRefusal::AssetNotAllowed {
                asset: "USD".into()
            }]
        );
        let p = policy().allow_merchant("0xAA");
        assert_eq!(
            pick(&p, &[exact(1, "0xbb"), receipt(1, "payment")], 0).unwrap_err(),
            [
                OfferRefusal::MerchantNotAllowed {
                    pay_to: "0xbb".into()
                },
                OfferRefusal::MerchantNotAllowed { pay_to: "m".into() }
            ]
        );
        // Merchants compare case-insensitively (checksummed addresses).
        assert_eq!(pick(&p, &[exact(1, "0xaa")], 0).unwrap().pay_to, "0xaa");
        // A scheme no wallet pays is unknown too.
        assert_eq!(
            policy()
                .select(&[exact(1, "0xaa")], |_| 0, |s| s != "exact")
                .unwrap_err(),
            [OfferRefusal::UnknownScheme {
                scheme: "exact".into()
            }]
        );
        assert_eq!(
            pick(&policy(), &[json!({"scheme": "exact"})], 0).unwrap_err(),
            [OfferRefusal::Malformed]
        );
    }

    #[test]
    fn budget_allows_exactly_what_is_left() {
        let p = policy().budget("usd", 25_000);
        let accepts = [receipt(10_000, "payment")];
        assert!(pick(&p, &accepts, 15_000).is_ok());
        assert_eq!(
            pick(&p, &accepts, 15_001).unwrap_err(),
            [OfferRefusal::BudgetExhausted {
                asset: "USD".into(),
                amount: 10_000,
                left: 9_999
            }]
        );
        // A cheaper offer in the same 402 still fits.
        let o = pick(
            &p,
            &[receipt(10_000, "payment"), receipt(9_999, "payment")],
            15_001,
        )
        .unwrap();
        assert_eq!(o.amount, 9_999);
    }
}

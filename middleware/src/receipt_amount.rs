//! A receipt's amount, and the one place its unit is decided.
//!
//! Offers (x402 `accepts[].amount`, the Payment scheme's `amount`) state **atomic units**
//! (`"10000"` = 0.01 USD at scale 6). Receipts may state their amount either way, each under its
//! own name, so a field's unit never depends on context:
//!
//! - `amount_atomic`: atomic units of the currency, digits only (the same unit as offers'
//!   `amount`); the preferred claim;
//! - `amount`: a decimal in the currency's unit (`"0.01"`), as before.
//!
//! Both may be given; they must then agree. A wallet that copies an offer's atomic `amount` into
//! a receipt's decimal `amount` (`"2000000"`, meaning 2 USD) would credit two million: a decimal
//! `amount` alone that is a whole number of at least `10^scale` currency units is refused as
//! ambiguous (the error says both readings and how to state either), unless the currency has no
//! decimals (scale 0, where both readings agree). A payer who really means that much states
//! `amount_atomic` too.

use crate::money::{Amount, Currency, MoneyError, MAX_MINOR};

/// The amount claims of a receipt as the issuer wrote them (at least one is present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptAmount {
    /// `amount`: decimal.
    pub decimal: Option<Amount>,
    /// `amount_atomic`: atomic units.
    pub atomic: Option<u64>,
}

/// Why a receipt's amount was refused (the receipt is answered `amount_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Neither claim.
    #[error("the receipt states no amount: give amount_atomic (atomic units) or amount (decimal)")]
    Missing,
    /// `amount_atomic` is not a string of digits.
    #[error("amount_atomic {0:?} must be a string of digits (atomic units, as in offers' amount), at most 2^53 - 1")]
    AtomicSyntax(String),
    /// `amount` is not a decimal.
    #[error("amount {0:?} must be a decimal string")]
    DecimalSyntax(String),
    /// The decimal does not fit the currency.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// The two claims disagree.
    #[error(
        "amount {decimal} {currency} and amount_atomic {atomic} (= {atomic_decimal} {currency}) disagree"
    )]
    Disagree {
        /// `amount`.
        decimal: String,
        /// `amount_atomic`.
        atomic: u64,
        /// `amount_atomic` as a decimal.
        atomic_decimal: String,
        /// Currency code.
        currency: String,
    },
    /// A decimal that reads like atomic units.
    #[error(
        "amount {amount:?} would be {amount} {currency}; offers state atomic units, in which it is \
         {as_atomic} {currency}. Send amount_atomic = \"{amount}\" for {as_atomic} {currency}; a \
         decimal amount of {threshold} {currency} or more must come with amount_atomic"
    )]
    Ambiguous {
        /// `amount`.
        amount: String,
        /// It read as atomic units, as a decimal.
        as_atomic: String,
        /// The smallest whole decimal amount that is refused alone.
        threshold: String,
        /// Currency code.
        currency: String,
    },
}

impl ReceiptAmount {
    /// Parse the two claims.
    pub fn parse(decimal: Option<&str>, atomic: Option<&str>) -> Result<Self, AmountError> {
        let decimal = decimal
            .map(|d| {
                d.parse::<Amount>()
                    .map_err(|_| AmountError::DecimalSyntax(d.to_owned()))
            })
            .transpose()?;
        let atomic = atomic
            .map(|a| {
                let digits =
                    !a.is_empty() && a.len() <= 20 && a.bytes().all(|b| b.is_ascii_digit());
                digits
                    .then(|| a.parse::<u64>().ok())
                    .flatten()
                    .filter(|v| *v <= MAX_MINOR)
                    .ok_or_else(|| AmountError::AtomicSyntax(a.to_owned()))
            })
            .transpose()?;
        if decimal.is_none() && atomic.is_none() {
            return Err(AmountError::Missing);
        }
        Ok(ReceiptAmount { decimal, atomic })
    }

    /// The amount in atomic units of `currency` (see the module docs for the rules).
    pub fn minor(&self, currency: &Currency) -> Result<u64, AmountError> {
        match (self.decimal, self.atomic) {
            (None, Some(atomic)) => Ok(atomic),
            (Some(decimal), Some(atomic)) => {
                let minor = currency.to_minor(decimal)?;
                if minor == atomic {
                    Ok(minor)
                } else {
                    Err(AmountError::Disagree {
                        decimal: decimal.to_string(),
                        atomic,
                        atomic_decimal: currency.from_minor(atomic).to_string(),
                        currency: currency.code().to_owned(),
                    })
                }
            }
            (Some(decimal), None) => {
                let minor = currency.to_minor(decimal)?;
                let scale = currency.scale();
                let unit = 10u64.saturating_pow(scale);
                let whole = minor % unit == 0;
                if scale > 0 && whole && minor / unit >= unit {
                    let as_atomic = minor / unit;
                    return Err(AmountError::Ambiguous {
                        amount: decimal.to_string(),
                        as_atomic: currency.from_minor(as_atomic).to_string(),
                        threshold: unit.to_string(),
                        currency: currency.code().to_owned(),
                    });
                }
                Ok(minor)
            }
            (None, None) => Err(AmountError::Missing),
        }
    }

    /// The amount as a decimal of `currency`.
    pub fn decimal(&self, currency: &Currency) -> Result<Amount, AmountError> {
        self.minor(currency).map(|m| currency.from_minor(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::try_new("USD".to_owned(), 6).unwrap()
    }

    fn minor(
        decimal: Option<&str>,
        atomic: Option<&str>,
        c: &Currency,
    ) -> Result<u64, AmountError> {
        ReceiptAmount::parse(decimal, atomic)?.minor(c)
    }

    #[test]
    fn each_claim_has_one_unit() {
        let c = usd();
        assert_eq!(minor(Some("0.01"), None, &c), Ok(10_000));
        assert_eq!(minor(None, Some("10000"), &c), Ok(10_000));
        assert_eq!(minor(Some("0.01"), Some("10000"), &c), Ok(10_000));
        assert_eq!(minor(Some("2"), None, &c), Ok(2_000_000));
        assert_eq!(minor(Some("999999"), None, &c), Ok(999_999_000_000));
    }

    /// The case: an offer's atomic amount copied into the decimal claim.
    #[test]
    fn an_atomic_amount_in_the_decimal_claim_is_refused_loudly() {
        let c = usd();
        let err = minor(Some("2000000"), None, &c).unwrap_err();
        assert!(matches!(err, AmountError::Ambiguous { .. }));
        let text = err.to_string();
        assert!(text.contains("2000000 USD"), "{text}");
        assert!(text.contains("it is 2 USD"), "{text}");
        assert!(text.contains("amount_atomic = \"2000000\""), "{text}");
        // Meaning it: both claims, agreeing.
        assert_eq!(
            minor(Some("2000000"), Some("2000000000000"), &c),
            Ok(2_000_000_000_000)
        );
        // A fraction is never atomic units.
        assert_eq!(minor(Some("2000000.5"), None, &c), Ok(2_000_000_500_000));
    }

    #[test]
    fn disagreeing_claims_and_bad_syntax_are_refused() {
        let c = usd();
        let err = minor(Some("2000000"), Some("2000000"), &c).unwrap_err();
        assert!(matches!(err, AmountError::Disagree { .. }), "{err}");
        assert!(err.to_string().contains("(= 2 USD)"), "{err}");
        for bad in ["", "-1", "1.5", "1e6", " 1", "99999999999999999999999"] {
            assert!(
                matches!(
                    minor(None, Some(bad), &c),
                    Err(AmountError::AtomicSyntax(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(minor(None, None, &c), Err(AmountError::Missing));
        assert!(matches!(
            minor(Some("0.0000001"), None, &c),
            Err(AmountError::Money(_))
        ));
    }

    /// Every scale whose threshold fits the atomic range (up to 7: 10^7 * 10^7 < 2^53): the
    /// threshold is 10^scale whole units; scale 0 has no ambiguity.
    #[test]
    fn the_guard_scales_with_the_currency() {
        for scale in 0..=7u32 {
            let c = Currency::try_new("XTS".to_owned(), scale).unwrap();
            let unit = 10u64.pow(scale);
            let below = (unit - 1).max(1).to_string();
            assert!(
                minor(Some(&below), None, &c).is_ok(),
                "scale {scale}: {below}"
            );
            let at = unit.to_string();
            let refused = minor(Some(&at), None, &c).is_err();
            assert_eq!(refused, scale > 0, "scale {scale}: {at}");
            assert_eq!(minor(None, Some(&at), &c), Ok(unit), "scale {scale}");
        }
    }
}

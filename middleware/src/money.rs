//! Money: exact decimal amounts, currencies with a fixed atomic scale, and the one conversion
//! between decimal amounts and integer minor units.
//!
//! Amounts travel as decimal strings (`"0.010"`) and live in Redis as integer minor units
//! (`10_000` at scale 6). [`Currency::to_minor`] and [`Currency::from_minor`] are the only
//! places that convert between the two; an amount that does not fit the currency's scale
//! exactly is an error, never silently rounded.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an acceptable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a plain non-negative decimal (`123`, `0.25`): signs, exponents, spaces are refused.
    #[error("not a plain non-negative decimal number: {0:?}")]
    Syntax(String),
    /// More than 28 significant digits, or beyond what an integer minor-unit count can hold.
    #[error("amount out of range")]
    Overflow,
    /// More decimal places than the currency's atomic scale.
    #[error("amount {amount} has more than {scale} decimal places for {currency}")]
    OverPrecise {
        /// The amount as given.
        amount: String,
        /// The currency code.
        currency: String,
        /// The currency's scale.
        scale: u32,
    },
    /// Not a currency code (`[A-Za-z0-9._-]{1,32}`).
    #[error("invalid currency code {0:?}")]
    CurrencyCode(String),
    /// An atomic scale above [`MAX_SCALE`].
    #[error("scale {0} is above the maximum {MAX_SCALE}")]
    Scale(u32),
}

/// A non-negative exact decimal amount of money, without its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(Decimal);

/// The largest number of decimal places any currency may declare. 18 covers ETH-style tokens.
pub const MAX_SCALE: u32 = 18;

/// The largest amount in minor units: 2^53 - 1. The store's Lua scripts compute with doubles,
/// which are exact up to here (9,007,199,254.740991 at scale 6).
pub const MAX_MINOR: u64 = (1 << 53) - 1;

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(Decimal::ZERO);

    /// The amount as a [`Decimal`].
    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    /// Build from a decimal; negative values are refused.
    pub fn try_from_decimal(d: Decimal) -> Result<Self, MoneyError> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(MoneyError::Syntax(d.to_string()));
        }
        Ok(Amount(d.normalize()))
    }
}

impl FromStr for Amount {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only `digits[.digits]`: no sign, no exponent, no whitespace, no leading dot. A wallet
        // and a gateway must never disagree on what a string means.
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let digits_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok(int) || frac.is_some_and(|f| !digits_ok(f)) || s.len() > 64 {
            return Err(MoneyError::Syntax(s.chars().take(64).collect()));
        }
        let d = Decimal::from_str_exact(s).map_err(|_| MoneyError::Overflow)?;
        Ok(Amount(d.normalize()))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A currency (or asset) code and its atomic scale: the number of decimal places one minor
/// unit represents (`USD` at scale 6 means one unit = 0.000001 USD).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency {
    code: String,
    scale: u32,
}

impl Currency {
    /// A currency code (`[A-Za-z0-9._-]{1,32}`) with its atomic scale (at most [`MAX_SCALE`]).
    pub fn try_new(code: impl Into<String>, scale: u32) -> Result<Self, MoneyError> {
        let code = code.into();
        let ok = !code.is_empty()
            && code.len() <= 32
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(MoneyError::CurrencyCode(code));
        }
        if scale > MAX_SCALE {
            return Err(MoneyError::Scale(scale));
        }
        Ok(Currency { code, scale })
    }

    /// The code, e.g. `USD`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Decimal places of one minor unit.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Convert an amount to integer minor units, exactly. Refuses amounts with more decimal
    /// places than the scale, and amounts beyond [`MAX_MINOR`] minor units.
    pub fn to_minor(&self, amount: Amount) -> Result<u64, MoneyError> {
        let factor = Decimal::from_i128_with_scale(10i128.pow(self.scale), 0);
        let minor = amount
            .0
            .checked_mul(factor)
            .ok_or(MoneyError::Overflow)?
            .normalize();
        if minor.scale() != 0 {
            return Err(MoneyError::OverPrecise {
                amount: amount.to_string(),
                currency: self.code.clone(),
                scale: self.scale,
            });
        }
        let m = minor.mantissa();
        if !(0..=i128::from(MAX_MINOR)).contains(&m) {
            return Err(MoneyError::Overflow);
        }
        u64::try_from(m).map_err(|_| MoneyError::Overflow)
    }

    /// Convert integer minor units back to a decimal amount.
    pub fn from_minor(&self, minor: u64) -> Amount {
        Amount(Decimal::from_i128_with_scale(i128::from(minor), self.scale).normalize())
    }
}

/// An amount in a currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// How much.
    pub amount: Amount,
    /// Of what.
    pub currency: Currency,
}

impl Money {
    /// The amount in minor units of its currency.
    pub fn minor(&self) -> Result<u64, MoneyError> {
        self.currency.to_minor(self.amount)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::try_new("USD", 6).unwrap()
    }

    #[test]
    fn parses_plain_decimals_only() {
        assert_eq!("0.010".parse::<Amount>().unwrap().to_string(), "0.01");
        assert_eq!("12".parse::<Amount>().unwrap().to_string(), "12");
        for bad in [
            "", "-1", "+1", "1e3", "1E3", " 1", "1 ", ".5", "5.", "0x10", "1,5", "NaN", "1.2.3",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            "99999999999999999999999999999999".parse::<Amount>(),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn minor_units_are_exact() {
        let c = usd();
        assert_eq!(c.to_minor("0.01".parse().unwrap()).unwrap(), 10_000);
        assert_eq!(c.to_minor("1.000000".parse().unwrap()).unwrap(), 1_000_000);
        assert_eq!(c.to_minor("0".parse().unwrap()).unwrap(), 0);
        assert!(matches!(
            c.to_minor("0.0000001".parse().unwrap()),
            Err(MoneyError::OverPrecise { .. })
        ));
        assert_eq!(
            c.to_minor("9300000000000".parse().unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            c.to_minor("9007199254.740991".parse().unwrap()).unwrap(),
            MAX_MINOR
        );
        assert_eq!(
            c.to_minor("9007199254.740992".parse().unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(c.from_minor(10_000).to_string(), "0.01");
        assert_eq!(c.from_minor(1).to_string(), "0.000001");
        let zero_scale = Currency::try_new("CREDIT", 0).unwrap();
        assert_eq!(zero_scale.to_minor("7".parse().unwrap()).unwrap(), 7);
        assert!(zero_scale.to_minor("7.5".parse().unwrap()).is_err());
    }

    #[test]
    fn currency_codes_are_checked() {
        assert!(Currency::try_new("", 2).is_err());
        assert!(Currency::try_new("US D", 2).is_err());
        assert!(Currency::try_new("USD", 19).is_err());
        assert!(Currency::try_new("USDC.base", 6).is_ok());
    }
}

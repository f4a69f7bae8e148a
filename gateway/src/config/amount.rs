//! Amounts in the file are TOML *strings* (`amount = "0.01"`): a TOML number is a binary float
//! (`0.1 + 0.2 != 0.3`), and money is exact. A number where an amount belongs is refused with the
//! quoted spelling to write instead, named by its field like every other error.

use serde::de::{self, Deserializer, Visitor};

/// What the field holds, for the message: `a decimal string such as "0.01"`.
#[derive(Clone, Copy)]
enum Kind {
    Decimal,
    Atomic,
}

struct AmountVisitor(Kind);

impl AmountVisitor {
    fn refuse<E: de::Error>(&self, number: String) -> E {
        let (what, example) = match self.0 {
            Kind::Decimal => ("a decimal string", "\"0.01\""),
            Kind::Atomic => ("an integer string of atomic units", "\"10000\""),
        };
        E::custom(format!(
            "expected {what} such as {example}, found the TOML number {number}: write it in quotes, \
             \"{number}\" (amounts are strings, so they stay exact)"
        ))
    }
}

impl<'de> Visitor<'de> for AmountVisitor {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Kind::Decimal => f.write_str("a decimal string such as \"0.01\""),
            Kind::Atomic => f.write_str("an integer string of atomic units such as \"10000\""),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Err(self.refuse(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Err(self.refuse(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Err(self.refuse(v.to_string()))
    }
}

/// A decimal amount (`"0.01"`).
pub(super) fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(AmountVisitor(Kind::Decimal))
}

/// An optional decimal amount (with `#[serde(default)]`).
pub(super) fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(AmountVisitor(Kind::Decimal)).map(Some)
}

/// An optional amount in atomic units (with `#[serde(default)]`).
pub(super) fn opt_atomic<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(AmountVisitor(Kind::Atomic)).map(Some)
}

/// An amount in atomic units (`"10000"`).
pub(super) fn atomic<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(AmountVisitor(Kind::Atomic))
}

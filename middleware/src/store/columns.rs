//! Stored records read by column name, the same way on every backend: a Redis stream entry's
//! fields, an SQLite row or a PostgreSQL row is a [`Columns`], and a record type that derives
//! `Deserialize` is read from it by [`FromColumns::from_columns`] -- one decoder per type,
//! written by serde from the type itself, so a backend cannot read a field another way.
//!
//! Each column is text (numbers in decimal): a number field parses it, a map or list field
//! parses it as JSON, an `Option` is `None` when the column is absent, null or empty, and a
//! field with `#[serde(default)]` may be absent. A missing or unreadable column is a
//! [`StoreError::Protocol`] that names the record and the column.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use super::StoreError;

/// A stored record read by column name.
pub(crate) trait Columns {
    /// The column as text (numbers in decimal); `None` when null or absent.
    fn opt(&self, k: &str) -> Result<Option<String>, StoreError>;

    /// What the record is, for errors (`usage event 17-0-3`).
    fn what(&self) -> String;

    /// The column; required.
    fn text(&self, k: &str) -> Result<String, StoreError> {
        self.opt(k)?
            .ok_or_else(|| StoreError::Protocol(format!("{} lacks {k}", self.what())))
    }

    /// The column parsed (a number); required.
    fn parse<T: FromStr>(&self, k: &str) -> Result<T, StoreError> {
        self.text(k)?
            .parse()
            .map_err(|_| StoreError::Protocol(format!("{}: bad {k}", self.what())))
    }
}

/// A record type read from its columns (every type that derives `Deserialize`).
pub(crate) trait FromColumns: DeserializeOwned {
    /// The record from `c`'s columns, one per field, by the field's name.
    fn from_columns(c: &impl Columns) -> Result<Self, StoreError> {
        Self::deserialize(Record(c)).map_err(|DeError(e)| match e {
            StoreError::Protocol(m) if m.starts_with("lacks ") => {
                StoreError::Protocol(format!("{} {m}", c.what()))
            }
            StoreError::Protocol(m) => StoreError::Protocol(format!("{}: {m}", c.what())),
            other => other,
        })
    }
}

impl<T: DeserializeOwned> FromColumns for T {}

/// Why a record could not be read (a store error, so a backend's own errors pass through).
#[derive(Debug)]
struct DeError(StoreError);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError(StoreError::Protocol(msg.to_string()))
    }

    /// As [`Columns::text`] says it (`usage event 17-0-3 lacks time_ms`).
    fn missing_field(field: &'static str) -> Self {
        DeError(StoreError::Protocol(format!("lacks {field}")))
    }
}

/// The record: a struct whose fields are columns.
struct Record<'a, C: ?Sized>(&'a C);

impl<'de, C: Columns + ?Sized> de::Deserializer<'de> for Record<'_, C> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DeError> {
        Err(de::Error::custom("a stored record is read into a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_map(Cells {
            c: self.0,
            fields,
            next: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The struct's fields in order, each with its column; an absent column is skipped (its
/// field's default, or serde's "missing field").
struct Cells<'a, C: ?Sized> {
    c: &'a C,
    fields: &'static [&'static str],
    next: Option<Cell>,
}

impl<'de, C: Columns + ?Sized> MapAccess<'de> for Cells<'_, C> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        while let Some((&key, rest)) = self.fields.split_first() {
            self.fields = rest;
            if let Some(text) = self.c.opt(key).map_err(DeError)? {
                self.next = Some(Cell { key, text });
                return seed
                    .deserialize(IntoDeserializer::<DeError>::into_deserializer(key))
                    .map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let cell = self
            .next
            .take()
            .ok_or_else(|| de::Error::custom("a column read before its name"))?;
        seed.deserialize(cell)
    }
}

/// One column's text, read as its field's type.
struct Cell {
    key: &'static str,
    text: String,
}

impl Cell {
    fn bad(&self) -> DeError {
        de::Error::custom(format!("bad {}", self.key))
    }

    fn parse<T: FromStr>(&self) -> Result<T, DeError> {
        self.text.parse().map_err(|_| self.bad())
    }

    fn json(&self) -> Result<serde_json::Value, DeError> {
        serde_json::from_str(&self.text).map_err(|_| self.bad())
    }
}

macro_rules! parsed {
    ($($method:ident => $visit:ident,)+) => {
        $(
            fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
                v.$visit(self.parse()?)
            }
        )+
    };
}

impl<'de> de::Deserializer<'de> for Cell {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_string(self.text)
    }

    parsed! {
        deserialize_bool => visit_bool,
        deserialize_u8 => visit_u8,
        deserialize_u16 => visit_u16,
        deserialize_u32 => visit_u32,
        deserialize_u64 => visit_u64,
        deserialize_i16 => visit_i16,
        deserialize_i32 => visit_i32,
        deserialize_i64 => visit_i64,
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.text.is_empty() {
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.json()?.deserialize_map(v).map_err(|_| self.bad())
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.json()?.deserialize_seq(v).map_err(|_| self.bad())
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_enum(IntoDeserializer::<DeError>::into_deserializer(self.text))
    }

    serde::forward_to_deserialize_any! {
        i8 i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct newtype_struct
        tuple tuple_struct struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A record of named text columns.
    struct Row(Vec<(&'static str, &'static str)>);

    impl Columns for Row {
        fn opt(&self, k: &str) -> Result<Option<String>, StoreError> {
            Ok(self
                .0
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string()))
        }

        fn what(&self) -> String {
            "test row".into()
        }
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Rec {
        id: String,
        n: u64,
        t: i64,
        m: BTreeMap<String, u64>,
        o: Option<String>,
        #[serde(default)]
        d: String,
    }

    #[test]
    fn every_kind_of_field_reads_from_text() {
        let r = Rec::from_columns(&Row(vec![
            ("id", "a-1"),
            ("n", "42"),
            ("t", "-7"),
            ("m", r#"{"request":1}"#),
            ("o", "x"),
        ]))
        .unwrap();
        assert_eq!(r.id, "a-1");
        assert_eq!((r.n, r.t), (42, -7));
        assert_eq!(r.m["request"], 1);
        assert_eq!(r.o.as_deref(), Some("x"));
        assert_eq!(r.d, "");
        let empty = Rec::from_columns(&Row(vec![
            ("id", ""),
            ("n", "0"),
            ("t", "0"),
            ("m", "{}"),
            ("o", ""),
            ("d", "y"),
        ]))
        .unwrap();
        assert_eq!(
            (empty.id.as_str(), empty.o, empty.d.as_str()),
            ("", None, "y")
        );
    }

    #[test]
    fn a_missing_or_unreadable_column_is_named() {
        let missing = Rec::from_columns(&Row(vec![("id", "a"), ("n", "1"), ("m", "{}")]));
        assert!(
            matches!(&missing, Err(StoreError::Protocol(m)) if m == "test row lacks t"),
            "{missing:?}"
        );
        for (col, bad) in [("n", "-1"), ("n", "1.5"), ("t", "x"), ("m", "{not json")] {
            let mut cols = vec![("id", "a"), ("n", "1"), ("t", "1"), ("m", "{}")];
            cols.retain(|(k, _)| *k != col);
            cols.push((col, bad));
            let e = Rec::from_columns(&Row(cols));
            assert!(
                matches!(&e, Err(StoreError::Protocol(m)) if m.contains(&format!("bad {col}"))),
                "{col}={bad}: {e:?}"
            );
        }
    }
}

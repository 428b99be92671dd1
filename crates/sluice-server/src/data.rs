//! An input's JSON `data`, read with Triton's nesting limit.
//!
//! Triton's server refuses `data` nested 100 levels deep or more (it counts the
//! outermost array as level 0, so 99 nested arrays around the values pass and 100 do
//! not), with "JSON nesting depth exceeds maximum allowed limit (100)". serde_json's
//! own limit (128 levels for the whole document) stays as the backstop and gets the
//! same answer. The depth is counted while `data` is parsed, in the same pass, so the
//! check costs nothing extra on the hot path.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sluice_core::Error;

/// The depth at which a value inside `data` is refused (Triton's
/// `HTTP_MAX_JSON_NESTING_DEPTH`); the top-level array is depth 0.
pub const MAX_DATA_DEPTH: usize = 100;

/// The message of a request nested too deeply (Triton's text).
fn depth_message() -> String {
    format!("JSON nesting depth exceeds maximum allowed limit ({MAX_DATA_DEPTH})")
}

/// The error for a request header that serde_json could not read.
pub fn json_error(e: serde_json::Error) -> Error {
    let text = e.to_string();
    if text.starts_with(&depth_message()) || text.starts_with("recursion limit exceeded") {
        return Error::invalid(depth_message());
    }
    Error::invalid(format!("malformed request JSON: {e}"))
}

/// The `data` of an input, as a JSON value no deeper than [`MAX_DATA_DEPTH`].
#[derive(Debug)]
pub struct Data(pub Value);

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
        Level(0).deserialize(d).map(Data)
    }
}

/// A value at a given depth of `data`.
#[derive(Clone, Copy)]
struct Level(usize);

impl<'de> DeserializeSeed<'de> for Level {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0 >= MAX_DATA_DEPTH {
            return Err(de::Error::custom(depth_message()));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        let next = Level(self.0 + 1);
        while let Some(v) = seq.next_element_seed(next)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        // An object is never valid tensor data; it is kept for the error message.
        Value::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(arrays: usize) -> String {
        format!("{}1{}", "[".repeat(arrays), "]".repeat(arrays))
    }

    #[test]
    fn data_nests_up_to_tritons_limit() {
        let ok: Data = serde_json::from_str(&nested(MAX_DATA_DEPTH - 1)).unwrap();
        let mut v = &ok.0;
        let mut depth = 0;
        while let Value::Array(items) = v {
            v = &items[0];
            depth += 1;
        }
        assert_eq!((depth, v), (MAX_DATA_DEPTH - 1, &Value::from(1)));
        for arrays in [MAX_DATA_DEPTH, MAX_DATA_DEPTH + 1, 200, 100_000] {
            let err = serde_json::from_str::<Data>(&nested(arrays)).unwrap_err();
            assert_eq!(
                json_error(err).message(),
                "JSON nesting depth exceeds maximum allowed limit (100)",
                "{arrays}"
            );
        }
    }

    #[test]
    fn values_keep_their_types() {
        let d: Data =
            serde_json::from_str(r#"[true, -1, 18446744073709551615, 0.5, "s", null, {"a": [1]}]"#)
                .unwrap();
        assert_eq!(
            d.0,
            serde_json::json!([true, -1, 18_446_744_073_709_551_615u64, 0.5, "s", null, {"a": [1]}])
        );
        let err = serde_json::from_str::<Data>("[1,").unwrap_err();
        assert!(json_error(err)
            .message()
            .starts_with("malformed request JSON"));
    }
}

//! An input's JSON `data`, read with Triton's nesting limit.
//!
//! Triton's server refuses `data` nested 100 levels deep or more (it counts the
//! outermost array as level 0, so 99 nested arrays around the values pass and 100 do
//! not), with "JSON nesting depth exceeds maximum allowed limit (100)". serde_json's
//! own limit (128 levels for the whole document) stays as the backstop and gets the
//! same answer. The depth is counted while `data` is parsed, in the same pass, so the
//! check costs nothing extra on the hot path.
//!
//! Key decision: when an input's `name`, `datatype` and `shape` come before its `data`
//! in the JSON object (the order every client sends), `data` is parsed straight into
//! the tensor's little-endian bytes ([`Direct`]): no `Value` is built per element,
//! which was most of a JSON request's cost. Each element goes through the same check
//! as a `Value` would (`codec::push_element`), and the first one refused is reported
//! where the value check always was, so both paths give the same answers; `data`
//! before the others is read as a `Value` ([`Data`]).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sluice_core::{DataType, Error};

use crate::wire::ElementWriter;

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

/// The string a bare `NaN`, `Infinity` or `-Infinity` token of a request becomes in
/// [`quote_non_finite`]'s rewrite: a NUL byte then the token (no client sends that
/// as a float).
const NON_FINITE_MARK: char = '\u{0}';

/// The value of a float element that [`quote_non_finite`] quoted.
pub(crate) fn non_finite(s: &str) -> Option<f64> {
    match s.strip_prefix(NON_FINITE_MARK)? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Triton reads JSON with NaN and infinities allowed (RapidJSON's
/// `kParseNanAndInfFlag`), and perf_analyzer's random JSON data holds them: a request
/// that serde_json refused is rewritten with each bare `NaN`, `Infinity` and
/// `-Infinity` outside strings quoted as a marked string (read back as the float by
/// the `data` readers). `None` when the text has no such token, so the first error
/// stands. Only a refused request pays for this pass.
pub fn quote_non_finite(text: &[u8]) -> Option<Vec<u8>> {
    const TOKENS: [&[u8]; 3] = [b"-Infinity", b"Infinity", b"NaN"];
    let mut out = Vec::with_capacity(text.len() + 64);
    let (mut i, mut in_string, mut found) = (0, false, false);
    while i < text.len() {
        let b = text[i];
        if in_string {
            out.push(b);
            match b {
                b'\\' if i + 1 < text.len() => {
                    out.push(text[i + 1]);
                    i += 1;
                }
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
        } else if let Some(token) = TOKENS.iter().find(|t| text[i..].starts_with(t)) {
            out.extend_from_slice(b"\"\\u0000");
            out.extend_from_slice(token);
            out.push(b'"');
            i += token.len();
            found = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    found.then_some(out)
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

/// The `data` of an input as read from the request.
#[derive(Debug)]
pub enum InputData {
    /// Parsed straight into the tensor's bytes, or the first element refused.
    Bytes(sluice_core::Result<Bytes>),
    /// Read as a JSON value (`data` came before the input's datatype or shape).
    Json(Value),
}

/// Reads an input's `data` (`null`: none) straight into the bytes of a tensor of
/// `count` elements of `datatype`, with the nesting limit of [`Data`].
pub struct Direct<'a> {
    pub owner: &'a str,
    pub datatype: DataType,
    pub count: usize,
}

impl<'de> DeserializeSeed<'de> for Direct<'_> {
    type Value = Option<InputData>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Direct<'_> {
    type Value = Option<InputData>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let mut sink = Sink {
            owner: self.owner,
            datatype: self.datatype,
            out: ElementWriter::new(self.owner, self.datatype, self.count),
            error: None,
        };
        Element {
            sink: &mut sink,
            depth: 0,
        }
        .deserialize(d)?;
        let bytes = match sink.error {
            Some(e) => Err(e),
            None => sink.out.finish(),
        };
        Ok(Some(InputData::Bytes(bytes)))
    }
}

/// Where the elements of [`Direct`] go: the first refused one is kept, the rest of
/// `data` is still parsed (a syntax error later in the request wins, as before).
struct Sink<'a> {
    owner: &'a str,
    datatype: DataType,
    out: ElementWriter<'a>,
    error: Option<Error>,
}

impl Sink<'_> {
    fn push(&mut self, v: &Value) {
        if self.error.is_none() {
            if let Err(e) = crate::codec::push_element(self.owner, self.datatype, v, &mut self.out)
            {
                self.error = Some(e);
            }
        }
    }
}

/// One value of `data` at a depth, for [`Direct`].
struct Element<'s, 'a> {
    sink: &'s mut Sink<'a>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(de::Error::custom(depth_message()));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Element<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.sink.push(&Value::Bool(v));
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.sink.push(&Value::from(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.sink.push(&Value::from(v));
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        if self.sink.datatype == DataType::F32 && self.sink.error.is_none() {
            // The common case, without a `Value`: the same check as `push_element`.
            if let Err(e) = self.sink.out.float(v) {
                self.sink.error = Some(e);
            }
            return Ok(());
        }
        self.sink.push(&Value::from(v));
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        let float = matches!(
            self.sink.datatype,
            DataType::F16 | DataType::Bf16 | DataType::F32 | DataType::F64
        );
        if let (true, Some(x)) = (float, non_finite(v)) {
            if self.sink.error.is_none() {
                if let Err(e) = self.sink.out.float(x) {
                    self.sink.error = Some(e);
                }
            }
            return Ok(());
        }
        if self.sink.datatype == DataType::Bytes {
            if self.sink.error.is_none() {
                if let Err(e) = self.sink.out.bytes(v.as_bytes()) {
                    self.sink.error = Some(e);
                }
            }
            return Ok(());
        }
        self.sink.push(&Value::String(v.to_owned()));
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.sink.push(&Value::Null);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.sink.push(&Value::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Element {
                sink: &mut *self.sink,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        // An object is never valid tensor data; it is kept for the error message.
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.sink.push(&v);
        Ok(())
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

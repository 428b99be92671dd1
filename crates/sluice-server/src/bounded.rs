//! serde helpers that stop a JSON request at the request limits while it is being
//! parsed (see [`crate::limits`]), before a list of a million inputs is built.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::limits;

struct BoundedSeq<T> {
    limit: usize,
    what: &'static str,
    flag: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of {}", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            if items.len() == self.limit {
                return Err(A::Error::custom(format!(
                    "the request has more than {} {}, the limit ({})",
                    self.limit, self.what, self.flag
                )));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// `inputs`: at most `--max-request-inputs`.
pub fn inputs<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedSeq {
        limit: limits::current().max_inputs,
        what: "inputs",
        flag: "--max-request-inputs",
        _t: PhantomData,
    })
}

/// `outputs`: at most `--max-request-outputs`.
pub fn outputs<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedSeq {
        limit: limits::current().max_outputs,
        what: "outputs",
        flag: "--max-request-outputs",
        _t: PhantomData,
    })
}

struct BoundedMap;

impl<'de> Visitor<'de> for BoundedMap {
    type Value = Map<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of parameters")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let limit = limits::current().max_parameters;
        let mut out = Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if out.len() == limit {
                return Err(A::Error::custom(format!(
                    "more than {limit} parameters, the limit (--max-request-parameters)"
                )));
            }
            out.insert(key, value);
        }
        Ok(out)
    }
}

/// `parameters`: at most `--max-request-parameters` entries.
pub fn parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    d.deserialize_map(BoundedMap)
}

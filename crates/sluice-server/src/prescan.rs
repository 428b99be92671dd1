//! The inputs' JSON `data`, found in the raw request text and parsed with a correctly
//! rounded float parser.
//!
//! serde_json reads a number through its own decimal parser: about 300 instructions
//! for a 17-digit float, most of a JSON request's server time, and best-effort (a
//! 17-digit FP64 of large exponent may come back 1–2 ULP off) unless its
//! `float_roundtrip` feature is on. That feature and `raw_value` (to reach the text of
//! `data`) would rebuild every crate that uses serde_json, tract's included, and still
//! leave serde_json's own digit loop in the way.
//!
//! Key decision: a small structural scan of the request finds the byte span of each
//! `inputs[i].data` value, those spans are replaced by `null` in a copy of the (then
//! short) header that serde_json reads as before, and each span is read afterwards,
//! knowing the input's datatype and shape: numbers of a floating-point tensor by a
//! strict JSON number scan and `fast-float2` (correctly rounded), straight into the
//! tensor's bytes; any other `data` by serde_json on the span alone, as before. The
//! scan only has to be right for valid JSON: each span is checked strictly when it is
//! read, and the rest of the text is checked by serde_json. Anything unusual — an
//! escaped key, a duplicate key, a span that does not read cleanly, nesting at the
//! limit — gives up, and the whole request goes the old way, so every error, its text
//! and its order are exactly what they were.

use std::ops::Range;

use serde::de::DeserializeSeed;
use sluice_core::{DataType, Error};

use crate::data::{Data, Direct, InputData, MAX_DATA_DEPTH};
use crate::wire::ElementWriter;

/// The request with each input's `data` cut out.
pub struct Prescanned {
    /// The request text with each `data` value replaced by `null`.
    pub reduced: Vec<u8>,
    /// Per input, in order: the span of its `data` value in the original text.
    pub spans: Vec<Option<Range<usize>>>,
}

/// Finds the `data` of each input of the request `text`. `None` when there is none, or
/// when anything is unusual (the caller then reads the request as it is).
pub fn scan(text: &[u8]) -> Option<Prescanned> {
    memchr::memmem::find(text, b"\"data\"")?;
    let mut s = Scanner { t: text, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut spans: Option<Vec<Option<Range<usize>>>> = None;
    s.ws();
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        s.ws();
        let key = s.key()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if key == b"inputs" {
            if spans.is_some() {
                return None;
            }
            spans = Some(s.inputs()?);
        } else {
            s.skip_value()?;
        }
        s.ws();
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != text.len() {
        return None;
    }
    let spans = spans?;
    if spans.iter().all(Option::is_none) {
        return None;
    }
    let mut reduced = Vec::with_capacity(256);
    let mut at = 0;
    for span in spans.iter().flatten() {
        reduced.extend_from_slice(&text[at..span.start]);
        reduced.extend_from_slice(b"null");
        at = span.end;
    }
    reduced.extend_from_slice(&text[at..]);
    Some(Prescanned { reduced, spans })
}

/// A cursor over the request text.
struct Scanner<'t> {
    t: &'t [u8],
    i: usize,
}

impl<'t> Scanner<'t> {
    fn peek(&self) -> Option<u8> {
        self.t.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// An object key without escapes (one with escapes gives up: serde_json would
    /// compare it unescaped).
    fn key(&mut self) -> Option<&'t [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let len = memchr::memchr2(b'"', b'\\', &self.t[start..])?;
        self.i = start + len;
        self.eat(b'"')?;
        Some(&self.t[start..start + len])
    }

    /// Past a string (at its opening quote).
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let len = memchr::memchr2(b'"', b'\\', &self.t[self.i..])?;
            self.i += len;
            if self.next()? == b'"' {
                return Some(());
            }
            self.next()?;
        }
    }

    /// Past one value, checked only as far as finding its end needs.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'[' | b'{' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => depth -= 1,
                        _ => {}
                    }
                    self.i += 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
            }
            _ => {
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// The `inputs` list: the span of each input's `data`.
    fn inputs(&mut self) -> Option<Vec<Option<Range<usize>>>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(out);
        }
        loop {
            self.ws();
            out.push(self.input()?);
            self.ws();
            match self.next()? {
                b',' => {}
                b']' => return Some(out),
                _ => return None,
            }
        }
    }

    /// One input object: the span of its `data`, if it has one.
    fn input(&mut self) -> Option<Option<Range<usize>>> {
        self.eat(b'{')?;
        let mut data = None;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(None);
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let start = self.i;
            self.skip_value()?;
            if key == b"data" {
                if data.is_some() {
                    return None;
                }
                data = Some(start..self.i);
            }
            self.ws();
            match self.next()? {
                b',' => {}
                b'}' => return Some(data),
                _ => return None,
            }
        }
    }
}

/// Reads the `data` span `text` of an input, knowing its name, datatype and shape
/// (`target`: what `codec::direct_target` gives; `None` reads it as a JSON value, as
/// when `data` comes first). `None` when the span does not read cleanly: the caller
/// then reads the whole request the old way, for the old error.
pub fn read_data(
    text: &[u8],
    target: Option<(&str, DataType, usize)>,
) -> Option<Option<InputData>> {
    match target {
        Some((owner, datatype, count)) if is_float(datatype) && starts_number_or_array(text) => {
            let mut out = ElementWriter::new(owner, datatype, count);
            let first_error = floats(text, &mut out)?;
            Some(Some(InputData::Bytes(match first_error {
                Some(e) => Err(e),
                None => out.finish(),
            })))
        }
        Some((owner, datatype, count)) => {
            let mut de = serde_json::Deserializer::from_slice(text);
            let data = Direct {
                owner,
                datatype,
                count,
            }
            .deserialize(&mut de)
            .ok()?;
            de.end().ok()?;
            Some(data)
        }
        None => {
            let mut de = serde_json::Deserializer::from_slice(text);
            let data: Option<Data> = serde::Deserialize::deserialize(&mut de).ok()?;
            de.end().ok()?;
            Some(data.map(|d| InputData::Json(d.0)))
        }
    }
}

fn is_float(datatype: DataType) -> bool {
    matches!(
        datatype,
        DataType::F16 | DataType::Bf16 | DataType::F32 | DataType::F64
    )
}

fn starts_number_or_array(text: &[u8]) -> bool {
    matches!(text.first(), Some(b'[' | b'-' | b'0'..=b'9'))
}

/// Reads numbers, flat or nested in arrays, into `out`; the first element `out`
/// refused is returned (the rest is still read, as serde_json would). `None` on
/// anything but strict JSON numbers and arrays, a number out of `f64`'s range
/// (serde_json refuses it), or nesting at [`MAX_DATA_DEPTH`].
fn floats(text: &[u8], out: &mut ElementWriter<'_>) -> Option<Option<Error>> {
    let mut first_error = None;
    let mut i = 0;
    // The depth of the value about to be read; the top level is 0.
    let mut depth = 0usize;
    loop {
        // A value.
        if depth >= MAX_DATA_DEPTH {
            return None;
        }
        if text[i] == b'[' {
            i = skip_ws(text, i + 1);
            if *text.get(i)? != b']' {
                depth += 1;
                continue;
            }
            i += 1;
        } else {
            let end = number_end(text, i)?;
            let v: f64 = fast_float2::parse(&text[i..end]).ok()?;
            if !v.is_finite() {
                return None;
            }
            if first_error.is_none() {
                if let Err(e) = out.float(v) {
                    first_error = Some(e);
                }
            }
            i = end;
        }
        // After a value: a comma, the end of arrays, or the end of the text.
        loop {
            i = skip_ws(text, i);
            if depth == 0 {
                return (i == text.len()).then_some(first_error);
            }
            match *text.get(i)? {
                b',' => {
                    i = skip_ws(text, i + 1);
                    text.get(i)?;
                    break;
                }
                b']' => {
                    i += 1;
                    depth -= 1;
                }
                _ => return None,
            }
        }
    }
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while matches!(text.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the JSON number at `i` (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`).
fn number_end(text: &[u8], mut i: usize) -> Option<usize> {
    let digits = |text: &[u8], mut i: usize| {
        let start = i;
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if text.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match text.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(text, i)?,
        _ => return None,
    };
    if text.get(i) == Some(&b'.') {
        i = digits(text, i + 1)?;
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(text, i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn spans(text: &str) -> Option<Vec<Option<String>>> {
        let p = scan(text.as_bytes())?;
        let reduced: serde_json::Value = serde_json::from_slice(&p.reduced).unwrap();
        for (i, s) in p.spans.iter().enumerate() {
            if s.is_some() {
                assert_eq!(reduced["inputs"][i]["data"], serde_json::Value::Null);
            }
        }
        Some(
            p.spans
                .into_iter()
                .map(|s| s.map(|s| text[s].to_owned()))
                .collect(),
        )
    }

    #[test]
    fn finds_each_inputs_data() {
        let text = r#" { "id": "x\"}{[", "parameters": {"data": [9]},
            "inputs": [{"name": "a", "data": [1, [2.5e3]] , "shape": [2]},
                       {"name": "b", "parameters": {"binary_data_size": 4}},
                       {"data": ["s\"]", "t"], "name": "c"}],
            "outputs": [{"name": "data"}] } "#;
        assert_eq!(
            spans(text).unwrap(),
            vec![
                Some("[1, [2.5e3]]".to_owned()),
                None,
                Some(r#"["s\"]", "t"]"#.to_owned())
            ]
        );
    }

    #[test]
    fn gives_up_on_anything_unusual() {
        for text in [
            r#"{"inputs": [{"name": "a"}]}"#,               // no data
            r#"{"inputs": [{"d\u0061ta": [1]}]}"#,          // an escaped key
            r#"{"inputs": [{"data": [1], "data": [2]}]}"#,  // a duplicate key
            r#"{"inputs": [], "inputs": [{"data": [1]}]}"#, // a duplicate list
            r#"{"inputs": [{"data": [1]}] } x"#,            // trailing text
            r#"{"inputs": [{"data": [1]}"#,                 // cut short
            r#"{"inputs": {"data": [1]}}"#,                 // not a list
            r#"{"inputs": [{"data": [1]}, 5]}"#,            // not an object
            r#"["inputs", {"data": [1]}]"#,                 // not an object
        ] {
            assert!(scan(text.as_bytes()).is_none(), "{text}");
        }
    }

    fn f32s(text: &str, count: usize) -> Option<sluice_core::Result<Vec<f32>>> {
        match read_data(text.as_bytes(), Some(("input 'x'", DataType::F32, count)))? {
            Some(InputData::Bytes(b)) => Some(b.map(|b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            })),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_numbers_flat_and_nested() {
        assert_eq!(
            f32s(" [ [1, -0.5] ,[2.5E+2, 0e0 ], [ ], -0 ] ", 4)
                .unwrap()
                .unwrap(),
            vec![1.0, -0.5, 250.0, 0.0]
        );
        assert!(f32s("-0", 1).unwrap().unwrap()[0].is_sign_negative());
        assert_eq!(f32s("7", 1).unwrap().unwrap(), vec![7.0]);
        let err = f32s("[1, 2, 3]", 2).unwrap().unwrap_err();
        assert_eq!(
            err.message(),
            "input 'x': more than 2 values given but the shape holds 2"
        );
    }

    #[test]
    fn leaves_anything_but_strict_numbers_to_serde_json() {
        for text in [
            "[1,]", "[,1]", "[1 2]", "[01]", "[1.]", "[.5]", "[1e]", "[+1]", "[-]", "[NaN]",
            "[inf]", "[1e400]", "[\"1\"]", "[true]", "[null]", "[{}]", "[1]]", "[[1]", "[1] x",
            "[1,\n", "",
        ] {
            assert!(f32s(text, 1).is_none(), "{text}");
        }
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(f32s(&deep(MAX_DATA_DEPTH - 1), 1).is_some());
        assert!(f32s(&deep(MAX_DATA_DEPTH), 1).is_none());
    }

    #[test]
    fn fp64_is_correctly_rounded() {
        // Values serde_json's best-effort parse returns 1-2 ULP off (found by the
        // round-trip proptest in `fuzzing`); Rust's own parser is the reference.
        for text in [
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "-8.98846567431158e307",
            "1.2345678901234567e-300",
            "9.007199254740993e15",
            "5e-324",
        ] {
            let bytes =
                match read_data(text.as_bytes(), Some(("input 'x'", DataType::F64, 1))).unwrap() {
                    Some(InputData::Bytes(b)) => b.unwrap(),
                    other => panic!("{other:?}"),
                };
            let got = f64::from_le_bytes(bytes[..].try_into().unwrap());
            assert_eq!(
                got.to_bits(),
                text.parse::<f64>().unwrap().to_bits(),
                "{text}"
            );
        }
    }

    /// Every request answers as serde_json alone would have answered it: the same
    /// request, or the same error text.
    #[test]
    fn answers_as_serde_json_alone() {
        let input = |fields: &str| format!(r#"{{"inputs": [{{{fields}}}]}}"#);
        let f32x = |data: &str| {
            input(&format!(
                r#""name": "x", "datatype": "FP32", "shape": [2], "data": {data}"#
            ))
        };
        let mut texts: Vec<String> = [
            "[1, 2]",
            "[[1], [2]]",
            "[-0, 0.5e-3]",
            "[1.7976931348623157e308, 1e-400]",
            "[1e400, 1]",
            "[1, 2, 3]",
            "[1]",
            "[]",
            "null",
            "5",
            "[1, \"2\"]",
            "[true, 1]",
            "[NaN, 1]",
            "[1, 2,]",
            "[01, 2]",
            "[1, 2] x",
            "[1, {\"a\": 1}]",
            "[[1, 2]",
            " [ 1 , 2 ] ",
            "[1, 2]]",
            "[18446744073709551616, -9223372036854775809]",
        ]
        .iter()
        .map(|d| f32x(d))
        .collect();
        let deep = |n: usize| format!("{}1, 2{}", "[".repeat(n), "]".repeat(n));
        texts.extend([
            f32x(&deep(MAX_DATA_DEPTH - 1)),
            f32x(&deep(MAX_DATA_DEPTH)),
            f32x(&deep(200)),
        ]);
        for (datatype, data) in [
            ("FP64", "[0.1, -2.5e10]"),
            ("FP16", "[1.5, 70000]"),
            ("BF16", "[1.5, -2]"),
            ("INT64", "[9223372036854775807, -9223372036854775808]"),
            ("INT8", "[1, 300]"),
            ("UINT64", "[18446744073709551615, 0]"),
            ("BOOL", "[true, false]"),
            ("BOOL", "[1, 0]"),
            ("BYTES", r#"["a\"]", "\u00e9"]"#),
            ("BYTES", "[1, 2]"),
            ("FP32X", "[1, 2]"),
        ] {
            texts.push(input(&format!(
                r#""name": "x", "datatype": "{datatype}", "shape": [2], "data": {data}"#
            )));
        }
        texts.extend(
            [
                // `data` before the shape, a duplicate, escapes, no data, binary size too.
                r#"{"inputs": [{"data": [1, 2], "name": "x", "datatype": "FP32", "shape": [2]}]}"#,
                r#"{"inputs": [{"data": [1, 2], "name": "x", "datatype": "FP32", "shape": [2], "data": [3]}]}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "d\u0061ta": [1, 2]}]}"#,
                r#"{"inputs": [{"name": "x\"", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}]}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], "parameters": {"binary_data_size": 8}}]}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]},
                              {"name": "y", "datatype": "INT32", "shape": [1], "data": [7]}],
                    "outputs": [{"name": "data", "parameters": {"binary_data": true}}],
                    "parameters": {"data": [1], "priority": 1}, "id": "data"}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "inputs": []}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}], "outputs": 5}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2], "data": [1, 2]}]}"#,
                r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2], "extra": [1, {"data": 2}]}]}"#,
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            let body = Bytes::from(text.clone());
            let fast = crate::codec::decode_request(&body, None);
            let slow = crate::codec::decode_request_by_serde(&body, None);
            let show =
                |r: &sluice_core::Result<(sluice_core::InferRequest, crate::codec::OutputPlan)>| {
                    match r {
                        Ok((req, plan)) => format!("{req:?} {plan:?}"),
                        Err(e) => format!("error {}", e.message()),
                    }
                };
            assert_eq!(
                fast.as_ref().ok().map(|(_, p)| p),
                slow.as_ref().ok().map(|(_, p)| p),
                "{text}"
            );
            assert_eq!(
                fast.as_ref()
                    .map(|(r, _)| format!("{r:?}"))
                    .map_err(|e| e.message().to_owned()),
                slow.as_ref()
                    .map(|(r, _)| format!("{r:?}"))
                    .map_err(|e| e.message().to_owned()),
                "{text}: {}",
                show(&slow)
            );
        }
    }
}

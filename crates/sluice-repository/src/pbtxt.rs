//! A parser for protobuf text format, the syntax of Triton's `config.pbtxt`.
//!
//! It produces a `serde_json::Value` shaped like the proto's JSON mapping, so the
//! same serde schema reads `config.pbtxt` and `config.json`. The text format does
//! not say which fields are repeated or maps, so the caller names them.

use serde_json::{Map, Number, Value};

/// A syntax error with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// Which fields of the schema are `repeated` (always arrays) and which are `map`s
/// (`{ key: K value: V }` entries that become a JSON object).
#[derive(Debug, Clone, Copy)]
pub struct Schema<'a> {
    pub repeated: &'a [&'a str],
    pub maps: &'a [&'a str],
}

/// Messages nest at most this deep (protobuf's own default recursion limit); a
/// deeper text is an error, not a stack overflow.
pub const MAX_DEPTH: usize = 100;

/// Parses protobuf text format into JSON.
pub fn parse(text: &str, schema: Schema<'_>) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
        depth: 0,
        schema,
    };
    let fields = p.fields(None)?;
    p.skip_ws();
    if p.pos < p.src.len() {
        return Err(p.error("unexpected text after the end of the message"));
    }
    Ok(fields)
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    /// Messages open around the current position.
    depth: usize,
    schema: Schema<'a>,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SyntaxError {
        let before = &self.src[..self.pos.min(self.src.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        SyntaxError {
            line,
            column,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            if b == b'#' {
                while self.src.get(self.pos).is_some_and(|&b| b != b'\n') {
                    self.pos += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Fields until `close` (or the end of input when `close` is `None`).
    fn fields(&mut self, close: Option<u8>) -> Result<Value, SyntaxError> {
        let mut object = Map::new();
        loop {
            match (self.peek(), close) {
                (None, None) => break,
                (None, Some(c)) => {
                    return Err(self.error(format!(
                        "expected '{}' before the end of the file",
                        c as char
                    )))
                }
                (Some(b), Some(c)) if b == c => {
                    self.pos += 1;
                    break;
                }
                _ => {}
            }
            let name = self
                .ident()
                .ok_or_else(|| self.error("expected a field name"))?;
            let colon = self.eat(b':');
            let value = match self.peek() {
                Some(b'{' | b'<') => self.message()?,
                Some(b'[') => self.list()?,
                _ if !colon => return Err(self.error(format!("expected ':' after '{name}'"))),
                _ => self.scalar()?,
            };
            self.insert(&mut object, name, value)?;
            // Field separators are optional.
            if !self.eat(b',') {
                self.eat(b';');
            }
        }
        Ok(Value::Object(object))
    }

    fn insert(
        &self,
        object: &mut Map<String, Value>,
        name: String,
        value: Value,
    ) -> Result<(), SyntaxError> {
        if self.schema.maps.contains(&name.as_str()) {
            let entries = match value {
                Value::Array(items) => items,
                other => vec![other],
            };
            let map = object
                .entry(name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(map) = map else {
                unreachable!("maps are created as objects")
            };
            for entry in entries {
                let Value::Object(mut entry) = entry else {
                    return Err(self.error(format!(
                        "'{name}' entries must be {{ key: ... value: ... }}"
                    )));
                };
                let key = match entry.remove("key") {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err(self.error(format!("a '{name}' entry has no key"))),
                };
                let value = entry.remove("value").unwrap_or(Value::Object(Map::new()));
                map.insert(key, value);
            }
            return Ok(());
        }
        let repeated = self.schema.repeated.contains(&name.as_str());
        match object.get_mut(&name) {
            Some(Value::Array(items)) => match value {
                Value::Array(more) => items.extend(more),
                one => items.push(one),
            },
            // A message given twice is a repeated field the schema does not list.
            Some(existing @ Value::Object(_)) if value.is_object() => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            Some(_) => return Err(self.error(format!("field '{name}' is given twice"))),
            None => {
                let value = match value {
                    Value::Array(items) => Value::Array(items),
                    one if repeated => Value::Array(vec![one]),
                    one => one,
                };
                object.insert(name, value);
            }
        }
        Ok(())
    }

    fn message(&mut self) -> Result<Value, SyntaxError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(format!("messages nest deeper than {MAX_DEPTH} levels")));
        }
        let open = self.src[self.pos];
        self.pos += 1;
        self.depth += 1;
        let fields = self.fields(Some(if open == b'{' { b'}' } else { b'>' }));
        self.depth -= 1;
        fields
    }

    fn list(&mut self) -> Result<Value, SyntaxError> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            let item = match self.peek() {
                Some(b'{' | b'<') => self.message()?,
                _ => self.scalar()?,
            };
            items.push(item);
            if self.eat(b']') {
                return Ok(Value::Array(items));
            }
            if !self.eat(b',') {
                return Err(self.error("expected ',' or ']' in a list"));
            }
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.pos += 1;
        }
        let ident = &self.src[start..self.pos];
        if ident.is_empty() || ident[0].is_ascii_digit() {
            self.pos = start;
            return None;
        }
        Some(String::from_utf8_lossy(ident).into_owned())
    }

    fn scalar(&mut self) -> Result<Value, SyntaxError> {
        match self.peek() {
            Some(b'"' | b'\'') => {
                let mut s = self.string()?;
                // Adjacent string literals concatenate.
                while matches!(self.peek(), Some(b'"' | b'\'')) {
                    s.push_str(&self.string()?);
                }
                Ok(Value::String(s))
            }
            Some(b) if b == b'-' || b == b'+' || b == b'.' || b.is_ascii_digit() => self.number(),
            Some(_) => match self.ident() {
                Some(id) if id == "true" || id == "True" || id == "t" => Ok(Value::Bool(true)),
                Some(id) if id == "false" || id == "False" || id == "f" => Ok(Value::Bool(false)),
                Some(id) => Ok(Value::String(id)),
                None => Err(self.error("expected a value")),
            },
            None => Err(self.error("expected a value before the end of the file")),
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).unwrap_or_default();
        let unsigned = text.trim_start_matches(['-', '+']);
        let negative = text.starts_with('-');
        let parsed = if let Some(hex) = unsigned
            .strip_prefix("0x")
            .or_else(|| unsigned.strip_prefix("0X"))
        {
            i64::from_str_radix(hex, 16)
                .ok()
                .map(|v| Number::from(if negative { -v } else { v }))
        } else if let Ok(v) = text.trim_start_matches('+').parse::<i64>() {
            Some(Number::from(v))
        } else if let Ok(v) = text.trim_start_matches('+').parse::<u64>() {
            Some(Number::from(v))
        } else {
            text.trim_start_matches('+')
                .trim_end_matches(['f', 'F'])
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
        };
        match parsed {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.pos = start;
                Err(self.error(format!("'{text}' is not a number")))
            }
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let quote = self.src[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.src.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match b {
                b'\n' => return Err(self.error("unterminated string")),
                b'\\' => {
                    let Some(&e) = self.src.get(self.pos) else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        b'0' => 0,
                        other => other,
                    });
                }
                b if b == quote => break,
                b => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SCHEMA: Schema<'static> = Schema {
        repeated: &["input", "dims", "list"],
        maps: &["parameters"],
    };

    fn check(text: &str, expect: Value) {
        assert_eq!(parse(text, SCHEMA).unwrap(), expect, "parsing {text:?}");
    }

    #[test]
    fn parses_triton_style_configs() {
        check(
            r#"
            # a comment
            name: "m"  max_batch_size: 8
            input [ { name: "x", data_type: TYPE_FP32, dims: [ -1, 3 ] } ]
            input { name: 'y' dims: 4 dims: 5 }
            dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
            parameters { key: "a" value: { string_value: "1" } }
            parameters: { key: "b" value { string_value: "x" "y" } }
            flag: true; ratio: 0.5; hex: 0x10, neg: -2
            "#,
            json!({
                "name": "m", "max_batch_size": 8,
                "input": [
                    {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3]},
                    {"name": "y", "dims": [4, 5]}
                ],
                "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100},
                "parameters": {"a": {"string_value": "1"}, "b": {"string_value": "xy"}},
                "flag": true, "ratio": 0.5, "hex": 16, "neg": -2
            }),
        );
        check("", json!({}));
        check("list: 1", json!({"list": [1]}));
        check("list []", json!({"list": []}));
        check("m < a: 1 >", json!({"m": {"a": 1}}));
        check(r#"s: "a\"b\\c""#, json!({"s": "a\"b\\c"}));
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let cases = [
            ("name \"m\"", 1, "expected ':'"),
            ("input [ { name: \"x\" }", 1, "expected ',' or ']'"),
            ("a: 1\nb {\n c: 2", 3, "expected '}'"),
            ("a: \"open", 1, "unterminated string"),
            ("a: 1\na: 2", 2, "given twice"),
            ("a: 12abc", 1, "not a number"),
            ("a: [1 2]", 1, "expected ',' or ']'"),
            ("a: }", 1, "expected a value"),
            ("}", 1, "expected a field name"),
            ("parameters: 3", 1, "entries must be"),
        ];
        for (text, line, expect) in cases {
            let err = parse(text, SCHEMA).unwrap_err();
            assert!(
                err.message.contains(expect),
                "{text:?}: expected '{expect}', got {err}"
            );
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }

    /// Found while writing the `model_config` fuzz target: deep nesting overflowed the stack
    /// (a crash of the whole server on a hostile `config.pbtxt`, e.g. one uploaded
    /// with a load request).
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = |n: usize| format!("{}{}", "a {".repeat(n), "}".repeat(n));
        assert!(parse(&deep(MAX_DEPTH), SCHEMA).is_ok());
        let err = parse(&deep(MAX_DEPTH + 1), SCHEMA).unwrap_err();
        assert!(err.message.contains("nest deeper than 100"), "{err}");
        let err = parse(&deep(1_000_000), SCHEMA).unwrap_err();
        assert!(err.message.contains("nest deeper"), "{err}");
        let list = format!("{}{}", "a [ {".repeat(200), "} ]".repeat(200));
        assert!(parse(&list, SCHEMA).is_err());
    }
}

//! The v2 inference wire format: JSON tensors (flat or nested) and Triton's binary
//! tensor extension, to and from `sluice_core` tensors.
//!
//! A binary request is `<JSON header><input bytes...>`, the header's length given by
//! `Inference-Header-Content-Length`; inputs with `parameters.binary_data_size` take
//! their bytes from the tail in order, as zero-copy slices of the body. A request
//! whose header length is 0 is Triton's raw binary request (see `raw`).
//!
//! An input's `data` nests at most `data::MAX_DATA_DEPTH` levels, Triton's limit.

use std::collections::HashMap;

use bytes::Bytes;
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_core::{
    CacheControl, DataType, Error, InferRequest, InferResponse, RequestedOutput, Result, Tensor,
};

use crate::data::{Direct, InputData};
use crate::wire::{
    check_output_parameters, parse_datatype, parse_shape, reject_shared_memory, ElementWriter,
};

#[derive(Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "crate::bounded::parameters")]
    parameters: Map<String, Value>,
    #[serde(deserialize_with = "crate::bounded::inputs")]
    inputs: Vec<WireInput>,
    #[serde(default, deserialize_with = "crate::bounded::outputs")]
    outputs: Vec<WireOutput>,
}

/// One input of a JSON request. Its `data` is parsed straight into the tensor's
/// bytes when `name`, `datatype` and `shape` came before it (see `data`).
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    parameters: Map<String, Value>,
    data: Option<InputData>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

const INPUT_FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];

impl<'de> Deserialize<'de> for WireInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<WireInput, D::Error> {
        d.deserialize_struct("WireInput", INPUT_FIELDS, WireInputVisitor)
    }
}

struct WireInputVisitor;

/// `parameters`, bounded as everywhere else.
struct Parameters;

impl<'de> DeserializeSeed<'de> for Parameters {
    type Value = Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        crate::bounded::parameters(d)
    }
}

impl<'de> Visitor<'de> for WireInputVisitor {
    type Value = WireInput;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct WireInput")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<WireInput, A::Error> {
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<String> = None;
        let mut parameters = None;
        let mut data: Option<Option<InputData>> = None;
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name if name.is_some() => {
                    return Err(de::Error::duplicate_field("name"))
                }
                InputField::Name => name = Some(map.next_value()?),
                InputField::Shape if shape.is_some() => {
                    return Err(de::Error::duplicate_field("shape"))
                }
                InputField::Shape => shape = Some(map.next_value()?),
                InputField::Datatype if datatype.is_some() => {
                    return Err(de::Error::duplicate_field("datatype"))
                }
                InputField::Datatype => datatype = Some(map.next_value()?),
                InputField::Parameters if parameters.is_some() => {
                    return Err(de::Error::duplicate_field("parameters"))
                }
                InputField::Parameters => parameters = Some(map.next_value_seed(Parameters)?),
                InputField::Data if data.is_some() => {
                    return Err(de::Error::duplicate_field("data"))
                }
                InputField::Data => {
                    let direct =
                        direct_target(name.as_deref(), datatype.as_deref(), shape.as_deref());
                    data = Some(match direct {
                        Some((owner, datatype, count)) => map.next_value_seed(Direct {
                            owner: &owner,
                            datatype,
                            count,
                        })?,
                        None => map
                            .next_value::<Option<crate::data::Data>>()?
                            .map(|d| InputData::Json(d.0)),
                    });
                }
                InputField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(WireInput {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.unwrap_or_default(),
            data: data.flatten(),
        })
    }
}

/// The owner text, datatype and element count `data` can be parsed straight into,
/// when the fields before it give them and the count is within the request limit
/// (past it, or when anything is missing or wrong, the `Value` path reports it).
fn direct_target(
    name: Option<&str>,
    datatype: Option<&str>,
    shape: Option<&[i64]>,
) -> Option<(String, DataType, usize)> {
    let owner = format!("input '{}'", name?);
    let datatype = DataType::from_v2_name(datatype?)?;
    let (_, count) = parse_shape(&owner, shape?).ok()?;
    (count as u64 <= crate::limits::current().max_elements).then_some((owner, datatype, count))
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default, deserialize_with = "crate::bounded::parameters")]
    parameters: Map<String, Value>,
}

/// How each output is to be returned: as JSON `data` or as binary bytes.
#[derive(Debug, Default)]
pub struct OutputPlan {
    default_binary: bool,
    binary: HashMap<String, bool>,
}

impl OutputPlan {
    /// Every output as binary (the answer to a raw binary request, as in Triton).
    pub fn all_binary() -> OutputPlan {
        OutputPlan {
            default_binary: true,
            binary: HashMap::new(),
        }
    }

    fn is_binary(&self, name: &str) -> bool {
        self.binary
            .get(name)
            .copied()
            .unwrap_or(self.default_binary)
    }
}

fn int_param(params: &Map<String, Value>, key: &str) -> Result<Option<i128>> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "request: parameter '{key}' must be an integer, got {v}"
                ))
            }),
    }
}

/// A number parameter (a JSON number, or a string holding one).
fn number_param(params: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s.trim().parse::<f64>().map(Some).map_err(|_| {
            Error::invalid(format!(
                "request: parameter '{key}' must be a number, got \"{s}\""
            ))
        }),
        Some(other) => Err(Error::invalid(format!(
            "request: parameter '{key}' must be a number, got {other}"
        ))),
    }
}

fn bool_param(params: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<bool>> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::invalid(format!(
            "{owner}: parameter '{key}' must be a boolean, got {other}"
        ))),
    }
}

/// Decodes an infer request body. `header_len` is `Inference-Header-Content-Length`.
pub fn decode_request(
    body: &Bytes,
    header_len: Option<usize>,
) -> Result<(InferRequest, OutputPlan)> {
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(Error::invalid(format!(
            "Inference-Header-Content-Length is {header_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let text = &body[..header_len];
    let wire: WireRequest = match serde_json::from_slice(text) {
        Ok(wire) => wire,
        Err(e) => match crate::data::quote_non_finite(text) {
            Some(quoted) => serde_json::from_slice(&quoted).map_err(crate::data::json_error)?,
            None => return Err(crate::data::json_error(e)),
        },
    };
    reject_shared_memory(wire.parameters.keys(), "request")?;
    let mut plan = OutputPlan {
        default_binary: bool_param(&wire.parameters, "binary_data_output", "request")?
            .unwrap_or(false),
        binary: HashMap::new(),
    };
    let (priority, timeout) = crate::wire::scheduling(
        int_param(&wire.parameters, "priority")?,
        int_param(&wire.parameters, "timeout")?,
    )?;
    let cache = match wire.parameters.get(CacheControl::PARAMETER) {
        None => CacheControl::Use,
        Some(Value::String(s)) => CacheControl::parse(s)?,
        Some(_) => return Err(crate::wire::cache_parameter_not_string()),
    };
    let objective = sluice_core::Objective::from_numbers(
        number_param(&wire.parameters, sluice_core::Objective::LATENCY_PARAMETER)?,
        number_param(&wire.parameters, sluice_core::Objective::ACCURACY_PARAMETER)?,
    )?;
    let mut offset = header_len;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    let mut elements = 0u64;
    for input in wire.inputs {
        inputs.push(decode_input(input, body, &mut offset, &mut elements)?);
    }
    if offset != body.len() {
        return Err(Error::invalid(format!(
            "the request carries {} bytes of binary data that no input claims",
            body.len() - offset
        )));
    }
    let mut outputs = Vec::with_capacity(wire.outputs.len());
    for output in wire.outputs {
        let owner = format!("output '{}'", output.name);
        check_output_parameters(output.parameters.keys(), &owner)?;
        // As Triton's server: a listed output is binary only when it asks to be;
        // `binary_data_output` is the default of outputs not listed.
        let binary = bool_param(&output.parameters, "binary_data", &owner)?.unwrap_or(false);
        plan.binary.insert(output.name.clone(), binary);
        outputs.push(RequestedOutput { name: output.name });
    }
    Ok((
        InferRequest {
            id: wire.id,
            inputs,
            outputs,
            priority,
            timeout,
            cache,
            objective,
        },
        plan,
    ))
}

fn decode_input(
    input: WireInput,
    body: &Bytes,
    offset: &mut usize,
    elements: &mut u64,
) -> Result<Tensor> {
    let owner = format!("input '{}'", input.name);
    reject_shared_memory(input.parameters.keys(), &owner)?;
    let datatype = parse_datatype(&owner, &input.datatype)?;
    let (shape, count) = parse_shape(&owner, &input.shape)?;
    *elements = elements.saturating_add(count as u64);
    let limit = crate::limits::current().max_elements;
    if *elements > limit {
        return Err(Error::invalid(format!(
            "{owner}: the request has {elements} tensor elements, over the limit of {limit} \
             (--max-request-elements)"
        )));
    }
    let data = match (input.parameters.get("binary_data_size"), input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "{owner}: has both 'data' and 'binary_data_size'"
            )))
        }
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{owner}: binary_data_size must be a non-negative integer"
                    ))
                })?;
            let end = offset.checked_add(size).filter(|&e| e <= body.len()).ok_or_else(|| {
                Error::invalid(format!(
                    "{owner}: binary_data_size {size} extends past the end of the request body ({} bytes left)",
                    body.len() - *offset
                ))
            })?;
            let bytes = body.slice(*offset..end);
            *offset = end;
            bytes
        }
        (None, Some(InputData::Bytes(bytes))) => bytes?,
        (None, Some(InputData::Json(data))) => json_to_bytes(&owner, datatype, &data, count)?,
        (None, None) => {
            return Err(Error::invalid(format!(
                "{owner}: has neither 'data' nor 'binary_data_size'"
            )))
        }
    };
    Tensor::new(input.name, datatype, shape, data)
}

/// Flattens JSON `data` (flat or nested) into little-endian bytes, checking the count.
fn json_to_bytes(owner: &str, datatype: DataType, data: &Value, count: usize) -> Result<Bytes> {
    let mut out = ElementWriter::new(owner, datatype, count);
    let mut stack: Vec<&Value> = vec![data];
    while let Some(v) = stack.pop() {
        if let Value::Array(items) = v {
            stack.extend(items.iter().rev());
            continue;
        }
        push_element(owner, datatype, v, &mut out)?;
    }
    out.finish()
}

pub(crate) fn push_element(
    owner: &str,
    datatype: DataType,
    v: &Value,
    out: &mut ElementWriter<'_>,
) -> Result<()> {
    let bad = || {
        // A quoted NaN or infinity (see `data::quote_non_finite`) is shown as sent.
        let shown = match v.as_str().filter(|s| crate::data::non_finite(s).is_some()) {
            Some(token) => token.trim_start_matches('\u{0}').to_owned(),
            None => v.to_string(),
        };
        Error::invalid(format!("{owner}: value {shown} is not a valid {datatype}"))
    };
    match datatype {
        DataType::Bool => out.bool(v.as_bool().ok_or_else(bad)?),
        DataType::F16 | DataType::Bf16 | DataType::F32 | DataType::F64 => out.float(
            v.as_f64()
                .or_else(|| v.as_str().and_then(crate::data::non_finite))
                .ok_or_else(bad)?,
        ),
        DataType::Bytes => out.bytes(v.as_str().ok_or_else(bad)?.as_bytes()),
        DataType::U8
        | DataType::U16
        | DataType::U32
        | DataType::U64
        | DataType::I8
        | DataType::I16
        | DataType::I32
        | DataType::I64 => {
            let i = v
                .as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
                .ok_or_else(bad)?;
            out.int(i)
        }
    }
}

/// An encoded response: the JSON header and, when some outputs are binary, their bytes.
pub struct EncodedResponse {
    pub json: Vec<u8>,
    pub binary: Vec<Bytes>,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    outputs: Vec<WireTensorOut<'a>>,
}

#[derive(Serialize)]
struct WireTensorOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

/// The `parameters` of an output sent as binary data (no JSON map built per output).
#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// Serializes a tensor's elements as a flat JSON array without building `Value`s.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let t = self.0;
        let d = &t.data[..];
        macro_rules! each {
            ($n:expr, $f:expr) => {{
                let mut seq = s.serialize_seq(Some(d.len() / $n))?;
                for c in d.chunks_exact($n) {
                    seq.serialize_element(&$f(c.try_into().expect("chunk size")))?;
                }
                seq.end()
            }};
        }
        match t.datatype {
            DataType::Bool => each!(1, |c: [u8; 1]| c[0] != 0),
            DataType::U8 => each!(1, u8::from_le_bytes),
            DataType::I8 => each!(1, i8::from_le_bytes),
            DataType::U16 => each!(2, u16::from_le_bytes),
            DataType::I16 => each!(2, i16::from_le_bytes),
            DataType::U32 => each!(4, u32::from_le_bytes),
            DataType::I32 => each!(4, i32::from_le_bytes),
            DataType::U64 => each!(8, u64::from_le_bytes),
            DataType::I64 => each!(8, i64::from_le_bytes),
            DataType::F16 => each!(2, |c| f16::from_le_bytes(c).to_f32()),
            DataType::Bf16 => each!(2, |c| bf16::from_le_bytes(c).to_f32()),
            DataType::F32 => each!(4, f32::from_le_bytes),
            DataType::F64 => each!(8, f64::from_le_bytes),
            DataType::Bytes => {
                // Checked by `check_json_text` before serializing.
                let mut seq = s.serialize_seq(Some(t.element_count()))?;
                for element in t.bytes_elements() {
                    let element = element.map_err(<S::Error as serde::ser::Error>::custom)?;
                    seq.serialize_element(&String::from_utf8_lossy(element))?;
                }
                seq.end()
            }
        }
    }
}

/// Checks that the `BYTES` outputs sent as JSON are UTF-8 text: JSON strings cannot
/// carry other bytes, and replacing them would change the data silently.
fn check_json_text(response: &InferResponse, plan: &OutputPlan) -> Result<()> {
    let json_bytes = response
        .outputs
        .iter()
        .filter(|t| t.datatype == DataType::Bytes && !plan.is_binary(&t.name));
    for t in json_bytes {
        for (ix, element) in t.bytes_elements().enumerate() {
            if std::str::from_utf8(element?).is_err() {
                return Err(Error::invalid(format!(
                    "output '{}': BYTES element {ix} is not UTF-8 text, which a JSON string \
                     cannot carry; request the output with \"binary_data\": true",
                    t.name
                )));
            }
        }
    }
    Ok(())
}

/// Encodes a response, each output as JSON data or binary per the plan.
pub fn encode_response(response: &InferResponse, plan: &OutputPlan) -> Result<EncodedResponse> {
    check_json_text(response, plan)?;
    let mut binary = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|t| {
            if plan.is_binary(&t.name) {
                binary.push(t.data.clone());
                WireTensorOut {
                    name: &t.name,
                    datatype: t.datatype.v2_name(),
                    shape: &t.shape,
                    parameters: Some(BinaryParameters {
                        binary_data_size: t.data.len(),
                    }),
                    data: None,
                }
            } else {
                WireTensorOut {
                    name: &t.name,
                    datatype: t.datatype.v2_name(),
                    shape: &t.shape,
                    parameters: None,
                    data: Some(JsonData(t)),
                }
            }
        })
        .collect();
    let wire = WireResponse {
        model_name: &response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id.as_deref(),
        parameters: response.answered_by.as_ref().map(|by| {
            serde_json::json!({
                sluice_core::AnsweredBy::MODEL_PARAMETER: by.model,
                sluice_core::AnsweredBy::VERSION_PARAMETER: by.version.to_string(),
            })
        }),
        outputs,
    };
    let json = serde_json::to_vec(&wire)
        .map_err(|e| Error::internal(format!("cannot encode the response: {e}")))?;
    Ok(EncodedResponse { json, binary })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of model `m` version 1 with these outputs.
    fn answer(outputs: Vec<Tensor>) -> InferResponse {
        InferResponse {
            model_name: "m".into(),
            model_version: 1,
            id: None,
            outputs,
            answered_by: None,
        }
    }

    fn decode(json: &str) -> Result<InferRequest> {
        decode_request(&Bytes::from(json.to_owned()), None).map(|(r, _)| r)
    }

    #[test]
    fn nested_and_flat_json_decode_alike() {
        let flat = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[1,2,3,4]}]}"#,
        )
        .unwrap();
        let nested = decode(
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}]}"#,
        )
        .unwrap();
        assert_eq!(flat, nested);
        let expect: Vec<u8> = [1i32, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(&flat.inputs[0].data[..], &expect[..]);
    }

    /// The same input with `data` first (read as a `Value`) and last (parsed straight
    /// into the tensor's bytes).
    fn both_orders(datatype: &str, shape: &str, data: &str) -> [Result<InferRequest>; 2] {
        [
            decode(&format!(
                r#"{{"inputs":[{{"data":{data},"name":"x","shape":{shape},"datatype":"{datatype}"}}]}}"#
            )),
            decode(&format!(
                r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","parameters":{{}},"data":{data}}}]}}"#
            )),
        ]
    }

    #[test]
    fn nan_and_infinities_are_read_as_triton_reads_them() {
        // perf_analyzer's random JSON data holds bare NaN (RapidJSON's
        // kParseNanAndInfFlag, which Triton's parser sets).
        for (datatype, width) in [("FP32", 4), ("FP64", 8), ("FP16", 2)] {
            for request in both_orders(datatype, "[4]", "[NaN,Infinity,-Infinity,1.5]") {
                let request = request.unwrap();
                let data = &request.inputs[0].data;
                assert_eq!(data.len(), 4 * width, "{datatype}");
                let value = |i: usize| -> f64 {
                    let c = &data[i * width..(i + 1) * width];
                    match width {
                        4 => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
                        8 => f64::from_le_bytes(c.try_into().unwrap()),
                        _ => f64::from(half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()),
                    }
                };
                assert!(value(0).is_nan(), "{datatype}");
                assert_eq!(value(1), f64::INFINITY, "{datatype}");
                assert_eq!(value(2), f64::NEG_INFINITY, "{datatype}");
                assert_eq!(value(3), 1.5, "{datatype}");
            }
        }
        // Only outside strings, and only for floats: a string "NaN", an id holding the
        // word, and NaN for an integer tensor keep their meaning and errors.
        for request in both_orders("FP32", "[1]", r#"["NaN"]"#) {
            let err = request.unwrap_err();
            assert!(err.message().contains("is not a valid FP32"), "{err}");
        }
        let r = decode(r#"{"id":"NaN Infinity","inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}"#)
            .unwrap();
        assert_eq!(r.id.as_deref(), Some("NaN Infinity"));
        for request in both_orders("INT32", "[1]", "[NaN]") {
            let err = request.unwrap_err();
            assert!(
                err.message().contains("value NaN is not a valid INT32"),
                "{err}"
            );
        }
        // Without such a token the first error stands.
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[nan]}]}"#)
            .unwrap_err();
        assert!(err.message().starts_with("malformed request JSON"), "{err}");
    }

    #[test]
    fn data_before_or_after_the_datatype_decodes_alike() {
        let cases = [
            ("FP32", "[2,2]", "[[0.1,-2],[3e-3,4]]"),
            ("FP16", "[3]", "[0.5,1,-65504]"),
            ("FP64", "[2]", "[0.1,1e300]"),
            ("INT8", "[2]", "[-128,127]"),
            ("UINT64", "[1]", "[18446744073709551615]"),
            ("BOOL", "[2]", "[true,false]"),
            ("BYTES", "[2]", r#"["caf\u00e9",""]"#),
            ("FP32", "[1]", "2.5"),
            ("FP32", "[1]", "null"),
            ("FP32", "[2]", "[1]"),
            ("FP32", "[1]", "[1,2]"),
            ("FP32", "[1]", r#"["a"]"#),
            ("FP32", "[1]", r#"[{"a":[1]}]"#),
            ("FP32", "[2]", "[null,1]"),
            ("INT32", "[1]", "[1.0]"),
            ("INT8", "[2]", "[300, -1]"),
            ("BOOL", "[1]", "[1]"),
            ("BYTES", "[1]", "[1]"),
            ("FP32", "[1]", "[[[[1]]]]"),
        ];
        for (datatype, shape, data) in cases {
            let [first, last] = both_orders(datatype, shape, data);
            match (first, last) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{datatype} {data}"),
                (Err(a), Err(b)) => assert_eq!(a.message(), b.message(), "{datatype} {data}"),
                (a, b) => panic!("{datatype} {data}: {a:?} vs {b:?}"),
            }
        }
        // A syntax error after a refused element is still a syntax error.
        let err =
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300, ]}]}"#)
                .unwrap_err();
        assert!(err.message().starts_with("malformed request JSON"), "{err}");
        // The nesting limit holds on both paths.
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        for r in both_orders("FP32", "[1]", &deep) {
            assert_eq!(
                r.unwrap_err().message(),
                "JSON nesting depth exceeds maximum allowed limit (100)"
            );
        }
        // Duplicate and missing fields are refused as before.
        let err = decode(
            r#"{"inputs":[{"name":"x","name":"y","shape":[1],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap_err();
        assert!(err.message().contains("duplicate field `name`"), "{err}");
        let err = decode(r#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(err.message().contains("missing field `shape`"), "{err}");
    }

    #[test]
    fn every_numeric_datatype_decodes() {
        let cases = [
            ("BOOL", "[true,false]", vec![1u8, 0]),
            ("UINT8", "[1,255]", vec![1, 255]),
            ("INT8", "[-1,2]", vec![255, 2]),
            ("UINT16", "[1,2]", vec![1, 0, 2, 0]),
            ("INT16", "[-2,3]", vec![254, 255, 3, 0]),
            (
                "UINT32",
                "[1,2]",
                [1u32, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "INT64",
                "[-1,2]",
                [-1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "UINT64",
                "[18446744073709551615,0]",
                [u64::MAX, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "FP16",
                "[1.5,-2]",
                [f16::from_f32(1.5), f16::from_f32(-2.0)]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            (
                "BF16",
                "[1.5,-2]",
                [bf16::from_f32(1.5), bf16::from_f32(-2.0)]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            (
                "FP32",
                "[0.25,1e3]",
                [0.25f32, 1000.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            (
                "FP64",
                "[0.1,-3]",
                [0.1f64, -3.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        ];
        for (dt, data, bytes) in cases {
            let req = decode(&format!(
                r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#
            ))
            .unwrap_or_else(|e| panic!("{dt}: {e}"));
            assert_eq!(&req.inputs[0].data[..], &bytes[..], "{dt}");
            // And back to JSON.
            let resp = answer(req.inputs);
            let enc = encode_response(&resp, &OutputPlan::default()).unwrap();
            let v: Value = serde_json::from_slice(&enc.json).unwrap();
            let back: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["outputs"][0]["data"].as_array().unwrap().len(), 2, "{dt}");
            if !dt.starts_with('F') && dt != "BF16" {
                assert_eq!(v["outputs"][0]["data"], back, "{dt}");
            }
        }
    }

    #[test]
    fn bad_json_inputs_say_why() {
        let cases = [
            ("{", "malformed request JSON"),
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FLOAT","data":[1,2]}]}"#,
                "unknown datatype 'FLOAT'",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "2 values given but the shape holds 3",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
                "more than 1 values",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
                "not a valid INT8",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
                "not a valid INT32",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
                "not a valid FP32",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "negative dimension",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                "neither 'data' nor",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                "extends past the end",
            ),
            (
                r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":2}}]}"#,
                "classification",
            ),
            (
                r#"{"inputs":[],"parameters":{"binary_data_output":"yes"}}"#,
                "must be a boolean",
            ),
        ];
        for (body, expect) in cases {
            let err = decode(body).unwrap_err();
            assert!(
                err.message().contains(expect),
                "{body}: expected '{expect}', got '{err}'"
            );
        }
    }

    #[test]
    fn bytes_round_trip_as_json_strings_and_binary() {
        let req = decode(
            r#"{"inputs":[{"name":"s","shape":[3],"datatype":"BYTES","data":["","caf\u00e9","a\"b"]}]}"#,
        )
        .unwrap();
        let expect = sluice_core::serialize_bytes(["", "caf\u{e9}", "a\"b"]).unwrap();
        assert_eq!(req.inputs[0].data, expect);
        let resp = answer(req.inputs);
        let enc = encode_response(&resp, &OutputPlan::default()).unwrap();
        let v: Value = serde_json::from_slice(&enc.json).unwrap();
        assert_eq!(
            v["outputs"][0]["data"],
            serde_json::json!(["", "caf\u{e9}", "a\"b"])
        );
        assert_eq!(v["outputs"][0]["datatype"], "BYTES");
        // Bytes that are not UTF-8: refused as JSON, sent as they are in binary.
        let raw = InferResponse {
            outputs: vec![Tensor::new(
                "s",
                DataType::Bytes,
                vec![2],
                sluice_core::serialize_bytes([&b"ok"[..], &[0xff, 0xfe]]).unwrap(),
            )
            .unwrap()],
            ..resp
        };
        let err = encode_response(&raw, &OutputPlan::default()).err().unwrap();
        assert_eq!(err.kind(), sluice_core::ErrorKind::InvalidArgument);
        assert!(err.message().contains("element 1 is not UTF-8"), "{err}");
        let binary = OutputPlan {
            default_binary: true,
            binary: HashMap::new(),
        };
        let enc = encode_response(&raw, &binary).unwrap();
        assert_eq!(enc.binary[0], raw.outputs[0].data);
    }

    #[test]
    fn malformed_binary_bytes_inputs_are_refused() {
        let header = |size: usize| {
            format!(
                r#"{{"inputs":[{{"name":"s","shape":[2],"datatype":"BYTES","parameters":{{"binary_data_size":{size}}}}}]}}"#
            )
        };
        let body = |size: usize, tail: &[u8]| {
            let h = header(size);
            let mut b = h.clone().into_bytes();
            b.extend_from_slice(tail);
            (Bytes::from(b), h.len())
        };
        let good = sluice_core::serialize_bytes(["ab", ""]).unwrap();
        let (b, h) = body(good.len(), &good);
        assert_eq!(decode_request(&b, Some(h)).unwrap().0.inputs[0].data, good);
        // A length prefix past the end of the tensor: claims 4 GiB - 1.
        let mut past = good.to_vec();
        past.extend_from_slice(&u32::MAX.to_le_bytes());
        let (b, h) = body(past.len(), &past);
        let err = decode_request(&b, Some(h)).unwrap_err();
        assert!(err.message().contains("malformed BYTES data"), "{err}");
        // One element for a shape of two.
        let one = sluice_core::serialize_bytes(["ab"]).unwrap();
        let (b, h) = body(one.len(), &one);
        let err = decode_request(&b, Some(h)).unwrap_err();
        assert!(
            err.message()
                .contains("1 BYTES elements do not match shape [2]"),
            "{err}"
        );
        // binary_data_size that cuts the data, or claims more than the body holds.
        let (b, h) = body(good.len() - 1, &good);
        assert!(decode_request(&b, Some(h)).is_err());
        let (b, h) = body(good.len() + 1, &good);
        let err = decode_request(&b, Some(h)).unwrap_err();
        assert!(err.message().contains("extends past the end"), "{err}");
    }

    #[test]
    fn listed_outputs_are_binary_only_when_they_ask() {
        let body = br#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"a"},{"name":"b","parameters":{"binary_data":true}},
                       {"name":"c","parameters":{"binary_data":false}}]}"#;
        let (_, plan) = decode_request(&Bytes::from_static(body), None).unwrap();
        assert!(
            !plan.is_binary("a"),
            "a listed output without binary_data is JSON"
        );
        assert!(plan.is_binary("b"));
        assert!(!plan.is_binary("c"));
        assert!(
            plan.is_binary("d"),
            "binary_data_output is the default of the others"
        );
        let (_, plan) = decode_request(&Bytes::from_static(br#"{"inputs":[]}"#), None).unwrap();
        assert!(!plan.is_binary("d"));
        assert!(OutputPlan::all_binary().is_binary("d"));
    }

    #[test]
    fn data_nests_at_most_tritons_limit_deep() {
        let request = |arrays: usize| {
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            )
        };
        let ok = decode(&request(99)).unwrap();
        assert_eq!(&ok.inputs[0].data[..], &1.0f32.to_le_bytes());
        for arrays in [100, 126, 1000] {
            let err = decode(&request(arrays)).unwrap_err();
            assert_eq!(
                err.message(),
                "JSON nesting depth exceeds maximum allowed limit (100)",
                "{arrays}"
            );
        }
    }

    #[test]
    fn binary_inputs_and_outputs() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"x","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&1.0f32.to_le_bytes());
        body.extend_from_slice(&2.0f32.to_le_bytes());
        let body = Bytes::from(body);
        let (req, plan) = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(req.inputs[0].data.len(), 8);
        assert!(plan.is_binary("x"));
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: 3,
            id: Some("a".into()),
            outputs: req.inputs,
            answered_by: None,
        };
        let enc = encode_response(&resp, &plan).unwrap();
        let v: Value = serde_json::from_slice(&enc.json).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(v["model_version"], "3");
        assert_eq!(v["id"], "a");
        assert_eq!(enc.binary[0].len(), 8);

        let err = decode_request(&body, Some(body.len() + 1)).unwrap_err();
        assert!(
            err.message().contains("Inference-Header-Content-Length"),
            "{err}"
        );
        let mut extra = body.to_vec();
        extra.push(0);
        let err = decode_request(&Bytes::from(extra), Some(header.len())).unwrap_err();
        assert!(err.message().contains("no input claims"), "{err}");
    }
}

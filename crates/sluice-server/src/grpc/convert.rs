//! `ModelInferRequest` → core [`InferRequest`] and core [`InferResponse`] →
//! `ModelInferResponse`.
//!
//! Inputs arrive either all as `raw_input_contents` (one buffer per input, in order)
//! or each as typed `contents`; raw buffers become tensor data as they are, slices
//! of the received message. Outputs always leave as `raw_output_contents`, which is
//! what `tritonclient` reads.

use bytes::Bytes;
use sluice_core::{
    AnsweredBy, CacheControl, DataType, Error, InferRequest, InferResponse, RequestedOutput,
    Result, Tensor,
};
use sluice_proto::inference::model_infer_request::InferInputTensor;
use sluice_proto::inference::model_infer_response::InferOutputTensor;
use sluice_proto::inference::{InferTensorContents, ModelInferRequest, ModelInferResponse};

use crate::wire::{
    check_output_parameters, parse_datatype, parse_shape, reject_shared_memory, ElementWriter,
};

/// The version a request names: empty means the server picks.
pub fn parse_version(version: &str) -> Result<Option<u64>> {
    if version.is_empty() {
        return Ok(None);
    }
    crate::models::parse_version(version)
        .map(Some)
        .map_err(|e| e.0)
}

/// Decodes the tensors, id and requested outputs of a request. The model name and
/// version are read by the caller.
pub fn infer_request(request: ModelInferRequest) -> Result<InferRequest> {
    let ModelInferRequest {
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
        ..
    } = request;
    reject_shared_memory(parameters.keys(), "request")?;
    if !raw_input_contents.is_empty() && raw_input_contents.len() != inputs.len() {
        return Err(Error::invalid(format!(
            "the request has {} raw_input_contents for {} inputs; give exactly one per input, \
             in the order of 'inputs'",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    let tensors = inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| decode_input(index, input, raw.next()))
        .collect::<Result<Vec<Tensor>>>()?;
    let outputs = outputs
        .into_iter()
        .map(|o| {
            check_output_parameters(o.parameters.keys(), &format!("output '{}'", o.name))?;
            Ok(RequestedOutput { name: o.name })
        })
        .collect::<Result<Vec<_>>>()?;
    let (priority, timeout) = crate::wire::scheduling(
        int_parameter(&parameters, "priority")?,
        int_parameter(&parameters, "timeout")?,
    )?;
    let cache = {
        use sluice_proto::inference::infer_parameter::ParameterChoice;
        match parameters
            .get(CacheControl::PARAMETER)
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => CacheControl::Use,
            Some(ParameterChoice::StringParam(s)) => CacheControl::parse(s)?,
            Some(_) => return Err(crate::wire::cache_parameter_not_string()),
        }
    };
    let objective = sluice_core::Objective::from_numbers(
        number_parameter(&parameters, sluice_core::Objective::LATENCY_PARAMETER)?,
        number_parameter(&parameters, sluice_core::Objective::ACCURACY_PARAMETER)?,
    )?;
    Ok(InferRequest {
        id: (!id.is_empty()).then_some(id),
        inputs: tensors,
        outputs,
        priority,
        timeout,
        cache,
        objective,
    })
}

/// The call's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`); `None` when absent or malformed.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout.min(sluice_core::limits::MAX_TIMEOUT))
}

/// An integer request parameter (`int64_param` or `uint64_param`).
fn int_parameter(
    parameters: &std::collections::HashMap<String, sluice_proto::inference::InferParameter>,
    key: &str,
) -> Result<Option<i128>> {
    use sluice_proto::inference::infer_parameter::ParameterChoice;
    match parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(i128::from(*v))),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(i128::from(*v))),
        Some(other) => Err(Error::invalid(format!(
            "request: parameter '{key}' must be an int64 or uint64 parameter, got {other:?}"
        ))),
    }
}

/// A number request parameter (`double_param`, an integer, or a string holding one).
fn number_parameter(
    parameters: &std::collections::HashMap<String, sluice_proto::inference::InferParameter>,
    key: &str,
) -> Result<Option<f64>> {
    use sluice_proto::inference::infer_parameter::ParameterChoice;
    match parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::DoubleParam(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(*v as f64)),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v as f64)),
        Some(ParameterChoice::StringParam(s)) => s.trim().parse::<f64>().map(Some).map_err(|_| {
            Error::invalid(format!(
                "request: parameter '{key}' must be a number, got \"{s}\""
            ))
        }),
        Some(other) => Err(Error::invalid(format!(
            "request: parameter '{key}' must be a number, got {other:?}"
        ))),
    }
}

fn decode_input(index: usize, input: InferInputTensor, raw: Option<Bytes>) -> Result<Tensor> {
    let owner = format!("input '{}'", input.name);
    reject_shared_memory(input.parameters.keys(), &owner)?;
    let datatype = parse_datatype(&owner, &input.datatype)?;
    let (shape, count) = parse_shape(&owner, &input.shape)?;
    let data = match (raw, input.contents) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!(
                "{owner}: has typed 'contents' although the request uses raw_input_contents; \
                 give every input one way or the other"
            )))
        }
        (Some(raw), None) => {
            if let Some(size) = datatype.size() {
                let expected = count.checked_mul(size).ok_or_else(|| {
                    Error::invalid(format!("{owner}: shape {shape:?} is too large"))
                })?;
                if raw.len() != expected {
                    return Err(Error::invalid(format!(
                        "{owner}: raw_input_contents[{index}] holds {} bytes but shape {shape:?} \
                         of {datatype} needs {expected} bytes",
                        raw.len()
                    )));
                }
            }
            raw
        }
        (None, Some(contents)) => contents_to_bytes(&owner, datatype, count, contents)?,
        (None, None) => {
            return Err(Error::invalid(format!(
                "{owner}: has no data; give it typed 'contents', or give every input a \
                 raw_input_contents entry"
            )))
        }
    };
    Tensor::new(input.name, datatype, shape, data)
}

/// The typed field that holds elements of `datatype`, if it has one.
fn contents_field(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::F16 | DataType::Bf16 => return None,
    })
}

/// Turns typed `contents` into the tensor's little-endian bytes.
fn contents_to_bytes(
    owner: &str,
    datatype: DataType,
    count: usize,
    contents: InferTensorContents,
) -> Result<Bytes> {
    let no_field = || {
        Error::invalid(format!(
            "{owner}: {datatype} has no typed contents field; send it in raw_input_contents"
        ))
    };
    let field = contents_field(datatype).ok_or_else(no_field)?;
    let c = contents;
    let filled = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    if let Some((other, _)) = filled.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(Error::invalid(format!(
            "{owner}: {datatype} values go in '{field}', but the request fills '{other}'"
        )));
    }
    let given = filled
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(0, |(_, n)| *n);
    let mut w = ElementWriter::new(owner, datatype, count);
    w.expect_count(given)?;
    match datatype {
        DataType::Bool => c.bool_contents.into_iter().try_for_each(|v| w.bool(v))?,
        DataType::I8 | DataType::I16 | DataType::I32 => {
            c.int_contents
                .into_iter()
                .try_for_each(|v| w.int(v.into()))?;
        }
        DataType::I64 => c
            .int64_contents
            .into_iter()
            .try_for_each(|v| w.int(v.into()))?,
        DataType::U8 | DataType::U16 | DataType::U32 => {
            c.uint_contents
                .into_iter()
                .try_for_each(|v| w.int(v.into()))?;
        }
        DataType::U64 => c
            .uint64_contents
            .into_iter()
            .try_for_each(|v| w.int(v.into()))?,
        DataType::F32 => c
            .fp32_contents
            .into_iter()
            .try_for_each(|v| w.float(v.into()))?,
        DataType::F64 => c.fp64_contents.into_iter().try_for_each(|v| w.float(v))?,
        DataType::Bytes => c.bytes_contents.iter().try_for_each(|v| w.bytes(v))?,
        DataType::F16 | DataType::Bf16 => return Err(no_field()),
    }
    w.finish()
}

/// Encodes a response with every output in `raw_output_contents`.
pub fn infer_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for t in response.outputs {
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: t.datatype.v2_name().to_owned(),
            shape: t
                .shape
                .iter()
                .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
                .collect(),
            ..Default::default()
        });
        raw.push(t.data);
    }
    let mut parameters = std::collections::HashMap::new();
    if let Some(by) = response.answered_by {
        use sluice_proto::inference::infer_parameter::ParameterChoice;
        use sluice_proto::inference::InferParameter;
        let string = |s: String| InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(s)),
        };
        parameters.insert(AnsweredBy::MODEL_PARAMETER.to_owned(), string(by.model));
        parameters.insert(
            AnsweredBy::VERSION_PARAMETER.to_owned(),
            string(by.version.to_string()),
        );
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id.unwrap_or_default(),
        outputs,
        raw_output_contents: raw,
        parameters,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use sluice_proto::inference::model_infer_request::InferRequestedOutputTensor;
    use sluice_proto::inference::InferParameter;

    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    fn f32_bytes(values: &[f32]) -> Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn grpc_timeout_header_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, expect) in [
            ("100m", 100_000),
            ("2S", 2_000_000),
            ("5u", 5),
            ("1M", 60_000_000),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(
                grpc_timeout(&m),
                Some(std::time::Duration::from_micros(expect)),
                "{v}"
            );
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
        // Past 24 h the deadline is cut, so `now + timeout` cannot overflow.
        m.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(sluice_core::limits::MAX_TIMEOUT));
    }

    fn raw_request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn raw_inputs_become_tensors_without_a_copy() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let mut request = raw_request(vec![input("x", "FP32", &[2, 2])], vec![data.clone()]);
        request.id = "r1".into();
        request.outputs = vec![InferRequestedOutputTensor {
            name: "y".into(),
            ..Default::default()
        }];
        let decoded = infer_request(request).unwrap();
        assert_eq!(decoded.id.as_deref(), Some("r1"));
        assert_eq!(decoded.outputs[0].name, "y");
        let t = &decoded.inputs[0];
        assert_eq!((t.datatype, t.shape.clone()), (DataType::F32, vec![2, 2]));
        assert_eq!(t.data.as_ptr(), data.as_ptr(), "the raw buffer was copied");
    }

    #[test]
    fn typed_contents_decode_per_datatype() {
        let cases: Vec<(&str, InferTensorContents, Vec<u8>)> = vec![
            (
                "FP32",
                InferTensorContents {
                    fp32_contents: vec![1.5, -2.0],
                    ..Default::default()
                },
                f32_bytes(&[1.5, -2.0]).to_vec(),
            ),
            (
                "INT8",
                InferTensorContents {
                    int_contents: vec![-1, 2],
                    ..Default::default()
                },
                vec![255, 2],
            ),
            (
                "UINT16",
                InferTensorContents {
                    uint_contents: vec![1, 2],
                    ..Default::default()
                },
                vec![1, 0, 2, 0],
            ),
            (
                "INT64",
                InferTensorContents {
                    int64_contents: vec![-1, 2],
                    ..Default::default()
                },
                [-1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "BOOL",
                InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                },
                vec![1, 0],
            ),
            (
                "BYTES",
                InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"a"), Bytes::new()],
                    ..Default::default()
                },
                vec![1, 0, 0, 0, b'a', 0, 0, 0, 0],
            ),
        ];
        for (datatype, contents, expect) in cases {
            let mut x = input("x", datatype, &[2]);
            x.contents = Some(contents);
            let decoded = infer_request(raw_request(vec![x], vec![]))
                .unwrap_or_else(|e| panic!("{datatype}: {e}"));
            assert_eq!(&decoded.inputs[0].data[..], &expect[..], "{datatype}");
        }
    }

    #[test]
    fn bad_requests_say_why() {
        let fp32 = |values: Vec<f32>| InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        };
        let with = |mut t: InferInputTensor, c: InferTensorContents| {
            t.contents = Some(c);
            t
        };
        let four = f32_bytes(&[0.0; 4]);
        let mut shared = input("x", "FP32", &[1]);
        shared
            .parameters
            .insert("shared_memory_region".into(), InferParameter::default());
        let mut classification = raw_request(vec![input("x", "FP32", &[1])], vec![four.slice(..4)]);
        classification.outputs = vec![InferRequestedOutputTensor {
            name: "y".into(),
            parameters: HashMap::from([("classification".into(), InferParameter::default())]),
        }];
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (
                raw_request(vec![input("x", "FP32", &[2, 2])], vec![four.slice(..12)]),
                "raw_input_contents[0] holds 12 bytes but shape [2, 2] of FP32 needs 16 bytes",
            ),
            (
                raw_request(
                    vec![input("x", "FP32", &[4])],
                    vec![four.clone(), four.clone()],
                ),
                "2 raw_input_contents for 1 inputs",
            ),
            (
                raw_request(
                    vec![with(input("x", "FP32", &[4]), fp32(vec![0.0; 4]))],
                    vec![four.clone()],
                ),
                "has typed 'contents' although",
            ),
            (
                raw_request(vec![input("x", "FP32", &[4])], vec![]),
                "input 'x': has no data",
            ),
            (
                raw_request(vec![input("x", "FLOAT", &[4])], vec![four.clone()]),
                "unknown datatype 'FLOAT'",
            ),
            (
                raw_request(vec![input("x", "FP32", &[-1])], vec![four.clone()]),
                "negative dimension",
            ),
            (
                raw_request(
                    vec![with(input("x", "FP32", &[3]), fp32(vec![1.0]))],
                    vec![],
                ),
                "1 values given but the shape holds 3",
            ),
            (
                raw_request(
                    vec![with(
                        input("x", "INT32", &[1]),
                        InferTensorContents {
                            int64_contents: vec![1],
                            ..Default::default()
                        },
                    )],
                    vec![],
                ),
                "INT32 values go in 'int_contents', but the request fills 'int64_contents'",
            ),
            (
                raw_request(
                    vec![with(
                        input("x", "INT8", &[1]),
                        InferTensorContents {
                            int_contents: vec![300],
                            ..Default::default()
                        },
                    )],
                    vec![],
                ),
                "value 300 is not a valid INT8",
            ),
            (
                raw_request(
                    vec![with(input("x", "FP16", &[1]), fp32(vec![1.0]))],
                    vec![],
                ),
                "FP16 has no typed contents field",
            ),
            (
                raw_request(
                    vec![input("s", "BYTES", &[1])],
                    vec![Bytes::from_static(&[9])],
                ),
                "malformed BYTES data",
            ),
            (
                raw_request(vec![shared], vec![four.slice(..4)]),
                "shared-memory tensors are not supported",
            ),
            (classification, "classification extension"),
        ];
        for (request, expect) in cases {
            let err = infer_request(request).unwrap_err();
            assert!(
                err.message().contains(expect),
                "expected '{expect}' in '{err}'"
            );
        }
    }

    #[test]
    fn bytes_inputs_raw_and_typed_are_checked() {
        let good = sluice_core::serialize_bytes(["ab", ""]).unwrap();
        let decoded = infer_request(raw_request(
            vec![input("s", "BYTES", &[2])],
            vec![good.clone()],
        ))
        .unwrap();
        assert_eq!(decoded.inputs[0].data, good);
        let mut past = good.to_vec();
        past.extend_from_slice(&u32::MAX.to_le_bytes());
        past.push(b'x');
        let cases: Vec<(ModelInferRequest, &str)> = vec![
            (
                raw_request(vec![input("s", "BYTES", &[3])], vec![Bytes::from(past)]),
                "malformed BYTES data",
            ),
            (
                raw_request(vec![input("s", "BYTES", &[3])], vec![good]),
                "2 BYTES elements do not match shape [3]",
            ),
            (
                raw_request(
                    vec![InferInputTensor {
                        contents: Some(InferTensorContents {
                            bytes_contents: vec![Bytes::from_static(b"a")],
                            ..Default::default()
                        }),
                        ..input("s", "BYTES", &[2])
                    }],
                    vec![],
                ),
                "1 values given but the shape holds 2",
            ),
        ];
        for (request, expect) in cases {
            let err = infer_request(request).unwrap_err();
            assert_eq!(err.kind(), sluice_core::ErrorKind::InvalidArgument);
            assert!(
                err.message().contains(expect),
                "expected '{expect}' in '{err}'"
            );
        }
    }

    #[test]
    fn responses_carry_raw_outputs() {
        let data = f32_bytes(&[1.0, 2.0]);
        let response = infer_response(InferResponse {
            model_name: "m".into(),
            model_version: 3,
            id: Some("a".into()),
            outputs: vec![Tensor::new("y", DataType::F32, vec![1, 2], data.clone()).unwrap()],
            answered_by: Some(AnsweredBy {
                model: "fast".into(),
                version: 2,
            }),
        });
        {
            use sluice_proto::inference::infer_parameter::ParameterChoice;
            let text = |k: &str| match &response.parameters[k].parameter_choice {
                Some(ParameterChoice::StringParam(s)) => s.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(text("sluice_variant"), "fast");
            assert_eq!(text("sluice_variant_version"), "2");
        }
        assert_eq!(response.model_version, "3");
        assert_eq!(response.id, "a");
        assert_eq!(response.outputs[0].datatype, "FP32");
        assert_eq!(response.outputs[0].shape, vec![1, 2]);
        assert!(response.outputs[0].contents.is_none());
        assert_eq!(response.raw_output_contents, vec![data]);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("").unwrap(), None);
        assert_eq!(parse_version("7").unwrap(), Some(7));
        assert!(parse_version("x").is_err());
    }
}

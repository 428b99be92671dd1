//! Reads the inputs and outputs of an ONNX file without an engine: a few prost
//! messages covering the path `ModelProto.graph.{input,output,initializer}`.
//! Every other field of the file is skipped by the decoder.

use prost::Message;
use sluice_core::{DataType, Error, Result};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// An input or output of an ONNX graph; `-1` marks a symbolic or unknown dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxTensor {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
}

/// The graph's inputs (initializers excluded) and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxSignature {
    pub inputs: Vec<OnnxTensor>,
    pub outputs: Vec<OnnxTensor>,
}

/// Decodes the signature of an ONNX model from its bytes.
pub fn signature(bytes: &[u8]) -> Result<OnnxSignature> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| Error::invalid(format!("not a valid ONNX file: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| Error::invalid("the ONNX file has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .map(tensor)
        .collect::<Result<Vec<_>>>()?;
    let outputs = graph
        .output
        .iter()
        .map(tensor)
        .collect::<Result<Vec<_>>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(Error::invalid(
            "the ONNX graph declares no inputs or no outputs",
        ));
    }
    Ok(OnnxSignature { inputs, outputs })
}

fn tensor(value: &ValueInfoProto) -> Result<OnnxTensor> {
    let tensor_type = value
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| Error::unsupported(format!("'{}' is not a tensor", value.name)))?;
    let datatype = datatype(tensor_type.elem_type).ok_or_else(|| {
        Error::unsupported(format!(
            "'{}' has ONNX element type {}, which Sluice does not support",
            value.name, tensor_type.elem_type
        ))
    })?;
    let dims = tensor_type
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.filter(|&v| v > 0).unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default();
    Ok(OnnxTensor {
        name: value.name.clone(),
        datatype,
        dims,
    })
}

/// ONNX `TensorProto.DataType` to Sluice's.
fn datatype(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        16 => DataType::Bf16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dim(v: Option<i64>, p: Option<&str>) -> Dimension {
        Dimension {
            dim_value: v,
            dim_param: p.map(str::to_owned),
        }
    }

    fn value(name: &str, elem_type: i32, dims: Vec<Dimension>) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type,
                    shape: Some(TensorShapeProto { dim: dims }),
                }),
            }),
        }
    }

    #[test]
    fn reads_signature_and_skips_initializers() {
        let model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![TensorProto { name: "w".into() }],
                input: vec![
                    value("x", 1, vec![dim(None, Some("N")), dim(Some(3), None)]),
                    value("w", 1, vec![dim(Some(3), None)]),
                ],
                output: vec![value("y", 7, vec![dim(None, None)])],
            }),
        };
        let sig = signature(&model.encode_to_vec()).unwrap();
        assert_eq!(
            sig.inputs,
            vec![OnnxTensor {
                name: "x".into(),
                datatype: DataType::F32,
                dims: vec![-1, 3]
            }]
        );
        assert_eq!(sig.outputs[0].datatype, DataType::I64);
        assert_eq!(sig.outputs[0].dims, vec![-1]);
    }

    #[test]
    fn garbage_is_an_error() {
        let err = signature(b"\xff\xff\xff\xff garbage").unwrap_err();
        assert!(err.message().contains("not a valid ONNX file"), "{err}");
        let err = signature(&ModelProto { graph: None }.encode_to_vec()).unwrap_err();
        assert!(err.message().contains("no graph"), "{err}");
    }
}

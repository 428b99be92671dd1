//! Triton's `model_warmup`: sample requests run through a freshly loaded version
//! before it turns ready, so the first real request does not pay for first-run costs.
//!
//! Key decision: a sample is an ordinary [`InferRequest`] checked against the model's
//! signature and run through the version's own instance pool, so warmup exercises the
//! exact path real requests take; a sample that fails fails the load.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;
use sluice_core::rng::Rng;
use sluice_core::{DataType, Error, InferRequest, ModelConfig, Result, Tensor};

/// One warmup sample, ready to run `count` times.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub name: String,
    pub count: u32,
    pub request: InferRequest,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmupConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    batch_size: u32,
    #[serde(default)]
    inputs: Inputs,
    #[serde(default)]
    count: u32,
}

/// `inputs` is a map; its JSON form is an object, and some writers give the
/// `[{key, value}]` list form.
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    Map(BTreeMap<String, WarmupInput>),
    List(Vec<KeyValue>),
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs::Map(BTreeMap::new())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyValue {
    key: String,
    value: WarmupInput,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmupInput {
    data_type: String,
    #[serde(default)]
    dims: Vec<i64>,
    #[serde(default)]
    zero_data: bool,
    #[serde(default)]
    random_data: bool,
    #[serde(default)]
    input_data_file: String,
}

/// The samples of a model's `model_warmup`, with data files read from
/// `<model_dir>/warmup/`.
pub(crate) fn samples(config: &ModelConfig, model_dir: &Path) -> Result<Vec<Sample>> {
    let Some(value) = &config.model_warmup else {
        return Ok(Vec::new());
    };
    let list: Vec<WarmupConfig> = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value.clone()),
        _ => serde_json::from_value(serde_json::Value::Array(vec![value.clone()])),
    }
    .map_err(|e| Error::invalid(format!("model_warmup: {e}")))?;
    // One fixed seed: a model's warmup data is the same on every load.
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    list.into_iter()
        .enumerate()
        .map(|(ix, w)| {
            let name = if w.name.is_empty() {
                format!("sample {ix}")
            } else {
                w.name
            };
            let context = |e: Error| e.context(format!("model_warmup '{name}'"));
            let batched = config.max_batch_size > 0;
            let rows = if batched {
                let b = w.batch_size.max(1);
                if i64::from(b) > i64::from(config.max_batch_size) {
                    return Err(context(Error::invalid(format!(
                        "batch_size {b} exceeds max_batch_size {}",
                        config.max_batch_size
                    ))));
                }
                Some(b as usize)
            } else {
                None
            };
            let inputs = match w.inputs {
                Inputs::Map(m) => m.into_iter().collect::<Vec<_>>(),
                Inputs::List(l) => l.into_iter().map(|kv| (kv.key, kv.value)).collect(),
            };
            let tensors = inputs
                .into_iter()
                .map(|(input, spec)| tensor(&input, &spec, rows, model_dir, &mut rng))
                .collect::<Result<Vec<_>>>()
                .map_err(context)?;
            Ok(Sample {
                name,
                count: w.count.max(1),
                request: InferRequest {
                    inputs: tensors,
                    ..InferRequest::default()
                },
            })
        })
        .collect()
}

fn tensor(
    input: &str,
    spec: &WarmupInput,
    rows: Option<usize>,
    model_dir: &Path,
    rng: &mut Rng,
) -> Result<Tensor> {
    let datatype = DataType::from_config_name(&spec.data_type).ok_or_else(|| {
        Error::invalid(format!(
            "input '{input}': unknown data_type '{}'",
            spec.data_type
        ))
    })?;
    // BYTES: zero_data and random_data are empty strings (a zero 4-byte length per
    // element); a file holds Triton's serialization, its element count checked below.
    let size = datatype.size().unwrap_or(4);
    let mut shape = Vec::with_capacity(spec.dims.len() + 1);
    shape.extend(rows);
    for &d in &spec.dims {
        let d = usize::try_from(d)
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| Error::invalid(format!("input '{input}': dimension {d} is invalid")))?;
        shape.push(d);
    }
    let bytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= 1 << 30)
        .ok_or_else(|| Error::invalid(format!("input '{input}': shape {shape:?} is too large")))?;
    let sources = [
        spec.zero_data,
        spec.random_data,
        !spec.input_data_file.is_empty(),
    ];
    if sources.iter().filter(|&&s| s).count() != 1 {
        return Err(Error::invalid(format!(
            "input '{input}': set exactly one of zero_data, random_data, input_data_file"
        )));
    }
    let data = if spec.zero_data || (spec.random_data && datatype == DataType::Bytes) {
        vec![0u8; bytes]
    } else if spec.random_data {
        random(datatype, bytes / size, rng)
    } else {
        let file = Path::new(&spec.input_data_file);
        if file.is_absolute()
            || file
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::invalid(format!(
                "input '{input}': input_data_file '{}' must be a plain path inside warmup/",
                spec.input_data_file
            )));
        }
        let path = model_dir.join("warmup").join(file);
        let data = std::fs::read(&path).map_err(|e| {
            Error::invalid(format!(
                "input '{input}': cannot read warmup/{}: {e}",
                spec.input_data_file
            ))
        })?;
        if data.len() != bytes && datatype != DataType::Bytes {
            return Err(Error::invalid(format!(
                "input '{input}': warmup/{} has {} bytes, the shape {shape:?} of {datatype} needs {bytes}",
                spec.input_data_file,
                data.len()
            )));
        }
        data
    };
    Tensor::new(input, datatype, shape, Bytes::from(data))
}

/// Random values that are valid for the type: floats uniform in [0, 1), integers
/// over their whole range, booleans 0 or 1 (random bytes could be NaN or invalid bools).
fn random(datatype: DataType, count: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * datatype.size().unwrap_or(1));
    for _ in 0..count {
        let r = rng.next_u64();
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
        match datatype {
            // 24 bits, exact in f32 (`unit as f32` can round up to 1.0).
            DataType::F32 => {
                out.extend_from_slice(&((r >> 40) as f32 / (1u32 << 24) as f32).to_le_bytes());
            }
            DataType::F64 => out.extend_from_slice(&unit.to_le_bytes()),
            DataType::F16 => out.extend_from_slice(&half::f16::from_f64(unit).to_le_bytes()),
            DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(unit).to_le_bytes()),
            DataType::Bool => out.push((r & 1) as u8),
            other => {
                let size = other.size().unwrap_or(1);
                out.extend_from_slice(&r.to_le_bytes()[..size]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::TensorConfig;

    fn config(warmup: serde_json::Value) -> ModelConfig {
        ModelConfig {
            max_batch_size: 4,
            input: vec![TensorConfig::new("x", DataType::F32, vec![3])],
            output: vec![TensorConfig::new("y", DataType::F32, vec![3])],
            model_warmup: Some(warmup),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn zero_and_random_samples() {
        let cfg = config(serde_json::json!([
            {"name": "z", "batch_size": 2, "count": 3,
             "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3], "zero_data": true}}},
            {"batch_size": 1,
             "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3], "random_data": true}}}
        ]));
        let s = samples(&cfg, Path::new(".")).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].count, 3);
        assert_eq!(s[0].request.inputs[0].shape, vec![2, 3]);
        assert!(s[0].request.inputs[0].data.iter().all(|&b| b == 0));
        assert_eq!(s[1].count, 1);
        let values: Vec<f32> = s[1].request.inputs[0]
            .data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)), "{values:?}");
    }

    #[test]
    fn string_samples_are_empty_strings_or_a_serialized_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("warmup")).unwrap();
        let text = sluice_core::serialize_bytes(["a", "", "bc", "d", "e", "f"]).unwrap();
        std::fs::write(dir.path().join("warmup/s.bin"), &text).unwrap();
        std::fs::write(dir.path().join("warmup/short.bin"), &text[..text.len() - 1]).unwrap();
        let cfg = config(serde_json::json!([
            {"batch_size": 2,
             "inputs": {"x": {"data_type": "TYPE_STRING", "dims": [3], "zero_data": true}}},
            {"batch_size": 1,
             "inputs": {"x": {"data_type": "TYPE_STRING", "dims": [2], "random_data": true}}},
            {"batch_size": 2,
             "inputs": {"x": {"data_type": "TYPE_STRING", "dims": [3], "input_data_file": "s.bin"}}}
        ]));
        let s = samples(&cfg, dir.path()).unwrap();
        let elements = |t: &Tensor| -> Vec<Vec<u8>> {
            t.bytes_elements().map(|e| e.unwrap().to_vec()).collect()
        };
        assert_eq!(elements(&s[0].request.inputs[0]), vec![Vec::<u8>::new(); 6]);
        assert_eq!(elements(&s[1].request.inputs[0]), vec![Vec::<u8>::new(); 2]);
        assert_eq!(s[2].request.inputs[0].data, text);
        let cfg = config(serde_json::json!({"batch_size": 2,
            "inputs": {"x": {"data_type": "TYPE_STRING", "dims": [3], "input_data_file": "short.bin"}}}));
        let err = samples(&cfg, dir.path()).unwrap_err();
        assert!(err.message().contains("malformed BYTES"), "{err}");
    }

    #[test]
    fn bad_samples_are_errors() {
        let cases = [
            (
                serde_json::json!({"batch_size": 9, "inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3], "zero_data": true}}}),
                "exceeds max_batch_size",
            ),
            (
                serde_json::json!({"inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3]}}}),
                "exactly one",
            ),
            (
                serde_json::json!({"inputs": {"x": {"data_type": "TYPE_FLOAT", "dims": [3], "zero_data": true}}}),
                "TYPE_FLOAT",
            ),
            (
                serde_json::json!({"inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3], "input_data_file": "../x"}}}),
                "plain path",
            ),
            (
                serde_json::json!({"inputs": {"x": {"data_type": "TYPE_FP32", "dims": [3], "input_data_file": "missing.bin"}}}),
                "cannot read warmup/missing.bin",
            ),
            (serde_json::json!({"batchsize": 1}), "batchsize"),
        ];
        for (warmup, expect) in cases {
            let err = samples(&config(warmup), Path::new(".")).unwrap_err();
            assert!(err.message().contains(expect), "{expect}: {err}");
        }
    }
}

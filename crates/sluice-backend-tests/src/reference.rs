//! The reference fixture (`tests/data/conformance/reference.json`) and the
//! tolerance used to compare a backend's outputs with it.

use bytes::Bytes;
use half::f16;
use serde::Deserialize;
use serde_json::Value;
use sluice_core::{DataType, Tensor};

use crate::workspace_root;

/// One reference run: a model, its inputs, and ONNX Runtime's outputs.
#[derive(Debug, Clone)]
pub struct ReferenceCase {
    pub repository: String,
    pub model: String,
    pub label: String,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

#[derive(Deserialize)]
struct FileDoc {
    cases: Vec<FileCase>,
}

#[derive(Deserialize)]
struct FileCase {
    repository: String,
    model: String,
    label: String,
    inputs: Vec<FileTensor>,
    outputs: Vec<FileTensor>,
}

#[derive(Deserialize)]
struct FileTensor {
    name: String,
    datatype: String,
    shape: Vec<usize>,
    data: Vec<Value>,
}

fn to_tensor(t: &FileTensor) -> Tensor {
    let dt = DataType::from_v2_name(&t.datatype)
        .unwrap_or_else(|| panic!("unknown datatype {}", t.datatype));
    let mut bytes = Vec::with_capacity(t.data.len() * dt.size().unwrap_or(1));
    for v in &t.data {
        let what = || format!("{}: {v} is not a {dt}", t.name);
        let float = || v.as_f64().unwrap_or_else(|| panic!("{}", what()));
        let int = || v.as_i64().unwrap_or_else(|| panic!("{}", what()));
        match dt {
            DataType::Bool => {
                bytes.push(u8::from(
                    v.as_bool().unwrap_or_else(|| panic!("{}", what())),
                ));
            }
            DataType::I32 => bytes.extend(
                i32::try_from(int())
                    .unwrap_or_else(|_| panic!("{}", what()))
                    .to_le_bytes(),
            ),
            DataType::I64 => bytes.extend(int().to_le_bytes()),
            DataType::F16 => bytes.extend(f16::from_f64(float()).to_le_bytes()),
            // f32 values were widened exactly, so the cast back is exact.
            DataType::F32 => bytes.extend((float() as f32).to_le_bytes()),
            DataType::F64 => bytes.extend(float().to_le_bytes()),
            other => panic!("the fixture has an unexpected datatype {other}"),
        }
    }
    Tensor::new(t.name.clone(), dt, t.shape.clone(), Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("fixture tensor {}: {e}", t.name))
}

/// Every reference case of the fixture file.
pub fn reference_cases() -> Vec<ReferenceCase> {
    let path = workspace_root().join("tests/data/conformance/reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: FileDoc = serde_json::from_str(&text).expect("reference.json is malformed");
    doc.cases
        .iter()
        .map(|c| ReferenceCase {
            repository: c.repository.clone(),
            model: c.model.clone(),
            label: c.label.clone(),
            inputs: c.inputs.iter().map(to_tensor).collect(),
            outputs: c.outputs.iter().map(to_tensor).collect(),
        })
        .collect()
}

/// How close a float output must be: `|a - e| <= atol + rtol * |e|`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// FP32/FP64: 1e-4 relative, 1e-5 absolute (engines order float sums
    /// differently). FP16: 1e-3 both.
    pub fn for_datatype(dt: DataType) -> Tolerance {
        match dt {
            DataType::F16 | DataType::Bf16 => Tolerance {
                rtol: 1e-3,
                atol: 1e-3,
            },
            _ => Tolerance {
                rtol: 1e-4,
                atol: 1e-5,
            },
        }
    }
}

/// Element values as f64 (floats) or exact integers (`None` for float types).
fn values(t: &Tensor) -> (Vec<f64>, bool) {
    let d = &t.data;
    let floats = |size: usize, f: &dyn Fn(&[u8]) -> f64| d.chunks(size).map(f).collect();
    match t.datatype {
        DataType::F16 => (
            floats(2, &|c| f16::from_le_bytes([c[0], c[1]]).to_f64()),
            true,
        ),
        DataType::F32 => (
            floats(4, &|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))),
            true,
        ),
        DataType::F64 => (
            floats(8, &|c| f64::from_le_bytes(c.try_into().unwrap())),
            true,
        ),
        DataType::Bool | DataType::U8 => (d.iter().map(|&b| f64::from(b)).collect(), false),
        DataType::I32 => (
            floats(4, &|c| f64::from(i32::from_le_bytes(c.try_into().unwrap()))),
            false,
        ),
        DataType::I64 => (
            floats(8, &|c| i64::from_le_bytes(c.try_into().unwrap()) as f64),
            false,
        ),
        other => panic!("comparing {other} tensors is not implemented"),
    }
}

/// Asserts that `actual` matches `expected`: same name, datatype and shape; equal
/// integers and booleans; floats within [`Tolerance::for_datatype`].
pub fn assert_close(actual: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(actual.name, expected.name, "{what}: output name");
    assert_eq!(
        actual.datatype, expected.datatype,
        "{what}: datatype of '{}'",
        expected.name
    );
    assert_eq!(
        actual.shape, expected.shape,
        "{what}: shape of '{}'",
        expected.name
    );
    let (a, is_float) = values(actual);
    let (e, _) = values(expected);
    let tol = Tolerance::for_datatype(expected.datatype);
    let mut worst: Option<(usize, f64, f64)> = None;
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let ok = if is_float {
            (x - y).abs() <= tol.atol + tol.rtol * y.abs()
        } else {
            x == y
        };
        if !ok && worst.is_none() {
            worst = Some((i, x, y));
        }
    }
    if let Some((i, x, y)) = worst {
        panic!(
            "{what}: '{}' differs from the reference at element {i}: {x} vs {y} \
             (tolerance rtol {} atol {})",
            expected.name, tol.rtol, tol.atol
        );
    }
}

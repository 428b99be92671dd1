//! Request inputs: random tensors shaped from the model's metadata (fixed seed), or
//! the contents of `.npy` files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use bytes::Bytes;
use sluice_client::{InputTensor, ModelMetadata};
use sluice_core::DataType;

use crate::rng::Rng;

/// How to make the inputs of one request.
#[derive(Debug, Clone, Default)]
pub struct InputPlan {
    /// Rows per request for models whose inputs start with a variable dimension.
    pub batch_size: usize,
    /// Shapes that replace the metadata's (for other variable dimensions).
    pub shapes: BTreeMap<String, Vec<i64>>,
    /// `.npy` files whose contents are sent as they are (shape included).
    pub files: BTreeMap<String, PathBuf>,
    pub seed: u64,
}

/// One request's tensors and how many samples (rows) it carries.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tensors: Vec<InputTensor>,
    pub rows: u64,
}

/// Whether every input starts with a variable (batch) dimension.
pub fn batches(meta: &ModelMetadata) -> bool {
    !meta.inputs.is_empty() && meta.inputs.iter().all(|t| t.shape.first() == Some(&-1))
}

/// `count` distinct requests' inputs for `meta` (files are the same in each).
pub fn make_samples(
    meta: &ModelMetadata,
    plan: &InputPlan,
    count: usize,
) -> anyhow::Result<Vec<Sample>> {
    for name in plan.files.keys().chain(plan.shapes.keys()) {
        if !meta.inputs.iter().any(|t| &t.name == name) {
            bail!(
                "model {} has no input {name:?} (inputs: {})",
                meta.name,
                meta.inputs
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let batching = batches(meta);
    if !batching && plan.batch_size > 1 {
        bail!(
            "model {} has no variable batch dimension: --batch-size must be 1",
            meta.name
        );
    }
    let mut files = BTreeMap::new();
    for (name, path) in &plan.files {
        let (dt, shape, data) = sluice_client::read_npy(path)?;
        files.insert(name.clone(), InputTensor::new(name, dt, shape, data)?);
    }
    let mut rng = Rng::new(plan.seed);
    (0..count)
        .map(|_| {
            let mut rows = 1;
            let tensors = meta
                .inputs
                .iter()
                .map(|t| {
                    if let Some(file) = files.get(&t.name) {
                        if batching {
                            rows = file.shape.first().copied().unwrap_or(1).max(1) as u64;
                        }
                        return Ok(file.clone());
                    }
                    let dt = DataType::from_v2_name(&t.datatype).with_context(|| {
                        format!("input {} has an unknown datatype {}", t.name, t.datatype)
                    })?;
                    let shape = match plan.shapes.get(&t.name) {
                        Some(s) => s.clone(),
                        None => shape_for(&t.name, &t.shape, batching, plan.batch_size)?,
                    };
                    if batching {
                        rows = shape.first().copied().unwrap_or(1).max(1) as u64;
                    }
                    let data = random_data(dt, shape.iter().product::<i64>() as usize, &mut rng)
                        .with_context(|| format!("input {}", t.name))?;
                    Ok(InputTensor::new(&t.name, dt, shape, data)?)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Sample { tensors, rows })
        })
        .collect()
}

fn shape_for(name: &str, meta: &[i64], batching: bool, batch: usize) -> anyhow::Result<Vec<i64>> {
    meta.iter()
        .enumerate()
        .map(|(i, &d)| match d {
            -1 if i == 0 && batching => Ok(batch.max(1) as i64),
            -1 => bail!("input {name} has a variable dimension {i} ({meta:?}): give --shape {name}=D0,D1,..."),
            d => Ok(d),
        })
        .collect()
}

/// `count` random elements: floats uniform in [0, 1), integers in 0..16, booleans.
pub fn random_data(dt: DataType, count: usize, rng: &mut Rng) -> anyhow::Result<Bytes> {
    let size = dt
        .size()
        .with_context(|| format!("{} inputs cannot be generated", dt.v2_name()))?;
    let mut out = Vec::with_capacity(count * size);
    for _ in 0..count {
        let u = rng.uniform();
        let small = (u * 16.0) as u64;
        match dt {
            DataType::Bool => out.push(u8::from(u < 0.5)),
            DataType::F16 => out.extend_from_slice(&half::f16::from_f64(u).to_le_bytes()),
            DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(u).to_le_bytes()),
            DataType::F32 => out.extend_from_slice(&(u as f32).to_le_bytes()),
            DataType::F64 => out.extend_from_slice(&u.to_le_bytes()),
            _ => out.extend_from_slice(&small.to_le_bytes()[..size]),
        }
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::TensorMetadata;

    fn meta(inputs: &[(&str, &str, &[i64])]) -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            versions: vec![],
            platform: String::new(),
            inputs: inputs
                .iter()
                .map(|(n, d, s)| TensorMetadata {
                    name: (*n).into(),
                    datatype: (*d).into(),
                    shape: s.to_vec(),
                })
                .collect(),
            outputs: vec![],
        }
    }

    #[test]
    fn shapes_come_from_metadata_with_the_batch_size() {
        let m = meta(&[("x", "FP32", &[-1, 784])]);
        let plan = InputPlan {
            batch_size: 4,
            seed: 1,
            ..Default::default()
        };
        let s = make_samples(&m, &plan, 3).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].tensors[0].shape, vec![4, 784]);
        assert_eq!(s[0].rows, 4);
        assert_eq!(s[0].tensors[0].data.len(), 4 * 784 * 4);
        assert_ne!(s[0].tensors[0].data, s[1].tensors[0].data);
        // Fixed seed: the same data again.
        let again = make_samples(&m, &plan, 1).unwrap();
        assert_eq!(again[0].tensors[0].data, s[0].tensors[0].data);
    }

    #[test]
    fn unbatched_and_variable_dimensions_say_what_to_do() {
        let m = meta(&[("a", "INT32", &[4]), ("b", "BOOL", &[4])]);
        let one = InputPlan {
            batch_size: 1,
            ..Default::default()
        };
        let s = make_samples(&m, &one, 1).unwrap();
        assert_eq!((s[0].rows, s[0].tensors[1].data.len()), (1, 4));
        let four = InputPlan {
            batch_size: 4,
            ..Default::default()
        };
        let e = make_samples(&m, &four, 1).unwrap_err().to_string();
        assert!(e.contains("--batch-size must be 1"), "{e}");
        let v = meta(&[("t", "INT64", &[-1, -1])]);
        let e = make_samples(&v, &one, 1).unwrap_err().to_string();
        assert!(e.contains("--shape t="), "{e}");
        let mut shaped = one.clone();
        shaped.shapes.insert("t".into(), vec![1, 64]);
        assert_eq!(
            make_samples(&v, &shaped, 1).unwrap()[0].tensors[0].shape,
            vec![1, 64]
        );
        let mut wrong = one;
        wrong.shapes.insert("nope".into(), vec![1]);
        assert!(make_samples(&v, &wrong, 1)
            .unwrap_err()
            .to_string()
            .contains("no input \"nope\""));
    }
}

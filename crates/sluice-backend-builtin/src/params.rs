//! Reading a step's `parameters` and checking its tensors, with errors that name
//! the parameter or tensor.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sluice_core::{DataType, Error, LoadSpec, ModelConfig, Result, TensorConfig};

/// Parameters the runtime itself reads; a step does not warn about them.
const RUNTIME_PARAMETERS: &[&str] = &["intra_op_thread_count"];

/// The `parameters` of one step's config, read through typed getters.
pub(crate) struct Params<'a> {
    step: &'static str,
    config: &'a ModelConfig,
}

impl<'a> Params<'a> {
    /// Reads the parameters of `config` for the step named `step` (for messages),
    /// and logs a warning for each parameter name outside `known` (a typo would
    /// otherwise be silently ignored, as Triton's backends do).
    pub fn new(step: &'static str, config: &'a ModelConfig, known: &[&str]) -> Params<'a> {
        for key in config.parameters.keys() {
            if !known.contains(&key.as_str()) && !RUNTIME_PARAMETERS.contains(&key.as_str()) {
                tracing::warn!(
                    model = %config.name,
                    parameter = %key,
                    known = ?known,
                    "{step}: unknown parameter, ignored"
                );
            }
        }
        Params { step, config }
    }

    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.config
            .parameter(key)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    fn invalid(&self, key: &str, value: &str, expected: &str) -> Error {
        Error::invalid(format!(
            "{}: parameter {key} must be {expected}, got '{value}'",
            self.step
        ))
    }

    /// One of `choices` (case-insensitive), or `default` when unset.
    pub fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)], default: T) -> Result<T> {
        let Some(value) = self.str(key) else {
            return Ok(default);
        };
        choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value))
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.invalid(key, value, &format!("one of {}", names.join(", ")))
            })
    }

    /// A number, or `None` when unset.
    pub fn number<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>> {
        self.str(key)
            .map(|v| v.parse::<T>().map_err(|_| self.invalid(key, v, expected)))
            .transpose()
    }

    /// A positive integer, or `None` when unset.
    pub fn positive(&self, key: &str) -> Result<Option<usize>> {
        match self.number::<usize>(key, "a positive integer")? {
            Some(0) => Err(self.invalid(key, "0", "a positive integer")),
            other => Ok(other),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        self.choice(
            key,
            &[
                ("true", true),
                ("false", false),
                ("1", true),
                ("0", false),
                ("yes", true),
                ("no", false),
            ],
            default,
        )
    }

    /// A comma-separated list of finite numbers, or `None` when unset.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(value) = self.str(key) else {
            return Ok(None);
        };
        value
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| {
                        self.invalid(key, value, "a comma-separated list of finite numbers")
                    })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The version folder of the model being loaded (`<model>/<version>/`): the folder of
/// the model file the repository names, which built-in steps do not need to exist.
pub(crate) fn version_dir(spec: &LoadSpec<'_>) -> PathBuf {
    spec.model_file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A file named by a parameter, inside the version folder: a plain relative path
/// that cannot leave it.
pub(crate) fn file_in_version(spec: &LoadSpec<'_>, key: &str, name: &str) -> Result<PathBuf> {
    let relative = Path::new(name);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || name.is_empty() {
        return Err(Error::invalid(format!(
            "parameter {key} '{name}' must be a relative path inside the version folder"
        )));
    }
    let path = version_dir(spec).join(relative);
    if !path.is_file() {
        return Err(Error::invalid(format!(
            "{key}: file '{}/{name}' does not exist",
            spec.version
        )));
    }
    Ok(path)
}

/// Checks the count of a config's inputs or outputs.
pub(crate) fn expect_count(
    step: &str,
    kind: &str,
    tensors: &[TensorConfig],
    allowed: std::ops::RangeInclusive<usize>,
) -> Result<()> {
    if allowed.contains(&tensors.len()) {
        return Ok(());
    }
    let want = if allowed.start() == allowed.end() {
        allowed.start().to_string()
    } else {
        format!("{} to {}", allowed.start(), allowed.end())
    };
    Err(Error::invalid(format!(
        "{step} takes {want} {kind}(s), the config declares {}",
        tensors.len()
    )))
}

/// Checks a tensor's datatype against those a step accepts.
pub(crate) fn expect_type(
    step: &str,
    kind: &str,
    tensor: &TensorConfig,
    allowed: &[DataType],
) -> Result<()> {
    if allowed.contains(&tensor.data_type) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|d| d.config_name()).collect();
    Err(Error::invalid(format!(
        "{step}: {kind} '{}' must be {}, the config says {}",
        tensor.name,
        names.join(" or "),
        tensor.data_type.config_name()
    )))
}

/// Checks that a BYTES input holds one element per batch row (`dims: [ 1 ]`).
pub(crate) fn expect_one_element(step: &str, tensor: &TensorConfig) -> Result<()> {
    if tensor.dims == [1] {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{step}: input '{}' must have dims [ 1 ] (one element per batch row), the config says {:?}",
        tensor.name, tensor.dims
    )))
}

/// The input rows of a BYTES batch: its elements, one per row, each checked to be
/// well formed.
pub(crate) fn bytes_rows(tensor: &sluice_core::Tensor) -> Result<Vec<&[u8]>> {
    tensor.bytes_elements().collect()
}

/// Little-endian f32 values of an FP32 tensor.
pub(crate) fn f32_values(tensor: &sluice_core::Tensor) -> Vec<f32> {
    tensor
        .data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Integer values of an INT32/INT64 tensor, widened to i64.
pub(crate) fn int_values(tensor: &sluice_core::Tensor) -> Result<Vec<i64>> {
    match tensor.datatype {
        DataType::I64 => Ok(tensor
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        DataType::I32 => Ok(tensor
            .data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect()),
        other => Err(Error::internal(format!(
            "tensor '{}' is {other}, not an integer tensor",
            tensor.name
        ))),
    }
}

/// A tensor of little-endian f32 values.
pub(crate) fn f32_tensor(
    name: &str,
    shape: Vec<usize>,
    values: &[f32],
) -> Result<sluice_core::Tensor> {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    sluice_core::Tensor::new(name, DataType::F32, shape, data.into())
}

/// A tensor of integers as INT64 or INT32 (`datatype`).
pub(crate) fn int_tensor(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    values: impl IntoIterator<Item = i64>,
) -> Result<sluice_core::Tensor> {
    let mut data = Vec::new();
    for v in values {
        match datatype {
            DataType::I32 => {
                let v = i32::try_from(v).map_err(|_| {
                    Error::invalid(format!("output '{name}': {v} does not fit in INT32"))
                })?;
                data.extend_from_slice(&v.to_le_bytes());
            }
            _ => data.extend_from_slice(&v.to_le_bytes()),
        }
    }
    sluice_core::Tensor::new(name, datatype, shape, data.into())
}

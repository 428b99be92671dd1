//! Sluice tensors (little-endian bytes) to tract values and back, with the row
//! padding and slicing that planned batch sizes need.

use bytes::Bytes;
use sluice_core::{DataType, Error, Result, Tensor};
use tract_onnx::prelude::{DatumType, IntoTValue, TValue};

pub(crate) fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bf16 | DataType::Bytes => return None,
    })
}

/// Copies an input into a tract value of `rows` rows (`rows >= tensor.rows()`);
/// the extra rows repeat the last real row, so padding never feeds an engine
/// values it would not see anyway (no zero rows in a normalization, say).
pub(crate) fn to_tract(tensor: &Tensor, rows: Option<usize>) -> Result<TValue> {
    let dt = datum_type(tensor.datatype).ok_or_else(|| {
        Error::unsupported(format!(
            "input '{}': tract does not support {}",
            tensor.name, tensor.datatype
        ))
    })?;
    if dt == DatumType::Bool && tensor.data.iter().any(|&b| b > 1) {
        return Err(Error::invalid(format!(
            "input '{}': BOOL bytes must be 0 or 1",
            tensor.name
        )));
    }
    let mut shape = tensor.shape.clone();
    let real_rows = tensor.rows();
    if let Some(rows) = rows {
        shape[0] = rows;
    }
    let mut t = tract_onnx::prelude::Tensor::zero_dt(dt, &shape)
        .map_err(|e| Error::internal(format!("input '{}': {e:#}", tensor.name)))?;
    let bytes = t.as_bytes_mut();
    let n = tensor.data.len();
    bytes[..n].copy_from_slice(&tensor.data);
    if n < bytes.len() && real_rows > 0 {
        let row = n / real_rows;
        let last = &tensor.data[n - row..];
        for chunk in bytes[n..].chunks_exact_mut(row) {
            chunk.copy_from_slice(last);
        }
    }
    Ok(t.into_tvalue())
}

/// Copies an output out of tract, keeping only its first `rows` rows when given.
pub(crate) fn from_tract(
    name: &str,
    dt: DataType,
    value: &TValue,
    rows: Option<usize>,
) -> Result<Tensor> {
    let expected = datum_type(dt).unwrap_or(DatumType::Blob);
    let sliced;
    let value: &tract_onnx::prelude::Tensor = match rows {
        Some(rows) if value.shape().first() != Some(&rows) => {
            sliced = value
                .slice(0, 0, rows)
                .map_err(|e| Error::internal(format!("output '{name}': {e:#}")))?;
            &sliced
        }
        _ => value,
    };
    if value.datum_type() == DatumType::TDim {
        // tract computes some integer outputs (shapes, ArgMax over class ids) as
        // symbolic dims; they are cast to the config's integer type.
        let cast = value
            .cast_to_dt(expected)
            .map_err(|e| Error::internal(format!("output '{name}': cannot cast to {dt}: {e:#}")))?;
        return Tensor::new(
            name,
            dt,
            cast.shape().to_vec(),
            Bytes::copy_from_slice(cast.as_bytes()),
        );
    }
    if value.datum_type().unquantized() != expected {
        return Err(Error::internal(format!(
            "output '{name}': tract produced {:?}, the config says {dt}",
            value.datum_type()
        )));
    }
    Tensor::new(
        name,
        dt,
        value.shape().to_vec(),
        Bytes::copy_from_slice(value.as_bytes()),
    )
}

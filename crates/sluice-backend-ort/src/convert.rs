//! Sluice tensors (little-endian bytes) to ONNX Runtime values and back.
//!
//! Inputs borrow the request bytes when they are aligned for the element type (the
//! usual case for a batch gathered by the scheduler) and are copied once otherwise.
//! Outputs are copied once out of ONNX Runtime's buffer into `Bytes`.

use bytes::Bytes;
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef,
};
use sluice_core::{DataType, Error, Result, Tensor};

/// ONNX Runtime's element type for a Sluice datatype (`None`: not supported here).
pub(crate) fn element_type(dt: DataType) -> Option<TensorElementType> {
    Some(match dt {
        DataType::Bool => TensorElementType::Bool,
        DataType::U8 => TensorElementType::Uint8,
        DataType::U16 => TensorElementType::Uint16,
        DataType::U32 => TensorElementType::Uint32,
        DataType::U64 => TensorElementType::Uint64,
        DataType::I8 => TensorElementType::Int8,
        DataType::I16 => TensorElementType::Int16,
        DataType::I32 => TensorElementType::Int32,
        DataType::I64 => TensorElementType::Int64,
        DataType::F16 => TensorElementType::Float16,
        DataType::F32 => TensorElementType::Float32,
        DataType::F64 => TensorElementType::Float64,
        DataType::Bf16 => TensorElementType::Bfloat16,
        // Strings would need Triton's length-prefixed BYTES decoded element by element.
        DataType::Bytes => return None,
    })
}

fn shape_i64(tensor: &Tensor) -> Vec<i64> {
    tensor.shape.iter().map(|&d| d as i64).collect()
}

fn typed<'a, T>(tensor: &'a Tensor) -> Result<SessionInputValue<'a>>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug + Clone + 'static,
{
    let shape = shape_i64(tensor);
    let made = match bytemuck::try_cast_slice::<u8, T>(&tensor.data) {
        // Aligned: ONNX Runtime reads the request's bytes in place.
        Ok(view) => TensorRef::from_array_view((shape, view)).map(SessionInputValue::from),
        Err(_) => {
            let mut owned = vec![
                <T as bytemuck::Zeroable>::zeroed();
                tensor.data.len() / std::mem::size_of::<T>()
            ];
            bytemuck::cast_slice_mut::<T, u8>(&mut owned).copy_from_slice(&tensor.data);
            OrtTensor::from_array((shape, owned)).map(SessionInputValue::from)
        }
    };
    made.map_err(|e| Error::internal(format!("input '{}': {e}", tensor.name)))
}

/// Wraps an input for a run.
pub(crate) fn to_ort(tensor: &Tensor) -> Result<SessionInputValue<'_>> {
    match tensor.datatype {
        DataType::Bool => {
            if tensor.data.iter().any(|&b| b > 1) {
                return Err(Error::invalid(format!(
                    "input '{}': BOOL bytes must be 0 or 1",
                    tensor.name
                )));
            }
            let values: Vec<bool> = tensor.data.iter().map(|&b| b == 1).collect();
            OrtTensor::from_array((shape_i64(tensor), values))
                .map(SessionInputValue::from)
                .map_err(|e| Error::internal(format!("input '{}': {e}", tensor.name)))
        }
        DataType::U8 => typed::<u8>(tensor),
        DataType::U16 => typed::<u16>(tensor),
        DataType::U32 => typed::<u32>(tensor),
        DataType::U64 => typed::<u64>(tensor),
        DataType::I8 => typed::<i8>(tensor),
        DataType::I16 => typed::<i16>(tensor),
        DataType::I32 => typed::<i32>(tensor),
        DataType::I64 => typed::<i64>(tensor),
        DataType::F16 => typed::<f16>(tensor),
        DataType::F32 => typed::<f32>(tensor),
        DataType::F64 => typed::<f64>(tensor),
        DataType::Bf16 => typed::<bf16>(tensor),
        DataType::Bytes => Err(Error::unsupported(format!(
            "input '{}': the onnxruntime backend does not support BYTES tensors yet",
            tensor.name
        ))),
    }
}

fn extract<T>(name: &str, dt: DataType, value: &DynValue) -> Result<Tensor>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug + Clone + 'static,
{
    let (shape, data) = value
        .try_extract_tensor::<T>()
        .map_err(|e| Error::internal(format!("output '{name}': {e}")))?;
    let shape = dims(name, shape)?;
    Tensor::new(
        name,
        dt,
        shape,
        Bytes::copy_from_slice(bytemuck::cast_slice(data)),
    )
}

fn dims(name: &str, shape: &[i64]) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::internal(format!(
                "output '{name}' has a negative dimension: {shape:?}"
            ))
        })
}

/// Copies an output out of ONNX Runtime, checking its element type against the config.
pub(crate) fn from_ort(name: &str, dt: DataType, value: &DynValue) -> Result<Tensor> {
    match dt {
        DataType::Bool => {
            let (shape, data) = value
                .try_extract_tensor::<bool>()
                .map_err(|e| Error::internal(format!("output '{name}': {e}")))?;
            let shape = dims(name, shape)?;
            let bytes: Vec<u8> = data.iter().map(|&b| u8::from(b)).collect();
            Tensor::new(name, dt, shape, Bytes::from(bytes))
        }
        DataType::U8 => extract::<u8>(name, dt, value),
        DataType::U16 => extract::<u16>(name, dt, value),
        DataType::U32 => extract::<u32>(name, dt, value),
        DataType::U64 => extract::<u64>(name, dt, value),
        DataType::I8 => extract::<i8>(name, dt, value),
        DataType::I16 => extract::<i16>(name, dt, value),
        DataType::I32 => extract::<i32>(name, dt, value),
        DataType::I64 => extract::<i64>(name, dt, value),
        DataType::F16 => extract::<f16>(name, dt, value),
        DataType::F32 => extract::<f32>(name, dt, value),
        DataType::F64 => extract::<f64>(name, dt, value),
        DataType::Bf16 => extract::<bf16>(name, dt, value),
        DataType::Bytes => Err(Error::unsupported(format!(
            "output '{name}': the onnxruntime backend does not support BYTES tensors yet"
        ))),
    }
}

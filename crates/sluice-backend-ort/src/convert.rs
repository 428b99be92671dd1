//! Sluice tensors (little-endian bytes) to ONNX Runtime values and back.
//!
//! Inputs borrow the request bytes when they are aligned for the element type (the
//! usual case for a batch gathered by the scheduler) and are copied once otherwise.
//! Outputs are copied once out of ONNX Runtime's buffer into `Bytes`.
//!
//! `BYTES` tensors are ONNX string tensors. ONNX Runtime fills them from C strings,
//! so their elements must be UTF-8 text without NUL characters (the backend says so
//! through `Backend::bytes_content`, and requests are checked before they are
//! queued); its strings are read back as UTF-8 and serialized with Triton's length
//! prefixes.

use bytes::Bytes;
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef,
    Utf8Data,
};
use sluice_core::{DataType, Error, Result, Tensor};

/// ONNX Runtime's element type for a Sluice datatype.
pub(crate) fn element_type(dt: DataType) -> TensorElementType {
    match dt {
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
        DataType::Bytes => TensorElementType::String,
    }
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
        DataType::Bytes => strings(tensor),
    }
}

/// One element of a `BYTES` input: a zero-copy slice of the request's bytes,
/// already checked to be UTF-8 without NUL characters.
#[derive(Clone)]
struct Text(Bytes);

impl Utf8Data for Text {
    fn as_utf8_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A string tensor from a `BYTES` input.
fn strings(tensor: &Tensor) -> Result<SessionInputValue<'_>> {
    let elements = tensor
        .bytes_elements()
        .map(|e| {
            let e = e?;
            if std::str::from_utf8(e).is_err() || e.contains(&0) {
                return Err(Error::invalid(format!(
                    "input '{}': ONNX string tensors take UTF-8 text without NUL characters",
                    tensor.name
                )));
            }
            Ok(Text(tensor.data.slice_ref(e)))
        })
        .collect::<Result<Vec<Text>>>()?;
    if elements.len() != tensor.element_count() {
        return Err(Error::invalid(format!(
            "input '{}': {} BYTES elements do not match shape {:?}",
            tensor.name,
            elements.len(),
            tensor.shape
        )));
    }
    OrtTensor::from_string_array((shape_i64(tensor), &elements[..]))
        .map(SessionInputValue::from)
        .map_err(|e| Error::internal(format!("input '{}': {e}", tensor.name)))
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
        DataType::Bytes => {
            let (shape, strings) = value
                .try_extract_strings()
                .map_err(|e| Error::internal(format!("output '{name}': {e}")))?;
            let shape = dims(name, shape)?;
            let data = sluice_core::serialize_bytes(&strings)
                .map_err(|e| Error::internal(format!("output '{name}': {}", e.message())))?;
            Tensor::new(name, dt, shape, data)
        }
    }
}

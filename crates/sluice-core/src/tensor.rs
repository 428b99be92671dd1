use bytes::{Bytes, BytesMut};

use crate::{DataType, Error, Result};

/// A named, typed, shaped tensor whose elements are stored as little-endian bytes.
///
/// The bytes are a [`Bytes`], so slicing a batch output into per-request outputs
/// and passing a binary request body through costs no copy. `BYTES` tensors hold
/// Triton's serialization: each element a 4-byte little-endian length, then its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl Tensor {
    /// Builds a tensor, checking that the byte length matches shape × element size.
    pub fn new(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<usize>,
        data: Bytes,
    ) -> Result<Tensor> {
        let name = name.into();
        let count = element_count(&shape).ok_or_else(|| {
            Error::invalid(format!("tensor '{name}': shape {shape:?} is too large"))
        })?;
        if let Some(size) = datatype.size() {
            let expected = count.checked_mul(size).ok_or_else(|| {
                Error::invalid(format!("tensor '{name}': shape {shape:?} is too large"))
            })?;
            if data.len() != expected {
                return Err(Error::invalid(format!(
                    "tensor '{name}': {} bytes of data do not match shape {shape:?} of {datatype} \
                     (expected {expected} bytes)",
                    data.len()
                )));
            }
        } else {
            let elements = count_bytes_elements(&data)
                .ok_or_else(|| Error::invalid(format!("tensor '{name}': malformed BYTES data")))?;
            if elements != count {
                return Err(Error::invalid(format!(
                    "tensor '{name}': {elements} BYTES elements do not match shape {shape:?}"
                )));
            }
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// Number of elements (the product of the shape).
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of dimension 0, the batch dimension when the model batches.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Concatenates tensors of the same name, datatype and trailing shape along
    /// dimension 0. One part is returned as is, without a copy.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| Error::internal("concat of no tensors"))?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        let mut rows = 0;
        let mut len = 0;
        for part in parts {
            if part.datatype != first.datatype
                || part.shape.is_empty()
                || part.shape[1..] != first.shape[1..]
            {
                return Err(Error::internal(format!(
                    "cannot batch tensor '{}' of {} {:?} with {} {:?}",
                    first.name, first.datatype, first.shape, part.datatype, part.shape
                )));
            }
            rows += part.shape[0];
            len += part.data.len();
        }
        let mut data = BytesMut::with_capacity(len);
        for part in parts {
            data.extend_from_slice(&part.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor {
            name: first.name.clone(),
            datatype: first.datatype,
            shape,
            data: data.freeze(),
        })
    }

    /// Splits along dimension 0 into parts of `rows[i]` rows each, without copying.
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>> {
        if rows.len() == 1 && rows[0] == self.rows() {
            return Ok(vec![self.clone()]);
        }
        let total: usize = rows.iter().sum();
        if self.shape.is_empty() || total != self.shape[0] {
            return Err(Error::internal(format!(
                "output '{}' of shape {:?} cannot be split into {rows:?} rows",
                self.name, self.shape
            )));
        }
        let size = self.datatype.size().ok_or_else(|| {
            Error::unsupported(format!("output '{}': batching BYTES outputs", self.name))
        })?;
        let row_bytes = self.shape[1..].iter().product::<usize>() * size;
        let mut offset = 0;
        let mut out = Vec::with_capacity(rows.len());
        for &r in rows {
            let mut shape = self.shape.clone();
            shape[0] = r;
            let end = offset + r * row_bytes;
            out.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data: self.data.slice(offset..end),
            });
            offset = end;
        }
        Ok(out)
    }
}

/// The product of a shape, or `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Counts the elements of Triton's length-prefixed `BYTES` serialization.
fn count_bytes_elements(mut data: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !data.is_empty() {
        let len_bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        data = data.get(4 + len..)?;
        count += 1;
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(shape: Vec<usize>, values: &[f32]) -> Tensor {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::new("x", DataType::F32, shape, Bytes::from(data)).unwrap()
    }

    #[test]
    fn new_checks_byte_length() {
        let err =
            Tensor::new("x", DataType::F32, vec![2, 2], Bytes::from(vec![0u8; 12])).unwrap_err();
        assert!(err.message().contains("12 bytes"), "{err}");
        assert!(Tensor::new("x", DataType::F32, vec![usize::MAX, 2], Bytes::new()).is_err());
    }

    #[test]
    fn bytes_tensors_count_elements() {
        let mut data = Vec::new();
        for s in ["ab", "", "xyz"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        assert!(Tensor::new("s", DataType::Bytes, vec![3], Bytes::from(data.clone())).is_ok());
        assert!(Tensor::new("s", DataType::Bytes, vec![2], Bytes::from(data.clone())).is_err());
        data.pop();
        assert!(Tensor::new("s", DataType::Bytes, vec![3], Bytes::from(data)).is_err());
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = f32_tensor(vec![1, 2], &[1.0, 2.0]);
        let b = f32_tensor(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let batch = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(batch.shape, vec![3, 2]);
        let parts = batch.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn concat_rejects_mismatched_rows() {
        let a = f32_tensor(vec![1, 2], &[1.0, 2.0]);
        let b = f32_tensor(vec![1, 3], &[3.0, 4.0, 5.0]);
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
        assert!(a.split_rows(&[2]).is_err());
    }
}

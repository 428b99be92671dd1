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
    /// `BYTES` rows are found by walking the length prefixes: a row holds the
    /// product of the trailing dimensions of elements.
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
        let malformed = || {
            Error::internal(format!(
                "output '{}' of {} {:?}: its data does not hold its shape",
                self.name, self.datatype, self.shape
            ))
        };
        let row_elements = element_count(&self.shape[1..]).ok_or_else(malformed)?;
        let mut offset = 0;
        let mut out = Vec::with_capacity(rows.len());
        for &r in rows {
            let elements = r.checked_mul(row_elements).ok_or_else(malformed)?;
            let len = match self.datatype.size() {
                Some(size) => elements.checked_mul(size),
                None => bytes_prefix_len(&self.data[offset..], elements),
            }
            .ok_or_else(malformed)?;
            let end = offset
                .checked_add(len)
                .filter(|&e| e <= self.data.len())
                .ok_or_else(malformed)?;
            let mut shape = self.shape.clone();
            shape[0] = r;
            out.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data: self.data.slice(offset..end),
            });
            offset = end;
        }
        if offset != self.data.len() {
            return Err(malformed());
        }
        Ok(out)
    }

    /// The elements of a `BYTES` tensor, each without its length prefix. Malformed
    /// data (a prefix past the end) yields one error and ends the iteration.
    pub fn bytes_elements(&self) -> BytesElements<'_> {
        BytesElements {
            name: &self.name,
            rest: &self.data,
        }
    }
}

/// Iterator over the elements of a `BYTES` tensor; see [`Tensor::bytes_elements`].
#[derive(Debug)]
pub struct BytesElements<'a> {
    name: &'a str,
    rest: &'a [u8],
}

impl<'a> Iterator for BytesElements<'a> {
    type Item = Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match split_bytes_element(self.rest) {
            Some((element, rest)) => {
                self.rest = rest;
                Some(Ok(element))
            }
            None => {
                self.rest = &[];
                Some(Err(Error::invalid(format!(
                    "tensor '{}': malformed BYTES data",
                    self.name
                ))))
            }
        }
    }
}

/// Triton's `BYTES` serialization of `elements`: each a 4-byte little-endian length,
/// then its bytes. Fails for an element of 4 GiB or more.
pub fn serialize_bytes<I>(elements: I) -> Result<Bytes>
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    let mut out = BytesMut::new();
    for e in elements {
        let e = e.as_ref();
        let len = u32::try_from(e.len()).map_err(|_| {
            Error::invalid(format!(
                "a BYTES element of {} bytes is longer than 4 GiB",
                e.len()
            ))
        })?;
        out.reserve(4 + e.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e);
    }
    Ok(out.freeze())
}

/// The product of a shape, or `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// The first element of Triton's `BYTES` serialization and the rest, or `None`
/// when the data ends inside a length prefix or inside the element it announces.
/// The claimed length is only compared with what is there, never allocated.
fn split_bytes_element(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len_bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_le_bytes(len_bytes)).ok()?;
    let rest = &data[4..];
    if len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

/// Counts the elements of Triton's length-prefixed `BYTES` serialization.
fn count_bytes_elements(mut data: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !data.is_empty() {
        data = split_bytes_element(data)?.1;
        count += 1;
    }
    Some(count)
}

/// The byte length of the first `elements` elements of `BYTES` data.
fn bytes_prefix_len(data: &[u8], elements: usize) -> Option<usize> {
    let mut rest = data;
    for _ in 0..elements {
        rest = split_bytes_element(rest)?.1;
    }
    Some(data.len() - rest.len())
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

    fn bytes_tensor(shape: Vec<usize>, values: &[&[u8]]) -> Tensor {
        Tensor::new(
            "s",
            DataType::Bytes,
            shape,
            serialize_bytes(values).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn bytes_rows_concat_and_split_by_their_prefixes() {
        // Rows of two elements each, of uneven lengths (empty ones too).
        let a = bytes_tensor(vec![1, 2], &[b"", b"abc"]);
        let b = bytes_tensor(vec![2, 2], &[b"x", "\u{e9}t\u{e9}".as_bytes(), b"", b""]);
        let c = bytes_tensor(vec![1, 2], &[&[0xff; 300], b"z"]);
        let batch = Tensor::concat_rows(&[&a, &b, &c]).unwrap();
        assert_eq!(batch.shape, vec![4, 2]);
        assert_eq!(batch.bytes_elements().count(), 8);
        let parts = batch.split_rows(&[1, 2, 1]).unwrap();
        assert_eq!(parts, vec![a.clone(), b, c]);
        let rows = batch.split_rows(&[1, 1, 1, 1]).unwrap();
        assert_eq!(rows[0], a);
        let second: Vec<&[u8]> = rows[1].bytes_elements().map(Result::unwrap).collect();
        assert_eq!(second, vec![&b"x"[..], "\u{e9}t\u{e9}".as_bytes()]);
        // A scalar row (no trailing dims) holds one element.
        let flat = bytes_tensor(vec![3], &[b"a", b"bb", b""]);
        let split = flat.split_rows(&[2, 1]).unwrap();
        assert_eq!(split[0], bytes_tensor(vec![2], &[b"a", b"bb"]));
        assert_eq!(split[1], bytes_tensor(vec![1], &[b""]));
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics_or_allocations() {
        // A length prefix that claims 4 GiB with 3 bytes behind it.
        let mut data = u32::MAX.to_le_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let err =
            Tensor::new("s", DataType::Bytes, vec![1], Bytes::from(data.clone())).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.message().contains("malformed BYTES"), "{err}");
        // A truncated prefix.
        assert!(Tensor::new("s", DataType::Bytes, vec![1], Bytes::from_static(&[1, 0])).is_err());
        // An unchecked tensor: iteration reports the error once, splitting fails cleanly.
        let bad = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![2],
            data: Bytes::from(data),
        };
        let items: Vec<_> = bad.bytes_elements().collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
        assert!(bad.split_rows(&[1, 1]).is_err());
        let short = Tensor {
            shape: vec![3],
            ..bytes_tensor(vec![2], &[b"a", b"b"])
        };
        assert!(short.split_rows(&[2, 1]).is_err());
        let long = Tensor {
            shape: vec![1],
            ..bytes_tensor(vec![2], &[b"a", b"b"])
        };
        assert!(long.split_rows(&[1, 0]).is_err());
    }

    #[test]
    fn serialize_bytes_is_triton_serialization() {
        let data = serialize_bytes(["ab", "", "c"]).unwrap();
        assert_eq!(
            &data[..],
            &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0, 1, 0, 0, 0, b'c']
        );
        assert!(serialize_bytes(Vec::<Vec<u8>>::new()).unwrap().is_empty());
    }

    #[test]
    fn concat_rejects_mismatched_rows() {
        let a = f32_tensor(vec![1, 2], &[1.0, 2.0]);
        let b = f32_tensor(vec![1, 3], &[3.0, 4.0, 5.0]);
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
        assert!(a.split_rows(&[2]).is_err());
    }
}

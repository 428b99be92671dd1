//! Wire rules shared by the HTTP and gRPC adapters: datatype and shape parsing,
//! the tensor and output parameters Sluice refuses, and turning typed element
//! values (JSON `data`, gRPC `contents`) into a tensor's little-endian bytes.
//!
//! Both protocols decode through these functions, so the same mistake gets the same
//! message whichever way a request arrives.

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use sluice_core::{DataType, Error, Result};

/// Parses a v2 datatype name (`FP32`) of the tensor `owner` ("input 'x'").
pub fn parse_datatype(owner: &str, name: &str) -> Result<DataType> {
    DataType::from_v2_name(name)
        .ok_or_else(|| Error::invalid(format!("{owner}: unknown datatype '{name}'")))
}

/// Parses a wire shape and returns it with its element count.
pub fn parse_shape(owner: &str, shape: &[i64]) -> Result<(Vec<usize>, usize)> {
    let shape = shape
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| Error::invalid(format!("{owner}: negative dimension {d} in shape")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid(format!("{owner}: shape {shape:?} is too large")))?;
    Ok((shape, count))
}

/// Refuses Triton's shared-memory parameters on a request, input or output.
pub fn reject_shared_memory<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    owner: &str,
) -> Result<()> {
    if keys.into_iter().any(|k| k.starts_with("shared_memory")) {
        return Err(Error::unsupported(format!(
            "{owner}: shared-memory tensors are not supported"
        )));
    }
    Ok(())
}

/// The error for a `sluice_cache` parameter that is not a string.
pub fn cache_parameter_not_string() -> Error {
    Error::invalid(format!(
        "request: parameter '{}' must be a string",
        sluice_core::CacheControl::PARAMETER
    ))
}

/// Checks the parameters of a requested output: no shared memory, no classification.
pub fn check_output_parameters<'a>(
    keys: impl IntoIterator<Item = &'a String> + Clone,
    owner: &str,
) -> Result<()> {
    reject_shared_memory(keys.clone(), owner)?;
    if keys.into_iter().any(|k| k == "classification") {
        return Err(Error::unsupported(format!(
            "{owner}: the classification extension is not supported"
        )));
    }
    Ok(())
}

/// Writes the elements of one tensor as little-endian bytes, checking that each
/// value fits the datatype and that the count matches the shape.
pub struct ElementWriter<'a> {
    owner: &'a str,
    datatype: DataType,
    expected: usize,
    written: usize,
    out: BytesMut,
}

impl<'a> ElementWriter<'a> {
    /// A writer for `expected` elements of `datatype` for the tensor `owner`.
    pub fn new(owner: &'a str, datatype: DataType, expected: usize) -> Self {
        // The capacity is a hint: a huge declared shape must not allocate up front.
        let capacity = expected
            .saturating_mul(datatype.size().unwrap_or(8))
            .min(1 << 26);
        ElementWriter {
            owner,
            datatype,
            expected,
            written: 0,
            out: BytesMut::with_capacity(capacity),
        }
    }

    /// Fails unless `given` values are what the shape holds (when the count is known up front).
    pub fn expect_count(&self, given: usize) -> Result<()> {
        if given != self.expected {
            return Err(self.count_error(given.to_string()));
        }
        Ok(())
    }

    fn count_error(&self, shown: String) -> Error {
        Error::invalid(format!(
            "{}: {shown} values given but the shape holds {}",
            self.owner, self.expected
        ))
    }

    fn not_valid(&self, value: impl std::fmt::Display) -> Error {
        Error::invalid(format!(
            "{}: value {value} is not a valid {}",
            self.owner, self.datatype
        ))
    }

    fn next(&mut self) -> Result<()> {
        if self.written == self.expected {
            return Err(self.count_error(format!("more than {}", self.expected)));
        }
        self.written += 1;
        Ok(())
    }

    /// An integer for an integer datatype.
    pub fn int(&mut self, v: i128) -> Result<()> {
        self.next()?;
        macro_rules! put {
            ($t:ty) => {{
                let x = <$t>::try_from(v).map_err(|_| self.not_valid(v))?;
                self.out.put_slice(&x.to_le_bytes());
            }};
        }
        match self.datatype {
            DataType::U8 => put!(u8),
            DataType::U16 => put!(u16),
            DataType::U32 => put!(u32),
            DataType::U64 => put!(u64),
            DataType::I8 => put!(i8),
            DataType::I16 => put!(i16),
            DataType::I32 => put!(i32),
            DataType::I64 => put!(i64),
            DataType::Bool
            | DataType::F16
            | DataType::Bf16
            | DataType::F32
            | DataType::F64
            | DataType::Bytes => return Err(self.not_valid(v)),
        }
        Ok(())
    }

    /// A number for a floating-point datatype.
    pub fn float(&mut self, v: f64) -> Result<()> {
        self.next()?;
        match self.datatype {
            DataType::F16 => self.out.put_slice(&f16::from_f64(v).to_le_bytes()),
            DataType::Bf16 => self.out.put_slice(&bf16::from_f64(v).to_le_bytes()),
            DataType::F32 => self.out.put_f32_le(v as f32),
            DataType::F64 => self.out.put_f64_le(v),
            _ => return Err(self.not_valid(v)),
        }
        Ok(())
    }

    /// A boolean for `BOOL`.
    pub fn bool(&mut self, v: bool) -> Result<()> {
        self.next()?;
        if self.datatype != DataType::Bool {
            return Err(self.not_valid(v));
        }
        self.out.put_u8(u8::from(v));
        Ok(())
    }

    /// One element of `BYTES`, written with its 4-byte length prefix.
    pub fn bytes(&mut self, v: &[u8]) -> Result<()> {
        self.next()?;
        let shown = || String::from_utf8_lossy(&v[..v.len().min(32)]).into_owned();
        if self.datatype != DataType::Bytes {
            return Err(self.not_valid(format!("{:?}", shown())));
        }
        let len = u32::try_from(v.len()).map_err(|_| self.not_valid(shown()))?;
        self.out.put_u32_le(len);
        self.out.put_slice(v);
        Ok(())
    }

    /// The bytes written, once every element the shape holds was given.
    pub fn finish(self) -> Result<Bytes> {
        if self.written != self.expected {
            return Err(self.count_error(self.written.to_string()));
        }
        Ok(self.out.freeze())
    }
}

/// The request-level scheduling parameters both protocols carry: `priority` (1 is the
/// highest level, 0 the model's default) and `timeout` (microseconds in the queue).
pub fn scheduling(
    priority: Option<i128>,
    timeout_us: Option<i128>,
) -> Result<(u32, Option<std::time::Duration>)> {
    let priority = match priority {
        None => 0,
        Some(p) => u32::try_from(p).map_err(|_| {
            Error::invalid(format!(
                "parameter 'priority' must be an integer in 0..={}, got {p}",
                u32::MAX
            ))
        })?,
    };
    // Longer than `MAX_TIMEOUT` is cut to it, so `now + timeout` never overflows.
    let timeout = match timeout_us {
        None | Some(0) => None,
        Some(t) => Some(
            std::time::Duration::from_micros(u64::try_from(t).map_err(|_| {
                Error::invalid(format!(
                    "parameter 'timeout' must be a non-negative number of microseconds, got {t}"
                ))
            })?)
            .min(sluice_core::limits::MAX_TIMEOUT),
        ),
    };
    Ok((priority, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_range_checked_per_datatype() {
        let mut w = ElementWriter::new("input 'x'", DataType::I8, 2);
        w.int(-128).unwrap();
        let err = w.int(128).unwrap_err();
        assert_eq!(err.message(), "input 'x': value 128 is not a valid INT8");
        let mut w = ElementWriter::new("input 'x'", DataType::U16, 1);
        assert!(w.int(-1).is_err());
        let mut w = ElementWriter::new("input 'x'", DataType::F32, 1);
        assert!(w.int(1).is_err(), "integers do not go into float tensors");
    }

    #[test]
    fn huge_timeouts_are_cut_to_the_limit() {
        let (_, timeout) = scheduling(None, Some(i128::from(u64::MAX))).unwrap();
        assert_eq!(timeout, Some(sluice_core::limits::MAX_TIMEOUT));
        let (_, timeout) = scheduling(None, Some(5)).unwrap();
        assert_eq!(timeout, Some(std::time::Duration::from_micros(5)));
        assert!(scheduling(None, Some(-1)).is_err());
    }

    #[test]
    fn counts_are_checked() {
        let mut w = ElementWriter::new("input 'x'", DataType::F32, 1);
        w.float(1.0).unwrap();
        let err = w.float(2.0).unwrap_err();
        assert!(err.message().contains("more than 1 values"), "{err}");
        let w = ElementWriter::new("input 'x'", DataType::F32, 2);
        assert!(w
            .expect_count(3)
            .unwrap_err()
            .message()
            .contains("3 values"));
        assert!(w.finish().unwrap_err().message().contains("0 values"));
    }

    #[test]
    fn bytes_and_bools_encode() {
        let mut w = ElementWriter::new("s", DataType::Bytes, 2);
        w.bytes(b"ab").unwrap();
        w.bytes(b"").unwrap();
        assert_eq!(
            &w.finish().unwrap()[..],
            &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
        );
        let mut w = ElementWriter::new("b", DataType::Bool, 2);
        w.bool(true).unwrap();
        w.bool(false).unwrap();
        assert_eq!(&w.finish().unwrap()[..], &[1, 0]);
        let mut w = ElementWriter::new("b", DataType::Bool, 1);
        assert!(w.bytes(b"x").is_err());
    }

    #[test]
    fn shapes_and_parameters() {
        assert_eq!(parse_shape("x", &[2, 3]).unwrap(), (vec![2, 3], 6));
        assert!(parse_shape("x", &[-1])
            .unwrap_err()
            .message()
            .contains("negative dimension"));
        assert!(parse_shape("x", &[i64::MAX, i64::MAX]).is_err());
        assert!(parse_datatype("x", "FLOAT").is_err());
        let keys = ["shared_memory_region".to_owned()];
        assert!(reject_shared_memory(&keys, "x").is_err());
        let keys = ["classification".to_owned()];
        assert!(check_output_parameters(&keys, "y").is_err());
    }
}

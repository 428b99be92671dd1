//! Reads NumPy `.npy` files (format versions 1–3, little-endian or one-byte dtypes,
//! C order) into an [`InputTensor`](crate::InputTensor)'s datatype, shape and bytes.

use std::path::Path;

use bytes::Bytes;
use sluice_core::DataType;

/// Why a `.npy` file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct NpyError {
    pub path: String,
    pub reason: String,
}

/// The datatype, shape and raw little-endian elements of a `.npy` file.
pub fn read_npy(path: &Path) -> Result<(DataType, Vec<i64>, Bytes), NpyError> {
    let fail = |reason: String| NpyError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    parse_npy(&bytes).map_err(fail)
}

fn parse_npy(bytes: &[u8]) -> Result<(DataType, Vec<i64>, Bytes), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or(format!("header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest
            .strip_prefix(':')
            .ok_or("malformed header")?
            .trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("malformed descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = field("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| format!("bad dimension {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let datatype = match descr {
        "|b1" => DataType::Bool,
        "|u1" => DataType::U8,
        "|i1" => DataType::I8,
        "<u2" => DataType::U16,
        "<i2" => DataType::I16,
        "<u4" => DataType::U32,
        "<i4" => DataType::I32,
        "<u8" => DataType::U64,
        "<i8" => DataType::I64,
        "<f2" => DataType::F16,
        "<f4" => DataType::F32,
        "<f8" => DataType::F64,
        other => return Err(format!("unsupported dtype {other:?}")),
    };
    let data = &bytes[start + header_len..];
    let expected = shape.iter().product::<i64>() as usize * datatype.size().unwrap_or(1);
    if data.len() != expected {
        return Err(format!(
            "{} data bytes, the shape {shape:?} needs {expected}",
            data.len()
        ));
    }
    Ok((datatype, shape, Bytes::copy_from_slice(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_shape_dtype_and_data() {
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let (dt, shape, bytes) = parse_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!((dt, shape), (DataType::F32, vec![2, 3]));
        assert_eq!(&bytes[..], &data[..]);
        let (dt, shape, _) = parse_npy(&npy("<i8", "(3,)", &[0; 24])).unwrap();
        assert_eq!((dt, shape), (DataType::I64, vec![3]));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let e = parse_npy(&npy("<f4", "(2,)", &[0; 4])).unwrap_err();
        assert!(e.contains("needs 8"), "{e}");
        let e = parse_npy(&npy(">f4", "(1,)", &[0; 4])).unwrap_err();
        assert!(e.contains("unsupported dtype"), "{e}");
        assert!(parse_npy(b"hello world").is_err());
    }
}

use std::fmt;

/// A tensor element type, as named by the KServe v2 protocol (`FP32`) and by
/// Triton's model configuration (`TYPE_FP32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bf16,
    /// Variable-length byte strings (`BYTES` / `TYPE_STRING`).
    Bytes,
}

const ALL: [DataType; 14] = [
    DataType::Bool,
    DataType::U8,
    DataType::U16,
    DataType::U32,
    DataType::U64,
    DataType::I8,
    DataType::I16,
    DataType::I32,
    DataType::I64,
    DataType::F16,
    DataType::F32,
    DataType::F64,
    DataType::Bf16,
    DataType::Bytes,
];

impl DataType {
    /// Every datatype, in a fixed order.
    pub fn all() -> &'static [DataType] {
        &ALL
    }

    /// The v2 protocol name, e.g. `FP32`.
    pub fn v2_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Triton's model-configuration name, e.g. `TYPE_FP32`.
    pub fn config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::U8 => "TYPE_UINT8",
            DataType::U16 => "TYPE_UINT16",
            DataType::U32 => "TYPE_UINT32",
            DataType::U64 => "TYPE_UINT64",
            DataType::I8 => "TYPE_INT8",
            DataType::I16 => "TYPE_INT16",
            DataType::I32 => "TYPE_INT32",
            DataType::I64 => "TYPE_INT64",
            DataType::F16 => "TYPE_FP16",
            DataType::F32 => "TYPE_FP32",
            DataType::F64 => "TYPE_FP64",
            DataType::Bf16 => "TYPE_BF16",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Parses a v2 protocol name (`FP32`).
    pub fn from_v2_name(name: &str) -> Option<DataType> {
        ALL.iter().copied().find(|d| d.v2_name() == name)
    }

    /// Parses a Triton configuration name (`TYPE_FP32`).
    pub fn from_config_name(name: &str) -> Option<DataType> {
        ALL.iter().copied().find(|d| d.config_name() == name)
    }

    /// Bytes per element, or `None` for variable-length `BYTES`.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::Bf16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &d in DataType::all() {
            assert_eq!(DataType::from_v2_name(d.v2_name()), Some(d));
            assert_eq!(DataType::from_config_name(d.config_name()), Some(d));
        }
        assert_eq!(DataType::from_v2_name("FLOAT"), None);
        assert_eq!(DataType::from_config_name("FP32"), None);
    }
}

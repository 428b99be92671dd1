//! Hard per-request limits, checked before a request is decoded into memory.
//!
//! Key decision: a protobuf message is small on the wire and large in memory (an
//! empty `InferInputTensor` is 2 bytes on the wire and a few hundred once decoded;
//! a packed `int64` zero is 1 byte and 8), so a 4 MiB `ModelInfer` of empty inputs
//! decoded to over 600 MiB. [`check_infer_request`] walks the encoded message
//! without allocating, counts inputs, outputs, parameters and tensor elements, and
//! estimates the decoded size; the gRPC guard (`grpc::guard`) runs it on every
//! `ModelInfer` / `ModelStreamInfer` message before prost decodes it. The JSON
//! decoder applies the same counts as it parses. Limits are set once at startup
//! ([`install`]); until then the defaults apply.

use std::sync::OnceLock;

/// Bounds on one inference request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Input tensors per request.
    pub max_inputs: usize,
    /// Requested outputs per request.
    pub max_outputs: usize,
    /// Parameters per request, and per tensor.
    pub max_parameters: usize,
    /// Tensor elements per request (all inputs together, by shape and by contents).
    pub max_elements: u64,
    /// Bytes the decoded request may take (tensor data and per-entry overhead).
    pub max_decoded_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_inputs: 1024,
            max_outputs: 1024,
            max_parameters: 256,
            max_elements: 1 << 28,
            max_decoded_bytes: 1 << 30,
        }
    }
}

static LIMITS: OnceLock<RequestLimits> = OnceLock::new();

/// Sets the limits for this process (once, at startup); `false` if already set.
pub fn install(limits: RequestLimits) -> bool {
    LIMITS.set(limits).is_ok()
}

/// The limits in force.
pub fn current() -> RequestLimits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Memory a decoded message entry (a tensor, a parameter, a string) takes beyond its
/// bytes, roughly: what prost allocates for it.
const ENTRY_OVERHEAD: u64 = 256;

/// A field: its number, wire type and (for length-delimited fields) its bytes.
type Field<'a> = (u64, u8, &'a [u8]);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        if n > self.buf.len() {
            return Err("field length past the end of the message".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next field: its number, wire type and (for length-delimited fields) bytes.
    fn field(&mut self) -> Result<Option<Field<'a>>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let payload = match wire {
            0 => {
                self.varint()?;
                &[][..]
            }
            1 => self.take(8)?,
            2 => {
                let len = self.varint()?;
                self.take(len)?
            }
            5 => self.take(4)?,
            _ => return Err(format!("unsupported protobuf wire type {wire}")),
        };
        Ok(Some((number, wire, payload)))
    }
}

fn count_varints(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b & 0x80 == 0).count() as u64
}

/// Totals over one request.
#[derive(Default)]
struct Tally {
    elements: u64,
    decoded: u64,
}

impl Tally {
    /// Adds to both totals, saturating: a shape's element count saturates at
    /// `u64::MAX`, and a wrapped total could pass the limits (found by the
    /// `grpc_infer` fuzz target as an overflow panic; seed `overflowing-element-count`).
    fn add(&mut self, elements: u64, decoded: u64) {
        self.elements = self.elements.saturating_add(elements);
        self.decoded = self.decoded.saturating_add(decoded);
    }
}

fn over(what: &str, n: u64, limit: u64, flag: &str) -> String {
    format!("the request has {n} {what}, over the limit of {limit} ({flag})")
}

fn check_parameters(n: u64, limits: &RequestLimits, owner: &str) -> Result<(), String> {
    if n > limits.max_parameters as u64 {
        return Err(over(
            &format!("parameters on {owner}"),
            n,
            limits.max_parameters as u64,
            "--max-request-parameters",
        ));
    }
    Ok(())
}

fn scan_contents(bytes: &[u8], tally: &mut Tally) -> Result<(), String> {
    let mut r = Reader { buf: bytes };
    while let Some((number, wire, payload)) = r.field()? {
        // Decoded element size per InferTensorContents field.
        let size = match number {
            1 => 1,
            2 | 4 | 6 => 4,
            3 | 5 | 7 => 8,
            8 => {
                tally.add(1, payload.len() as u64 + 32);
                continue;
            }
            _ => continue,
        };
        let count = match (wire, number) {
            (2, 6) => payload.len() as u64 / 4,
            (2, 7) => payload.len() as u64 / 8,
            (2, _) => count_varints(payload),
            _ => 1,
        };
        tally.add(count, count.saturating_mul(size));
    }
    Ok(())
}

fn scan_input(bytes: &[u8], limits: &RequestLimits, tally: &mut Tally) -> Result<(), String> {
    let mut r = Reader { buf: bytes };
    let mut parameters = 0u64;
    let mut shape_elements = 1u64;
    let mut dims = 0u64;
    while let Some((number, wire, payload)) = r.field()? {
        match number {
            3 if wire == 2 => {
                let mut dims_reader = Reader { buf: payload };
                while !dims_reader.buf.is_empty() {
                    let d = dims_reader.varint()? as i64;
                    dims += 1;
                    shape_elements = shape_elements.saturating_mul(d.max(0) as u64);
                }
            }
            3 => {
                // An unpacked dimension: its value was read as a varint by `field`.
                dims += 1;
            }
            4 => parameters += 1,
            5 => scan_contents(payload, tally)?,
            _ => {}
        }
        tally.add(0, payload.len() as u64);
    }
    check_parameters(parameters, limits, "an input")?;
    if dims > 0 {
        tally.add(shape_elements, 0);
    }
    tally.add(0, ENTRY_OVERHEAD.saturating_add(dims.saturating_mul(8)));
    Ok(())
}

/// Checks an encoded `ModelInferRequest` against `limits` without decoding it.
/// Errors are messages for the client; a malformed message passes (prost's own
/// decoder then answers it).
pub fn check_infer_request(message: &[u8], limits: &RequestLimits) -> Result<(), String> {
    let mut r = Reader { buf: message };
    let (mut inputs, mut outputs, mut parameters, mut raw) = (0u64, 0u64, 0u64, 0u64);
    let mut tally = Tally::default();
    while let Ok(Some((number, _, payload))) = r.field() {
        match number {
            4 => parameters += 1,
            5 => {
                inputs += 1;
                if inputs > limits.max_inputs as u64 {
                    return Err(over(
                        "inputs",
                        inputs,
                        limits.max_inputs as u64,
                        "--max-request-inputs",
                    ));
                }
                if scan_input(payload, limits, &mut tally).is_err() {
                    return Ok(());
                }
            }
            6 => {
                outputs += 1;
                if outputs > limits.max_outputs as u64 {
                    return Err(over(
                        "outputs",
                        outputs,
                        limits.max_outputs as u64,
                        "--max-request-outputs",
                    ));
                }
                let mut o = Reader { buf: payload };
                let mut p = 0;
                while let Ok(Some((n, _, _))) = o.field() {
                    p += u64::from(n == 2);
                }
                check_parameters(p, limits, "an output")?;
                tally.add(0, ENTRY_OVERHEAD);
            }
            7 => {
                raw += 1;
                tally.add(0, payload.len() as u64 + 32);
            }
            _ => {}
        }
        tally.add(0, payload.len() as u64);
    }
    check_parameters(parameters, limits, "the request")?;
    if raw > limits.max_inputs as u64 {
        return Err(over(
            "raw input contents",
            raw,
            limits.max_inputs as u64,
            "--max-request-inputs",
        ));
    }
    tally.add(0, parameters.saturating_mul(ENTRY_OVERHEAD));
    if tally.elements > limits.max_elements {
        return Err(over(
            "tensor elements",
            tally.elements,
            limits.max_elements,
            "--max-request-elements",
        ));
    }
    if tally.decoded > limits.max_decoded_bytes {
        return Err(format!(
            "the request would take about {} bytes decoded, over the limit of {} \
             (--max-request-decoded-bytes)",
            tally.decoded, limits.max_decoded_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use sluice_proto::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use sluice_proto::inference::{InferTensorContents, ModelInferRequest};

    fn empty_inputs(n: usize) -> Vec<u8> {
        ModelInferRequest {
            inputs: vec![InferInputTensor::default(); n],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_are_checked_just_under_and_over() {
        let limits = RequestLimits {
            max_inputs: 10,
            max_outputs: 3,
            ..RequestLimits::default()
        };
        assert!(check_infer_request(&empty_inputs(10), &limits).is_ok());
        let e = check_infer_request(&empty_inputs(11), &limits).unwrap_err();
        assert!(
            e.contains("11 inputs") && e.contains("--max-request-inputs"),
            "{e}"
        );
        let outputs = |n| {
            ModelInferRequest {
                outputs: vec![InferRequestedOutputTensor::default(); n],
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(check_infer_request(&outputs(3), &limits).is_ok());
        assert!(check_infer_request(&outputs(4), &limits).is_err());
    }

    #[test]
    fn elements_by_shape_and_by_contents_are_counted() {
        let limits = RequestLimits {
            max_elements: 1000,
            ..RequestLimits::default()
        };
        let shaped = |shape: Vec<i64>| {
            ModelInferRequest {
                inputs: vec![InferInputTensor {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape,
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(check_infer_request(&shaped(vec![10, 100]), &limits).is_ok());
        assert!(check_infer_request(&shaped(vec![10, 101]), &limits).is_err());
        // A shape claiming 10^12 elements, and one that overflows.
        assert!(check_infer_request(&shaped(vec![1_000_000, 1_000_000]), &limits).is_err());
        assert!(check_infer_request(&shaped(vec![i64::MAX, i64::MAX]), &limits).is_err());
        let contents = |n: usize| {
            ModelInferRequest {
                inputs: vec![InferInputTensor {
                    contents: Some(InferTensorContents {
                        int64_contents: vec![0; n],
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(check_infer_request(&contents(1000), &limits).is_ok());
        assert!(check_infer_request(&contents(1001), &limits).is_err());
    }

    #[test]
    fn malformed_messages_are_left_to_prost() {
        for bytes in [&[0x2a, 0xff][..], &[0xff; 12][..], &[0x0b][..]] {
            assert!(check_infer_request(bytes, &RequestLimits::default()).is_ok());
        }
    }
}

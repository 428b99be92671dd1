//! Triton's raw binary request: `Inference-Header-Content-Length: 0` says the body
//! has no JSON header at all, and the whole body is the bytes of the model's one
//! input (the way `curl --data-binary @image.bin` sends a file).
//!
//! Key decision: the rules are those of Triton's server (`EVBufferToRawInput`) and
//! core (`InferenceRequest::Normalize`), so the same request means the same thing:
//! the model must have exactly one input; its datatype and shape come from the
//! model's configuration (`dims`, before any `reshape`), with a batch dimension of 1
//! in front when the model batches; at most one dimension may be variable (-1), and
//! its size is what the body's length makes it; a `BYTES` input must hold one
//! element, and the body is that element. Every output comes back, as binary data.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_core::{DataType, Error, InferRequest, ModelSignature, Result, Tensor};

use crate::codec::OutputPlan;

/// Decodes a raw binary request body for the model of `signature`.
pub fn decode_raw_request(
    body: Bytes,
    signature: &ModelSignature,
) -> Result<(InferRequest, OutputPlan)> {
    let model = &signature.model;
    let [spec] = &signature.inputs[..] else {
        return Err(Error::invalid(format!(
            "Raw request must only have 1 input (found 1) to be deduced but got {} inputs in \
             '{model}' model configuration",
            signature.inputs.len()
        )));
    };
    let name = &spec.name;
    let mut shape: Vec<usize> = Vec::with_capacity(spec.dims.len() + 1);
    if signature.max_batch_size > 0 {
        shape.push(1);
    }
    let mut variable = None;
    let mut fixed = 1usize;
    for &d in &spec.dims {
        if d == -1 {
            if variable.is_some() {
                return Err(Error::invalid(format!(
                    "The shape of the raw input '{name}' can not be deduced because there are \
                     more than one variable-sized dimension"
                )));
            }
            variable = Some(shape.len());
            shape.push(0);
        } else {
            let d = usize::try_from(d)
                .map_err(|_| Error::invalid(format!("input '{name}': invalid dimension {d}")))?;
            fixed = fixed.saturating_mul(d);
            shape.push(d);
        }
    }
    let data = if spec.datatype == DataType::Bytes {
        if variable.is_some() || fixed != 1 {
            return Err(Error::invalid(format!(
                "For BYTE datatype raw input '{name}', the model must have input shape [1]"
            )));
        }
        // One element: the body behind its 4-byte length prefix.
        let len = u32::try_from(body.len()).map_err(|_| {
            Error::invalid(format!(
                "raw input '{name}': a BYTES element is limited to 4 GiB"
            ))
        })?;
        let mut element = BytesMut::with_capacity(4 + body.len());
        element.put_u32_le(len);
        element.put_slice(&body);
        element.freeze()
    } else {
        let size = spec.datatype.size().unwrap_or(1);
        let row = fixed.saturating_mul(size);
        if let Some(axis) = variable {
            // A row of no bytes (a 0 among the fixed dimensions) has no count to deduce:
            // 0 rows, so a non-empty body is refused as a size mismatch below (the
            // http_raw fuzz target found the division by zero; seed `zero-sized-row`).
            shape[axis] = body.len().checked_div(row).unwrap_or(0);
        }
        let expected = shape.iter().product::<usize>().saturating_mul(size);
        if body.len() != expected {
            return Err(Error::invalid(format!(
                "input byte size mismatch for input '{name}' for model '{model}'. Expected \
                 {expected}, got {}",
                body.len()
            )));
        }
        body
    };
    let input = Tensor::new(name.clone(), spec.datatype, shape, data)?;
    let request = InferRequest {
        inputs: vec![input],
        ..InferRequest::default()
    };
    Ok((request, OutputPlan::all_binary()))
}

#[cfg(test)]
mod tests {
    use sluice_core::{ModelConfig, TensorConfig};

    use super::*;

    fn signature(max_batch_size: i32, inputs: Vec<TensorConfig>) -> ModelSignature {
        ModelSignature::from_config(&ModelConfig {
            name: "m".into(),
            max_batch_size,
            input: inputs,
            output: vec![TensorConfig::new("y", DataType::F32, vec![1])],
            ..ModelConfig::default()
        })
    }

    fn floats(n: usize) -> Bytes {
        Bytes::from(
            (0..n)
                .flat_map(|i| (i as f32).to_le_bytes())
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn shape_comes_from_the_config_with_a_batch_of_one() {
        let sig = signature(8, vec![TensorConfig::new("x", DataType::F32, vec![2, 3])]);
        let body = floats(6);
        let (req, _) = decode_raw_request(body.clone(), &sig).unwrap();
        assert_eq!(req.inputs[0].name, "x");
        assert_eq!(req.inputs[0].shape, vec![1, 2, 3]);
        assert_eq!(req.inputs[0].data, body, "the body itself, not a copy");
        assert!(req.outputs.is_empty());
        sig.validate(req).unwrap();

        let unbatched = signature(0, vec![TensorConfig::new("x", DataType::F32, vec![2, 3])]);
        let (req, _) = decode_raw_request(floats(6), &unbatched).unwrap();
        assert_eq!(req.inputs[0].shape, vec![2, 3]);
    }

    #[test]
    fn one_variable_dimension_takes_the_rest_of_the_body() {
        let sig = signature(0, vec![TensorConfig::new("x", DataType::F32, vec![-1, 2])]);
        let (req, _) = decode_raw_request(floats(10), &sig).unwrap();
        assert_eq!(req.inputs[0].shape, vec![5, 2]);
        let err = decode_raw_request(floats(9), &sig).unwrap_err();
        assert!(
            err.message().contains(
                "input byte size mismatch for input 'x' for model 'm'. Expected 32, got 36"
            ),
            "{err}"
        );
        let two = signature(0, vec![TensorConfig::new("x", DataType::F32, vec![-1, -1])]);
        let err = decode_raw_request(floats(4), &two).unwrap_err();
        assert!(
            err.message().contains("more than one variable-sized"),
            "{err}"
        );
    }

    #[test]
    fn bytes_inputs_are_one_element_and_other_models_are_refused() {
        let sig = signature(4, vec![TensorConfig::new("s", DataType::Bytes, vec![1])]);
        let (req, _) = decode_raw_request(Bytes::from_static(b"hello"), &sig).unwrap();
        assert_eq!(&req.inputs[0].data[..], b"\x05\x00\x00\x00hello");
        assert_eq!(req.inputs[0].shape, vec![1, 1]);
        let wide = signature(0, vec![TensorConfig::new("s", DataType::Bytes, vec![2])]);
        let err = decode_raw_request(Bytes::from_static(b"x"), &wide).unwrap_err();
        assert!(err.message().contains("must have input shape [1]"), "{err}");

        let two = signature(
            0,
            vec![
                TensorConfig::new("a", DataType::F32, vec![1]),
                TensorConfig::new("b", DataType::F32, vec![1]),
            ],
        );
        let err = decode_raw_request(floats(2), &two).unwrap_err();
        assert!(
            err.message().starts_with("Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'm'"),
            "{err}"
        );
        let fixed = signature(0, vec![TensorConfig::new("x", DataType::F32, vec![3])]);
        let err = decode_raw_request(floats(2), &fixed).unwrap_err();
        assert!(err.message().contains("Expected 12, got 8"), "{err}");
    }
}

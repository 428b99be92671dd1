use crate::{DataType, Error, InferRequest, ModelConfig, Result, Tensor};

/// The inputs and outputs of a loaded model, with its batching mode: everything
/// needed to check a request before it is queued.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSignature {
    /// The model's name, for error messages.
    pub model: String,
    pub max_batch_size: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// What the engine accepts in the elements of `BYTES` inputs.
    pub bytes_content: BytesContent,
}

/// What an engine accepts in the elements of `BYTES` inputs. It is checked per
/// request before the request is queued, so one request the engine cannot take
/// fails alone instead of failing the batch it would have joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BytesContent {
    /// Any bytes.
    #[default]
    Any,
    /// UTF-8 text without NUL characters (ONNX string tensors as ONNX Runtime's C API
    /// fills them).
    Text,
}

/// One input or output. `dims` excludes the batch dimension when the model batches;
/// `-1` is a variable dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub dims: Vec<i64>,
    pub optional: bool,
}

/// A request that has been checked against its model: inputs in the model's input
/// order with the right datatypes and shapes, requested outputs resolved to indices.
///
/// Its fields are private: the only way to make one is [`ModelSignature::validate`],
/// so a `ValidRequest` in a queue has passed it; readers use the accessors.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    id: Option<String>,
    inputs: Vec<Tensor>,
    outputs: Vec<usize>,
    rows: usize,
}

impl ValidRequest {
    /// The client's request id, echoed in the answer.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// One tensor per model input, in the model's order.
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Indices into [`ModelSignature::outputs`] to return, in the order asked.
    pub fn outputs(&self) -> &[usize] {
        &self.outputs
    }

    /// Rows along dimension 0 when the model batches, else 1.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The input tensors, owned (see [`ValidRequest::inputs`]).
    pub fn into_inputs(self) -> Vec<Tensor> {
        self.inputs
    }
}

impl ModelSignature {
    pub fn from_config(config: &ModelConfig) -> ModelSignature {
        let spec = |t: &crate::TensorConfig| TensorSpec {
            name: t.name.clone(),
            datatype: t.data_type,
            dims: t.dims.clone(),
            optional: t.optional,
        };
        ModelSignature {
            model: config.name.clone(),
            max_batch_size: usize::try_from(config.max_batch_size).unwrap_or(0),
            inputs: config.input.iter().map(spec).collect(),
            outputs: config.output.iter().map(spec).collect(),
            bytes_content: BytesContent::Any,
        }
    }

    /// The same signature with `bytes_content` as the rule for `BYTES` inputs.
    #[must_use]
    pub fn with_bytes_content(mut self, bytes_content: BytesContent) -> ModelSignature {
        self.bytes_content = bytes_content;
        self
    }

    /// The full shape a spec has for `rows` batch rows (variable dims stay -1).
    pub fn full_dims(&self, spec: &TensorSpec) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1)
                .chain(spec.dims.iter().copied())
                .collect()
        } else {
            spec.dims.clone()
        }
    }

    /// Checks `request` against this signature ("parse, don't validate"). The
    /// messages follow Triton's wording for the same mistakes.
    pub fn validate(&self, request: InferRequest) -> Result<ValidRequest> {
        let InferRequest {
            id,
            inputs,
            outputs,
            ..
        } = request;
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in inputs {
            let Some(ix) = self.inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(Error::invalid(format!(
                    "unexpected inference input '{}' for model '{}' (its inputs are {})",
                    tensor.name,
                    self.model,
                    quoted(self.inputs.iter().map(|s| s.name.as_str()))
                )));
            };
            if slots[ix].is_some() {
                return Err(Error::invalid(format!(
                    "input '{}' is given twice",
                    tensor.name
                )));
            }
            self.check_tensor(&self.inputs[ix], &tensor)?;
            slots[ix] = Some(tensor);
        }
        if let Some(spec) = self
            .inputs
            .iter()
            .zip(&slots)
            .find_map(|(spec, slot)| (slot.is_none() && spec.optional).then_some(spec))
        {
            return Err(Error::unsupported(format!(
                "optional input '{}' was not given; omitting optional inputs is not supported yet",
                spec.name
            )));
        }
        if slots.iter().any(Option::is_none) {
            let given = self.inputs.iter().zip(&slots).filter(|(_, t)| t.is_some());
            let missing = self.inputs.iter().zip(&slots).filter(|(_, t)| t.is_none());
            return Err(Error::invalid(format!(
                "expected {} inputs but got {} inputs for model '{}'. Got input(s) {}, but \
                 missing required input(s) {}. Please provide all required input(s).",
                self.inputs.len(),
                given.clone().count(),
                self.model,
                quoted(given.map(|(s, _)| s.name.as_str())),
                quoted(missing.map(|(s, _)| s.name.as_str())),
            )));
        }
        let mut rows = None;
        let mut ordered = Vec::with_capacity(slots.len());
        for tensor in slots.into_iter().flatten() {
            if self.max_batch_size > 0 {
                let r = tensor.shape[0];
                match rows {
                    None => rows = Some(r),
                    Some(prev) if prev != r => {
                        return Err(Error::invalid(format!(
                            "input '{}' batch size does not match other inputs for '{}' \
                             ({r} rows, the others have {prev})",
                            tensor.name, self.model
                        )))
                    }
                    Some(_) => {}
                }
            }
            ordered.push(tensor);
        }
        let mut out_ix = Vec::with_capacity(outputs.len());
        for o in &outputs {
            let Some(ix) = self.outputs.iter().position(|s| s.name == o.name) else {
                return Err(Error::invalid(format!(
                    "unexpected inference output '{}' for model '{}' (its outputs are {})",
                    o.name,
                    self.model,
                    quoted(self.outputs.iter().map(|s| s.name.as_str()))
                )));
            };
            if out_ix.contains(&ix) {
                return Err(Error::invalid(format!(
                    "output '{}' is requested twice",
                    o.name
                )));
            }
            out_ix.push(ix);
        }
        if out_ix.is_empty() {
            out_ix = (0..self.outputs.len()).collect();
        }
        Ok(ValidRequest {
            id,
            inputs: ordered,
            outputs: out_ix,
            rows: rows.unwrap_or(1),
        })
    }

    fn check_tensor(&self, spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
        if tensor.datatype != spec.datatype {
            return Err(Error::invalid(format!(
                "inference input '{}' data-type is '{}', but model '{}' expects '{}'",
                spec.name, tensor.datatype, self.model, spec.datatype
            )));
        }
        let dims = if self.max_batch_size > 0 {
            let Some(&rows) = tensor.shape.first() else {
                return Err(Error::invalid(format!(
                    "input '{}': shape [] has no batch dimension (expected {:?})",
                    spec.name,
                    self.full_dims(spec)
                )));
            };
            if rows > self.max_batch_size {
                return Err(Error::invalid(format!(
                    "inference request batch-size must be <= {} for '{}' (input '{}' has {rows} rows)",
                    self.max_batch_size, self.model, spec.name
                )));
            }
            if rows == 0 {
                return Err(Error::invalid(format!(
                    "input '{}': batch size 0 (the first dimension must be at least 1)",
                    spec.name
                )));
            }
            &tensor.shape[1..]
        } else {
            &tensor.shape[..]
        };
        let matches = dims.len() == spec.dims.len()
            && dims
                .iter()
                .zip(&spec.dims)
                .all(|(&d, &s)| s == -1 || d as i64 == s);
        if !matches {
            return Err(Error::invalid(format!(
                "unexpected shape for input '{}' for model '{}'. Expected {}, got {}",
                spec.name,
                self.model,
                dims_list(self.full_dims(spec)),
                dims_list(tensor.shape.iter().map(|&d| d as i64)),
            )));
        }
        if tensor.datatype == DataType::Bytes && self.bytes_content == BytesContent::Text {
            check_text(spec, tensor)?;
        }
        Ok(())
    }
}

/// Checks that every element of a `BYTES` input is UTF-8 text without NUL characters.
fn check_text(spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
    for (ix, element) in tensor.bytes_elements().enumerate() {
        let element = element?;
        let problem = match std::str::from_utf8(element) {
            Err(e) => format!("is not valid UTF-8 (at byte {})", e.valid_up_to()),
            Ok(text) if text.contains('\0') => "contains a NUL character".to_owned(),
            Ok(_) => continue,
        };
        return Err(Error::invalid(format!(
            "input '{}': BYTES element {ix} {problem}; this model's engine takes BYTES \
             as text (UTF-8 without NUL characters)",
            spec.name
        )));
    }
    Ok(())
}

/// Names as Triton lists them: `['a','b']`.
fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    format!("[{}]", names.join(","))
}

/// A shape as Triton writes it: `[-1,784]`.
fn dims_list(dims: impl IntoIterator<Item = i64>) -> String {
    let dims: Vec<String> = dims.into_iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{RequestedOutput, TensorConfig};

    fn signature(max_batch_size: i32) -> ModelSignature {
        ModelSignature::from_config(&ModelConfig {
            name: "m".into(),
            max_batch_size,
            input: vec![
                TensorConfig::new("a", DataType::F32, vec![2]),
                TensorConfig::new("b", DataType::I64, vec![-1]),
            ],
            output: vec![
                TensorConfig::new("y", DataType::F32, vec![1]),
                TensorConfig::new("z", DataType::F32, vec![1]),
            ],
            ..ModelConfig::default()
        })
    }

    fn tensor(name: &str, datatype: DataType, shape: &[usize]) -> Tensor {
        let len = shape.iter().product::<usize>() * datatype.size().unwrap();
        Tensor::new(name, datatype, shape.to_vec(), Bytes::from(vec![0u8; len])).unwrap()
    }

    fn request(inputs: Vec<Tensor>, outputs: &[&str]) -> InferRequest {
        InferRequest {
            id: Some("7".into()),
            inputs,
            outputs: outputs
                .iter()
                .map(|n| RequestedOutput { name: (*n).into() })
                .collect(),
            ..InferRequest::default()
        }
    }

    #[test]
    fn valid_requests_are_reordered() {
        let sig = signature(4);
        let req = request(
            vec![
                tensor("b", DataType::I64, &[3, 5]),
                tensor("a", DataType::F32, &[3, 2]),
            ],
            &["z"],
        );
        let valid = sig.validate(req).unwrap();
        assert_eq!(valid.inputs[0].name, "a");
        assert_eq!(valid.outputs, vec![1]);
        assert_eq!(valid.rows, 3);
        assert_eq!(valid.id.as_deref(), Some("7"));
        let all = sig
            .validate(request(
                vec![
                    tensor("a", DataType::F32, &[1, 2]),
                    tensor("b", DataType::I64, &[1, 1]),
                ],
                &[],
            ))
            .unwrap();
        assert_eq!(all.outputs, vec![0, 1]);
    }

    #[test]
    fn text_bytes_inputs_are_checked_per_request() {
        let config = ModelConfig {
            max_batch_size: 4,
            input: vec![TensorConfig::new("s", DataType::Bytes, vec![-1])],
            output: vec![TensorConfig::new("y", DataType::Bytes, vec![-1])],
            ..ModelConfig::default()
        };
        let strings = |values: &[&[u8]]| {
            let data = crate::serialize_bytes(values).unwrap();
            request(
                vec![Tensor::new("s", DataType::Bytes, vec![1, values.len()], data).unwrap()],
                &[],
            )
        };
        let any = ModelSignature::from_config(&config);
        let text = any.clone().with_bytes_content(BytesContent::Text);
        let good: &[&[u8]] = &[b"", "caf\u{e9}".as_bytes(), &[b'x'; 1000]];
        assert!(text.validate(strings(good)).is_ok());
        for (values, expect) in [
            (
                &[&b"ok"[..], &[0xc3, 0x28]][..],
                "BYTES element 1 is not valid UTF-8",
            ),
            (
                &[&b"a\0b"[..]][..],
                "BYTES element 0 contains a NUL character",
            ),
        ] {
            let err = text.validate(strings(values)).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
            assert!(err.message().contains(expect), "{err}");
            assert!(any.validate(strings(values)).is_ok(), "Any takes any bytes");
        }
    }

    #[test]
    fn invalid_requests_say_why() {
        let a = |shape: &[usize]| tensor("a", DataType::F32, shape);
        let b = |shape: &[usize]| tensor("b", DataType::I64, shape);
        let cases: Vec<(i32, InferRequest, &str)> = vec![
            (
                4,
                request(vec![a(&[1, 2])], &[]),
                "expected 2 inputs but got 1 inputs for model 'm'. Got input(s) ['a'], but missing required input(s) ['b']",
            ),
            (
                4,
                request(
                    vec![a(&[1, 2]), b(&[1, 1]), tensor("c", DataType::F32, &[1])],
                    &[],
                ),
                "unexpected inference input 'c' for model 'm' (its inputs are ['a','b'])",
            ),
            (4, request(vec![a(&[1, 2]), a(&[1, 2])], &[]), "given twice"),
            (
                4,
                request(vec![tensor("a", DataType::F64, &[1, 2]), b(&[1, 1])], &[]),
                "inference input 'a' data-type is 'FP64', but model 'm' expects 'FP32'",
            ),
            (
                4,
                request(vec![a(&[1, 3]), b(&[1, 1])], &[]),
                "unexpected shape for input 'a' for model 'm'. Expected [-1,2], got [1,3]",
            ),
            (
                4,
                request(vec![a(&[5, 2]), b(&[5, 1])], &[]),
                "inference request batch-size must be <= 4 for 'm'",
            ),
            (
                4,
                request(vec![a(&[2, 2]), b(&[1, 1])], &[]),
                "batch size does not match other inputs for 'm'",
            ),
            (
                4,
                request(vec![a(&[1, 2]), b(&[1, 1])], &["w"]),
                "unexpected inference output 'w' for model 'm'",
            ),
            (
                0,
                request(vec![a(&[1, 2]), b(&[1])], &[]),
                "Expected [2], got [1,2]",
            ),
        ];
        for (mbs, req, expect) in cases {
            let err = signature(mbs).validate(req).unwrap_err();
            assert!(
                err.message().contains(expect),
                "expected '{expect}' in '{err}'"
            );
        }
        assert!(signature(0)
            .validate(request(vec![a(&[2]), b(&[7])], &[]))
            .is_ok());
    }
}

//! Triton's `reshape`: the client sees a tensor with the config's `dims`, the engine
//! sees it with the reshape's shape (both after the batch dimension, when the model
//! batches).
//!
//! Key decision: the reshape is applied around the engine instance
//! ([`Reshaped`] wraps an [`Instance`]), after the scheduler gathered a batch and
//! before it splits one. Requests are validated and batched in client shapes, so the
//! batcher, statistics and warmup need not know about it, and each batch is reshaped
//! once. A reshape only relabels dimensions: the bytes are the same.

use std::sync::Arc;

use crate::{Error, Instance, ModelConfig, Result, Tensor};

/// How each input and output of a model is reshaped (None: not reshaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshapePlan {
    batched: bool,
    inputs: Vec<Option<Mapping>>,
    outputs: Vec<Option<Mapping>>,
}

/// The dims a tensor has on the client's side and on the engine's side.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    client: Vec<i64>,
    engine: Vec<i64>,
}

impl ReshapePlan {
    /// The plan of a (validated) config; `None` when nothing is reshaped.
    pub fn of(config: &ModelConfig) -> Option<Arc<ReshapePlan>> {
        let mapping = |t: &crate::TensorConfig| {
            t.reshape.as_ref().map(|r| Mapping {
                client: t.dims.clone(),
                engine: r.shape.clone(),
            })
        };
        let plan = ReshapePlan {
            batched: config.max_batch_size > 0,
            inputs: config.input.iter().map(mapping).collect(),
            outputs: config.output.iter().map(mapping).collect(),
        };
        let any = plan.inputs.iter().chain(&plan.outputs).any(Option::is_some);
        any.then(|| Arc::new(plan))
    }

    /// Wraps an engine instance so that it takes and gives client shapes.
    pub fn wrap(self: &Arc<Self>, inner: Box<dyn Instance>) -> Box<dyn Instance> {
        Box::new(Reshaped {
            plan: Arc::clone(self),
            inner,
        })
    }

    fn apply(
        &self,
        tensors: Vec<Tensor>,
        maps: &[Option<Mapping>],
        to_engine: bool,
    ) -> Result<Vec<Tensor>> {
        tensors
            .into_iter()
            .enumerate()
            .map(|(ix, t)| match maps.get(ix).and_then(Option::as_ref) {
                None => Ok(t),
                Some(m) => {
                    let (from, to) = if to_engine {
                        (&m.client, &m.engine)
                    } else {
                        (&m.engine, &m.client)
                    };
                    reshape(t, self.batched, from, to)
                }
            })
            .collect()
    }
}

/// Gives `t` (whose shape fits `from` after the batch dimension) the shape `to`,
/// filling `to`'s variable dimensions, in order, with the sizes `t` has at `from`'s.
fn reshape(t: Tensor, batched: bool, from: &[i64], to: &[i64]) -> Result<Tensor> {
    let skip = usize::from(batched);
    let mismatch = || {
        Error::internal(format!(
            "tensor '{}': shape {:?} does not fit the dims {from:?} it is reshaped from",
            t.name, t.shape
        ))
    };
    if t.shape.len() != from.len() + skip {
        return Err(mismatch());
    }
    let mut variable = from
        .iter()
        .zip(&t.shape[skip..])
        .filter(|(&f, _)| f == -1)
        .map(|(_, &s)| s);
    let mut shape = t.shape[..skip].to_vec();
    for &d in to {
        let size = if d == -1 {
            variable.next().ok_or_else(mismatch)?
        } else {
            usize::try_from(d).map_err(|_| mismatch())?
        };
        shape.push(size);
    }
    // The element count is checked again (and must match): config validation
    // guarantees it for fixed dims, the engine's shapes are not trusted.
    Tensor::new(t.name, t.datatype, shape, t.data)
        .map_err(|e| Error::internal(format!("cannot reshape: {}", e.message())))
}

/// An engine instance behind a [`ReshapePlan`].
struct Reshaped {
    plan: Arc<ReshapePlan>,
    inner: Box<dyn Instance>,
}

impl Instance for Reshaped {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs = self.plan.apply(inputs, &self.plan.inputs, true)?;
        let outputs = self.inner.run(inputs)?;
        self.plan.apply(outputs, &self.plan.outputs, false)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{DataType, Reshape, TensorConfig};

    fn tensor(name: &str, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        Tensor::new(name, DataType::F32, shape.to_vec(), Bytes::from(data)).unwrap()
    }

    fn reshaped(name: &str, dims: Vec<i64>, shape: Vec<i64>) -> TensorConfig {
        TensorConfig {
            reshape: Some(Reshape { shape }),
            ..TensorConfig::new(name, DataType::F32, dims)
        }
    }

    /// An engine that records the shapes it got and answers with fixed tensors.
    struct Echo {
        seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<usize>>>>,
        answer: Vec<Tensor>,
    }

    impl Instance for Echo {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
            self.seen
                .lock()
                .unwrap()
                .extend(inputs.iter().map(|t| t.shape.clone()));
            Ok(self.answer.clone())
        }
    }

    #[test]
    fn inputs_and_outputs_take_their_shapes_and_keep_their_bytes() {
        // densenet_onnx: no batching, [3,224,224] -> [1,3,224,224]; [1,1000,1,1] -> [1000].
        let config = ModelConfig {
            input: vec![reshaped("data_0", vec![3, 4, 4], vec![1, 3, 4, 4])],
            output: vec![
                reshaped("fc", vec![10], vec![1, 10, 1, 1]),
                TensorConfig::new("plain", DataType::F32, vec![2]),
            ],
            ..ModelConfig::default()
        };
        config.validate().unwrap();
        let plan = ReshapePlan::of(&config).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let engine_out = tensor("fc", &[1, 10, 1, 1]);
        let mut instance = plan.wrap(Box::new(Echo {
            seen: seen.clone(),
            answer: vec![engine_out.clone(), tensor("plain", &[2])],
        }));
        let input = tensor("data_0", &[3, 4, 4]);
        let out = instance.run(vec![input]).unwrap();
        assert_eq!(seen.lock().unwrap()[0], vec![1, 3, 4, 4]);
        assert_eq!(out[0].shape, vec![10]);
        assert_eq!(out[0].data, engine_out.data);
        assert_eq!(out[1].shape, vec![2]);
        assert!(ReshapePlan::of(&ModelConfig::default()).is_none());
    }

    #[test]
    fn batch_and_variable_dimensions_carry_over() {
        // [2,3,-1] -> [6,-1] and [-1,3,1] -> [-1,3] keep the batch and the variable size;
        // [1] -> [] is a scalar per row.
        let config = ModelConfig {
            max_batch_size: 8,
            input: vec![
                reshaped("x", vec![2, 3, -1], vec![6, -1]),
                reshaped("s", vec![1], vec![]),
            ],
            output: vec![reshaped("y", vec![-1, 3], vec![-1, 3, 1])],
            ..ModelConfig::default()
        };
        config.validate().unwrap();
        let plan = ReshapePlan::of(&config).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut instance = plan.wrap(Box::new(Echo {
            seen: seen.clone(),
            answer: vec![tensor("y", &[5, 7, 3, 1])],
        }));
        let out = instance
            .run(vec![tensor("x", &[5, 2, 3, 4]), tensor("s", &[5, 1])])
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![vec![5, 6, 4], vec![5]]);
        assert_eq!(out[0].shape, vec![5, 7, 3]);
    }

    #[test]
    fn an_engine_output_that_does_not_fit_is_an_error() {
        let config = ModelConfig {
            input: vec![TensorConfig::new("x", DataType::F32, vec![2])],
            output: vec![reshaped("y", vec![4], vec![2, 2])],
            ..ModelConfig::default()
        };
        let plan = ReshapePlan::of(&config).unwrap();
        for answer in [tensor("y", &[4]), tensor("y", &[2, 3])] {
            let mut instance = plan.wrap(Box::new(Echo {
                seen: std::sync::Arc::default(),
                answer: vec![answer],
            }));
            let err = instance.run(vec![tensor("x", &[2])]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Internal, "{err}");
        }
    }
}

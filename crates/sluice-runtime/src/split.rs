//! Requests larger than a batch (a client's batch of thousands of rows), split into
//! chunks of `max_batch_size` rows that queue as separate requests, so every
//! instance of the model works on them at once, and reassembled in order.
//!
//! Key decision: the split happens above the scheduler, which sees only ordinary
//! requests of at most a full batch: each chunk holds one place in the queue, so
//! the queue bound counts a huge request by its batches and it cannot take the queue
//! whole; chunks interleave with other requests in arrival order. A chunk that fails
//! (or is refused) fails the whole request, and the chunks still queued are dropped
//! unrun. Off unless the model asks for it (`parameters: { key:
//! "sluice_split_requests" value: { string_value: "true" } }`), and only for models
//! that batch: a model that does not batch has no row dimension to cut.

use sluice_core::{Error, InferRequest, ModelConfig, Result, Tensor};
use sluice_scheduler::{InstancePool, JobOptions};

use crate::build::Served;

/// The model parameter that turns splitting on.
pub(crate) const PARAMETER: &str = "sluice_split_requests";

/// Whether a model's config turns splitting on (and it can batch).
pub(crate) fn enabled(config: &ModelConfig) -> Result<bool> {
    match config.parameter(PARAMETER) {
        None => Ok(false),
        Some("true") if config.max_batch_size > 0 => Ok(true),
        Some("true") => Err(Error::invalid(format!(
            "parameter {PARAMETER} needs a model that batches (max_batch_size > 0)"
        ))),
        Some("false") => Ok(false),
        Some(other) => Err(Error::invalid(format!(
            "parameter {PARAMETER} must be \"true\" or \"false\", got '{other}'"
        ))),
    }
}

/// The rows of a request that will be split, if it will: more rows than a batch
/// holds, on a model that splits.
pub(crate) fn rows_to_split(served: &Served, request: &InferRequest) -> Option<usize> {
    let max = served.signature.max_batch_size;
    if !served.split || max == 0 {
        return None;
    }
    let rows = request.inputs.first()?.shape.first().copied()?;
    (rows > max).then_some(rows)
}

/// Cuts `request` into requests of at most `max` rows each (the last may hold fewer).
pub(crate) fn cut(request: &InferRequest, rows: usize, max: usize) -> Result<Vec<InferRequest>> {
    let mut sizes = vec![max; rows / max];
    if !rows.is_multiple_of(max) {
        sizes.push(rows % max);
    }
    let mut chunks: Vec<InferRequest> = sizes
        .iter()
        .map(|_| InferRequest {
            inputs: Vec::with_capacity(request.inputs.len()),
            ..request.clone()
        })
        .collect();
    for input in &request.inputs {
        if input.shape.first() != Some(&rows) {
            return Err(Error::invalid(format!(
                "input '{}' batch size does not match other inputs ({} rows, the others have {rows})",
                input.name,
                input.shape.first().copied().unwrap_or(0)
            )));
        }
        for (chunk, part) in chunks.iter_mut().zip(input.split_rows(&sizes)?) {
            chunk.inputs.push(part);
        }
    }
    Ok(chunks)
}

/// Runs the chunks on the pool at once and joins each output's parts in order.
pub(crate) async fn run(
    pool: &InstancePool,
    chunks: Vec<sluice_core::ValidRequest>,
    options: JobOptions,
) -> Result<Vec<Tensor>> {
    let answers =
        futures_util::future::try_join_all(chunks.into_iter().map(|c| pool.infer(c, options)))
            .await?;
    let Some(first) = answers.first() else {
        return Err(Error::internal("a split request had no chunks"));
    };
    (0..first.len())
        .map(|o| {
            let parts: Vec<&Tensor> = answers.iter().filter_map(|a| a.get(o)).collect();
            if parts.len() != answers.len() {
                return Err(Error::internal(
                    "a chunk of a split request returned fewer outputs than the others",
                ));
            }
            Tensor::concat_rows(&parts)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::DataType;

    fn rows_tensor(name: &str, rows: usize) -> Tensor {
        let data: Vec<u8> = (0..rows * 2)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        Tensor::new(name, DataType::F32, vec![rows, 2], data.into()).unwrap()
    }

    #[test]
    fn a_request_is_cut_into_full_batches_and_a_rest_in_order() {
        let request = InferRequest {
            id: Some("r".into()),
            inputs: vec![rows_tensor("a", 10), rows_tensor("b", 10)],
            priority: 2,
            ..InferRequest::default()
        };
        let chunks = cut(&request, 10, 4).unwrap();
        let rows: Vec<usize> = chunks.iter().map(|c| c.inputs[0].shape[0]).collect();
        assert_eq!(rows, [4, 4, 2]);
        assert!(chunks
            .iter()
            .all(|c| c.priority == 2 && c.inputs.len() == 2));
        // Reassembled, the parts are the request again.
        for i in 0..2 {
            let parts: Vec<&Tensor> = chunks.iter().map(|c| &c.inputs[i]).collect();
            assert_eq!(Tensor::concat_rows(&parts).unwrap(), request.inputs[i]);
        }
        let mut uneven = request;
        uneven.inputs[1] = rows_tensor("b", 9);
        assert!(cut(&uneven, 10, 4)
            .unwrap_err()
            .message()
            .contains("batch size does not match"));
    }

    #[test]
    fn splitting_is_off_by_default_and_needs_a_batching_model() {
        let mut config = ModelConfig {
            max_batch_size: 4,
            ..ModelConfig::default()
        };
        assert!(!enabled(&config).unwrap());
        config.parameters.insert(
            PARAMETER.into(),
            sluice_core::ModelParameter {
                string_value: "true".into(),
            },
        );
        assert!(enabled(&config).unwrap());
        config.max_batch_size = 0;
        assert!(enabled(&config).is_err());
        config.parameters.get_mut(PARAMETER).unwrap().string_value = "yes".into();
        config.max_batch_size = 4;
        assert!(enabled(&config).is_err());
    }
}

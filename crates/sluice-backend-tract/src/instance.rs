//! The instance: run states over the shared plans, a batch cut into the
//! schedule's chunks, and tract's errors and panics turned into `Error`s.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use sluice_core::{DataType, Error, Instance, InstanceOptions, LoadedModel, Result, Tensor};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{TValue, TVec, TypedRunnableModel, TypedSimpleState};

use crate::convert::{from_tract, to_tract};
use crate::plans::{Chunk, Schedule, SYMBOLIC};
use crate::{Plans, TractModel};

impl LoadedModel for TractModel {
    fn instance(&self, options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        let state = |plan: &Arc<TypedRunnableModel>| {
            TypedSimpleState::new(plan)
                .map_err(|e| Error::internal(format!("tract cannot create a run state: {e:#}")))
        };
        let executor = if options.intra_op_threads > 1 {
            Executor::multithread_with_name(
                options.intra_op_threads,
                &format!("tract-{}", options.index),
            )
        } else {
            Executor::SingleThread
        };
        Ok(Box::new(TractInstance {
            _shared: Arc::clone(&self.plans),
            symbolic: state(&self.plans.symbolic)?,
            planned: self
                .plans
                .planned
                .iter()
                .map(|(&n, plan)| (n, Arc::clone(plan), None))
                .collect(),
            schedule: Arc::clone(&self.plans.schedule),
            batching: self.batching,
            inputs: self
                .config
                .input
                .iter()
                .map(|i| (i.name.clone(), i.data_type, i.dims.clone()))
                .collect(),
            executor,
            outputs: self
                .config
                .output
                .iter()
                .map(|o| (o.name.clone(), o.data_type))
                .collect(),
        }))
    }
}

/// A planned batch size, its plan, and this instance's run state over it (made on
/// first use, so sizes the batcher never forms cost no memory here).
type PlannedState = (usize, Arc<TypedRunnableModel>, Option<TypedSimpleState>);

struct TractInstance {
    /// Keeps the plans findable for other loads of the same file while this
    /// instance serves (the loaded model may be dropped once its instances exist).
    _shared: Arc<Plans>,
    symbolic: TypedSimpleState,
    planned: Vec<PlannedState>,
    schedule: Arc<Schedule>,
    batching: bool,
    /// Name, datatype and dims (without the batch) of each input, in order.
    inputs: Vec<(String, DataType, Vec<i64>)>,
    executor: Executor,
    outputs: Vec<(String, DataType)>,
}

impl TractInstance {
    /// Checks a batch against the config before tract sees it: an optimized tract
    /// plan trusts its input shapes, and a wrong one must be an error, not a wrong
    /// answer. (The scheduler only sends validated batches; this is the backstop.)
    fn check(&self, inputs: &[Tensor]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::internal(format!(
                "the model takes {} inputs, the batch has {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let batch = usize::from(self.batching);
        for (t, (name, dt, dims)) in inputs.iter().zip(&self.inputs) {
            let fits = t.datatype == *dt
                && t.shape.len() == dims.len() + batch
                && dims
                    .iter()
                    .zip(&t.shape[batch..])
                    .all(|(&d, &s)| d < 0 || usize::try_from(d) == Ok(s));
            if !fits {
                return Err(Error::internal(format!(
                    "input '{name}': {} {:?} does not fit {dt} {dims:?}{}",
                    t.datatype,
                    t.shape,
                    if self.batching {
                        " after the batch"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// The runs this batch is cut into; empty: one run on the symbolic plan.
    fn chunks(&self, inputs: &[Tensor]) -> Vec<Chunk> {
        if !self.batching || self.planned.is_empty() {
            return Vec::new();
        }
        let Some(rows) = inputs.first().and_then(|t| t.shape.first().copied()) else {
            return Vec::new();
        };
        if rows == 0 || inputs.iter().any(|t| t.shape.first() != Some(&rows)) {
            return Vec::new();
        }
        self.schedule.chunks(rows).to_vec()
    }

    /// Runs `inputs` (the rows of one chunk) padded to the planned size `size` (or
    /// on the symbolic plan) and returns the outputs cut back to those rows; `None`
    /// when an output does not lead with the batch, so it cannot be cut.
    fn run_chunk(&mut self, inputs: &[Tensor], size: usize) -> Result<Option<Vec<Tensor>>> {
        if size == SYMBOLIC {
            let outputs = self.run_on(inputs, None)?;
            return self.convert(&outputs, None).map(Some);
        }
        let rows = inputs.first().map_or(0, Tensor::rows);
        let outputs = self.run_on(inputs, Some(size))?;
        if outputs.iter().any(|o| o.shape().first() != Some(&size)) {
            return Ok(None);
        }
        self.convert(&outputs, Some(rows)).map(Some)
    }

    fn convert(&self, outputs: &[TValue], rows: Option<usize>) -> Result<Vec<Tensor>> {
        if outputs.len() != self.outputs.len() {
            return Err(Error::internal(format!(
                "tract returned {} outputs, expected {}",
                outputs.len(),
                self.outputs.len()
            )));
        }
        outputs
            .iter()
            .zip(&self.outputs)
            .map(|(value, (name, dt))| from_tract(name, *dt, value, rows))
            .collect()
    }

    /// Runs the batch chunk by chunk and joins the outputs; `None` as in `run_chunk`.
    fn run_chunks(&mut self, inputs: &[Tensor], chunks: &[Chunk]) -> Result<Option<Vec<Tensor>>> {
        if let [(size, _)] = chunks {
            return self.run_chunk(inputs, *size);
        }
        let rows: Vec<usize> = chunks.iter().map(|c| c.1).collect();
        let parts = inputs
            .iter()
            .map(|t| t.split_rows(&rows))
            .collect::<Result<Vec<_>>>()?;
        let mut per_chunk: Vec<Vec<Tensor>> = Vec::with_capacity(chunks.len());
        for (ix, &(size, _)) in chunks.iter().enumerate() {
            let chunk_inputs: Vec<Tensor> = parts.iter().map(|p| p[ix].clone()).collect();
            match self.run_chunk(&chunk_inputs, size)? {
                Some(out) => per_chunk.push(out),
                None => return Ok(None),
            }
        }
        (0..self.outputs.len())
            .map(|o| {
                let pieces: Vec<&Tensor> = per_chunk.iter().map(|c| &c[o]).collect();
                Tensor::concat_rows(&pieces)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn run_state(&mut self, size: Option<usize>) -> Result<&mut TypedSimpleState> {
        let Some(size) = size else {
            return Ok(&mut self.symbolic);
        };
        let (_, plan, state) = self
            .planned
            .iter_mut()
            .find(|p| p.0 == size)
            .ok_or_else(|| Error::internal(format!("no plan for batch size {size}")))?;
        if state.is_none() {
            *state =
                Some(TypedSimpleState::new(plan).map_err(|e| {
                    Error::internal(format!("tract cannot create a run state: {e:#}"))
                })?);
        }
        state
            .as_mut()
            .ok_or_else(|| Error::internal("tract run state missing"))
    }

    fn run_on(&mut self, inputs: &[Tensor], size: Option<usize>) -> Result<TVec<TValue>> {
        let values = inputs
            .iter()
            .map(|t| to_tract(t, size))
            .collect::<Result<TVec<TValue>>>()?;
        let executor = self.executor.clone();
        let state = self.run_state(size)?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            multithread_tract_scope(executor, || state.run(values))
        }));
        match result {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(Error::internal(format!(
                "tract failed to run the model: {e:#}"
            ))),
            Err(panic) => Err(Error::internal(format!(
                "tract panicked while running the model: {}",
                sluice_core::panic_message(panic.as_ref())
            ))),
        }
    }
}

impl Instance for TractInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.check(&inputs)?;
        let chunks = self.chunks(&inputs);
        if !chunks.is_empty() {
            if let Some(outputs) = self.run_chunks(&inputs, &chunks)? {
                return Ok(outputs);
            }
            // An output without the batch as dimension 0 cannot be cut back:
            // this instance runs on the symbolic plan from now on.
            tracing::warn!(
                "an output does not lead with the batch; tract planned shapes are off for this instance"
            );
            self.planned.clear();
        }
        let outputs = self.run_on(&inputs, None)?;
        self.convert(&outputs, None)
    }
}

//! Calibration: each plan timed at load, so the schedule picks the cheapest runs.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::ModelConfig;
use tract_onnx::prelude::{TValue, TVec, TypedRunnableModel, TypedSimpleState};

use crate::convert::datum_type;

/// Times each plan (single-threaded, on zeros, after a warm-up run; the fastest of a
/// few runs) at each planned size: the fixed plans at their size and the symbolic plan at every
/// size, so the schedule can choose between one padded run, several smaller ones
/// and the symbolic plan. `None` when a non-batch dimension is variable (no input
/// to time with) or a run fails. Each plan is timed in increasing sizes until one
/// run takes over a second; larger sizes are then priced at the last measured cost
/// per item.
pub(crate) fn calibrate(
    symbolic: &Arc<TypedRunnableModel>,
    planned: &BTreeMap<usize, Arc<TypedRunnableModel>>,
    config: &ModelConfig,
) -> Option<Calibration> {
    if planned.len() < 2 || config.input.iter().any(|i| i.dims.iter().any(|&d| d < 0)) {
        return None;
    }
    let sizes: Vec<usize> = planned.keys().copied().collect();
    let mut fixed = Vec::with_capacity(sizes.len());
    for (&n, plan) in planned {
        let previous = fixed.last().copied();
        fixed.push((n, time_plan(plan, config, n, previous)?));
    }
    let mut sym: Vec<(usize, f64)> = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let previous = sym.last().copied();
        sym.push((n, time_plan(symbolic, config, n, previous)?));
    }
    Some(Calibration {
        planned: fixed,
        symbolic: sym,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Calibration {
    pub(crate) planned: Vec<(usize, f64)>,
    pub(crate) symbolic: Vec<(usize, f64)>,
}

/// Seconds for one run of `plan` on `n` rows of zeros; priced from `previous`
/// (size, seconds) without running when that run already took over a second.
fn time_plan(
    plan: &Arc<TypedRunnableModel>,
    config: &ModelConfig,
    n: usize,
    previous: Option<(usize, f64)>,
) -> Option<f64> {
    const SLOW: Duration = Duration::from_secs(1);
    if let Some((last, t)) = previous {
        if t >= SLOW.as_secs_f64() {
            return Some(t / last as f64 * n as f64);
        }
    }
    let inputs = config
        .input
        .iter()
        .map(|i| {
            let mut shape = vec![n];
            shape.extend(i.dims.iter().map(|&d| d as usize));
            let dt = datum_type(i.data_type)?;
            tract_onnx::prelude::Tensor::zero_dt(dt, &shape)
                .ok()
                .map(tract_onnx::prelude::IntoTValue::into_tvalue)
        })
        .collect::<Option<TVec<TValue>>>()?;
    let mut state = TypedSimpleState::new(plan).ok()?;
    let seconds = catch_unwind(AssertUnwindSafe(|| -> Option<f64> {
        let start = Instant::now();
        state.run(inputs.clone()).ok()?;
        let first = start.elapsed();
        if first >= SLOW / 2 {
            return Some(first.as_secs_f64());
        }
        // The fastest of up to five runs (stopping once they add up to 100 ms): one
        // sample on a busy machine can pick a padded plan that costs a third more.
        let mut best = Duration::MAX;
        let mut spent = Duration::ZERO;
        for _ in 0..5 {
            let start = Instant::now();
            state.run(inputs.clone()).ok()?;
            let took = start.elapsed();
            best = best.min(took);
            spent += took;
            if spent >= Duration::from_millis(100) {
                break;
            }
        }
        Some(best.as_secs_f64())
    }))
    .ok()??;
    Some(seconds.max(1e-9))
}

//! Early rejection: a request with a timeout that would be answered after its caller
//! stops waiting is refused at once (429, like a full queue) instead of timing out in
//! the queue (504) or being answered too late, so the engine's time goes to requests
//! that make their deadline (goodput). Independent of the batching mode; on by default,
//! off with `sluice_early_rejection: "false"`.
//!
//! The estimate: the rows ahead of the request (at its priority level and above) drain
//! at the best throughput seen times the instance count, then its own run takes the
//! learned latency of the batch it is likely to be in (the rows ahead plus its own, up
//! to a full batch). A request with nothing ahead starts at once and is never rejected
//! early, whatever the latency model has learned: its timeout bounds the queue, not the
//! run. Before any run has been learned nothing is rejected.

use std::time::{Duration, Instant};

use sluice_core::{Error, ErrorKind};

use super::latency::LatencyModel;

/// What admission needs to know of the model version now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load<'a> {
    pub(crate) latency: &'a LatencyModel,
    /// Rows queued at the request's level and above.
    pub(crate) ahead: usize,
    pub(crate) instances: usize,
    /// Rows one run may hold (at least 1).
    pub(crate) max_batch: usize,
}

/// When a request of `rows` rows queued now is likely to start and to be answered;
/// `None` when nothing is ahead or nothing has been learned.
pub(crate) fn estimated_answer(
    load: Load<'_>,
    rows: usize,
    now: Instant,
) -> Option<(Instant, Instant)> {
    if load.ahead == 0 {
        return None;
    }
    let throughput = load.latency.best_throughput()? * load.instances as f64;
    let start = now + Duration::from_secs_f64(load.ahead as f64 / throughput);
    let batch = (load.ahead + rows).min(load.max_batch);
    let run = load.latency.estimate(batch)?;
    Some((start, start + run))
}

/// The error for a request that would be answered after `deadline`, if it would.
pub(crate) fn check(
    load: Load<'_>,
    rows: usize,
    now: Instant,
    deadline: Instant,
    label: &str,
) -> Option<Error> {
    let (start, finish) = estimated_answer(load, rows, now)?;
    (finish > deadline).then(|| {
        Error::new(
            ErrorKind::ResourceExhausted,
            format!(
                "model {label} cannot answer this request within its timeout of {} µs (about {} µs of work is ahead of it, then its run of about {} µs); rejected early",
                deadline.saturating_duration_since(now).as_micros(),
                (start - now).as_micros(),
                (finish - start).as_micros()
            ),
        )
    })
}

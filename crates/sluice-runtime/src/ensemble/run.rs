//! Running one ensemble request: a dataflow over the steps, each step a normal
//! request to its composing model.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use sluice_core::{
    CacheControl, Error, ErrorKind, InferRequest, RequestedOutput, Result, Tensor, ValidRequest,
};
use sluice_scheduler::JobOptions;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::Ensemble;
use crate::build::Served;
use crate::{Outcome, PoolStats, Runtime};

/// What every step of one ensemble request inherits from it.
struct Job {
    priority: u32,
    /// When the request's timeout passes (`None`: no timeout).
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    cache: CacheControl,
    id: Option<String>,
}

/// `max_inflight_requests` of one step: that many requests run the step at once,
/// up to `max_waiting` more wait for a turn, and the next is refused (429).
pub(super) struct Limit {
    permits: Semaphore,
    max: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Limit {
    pub(super) fn new(max: usize, max_waiting: usize) -> Limit {
        Limit {
            permits: Semaphore::new(max),
            max,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    async fn enter(&self, what: impl FnOnce() -> String) -> Result<SemaphorePermit<'_>> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "{}: max_inflight_requests {} are in flight and {} more wait; retry later",
                    what(),
                    self.max,
                    self.max_waiting
                ),
            ));
        }
        // Decrements on every way out, a cancelled wait included.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        self.permits
            .acquire()
            .await
            .map_err(|_| Error::unavailable(format!("{}: the ensemble is unloading", what())))
    }
}

/// Counts one ensemble request in the ensemble's own statistics: started when made,
/// finished with its outcome and wall-clock time (a request dropped before it ends —
/// its client left — counts as cancelled).
struct Counted<'a> {
    stats: &'a PoolStats,
    arrived: Instant,
    done: bool,
}

impl<'a> Counted<'a> {
    fn start(stats: &'a PoolStats, arrived: Instant) -> Counted<'a> {
        stats.start();
        Counted {
            stats,
            arrived,
            done: false,
        }
    }

    fn finish(mut self, result: &Result<Vec<Tensor>>, rows: usize) {
        self.done = true;
        if result.is_ok() {
            self.stats.record_forwarded_run(rows);
        }
        // A step's `Cancelled` (its client left) is the ensemble's too.
        let outcome = match result {
            Err(e) if e.kind() == ErrorKind::Cancelled => Outcome::Cancelled,
            _ => Outcome::of(result),
        };
        self.stats.finish(outcome, self.arrived.elapsed());
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .finish(Outcome::Cancelled, self.arrived.elapsed());
        }
    }
}

/// The boxed future of one ensemble run: every output of the ensemble, in config
/// order. Boxed, with its type spelled out: a step may itself be an ensemble, and an
/// async call cycle needs a future of known size and a known `Send`.
pub(crate) type EnsembleFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Tensor>>> + Send + 'a>>;

impl Ensemble {
    /// Runs one validated request on this ensemble (`served` is its version) with
    /// `options`' priority and timeout, its steps asking their models' caches as
    /// `cache` says; counts it in the ensemble's own statistics from `arrived`.
    pub(crate) fn run<'a>(
        &'a self,
        runtime: &'a Runtime,
        served: &'a Served,
        valid: ValidRequest,
        options: JobOptions,
        cache: CacheControl,
        arrived: Instant,
    ) -> EnsembleFuture<'a> {
        Box::pin(self.run_valid(runtime, served, valid, options, cache, arrived))
    }

    async fn run_valid(
        &self,
        runtime: &Runtime,
        served: &Served,
        valid: ValidRequest,
        options: JobOptions,
        cache: CacheControl,
        arrived: Instant,
    ) -> Result<Vec<Tensor>> {
        let job = Job {
            priority: options.priority,
            deadline: options.timeout.map(|t| Instant::now() + t),
            timeout: options.timeout,
            cache,
            id: valid.id().map(str::to_owned),
        };
        let counted = Counted::start(served.pool.stats(), arrived);
        let rows = valid.rows();
        // Tensors share their bytes: a clone copies the name and shape only.
        let inputs: HashMap<String, Tensor> = valid
            .inputs()
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let flow = self.flow(runtime, inputs, &job);
        let result = match job.deadline {
            None => flow.await,
            // The steps still running are dropped: a queued one never runs, and no
            // later step starts.
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), flow).await {
                Ok(result) => result,
                Err(_) => Err(self.timed_out(&job, "before every step finished")),
            },
        };
        counted.finish(&result, rows);
        result
    }

    fn timed_out(&self, job: &Job, when: &str) -> Error {
        Error::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "ensemble '{}': the request's timeout of {} ms passed {when}; the steps not \
                 started yet did not run",
                self.name,
                job.timeout.unwrap_or_default().as_millis()
            ),
        )
    }

    /// The dataflow: every step starts once the tensors it reads exist; returns the
    /// ensemble's outputs in config order.
    async fn flow(
        &self,
        runtime: &Runtime,
        mut tensors: HashMap<String, Tensor>,
        job: &Job,
    ) -> Result<Vec<Tensor>> {
        let mut tracker = self.graph.tracker();
        let mut running = FuturesUnordered::new();
        let mut ready = tracker.initial();
        loop {
            let (step, result) = match (ready.len(), running.is_empty()) {
                (0, true) => break,
                // The only step that can run (a chain's usual case): awaited here, with
                // no task of its own in the set of running steps.
                (1, true) => {
                    let step = ready.pop().expect("one ready step");
                    self.step(runtime, step, self.request(step, &tensors, job)?)
                        .await
                }
                _ => {
                    for step in ready.drain(..) {
                        running.push(self.step(runtime, step, self.request(step, &tensors, job)?));
                    }
                    running.next().await.expect("a step is running")
                }
            };
            for (name, tensor) in result? {
                tensors.insert(name, tensor);
            }
            ready.extend(tracker.complete(step));
        }
        self.outputs
            .iter()
            .map(|name| {
                tensors.remove(name).ok_or_else(|| {
                    Error::internal(format!(
                        "ensemble '{}': no step made output '{name}'",
                        self.name
                    ))
                })
            })
            .collect()
    }

    /// The request of one step: its inputs (the ensemble tensors it reads, shared,
    /// not copied), the outputs it writes, and the ensemble request's priority, the
    /// rest of its timeout and its cache control.
    fn request(
        &self,
        ix: usize,
        tensors: &HashMap<String, Tensor>,
        job: &Job,
    ) -> Result<InferRequest> {
        let step = &self.graph.scheduling.step[ix];
        let timeout = match job.deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out(
                        job,
                        &format!("before step {ix} (model '{}') started", step.model_name),
                    ));
                }
                Some(left)
            }
        };
        let inputs = step
            .input_map
            .iter()
            .map(|(input, tensor)| {
                let t = tensors.get(tensor).ok_or_else(|| {
                    Error::internal(format!(
                        "ensemble '{}': tensor '{tensor}' is missing for step {ix}",
                        self.name
                    ))
                })?;
                Ok(Tensor {
                    name: input.clone(),
                    datatype: t.datatype,
                    shape: t.shape.clone(),
                    data: t.data.clone(),
                })
            })
            .collect::<Result<Vec<Tensor>>>()?;
        Ok(InferRequest {
            id: job.id.clone(),
            inputs,
            outputs: step
                .output_map
                .keys()
                .map(|name| RequestedOutput { name: name.clone() })
                .collect(),
            priority: job.priority,
            timeout,
            cache: job.cache,
            // A step that is a variant family chooses by the remaining `timeout`.
            objective: Default::default(),
        })
    }

    /// Runs one step through its composing model's own path (lookup, scheduler,
    /// statistics); returns its outputs under their ensemble names, or the error
    /// naming the step.
    async fn step(
        &self,
        runtime: &Runtime,
        ix: usize,
        request: InferRequest,
    ) -> (usize, Result<Vec<(String, Tensor)>>) {
        let step = &self.graph.scheduling.step[ix];
        let label = || {
            format!(
                "ensemble '{}': step {ix} (model '{}')",
                self.name, step.model_name
            )
        };
        let _permit = match &self.limits[ix] {
            Some(limit) => match limit.enter(label).await {
                Ok(permit) => Some(permit),
                Err(e) => return (ix, Err(e)),
            },
            None => None,
        };
        let version = u64::try_from(step.model_version).ok();
        let result = runtime
            .infer(&step.model_name, version, request)
            .await
            .map_err(|e| e.context(label()))
            .map(|response| {
                response
                    .outputs
                    .into_iter()
                    .filter_map(|mut t| {
                        let name = step.output_map.get(&t.name)?.clone();
                        t.name.clone_from(&name);
                        Some((name, t))
                    })
                    .collect()
            });
        (ix, result)
    }
}

//! The scheduler: per model version, priority queues and a dynamic batcher in front of
//! a pool of instance threads that own the engines.
//!
//! Key decision: the batcher is a plain [`state::State`] (no threads, no clock: time
//! is passed in), shared under a mutex by the instance threads themselves. A free
//! instance asks the state for its next batch, by size, preferred size, delay or the
//! adaptive delay, and sleeps on a condition variable until the batch is due or a
//! request arrives. So a request crosses one thread boundary on its way in (the
//! async caller enqueues under the lock, which also rejects a full queue at once) and
//! one on its way out (a `oneshot`), and the next batch is formed by whichever
//! instance frees up first while the others keep running. Engine calls never run on
//! the async runtime. A request whose client went away is dropped before it reaches
//! the engine; every accepted request is answered, even when the engine fails or
//! panics, and on shutdown the queue is flushed before the threads stop.

pub mod config;
mod predict;
pub mod state;
pub mod stats;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sluice_core::{Error, ErrorKind, InlineRun, Instance, Result, Tensor, ValidRequest};
use tokio::sync::oneshot;

pub use config::{Batching, Delay, DynamicBatching, LevelPolicy, SchedulerConfig, TimeoutAction};
pub use predict::Outlook;
use state::{Entry, Pending, State};
pub use state::{JobOptions, Prediction};
pub use stats::{Histogram, HistogramSnapshot, Outcome, PoolStats};

type Reply = oneshot::Sender<Result<Vec<Tensor>>>;
/// A reply and what to send on it; `None` for a request whose client went away.
type Answer = Option<(Reply, Result<Vec<Tensor>>)>;

/// One request waiting for an instance.
struct Job {
    request: ValidRequest,
    reply: Reply,
}

impl Pending for Job {
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Answers released in arrival order (`preserve_ordering`).
#[derive(Default)]
struct InOrder {
    next: u64,
    ready: BTreeMap<u64, Answer>,
}

struct Shared {
    label: String,
    state: Mutex<State<Job>>,
    wake: Condvar,
    stats: Arc<PoolStats>,
    in_order: Option<Mutex<InOrder>>,
    /// Instance threads that have started and not yet exited.
    running: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State<Job>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers one request (in arrival order when asked); `None` releases a slot whose
    /// client went away.
    fn answer(&self, seq: u64, answer: Answer) {
        let Some(in_order) = &self.in_order else {
            if let Some((reply, result)) = answer {
                let _ = reply.send(result);
            }
            return;
        };
        let mut o = in_order.lock().unwrap_or_else(PoisonError::into_inner);
        o.ready.insert(seq, answer);
        while let Some(answer) = {
            let next = o.next;
            o.ready.remove(&next)
        } {
            o.next += 1;
            if let Some((reply, result)) = answer {
                let _ = reply.send(result);
            }
        }
    }
}

/// One instance thread of a pool.
struct Worker {
    /// Unique within the pool; part of the thread's name.
    id: usize,
    /// The intra-op threads its engine was built with.
    threads: usize,
    /// Set to retire it: it finishes the batch it runs and exits.
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The instance threads of a pool: the serving ones and the retired ones not yet
/// joined.
#[derive(Default)]
struct Workers {
    next_id: usize,
    serving: Vec<Worker>,
    retired: Vec<Worker>,
}

impl Workers {
    /// Joins the retired threads that have exited.
    fn reap(&mut self, label: &str) {
        let (done, busy): (Vec<Worker>, Vec<Worker>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|w| w.handle.is_finished());
        self.retired = busy;
        for w in done {
            if w.handle.join().is_err() {
                tracing::error!(model = %label, "an instance thread panicked");
            }
        }
    }
}

/// What a pool's instances are now (see [`InstancePool::instances`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceCounts {
    /// Instances that take new batches.
    pub serving: usize,
    /// Intra-op threads of each serving instance (the largest, should they differ).
    pub threads_per_instance: usize,
    /// Instance threads alive, including retired ones finishing their last batch.
    pub running: usize,
}

/// A pool of instance threads behind one scheduler.
///
/// Instances can be added and retired while it serves ([`InstancePool::add`],
/// [`InstancePool::retire`]): a new thread starts taking batches at once; a retired
/// one finishes the batch it runs (if any) and exits, and what is queued stays queued
/// for the others, so no request is dropped. A pool never retires its last instance.
pub struct InstancePool {
    shared: Arc<Shared>,
    workers: Mutex<Workers>,
    inline: Option<Inline>,
}

/// Runs of a model cheap enough to make on the caller's thread (see
/// [`InstancePool::with_inline`]).
struct Inline {
    run: Arc<dyn InlineRun>,
    /// Requests of more input bytes than this are queued as usual.
    max_bytes: usize,
}

impl InstancePool {
    /// Starts one named OS thread per instance (engines with one intra-op thread each).
    pub fn start(
        config: SchedulerConfig,
        instances: Vec<Box<dyn Instance>>,
    ) -> Result<InstancePool> {
        Self::start_with_threads(config, instances, 1)
    }

    /// Starts one named OS thread per instance, each engine built with `threads`
    /// intra-op threads (what [`InstancePool::instances`] reports).
    pub fn start_with_threads(
        config: SchedulerConfig,
        instances: Vec<Box<dyn Instance>>,
        threads: usize,
    ) -> Result<InstancePool> {
        let label = config.label.clone();
        let stats = Arc::new(PoolStats::new(config.max_batch_size));
        let in_order = config
            .preserve_ordering()
            .then(|| Mutex::new(InOrder::default()));
        let shared = Arc::new(Shared {
            label,
            state: Mutex::new(State::new(config, instances.len())),
            wake: Condvar::new(),
            stats,
            in_order,
            running: AtomicUsize::new(0),
        });
        let pool = InstancePool {
            shared,
            workers: Mutex::new(Workers::default()),
            inline: None,
        };
        pool.add(instances, threads)?;
        Ok(pool)
    }

    /// Runs requests of at most `max_bytes` input bytes with `run` on the caller's
    /// thread instead of queueing them for an instance: no queue, no batch, no
    /// hand-over between threads (two wake-ups that cost more than a run of a
    /// microsecond step such as a softmax). Such a run is counted in the statistics
    /// as a batch of one that waited no time; larger requests still queue, so a big
    /// tensor never holds the caller's (async) thread for long.
    #[must_use]
    pub fn with_inline(mut self, run: Arc<dyn InlineRun>, max_bytes: usize) -> InstancePool {
        self.inline = Some(Inline { run, max_bytes });
        self
    }

    /// Whether requests of `bytes` input bytes run on the caller's thread.
    pub fn runs_inline(&self, bytes: usize) -> bool {
        self.inline.as_ref().is_some_and(|i| bytes <= i.max_bytes)
    }

    fn workers(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread for each of `instances` (engines with `threads` intra-op
    /// threads each); they take batches at once.
    pub fn add(&self, instances: Vec<Box<dyn Instance>>, threads: usize) -> Result<()> {
        let mut workers = self.workers();
        workers.reap(&self.shared.label);
        for instance in instances {
            let id = workers.next_id;
            let stop = Arc::new(AtomicBool::new(false));
            let shared = Arc::clone(&self.shared);
            let flag = Arc::clone(&stop);
            shared.running.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-{}-{id}", self.shared.label))
                .spawn(move || {
                    instance_loop(&shared, instance, &flag);
                    shared.running.fetch_sub(1, Ordering::AcqRel);
                });
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    self.shared.running.fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::internal(format!(
                        "cannot start an instance thread: {e}"
                    )));
                }
            };
            workers.next_id += 1;
            workers.serving.push(Worker {
                id,
                threads: threads.max(1),
                stop,
                handle,
            });
        }
        let serving = workers.serving.len();
        drop(workers);
        self.shared.lock().set_instances(serving);
        Ok(())
    }

    /// Retires up to `n` serving instances, those whose engines do not have `keep`
    /// intra-op threads first, then the newest; never the last one. Each finishes the
    /// batch it runs and exits; returns how many were retired. Does not wait for them
    /// (their threads are joined by a later change or on shutdown).
    pub fn retire(&self, n: usize, keep: Option<usize>) -> usize {
        let mut workers = self.workers();
        workers.reap(&self.shared.label);
        let n = n.min(workers.serving.len().saturating_sub(1));
        let mut retired = 0;
        while retired < n {
            let ix = keep
                .and_then(|k| workers.serving.iter().rposition(|w| w.threads != k))
                .unwrap_or(workers.serving.len() - 1);
            let w = workers.serving.remove(ix);
            w.stop.store(true, Ordering::Release);
            tracing::debug!(model = %self.shared.label, instance = w.id, "instance retired");
            workers.retired.push(w);
            retired += 1;
        }
        let serving = workers.serving.len();
        drop(workers);
        {
            // Under the lock: a thread about to wait sees its flag or gets the notice.
            let mut state = self.shared.lock();
            state.set_instances(serving);
            self.shared.wake.notify_all();
        }
        retired
    }

    /// The serving instances, their intra-op threads, and the threads alive.
    pub fn instances(&self) -> InstanceCounts {
        let workers = self.workers();
        InstanceCounts {
            serving: workers.serving.len(),
            threads_per_instance: workers.serving.iter().map(|w| w.threads).max().unwrap_or(0),
            running: self.shared.running.load(Ordering::Acquire),
        }
    }

    /// Serving instances whose engines were built with `threads` intra-op threads.
    pub fn count_with_threads(&self, threads: usize) -> usize {
        self.workers()
            .serving
            .iter()
            .filter(|w| w.threads == threads)
            .count()
    }

    /// The learned engine latency of a batch of `rows` rows, if any run was seen.
    pub fn latency_estimate(&self, rows: usize) -> Option<Duration> {
        self.shared.lock().latency_estimate(rows)
    }

    /// The queue timeout of the default priority level, if it has one.
    pub fn default_timeout(&self) -> Option<Duration> {
        let state = self.shared.lock();
        let c = state.config();
        c.levels
            .get(c.default_level.saturating_sub(1))
            .and_then(|l| l.default_timeout)
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.shared.stats
    }

    /// Requests waiting in the queue now (not counting those whose caller is gone).
    pub fn queue_len(&self) -> usize {
        self.shared.lock().waiting()
    }

    /// Queues a request and waits for its outputs (all of the model's outputs, in config
    /// order, for this request's rows). Never blocks the async runtime: a full queue or a
    /// deadline that cannot be met is answered at once.
    pub async fn infer(&self, request: ValidRequest, options: JobOptions) -> Result<Vec<Tensor>> {
        let tracker = Tracker::start(&self.shared.stats);
        let bytes = || request.inputs().iter().map(|t| t.data.len()).sum::<usize>();
        let result = match &self.inline {
            Some(inline) if bytes() <= inline.max_bytes => self.run_inline(&*inline.run, request),
            _ => self.queue_and_wait(request, options).await,
        };
        tracker.finish(Outcome::of(&result));
        result
    }

    /// One run on the caller's thread (see [`InstancePool::with_inline`]).
    fn run_inline(&self, run: &dyn InlineRun, request: ValidRequest) -> Result<Vec<Tensor>> {
        if self.shared.lock().is_closing() {
            return Err(Error::unavailable(format!(
                "model {} is shutting down",
                self.shared.label
            )));
        }
        let rows = request.rows();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run.run(request.into_inputs())))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the engine panicked while running this request",
                ))
            });
        let took = started.elapsed();
        // Learned like a queued run's, for predictions and `latency_estimate`.
        self.shared.lock().record(rows, took);
        self.shared.stats.record_run(
            rows,
            &[Duration::ZERO],
            [Duration::ZERO, took, Duration::ZERO],
        );
        if let Err(error) = &result {
            tracing::warn!(model = %self.shared.label, %error, "inline run failed");
        }
        result
    }

    async fn queue_and_wait(
        &self,
        request: ValidRequest,
        options: JobOptions,
    ) -> Result<Vec<Tensor>> {
        let (reply, answer) = oneshot::channel();
        let rows = request.rows();
        let enqueued = Instant::now();
        let deadline = {
            let mut state = self.shared.lock();
            if state.is_closing() {
                return Err(Error::unavailable(format!(
                    "model {} is shutting down",
                    self.shared.label
                )));
            }
            match state.enqueue(Job { request, reply }, rows, options, enqueued) {
                Ok((seq, deadline)) => deadline.map(|d| (seq, d)),
                Err((_, error, reason)) => {
                    if reason == state::Rejection::Deadline {
                        self.shared
                            .stats
                            .rejected_early
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(error);
                }
            }
        };
        self.shared.wake.notify_one();
        let stopped = || {
            Err(Error::internal(format!(
                "model {} stopped before answering",
                self.shared.label
            )))
        };
        match deadline {
            None => answer.await.unwrap_or_else(|_| stopped()),
            // The timeout bounds the time in the queue (Triton's semantics): the client
            // hears of it on time even while every instance is busy, and dropping
            // `answer` under the state lock marks the queued job cancelled, so it never
            // runs. A job an instance has already taken runs to its answer.
            Some((seq, deadline)) => {
                let mut answer = Some(answer);
                if let Some(waiting) = answer.as_mut() {
                    if let Ok(result) = tokio::time::timeout_at(deadline.into(), waiting).await {
                        return result.unwrap_or_else(|_| stopped());
                    }
                }
                {
                    // Still queued (not taken by an instance): drop it unrun.
                    let state = self.shared.lock();
                    if state.is_queued(seq) {
                        answer = None;
                    }
                }
                match answer {
                    Some(running) => running.await.unwrap_or_else(|_| stopped()),
                    None => Err(timed_out(
                        &self.shared.label,
                        deadline.saturating_duration_since(enqueued),
                    )),
                }
            }
        }
    }

    /// Stops taking requests, runs what is queued, and joins the instance threads.
    pub fn shutdown(&mut self) {
        self.shared.lock().close();
        self.shared.wake.notify_all();
        let all: Vec<Worker> = {
            let mut workers = self.workers();
            let w = &mut *workers;
            w.serving.drain(..).chain(w.retired.drain(..)).collect()
        };
        for w in all {
            if w.handle.join().is_err() {
                tracing::error!(model = %self.shared.label, "an instance thread panicked");
            }
        }
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for the next batch; `None` once closed and empty, or once this instance is
/// retired (`stop`).
fn next_batch(shared: &Shared, stop: &AtomicBool) -> Option<Vec<Entry<Job>>> {
    let mut state = shared.lock();
    loop {
        if stop.load(Ordering::Acquire) {
            // What is queued stays for the others; let one of them look at it.
            if !state.is_empty() {
                shared.wake.notify_one();
            }
            return None;
        }
        let now = Instant::now();
        let step = state.next(now);
        // Their callers have gone (and counted them): release their slots.
        for e in step.cancelled {
            shared.answer(e.seq, None);
        }
        for e in step.expired {
            let error = timed_out(&shared.label, now.saturating_duration_since(e.enqueued));
            shared.answer(e.seq, Some((e.payload.reply, Err(error))));
        }
        if let Some(batch) = step.batch {
            if !state.is_empty() {
                // More work: let another free instance look at it.
                shared.wake.notify_one();
            }
            return Some(batch);
        }
        if state.is_closing() && state.is_empty() {
            return None;
        }
        state = match step.wake_at {
            Some(at) => {
                let timeout = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                shared
                    .wake
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

fn instance_loop(shared: &Shared, mut instance: Box<dyn Instance>, stop: &AtomicBool) {
    while let Some(batch) = next_batch(shared, stop) {
        let started = Instant::now();
        let rows: usize = batch.iter().map(|e| e.rows).sum();
        let queued: Vec<Duration> = batch
            .iter()
            .map(|e| started.saturating_duration_since(e.enqueued))
            .collect();
        let mut slots = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for e in batch {
            slots.push((e.seq, e.payload.reply));
            requests.push(e.payload.request);
        }
        let mut phases = [Duration::ZERO; 3];
        let result = catch_unwind(AssertUnwindSafe(|| {
            execute(instance.as_mut(), &requests, &mut phases)
        }))
        .unwrap_or_else(|_| {
            Err(Error::internal(
                "the engine panicked while running this batch",
            ))
        });
        {
            let mut state = shared.lock();
            state.record(rows, started.elapsed());
            state.ended(Instant::now());
        }
        shared.stats.record_run(rows, &queued, phases);
        match result {
            Ok(per_request) => {
                for ((seq, reply), outputs) in slots.into_iter().zip(per_request) {
                    shared.answer(seq, Some((reply, Ok(outputs))));
                }
            }
            Err(error) => {
                tracing::warn!(model = %shared.label, %error, "batch failed");
                for (seq, reply) in slots {
                    shared.answer(seq, Some((reply, Err(error.clone()))));
                }
            }
        }
    }
}

/// Counts a request in flight until it ends; one dropped before it ends (its client
/// went away) counts as cancelled.
struct Tracker<'a> {
    stats: &'a PoolStats,
    started: Instant,
    done: bool,
}

impl<'a> Tracker<'a> {
    fn start(stats: &'a PoolStats) -> Self {
        stats.start();
        Tracker {
            stats,
            started: Instant::now(),
            done: false,
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.stats.finish(outcome, self.started.elapsed());
    }
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats
                .finish(Outcome::Cancelled, self.started.elapsed());
        }
    }
}

fn timed_out(label: &str, waited: Duration) -> Error {
    Error::new(
        ErrorKind::DeadlineExceeded,
        format!(
            "the request timed out after {} µs in the queue of model {label}",
            waited.as_micros()
        ),
    )
}

/// Gathers the requests into one batch, runs it, and splits the outputs per request;
/// `phases` receives the time of each of the three steps reached.
fn execute(
    instance: &mut dyn Instance,
    requests: &[ValidRequest],
    phases: &mut [Duration; 3],
) -> Result<Vec<Vec<Tensor>>> {
    let t0 = Instant::now();
    let input_count = requests[0].inputs().len();
    let inputs = (0..input_count)
        .map(|i| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r.inputs()[i]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect::<Result<Vec<_>>>()?;
    let t1 = Instant::now();
    phases[0] = t1 - t0;
    let outputs = instance.run(inputs);
    let t2 = Instant::now();
    phases[1] = t2 - t1;
    let outputs = outputs?;
    if requests.len() == 1 {
        return Ok(vec![outputs]);
    }
    let rows: Vec<usize> = requests.iter().map(ValidRequest::rows).collect();
    let mut per_request: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); requests.len()];
    for output in &outputs {
        for (slot, part) in per_request.iter_mut().zip(output.split_rows(&rows)?) {
            slot.push(part);
        }
    }
    phases[2] = t2.elapsed();
    Ok(per_request)
}

#[cfg(test)]
mod tests;

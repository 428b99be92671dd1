//! The scheduler: per model version, a bounded queue feeding a pool of instance
//! threads that own the engines.
//!
//! Key decision: engine calls never run on the async runtime. The async side hands
//! a [`Job`] to a bounded queue with `try_send`, so it never blocks and a full queue
//! is rejected at once; each instance is a named OS thread that takes a batch of
//! jobs, concatenates their inputs along dimension 0, runs the engine once, splits
//! the outputs back per request and answers each job over its own `oneshot`. A job
//! whose client went away (its receiver dropped) is skipped before it reaches the
//! engine. Every accepted job is answered, even when the engine fails or panics.
//! Today a batch holds one job; the dynamic batcher will form bigger ones in front
//! of the same instance API.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use sluice_core::{Error, ErrorKind, Instance, Result, Tensor, ValidRequest};
use tokio::sync::oneshot;

/// How a pool is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `model:version`, used in thread names, logs and errors.
    pub label: String,
    /// Jobs that may wait in the queue before new ones are rejected.
    pub queue_capacity: usize,
}

/// Counters of one pool, readable while it serves.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    /// Engine runs (batches) and the requests they carried.
    pub executions: AtomicU64,
    pub inferences: AtomicU64,
    pub queue_ns: AtomicU64,
    pub compute_ns: AtomicU64,
}

/// One request waiting for an instance.
struct Job {
    request: ValidRequest,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Tensor>>>,
}

/// A pool of instance threads behind one bounded queue.
pub struct InstancePool {
    label: String,
    sender: Option<Sender<Vec<Job>>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<PoolStats>,
}

impl InstancePool {
    /// Starts one named OS thread per instance.
    pub fn start(config: &PoolConfig, instances: Vec<Box<dyn Instance>>) -> Result<InstancePool> {
        let (sender, receiver) = bounded::<Vec<Job>>(config.queue_capacity.max(1));
        let stats = Arc::new(PoolStats::default());
        let mut threads = Vec::with_capacity(instances.len());
        for (ix, instance) in instances.into_iter().enumerate() {
            let receiver = receiver.clone();
            let stats = Arc::clone(&stats);
            let label = config.label.clone();
            let name = format!("sluice-{}-{ix}", config.label);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || instance_loop(&label, instance, &receiver, &stats))
                .map_err(|e| Error::internal(format!("cannot start an instance thread: {e}")))?;
            threads.push(handle);
        }
        Ok(InstancePool {
            label: config.label.clone(),
            sender: Some(sender),
            threads,
            stats,
        })
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Queues a request and waits for its outputs (all of the model's outputs, in
    /// config order, for this request's rows). Never blocks the async runtime.
    pub async fn infer(&self, request: ValidRequest) -> Result<Vec<Tensor>> {
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| Error::unavailable(format!("model {} is shutting down", self.label)))?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            enqueued: Instant::now(),
            reply,
        };
        match sender.try_send(vec![job]) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::ResourceExhausted,
                    format!("the queue of model {} is full; retry later", self.label),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::unavailable(format!(
                    "model {} is shutting down",
                    self.label
                )))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::internal(format!(
                "model {} stopped before answering",
                self.label
            )))
        })
    }

    /// Stops taking requests, lets the instances finish what is queued, and joins them.
    pub fn shutdown(&mut self) {
        self.sender = None;
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!(model = %self.label, "an instance thread panicked");
            }
        }
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn instance_loop(
    label: &str,
    mut instance: Box<dyn Instance>,
    queue: &Receiver<Vec<Job>>,
    stats: &PoolStats,
) {
    while let Ok(batch) = queue.recv() {
        let (live, gone): (Vec<Job>, Vec<Job>) =
            batch.into_iter().partition(|j| !j.reply.is_closed());
        stats
            .cancelled
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        if live.is_empty() {
            continue;
        }
        let started = Instant::now();
        for job in &live {
            stats
                .queue_ns
                .fetch_add(nanos(started - job.enqueued), Ordering::Relaxed);
        }
        let mut replies = Vec::with_capacity(live.len());
        let mut requests = Vec::with_capacity(live.len());
        for job in live {
            replies.push(job.reply);
            requests.push(job.request);
        }
        let result = catch_unwind(AssertUnwindSafe(|| execute(instance.as_mut(), &requests)))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the engine panicked while running this batch",
                ))
            });
        stats
            .compute_ns
            .fetch_add(nanos(started.elapsed()), Ordering::Relaxed);
        stats.executions.fetch_add(1, Ordering::Relaxed);
        stats
            .inferences
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        match result {
            Ok(per_request) => {
                for (reply, outputs) in replies.into_iter().zip(per_request) {
                    stats.success.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(outputs));
                }
            }
            Err(error) => {
                tracing::warn!(model = label, %error, "batch failed");
                for reply in replies {
                    stats.failure.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Gathers the requests into one batch, runs it, and splits the outputs per request.
fn execute(instance: &mut dyn Instance, requests: &[ValidRequest]) -> Result<Vec<Vec<Tensor>>> {
    let input_count = requests[0].inputs.len();
    let inputs = (0..input_count)
        .map(|i| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r.inputs[i]).collect();
            Tensor::concat_rows(&parts)
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = instance.run(inputs)?;
    if requests.len() == 1 {
        return Ok(vec![outputs]);
    }
    let rows: Vec<usize> = requests.iter().map(|r| r.rows).collect();
    let mut per_request: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); requests.len()];
    for output in &outputs {
        for (slot, part) in per_request.iter_mut().zip(output.split_rows(&rows)?) {
            slot.push(part);
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use sluice_core::DataType;

    use super::*;

    /// Doubles its one f32 input; fails on an empty batch marker; panics on NaN.
    struct Doubler {
        runs: Arc<Mutex<Vec<usize>>>,
        entered: Arc<AtomicU64>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Instance for Doubler {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            let x = &inputs[0];
            let values: Vec<f32> = x
                .data
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            self.runs.lock().unwrap().push(x.rows());
            assert!(!values.iter().any(|v| v.is_nan()), "NaN input");
            if values.iter().any(|v| *v < 0.0) {
                return Err(Error::internal("negative input"));
            }
            let data: Vec<u8> = values
                .iter()
                .flat_map(|v| (v * 2.0).to_le_bytes())
                .collect();
            Ok(vec![Tensor::new(
                "y",
                DataType::F32,
                x.shape.clone(),
                Bytes::from(data),
            )?])
        }
    }

    fn request(values: &[f32]) -> ValidRequest {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let x = Tensor::new("x", DataType::F32, vec![values.len(), 1], Bytes::from(data)).unwrap();
        ValidRequest {
            id: None,
            inputs: vec![x],
            outputs: vec![0],
            rows: values.len(),
        }
    }

    struct Probe {
        runs: Arc<Mutex<Vec<usize>>>,
        entered: Arc<AtomicU64>,
    }

    fn pool(capacity: usize, gate: Option<std::sync::mpsc::Receiver<()>>) -> (InstancePool, Probe) {
        let probe = Probe {
            runs: Arc::default(),
            entered: Arc::default(),
        };
        let instance = Box::new(Doubler {
            runs: Arc::clone(&probe.runs),
            entered: Arc::clone(&probe.entered),
            gate,
        });
        let config = PoolConfig {
            label: "m:1".into(),
            queue_capacity: capacity,
        };
        (InstancePool::start(&config, vec![instance]).unwrap(), probe)
    }

    async fn wait_for(mut condition: impl FnMut() -> bool) {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn answers_each_request_with_its_outputs() {
        let (pool, _) = pool(4, None);
        let out = pool.infer(request(&[1.0, 2.5])).await.unwrap();
        assert_eq!(out[0].shape, vec![2, 1]);
        assert_eq!(
            &out[0].data[..],
            &[2.0f32.to_le_bytes(), 5.0f32.to_le_bytes()].concat()[..]
        );
    }

    #[tokio::test]
    async fn engine_errors_and_panics_become_errors_and_the_pool_keeps_serving() {
        let (pool, _) = pool(4, None);
        let err = pool.infer(request(&[-1.0])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let err = pool.infer(request(&[f32::NAN])).await.unwrap_err();
        assert!(err.message().contains("panicked"), "{err}");
        assert!(pool.infer(request(&[3.0])).await.is_ok());
        assert_eq!(pool.stats().failure.load(Ordering::Relaxed), 2);
        assert_eq!(pool.stats().success.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn execute_splits_a_batch_per_request() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let mut d = Doubler {
            runs: Arc::clone(&runs),
            entered: Arc::default(),
            gate: None,
        };
        let out = execute(&mut d, &[request(&[1.0]), request(&[2.0, 3.0])]).unwrap();
        assert_eq!(*runs.lock().unwrap(), vec![3]);
        assert_eq!(out[0][0].shape, vec![1, 1]);
        assert_eq!(out[1][0].shape, vec![2, 1]);
        assert_eq!(
            &out[1][0].data[..],
            &[4.0f32.to_le_bytes(), 6.0f32.to_le_bytes()].concat()[..]
        );
    }

    #[tokio::test]
    async fn a_full_queue_rejects_at_once_and_cancelled_jobs_never_run() {
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let (pool, probe) = pool(1, Some(gate_rx));
        let pool = Arc::new(pool);
        let infer = |values: &'static [f32]| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.infer(request(values)).await })
        };
        // The first job occupies the instance (blocked on the gate)...
        let first = infer(&[1.0]);
        wait_for(|| probe.entered.load(Ordering::SeqCst) == 1).await;
        // ...the second fills the queue...
        let second = infer(&[2.0]);
        wait_for(|| pool.sender.as_ref().unwrap().len() == 1).await;
        // ...so the third is rejected at once.
        let err = pool.infer(request(&[3.0])).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        // Cancel the queued second request, then release the engine twice.
        second.abort();
        assert!(second.await.unwrap_err().is_cancelled());
        gate_tx.send(()).unwrap();
        assert!(first.await.unwrap().is_ok());
        gate_tx.send(()).unwrap();
        assert!(pool.infer(request(&[4.0])).await.is_ok());
        assert_eq!(
            *probe.runs.lock().unwrap(),
            vec![1, 1],
            "the cancelled job must not run"
        );
        assert_eq!(pool.stats().cancelled.load(Ordering::Relaxed), 1);
        assert_eq!(pool.stats().rejected.load(Ordering::Relaxed), 1);
    }
}

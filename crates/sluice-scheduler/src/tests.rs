//! The pool with a stand-in engine: answers, failures, panics, the queue bound,
//! cancellation, batching of concurrent requests, and ordering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::{DataType, Error, ErrorKind, Instance, Result, Tensor, ValidRequest};

use super::*;

/// Doubles its one f32 input; fails on a negative value; panics on NaN; optionally
/// blocks on a gate and sleeps per run.
struct Doubler {
    runs: Arc<Mutex<Vec<usize>>>,
    entered: Arc<AtomicU64>,
    gate: Option<std::sync::mpsc::Receiver<()>>,
    sleep: Duration,
    slow_ones: bool,
}

impl Instance for Doubler {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        let x = &inputs[0];
        if self.slow_ones && x.data[..4] == 1.0f32.to_le_bytes() {
            // A run whose first value is 1.0 takes 150 ms (ordering tests).
            std::thread::sleep(Duration::from_millis(150));
        } else {
            std::thread::sleep(self.sleep);
        }
        self.runs.lock().unwrap().push(x.rows());
        double(x)
    }
}

/// The doubling of [`Doubler`]: fails on a negative value, panics on NaN.
fn double(x: &Tensor) -> Result<Vec<Tensor>> {
    let values: Vec<f32> = x
        .data
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
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

/// A request of `values.len()` rows for the echo model (`x` → `y`, one f32 per row),
/// made the only way there is: validated against the model's signature.
fn request(values: &[f32]) -> ValidRequest {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let x = Tensor::new("x", DataType::F32, vec![values.len(), 1], Bytes::from(data)).unwrap();
    let signature = sluice_core::ModelSignature::from_config(&sluice_core::ModelConfig {
        name: "echo".into(),
        max_batch_size: 1 << 16,
        input: vec![sluice_core::TensorConfig::new("x", DataType::F32, vec![1])],
        output: vec![sluice_core::TensorConfig::new("y", DataType::F32, vec![1])],
        ..sluice_core::ModelConfig::default()
    });
    let request = sluice_core::InferRequest {
        inputs: vec![x],
        ..sluice_core::InferRequest::default()
    };
    let valid = signature.validate(request).unwrap();
    assert_eq!(valid.rows(), values.len());
    valid
}

fn values(t: &Tensor) -> Vec<f32> {
    t.data
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[derive(Clone, Default)]
struct Probe {
    runs: Arc<Mutex<Vec<usize>>>,
    entered: Arc<AtomicU64>,
}

fn pool_with(
    config: SchedulerConfig,
    gates: Vec<Option<std::sync::mpsc::Receiver<()>>>,
    sleep: Duration,
) -> (InstancePool, Probe) {
    let probe = Probe::default();
    let instances: Vec<Box<dyn Instance>> = gates
        .into_iter()
        .map(|gate| {
            Box::new(Doubler {
                runs: Arc::clone(&probe.runs),
                entered: Arc::clone(&probe.entered),
                gate,
                sleep,
                slow_ones: false,
            }) as Box<dyn Instance>
        })
        .collect();
    (InstancePool::start(config, instances).unwrap(), probe)
}

fn pool(capacity: usize, gate: Option<std::sync::mpsc::Receiver<()>>) -> (InstancePool, Probe) {
    pool_with(
        SchedulerConfig::simple("m:1", 8, capacity),
        vec![gate],
        Duration::ZERO,
    )
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const NO_OPTIONS: JobOptions = JobOptions {
    priority: 0,
    timeout: None,
};

/// A negative value fails the engine and a NaN panics it: both are errors to the caller.
async fn assert_failures_are_errors(pool: &InstancePool) {
    let err = pool.infer(request(&[-1.0]), NO_OPTIONS).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    let err = pool
        .infer(request(&[f32::NAN]), NO_OPTIONS)
        .await
        .unwrap_err();
    assert!(err.message().contains("panicked"), "{err}");
}

#[tokio::test]
async fn answers_each_request_with_its_outputs() {
    let (pool, _) = pool(4, None);
    let out = pool.infer(request(&[1.0, 2.5]), NO_OPTIONS).await.unwrap();
    assert_eq!(out[0].shape, vec![2, 1]);
    assert_eq!(values(&out[0]), vec![2.0, 5.0]);
}

#[tokio::test]
async fn engine_errors_and_panics_become_errors_and_the_pool_keeps_serving() {
    let (pool, _) = pool(4, None);
    assert_failures_are_errors(&pool).await;
    assert!(pool.infer(request(&[3.0]), NO_OPTIONS).await.is_ok());
    let stats = pool.stats();
    assert_eq!(stats.outcome(Outcome::Backend), 2);
    assert_eq!(stats.outcome(Outcome::Success), 1);
    assert_eq!(stats.success.get().0, 1);
    assert_eq!(stats.fail.get().0, 2);
    assert_eq!(stats.executions.load(Ordering::Relaxed), 3);
    assert_eq!(stats.in_flight(), 0);
}

#[test]
fn execute_splits_a_batch_per_request() {
    let probe = Probe::default();
    let mut d = Doubler {
        runs: Arc::clone(&probe.runs),
        entered: Arc::default(),
        gate: None,
        sleep: Duration::ZERO,
        slow_ones: false,
    };
    let mut phases = [Duration::ZERO; 3];
    let out = execute(
        &mut d,
        &[request(&[1.0]), request(&[2.0, 3.0])],
        &mut phases,
    )
    .unwrap();
    assert!(phases[1] > Duration::ZERO, "the engine run is timed");
    assert_eq!(*probe.runs.lock().unwrap(), vec![3]);
    assert_eq!(values(&out[0][0]), vec![2.0]);
    assert_eq!(values(&out[1][0]), vec![4.0, 6.0]);
}

#[tokio::test]
async fn a_full_queue_rejects_at_once_and_cancelled_jobs_never_run() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let (pool, probe) = pool(1, Some(gate_rx));
    let pool = Arc::new(pool);
    let infer = |values: &'static [f32]| {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.infer(request(values), NO_OPTIONS).await })
    };
    // The first job occupies the instance (blocked on the gate)...
    let first = infer(&[1.0]);
    wait_for(|| probe.entered.load(Ordering::SeqCst) == 1).await;
    // ...the second fills the queue...
    let second = infer(&[2.0]);
    wait_for(|| pool.queue_len() == 1).await;
    // ...so the third is rejected at once.
    let err = pool.infer(request(&[3.0]), NO_OPTIONS).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    // Cancel the queued second request, then release the engine twice.
    second.abort();
    assert!(second.await.unwrap_err().is_cancelled());
    gate_tx.send(()).unwrap();
    assert!(first.await.unwrap().is_ok());
    gate_tx.send(()).unwrap();
    assert!(pool.infer(request(&[4.0]), NO_OPTIONS).await.is_ok());
    assert_eq!(
        *probe.runs.lock().unwrap(),
        vec![1, 1],
        "the cancelled job must not run"
    );
    let stats = pool.stats();
    assert_eq!(stats.outcome(Outcome::Cancelled), 1);
    assert_eq!(stats.outcome(Outcome::Rejected), 1);
    assert_eq!(stats.outcome(Outcome::Success), 2);
    assert_eq!(stats.inferences.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.queue.get().0,
        2,
        "queue time of executed requests only"
    );
    assert_eq!(stats.in_flight(), 0);
}

fn batching(max: usize, delay: Delay, preserve_ordering: bool) -> SchedulerConfig {
    SchedulerConfig {
        label: "m:1".into(),
        max_batch_size: max,
        batching: Batching::Dynamic(DynamicBatching {
            preferred: vec![],
            delay,
            preserve_ordering,
        }),
        levels: vec![LevelPolicy::reject_after(None, 1000)],
        default_level: 1,
        early_rejection: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_get_their_own_rows() {
    let (pool, probe) = pool_with(
        batching(16, Delay::Static(Duration::from_millis(20)), false),
        vec![None],
        Duration::from_millis(5),
    );
    let pool = Arc::new(pool);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let rows: Vec<f32> = (0..=(i % 3)).map(|r| (i * 10 + r) as f32).collect();
                let out = pool.infer(request(&rows), NO_OPTIONS).await.unwrap();
                (rows, values(&out[0]))
            })
        })
        .collect();
    for t in tasks {
        let (sent, got) = t.await.unwrap();
        let expected: Vec<f32> = sent.iter().map(|v| v * 2.0).collect();
        assert_eq!(got, expected);
    }
    let runs = probe.runs.lock().unwrap().clone();
    assert!(runs.len() < 32, "requests were batched: {runs:?}");
    assert!(runs.iter().all(|&r| r <= 16), "no batch over max: {runs:?}");
    let total: u64 = pool
        .stats()
        .batch_size_counts()
        .iter()
        .map(|(rows, n)| *rows as u64 * n)
        .sum();
    assert_eq!(total, (0..32).map(|i| (i % 3) + 1).sum::<u64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_request_times_out_without_running() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let (pool, probe) = pool_with(
        batching(1, Delay::Static(Duration::ZERO), false),
        vec![Some(gate_rx)],
        Duration::ZERO,
    );
    let pool = Arc::new(pool);
    let first = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.infer(request(&[1.0]), NO_OPTIONS).await })
    };
    wait_for(|| probe.entered.load(Ordering::SeqCst) == 1).await;
    let options = JobOptions {
        priority: 0,
        timeout: Some(Duration::from_millis(30)),
    };
    let timed = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.infer(request(&[2.0]), options).await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    gate_tx.send(()).unwrap();
    assert!(first.await.unwrap().is_ok());
    let err = timed.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert_eq!(
        *probe.runs.lock().unwrap(),
        vec![1],
        "the timed-out request never ran"
    );
    assert_eq!(pool.stats().outcome(Outcome::Timeout), 1);
    assert_eq!(pool.stats().outcome(Outcome::Cancelled), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preserve_ordering_answers_in_arrival_order_across_instances() {
    // Two instances; the first request takes 150 ms, the second none, so the second
    // finishes first on the other instance and its answer must wait.
    let probe = Probe::default();
    let instances: Vec<Box<dyn Instance>> = (0..2)
        .map(|_| {
            Box::new(Doubler {
                runs: Arc::clone(&probe.runs),
                entered: Arc::clone(&probe.entered),
                gate: None,
                sleep: Duration::ZERO,
                slow_ones: true,
            }) as Box<dyn Instance>
        })
        .collect();
    let config = batching(1, Delay::Static(Duration::ZERO), true);
    let pool = Arc::new(InstancePool::start(config, instances).unwrap());
    let answered = Arc::new(Mutex::new(Vec::new()));
    let spawn = |v: f32| {
        let pool = Arc::clone(&pool);
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let out = pool.infer(request(&[v]), NO_OPTIONS).await;
            answered.lock().unwrap().push(v);
            out
        })
    };
    let a = spawn(1.0);
    wait_for(|| probe.entered.load(Ordering::SeqCst) >= 1).await;
    let b = spawn(2.0);
    // b ran (its run is recorded) while a is still running...
    wait_for(|| probe.runs.lock().unwrap().len() == 1).await;
    assert_eq!(*probe.runs.lock().unwrap(), vec![1]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ...yet b's answer waits for a's.
    assert!(
        answered.lock().unwrap().is_empty(),
        "the second answer waits for the first"
    );
    assert_eq!(values(&a.await.unwrap().unwrap()[0]), vec![2.0]);
    assert_eq!(values(&b.await.unwrap().unwrap()[0]), vec![4.0]);
}

#[tokio::test]
async fn shutdown_runs_what_is_queued() {
    let (mut pool, probe) = pool_with(
        batching(8, Delay::Static(Duration::from_secs(60)), false),
        vec![None],
        Duration::ZERO,
    );
    let pool_ref: &'static InstancePool = Box::leak(Box::new(InstancePool {
        shared: Arc::clone(&pool.shared),
        workers: Mutex::default(),
        inline: None,
    }));
    let pending = tokio::spawn(pool_ref.infer(request(&[5.0]), NO_OPTIONS));
    wait_for(|| pool.queue_len() == 1).await;
    tokio::task::spawn_blocking(move || {
        pool.shutdown();
        pool
    })
    .await
    .unwrap();
    assert_eq!(values(&pending.await.unwrap().unwrap()[0]), vec![10.0]);
    assert_eq!(*probe.runs.lock().unwrap(), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timeout_bounds_the_queue_not_a_run_that_has_started() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let (pool, probe) = pool(4, Some(gate_rx));
    let pool = Arc::new(pool);
    let options = JobOptions {
        priority: 0,
        timeout: Some(Duration::from_millis(30)),
    };
    let running = {
        let pool = Arc::clone(&pool);
        tokio::spawn(async move { pool.infer(request(&[1.5]), options).await })
    };
    // It is in the engine (blocked on the gate) when its timeout passes...
    wait_for(|| probe.entered.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    gate_tx.send(()).unwrap();
    // ...and still gets its answer: the engine's work is not thrown away.
    let out = running.await.unwrap().unwrap();
    assert_eq!(values(&out[0]), vec![3.0]);
    assert_eq!(pool.stats().outcome(Outcome::Success), 1);
    assert_eq!(pool.stats().outcome(Outcome::Timeout), 0);
}

/// A retired instance finishes the batch it runs; the queue stays for the others;
/// the last instance is never retired; new instances take batches at once.
#[tokio::test]
async fn instances_join_and_retire_without_dropping_requests() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (pool, probe) = pool_with(
        SchedulerConfig::simple("m:1", 1, 64),
        vec![Some(rx)],
        Duration::ZERO,
    );
    let pool = Arc::new(pool);
    let asks: Vec<_> = (0..6)
        .map(|i| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.infer(request(&[i as f32]), NO_OPTIONS).await })
        })
        .collect();
    // One runs (held by its gate), five wait.
    wait_for(|| probe.entered.load(Ordering::SeqCst) == 1 && pool.queue_len() == 5).await;
    let free = |p: &Probe| Doubler {
        runs: Arc::clone(&p.runs),
        entered: Arc::clone(&p.entered),
        gate: None,
        sleep: Duration::ZERO,
        slow_ones: false,
    };
    pool.add(vec![Box::new(free(&probe)), Box::new(free(&probe))], 2)
        .unwrap();
    assert_eq!(pool.instances().serving, 3);
    assert_eq!(pool.count_with_threads(2), 2);
    // The two new ones drain the queue while the gated one is still running.
    wait_for(|| pool.queue_len() == 0).await;
    // Retire all but one, the gated (1-thread) instance first: it finishes its run.
    assert_eq!(pool.retire(5, Some(2)), 2);
    let c = pool.instances();
    assert_eq!((c.serving, c.threads_per_instance), (1, 2));
    tx.send(()).unwrap();
    for (i, a) in asks.into_iter().enumerate() {
        let out = a.await.unwrap().unwrap();
        assert_eq!(values(&out[0]), vec![2.0 * i as f32]);
    }
    wait_for(|| pool.instances().running == 1).await;
    // The one left serves on.
    assert!(pool.infer(request(&[4.0]), NO_OPTIONS).await.is_ok());
    assert_eq!(pool.retire(1, None), 0);
}

/// [`double`] as an inline run that notes the thread of each call.
#[derive(Default)]
struct InlineDoubler {
    threads: Mutex<Vec<std::thread::ThreadId>>,
}

impl sluice_core::InlineRun for InlineDoubler {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        double(&inputs[0])
    }
}

#[tokio::test(flavor = "current_thread")]
async fn small_requests_run_inline_on_the_callers_thread_and_large_ones_queue() {
    // The only instance is held by the gate: a request that queued would not be
    // answered until the test opens it.
    let (open, gate) = std::sync::mpsc::channel();
    let (pool, probe) = pool(8, Some(gate));
    let inline = Arc::new(InlineDoubler::default());
    // Two f32s (8 bytes) run inline; three (12 bytes) do not.
    let pool = pool.with_inline(Arc::clone(&inline) as Arc<dyn sluice_core::InlineRun>, 8);
    assert!(pool.runs_inline(8) && !pool.runs_inline(9));
    let out = pool.infer(request(&[1.0, 2.5]), NO_OPTIONS).await.unwrap();
    assert_eq!(values(&out[0]), vec![2.0, 5.0]);
    assert_eq!(
        *inline.threads.lock().unwrap(),
        vec![std::thread::current().id()]
    );
    // Errors and panics of an inline run are errors, counted as the queued ones are.
    assert_failures_are_errors(&pool).await;
    assert_eq!(probe.entered.load(Ordering::SeqCst), 0, "no instance ran");
    let stats = pool.stats();
    assert_eq!(stats.outcome(Outcome::Success), 1);
    assert_eq!(stats.outcome(Outcome::Backend), 2);
    assert_eq!(stats.executions.load(Ordering::Relaxed), 3);
    assert_eq!(stats.inferences.load(Ordering::Relaxed), 3);
    assert_eq!(
        stats.queue.get(),
        (3, 0),
        "a batch of one that waited no time"
    );
    assert!(
        pool.latency_estimate(2).is_some(),
        "learned as a queued run is"
    );
    assert_eq!(stats.in_flight(), 0);
    // A larger request goes to the instance, and waits for it.
    let large = pool.infer(request(&[1.0, 2.0, 3.0]), NO_OPTIONS);
    tokio::pin!(large);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut large)
            .await
            .is_err(),
        "a queued request is not answered while its instance is held"
    );
    open.send(()).unwrap();
    let out = large.await.unwrap();
    assert_eq!(values(&out[0]), vec![2.0, 4.0, 6.0]);
    assert_eq!(probe.entered.load(Ordering::SeqCst), 1);
    assert_eq!(inline.threads.lock().unwrap().len(), 3);
}

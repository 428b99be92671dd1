//! The two load engines every scenario is built from.
//!
//! - **Closed loop**: `workers` clients, each with its own connection, each sending its
//!   next query when the last one is answered (SingleStream, MultiStream, Offline, the
//!   concurrency sweep). Latency is from send to answer.
//! - **Open loop**: queries leave on a schedule computed up front (Server, the rate
//!   sweep), whatever the server does. A dedicated OS thread sleeps until each send
//!   time (not tokio's millisecond timer) and hands the query to the runtime; latency
//!   is measured from the *scheduled* time, so a request delayed by a stalled server
//!   (or by the in-flight cap) counts its whole delay: no coordinated omission.
//!
//! In both, only queries *sent* after the warm-up count; the run then waits for every
//! query in flight, and throughput is counted over the measured window up to the last
//! answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sluice_client::{Client, ClientConfig, PreparedRequest};

use crate::stats::Recorder;

/// One query: its requests (sent together; one, unless MultiStream splits a query
/// into batch-1 requests) and how many samples they carry.
#[derive(Debug, Clone)]
pub struct Query {
    pub requests: Vec<PreparedRequest>,
    pub samples: u64,
}

/// What to load: the server and the queries to rotate through.
#[derive(Debug, Clone)]
pub struct Target {
    pub client: ClientConfig,
    pub queries: Arc<Vec<Query>>,
}

/// Warm-up, then the measured part.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub warmup: Duration,
    pub duration: Duration,
}

/// A finished run.
#[derive(Debug)]
pub struct Outcome {
    pub recorder: Recorder,
    /// From the end of warm-up to the last counted answer.
    pub elapsed: Duration,
    /// Queries scheduled in the measured window (open loop).
    pub scheduled: u64,
}

async fn send_query(client: &Client, query: &Query) -> sluice_client::Result<()> {
    if let [one] = &query.requests[..] {
        return client.infer(one).await.map(drop);
    }
    let mut set = tokio::task::JoinSet::new();
    for r in &query.requests {
        let (client, r) = (client.clone(), r.clone());
        set.spawn(async move { client.infer(&r).await });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(sluice_client::Error::Transport(e.to_string())),
        }
    }
    result
}

/// A progress bar on stderr while a run goes on, only when stderr is a terminal.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    answered: Arc<AtomicU64>,
}

impl Progress {
    pub fn new(show: bool, label: &str, total: Duration) -> Progress {
        let answered = Arc::new(AtomicU64::new(0));
        let bar = (show && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = ProgressBar::new(total.as_millis() as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {elapsed:>4} {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar
        });
        if let Some(bar) = bar.clone() {
            let answered = answered.clone();
            let started = Instant::now();
            tokio::spawn(async move {
                while !bar.is_finished() {
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(format!("{} answered", answered.load(Ordering::Relaxed)));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        Progress { bar, answered }
    }

    fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn record(r: &mut Recorder, result: sluice_client::Result<()>, latency: Duration, samples: u64) {
    match result {
        Ok(()) => r.ok(latency, samples),
        Err(e) => r.error(e.kind(), e.to_string()),
    }
}

/// `workers` clients in a closed loop for `phase`.
pub async fn closed_loop(
    target: &Target,
    workers: usize,
    phase: Phase,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    closed_loop_paced(target, workers, phase, None, progress).await
}

/// [`closed_loop`] whose clients pause after each answer for an exponentially
/// distributed time of mean `think` (seeded per client): each client has one query
/// in flight at most and none queued behind it, at a rate far below what the server
/// takes, as a lightly loaded replica sees its requests (cold caches, an idle core).
pub async fn closed_loop_paced(
    target: &Target,
    workers: usize,
    phase: Phase,
    think: Option<(Duration, u64)>,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let mut clients = Vec::with_capacity(workers);
    for _ in 0..workers {
        clients.push(Client::connect(&target.client).await?);
    }
    let start = Instant::now();
    let measure_from = start + phase.warmup;
    let end = measure_from + phase.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (w, client) in clients.into_iter().enumerate() {
        let queries = target.queries.clone();
        let answered = progress.answered.clone();
        let mut pause = think.map(|(mean, seed)| (mean, crate::Rng::new(seed ^ w as u64)));
        tasks.spawn(async move {
            let mut r = Recorder::default();
            let mut last = measure_from;
            let mut i = w;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let q = &queries[i % queries.len()];
                i += workers;
                let result = send_query(&client, q).await;
                let done = Instant::now();
                answered.fetch_add(1, Ordering::Relaxed);
                if sent >= measure_from {
                    record(&mut r, result, done - sent, q.samples);
                    last = last.max(done);
                }
                if let Some((mean, rng)) = pause.as_mut() {
                    let gap = rng.exponential(1.0 / mean.as_secs_f64().max(1e-9));
                    tokio::time::sleep(Duration::from_secs_f64(gap.min(3600.0))).await;
                }
            }
            (r, last)
        });
    }
    let mut total = Recorder::default();
    let mut last = measure_from;
    while let Some(joined) = tasks.join_next().await {
        let (r, l) = joined?;
        total.merge(&r);
        last = last.max(l);
    }
    progress.finish();
    Ok(Outcome {
        recorder: total,
        elapsed: (last - measure_from).max(Duration::from_millis(1)),
        scheduled: 0,
    })
}

/// Queries sent at `start + schedule[i]`; those scheduled before `warmup` do not count.
/// At most `max_in_flight` are outstanding: past that, sending waits (and the wait
/// counts in the latency, which is measured from the scheduled time).
pub async fn open_loop(
    target: &Target,
    schedule: Vec<Duration>,
    warmup: Duration,
    max_in_flight: usize,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let client = Client::connect(&target.client).await?;
    let handle = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let queries = target.queries.clone();
    let start = Instant::now() + Duration::from_millis(10);
    let measure_from = start + warmup;
    let scheduled = schedule.iter().filter(|&&t| t >= warmup).count() as u64;
    let issuer = std::thread::Builder::new()
        .name("bench-issuer".into())
        .spawn(move || {
            for (i, offset) in schedule.into_iter().enumerate() {
                let at = start + offset;
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let Ok(permit) = handle.block_on(permits.clone().acquire_owned()) else {
                    return;
                };
                let (client, tx) = (client.clone(), tx.clone());
                let query = queries[i % queries.len()].clone();
                handle.spawn(async move {
                    let result = send_query(&client, &query).await;
                    let done = Instant::now();
                    drop(permit);
                    let _ = tx.send((at, done, result, query.samples));
                });
            }
        })?;
    let mut r = Recorder::default();
    let mut last = measure_from;
    while let Some((at, done, result, samples)) = rx.recv().await {
        progress.answered();
        if at >= measure_from {
            record(&mut r, result, done - at, samples);
            last = last.max(done);
        }
    }
    issuer
        .join()
        .map_err(|_| anyhow::anyhow!("the issuing thread panicked"))?;
    progress.finish();
    Ok(Outcome {
        recorder: r,
        elapsed: (last - measure_from).max(Duration::from_millis(1)),
        scheduled,
    })
}

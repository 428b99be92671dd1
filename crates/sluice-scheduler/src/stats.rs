//! Statistics of one model version: outcome counters, Triton's cumulative
//! count-and-nanoseconds pairs, per-batch-size figures and latency histograms.
//!
//! Key decision: everything is a relaxed atomic updated where the event happens
//! (the runtime records a request's outcome and duration, the instance threads
//! record queue and compute time per batch), so recording costs a few uncontended
//! atomic adds and reading never takes the scheduler's lock. Histograms have fixed
//! bucket bounds chosen once, so series from every replica aggregate in Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_core::ErrorKind;

/// Upper bounds, in seconds, of the latency histograms' buckets (the last bucket,
/// `+Inf`, is implicit): 50 µs to 60 s, about 2.5× apart.
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a request accepted by a model version ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused at once: queue full, or (adaptive mode) its deadline cannot be met.
    Rejected,
    /// Its deadline passed while it was queued.
    Timeout,
    /// The client went away before the answer.
    Cancelled,
    /// The engine failed or panicked.
    Backend,
    /// The request did not match the model's signature.
    Invalid,
}

impl Outcome {
    /// The outcome of a request that ended with `result` (an error by its kind).
    pub fn of<T>(result: &sluice_core::Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => match e.kind() {
                ErrorKind::ResourceExhausted | ErrorKind::Unavailable => Outcome::Rejected,
                ErrorKind::DeadlineExceeded => Outcome::Timeout,
                ErrorKind::InvalidArgument => Outcome::Invalid,
                _ => Outcome::Backend,
            },
        }
    }

    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Rejected,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::Backend,
        Outcome::Invalid,
    ];

    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Rejected => "rejected",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Backend => "backend",
            Outcome::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A count of events and their total duration in nanoseconds (Triton's
/// `StatisticDuration`).
#[derive(Debug, Default)]
pub struct CountNs {
    count: AtomicU64,
    ns: AtomicU64,
}

impl CountNs {
    pub fn add(&self, count: u64, ns: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// `(count, ns)`.
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// A histogram of durations with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds_ns: Vec<u64>,
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

/// A consistent-enough reading of a [`Histogram`], in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds in seconds, ascending, without `+Inf`.
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound.
    pub cumulative: Vec<u64>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Adds another reading of a histogram with the same bounds (another version's).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }

    /// The `q`-quantile in seconds, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile`; the highest finite bound if it falls beyond
    /// it); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut below = 0u64;
        for (i, (&bound, &cum)) in self.bounds.iter().zip(&self.cumulative).enumerate() {
            if cum as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let inside = (cum - below) as f64;
                let frac = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return Some(lower + (bound - lower) * frac);
            }
            below = cum;
        }
        self.bounds.last().copied()
    }
}

impl Histogram {
    /// A histogram with the given upper bounds in seconds (ascending).
    pub fn new(bounds_seconds: &[f64]) -> Self {
        Histogram {
            bounds_ns: bounds_seconds
                .iter()
                .map(|s| (s * 1e9).round() as u64)
                .collect(),
            counts: (0..=bounds_seconds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn latency() -> Self {
        Self::new(&LATENCY_BUCKETS)
    }

    pub fn observe(&self, d: Duration) {
        self.observe_ns(nanos(d));
    }

    pub fn observe_ns(&self, ns: u64) {
        self.observe_n(ns, 1);
    }

    /// `n` observations of the same value.
    pub fn observe_n(&self, ns: u64, n: u64) {
        // Prometheus buckets are `le`: a value equal to a bound falls in that bucket.
        let ix = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[ix].fetch_add(n, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns * n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.bounds_ns.len());
        for c in &self.counts[..self.bounds_ns.len()] {
            running += c.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + self.counts[self.bounds_ns.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds_ns.iter().map(|&b| b as f64 / 1e9).collect(),
            cumulative,
            count,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Engine runs of one batch size and the time their three phases took.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

/// Statistics of one model version, readable while it serves.
#[derive(Debug)]
pub struct PoolStats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Of the rejected requests, those refused because their deadline could not be
    /// met (adaptive mode); the rest found the queue full.
    pub rejected_early: AtomicU64,
    /// Request durations (arrival at the runtime to answer) of successes and of
    /// failures, as Triton's `success` and `fail`.
    pub success: CountNs,
    pub fail: CountNs,
    /// Per executed request: time queued, and the duration of its batch's three phases
    /// (gathering inputs, the engine run, splitting outputs), as Triton attributes a
    /// batch's time to every request in it.
    pub queue: CountNs,
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    /// Requests answered from the response cache (time: the lookup) and requests
    /// the cache did not hold (time: the lookup plus the insert), as Triton's
    /// `cache_hit` and `cache_miss`. Hits also count in `success`, never in the
    /// execution or inference counts.
    pub cache_hit: CountNs,
    pub cache_miss: CountNs,
    /// Engine runs, the requests they carried and the rows (items) in them.
    pub executions: AtomicU64,
    pub inferences: AtomicU64,
    pub rows: AtomicU64,
    /// Per batch size in rows (index = rows).
    batches: Vec<BatchStats>,
    /// Seconds from arrival to answer, queued, and in the engine (per request).
    pub request_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub compute_seconds: Histogram,
    /// Requests accepted and not yet answered (queued or running).
    in_flight: AtomicU64,
    /// Milliseconds since the Unix epoch at the end of the last engine run; 0 if none.
    last_inference_ms: AtomicU64,
}

impl PoolStats {
    /// Statistics for batches of up to `max_rows` rows.
    pub fn new(max_rows: usize) -> Self {
        PoolStats {
            outcomes: Default::default(),
            rejected_early: AtomicU64::new(0),
            success: CountNs::default(),
            fail: CountNs::default(),
            queue: CountNs::default(),
            compute_input: CountNs::default(),
            compute_infer: CountNs::default(),
            compute_output: CountNs::default(),
            cache_hit: CountNs::default(),
            cache_miss: CountNs::default(),
            executions: AtomicU64::new(0),
            inferences: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            batches: (0..=max_rows.max(1))
                .map(|_| BatchStats::default())
                .collect(),
            request_seconds: Histogram::latency(),
            queue_seconds: Histogram::latency(),
            compute_seconds: Histogram::latency(),
            in_flight: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
        }
    }

    /// A request arrived; pair with [`PoolStats::finish`].
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request started with [`PoolStats::start`] ended after `elapsed`.
    pub fn finish(&self, outcome: Outcome, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.record(outcome, elapsed);
    }

    /// A request that never entered the pool (say, invalid) ended after `elapsed`.
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        let ns = nanos(elapsed);
        if outcome == Outcome::Success {
            self.success.add(1, ns);
        } else {
            self.fail.add(1, ns);
        }
        self.request_seconds.observe_ns(ns);
    }

    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    /// Requests that ended, of every outcome.
    pub fn ended(&self) -> u64 {
        Outcome::ALL.iter().map(|&o| self.outcome(o)).sum()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Milliseconds since the Unix epoch at the end of the last engine run; 0 if none.
    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }

    /// Records one engine run of `rows` rows carrying `queued.len()` requests that
    /// waited `queued` each; `phases` are the input, infer and output durations.
    pub(crate) fn record_run(&self, rows: usize, queued: &[Duration], phases: [Duration; 3]) {
        let requests = queued.len() as u64;
        for &q in queued {
            self.queue.add(1, nanos(q));
            self.queue_seconds.observe(q);
        }
        let [input, infer, output] = phases.map(nanos);
        self.compute_input.add(requests, input * requests);
        self.compute_infer.add(requests, infer * requests);
        self.compute_output.add(requests, output * requests);
        self.compute_seconds
            .observe_n(input + infer + output, requests);
        if let Some(b) = self.batches.get(rows) {
            b.compute_input.add(1, input);
            b.compute_infer.add(1, infer);
            b.compute_output.add(1, output);
        }
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(requests, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.store(now_ms, Ordering::Relaxed);
    }

    /// A request a model answered by forwarding it to other models (an ensemble, whose
    /// steps count their own queue and compute time) ended well over `rows` rows: one
    /// execution and one inference of its own, and the time of the last one.
    pub fn record_forwarded_run(&self, rows: usize) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.store(now_ms, Ordering::Relaxed);
    }

    /// `(rows, stats)` for every batch size that ran at least once.
    pub fn batch_stats(&self) -> impl Iterator<Item = (usize, &BatchStats)> {
        self.batches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.compute_infer.get().0 > 0)
    }

    /// `(rows, runs)` for every batch size seen.
    pub fn batch_size_counts(&self) -> Vec<(usize, u64)> {
        self.batch_stats()
            .map(|(rows, b)| (rows, b.compute_infer.get().0))
            .collect()
    }

    /// The largest batch size (rows) these statistics were made for.
    pub fn max_batch_rows(&self) -> usize {
        self.batches.len() - 1
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: counted in `le="0.001"`
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.bounds, vec![0.001, 0.01]);
        assert_eq!(s.cumulative, vec![2, 3]);
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 2.0065).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn outcomes_split_success_from_fail_and_track_in_flight() {
        let s = PoolStats::new(4);
        s.start();
        s.start();
        s.start();
        assert_eq!(s.in_flight(), 3);
        s.finish(Outcome::Success, Duration::from_millis(2));
        s.finish(Outcome::Timeout, Duration::from_millis(7));
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.outcome(Outcome::Success), 1);
        assert_eq!(s.outcome(Outcome::Timeout), 1);
        assert_eq!(s.outcome(Outcome::Backend), 0);
        assert_eq!(s.success.get(), (1, 2_000_000));
        assert_eq!(s.fail.get(), (1, 7_000_000));
        assert_eq!(s.request_seconds.snapshot().count, 2);
    }

    #[test]
    fn a_run_is_attributed_to_every_request_in_it() {
        let s = PoolStats::new(8);
        let ms = Duration::from_millis;
        s.record_run(5, &[ms(1), ms(3)], [ms(1), ms(10), ms(2)]);
        s.record_run(1, &[ms(0)], [ms(0), ms(4), ms(0)]);
        assert_eq!(s.executions.load(Ordering::Relaxed), 2);
        assert_eq!(s.inferences.load(Ordering::Relaxed), 3);
        assert_eq!(s.rows.load(Ordering::Relaxed), 6);
        assert_eq!(s.queue.get(), (3, 4_000_000));
        assert_eq!(s.compute_infer.get(), (3, 24_000_000));
        assert_eq!(s.compute_input.get(), (3, 2_000_000));
        assert_eq!(s.batch_size_counts(), vec![(1, 1), (5, 1)]);
        let (_, five) = s.batch_stats().find(|&(rows, _)| rows == 5).unwrap();
        assert_eq!(five.compute_output.get(), (1, 2_000_000));
        assert_eq!(s.compute_seconds.snapshot().count, 3);
        assert!(s.last_inference_ms() > 0);
    }
}

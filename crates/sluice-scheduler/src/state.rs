//! The batcher's decisions, as a plain struct with no threads, channels or clocks:
//! the caller passes `now` in. Queues per priority level, deadlines, cancellation,
//! and the choice of the next batch (by size, preferred size, delay, or the adaptive
//! delay learned from the model's latency per batch size and the arrival rate).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sluice_core::{Error, ErrorKind};

use crate::config::{Batching, Delay, DynamicBatching, SchedulerConfig, TimeoutAction};

/// Why `enqueue` refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request asks for something the model does not have (a priority level).
    Invalid,
    /// Its priority level's queue is full.
    QueueFull,
    /// Its timeout cannot be met given the work ahead of it (adaptive mode).
    Deadline,
}

/// What the state needs to know of a queued item.
pub trait Pending {
    /// True once nobody waits for the answer (the client went away).
    fn is_cancelled(&self) -> bool;
}

/// Per-request scheduling options (v2 `parameters.priority` and `parameters.timeout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// 1 is the highest level; 0 means the model's default level.
    pub priority: u32,
    pub timeout: Option<Duration>,
}

/// A queued request.
#[derive(Debug)]
pub struct Entry<T> {
    /// Arrival order, unique per state.
    pub seq: u64,
    pub rows: usize,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub payload: T,
}

/// The result of asking for work.
#[derive(Debug)]
pub struct Step<T> {
    /// A batch to run now.
    pub batch: Option<Vec<Entry<T>>>,
    /// Requests whose timeout passed; answer them with a timeout error.
    pub expired: Vec<Entry<T>>,
    /// Requests whose client went away; drop them.
    pub cancelled: Vec<Entry<T>>,
    /// When to ask again if there is no batch now (`None`: when something arrives).
    pub wake_at: Option<Instant>,
}

/// Queues, policies and the learned latency of one model version.
pub struct State<T> {
    config: SchedulerConfig,
    instances: usize,
    queues: Vec<VecDeque<Entry<T>>>,
    /// Timed-out requests of `DELAY` levels, served after everything else.
    delayed: VecDeque<Entry<T>>,
    /// Cancelled entries removed by `enqueue`, reported by the next `next`.
    swept: Vec<Entry<T>>,
    /// The adaptive hold decided for the batch whose oldest request is `.0`: later
    /// looks may shorten it, never stretch it.
    hold: Option<(u64, Instant)>,
    next_seq: u64,
    closing: bool,
    latency: LatencyModel,
    arrivals: ArrivalRate,
}

impl<T: Pending> State<T> {
    pub fn new(config: SchedulerConfig, instances: usize) -> Self {
        let levels = config.levels.len().max(1);
        let latency = LatencyModel::new(config.max_batch_size.max(1));
        State {
            config,
            instances: instances.max(1),
            queues: (0..levels).map(|_| VecDeque::new()).collect(),
            delayed: VecDeque::new(),
            swept: Vec::new(),
            hold: None,
            next_seq: 0,
            closing: false,
            latency,
            arrivals: ArrivalRate::default(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum::<usize>() + self.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests waiting whose callers still wait for them (entries whose caller went
    /// away or timed out stay until an instance next looks at the queue).
    pub fn waiting(&self) -> usize {
        self.ordered().filter(|e| !e.payload.is_cancelled()).count()
    }

    /// Whether the request `seq` (from [`State::enqueue`]) still waits in the queue,
    /// i.e. no instance has taken it yet.
    pub fn is_queued(&self, seq: u64) -> bool {
        self.ordered().any(|e| e.seq == seq)
    }

    /// Stop waiting for fuller batches: everything queued is dispatched as soon as an
    /// instance is free (shutdown).
    pub fn close(&mut self) {
        self.closing = true;
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Queues a request of `rows` rows, or says at once why it cannot be. On success,
    /// returns its sequence number and, when its level rejects on timeout, the instant
    /// after which it must be answered with a timeout error.
    pub fn enqueue(
        &mut self,
        payload: T,
        rows: usize,
        options: JobOptions,
        now: Instant,
    ) -> Result<(u64, Option<Instant>), (T, Error, Rejection)> {
        let levels = self.queues.len();
        let level = if options.priority == 0 {
            self.config.default_level
        } else {
            options.priority as usize
        };
        if level == 0 || level > levels {
            let e = Error::invalid(format!(
                "priority {} is outside 1..={levels} for model {}",
                options.priority, self.config.label
            ));
            return Err((payload, e, Rejection::Invalid));
        }
        let policy = self.config.levels[level - 1];
        if self.queues[level - 1].len() >= policy.max_queue_size {
            // Requests whose clients left do not hold places.
            let queue = std::mem::take(&mut self.queues[level - 1]);
            let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                queue.into_iter().partition(|e| e.payload.is_cancelled());
            self.queues[level - 1] = kept;
            self.swept.extend(gone);
        }
        if self.queues[level - 1].len() >= policy.max_queue_size {
            let e = Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "the queue of model {} is full ({} requests at priority level {level}); retry later",
                    self.config.label, policy.max_queue_size
                ),
            );
            return Err((payload, e, Rejection::QueueFull));
        }
        let timeout = match options.timeout {
            Some(t) if policy.allow_timeout_override || policy.default_timeout.is_none() => Some(t),
            _ => policy.default_timeout,
        };
        let deadline = timeout.map(|t| now + t);
        if let (Some(deadline), true) = (deadline, self.is_adaptive()) {
            if let Some(start) = self.estimated_start(level, now) {
                if start > deadline {
                    let e = Error::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "model {} cannot start this request within its timeout of {} µs (about {} µs of work is ahead of it); rejected early",
                            self.config.label,
                            timeout.unwrap_or_default().as_micros(),
                            (start - now).as_micros()
                        ),
                    );
                    return Err((payload, e, Rejection::Deadline));
                }
            }
        }
        self.arrivals.observe(now, rows);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues[level - 1].push_back(Entry {
            seq,
            rows,
            enqueued: now,
            deadline,
            payload,
        });
        let hard = deadline.filter(|_| policy.timeout_action == TimeoutAction::Reject);
        Ok((seq, hard))
    }

    /// Records how long the engine took for a batch of `rows` rows.
    pub fn record(&mut self, rows: usize, elapsed: Duration) {
        self.latency.observe(rows, elapsed);
    }

    /// The learned latency of a batch of `rows` rows, if any is known.
    pub fn latency_estimate(&self, rows: usize) -> Option<Duration> {
        self.latency.estimate(rows)
    }

    /// Called by a free instance: the batch to run now, if any, and what to answer.
    pub fn next(&mut self, now: Instant) -> Step<T> {
        let mut step = Step {
            batch: None,
            expired: Vec::new(),
            cancelled: Vec::new(),
            wake_at: None,
        };
        self.sweep(now, &mut step);
        let Some((count, rows, oldest, oldest_seq)) = self.candidate() else {
            step.wake_at = self.earliest_deadline();
            return step;
        };
        let dispatch = match &self.config.batching {
            Batching::Off => Some(count),
            Batching::Dynamic(db) => {
                let db = db.clone();
                self.decide(
                    &db,
                    Candidate {
                        count,
                        rows,
                        oldest,
                        oldest_seq,
                    },
                    now,
                    &mut step,
                )
            }
        };
        if let Some(n) = dispatch {
            step.batch = Some(self.take(n));
        } else {
            step.wake_at = min_opt(step.wake_at, self.earliest_deadline());
        }
        step
    }

    fn is_adaptive(&self) -> bool {
        matches!(
            &self.config.batching,
            Batching::Dynamic(DynamicBatching {
                delay: Delay::Adaptive { .. },
                ..
            })
        )
    }

    /// Removes cancelled entries and handles expired ones.
    fn sweep(&mut self, now: Instant, step: &mut Step<T>) {
        step.cancelled.append(&mut self.swept);
        for (ix, queue) in self.queues.iter_mut().enumerate() {
            let action = self.config.levels[ix].timeout_action;
            let mut kept = VecDeque::with_capacity(queue.len());
            for e in queue.drain(..) {
                if e.payload.is_cancelled() {
                    step.cancelled.push(e);
                } else if e.deadline.is_some_and(|d| d <= now) {
                    match action {
                        TimeoutAction::Reject => step.expired.push(e),
                        TimeoutAction::Delay => self.delayed.push_back(Entry {
                            deadline: None,
                            ..e
                        }),
                    }
                } else {
                    kept.push_back(e);
                }
            }
            *queue = kept;
        }
        let (gone, kept): (VecDeque<_>, VecDeque<_>) = self
            .delayed
            .drain(..)
            .partition(|e| e.payload.is_cancelled());
        step.cancelled.extend(gone);
        self.delayed = kept;
    }

    fn ordered(&self) -> impl Iterator<Item = &Entry<T>> {
        self.queues.iter().flatten().chain(self.delayed.iter())
    }

    /// The largest prefix (in priority, then arrival order) that fits one batch:
    /// (entries, rows, oldest arrival among them).
    fn candidate(&self) -> Option<(usize, usize, Instant, u64)> {
        let cap = match self.config.batching {
            Batching::Off => 0,
            Batching::Dynamic(_) => self.config.max_batch_size,
        };
        let mut count = 0;
        let mut rows = 0;
        let mut oldest: Option<(Instant, u64)> = None;
        for e in self.ordered() {
            if count > 0 && rows + e.rows > cap {
                break;
            }
            count += 1;
            rows += e.rows;
            if oldest.is_none_or(|(t, _)| e.enqueued < t) {
                oldest = Some((e.enqueued, e.seq));
            }
            if cap == 0 {
                break;
            }
        }
        oldest.map(|(t, seq)| (count, rows, t, seq))
    }

    fn decide(
        &mut self,
        db: &DynamicBatching,
        c: Candidate,
        now: Instant,
        step: &mut Step<T>,
    ) -> Option<usize> {
        let Candidate {
            count,
            rows,
            oldest,
            oldest_seq,
        } = c;
        let full = count < self.len() || rows >= self.config.max_batch_size;
        if full || self.closing {
            return Some(count);
        }
        // Everything queued fits. A preferred size goes at once.
        if db.preferred.contains(&rows) {
            return Some(count);
        }
        let due = match db.delay {
            Delay::Static(d) => oldest + d,
            Delay::Adaptive { max } => {
                let due = oldest + self.adaptive_delay(rows, max, now);
                let due = match self.hold {
                    Some((seq, held)) if seq == oldest_seq => due.min(held),
                    _ => due,
                };
                self.hold = Some((oldest_seq, due));
                due
            }
        };
        if now >= due {
            // Out of time: the largest preferred prefix if there is one, else everything.
            return Some(self.preferred_prefix(&db.preferred, count).unwrap_or(count));
        }
        step.wake_at = Some(due);
        None
    }

    /// The longest prefix of the first `count` entries whose rows are a preferred size.
    fn preferred_prefix(&self, preferred: &[usize], count: usize) -> Option<usize> {
        let mut rows = 0;
        let mut best = None;
        for (i, e) in self.ordered().take(count).enumerate() {
            rows += e.rows;
            if preferred.contains(&rows) {
                best = Some(i + 1);
            }
        }
        best
    }

    /// How long to hold a batch of `rows` rows for more, from the learned latency, the
    /// arrival rate and the queued deadlines. Holding idles the instance, so it only
    /// pays when more requests are due soon (at least one per run), the load is under
    /// half the engine's best throughput, the engine runs a bigger batch for little more
    /// than this one (per the learned latencies), and the wait is short next to the run
    /// itself; otherwise the batcher is work-conserving:
    /// under load, batches grow from the requests that queue while the engine runs.
    fn adaptive_delay(&self, rows: usize, max: Duration, now: Instant) -> Duration {
        let Some(service) = self.latency.estimate(rows) else {
            return Duration::ZERO;
        };
        let rate = self.arrivals.rate(now);
        if rate * service.as_secs_f64() < 1.0 {
            return Duration::ZERO;
        }
        // Past half the engine's best throughput, every idle moment is capacity lost:
        // batches grow from the backlog anyway.
        let capacity =
            self.latency.best_throughput().unwrap_or(f64::INFINITY) * self.instances as f64;
        if rate > 0.5 * capacity {
            return Duration::ZERO;
        }
        let bigger = (rows * 2).min(self.config.max_batch_size).max(rows + 1);
        let Some(bigger_service) = self.latency.estimate(bigger) else {
            return Duration::ZERO;
        };
        // Twice the rows must cost well under twice the time, or batching does not pay.
        let ratio = bigger_service.as_secs_f64() / service.as_secs_f64();
        if ratio > 0.75 * (bigger as f64 / rows as f64) {
            return Duration::ZERO;
        }
        let fill = Duration::from_secs_f64((bigger - rows) as f64 / rate);
        let mut wait = fill.min(service / 2).min(max);
        if let Some(deadline) = self.ordered().filter_map(|e| e.deadline).min() {
            let slack = deadline
                .saturating_duration_since(now)
                .saturating_sub(bigger_service);
            wait = wait.min(slack);
        }
        wait
    }

    /// When a new request at `level` would finish, from the work ahead of it.
    /// When a request queued now at `level` is likely to start: after the rows ahead
    /// of it run at the best throughput seen. The timeout bounds the time in the queue,
    /// so this (not its completion) decides an early rejection; with nothing ahead it
    /// is `now`, whatever the latency model has learned.
    fn estimated_start(&self, level: usize, now: Instant) -> Option<Instant> {
        let ahead: usize = self.queues[..level].iter().flatten().map(|e| e.rows).sum();
        if ahead == 0 {
            return Some(now);
        }
        let throughput = self.latency.best_throughput()? * self.instances as f64;
        Some(now + Duration::from_secs_f64(ahead as f64 / throughput))
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .flatten()
            .filter_map(|e| e.deadline)
            .min()
    }

    /// Removes the first `n` entries in priority, then arrival, order.
    fn take(&mut self, mut n: usize) -> Vec<Entry<T>> {
        let mut out = Vec::with_capacity(n);
        for queue in self
            .queues
            .iter_mut()
            .chain(std::iter::once(&mut self.delayed))
        {
            while n > 0 {
                let Some(e) = queue.pop_front() else { break };
                out.push(e);
                n -= 1;
            }
        }
        out
    }
}

/// The batch that could be formed now.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    count: usize,
    rows: usize,
    oldest: Instant,
    oldest_seq: u64,
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Engine latency per batch size, learned as an exponentially weighted mean.
#[derive(Debug, Clone)]
struct LatencyModel {
    /// Index b: seconds for a batch of b rows (0.0 = not seen yet).
    seconds: Vec<f64>,
}

impl LatencyModel {
    const WEIGHT: f64 = 0.2;

    fn new(max_rows: usize) -> Self {
        LatencyModel {
            seconds: vec![0.0; max_rows + 1],
        }
    }

    fn observe(&mut self, rows: usize, elapsed: Duration) {
        let Some(slot) = self.seconds.get_mut(rows) else {
            return;
        };
        let s = elapsed.as_secs_f64();
        *slot = if *slot == 0.0 {
            s
        } else {
            *slot * (1.0 - Self::WEIGHT) + s * Self::WEIGHT
        };
    }

    fn estimate(&self, rows: usize) -> Option<Duration> {
        let rows = rows.clamp(1, self.seconds.len() - 1);
        if self.seconds[rows] > 0.0 {
            return Some(Duration::from_secs_f64(self.seconds[rows]));
        }
        let below = (1..rows).rev().find(|&b| self.seconds[b] > 0.0);
        let above = (rows + 1..self.seconds.len()).find(|&b| self.seconds[b] > 0.0);
        let s = match (below, above) {
            (Some(a), Some(c)) => {
                let t = (rows - a) as f64 / (c - a) as f64;
                self.seconds[a] + t * (self.seconds[c] - self.seconds[a])
            }
            // Larger than anything seen: no better per row than the largest batch seen.
            (Some(a), None) => self.seconds[a] * rows as f64 / a as f64,
            (None, Some(c)) => self.seconds[c],
            (None, None) => return None,
        };
        Some(Duration::from_secs_f64(s))
    }

    /// The best rows per second seen at any batch size.
    fn best_throughput(&self) -> Option<f64> {
        self.seconds
            .iter()
            .enumerate()
            .filter(|(_, &s)| s > 0.0)
            .map(|(b, &s)| b as f64 / s)
            .max_by(f64::total_cmp)
    }
}

/// Arrival rate in rows per second over the last few arrivals.
#[derive(Debug, Clone, Default)]
struct ArrivalRate {
    window: VecDeque<(Instant, usize)>,
}

impl ArrivalRate {
    const WINDOW: usize = 8;

    fn observe(&mut self, now: Instant, rows: usize) {
        if self.window.len() == Self::WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((now, rows));
    }

    /// Rows per second; it falls as time passes without arrivals.
    fn rate(&self, now: Instant) -> f64 {
        let (Some(&(first, _)), true) = (self.window.front(), self.window.len() > 1) else {
            return 0.0;
        };
        let rows: usize = self.window.iter().skip(1).map(|&(_, r)| r).sum();
        let span = now.saturating_duration_since(first).as_secs_f64().max(1e-6);
        rows as f64 / span
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

//! The batcher's decisions, as a plain struct with no threads, channels or clocks:
//! the caller passes `now` in. Queues per priority level, deadlines, cancellation,
//! and the choice of the next batch (by size, preferred size, delay, or the adaptive
//! hold learned from the model's latency per batch size and the recent concurrency).

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
    /// Rows taken by instances and not yet recorded as run.
    running: usize,
    /// The most rows queued and running at once, recently.
    peak: Peak,
    /// Rows arriving within one fixed cost after a run ends, learned.
    after_run: AfterRun,
    /// The mean time between arrivals (seconds per row) and the last arrival.
    gap: Option<(f64, Instant)>,
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
            running: 0,
            peak: Peak::default(),
            after_run: AfterRun::default(),
            gap: None,
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
            if let Some((start, finish)) = self.estimated_answer(level, rows, now) {
                if finish > deadline {
                    let e = Error::new(
                        ErrorKind::ResourceExhausted,
                        format!(
                            "model {} cannot answer this request within its timeout of {} µs (about {} µs of work is ahead of it, then its run of about {} µs); rejected early",
                            self.config.label,
                            timeout.unwrap_or_default().as_micros(),
                            (start - now).as_micros(),
                            (finish - start).as_micros()
                        ),
                    );
                    return Err((payload, e, Rejection::Deadline));
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues[level - 1].push_back(Entry {
            seq,
            rows,
            enqueued: now,
            deadline,
            payload,
        });
        if self.is_adaptive() {
            self.observe_arrival(rows, now);
        }
        let hard = deadline.filter(|_| policy.timeout_action == TimeoutAction::Reject);
        Ok((seq, hard))
    }

    /// What the adaptive hold learns from an arrival (only adaptive models pay for it:
    /// the sum below walks the queue).
    fn observe_arrival(&mut self, rows: usize, now: Instant) {
        let in_system = self.running + self.ordered().map(|e| e.rows).sum::<usize>();
        self.peak.observe(now, in_system);
        self.after_run.arrived(now, rows);
        self.gap = Some(match self.gap {
            None => (f64::INFINITY, now),
            Some((mean, last)) => {
                let gap = now.saturating_duration_since(last).as_secs_f64() / rows.max(1) as f64;
                let mean = if mean.is_finite() {
                    mean * (1.0 - GAP_WEIGHT) + gap * GAP_WEIGHT
                } else {
                    gap
                };
                (mean, now)
            }
        });
    }

    /// Records how long the engine took for a batch of `rows` rows (one taken by
    /// [`State::next`], now finished).
    pub fn record(&mut self, rows: usize, elapsed: Duration) {
        self.latency.observe(rows, elapsed);
        self.running = self.running.saturating_sub(rows);
    }

    /// Marks the end of a run (its answers are going out now): the rows arriving within
    /// one fixed cost from now are counted (in a closed loop, the clients just answered
    /// coming back).
    pub fn ended(&mut self, now: Instant) {
        if self.is_adaptive() {
            let horizon = self.fixed_cost(1).unwrap_or(Duration::ZERO);
            self.after_run.start(now, horizon);
        }
    }

    /// The engine's latency near `rows` read as `S(b) = F + m·b`: `F` from the learned
    /// latencies of `rows` and of a full batch; `None` when unknown or when the cost
    /// is all per row.
    fn fixed_cost(&self, rows: usize) -> Option<Duration> {
        let full = self.config.max_batch_size;
        if rows >= full {
            return None;
        }
        let this = self.latency.estimate(rows)?.as_secs_f64();
        let whole = self.latency.estimate(full)?.as_secs_f64();
        let per_row = (whole - this) / (full - rows) as f64;
        let fixed = this - per_row * rows as f64;
        (fixed > 0.0 && per_row >= 0.0).then(|| Duration::from_secs_f64(fixed))
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
            Delay::Adaptive { max } => match self.adaptive_due(rows, max, now) {
                None => now,
                Some((limit, burst_ends)) => {
                    // The limit is set by the first look; later looks may only
                    // shorten it. The burst bound moves with each arrival.
                    let limit = match self.hold {
                        Some((seq, held)) if seq == oldest_seq => limit.min(held),
                        _ => limit,
                    };
                    self.hold = Some((oldest_seq, limit));
                    limit.min(burst_ends)
                }
            },
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

    /// Until when a free instance holds a batch of `rows` rows for more. The engine's
    /// latency is read as a fixed cost per run plus a cost per row, `S(b) = F + m·b`
    /// ([`State::fixed_cost`]). Holding for `w` while rows arrive at rate λ makes the
    /// run's time per row `(w + F + m(r + λw)) / (r + λw)`, which falls with `w`
    /// exactly when `r < λF`. The arrivals are learned as the `E` rows that arrive
    /// within `F` after a run ends and the time `T` until the last of them
    /// ([`State::ended`]; λ = E / T), so the hold pays when `r T < F E`, counting only
    /// the rows and time still to come since the run ended. It is used
    /// only when those rows come at least twice as fast as the mean arrival rate, the
    /// sign that answers bring requests back: in a closed loop `E` counts the clients
    /// just answered returning within a round trip. This is what merges the groups a
    /// greedy batcher splits a closed loop into (28 + 4 of 32 clients; 4 + 4 of 8).
    /// The hold ends once `r T < F E` no longer holds, or `r` reaches the most
    /// rows recently in the system at once (queued plus running; less what other
    /// instances run now), after at most `min(F, max)` from the first look (later looks
    /// only shorten it), and never past a queued deadline less the run. Engines whose
    /// cost is all per row (`F` = 0: tract on convnets) never wait.
    ///
    /// Returns `None` (dispatch now) or `(limit, silence)`: the hold's limit, and
    /// when the rows after the run count as over if nothing more arrives (learned from
    /// when they usually come), so a hold ends as soon as requests stop coming back.
    fn adaptive_due(&self, rows: usize, max: Duration, now: Instant) -> Option<(Instant, Instant)> {
        let full = self.config.max_batch_size;
        let target = self.peak.get(now).saturating_sub(self.running).min(full);
        let Expected {
            rows: coming,
            within,
            per_row: burst,
            silence,
        } = self.after_run.remaining(now)?;
        let fixed = self.fixed_cost(rows)?;
        // Holding for the `coming` rows still expected since the run's end (within
        // `within` seconds) pays when `(T + F + m(r + E)) / (r + E) < (F + m r) / r`,
        // i.e. `r T < F E`...
        if rows >= target || rows as f64 * within >= fixed.as_secs_f64() * coming {
            return None;
        }
        // ...and it is worth the latency only when answers bring requests back: the
        // rows after a run come at least twice as fast as rows on average. Under
        // independent (Poisson) arrivals a greedy batcher already grows its batches
        // from the queue that forms during each run, and holding only adds latency.
        let mean_gap = self.gap.map_or(f64::INFINITY, |(g, _)| g);
        if burst * 2.0 > mean_gap {
            return None;
        }
        let mut limit = now + fixed.min(max);
        if let Some(deadline) = self.ordered().filter_map(|e| e.deadline).min() {
            let run = self.latency.estimate(target).unwrap_or_default();
            limit = limit.min(deadline.checked_sub(run).unwrap_or(now).max(now));
        }
        Some((limit, silence))
    }

    /// When a request of `rows` rows queued now at `level` is likely to start and to
    /// be answered: after the rows ahead of it run at the best throughput seen, then its
    /// own run (the batch it is likely to be in). `None` when nothing is ahead: such a
    /// request starts at once and is never rejected early, whatever the latency model
    /// has learned (its timeout bounds the queue, not the run). Otherwise the request
    /// is refused when it would be answered after its deadline: it could still start in
    /// time, but its caller stops waiting first, and the engine's time is better spent
    /// on a request that makes its deadline (goodput).
    fn estimated_answer(
        &self,
        level: usize,
        rows: usize,
        now: Instant,
    ) -> Option<(Instant, Instant)> {
        let ahead: usize = self.queues[..level].iter().flatten().map(|e| e.rows).sum();
        if ahead == 0 {
            return None;
        }
        let throughput = self.latency.best_throughput()? * self.instances as f64;
        let start = now + Duration::from_secs_f64(ahead as f64 / throughput);
        let batch = (ahead + rows).min(self.config.max_batch_size.max(1));
        let run = self.latency.estimate(batch)?;
        Some((start, start + run))
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
                self.running += e.rows;
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

/// Weight of one arrival in the mean time between arrivals (about the last 64).
const GAP_WEIGHT: f64 = 1.0 / 64.0;

/// Rows arriving within a horizon after each run ends, when the first and the last of
/// them came, as exponentially weighted means.
#[derive(Debug, Clone, Default)]
struct AfterRun {
    open: Option<Window>,
    mean: Option<Learned>,
}

/// The count after the last run's end.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    horizon: Duration,
    rows: usize,
    first: Duration,
    last: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Learned {
    rows: f64,
    /// Seconds from the run's end to the first and to the last of them.
    first: f64,
    last: f64,
}

/// What is still expected after the last run's end.
#[derive(Debug, Clone, Copy)]
struct Expected {
    rows: f64,
    /// Seconds until the last of them.
    within: f64,
    /// Seconds per row after a run.
    per_row: f64,
    /// When the rows after this run count as over if nothing more arrives.
    silence: Instant,
}

impl AfterRun {
    const WEIGHT: f64 = 0.2;

    fn start(&mut self, now: Instant, horizon: Duration) {
        self.close();
        self.open = (!horizon.is_zero()).then_some(Window {
            start: now,
            horizon,
            rows: 0,
            first: horizon,
            last: horizon,
        });
    }

    fn close(&mut self) {
        let Some(w) = self.open.take() else { return };
        let sample = Learned {
            rows: w.rows as f64,
            first: w.first.as_secs_f64(),
            last: w.last.as_secs_f64(),
        };
        let k = Self::WEIGHT;
        let mix = |a: f64, b: f64| a * (1.0 - k) + b * k;
        self.mean = Some(self.mean.map_or(sample, |m| Learned {
            rows: mix(m.rows, sample.rows),
            first: mix(m.first, sample.first),
            last: mix(m.last, sample.last),
        }));
    }

    fn arrived(&mut self, now: Instant, rows: usize) {
        let Some(w) = &mut self.open else { return };
        let offset = now.saturating_duration_since(w.start);
        if offset > w.horizon {
            self.close();
            return;
        }
        if w.rows == 0 {
            w.first = offset;
        }
        w.rows += rows;
        w.last = offset;
    }

    /// What is still expected after the last run's end, as of `now`; `None` when
    /// nothing is.
    fn remaining(&self, now: Instant) -> Option<Expected> {
        let m = self.mean?;
        let w = self.open?;
        let elapsed = now.saturating_duration_since(w.start);
        let left = m.rows - w.rows as f64;
        if elapsed > w.horizon || left <= 0.25 {
            return None;
        }
        let per_row = m.last / m.rows.max(1.0);
        let pause = Duration::from_micros(100);
        // Silence ends the wait: twice the usual time to the first row before any has
        // come, three rows' time after the last one since.
        let silence = if w.rows == 0 {
            w.start + Duration::from_secs_f64(2.0 * m.first) + pause
        } else {
            w.start + w.last + Duration::from_secs_f64(3.0 * per_row) + pause
        };
        Some(Expected {
            rows: left,
            within: (m.last - elapsed.as_secs_f64()).max(0.0),
            per_row,
            silence,
        })
    }
}

/// The largest value seen over the last one to two windows (a max that forgets).
#[derive(Debug, Clone, Default)]
struct Peak {
    current: usize,
    previous: usize,
    since: Option<Instant>,
}

impl Peak {
    const WINDOW: Duration = Duration::from_secs(1);

    fn roll(&mut self, now: Instant) {
        let since = *self.since.get_or_insert(now);
        let age = now.saturating_duration_since(since);
        if age >= Self::WINDOW {
            self.previous = if age >= 2 * Self::WINDOW {
                0
            } else {
                self.current
            };
            self.current = 0;
            self.since = Some(now);
        }
    }

    fn observe(&mut self, now: Instant, value: usize) {
        self.roll(now);
        self.current = self.current.max(value);
    }

    fn get(&self, now: Instant) -> usize {
        let Some(since) = self.since else { return 0 };
        match now.saturating_duration_since(since) {
            age if age < Self::WINDOW => self.current.max(self.previous),
            age if age < 2 * Self::WINDOW => self.current,
            _ => 0,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

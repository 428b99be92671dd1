//! The batcher's decisions, as a plain struct with no threads, channels or clocks:
//! the caller passes `now` in, so every rule is tested with exact instants.
//!
//! One module per concern, each rule in exactly one place:
//!
//! | module | owns |
//! |---|---|
//! | `queues` | the priority queues, their entry and row counts, deadlines and cancellation |
//! | `dispatch` | the policy: off, size, preferred sizes, static delay, or the adaptive hold |
//! | `hold` | the adaptive hold (opt-in): when waiting for returning requests pays |
//! | `admission` | early rejection of requests that would be answered after their deadline |
//! | `latency` | the engine's latency per batch size, learned from runs |
//!
//! [`State`] wires them: `enqueue` (admission, then a queue), `next` (expire, form the
//! candidate batch, ask the policy), `record`/`ended` (what the models learn).

mod admission;
mod dispatch;
mod hold;
mod latency;
mod predict;
mod queues;

use std::time::{Duration, Instant};

use sluice_core::{Error, ErrorKind};

use crate::config::{Batching, Delay, SchedulerConfig, TimeoutAction};
use dispatch::Plan;
use hold::{Hold, Look};
use latency::LatencyModel;
pub use predict::Prediction;
use queues::Queues;

/// Why `enqueue` refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The request asks for something the model does not have (a priority level).
    Invalid,
    /// Its priority level's queue is full.
    QueueFull,
    /// It would be answered after its timeout given the work ahead of it
    /// (`state/admission.rs`).
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
    queues: Queues<T>,
    /// Cancelled entries removed by `enqueue`, reported by the next `next`.
    swept: Vec<Entry<T>>,
    next_seq: u64,
    closing: bool,
    latency: LatencyModel,
    /// What the adaptive hold learns (only fed when the delay is adaptive).
    hold: Hold,
    /// Batches taken by [`State::next`] and not yet recorded: their rows and when
    /// they started (a prediction counts the rest of their runs as work ahead).
    running: Vec<(usize, Instant)>,
}

impl<T: Pending> State<T> {
    pub fn new(config: SchedulerConfig, instances: usize) -> Self {
        let queues = Queues::new(config.levels.iter().map(|l| l.timeout_action));
        let latency = LatencyModel::new(config.max_batch_size);
        State {
            config,
            instances: instances.max(1),
            queues,
            swept: Vec::new(),
            next_seq: 0,
            closing: false,
            latency,
            hold: Hold::default(),
            running: Vec::new(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The pool's instance count changed (early rejection counts on it).
    pub fn set_instances(&mut self, instances: usize) {
        self.instances = instances.max(1);
    }

    /// Requests waiting (a cancelled one counts until an instance meets it or its level
    /// fills up).
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests waiting whose callers still wait for them (walks the queues: for the
    /// statistics, not for decisions).
    pub fn waiting(&self) -> usize {
        self.queues.waiting()
    }

    /// Whether the request `seq` (from [`State::enqueue`]) still waits in the queue,
    /// i.e. no instance has taken it yet.
    pub fn is_queued(&self, seq: u64) -> bool {
        self.queues.contains(seq)
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
        let levels = self.queues.level_count();
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
        let ix = level - 1;
        let policy = self.config.levels[ix];
        if self.queues.level_len(ix) >= policy.max_queue_size {
            // Requests whose clients left do not hold places.
            self.queues.drop_cancelled(ix, &mut self.swept);
        }
        if self.queues.level_len(ix) >= policy.max_queue_size {
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
        if let (Some(deadline), true) = (deadline, self.config.early_rejection) {
            let load = admission::Load {
                latency: &self.latency,
                ahead: self.queues.rows_through(ix),
                instances: self.instances,
                // Without batching a request runs alone.
                max_batch: match self.config.batching {
                    Batching::Off => rows.max(1),
                    Batching::Dynamic(_) => self.config.max_batch_size.max(1),
                },
            };
            if let Some(e) = admission::check(load, rows, now, deadline, &self.config.label) {
                return Err((payload, e, Rejection::Deadline));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues.push(
            ix,
            Entry {
                seq,
                rows,
                enqueued: now,
                deadline,
                payload,
            },
        );
        if self.is_adaptive() {
            self.hold.arrived(rows, now);
        }
        let hard = deadline.filter(|_| policy.timeout_action == TimeoutAction::Reject);
        Ok((seq, hard))
    }

    /// Records how long the engine took for a batch of `rows` rows (one taken by
    /// [`State::next`], now finished).
    pub fn record(&mut self, rows: usize, elapsed: Duration) {
        self.latency.observe(rows, elapsed);
        // The oldest running batch of that size is the one that ended (batches of one
        // size are alike to a prediction).
        if let Some(ix) = self.running.iter().position(|&(r, _)| r == rows) {
            self.running.remove(ix);
        }
    }

    /// Marks the end of a run (its answers are going out now): the adaptive hold counts
    /// the rows arriving within one fixed cost from now (in a closed loop, the clients
    /// just answered coming back).
    pub fn ended(&mut self, now: Instant) {
        if self.is_adaptive() {
            let horizon = self
                .latency
                .fixed_cost(1, self.config.max_batch_size)
                .unwrap_or(Duration::ZERO);
            self.hold.ended(now, horizon);
        }
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
            cancelled: std::mem::take(&mut self.swept),
            wake_at: None,
        };
        self.queues.expire(now, &mut step);
        let cap = match self.config.batching {
            Batching::Off => 0,
            Batching::Dynamic(_) => self.config.max_batch_size,
        };
        let Some(c) = self.queues.candidate(cap, &mut step) else {
            step.wake_at = self.queues.earliest_deadline();
            return step;
        };
        let full = self.config.max_batch_size;
        let plan = dispatch::plan(&self.config.batching, full, &c, self.closing, now, || {
            let Batching::Dynamic(db) = &self.config.batching else {
                return None;
            };
            let Delay::Adaptive { max } = db.delay else {
                return None;
            };
            // The run that could follow a hold: at most a full batch.
            let start_by = self.queues.earliest_deadline().map(|d| {
                let run = self.latency.estimate(full).unwrap_or_default();
                d.checked_sub(run).unwrap_or(now).max(now)
            });
            self.hold.until(Look {
                rows: c.rows,
                fixed: self.latency.fixed_cost(c.rows, full),
                max,
                start_by,
                now,
            })
        });
        let count = match plan {
            Plan::All => c.count,
            Plan::Until(due) if now >= due => {
                let preferred = match &self.config.batching {
                    Batching::Dynamic(db) => db.preferred.as_slice(),
                    Batching::Off => &[],
                };
                self.queues
                    .preferred_prefix(preferred, c.count)
                    .unwrap_or(c.count)
            }
            Plan::Until(due) => {
                step.wake_at = Some(due.min(self.queues.earliest_deadline().unwrap_or(due)));
                return step;
            }
        };
        let batch = self.queues.take(count);
        // Bounded by the instances in a pool; a caller that never records (a test of
        // batch forming) drops the oldest.
        if self.running.len() >= self.instances.max(1) * 4 {
            self.running.remove(0);
        }
        self.running.push((batch.iter().map(|e| e.rows).sum(), now));
        step.batch = Some(batch);
        step
    }

    /// Whether the hold is on, i.e. whether `enqueue` and `ended` feed it.
    ///
    /// `cargo mutants`' "replace with `true`" survives, and is equivalent: the hold is
    /// consulted only by `next`'s closure under `Delay::Adaptive`, so feeding it in the
    /// other modes costs work but changes no decision (the mutant is a slowdown, not
    /// a behaviour).
    fn is_adaptive(&self) -> bool {
        matches!(
            &self.config.batching,
            Batching::Dynamic(db) if matches!(db.delay, Delay::Adaptive { .. })
        )
    }
}

#[cfg(test)]
mod tests;

//! What a caller outside the queue may ask of it before sending: when a request of
//! some rows sent now would likely be answered (a variant family compares its
//! variants with it), and latency figures measured elsewhere (`sluice profile`) to
//! start the learned latency from, so the first requests are predicted too.

use std::time::{Duration, Instant};

use super::{admission, Pending, State};
use crate::config::Batching;

/// When a request sent now would likely be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prediction {
    /// Until its run starts (the work queued ahead of it drains).
    pub wait: Duration,
    /// Its run.
    pub run: Duration,
}

impl Prediction {
    /// From now until the answer.
    pub fn total(&self) -> Duration {
        self.wait + self.run
    }
}

impl<T: Pending> State<T> {
    /// Seeds the learned latency of a batch of `rows` rows with a measured one (a
    /// profile); sizes already learned from runs or above the maximum are left alone.
    pub fn seed_latency(&mut self, rows: usize, elapsed: Duration) {
        if rows >= 1 && self.latency.estimate_exact(rows).is_none() {
            self.latency.observe(rows, elapsed);
        }
    }

    /// How long after `now` a request of `rows` rows at the default priority level
    /// would likely be answered: when every instance is busy, the soonest of their
    /// runs to end (its learned latency less the time it has run) ends first; then the
    /// rows queued ahead drain at the best throughput learned times the instances,
    /// then its own run. `None` before anything is known of the engine's latency.
    pub fn predicted_answer(&self, rows: usize, now: Instant) -> Option<Prediction> {
        let prediction = self.queued_answer(rows, now)?;
        Some(Prediction {
            wait: prediction.wait + self.busy_for(now),
            run: prediction.run,
        })
    }

    /// How long until an instance is free: zero while one is idle, else the least
    /// rest of a running batch's learned latency.
    fn busy_for(&self, now: Instant) -> Duration {
        if self.running.len() < self.instances {
            return Duration::ZERO;
        }
        self.running
            .iter()
            .map(|&(rows, started)| {
                let run = self.latency.estimate(rows).unwrap_or_default();
                run.saturating_sub(now.saturating_duration_since(started))
            })
            .min()
            .unwrap_or_default()
    }

    /// The prediction of the queue alone (as if an instance were free now).
    fn queued_answer(&self, rows: usize, now: Instant) -> Option<Prediction> {
        let max_batch = match self.config.batching {
            Batching::Off => rows.max(1),
            Batching::Dynamic(_) => self.config.max_batch_size.max(1),
        };
        let load = admission::Load {
            latency: &self.latency,
            ahead: self.rows_ahead(),
            instances: self.instances,
            max_batch,
        };
        match admission::estimated_answer(load, rows, now) {
            Some((start, finish)) => Some(Prediction {
                wait: start.saturating_duration_since(now),
                run: finish.saturating_duration_since(start),
            }),
            // Nothing ahead: it starts at once and takes one run of its rows.
            None if load.ahead == 0 => {
                self.latency
                    .estimate(rows.min(max_batch))
                    .map(|run| Prediction {
                        wait: Duration::ZERO,
                        run,
                    })
            }
            None => None,
        }
    }

    /// An instance is free and nothing is queued: a request sent now would run at once.
    pub fn idle(&self) -> bool {
        self.running.len() < self.instances && self.queues.len() == 0
    }

    /// Batches running on the instances now.
    pub fn running_batches(&self) -> usize {
        self.running.len()
    }

    /// Rows queued at the default priority level and above.
    pub fn rows_ahead(&self) -> usize {
        let ix = self.config.default_level.saturating_sub(1);
        self.queues
            .rows_through(ix.min(self.queues.level_count().saturating_sub(1)))
    }

    /// Instances that run this state's batches.
    pub fn instances(&self) -> usize {
        self.instances
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::{JobOptions, Pending, State};
    use crate::config::{Batching, Delay, DynamicBatching, LevelPolicy, SchedulerConfig};

    struct Item;
    impl Pending for Item {
        fn is_cancelled(&self) -> bool {
            false
        }
    }

    fn state(max_batch: usize, instances: usize) -> State<Item> {
        let config = SchedulerConfig {
            label: "m:1".into(),
            max_batch_size: max_batch,
            batching: Batching::Dynamic(DynamicBatching {
                preferred: Vec::new(),
                delay: Delay::Static(Duration::ZERO),
                preserve_ordering: false,
            }),
            levels: vec![LevelPolicy::reject_after(None, 100)],
            default_level: 1,
            early_rejection: true,
        };
        State::new(config, instances)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_known_predicts_nothing_and_seeds_start_it() {
        let mut s = state(4, 1);
        let now = Instant::now();
        assert_eq!(s.predicted_answer(1, now), None);
        s.seed_latency(1, ms(10));
        s.seed_latency(4, ms(20));
        let total = |s: &State<Item>, rows| s.predicted_answer(rows, now).map(|p| p.total());
        // Nothing ahead: one run of its own rows.
        assert_eq!(total(&s, 1), Some(ms(10)));
        assert_eq!(total(&s, 4), Some(ms(20)));
        assert_eq!(s.predicted_answer(4, now).unwrap().wait, Duration::ZERO);
        // A run moves the mean from the seed; a later seed never overrides it.
        s.record(1, ms(2));
        let learned = total(&s, 1).unwrap().as_secs_f64();
        assert!((learned - 0.0084).abs() < 1e-9, "{learned}");
        s.seed_latency(1, ms(50));
        assert_eq!(total(&s, 1).unwrap().as_secs_f64(), learned);
    }

    #[test]
    fn a_run_in_progress_on_every_instance_delays_the_start_by_its_rest() {
        let t0 = Instant::now();
        for instances in [1, 2] {
            let mut s = state(4, instances);
            s.seed_latency(1, ms(10));
            s.seed_latency(4, ms(20));
            let wait = |s: &State<Item>, at| s.predicted_answer(1, at).unwrap().wait;
            assert!(s.idle());
            s.enqueue(Item, 1, JobOptions::default(), t0).ok().unwrap();
            assert!(!s.idle(), "queued");
            assert!(s.next(t0).batch.is_some(), "the batch starts");
            // Idle while an instance is free (two), not while every one runs (one),
            // even past the run's learned latency (wait is then zero).
            assert_eq!(s.idle(), instances == 2);
            // One instance: the new request waits for the rest of the running one.
            // Two: the other is free, nothing to wait for.
            let want = if instances == 1 { ms(10) } else { ms(0) };
            assert_eq!(wait(&s, t0), want, "{instances} instances");
            assert_eq!(wait(&s, t0 + ms(4)), want.saturating_sub(ms(4)));
            // Past its learned latency it is about to end: no wait is counted.
            assert_eq!(wait(&s, t0 + ms(30)), ms(0));
            assert_eq!(s.idle(), instances == 2);
            // Ended: nothing is running.
            s.record(1, ms(10));
            assert_eq!(wait(&s, t0), ms(0));
            assert!(s.idle());
        }
    }

    #[test]
    fn the_queue_ahead_drains_at_the_best_throughput_times_the_instances() {
        let now = Instant::now();
        for (instances, want_ms) in [(1, 80 + 20), (2, 40 + 20)] {
            let mut s = state(4, instances);
            // 4 rows per 20 ms is the best throughput: 200 rows/s per instance.
            s.seed_latency(1, ms(10));
            s.seed_latency(4, ms(20));
            for _ in 0..16 {
                s.enqueue(Item, 1, JobOptions::default(), now).ok().unwrap();
            }
            assert_eq!(s.rows_ahead(), 16);
            // 16 rows ahead, then a run of a full batch (16 + 1 capped at 4).
            let got = s.predicted_answer(1, now).unwrap();
            assert!(
                (got.total().as_secs_f64() - want_ms as f64 / 1e3).abs() < 1e-9,
                "{instances} instances: {got:?}"
            );
            assert!((got.run.as_secs_f64() - 0.020).abs() < 1e-9, "{got:?}");
        }
    }
}

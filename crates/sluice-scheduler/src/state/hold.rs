//! The adaptive hold (opt-in, `sluice_adaptive_batching: "true"`): whether a free
//! instance should wait a little for more requests before running a batch that is
//! not full, and until when.
//!
//! Key decision: the hold fires only for requests that come *back* when answers go
//! out (closed loops: clients with a fixed concurrency, `perf_analyzer`), where a
//! greedy batcher splits the clients into groups that never merge (28 + 4 of 32; 1 + 7
//! of 8), and each extra run pays the engine's fixed cost again. It learns two things,
//! both O(1) per arrival and per run end:
//!
//! - after each run ends, the rows `E` that arrive within one fixed cost and the time
//!   `T` until the last of them ([`AfterRun`]);
//! - the mean time between rows over all arrivals ([`Gap`]).
//!
//! With the engine read as `S(b) = F + m·b` ([`super::latency::LatencyModel::fixed_cost`]),
//! holding `r` queued rows for the `E` rows still expected (within `T`) makes the run's
//! time per row `(T + F + m(r + E)) / (r + E)` instead of `(F + m r) / r`: it pays
//! exactly when `r T < F E`. The rules, in the order [`Hold::until`] applies them, each
//! with its own test in `state/tests.rs`:
//!
//! 1. **no fixed cost, no hold**: an engine whose cost is all per row (`F` = 0) never
//!    waits;
//! 2. **nothing expected, no hold**: no run has ended yet, nothing has been learned
//!    about the rows after a run, or the last run's window has closed (a row came
//!    after it);
//! 3. **independent arrivals are never held**: the rows after a run must come at least
//!    [`BURST_FACTOR`] times as fast as rows on average, the sign that answers bring
//!    requests back (under Poisson arrivals a greedy batcher already grows its batches
//!    from the queue that forms during each run, and holding only adds latency);
//! 4. **no saving, no hold**: `r T ≥ F E`, which includes the expected rows all being in
//!    (`E ≤ 0`);
//! 5. **bounds**: the hold ends at the earliest of the learned silence (no more rows
//!    coming), the end of the window (one fixed cost after the run's end), the run's
//!    end plus the configured maximum, and a queued deadline less a full batch's run.
//!
//! The caller re-asks at each arrival and at the returned instant; every bound is
//! measured from the run's end, so later looks never stretch a hold.

use std::time::{Duration, Instant};

/// Rule 3: the rows after a run must come at least this many times as fast as the
/// mean rate of all rows for the hold to fire. Closed loops come back many times
/// faster than their mean (a burst per run); Poisson arrivals come as fast after a run
/// as at any other time (ratio 1), so 2 separates them with margin on both sides.
pub(crate) const BURST_FACTOR: f64 = 2.0;

/// Weight of one arrival in the mean time between rows: about the last 64 arrivals, a
/// few runs' worth in a closed loop, so a change of load shows within a few runs.
pub(crate) const GAP_WEIGHT: f64 = 1.0 / 64.0;

/// Weight of one run's window in the learned rows after a run and their timing: about
/// the last five runs, as for the latency model.
pub(crate) const AFTER_RUN_WEIGHT: f64 = 0.2;

/// Rule 5 (silence): before the first row after a run has come, the rows count as
/// not coming after this many times the usual wait for the first one...
pub(crate) const FIRST_ROW_SILENCE: f64 = 2.0;
/// ...and once some have come, after this many rows' usual spacing since the last.
pub(crate) const ROW_SILENCE: f64 = 3.0;
/// Added to both silences: the scheduling jitter of a woken thread, so a hold is not
/// ended by the time it takes to notice an arrival.
pub(crate) const SILENCE_SLACK: Duration = Duration::from_micros(100);

/// What one look at the queue brings to the hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    /// Rows that would run now.
    pub(crate) rows: usize,
    /// The engine's fixed cost per run near `rows` (`None`: unknown or zero).
    pub(crate) fixed: Option<Duration>,
    /// The longest a batch may be held (`sluice_adaptive_max_delay_microseconds`).
    pub(crate) max: Duration,
    /// The latest instant a run may start for the earliest queued deadline to be
    /// met (that deadline less a full batch's estimated run: what a hold may grow to).
    pub(crate) start_by: Option<Instant>,
    pub(crate) now: Instant,
}

/// What the hold has learned about arrivals.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hold {
    after_run: AfterRun,
    gap: Gap,
}

impl Hold {
    /// Learns from an arrival of `rows` rows at `now`.
    pub(crate) fn arrived(&mut self, rows: usize, now: Instant) {
        self.after_run.arrived(now, rows);
        self.gap.arrived(now, rows);
    }

    /// A run ended at `now`: the rows arriving within `horizon` (one fixed cost) are
    /// counted from now on. A zero horizon counts nothing.
    pub(crate) fn ended(&mut self, now: Instant, horizon: Duration) {
        self.after_run.start(now, horizon);
    }

    /// `None`: run now. `Some(t)`: hold until `t` (re-asked at each arrival).
    pub(crate) fn until(&self, look: Look) -> Option<Instant> {
        // Rule 1.
        let fixed = look.fixed?.as_secs_f64();
        // Rule 2.
        let expected = self.after_run.remaining(look.now)?;
        // Rule 3. (`>` vs `>=` differ only when two learned f64 means tie exactly: an
        // equivalent mutant.)
        if expected.per_row * BURST_FACTOR > self.gap.mean() {
            return None;
        }
        // Rule 4.
        if look.rows as f64 * expected.within >= fixed * expected.rows {
            return None;
        }
        // Rule 5.
        let mut until = expected
            .silence
            .min(expected.window_end)
            .min(expected.run_end + look.max);
        if let Some(start_by) = look.start_by {
            until = until.min(start_by);
        }
        Some(until)
    }
}

/// The mean time between rows, over all arrivals.
#[derive(Debug, Clone, Copy, Default)]
struct Gap {
    /// Seconds per row (`None` until two arrivals) and the last arrival.
    mean: Option<f64>,
    last: Option<Instant>,
}

impl Gap {
    fn arrived(&mut self, now: Instant, rows: usize) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).as_secs_f64() / rows.max(1) as f64;
            self.mean = Some(
                self.mean
                    .map_or(gap, |m| m * (1.0 - GAP_WEIGHT) + gap * GAP_WEIGHT),
            );
        }
        self.last = Some(now);
    }

    /// Seconds per row; infinite before two arrivals (nothing to compare a burst with).
    fn mean(&self) -> f64 {
        self.mean.unwrap_or(f64::INFINITY)
    }
}

/// Rows arriving within a horizon after each run ends, and when the first and the last
/// of them came, as exponentially weighted means.
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
    /// Offsets from `start` of the first and the last row counted.
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
    /// The last run's end, and the end of its window.
    run_end: Instant,
    window_end: Instant,
}

impl AfterRun {
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

    /// Folds the open window into the means.
    fn close(&mut self) {
        let Some(w) = self.open.take() else { return };
        let sample = Learned {
            rows: w.rows as f64,
            first: w.first.as_secs_f64(),
            last: w.last.as_secs_f64(),
        };
        let k = AFTER_RUN_WEIGHT;
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

    /// What is still expected after the last run's end, as of `now` (possibly no rows
    /// or fewer than none); `None` when nothing is known (rule 2).
    fn remaining(&self, now: Instant) -> Option<Expected> {
        let m = self.mean?;
        let w = self.open?;
        let elapsed = now.saturating_duration_since(w.start);
        // Past the window's end, rule 5 ends the hold; once the expected rows are in,
        // rule 4 does (`E ≤ 0`).
        let left = m.rows - w.rows as f64;
        let per_row = m.last / m.rows.max(1.0);
        let silence = if w.rows == 0 {
            w.start + Duration::from_secs_f64(FIRST_ROW_SILENCE * m.first)
        } else {
            w.start + w.last + Duration::from_secs_f64(ROW_SILENCE * per_row)
        } + SILENCE_SLACK;
        Some(Expected {
            rows: left,
            within: (m.last - elapsed.as_secs_f64()).max(0.0),
            per_row,
            silence,
            run_end: w.start,
            window_end: w.start + w.horizon,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The learned means, exactly (the rules that read them are tested in
    //! `state/tests.rs`).

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_mean_gap_is_per_row_and_weighted() {
        let t = Instant::now();
        let mut g = Gap::default();
        g.arrived(t, 1);
        assert_eq!(
            g.mean(),
            f64::INFINITY,
            "one arrival: nothing to compare with"
        );
        g.arrived(t + Duration::from_millis(1), 1);
        assert!(close(g.mean(), 0.001));
        // 6.4 ms for 2 rows: 3.2 ms a row, weighted 1/64.
        g.arrived(t + Duration::from_micros(7400), 2);
        assert!(
            close(g.mean(), 0.001 * 63.0 / 64.0 + 0.0032 / 64.0),
            "{}",
            g.mean()
        );
    }

    #[test]
    fn the_rows_after_a_run_are_weighted_means_of_the_windows() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let mut a = AfterRun::default();
        a.start(t, ms(1));
        for offset in [100, 400] {
            a.arrived(t + us(offset), 2);
        }
        let t2 = t + ms(10);
        a.start(t2, ms(1));
        a.arrived(t2 + us(200), 1);
        a.arrived(t2 + us(300), 1);
        let t3 = t + ms(20);
        a.start(t3, ms(1));
        let e = a.remaining(t3).unwrap();
        // rows 4 then 2, first 100 then 200 µs, last 400 then 300 µs, weights 0.8/0.2.
        assert!(close(e.rows, 3.6), "{}", e.rows);
        assert!(close(e.within, 0.00038), "{}", e.within);
        assert!(close(e.per_row, 0.00038 / 3.6), "{}", e.per_row);
        let first = Duration::from_secs_f64(FIRST_ROW_SILENCE * 0.00012);
        let silence = t3 + first + SILENCE_SLACK;
        let diff = e.silence.max(silence) - e.silence.min(silence);
        assert!(diff <= Duration::from_nanos(1), "{diff:?}");
        assert_eq!((e.run_end, e.window_end), (t3, t3 + ms(1)));
    }

    #[test]
    fn a_row_at_the_end_of_the_window_counts_and_one_after_closes_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AfterRun::default();
        a.start(t, ms(1));
        a.arrived(t + ms(1), 1);
        assert_eq!(a.open.map(|w| w.rows), Some(1));
        a.arrived(t + ms(1) + Duration::from_nanos(1), 1);
        assert!(a.open.is_none());
        assert!(a.mean.is_some_and(|m| m.rows == 1.0));
    }
}

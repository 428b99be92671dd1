//! The engine's latency per batch size, learned while serving, and what the batcher
//! reads from it: an estimate for any batch size, the best throughput seen (early
//! rejection), and the fixed cost per run (the adaptive hold).

use std::time::Duration;

/// Engine latency per batch size, learned as an exponentially weighted mean.
#[derive(Debug, Clone)]
pub(crate) struct LatencyModel {
    /// Index b: seconds for a batch of b rows (0.0 = not seen yet).
    seconds: Vec<f64>,
}

impl LatencyModel {
    /// Weight of one run in the mean latency of its batch size: about the last five
    /// runs count, so the model follows a machine whose speed drifts (other work on
    /// the cores) within a few runs without jumping on one outlier.
    pub(crate) const WEIGHT: f64 = 0.2;

    /// A model for batches of 1 to `max_rows` rows (at least 1).
    pub(crate) fn new(max_rows: usize) -> Self {
        LatencyModel {
            seconds: vec![0.0; max_rows.max(1) + 1],
        }
    }

    /// Records one run of `rows` rows; sizes above the maximum are ignored (slot 0 is
    /// never read).
    pub(crate) fn observe(&mut self, rows: usize, elapsed: Duration) {
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

    /// The latency learned for exactly `rows` rows, if any run (or seed) of that size
    /// was seen.
    pub(crate) fn estimate_exact(&self, rows: usize) -> Option<Duration> {
        self.seconds
            .get(rows)
            .filter(|&&s| s > 0.0)
            .map(|&s| Duration::from_secs_f64(s))
    }

    /// The latency of a batch of `rows` rows: learned, else interpolated between the
    /// nearest sizes seen, else scaled from the largest size seen below it (no better
    /// per row than that), else the smallest size seen above it; `None` before any run.
    pub(crate) fn estimate(&self, rows: usize) -> Option<Duration> {
        let rows = rows.clamp(1, self.seconds.len() - 1);
        if self.seconds[rows] > 0.0 {
            return Some(Duration::from_secs_f64(self.seconds[rows]));
        }
        let below = (1..rows).rev().find(|&b| self.seconds[b] > 0.0);
        // (Starting at `rows`, whose slot is empty here, would find the same: the mutant
        // `rows * 1` is equivalent.)
        let above = (rows + 1..self.seconds.len()).find(|&b| self.seconds[b] > 0.0);
        let s = match (below, above) {
            (Some(a), Some(c)) => {
                let t = (rows - a) as f64 / (c - a) as f64;
                self.seconds[a] + t * (self.seconds[c] - self.seconds[a])
            }
            (Some(a), None) => self.seconds[a] * rows as f64 / a as f64,
            (None, Some(c)) => self.seconds[c],
            (None, None) => return None,
        };
        Some(Duration::from_secs_f64(s))
    }

    /// The best rows per second seen at any batch size.
    pub(crate) fn best_throughput(&self) -> Option<f64> {
        self.seconds
            .iter()
            .enumerate()
            .filter(|(_, &s)| s > 0.0)
            .map(|(b, &s)| b as f64 / s)
            .max_by(f64::total_cmp)
    }

    /// The engine's latency near `rows` read as `S(b) = F + m·b`, with `F` and `m`
    /// from the estimates at `rows` and at a full batch of `full` rows: `F`, or `None`
    /// when unknown, when `rows` is a full batch, or when the cost is all per row
    /// (`F ≤ 0`: tract on convnets) or falls with the batch (`m < 0`).
    pub(crate) fn fixed_cost(&self, rows: usize, full: usize) -> Option<Duration> {
        if rows >= full {
            return None;
        }
        let this = self.estimate(rows)?.as_secs_f64();
        let whole = self.estimate(full)?.as_secs_f64();
        let per_row = (whole - this) / (full - rows) as f64;
        let fixed = this - per_row * rows as f64;
        // (`fixed >= 0.0` would be equivalent: a zero fixed cost opens no window after a
        // run and never passes the hold's cost rule, exactly as `None`.)
        (fixed > 0.0 && per_row >= 0.0).then(|| Duration::from_secs_f64(fixed))
    }
}

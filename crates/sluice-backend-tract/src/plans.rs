//! Which batch sizes get a fixed-shape plan next to the symbolic one.
//!
//! tract optimizes much better when every dimension is known: on convolutional
//! networks a plan for a fixed batch runs several times faster than the plan with
//! a symbolic batch `N` (see BENCHMARKS.md, "Engines"). But a fixed plan for a
//! large batch is not always cheaper per item than several runs of a small one (on
//! convnets tract's cost per item *grows* with the batch), and for some models the
//! symbolic plan is the fastest at large batches. So a batching model gets one
//! optimized plan per *planned* batch size, every plan is timed at load, and a
//! [`Schedule`] says, for every batch size, which runs to make: one padded run,
//! several smaller runs, or the symbolic plan.

use std::collections::BTreeSet;

use sluice_core::{Error, ModelConfig, Result};

/// The model parameter naming the planned batch sizes: `"1,2,4,8"`, or `"none"`.
pub const PLANNED_BATCH_SIZES: &str = "tract_planned_batch_sizes";

/// How the backend chooses planned batch sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchPlans {
    /// Per model: the `tract_planned_batch_sizes` parameter when given, else the
    /// preferred batch sizes of `dynamic_batching` plus 1, else the powers of two
    /// up to `max_batch_size` (and `max_batch_size` itself).
    #[default]
    Auto,
    /// Only the symbolic plan, whatever the config says (for comparisons).
    SymbolicOnly,
}

/// The sorted batch sizes to plan for `config`.
pub(crate) fn planned_sizes(policy: BatchPlans, config: &ModelConfig) -> Result<Vec<usize>> {
    let max = usize::try_from(config.max_batch_size).unwrap_or(0);
    if policy == BatchPlans::SymbolicOnly || max == 0 {
        return Ok(Vec::new());
    }
    let mut sizes = BTreeSet::new();
    if let Some(v) = config.parameter(PLANNED_BATCH_SIZES) {
        let v = v.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        for part in v.split(',') {
            let n: usize = part.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::invalid(format!(
                    "parameter {PLANNED_BATCH_SIZES} must be a comma-separated list of \
                     positive batch sizes or 'none', got '{v}'"
                ))
            })?;
            if n > max {
                return Err(Error::invalid(format!(
                    "parameter {PLANNED_BATCH_SIZES}: batch size {n} is above max_batch_size {max}"
                )));
            }
            sizes.insert(n);
        }
        return Ok(sizes.into_iter().collect());
    }
    let preferred: Vec<usize> = config
        .dynamic_batching
        .as_ref()
        .map(|d| {
            d.preferred_batch_size
                .iter()
                .filter_map(|&p| usize::try_from(p).ok())
                .filter(|&p| p > 0 && p <= max)
                .collect()
        })
        .unwrap_or_default();
    if preferred.is_empty() {
        let mut p = 1;
        while p <= max {
            sizes.insert(p);
            p *= 2;
        }
        sizes.insert(max);
    } else {
        sizes.insert(1);
        sizes.extend(preferred);
    }
    Ok(sizes.into_iter().collect())
}

/// One run of a batch: the planned batch size it runs on ([`SYMBOLIC`]: the
/// symbolic plan, unpadded) and how many real rows it carries (the rest is padding).
pub(crate) type Chunk = (usize, usize);

/// The plan "size" of a chunk that runs on the symbolic plan.
pub(crate) const SYMBOLIC: usize = 0;

/// The run time at `rows` from measured `(rows, seconds)` points: linear between
/// points, proportional below the first and by the last cost per item above.
fn interpolate(points: &[(usize, f64)], rows: usize) -> Option<f64> {
    let (&(n0, t0), rest) = points.split_first()?;
    if rows <= n0 {
        return Some(t0 * rows as f64 / n0 as f64);
    }
    let mut prev = (n0, t0);
    for &(n, t) in rest {
        if rows <= n {
            let f = (rows - prev.0) as f64 / (n - prev.0) as f64;
            return Some(prev.1 + f * (t - prev.1));
        }
        prev = (n, t);
    }
    Some(prev.1 * rows as f64 / prev.0 as f64)
}

/// How each batch size runs: as one run on a planned size (padded), or as several
/// runs on planned sizes whose per-item cost is lower. An empty plan means the
/// symbolic plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    /// Index: rows (0 unused).
    by_rows: Vec<Vec<Chunk>>,
}

impl Schedule {
    /// Without measured costs: the smallest planned size that holds the batch, if it
    /// pads by at most as many rows as the batch has (padding doubles the work at
    /// worst); otherwise the symbolic plan.
    pub(crate) fn padded(planned: &[usize], max: usize) -> Schedule {
        let by_rows = (0..=max)
            .map(|rows| {
                planned
                    .iter()
                    .copied()
                    .find(|&p| p >= rows)
                    .filter(|&p| rows > 0 && p <= rows.saturating_mul(2))
                    .map(|p| vec![(p, rows)])
                    .unwrap_or_default()
            })
            .collect();
        Schedule { by_rows }
    }

    /// From measured run times, `(batch size, seconds)`, of each fixed plan and of
    /// the symbolic plan at those sizes: for every batch size the cheapest sequence
    /// of runs, by dynamic programming over the rows. A run is a fixed plan (padded
    /// when it holds more rows than are left) or the symbolic plan on all the rows
    /// left (priced by interpolating its measured times). Among near-equal costs
    /// (within 2%) fewer runs win.
    pub(crate) fn from_costs(
        planned: &[(usize, f64)],
        symbolic: &[(usize, f64)],
        max: usize,
    ) -> Schedule {
        let mut sizes: Vec<(usize, f64)> = planned.to_vec();
        sizes.sort_by_key(|s| std::cmp::Reverse(s.0)); // largest first: ties keep fewer runs
                                                       // best[r] = (cost, runs, first chunk)
        let mut best: Vec<(f64, usize, Option<Chunk>)> = vec![(0.0, 0, None)];
        for rows in 1..=max {
            let mut pick: (f64, usize, Option<Chunk>) = (f64::INFINITY, usize::MAX, None);
            let mut consider = |cost: f64, runs: usize, chunk: Chunk| {
                let better = cost < pick.0 * 0.98 || (cost <= pick.0 * 1.02 && runs < pick.1);
                if pick.2.is_none() || better {
                    pick = (cost, runs, Some(chunk));
                }
            };
            for &(p, t) in &sizes {
                let take = p.min(rows);
                let (rest, rest_runs, _) = best[rows - take];
                consider(t + rest, rest_runs + 1, (p, take));
            }
            if let Some(t) = interpolate(symbolic, rows) {
                consider(t, 1, (SYMBOLIC, rows));
            }
            best.push(pick);
        }
        let by_rows = (0..=max)
            .map(|rows| {
                let mut chunks = Vec::new();
                let mut left = rows;
                while left > 0 {
                    let Some((p, take)) = best[left].2 else { break };
                    chunks.push((p, take));
                    left -= take;
                }
                chunks
            })
            .collect();
        Schedule { by_rows }
    }

    /// The runs for a batch of `rows`; empty: the symbolic plan.
    pub(crate) fn chunks(&self, rows: usize) -> &[Chunk] {
        self.by_rows.get(rows).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{DynamicBatching, ModelParameter};

    fn config(max: i32, preferred: &[i64], param: Option<&str>) -> ModelConfig {
        let mut c = ModelConfig {
            max_batch_size: max,
            ..ModelConfig::default()
        };
        if !preferred.is_empty() {
            c.dynamic_batching = Some(DynamicBatching {
                preferred_batch_size: preferred.to_vec(),
                ..DynamicBatching::default()
            });
        }
        if let Some(p) = param {
            c.parameters.insert(
                PLANNED_BATCH_SIZES.to_owned(),
                ModelParameter {
                    string_value: p.to_owned(),
                },
            );
        }
        c
    }

    #[test]
    fn defaults() {
        let auto = BatchPlans::Auto;
        assert_eq!(
            planned_sizes(auto, &config(32, &[], None)).unwrap(),
            vec![1, 2, 4, 8, 16, 32]
        );
        assert_eq!(
            planned_sizes(auto, &config(12, &[], None)).unwrap(),
            vec![1, 2, 4, 8, 12]
        );
        assert_eq!(
            planned_sizes(auto, &config(32, &[4, 8], None)).unwrap(),
            vec![1, 4, 8]
        );
        assert!(planned_sizes(auto, &config(0, &[], None))
            .unwrap()
            .is_empty());
        assert!(
            planned_sizes(BatchPlans::SymbolicOnly, &config(8, &[], None))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_parameter_wins() {
        let auto = BatchPlans::Auto;
        assert_eq!(
            planned_sizes(auto, &config(32, &[4], Some(" 8, 1,2 "))).unwrap(),
            vec![1, 2, 8]
        );
        assert!(planned_sizes(auto, &config(32, &[4], Some("none")))
            .unwrap()
            .is_empty());
        assert!(planned_sizes(auto, &config(32, &[], Some("")))
            .unwrap()
            .is_empty());
        for bad in ["0", "x", "1,,2", "64"] {
            let err = planned_sizes(auto, &config(32, &[], Some(bad))).unwrap_err();
            assert!(err.message().contains(PLANNED_BATCH_SIZES), "{bad}: {err}");
        }
    }

    #[test]
    fn padded_pads_at_most_double() {
        let s = Schedule::padded(&[1, 2, 4, 8, 32], 40);
        assert_eq!(s.chunks(1), &[(1, 1)]);
        assert_eq!(s.chunks(3), &[(4, 3)]);
        assert_eq!(s.chunks(5), &[(8, 5)]);
        assert_eq!(s.chunks(8), &[(8, 8)]);
        assert!(s.chunks(9).is_empty(), "32 would pad 9 rows by 23");
        assert_eq!(s.chunks(16), &[(32, 16)]);
        assert!(s.chunks(33).is_empty());
        assert!(s.chunks(41).is_empty());
        assert!(Schedule::padded(&[], 4).chunks(1).is_empty());
    }

    #[test]
    fn costs_choose_between_one_big_run_and_many_small_ones() {
        // Batching pays (an MLP): one padded run beats many small ones.
        let mlp = Schedule::from_costs(&[(1, 1.0), (8, 2.0), (32, 4.0)], &[], 32);
        assert_eq!(mlp.chunks(8), &[(8, 8)]);
        assert_eq!(mlp.chunks(5), &[(8, 5)]);
        assert_eq!(mlp.chunks(20), &[(32, 20)]);
        assert_eq!(mlp.chunks(9), &[(8, 8), (1, 1)]);
        // Batching costs more per item (a convnet on tract): batch-1 runs.
        let conv = Schedule::from_costs(&[(1, 1.0), (8, 12.0), (32, 50.0)], &[], 32);
        assert_eq!(conv.chunks(3), &[(1, 1), (1, 1), (1, 1)]);
        assert_eq!(conv.chunks(8).len(), 8);
        assert_eq!(conv.chunks(32).len(), 32);
        // Equal per-item cost: fewer runs.
        let flat = Schedule::from_costs(&[(1, 1.0), (8, 8.0)], &[], 8);
        assert_eq!(flat.chunks(8), &[(8, 8)]);
        // The symbolic plan wins where it is cheaper than padding or cutting.
        let sym = Schedule::from_costs(&[(1, 1.0), (8, 4.0)], &[(1, 1.5), (8, 3.0)], 8);
        assert_eq!(sym.chunks(8), &[(SYMBOLIC, 8)]);
        assert_eq!(sym.chunks(1), &[(1, 1)]);
        assert_eq!(
            sym.chunks(5),
            &[(SYMBOLIC, 5)],
            "2.36 beats padding to 8 (4.0)"
        );
        assert_eq!(interpolate(&[(1, 1.0), (8, 8.0)], 4), Some(4.0));
        assert_eq!(interpolate(&[(2, 2.0), (8, 8.0)], 16), Some(16.0));
        assert_eq!(interpolate(&[], 3), None);
        // Every row is carried exactly once.
        for rows in 1..=32 {
            let carried: usize = conv.chunks(rows).iter().map(|c| c.1).sum();
            assert_eq!(carried, rows);
            assert!(conv.chunks(rows).iter().all(|&(p, take)| take <= p));
        }
    }
}

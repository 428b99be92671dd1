//! The planner: per stage of a pipeline, which hardware classes, how many replicas of
//! each and which batch size, at the lowest cost whose simulated p99 meets the objective.
//!
//! Search (InferLine's initialize-then-greedy, then an exact pass when it is cheap):
//! 1. *Initialize*: every stage on its fastest class at the best batch size for its
//!    share of the objective, with enough replicas for the trace's mean rate; then add
//!    a replica to the bottleneck stage (highest load / capacity) until the simulated
//!    p99 meets the objective.
//! 2. *Greedy*: try every cost-reducing action — remove one replica, or move one
//!    replica to a cheaper class (a heterogeneous mix) — each with every batch size of
//!    the stage; take the cheapest feasible result; repeat until none is feasible.
//! 3. *Exact* (KAIROS-style bounds): enumerate every plan cheaper than the greedy one
//!    whose per-window throughput upper bound can carry the trace (arrivals in any
//!    window must be served by its end plus the objective, but for the 1 % p99 may
//!    miss) and whose latency lower bound fits the objective; simulate them in order
//!    of cost; the first feasible one is optimal. Skipped (and reported) when more
//!    candidates than the budget survive the bounds.
//!
//! Costs are per hour; a plan's p99 comes from the same simulator as `sluice simulate`
//! with fixed replica counts over the whole trace.

use serde::{Deserialize, Serialize};

use crate::profile::Profile;
use crate::report::quantile;
use crate::sim::{self, StageSetup};
use crate::{Error, Result};

/// One stage and the hardware classes it may run on (a profile each, with its price).
#[derive(Debug, Clone)]
pub struct PlanStage {
    pub name: String,
    pub classes: Vec<(Profile, f64)>,
}

#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub stages: Vec<PlanStage>,
    pub slo_s: f64,
    pub arrivals: &'a [f64],
    pub duration: f64,
    pub seed: u64,
    /// Most replicas of one class in one stage.
    pub max_replicas: u32,
    /// Allow stages that mix classes.
    pub heterogeneous: bool,
    /// Most simulations the exact pass may spend.
    pub exact_budget: usize,
    pub max_queue_delay_s: f64,
}

/// One stage of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Choice {
    /// Replicas per class (indices as in `PlanStage::classes`).
    pub counts: Vec<u32>,
    pub max_batch: u32,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    pub cost_per_hour: f64,
    pub p99_ms: Option<f64>,
    pub attainment: f64,
    /// `exact` when the bounded enumeration finished, else `greedy`.
    pub search: String,
    pub simulations: usize,
    pub greedy_cost_per_hour: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagePlan {
    pub stage: String,
    pub max_batch: u32,
    /// (hardware class, replicas), classes with 0 left out.
    pub replicas: Vec<(String, u32)>,
}

/// The outcome of simulating one candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    pub feasible: bool,
    pub p99_s: Option<f64>,
    pub attainment: f64,
}

struct Search<'a, 'b> {
    input: &'b PlanInput<'a>,
    simulations: usize,
    cache: std::collections::HashMap<Vec<Choice>, Eval>,
}

/// Price per hour of a plan.
pub fn cost(stages: &[PlanStage], plan: &[Choice]) -> f64 {
    stages
        .iter()
        .zip(plan)
        .map(|(s, c)| {
            s.classes
                .iter()
                .zip(&c.counts)
                .map(|((_, p), n)| p * f64::from(*n))
                .sum::<f64>()
        })
        .sum()
}

fn batch_sizes(stage: &PlanStage) -> Vec<u32> {
    let mut b: Vec<u32> = stage
        .classes
        .iter()
        .flat_map(|(p, _)| p.batches.iter().map(|x| x.batch_size))
        .collect();
    b.sort_unstable();
    b.dedup();
    b
}

/// Arrivals in the busiest span of each length, for the throughput bound.
fn envelope(arrivals: &[f64], windows: &[f64]) -> Vec<(f64, usize)> {
    windows
        .iter()
        .map(|&w| {
            let mut lo = 0;
            let mut best = 0;
            for hi in 0..arrivals.len() {
                while arrivals[lo] <= arrivals[hi] - w {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            (w, best)
        })
        .collect()
}

impl Search<'_, '_> {
    fn eval(&mut self, plan: &[Choice]) -> Eval {
        if let Some(e) = self.cache.get(plan) {
            return *e;
        }
        self.simulations += 1;
        let inp = self.input;
        let stages = inp
            .stages
            .iter()
            .zip(plan)
            .map(|(s, c)| StageSetup {
                name: s.name.clone(),
                classes: s.classes.iter().map(|(p, _)| p.clone()).collect(),
                cost_per_hour: s.classes.iter().map(|(_, c)| *c).collect(),
                initial: c.counts.clone(),
                max_batch: c.max_batch,
                max_queue_delay_s: inp.max_queue_delay_s,
                queue_capacity: None,
                controller: None,
            })
            .collect();
        let r = sim::run(stages, inp.arrivals, inp.duration, inp.seed);
        let mut lat: Vec<f64> = r.requests.iter().filter_map(|x| x.1).collect();
        lat.sort_by(f64::total_cmp);
        let n = r.requests.len().max(1);
        let ok = lat.iter().filter(|&&l| l <= inp.slo_s).count();
        // p99 over all requests (an unanswered one counts as infinitely late)
        let p99 = if lat.len() == r.requests.len() {
            quantile(&lat, 0.99)
        } else {
            None
        };
        let e = Eval {
            feasible: r.requests.is_empty() || p99.is_some_and(|p| p <= inp.slo_s),
            p99_s: p99,
            attainment: ok as f64 / n as f64,
        };
        self.cache.insert(plan.to_vec(), e);
        e
    }
}

/// Upper bound of a stage's throughput (rows/s) at a batch size.
fn stage_throughput(stage: &PlanStage, c: &Choice) -> f64 {
    stage
        .classes
        .iter()
        .zip(&c.counts)
        .map(|((p, _), n)| f64::from(*n) * p.throughput(c.max_batch.min(p.max_batch())))
        .sum()
}

/// KAIROS-style necessary condition for one stage: enough throughput for every window
/// of the envelope (allowing the 1 % of requests that p99 may miss).
fn stage_passes(input: &PlanInput<'_>, env: &[(f64, usize)], st: &PlanStage, c: &Choice) -> bool {
    let slack = input.arrivals.len() as f64 * 0.01;
    let thr = stage_throughput(st, c);
    c.counts.iter().any(|&n| n > 0)
        && env
            .iter()
            .all(|&(w, a)| thr * (w + input.slo_s) >= a as f64 - slack)
}

/// The latency floor of a plan (fastest run of every stage) must fit the objective.
fn floor_fits(input: &PlanInput<'_>, plan: &[Choice]) -> bool {
    let floor: f64 = input
        .stages
        .iter()
        .zip(plan)
        .map(|(s, c)| {
            s.classes
                .iter()
                .zip(&c.counts)
                .filter(|(_, n)| **n > 0)
                .map(|((p, _), _)| p.p50_s(1).min(p.p50_s(c.max_batch)))
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    floor <= input.slo_s
}

/// Plan a pipeline (a single model is a one-stage pipeline).
pub fn plan(input: &PlanInput<'_>) -> Result<Plan> {
    if input.stages.is_empty() || input.stages.iter().any(|s| s.classes.is_empty()) {
        return Err(Error::Config(
            "every stage needs at least one hardware class profile".into(),
        ));
    }
    if input.slo_s.is_nan() || input.slo_s <= 0.0 {
        return Err(Error::Config("the objective must be > 0".into()));
    }
    let mut s = Search {
        input,
        simulations: 0,
        cache: Default::default(),
    };
    let n_stages = input.stages.len();
    let mean_rate = input.arrivals.len() as f64 / input.duration.max(1e-9);
    // 1. initialize
    let mut current: Vec<Choice> = input
        .stages
        .iter()
        .map(|st| {
            let (fast, _) = st
                .classes
                .iter()
                .enumerate()
                .min_by(|a, b| a.1 .0.p50_s(1).total_cmp(&b.1 .0.p50_s(1)))
                .expect("checked: not empty");
            let p = &st.classes[fast].0;
            // the batch of highest throughput within the whole objective (greedy moves
            // may lower it); the largest one when none fits
            let b = p.best_batch(input.slo_s).map_or(p.max_batch(), |x| x.0);
            let n = ((mean_rate / p.throughput(b)).ceil() as u32).clamp(1, input.max_replicas);
            let mut counts = vec![0; st.classes.len()];
            counts[fast] = n;
            Choice {
                counts,
                max_batch: b,
            }
        })
        .collect();
    loop {
        if s.eval(&current).feasible {
            break;
        }
        // the bottleneck stage that can still grow
        let bottleneck = (0..n_stages)
            .filter(|&i| {
                current[i]
                    .counts
                    .iter()
                    .any(|&n| n > 0 && n < input.max_replicas)
            })
            .max_by(|&a, &b| {
                let la = mean_rate / stage_throughput(&input.stages[a], &current[a]);
                let lb = mean_rate / stage_throughput(&input.stages[b], &current[b]);
                la.total_cmp(&lb)
            });
        let Some(i) = bottleneck else {
            // every stage at the bound: a last try at each stage's largest batch
            let widest: Vec<Choice> = current
                .iter()
                .zip(&input.stages)
                .map(|(c, st)| Choice {
                    counts: c.counts.clone(),
                    max_batch: batch_sizes(st).last().copied().unwrap_or(1),
                })
                .collect();
            if widest != current && s.eval(&widest).feasible {
                current = widest;
                break;
            }
            return Err(Error::Config(format!(
                "no plan with at most {} replicas per class meets the {:.1} ms objective",
                input.max_replicas,
                input.slo_s * 1e3
            )));
        };
        let c = current[i]
            .counts
            .iter()
            .position(|&n| n > 0)
            .expect("one class in use");
        current[i].counts[c] += 1;
    }
    // 2. greedy descent
    loop {
        let here = cost(&input.stages, &current);
        let mut best: Option<(f64, Vec<Choice>)> = None;
        for i in 0..n_stages {
            let st = &input.stages[i];
            let k = st.classes.len();
            let mut moves: Vec<Vec<u32>> = vec![];
            for c in 0..k {
                if current[i].counts[c] == 0 {
                    continue;
                }
                let mut m = current[i].counts.clone();
                m[c] -= 1;
                moves.push(m.clone());
                for d in 0..k {
                    let mixes =
                        input.heterogeneous || m.iter().enumerate().all(|(j, &n)| n == 0 || j == d);
                    if d != c
                        && st.classes[d].1 < st.classes[c].1
                        && m[d] < input.max_replicas
                        && mixes
                    {
                        let mut m2 = m.clone();
                        m2[d] += 1;
                        moves.push(m2);
                    }
                }
            }
            for counts in moves {
                if counts.iter().all(|&n| n == 0) {
                    continue;
                }
                for b in batch_sizes(st) {
                    let mut cand = current.clone();
                    cand[i] = Choice {
                        counts: counts.clone(),
                        max_batch: b,
                    };
                    let cc = cost(&input.stages, &cand);
                    if cc >= here - 1e-12 || best.as_ref().is_some_and(|(bc, _)| cc >= *bc) {
                        continue;
                    }
                    if s.eval(&cand).feasible {
                        best = Some((cc, cand));
                    }
                }
            }
        }
        match best {
            Some((_, b)) => current = b,
            None => break,
        }
    }
    let greedy_cost = cost(&input.stages, &current);
    // 3. exact pass over cheaper plans that pass the bounds
    let env = envelope(input.arrivals, &[1.0, 10.0, 60.0, input.duration.max(1.0)]);
    let per_stage: Vec<Vec<Choice>> = input
        .stages
        .iter()
        .map(|st| {
            let k = st.classes.len();
            let mut out = vec![];
            let total = (input.max_replicas + 1).pow(k as u32);
            for code in 0..total {
                let mut x = code;
                let counts: Vec<u32> = (0..k)
                    .map(|_| {
                        let n = x % (input.max_replicas + 1);
                        x /= input.max_replicas + 1;
                        n
                    })
                    .collect();
                let used = counts.iter().filter(|&&n| n > 0).count();
                if used == 0 || (!input.heterogeneous && used > 1) {
                    continue;
                }
                for b in batch_sizes(st) {
                    let c = Choice {
                        counts: counts.clone(),
                        max_batch: b,
                    };
                    if stage_passes(input, &env, st, &c) {
                        out.push(c);
                    }
                }
            }
            out
        })
        .collect();
    let mut candidates: Vec<(f64, Vec<Choice>)> = vec![];
    let mut too_many = false;
    if per_stage.iter().any(Vec::is_empty) {
        // nothing passes the bounds: the greedy plan stands (it was simulated feasible)
        return finish(input, &mut s, current, "exact", greedy_cost);
    }
    let mut idx = vec![0usize; n_stages];
    'outer: loop {
        let cand: Vec<Choice> = idx
            .iter()
            .zip(&per_stage)
            .map(|(&i, v)| v[i].clone())
            .collect();
        let cc = cost(&input.stages, &cand);
        if cc < greedy_cost - 1e-12 && floor_fits(input, &cand) {
            candidates.push((cc, cand));
            if candidates.len() > input.exact_budget {
                too_many = true;
                break 'outer;
            }
        }
        for d in 0..n_stages {
            idx[d] += 1;
            if idx[d] < per_stage[d].len() {
                continue 'outer;
            }
            idx[d] = 0;
        }
        break;
    }
    let mut search = "greedy";
    if !too_many {
        search = "exact";
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, cand) in candidates {
            if s.eval(&cand).feasible {
                current = cand;
                break;
            }
        }
    }
    finish(input, &mut s, current, search, greedy_cost)
}

fn finish(
    input: &PlanInput<'_>,
    s: &mut Search<'_, '_>,
    current: Vec<Choice>,
    search: &str,
    greedy_cost: f64,
) -> Result<Plan> {
    let e = s.eval(&current);
    Ok(Plan {
        stages: input
            .stages
            .iter()
            .zip(&current)
            .map(|(st, c)| StagePlan {
                stage: st.name.clone(),
                max_batch: c.max_batch,
                replicas: st
                    .classes
                    .iter()
                    .zip(&c.counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|((p, _), n)| (p.hardware_class.clone(), *n))
                    .collect(),
            })
            .collect(),
        cost_per_hour: cost(&input.stages, &current),
        p99_ms: e.p99_s.map(|x| x * 1e3),
        attainment: e.attainment,
        search: search.into(),
        simulations: s.simulations,
        greedy_cost_per_hour: greedy_cost,
    })
}

/// The cheapest plan that uses one class per stage for the whole pipeline
/// (the homogeneous baseline the planner is compared with), per class name.
pub fn homogeneous(input: &PlanInput<'_>, class: &str) -> Result<Plan> {
    let stages: Vec<PlanStage> = input
        .stages
        .iter()
        .map(|s| PlanStage {
            name: s.name.clone(),
            classes: s
                .classes
                .iter()
                .filter(|(p, _)| p.hardware_class == class)
                .cloned()
                .collect(),
        })
        .collect();
    if stages.iter().any(|s| s.classes.is_empty()) {
        return Err(Error::Config(format!(
            "class {class:?} is not profiled for every stage"
        )));
    }
    plan(&PlanInput {
        stages,
        heterogeneous: false,
        ..input.clone()
    })
}

/// A plan's one-line summary for the terminal.
pub fn describe(p: &Plan) -> String {
    let stages: Vec<String> = p
        .stages
        .iter()
        .map(|s| {
            let r: Vec<String> = s.replicas.iter().map(|(c, n)| format!("{n}×{c}")).collect();
            format!("{}: {} batch {}", s.stage, r.join("+"), s.max_batch)
        })
        .collect();
    format!(
        "{} | ${:.3}/h, p99 {} ms, attainment {:.4} ({} search, {} simulations)",
        stages.join(" | "),
        p.cost_per_hour,
        p.p99_ms.map_or("-".into(), |x| format!("{x:.1}")),
        p.attainment,
        p.search,
        p.simulations
    )
}

#[cfg(test)]
mod tests;

//! `sluice_replicas_needed`: Sluice's SLO-aware autoscaling signal
//! (`sluice_autoscale::policy::slo`), computed from this replica's live measurements
//! at every scrape, so KEDA or an HPA scale the Deployment on it
//! (`deploy/overlays/slo`).
//!
//! Key decision: each scrape is one tick of the pure policy. Its inputs are read off
//! the model's own statistics: the arrivals since the previous scrape (answered
//! requests of every outcome plus those in flight), the queue, and a profile made of
//! the measured mean run time per batch size (Triton's `batch_stats`), from which
//! the policy picks the best batch size meeting the objective and the capacity of
//! one replica. The exported value is the policy's need *before rounding up*
//! ([`slo::demand`]): replicas that share a fleet's traffic each export their share,
//! and the sum over them, rounded up (KEDA's `AverageValue` with threshold 1), is the
//! fleet's need. The cost term is left out (a replica knows no price). The inputs are
//! exported beside it (capacity, batch size, slack, the envelope, the tick), so the
//! number can be checked by hand.
//!
//! Two corrections to the mean run times: the policy sizes a batch by its p99
//! (`2 × p99(b) ≤ slo`), which the per-batch-size totals cannot give, so each batch
//! size's p99 is its mean times the ratio of the p99 to the mean of the model's
//! compute-time histogram (interpolated within its bucket as Prometheus'
//! `histogram_quantile` does; 1 until 100 requests have run); the ratio mixes batch
//! sizes, so it errs towards a longer tail. And a replica runs its instances side by
//! side: its capacity is the instances serving times one instance's (runs that
//! share cores already take longer, which the measured means carry).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_autoscale::policy::slo::{self, SloConfig, SloParams, SloState};
use sluice_autoscale::policy::Observation;
use sluice_autoscale::profile::{BatchProfile, LatencyMs, Profile, ServiceModel, PROFILE_FORMAT};
use sluice_runtime::{HistogramSnapshot, VersionStats};

use super::Writer;

/// What one model's signal remembers between scrapes.
#[derive(Debug, Default)]
struct Track {
    state: SloState,
    /// Arrivals counted at the previous scrape, and when (seconds since start).
    last_total: u64,
    last_at: f64,
}

/// The signal's memory across scrapes (one per metrics endpoint).
#[derive(Debug)]
pub struct ReplicasNeeded {
    slo: Duration,
    start: Instant,
    models: Mutex<HashMap<String, Track>>,
}

/// One model's inputs at a scrape (all versions together).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Inputs {
    /// Requests that arrived so far (answered, of any outcome, plus in flight).
    pub arrived: u64,
    pub queued: u64,
    /// Batch size → (runs, total run time in ns).
    pub runs: BTreeMap<u64, (u64, u64)>,
    /// Instances serving (the most of any version).
    pub instances: u32,
    /// The compute-time histogram's p99 over its mean (at least 1).
    pub tail: f64,
}

/// Requests the compute-time histogram needs before its tail is trusted.
const TAIL_MIN_REQUESTS: u64 = 100;

impl Inputs {
    pub fn of(versions: &[&VersionStats]) -> Inputs {
        let mut i = Inputs::default();
        let mut compute: Option<HistogramSnapshot> = None;
        for v in versions {
            i.instances = i.instances.max(v.instances.count as u32);
            let h = v.stats.compute_seconds.snapshot();
            match compute.as_mut() {
                None => compute = Some(h),
                Some(all) => all.merge(&h),
            }
            let s = &v.stats;
            i.arrived += s.ended() + s.in_flight();
            i.queued += v.queue_len as u64;
            for (rows, b) in s.batch_stats() {
                let (runs, infer) = b.compute_infer.get();
                let (_, input) = b.compute_input.get();
                let (_, output) = b.compute_output.get();
                let e = i.runs.entry(rows as u64).or_insert((0, 0));
                e.0 += runs;
                e.1 += input + infer + output;
            }
        }
        i.tail = compute.map_or(1.0, |h| tail_ratio(&h));
        i
    }

    /// The measured profile: the mean run time per batch size (as a deterministic
    /// service time), its p99 the mean times the compute histogram's tail ratio, and
    /// the instances serving; `None` before the first run.
    pub fn profile(&self, model: &str) -> Option<Profile> {
        let batches: Vec<BatchProfile> = self
            .runs
            .iter()
            .filter(|(b, (runs, ns))| **b > 0 && *runs > 0 && *ns > 0)
            .map(|(&b, &(runs, ns))| BatchProfile {
                batch_size: u32::try_from(b).unwrap_or(u32::MAX),
                latency_ms: LatencyMs {
                    p50: ns as f64 / runs as f64 / 1e6,
                    p90: None,
                    p99: Some(ns as f64 / runs as f64 / 1e6 * self.tail.max(1.0)),
                    mean: None,
                },
                throughput_per_s: None,
            })
            .collect();
        (!batches.is_empty()).then(|| Profile {
            format: PROFILE_FORMAT.to_string(),
            model: model.to_string(),
            version: String::new(),
            hardware_class: "this replica (measured)".to_string(),
            backend: String::new(),
            instances: self.instances.max(1),
            cost_per_hour: None,
            load_time_s: 0.0,
            memory_bytes: None,
            batches,
            accuracy: None,
            instance_scaling: Vec::new(),
            service: ServiceModel::Deterministic,
        })
    }
}

/// The compute histogram's p99 over its mean; 1 with too few requests to tell.
fn tail_ratio(h: &HistogramSnapshot) -> f64 {
    if h.count < TAIL_MIN_REQUESTS || h.sum_seconds <= 0.0 {
        return 1.0;
    }
    let mean = h.sum_seconds / h.count as f64;
    h.quantile(0.99).map_or(1.0, |p99| (p99 / mean).max(1.0))
}

/// The policy's parameters for a measured profile and objective (no cost term): one
/// instance's throughput at the best batch size, times the instances serving.
pub fn params(profile: &Profile, slo: Duration) -> Option<SloParams> {
    let config = SloConfig {
        miss_penalty: 0.0,
        ..SloConfig::default()
    };
    let mut p = config.resolve(profile, slo.as_secs_f64()).ok()?;
    let n = f64::from(profile.instances.max(1));
    p.throughput *= n;
    p.capacity *= n;
    Some(p)
}

/// One tick of the policy: (need before rounding up, the tick's observation).
pub fn tick(
    state: &mut SloState,
    p: &SloParams,
    now: f64,
    elapsed: f64,
    arrivals: u64,
    queued: u64,
) -> (f64, Observation) {
    let obs = Observation {
        now,
        current: 1,
        ready: 1,
        arrivals,
        elapsed,
        queued,
        ..Observation::default()
    };
    slo::observe(&obs, state, p);
    (slo::demand(&obs, state, p).0, obs)
}

impl ReplicasNeeded {
    pub fn new(slo: Duration) -> Self {
        ReplicasNeeded {
            slo,
            start: Instant::now(),
            models: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the signal and its inputs for every model that has run at least once.
    pub(super) fn render(&self, out: &mut Writer, versions: &[VersionStats]) {
        let mut by_model: BTreeMap<&str, Vec<&VersionStats>> = BTreeMap::new();
        for v in versions {
            by_model.entry(v.name.as_str()).or_default().push(v);
        }
        let now = self.start.elapsed().as_secs_f64();
        let mut rows = Vec::new();
        {
            let mut models = self.models.lock().expect("replicas-needed lock");
            for (model, vs) in by_model {
                let inputs = Inputs::of(&vs);
                let Some(p) = inputs.profile(model).and_then(|pr| params(&pr, self.slo)) else {
                    continue;
                };
                let track = models.entry(model.to_string()).or_default();
                let arrivals = inputs.arrived.saturating_sub(track.last_total);
                let elapsed = (now - track.last_at).max(1e-9);
                let (need, _) = tick(&mut track.state, &p, now, elapsed, arrivals, inputs.queued);
                track.last_total = inputs.arrived;
                track.last_at = now;
                let envelope = slo::current_envelope(&track.state, &p);
                rows.push((model.to_string(), need, p, envelope, elapsed));
            }
        }
        let slo_ms = format!("{}", self.slo.as_millis());
        let families: [(&str, &str); 5] = [
            ("sluice_replicas_needed", "Replicas the traffic this replica received needs to meet the objective (Sluice's SLO-aware policy, before rounding up: sum over replicas and round up for the fleet)."),
            ("sluice_replicas_needed_capacity", "Requests per second one replica answers within the objective: the measured throughput at the best batch size meeting it, times the policy's headroom."),
            ("sluice_replicas_needed_batch_size", "The batch size the capacity is measured at."),
            ("sluice_replicas_needed_slack_seconds", "Queueing time a request may spend and still meet the objective (objective − 2 × run time at that batch size)."),
            ("sluice_replicas_needed_tick_seconds", "Seconds since the previous scrape (the policy's tick)."),
        ];
        for (name, help) in families {
            out.family(name, "gauge", help);
            for (model, need, p, _, elapsed) in &rows {
                let value = match name {
                    "sluice_replicas_needed" => *need,
                    "sluice_replicas_needed_capacity" => p.capacity,
                    "sluice_replicas_needed_batch_size" => f64::from(p.batch_size),
                    "sluice_replicas_needed_slack_seconds" => p.slack_s,
                    _ => *elapsed,
                };
                out.sample(name, &[("model", model), ("slo_ms", &slo_ms)], value);
            }
        }
        out.family(
            "sluice_replicas_needed_arrivals",
            "gauge",
            "The arrival envelope: the most requests that arrived in any span of the window (seconds) over the policy's history.",
        );
        for (model, _, _, envelope, _) in &rows {
            for (w, count) in envelope {
                let window = format!("{w}");
                out.sample(
                    "sluice_replicas_needed_arrivals",
                    &[("model", model), ("window", &window)],
                    *count as f64,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(arrived: u64, runs: &[(u64, u64, u64)]) -> Inputs {
        Inputs {
            arrived,
            queued: 0,
            runs: runs.iter().map(|&(b, n, ns)| (b, (n, ns))).collect(),
            instances: 1,
            tail: 1.0,
        }
    }

    fn histogram(values_ms: &[(f64, u64)]) -> HistogramSnapshot {
        let h = sluice_runtime::Histogram::latency();
        for &(ms, n) in values_ms {
            h.observe_n((ms * 1e6) as u64, n);
        }
        h.snapshot()
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        // 100 requests in (5, 10] ms: the p50 halfway, the p99 at 99 %
        let h = histogram(&[(7.0, 100)]);
        assert!((h.quantile(0.5).unwrap() - 0.0075).abs() < 1e-12);
        assert!((h.quantile(0.99).unwrap() - 0.00995).abs() < 1e-12);
        // 90 at 1 ms, 10 at 40 ms: the p99 is 90 % into (25, 50] ms
        let h = histogram(&[(1.0, 90), (40.0, 10)]);
        assert!((h.quantile(0.99).unwrap() - 0.0475).abs() < 1e-12);
        // beyond the last bound: that bound
        let h = histogram(&[(120_000.0, 5)]);
        assert_eq!(h.quantile(0.99), Some(60.0));
        assert_eq!(histogram(&[]).quantile(0.99), None);
    }

    #[test]
    fn the_tail_ratio_needs_enough_requests_and_is_at_least_one() {
        assert_eq!(tail_ratio(&histogram(&[(7.0, 99)])), 1.0);
        // mean 1 ms × 0.9 + 40 ms × 0.1 = 4.9 ms; p99 47.5 ms
        let r = tail_ratio(&histogram(&[(1.0, 90), (40.0, 10)]));
        assert!((r - 47.5 / 4.9).abs() < 1e-9, "{r}");
    }

    #[test]
    fn the_tail_and_the_instances_reach_the_policy() {
        let mut i = inputs(0, &[(1, 100, 500_000_000), (8, 10, 200_000_000)]);
        // a tail of 2: batch 8's p99 is 40 ms, 2 × 40 > 60 ms; batch 1 (2 × 10 ms) is chosen
        i.tail = 2.0;
        let p = params(&i.profile("m").unwrap(), Duration::from_millis(60)).unwrap();
        assert_eq!(p.batch_size, 1);
        assert!((p.slack_s - 0.04).abs() < 1e-12);
        // without a tail, batch 8 (2 × 20 ms ≤ 60 ms)
        i.tail = 1.0;
        let one = params(&i.profile("m").unwrap(), Duration::from_millis(60)).unwrap();
        assert_eq!(one.batch_size, 8);
        // three instances: three times the capacity
        i.instances = 3;
        let three = params(&i.profile("m").unwrap(), Duration::from_millis(60)).unwrap();
        assert!((three.capacity - 3.0 * one.capacity).abs() < 1e-9);
        assert!((three.throughput - 1200.0).abs() < 1e-9);
    }

    #[test]
    fn the_profile_is_the_measured_mean_run_time_per_batch_size() {
        // batch 1: 100 runs of 5 ms; batch 8: 10 runs of 20 ms
        let i = inputs(0, &[(1, 100, 500_000_000), (8, 10, 200_000_000)]);
        let prof = i.profile("m").unwrap();
        assert_eq!(prof.batches.len(), 2);
        assert!((prof.batches[0].latency_ms.p50 - 5.0).abs() < 1e-9);
        assert!((prof.batches[1].latency_ms.p50 - 20.0).abs() < 1e-9);
        // objective 100 ms: batch 8 (400/s) meets it (2 × 20 ms), capacity 0.85 × 400
        let p = params(&prof, Duration::from_millis(100)).unwrap();
        assert_eq!(p.batch_size, 8);
        assert!((p.capacity - 340.0).abs() < 1e-9);
        assert!((p.slack_s - 0.06).abs() < 1e-12);
        // objective 30 ms: only batch 1 (2 × 5 ms ≤ 30 ms)
        let p = params(&prof, Duration::from_millis(30)).unwrap();
        assert_eq!(p.batch_size, 1);
        // objective 5 ms: nothing meets it, no signal
        assert!(params(&prof, Duration::from_millis(5)).is_none());
        assert!(inputs(3, &[]).profile("m").is_none());
    }

    #[test]
    fn the_signal_is_the_policy_demand_for_the_observed_ticks() {
        let prof = inputs(0, &[(1, 100, 500_000_000), (8, 10, 200_000_000)])
            .profile("m")
            .unwrap();
        let p = params(&prof, Duration::from_millis(100)).unwrap();
        let mut state = SloState::default();
        // a tick of 2 s with 1000 arrivals: every window holds them; the 1-s window
        // counts as the 2-s tick: 1000 / (340 × (2 + 0.06))
        let (need, obs) = tick(&mut state, &p, 2.0, 2.0, 1000, 0);
        assert!((need - 1000.0 / (340.0 * 2.06)).abs() < 1e-9, "{need}");
        // the same as the pure policy's need, rounded up
        let mut fresh = SloState::default();
        assert_eq!(slo::need(&obs, &mut fresh, &p).0, need.ceil() as u32);
        // a later idle tick of 10 s: the envelope keeps the burst for the policy's
        // history, every window shorter than the tick counts as the tick:
        // 1000 / (340 × (10 + 0.06))
        let (need, _) = tick(&mut state, &p, 12.0, 10.0, 0, 0);
        assert!((need - 1000.0 / (340.0 * 10.06)).abs() < 1e-9, "{need}");
        // a queue must drain within the slack (or the tick, if longer):
        // 2000 / (400 × max(0.06, 1)) = 5 > the envelope's 1000 / (340 × 1.06)
        let (need, _) = tick(&mut state, &p, 13.0, 1.0, 0, 2000);
        assert!((need - 2000.0 / 400.0).abs() < 1e-9, "{need}");
    }
}

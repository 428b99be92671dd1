//! The profile: what one replica of a model on one hardware class can do.
//!
//! This is the JSON that `sluice profile` writes (issue 15) and that `sluice simulate`
//! and `sluice plan` read: per batch size the service time of one run (p50/p99/mean),
//! the load time of a cold start, and the price of the hardware class. Unknown fields
//! are refused, so a typo does not silently fall back to a default.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// The format tag written into every profile.
pub const PROFILE_FORMAT: &str = "sluice-profile/1";

/// One model (variant) on one hardware class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Always [`PROFILE_FORMAT`].
    #[serde(default = "default_format")]
    pub format: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// A name for the machine kind (e.g. `cpu-2core-tract`, `gpu-l4-ort`).
    pub hardware_class: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Model instances inside one replica when this was measured.
    #[serde(default = "one")]
    pub instances: u32,
    /// Price of one replica of this class per hour (a simulation config may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_hour: Option<f64>,
    /// Seconds from a replica's start to its readiness (cold start).
    #[serde(default)]
    pub load_time_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Service time of one run, per batch size (ascending, distinct).
    pub batches: Vec<BatchProfile>,
    /// How run times vary around the measured figures in the simulator.
    #[serde(default)]
    pub service: ServiceModel,
    /// The accuracy the model's config states (a variant family's figure), for the
    /// comparison of several models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Throughput with other instance counts (ascending, distinct), if measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_scaling: Vec<InstanceProfile>,
}

/// What a replica sustains with `instances` model instances, at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceProfile {
    pub instances: u32,
    pub batch_size: u32,
    pub throughput_per_s: f64,
    /// Request latency (queue and run) at that load.
    pub latency_ms: LatencyMs,
}

fn default_format() -> String {
    PROFILE_FORMAT.to_string()
}

fn one() -> u32 {
    1
}

/// The measured time of one run of `batch_size` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchProfile {
    pub batch_size: u32,
    pub latency_ms: LatencyMs,
    /// Rows per second one replica sustained at this batch size, if measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_per_s: Option<f64>,
}

/// Quantiles of one run's service time in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyMs {
    pub p50: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

/// The distribution the simulator draws run times from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceModel {
    /// Log-normal with the profile's median and p99 (deterministic when p99 is absent).
    /// When the p90 is measured too, two log-normal pieces: the body through the median
    /// and the p90, the tail past the p90 through the p99, so the draws have all three
    /// (run times on a CPU have a narrower body and a longer tail than one log-normal
    /// through the median and the p99 gives: that one puts the p90 20 % too high).
    #[default]
    Lognormal,
    /// Always the median (M/D/1-style tests, hardware with steady run times).
    Deterministic,
    /// Exponential with the profile's mean (or median / ln 2) — M/M/1-style tests.
    Exponential,
}

/// z of the 99th percentile of a standard normal.
const Z99: f64 = 2.326_347_874;
/// z of the 90th percentile of a standard normal.
const Z90: f64 = 1.281_551_566;

impl LatencyMs {
    /// The log-normal exponent of a standard normal draw `z` under
    /// [`ServiceModel::Lognormal`]: `p50 × exp(spread(z))` has this entry's quantiles.
    fn spread(&self, z: f64) -> f64 {
        match (self.p90, self.p99) {
            (Some(p90), Some(p99)) if p90 > self.p50 && p99 > p90 => {
                let body = (p90 / self.p50).ln() / Z90;
                if z <= Z90 {
                    body * z
                } else {
                    body * Z90 + (p99 / p90).ln() / (Z99 - Z90) * (z - Z90)
                }
            }
            _ => self.p99.map_or(0.0, |p99| (p99 / self.p50).ln() / Z99) * z,
        }
    }
}

impl Profile {
    /// Parse and check a profile.
    pub fn from_json(text: &str) -> Result<Profile> {
        let p: Profile =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("profile: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Config(format!(
                "profile {}/{}: {m}",
                self.model, self.hardware_class
            )))
        };
        if self.format != PROFILE_FORMAT {
            return bad(format!(
                "format {:?}, expected {PROFILE_FORMAT:?}",
                self.format
            ));
        }
        if self.batches.is_empty() {
            return bad("no batch sizes".into());
        }
        if !(self.load_time_s.is_finite() && self.load_time_s >= 0.0) {
            return bad("load_time_s must be a finite number >= 0".into());
        }
        if let Some(c) = self.cost_per_hour {
            if !(c.is_finite() && c >= 0.0) {
                return bad("cost_per_hour must be a finite number >= 0".into());
            }
        }
        let mut last = 0;
        for b in &self.batches {
            if b.batch_size <= last {
                return bad("batch sizes must be positive and ascending".into());
            }
            last = b.batch_size;
            let l = &b.latency_ms;
            let ok = |v: f64| v.is_finite() && v > 0.0;
            if !ok(l.p50)
                || l.p99.is_some_and(|p| !ok(p) || p < l.p50)
                || l.mean.is_some_and(|m| !ok(m))
            {
                return bad(format!(
                    "batch {}: latencies must be positive and p99 >= p50",
                    b.batch_size
                ));
            }
        }
        if let Some(a) = self.accuracy {
            if !(a.is_finite() && a >= 0.0) {
                return bad("accuracy must be a finite number >= 0".into());
            }
        }
        let mut last = 0;
        for i in &self.instance_scaling {
            if i.instances <= last {
                return bad("instance counts must be positive and ascending".into());
            }
            last = i.instances;
            if !(i.throughput_per_s.is_finite() && i.throughput_per_s > 0.0) {
                return bad(format!(
                    "{} instances: throughput_per_s must be a positive number",
                    i.instances
                ));
            }
        }
        Ok(())
    }

    pub fn max_batch(&self) -> u32 {
        self.batches.last().map_or(1, |b| b.batch_size)
    }

    /// The profile entry used for a run of `rows` rows: the smallest measured batch
    /// size that holds them (a partial batch costs as much as the measured one above it).
    fn entry(&self, rows: u32) -> &BatchProfile {
        self.batches
            .iter()
            .find(|b| b.batch_size >= rows)
            .unwrap_or_else(|| self.batches.last().expect("validated: not empty"))
    }

    /// Median service time (seconds) of a run of `rows` rows.
    pub fn p50_s(&self, rows: u32) -> f64 {
        self.entry(rows).latency_ms.p50 / 1e3
    }

    /// p99 service time (seconds) of a run of `rows` rows (the median when not measured).
    pub fn p99_s(&self, rows: u32) -> f64 {
        let l = &self.entry(rows).latency_ms;
        l.p99.unwrap_or(l.p50) / 1e3
    }

    /// Mean service time (seconds) under the profile's service model.
    pub fn mean_s(&self, rows: u32) -> f64 {
        let l = &self.entry(rows).latency_ms;
        match self.service {
            ServiceModel::Deterministic => l.p50 / 1e3,
            ServiceModel::Exponential => l.mean.unwrap_or(l.p50 / std::f64::consts::LN_2) / 1e3,
            // A measured mean is the mean; else the single log-normal's (an
            // approximation when two pieces are drawn).
            ServiceModel::Lognormal => {
                let sigma = l.p99.map_or(0.0, |p99| (p99 / l.p50).ln() / Z99);
                l.mean.unwrap_or(l.p50 * (sigma * sigma / 2.0).exp()) / 1e3
            }
        }
    }

    /// Draw one run's service time (seconds).
    pub fn sample_s(&self, rows: u32, rng: &mut Rng) -> f64 {
        let l = &self.entry(rows).latency_ms;
        let s = match self.service {
            ServiceModel::Deterministic => l.p50,
            ServiceModel::Exponential => {
                rng.exponential(1.0) * l.mean.unwrap_or(l.p50 / std::f64::consts::LN_2)
            }
            ServiceModel::Lognormal => l.p50 * l.spread(rng.normal()).exp(),
        };
        s / 1e3
    }

    /// The seeds a server gives its scheduler from this profile: per batch size, the
    /// median time of one run.
    pub fn run_latencies(&self) -> Vec<(usize, std::time::Duration)> {
        self.batches
            .iter()
            .map(|b| {
                (
                    b.batch_size as usize,
                    std::time::Duration::from_secs_f64(b.latency_ms.p50 / 1e3),
                )
            })
            .collect()
    }

    /// The best measured throughput (rows per second) at any batch size or instance
    /// count; `None` when none was measured.
    pub fn best_throughput(&self) -> Option<f64> {
        self.batches
            .iter()
            .filter_map(|b| b.throughput_per_s)
            .chain(self.instance_scaling.iter().map(|i| i.throughput_per_s))
            .max_by(f64::total_cmp)
    }

    /// Rows per second one replica sustains at batch size `b` (from the mean run time).
    pub fn throughput(&self, b: u32) -> f64 {
        f64::from(b) / self.mean_s(b)
    }

    /// The batch size of highest throughput whose runs still leave a request inside
    /// `slo_s`: a request that arrives just after a run started waits for it and then
    /// for its own run, so `2 × p99(b) ≤ slo` (the objective the SLO-aware policy and
    /// the planner size replicas with). `None` when even batch 1 cannot meet it.
    pub fn best_batch(&self, slo_s: f64) -> Option<(u32, f64)> {
        self.batches
            .iter()
            .filter(|b| 2.0 * self.p99_s(b.batch_size) <= slo_s)
            .map(|b| (b.batch_size, self.throughput(b.batch_size)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}

#[cfg(test)]
pub(crate) fn test_profile(
    class: &str,
    cost: f64,
    batches: &[(u32, f64)],
    service: ServiceModel,
) -> Profile {
    Profile {
        format: PROFILE_FORMAT.into(),
        model: "m".into(),
        version: String::new(),
        hardware_class: class.into(),
        backend: String::new(),
        instances: 1,
        cost_per_hour: Some(cost),
        load_time_s: 0.0,
        memory_bytes: None,
        batches: batches
            .iter()
            .map(|&(b, ms)| BatchProfile {
                batch_size: b,
                latency_ms: LatencyMs {
                    p50: ms,
                    p90: None,
                    p99: None,
                    mean: None,
                },
                throughput_per_s: None,
            })
            .collect(),
        service,
        accuracy: None,
        instance_scaling: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let text = r#"{"model":"mlp","hardware_class":"cpu2","cost_per_hour":0.2,"load_time_s":1.5,
            "batches":[{"batch_size":1,"latency_ms":{"p50":2.0,"p99":3.0}},
                       {"batch_size":8,"latency_ms":{"p50":6.0,"p99":9.0}}]}"#;
        let p = Profile::from_json(text).unwrap();
        assert_eq!(p.format, PROFILE_FORMAT);
        assert_eq!(p.max_batch(), 8);
        let again = Profile::from_json(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(p, again);
        // rows 3 run as the measured batch 8
        assert_eq!(p.p50_s(3), 0.006);
        // throughput at 8 is higher; 2 × 9 ms fits 20 ms but not 15 ms
        assert_eq!(p.best_batch(0.020).unwrap().0, 8);
        assert_eq!(p.best_batch(0.015).unwrap().0, 1);
        assert!(p.best_batch(0.005).is_none());
    }

    #[test]
    fn accuracy_and_instance_scaling_round_trip_and_seed_run_latencies() {
        let mut p = test_profile("c", 1.0, &[(1, 2.0), (4, 5.0)], ServiceModel::Lognormal);
        p.accuracy = Some(0.76);
        p.batches[1].throughput_per_s = Some(800.0);
        p.instance_scaling = vec![
            InstanceProfile {
                instances: 1,
                batch_size: 4,
                throughput_per_s: 790.0,
                latency_ms: LatencyMs {
                    p50: 5.0,
                    p90: None,
                    p99: Some(7.0),
                    mean: None,
                },
            },
            InstanceProfile {
                instances: 2,
                batch_size: 4,
                throughput_per_s: 1500.0,
                latency_ms: LatencyMs {
                    p50: 5.5,
                    p90: None,
                    p99: Some(8.0),
                    mean: None,
                },
            },
        ];
        let text = serde_json::to_string_pretty(&p).unwrap();
        let again = Profile::from_json(&text).unwrap();
        assert_eq!(p, again);
        assert_eq!(again.best_throughput(), Some(1500.0));
        assert_eq!(
            again.run_latencies(),
            vec![
                (1, std::time::Duration::from_millis(2)),
                (4, std::time::Duration::from_millis(5))
            ]
        );
        let mut bad = p.clone();
        bad.instance_scaling.swap(0, 1);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ascending"));
    }

    #[test]
    fn bad_profiles_are_refused_with_a_reason() {
        for (text, want) in [
            (
                r#"{"model":"m","hardware_class":"c","batches":[]}"#,
                "no batch sizes",
            ),
            (
                r#"{"model":"m","hardware_class":"c","batches":[{"batch_size":2,"latency_ms":{"p50":1}},{"batch_size":1,"latency_ms":{"p50":1}}]}"#,
                "ascending",
            ),
            (
                r#"{"model":"m","hardware_class":"c","batches":[{"batch_size":1,"latency_ms":{"p50":2,"p99":1}}]}"#,
                "p99 >= p50",
            ),
            (
                r#"{"model":"m","hardware_class":"c","batches":[],"typo":1}"#,
                "unknown field",
            ),
        ] {
            let e = Profile::from_json(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn lognormal_samples_have_the_profile_quantiles() {
        let mut p = test_profile("c", 1.0, &[(1, 10.0)], ServiceModel::Lognormal);
        p.batches[0].latency_ms.p99 = Some(20.0);
        let mut rng = Rng::new(3);
        let mut v: Vec<f64> = (0..100_000).map(|_| p.sample_s(1, &mut rng)).collect();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[(f * v.len() as f64) as usize];
        assert!((q(0.5) / 0.010 - 1.0).abs() < 0.02, "{}", q(0.5));
        assert!((q(0.99) / 0.020 - 1.0).abs() < 0.04, "{}", q(0.99));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean / p.mean_s(1) - 1.0).abs() < 0.01);
    }

    #[test]
    fn with_a_p90_the_draws_have_all_three_quantiles() {
        // A body far narrower than the tail (as measured on this machine: p50 3.35,
        // p90 3.95, p99 6.41 ms); one log-normal through p50 and p99 would put the p90
        // at 4.78.
        let mut p = test_profile("c", 1.0, &[(1, 3.35)], ServiceModel::Lognormal);
        p.batches[0].latency_ms.p90 = Some(3.95);
        p.batches[0].latency_ms.p99 = Some(6.41);
        let mut rng = Rng::new(5);
        let mut v: Vec<f64> = (0..200_000).map(|_| p.sample_s(1, &mut rng)).collect();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[(f * v.len() as f64) as usize] * 1e3;
        for (f, want) in [(0.5, 3.35), (0.9, 3.95), (0.99, 6.41)] {
            assert!(
                (q(f) / want - 1.0).abs() < 0.02,
                "q{f} = {} want {want}",
                q(f)
            );
        }
        assert!(
            q(0.1) < 3.35 && q(0.1) > 2.5,
            "the body is symmetric in log space"
        );
        // A p90 that does not lie between the median and the p99 is ignored.
        p.batches[0].latency_ms.p90 = Some(7.0);
        let mut v: Vec<f64> = (0..100_000).map(|_| p.sample_s(1, &mut rng)).collect();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| v[(f * v.len() as f64) as usize] * 1e3;
        assert!((q(0.99) / 6.41 - 1.0).abs() < 0.04 && (q(0.9) / 4.78 - 1.0).abs() < 0.03);
    }
}

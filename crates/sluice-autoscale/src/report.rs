//! Policy comparisons: the simulation config, one run per policy, and the report
//! (attainment, latency quantiles, replica-seconds, cost, scaling actions, timeline).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{
    hpa, infaas, keda, kpa, ray, slo, Bounds, Controller, NamedPolicy, PolicyConfig,
};
use crate::profile::Profile;
use crate::sim::{self, RunResult, StageSetup};
use crate::{Error, Result};

/// `sluice simulate --config`: the objective, the serving setup and the policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Latency objective per request (milliseconds).
    pub slo_ms: f64,
    /// Largest batch a replica runs (default: the profile's best batch within the objective).
    #[serde(default)]
    pub max_batch: Option<u32>,
    /// Dynamic batching's `max_queue_delay_microseconds`, in milliseconds.
    #[serde(default)]
    pub max_queue_delay_ms: f64,
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Price per replica-hour by hardware class (overrides the profile's).
    #[serde(default)]
    pub cost_per_hour: BTreeMap<String, f64>,
    /// Width of a timeline bucket (seconds).
    #[serde(default = "bucket")]
    pub bucket_s: f64,
    #[serde(default)]
    pub seed: u64,
    /// Bounds for the default policies.
    #[serde(default, flatten)]
    pub bounds: Bounds,
    /// Policies to compare (default: every policy, configured from the profile).
    #[serde(default)]
    pub policies: Vec<NamedPolicy>,
}

fn bucket() -> f64 {
    10.0
}

impl SimConfig {
    pub fn new(slo_ms: f64) -> SimConfig {
        SimConfig {
            slo_ms,
            max_batch: None,
            max_queue_delay_ms: 0.0,
            queue_capacity: None,
            cost_per_hour: BTreeMap::new(),
            bucket_s: bucket(),
            seed: 0,
            bounds: Bounds {
                min_replicas: 1,
                max_replicas: 64,
            },
            policies: vec![],
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.slo_ms.is_finite() && self.slo_ms > 0.0) {
            return Err(Error::Config("slo_ms must be > 0".into()));
        }
        if !(self.bucket_s.is_finite() && self.bucket_s > 0.0) {
            return Err(Error::Config("bucket_s must be > 0".into()));
        }
        if self.bounds.min_replicas > self.bounds.max_replicas {
            return Err(Error::Config("min_replicas > max_replicas".into()));
        }
        if self.max_batch == Some(0) {
            return Err(Error::Config("max_batch must be >= 1".into()));
        }
        Ok(())
    }

    /// Price of a class: the config's, else the profile's.
    pub fn price(&self, profile: &Profile) -> Result<f64> {
        self.cost_per_hour
            .get(&profile.hardware_class)
            .copied()
            .or(profile.cost_per_hour)
            .ok_or_else(|| {
                Error::Config(format!(
                    "no price for hardware class {:?}: give cost_per_hour in the profile or the config",
                    profile.hardware_class
                ))
            })
    }
}

/// Every policy with settings a user would start from, sized from the profile: HPA on
/// CPU-like utilization (50 % and 70 %), KEDA on requests per second (70 % of a
/// replica's capacity), Knative and Ray Serve with a concurrency target of the batch
/// size a replica runs, INFaaS and the SLO-aware policy.
pub fn default_policies(profile: &Profile, slo_s: f64, bounds: Bounds) -> Result<Vec<NamedPolicy>> {
    let (b, thr) = profile.best_batch(slo_s).ok_or_else(|| {
        Error::Config(format!(
            "no batch size of the profile meets {:.1} ms",
            slo_s * 1e3
        ))
    })?;
    let named = |name: &str, policy| NamedPolicy {
        name: name.into(),
        policy,
    };
    let hpa_util = |t| {
        PolicyConfig::Hpa(hpa::HpaConfig::with_metric(
            hpa::HpaMetric::Utilization { target: t },
            bounds,
        ))
    };
    Ok(vec![
        named("hpa-util-50", hpa_util(0.5)),
        named("hpa-util-70", hpa_util(0.7)),
        named(
            "keda-rps",
            PolicyConfig::Keda(keda::KedaConfig {
                polling_interval_s: 30.0,
                cooldown_period_s: 300.0,
                activation_threshold: 0.0,
                min_replica_count: bounds.min_replicas,
                hpa: hpa::HpaConfig::with_metric(
                    hpa::HpaMetric::RequestsPerSecond { target: 0.7 * thr },
                    bounds,
                ),
            }),
        ),
        named(
            "kpa",
            PolicyConfig::Kpa(kpa::KpaConfig::with_target(f64::from(b), bounds)),
        ),
        named(
            "ray",
            PolicyConfig::Ray(ray::RayConfig {
                bounds,
                target_ongoing_requests: f64::from(b.max(2)),
                ..ray::RayConfig::default()
            }),
        ),
        named(
            "infaas",
            PolicyConfig::Infaas(infaas::InfaasConfig {
                bounds,
                ..infaas::InfaasConfig::default()
            }),
        ),
        named(
            "sluice-slo",
            PolicyConfig::Slo(slo::SloConfig {
                bounds,
                ..slo::SloConfig::default()
            }),
        ),
    ])
}

/// One policy's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub policy: String,
    pub requests: usize,
    pub rejected: usize,
    /// Fraction of all requests answered within the objective.
    pub attainment: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub replica_seconds: f64,
    pub cost: f64,
    pub scaling_actions: u32,
    pub peak_replicas: u32,
    pub timeline: Timeline,
}

/// Per bucket: arrival rate, mean provisioned replicas, p99 of the requests that arrived in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_s: f64,
    pub rate: Vec<f64>,
    pub replicas: Vec<f64>,
    pub p99_ms: Vec<Option<f64>>,
}

/// The comparison `sluice simulate` prints and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub slo_ms: f64,
    pub trace_requests: usize,
    pub trace_seconds: f64,
    pub model: String,
    pub hardware_class: String,
    pub batch_size: u32,
    /// What one replica answers within the objective under the SLO-aware policy's
    /// default headroom (the threshold of `deploy/overlays/slo`); `None` when no
    /// batch size of the profile meets the objective.
    pub slo_capacity_per_replica: Option<f64>,
    pub policies: Vec<PolicyReport>,
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Attainment, quantiles and the timeline of one run.
pub fn summarize(
    name: &str,
    r: &RunResult,
    slo_s: f64,
    duration: f64,
    bucket_s: f64,
) -> PolicyReport {
    let mut lat: Vec<f64> = r.requests.iter().filter_map(|&(_, l)| l).collect();
    lat.sort_by(f64::total_cmp);
    let ok = lat.iter().filter(|&&l| l <= slo_s).count();
    let n = r.requests.len();
    let ms = |v: Option<f64>| v.map(|x| x * 1e3);
    let buckets = ((duration / bucket_s).ceil() as usize).max(1);
    let mut per: Vec<Vec<f64>> = vec![vec![]; buckets];
    let mut counts = vec![0usize; buckets];
    for &(t, l) in &r.requests {
        let b = ((t / bucket_s) as usize).min(buckets - 1);
        counts[b] += 1;
        per[b].push(l.unwrap_or(f64::INFINITY));
    }
    let p99_ms = per
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            quantile(v, 0.99).filter(|x| x.is_finite()).map(|x| x * 1e3)
        })
        .collect();
    // time-averaged provisioned replicas per bucket
    let mut replicas = vec![0.0; buckets];
    for (i, w) in r.replicas.iter().enumerate() {
        let (t0, n) = *w;
        let t1 = r
            .replicas
            .get(i + 1)
            .map_or(duration, |x| x.0)
            .min(duration);
        let mut t = t0;
        while t < t1 {
            let b = ((t / bucket_s) as usize).min(buckets - 1);
            let end = (((b + 1) as f64) * bucket_s).min(t1);
            replicas[b] += f64::from(n) * (end - t) / bucket_s;
            if end <= t {
                break;
            }
            t = end;
        }
    }
    PolicyReport {
        policy: name.to_string(),
        requests: n,
        rejected: n - lat.len(),
        attainment: if n == 0 { 1.0 } else { ok as f64 / n as f64 },
        p50_ms: ms(quantile(&lat, 0.5)),
        p90_ms: ms(quantile(&lat, 0.9)),
        p99_ms: ms(quantile(&lat, 0.99)),
        mean_ms: (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64 * 1e3),
        replica_seconds: r.replica_seconds.iter().flatten().sum(),
        cost: r.cost,
        scaling_actions: r.scaling_actions,
        peak_replicas: r.replicas.iter().map(|x| x.1).max().unwrap_or(0),
        timeline: Timeline {
            bucket_s,
            rate: counts.iter().map(|&c| c as f64 / bucket_s).collect(),
            replicas,
            p99_ms,
        },
    }
}

/// Run every policy of `cfg` (or the defaults) on one model's profile and trace.
pub fn compare(
    cfg: &SimConfig,
    profile: &Profile,
    arrivals: &[f64],
    duration: f64,
) -> Result<Comparison> {
    cfg.validate()?;
    profile.validate()?;
    let slo_s = cfg.slo_ms / 1e3;
    let price = cfg.price(profile)?;
    let batch = match cfg.max_batch {
        Some(b) => b,
        None => profile.best_batch(slo_s).map(|(b, _)| b).ok_or_else(|| {
            Error::Config(format!(
                "no batch size of the profile meets {} ms",
                cfg.slo_ms
            ))
        })?,
    };
    let policies = if cfg.policies.is_empty() {
        default_policies(profile, slo_s, cfg.bounds)?
    } else {
        cfg.policies.clone()
    };
    let mut reports = Vec::with_capacity(policies.len());
    for p in &policies {
        let controller = Controller::new(&p.policy, profile, slo_s)
            .map_err(|e| Error::Config(format!("policy {:?}: {e}", p.name)))?;
        let initial = controller.initial();
        let fixed = matches!(controller, Controller::Fixed(_));
        let stage = StageSetup {
            name: profile.model.clone(),
            classes: vec![profile.clone()],
            cost_per_hour: vec![price],
            initial: vec![initial],
            max_batch: batch,
            max_queue_delay_s: cfg.max_queue_delay_ms / 1e3,
            queue_capacity: cfg.queue_capacity,
            controller: (!fixed).then_some(controller),
        };
        let r = sim::run(vec![stage], arrivals, duration, cfg.seed);
        reports.push(summarize(&p.name, &r, slo_s, duration, cfg.bucket_s));
    }
    Ok(Comparison {
        slo_ms: cfg.slo_ms,
        trace_requests: arrivals.len(),
        trace_seconds: duration,
        model: profile.model.clone(),
        hardware_class: profile.hardware_class.clone(),
        batch_size: batch,
        slo_capacity_per_replica: slo::SloConfig::default()
            .resolve(profile, slo_s)
            .ok()
            .map(|p| p.capacity),
        policies: reports,
    })
}

/// The terminal table.
pub fn table(c: &Comparison) -> String {
    let mut s = format!(
        "{} on {} (batch {}), objective {} ms, {} requests over {:.0} s\n",
        c.model, c.hardware_class, c.batch_size, c.slo_ms, c.trace_requests, c.trace_seconds
    );
    if let Some(cap) = c.slo_capacity_per_replica {
        s.push_str(&format!(
            "sluice-slo capacity: {cap:.1} req/s per replica (the threshold for deploy/overlays/slo)\n"
        ));
    }
    s.push_str(&format!(
        "{:<16} {:>10} {:>9} {:>9} {:>12} {:>10} {:>8} {:>6}\n",
        "policy", "attainment", "p50 ms", "p99 ms", "replica-s", "cost $", "actions", "peak"
    ));
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    for p in &c.policies {
        s.push_str(&format!(
            "{:<16} {:>10.4} {:>9} {:>9} {:>12.0} {:>10.4} {:>8} {:>6}\n",
            p.policy,
            p.attainment,
            f(p.p50_ms),
            f(p.p99_ms),
            p.replica_seconds,
            p.cost,
            p.scaling_actions,
            p.peak_replicas
        ));
    }
    s
}

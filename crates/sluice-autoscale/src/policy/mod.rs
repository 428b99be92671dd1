//! Autoscaling policies as pure functions: `decide(&Observation, &mut State, &Config)
//! -> Decision`.
//!
//! Every policy here is written from its own documentation (and, where the docs are
//! silent, from the behaviour of its controller's code): Kubernetes HPA v2, KEDA,
//! Knative's KPA, Ray Serve, INFaaS's model-level rule, and Sluice's SLO-aware
//! policy. A policy owns no clock and no thread: time arrives in the observation, its
//! memory (stabilization windows, counters, panic mode) lives in a plain state struct,
//! so the simulator, the server's signal and the unit tests drive the same code.

use serde::{Deserialize, Serialize};

use crate::profile::Profile;

pub mod hpa;
pub mod infaas;
pub mod keda;
pub mod kpa;
pub mod ray;
pub mod slo;

/// What a controller sees at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Seconds since the start of the trace.
    pub now: f64,
    /// The replica count last asked for (a Deployment's `spec.replicas`).
    pub current: u32,
    /// Replicas that are ready and serving.
    pub ready: u32,
    /// One entry per provisioned replica (ready or still starting).
    pub pods: Vec<PodSample>,
    /// Requests that arrived since this controller's previous tick.
    pub arrivals: u64,
    /// Seconds since this controller's previous tick (what the averages cover).
    pub elapsed: f64,
    /// Requests in the system (queued + running), time-averaged over `elapsed`.
    pub in_flight_avg: f64,
    /// Requests waiting in the queue now.
    pub queued: u64,
}

/// One replica's metrics as a metrics pipeline would report them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodSample {
    pub ready: bool,
    /// Fraction of the interval it was busy (CPU-utilization-like), if reported.
    pub utilization: Option<f64>,
    /// Requests it held on average (running + its share of the queue), if reported.
    pub concurrency: Option<f64>,
}

impl Observation {
    /// Arrival rate over the last interval (requests per second).
    pub fn rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.arrivals as f64 / self.elapsed
        } else {
            0.0
        }
    }
}

/// A controller's answer: the replica count it wants and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: String,
}

impl Decision {
    pub fn new(replicas: u32, reason: impl Into<String>) -> Decision {
        Decision {
            replicas,
            reason: reason.into(),
        }
    }
}

/// Replica bounds shared by every policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default = "one")]
    pub min_replicas: u32,
    #[serde(default = "hundred")]
    pub max_replicas: u32,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            min_replicas: 1,
            max_replicas: 100,
        }
    }
}

impl Bounds {
    pub fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min_replicas, self.max_replicas.max(self.min_replicas))
    }
}

fn one() -> u32 {
    1
}
fn hundred() -> u32 {
    100
}

/// One policy of a comparison, as written in a simulation config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyConfig {
    Hpa(hpa::HpaConfig),
    Keda(keda::KedaConfig),
    Kpa(kpa::KpaConfig),
    Ray(ray::RayConfig),
    Infaas(infaas::InfaasConfig),
    Slo(slo::SloConfig),
    /// A fixed replica count (the baseline every autoscaler is compared with).
    Fixed {
        replicas: u32,
    },
}

/// A policy with its name in reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedPolicy {
    pub name: String,
    #[serde(flatten)]
    pub policy: PolicyConfig,
}

/// A policy bound to its model (profile and objective) with its state: what the
/// simulator (or a server) ticks.
#[derive(Debug, Clone)]
pub enum Controller {
    Hpa(hpa::HpaConfig, hpa::HpaState),
    Keda(keda::KedaConfig, keda::KedaState),
    Kpa(kpa::KpaConfig, kpa::KpaState),
    Ray(ray::RayConfig, ray::RayState),
    Infaas(infaas::InfaasParams, infaas::InfaasState),
    Slo(slo::SloParams, slo::SloState),
    Fixed(u32),
}

impl Controller {
    /// Bind a policy to a model's profile and latency objective (seconds).
    pub fn new(policy: &PolicyConfig, profile: &Profile, slo_s: f64) -> crate::Result<Controller> {
        Ok(match policy {
            PolicyConfig::Hpa(c) => Controller::Hpa(c.clone(), hpa::HpaState::default()),
            PolicyConfig::Keda(c) => Controller::Keda(c.clone(), keda::KedaState::default()),
            PolicyConfig::Kpa(c) => Controller::Kpa(c.clone(), kpa::KpaState::default()),
            PolicyConfig::Ray(c) => Controller::Ray(c.clone(), ray::RayState::default()),
            PolicyConfig::Infaas(c) => {
                Controller::Infaas(c.resolve(profile, slo_s)?, infaas::InfaasState::default())
            }
            PolicyConfig::Slo(c) => {
                Controller::Slo(c.resolve(profile, slo_s)?, slo::SloState::default())
            }
            PolicyConfig::Fixed { replicas } => Controller::Fixed(*replicas),
        })
    }

    /// Seconds between two ticks of this controller's loop (its real interval).
    pub fn interval(&self) -> f64 {
        match self {
            Controller::Hpa(c, _) => c.sync_period_s,
            Controller::Keda(c, _) => c.hpa.sync_period_s.min(c.polling_interval_s),
            Controller::Kpa(c, _) => c.tick_s,
            Controller::Ray(c, _) => c.control_loop_s,
            Controller::Infaas(p, _) => p.interval_s,
            Controller::Slo(p, _) => p.interval_s,
            Controller::Fixed(_) => 3600.0,
        }
    }

    /// Replicas to start with.
    pub fn initial(&self) -> u32 {
        match self {
            Controller::Hpa(c, _) => c.bounds.min_replicas.max(1),
            Controller::Keda(c, _) => c.min_replica_count.max(1),
            Controller::Kpa(c, _) => c.initial_scale.max(c.bounds.min_replicas),
            Controller::Ray(c, _) => c
                .initial_replicas
                .unwrap_or(c.bounds.min_replicas)
                .max(c.bounds.min_replicas),
            Controller::Infaas(p, _) => p.bounds.min_replicas.max(1),
            Controller::Slo(p, _) => p.bounds.min_replicas.max(1),
            Controller::Fixed(n) => *n,
        }
    }

    pub fn decide(&mut self, obs: &Observation) -> Decision {
        match self {
            Controller::Hpa(c, s) => hpa::decide(obs, s, c),
            Controller::Keda(c, s) => keda::decide(obs, s, c),
            Controller::Kpa(c, s) => kpa::decide(obs, s, c),
            Controller::Ray(c, s) => ray::decide(obs, s, c),
            Controller::Infaas(p, s) => infaas::decide(obs, s, p),
            Controller::Slo(p, s) => slo::decide(obs, s, p),
            Controller::Fixed(n) => Decision::new(*n, "fixed"),
        }
    }
}

/// Time-stamped samples kept for a sliding window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    samples: std::collections::VecDeque<(f64, f64)>,
}

impl Window {
    pub fn push(&mut self, t: f64, v: f64, keep_s: f64) {
        self.samples.push_back((t, v));
        while self
            .samples
            .front()
            .is_some_and(|&(t0, _)| t0 <= t - keep_s)
        {
            self.samples.pop_front();
        }
    }

    /// Samples with `t > now - span`.
    pub fn since(&self, now: f64, span: f64) -> impl Iterator<Item = f64> + '_ {
        self.samples
            .iter()
            .filter(move |&&(t, _)| t > now - span)
            .map(|&(_, v)| v)
    }

    pub fn mean(&self, now: f64, span: f64) -> Option<f64> {
        let (n, s) = self
            .since(now, span)
            .fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
        (n > 0).then(|| s / n as f64)
    }

    pub fn max(&self, now: f64, span: f64) -> Option<f64> {
        self.since(now, span).reduce(f64::max)
    }
}

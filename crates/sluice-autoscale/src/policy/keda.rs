//! KEDA's ScaledObject: activation (0 ↔ 1) by KEDA's operator, 1 ↔ N by the HPA it
//! creates.
//!
//! Every `pollingInterval` (30 s) KEDA asks the scaler; a metric above
//! `activationThreshold` activates a deployment at zero (to 1 at once), and when the
//! metric has stayed at or below it for `cooldownPeriod` (300 s) since the last active
//! poll, KEDA scales to `minReplicaCount` (0 by default). In between, the HPA it owns
//! runs its 15 s loop on the same metric as an `AverageValue` target (see `hpa`).

use serde::{Deserialize, Serialize};

use super::hpa::{self, HpaConfig, HpaState};
use super::{Decision, Observation};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KedaConfig {
    #[serde(default = "polling")]
    pub polling_interval_s: f64,
    #[serde(default = "cooldown")]
    pub cooldown_period_s: f64,
    /// The metric must exceed this to activate (KEDA's `activationThreshold`, default 0).
    #[serde(default)]
    pub activation_threshold: f64,
    /// Replicas when inactive (KEDA's `minReplicaCount`, default 0).
    #[serde(default)]
    pub min_replica_count: u32,
    /// The HPA KEDA creates: its metric, bounds (min ≥ 1) and behaviour.
    pub hpa: HpaConfig,
}

fn polling() -> f64 {
    30.0
}
fn cooldown() -> f64 {
    300.0
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KedaState {
    hpa: HpaState,
    last_active: Option<f64>,
    last_poll: Option<f64>,
    last_hpa: Option<f64>,
    active_metric: f64,
    /// Arrivals and time since the HPA's previous sync (KEDA ticks at the faster loop).
    hpa_arrivals: u64,
    hpa_elapsed: f64,
}

/// The scaler's value for the activation check: the HPA metric's raw total.
fn scaler_value(obs: &Observation, cfg: &KedaConfig) -> f64 {
    match cfg.hpa.metric {
        hpa::HpaMetric::RequestsPerSecond { .. } => obs.rate(),
        hpa::HpaMetric::Concurrency { .. } => obs.in_flight_avg,
        hpa::HpaMetric::Utilization { .. } => obs.pods.iter().filter_map(|p| p.utilization).sum(),
    }
}

pub fn decide(obs: &Observation, state: &mut KedaState, cfg: &KedaConfig) -> Decision {
    let now = obs.now;
    state.hpa_arrivals += obs.arrivals;
    state.hpa_elapsed += obs.elapsed;
    let poll_due = state
        .last_poll
        .is_none_or(|t| now - t >= cfg.polling_interval_s - 1e-9);
    if poll_due {
        state.last_poll = Some(now);
        state.active_metric = scaler_value(obs, cfg);
        if state.active_metric > cfg.activation_threshold {
            state.last_active = Some(now);
        }
    }
    let active = state.active_metric > cfg.activation_threshold;
    if obs.current == 0 {
        // the HPA does not run at zero: its averages start at activation
        state.hpa_arrivals = 0;
        state.hpa_elapsed = 0.0;
        if poll_due && active {
            return Decision::new(1, "activate: metric above the activation threshold");
        }
        return Decision::new(0, "inactive");
    }
    if poll_due && !active {
        let idle_since = state.last_active.unwrap_or(0.0);
        if now - idle_since >= cfg.cooldown_period_s {
            return Decision::new(
                cfg.min_replica_count,
                "deactivate: inactive for the cooldown period",
            );
        }
    }
    let hpa_due = state
        .last_hpa
        .is_none_or(|t| now - t >= cfg.hpa.sync_period_s - 1e-9);
    if !hpa_due {
        return Decision::new(obs.current, "between HPA syncs");
    }
    state.last_hpa = Some(now);
    let mut o = obs.clone();
    o.arrivals = std::mem::take(&mut state.hpa_arrivals);
    o.elapsed = std::mem::take(&mut state.hpa_elapsed);
    let d = hpa::decide(&o, &mut state.hpa, &cfg.hpa);
    Decision::new(d.replicas.max(1), format!("hpa: {}", d.reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Bounds;

    fn cfg() -> KedaConfig {
        KedaConfig {
            polling_interval_s: 30.0,
            cooldown_period_s: 300.0,
            activation_threshold: 1.0,
            min_replica_count: 0,
            hpa: HpaConfig::with_metric(
                hpa::HpaMetric::RequestsPerSecond { target: 10.0 },
                Bounds::default(),
            ),
        }
    }

    fn obs(now: f64, current: u32, rate: f64, elapsed: f64) -> Observation {
        Observation {
            now,
            current,
            ready: current,
            arrivals: (rate * elapsed) as u64,
            elapsed,
            ..Observation::default()
        }
    }

    #[test]
    fn activation_threshold_and_polling() {
        let c = cfg();
        let mut s = KedaState::default();
        // at zero with a metric at the threshold: stays at zero (must exceed it)
        assert_eq!(decide(&obs(0.0, 0, 1.0, 15.0), &mut s, &c).replicas, 0);
        // traffic arrives at 10 s, but the next poll is at 30 s
        assert_eq!(decide(&obs(15.0, 0, 50.0, 15.0), &mut s, &c).replicas, 0);
        let d = decide(&obs(30.0, 0, 50.0, 15.0), &mut s, &c);
        assert_eq!(d.replicas, 1, "{}", d.reason);
        // then the HPA: 50 req/s over the last 15 s at 10 per replica → 5
        assert_eq!(decide(&obs(45.0, 1, 50.0, 15.0), &mut s, &c).replicas, 5);
    }

    #[test]
    fn cooldown_then_back_to_min_replica_count() {
        let c = cfg();
        let mut s = KedaState::default();
        decide(&obs(0.0, 1, 20.0, 15.0), &mut s, &c); // active at t = 0
        let mut t = 15.0;
        let mut current = 1;
        let mut zero_at = None;
        while t <= 400.0 {
            let d = decide(&obs(t, current, 0.0, 15.0), &mut s, &c);
            if d.replicas == 0 && zero_at.is_none() {
                zero_at = Some(t);
            }
            current = d.replicas;
            t += 15.0;
        }
        // the first poll at or after 300 s of inactivity: polls are at 0, 30, …, 300
        assert_eq!(zero_at, Some(300.0));
    }
}

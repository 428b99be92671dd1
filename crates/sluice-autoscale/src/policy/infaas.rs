//! INFaaS's model-level autoscaling rule (Romero et al., ATC'21): replicas needed =
//! ceil(load / throughput of one replica), scaled up at once and down only after the
//! lower need has held for a delay (hysteresis against oscillation).
//!
//! The per-replica throughput is the profile's at its best batch size that meets the
//! objective, derated by `max_utilization`.

use serde::{Deserialize, Serialize};

use super::{Bounds, Decision, Observation, Window};
use crate::profile::Profile;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfaasConfig {
    #[serde(flatten)]
    pub bounds: Bounds,
    #[serde(default = "interval")]
    pub interval_s: f64,
    #[serde(default = "delay")]
    pub scale_down_delay_s: f64,
    #[serde(default = "util")]
    pub max_utilization: f64,
}

fn interval() -> f64 {
    2.0
}
fn delay() -> f64 {
    60.0
}
fn util() -> f64 {
    0.8
}

impl Default for InfaasConfig {
    fn default() -> Self {
        InfaasConfig {
            bounds: Bounds::default(),
            interval_s: interval(),
            scale_down_delay_s: delay(),
            max_utilization: util(),
        }
    }
}

/// The rule bound to a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct InfaasParams {
    pub bounds: Bounds,
    pub interval_s: f64,
    pub scale_down_delay_s: f64,
    /// Requests per second one replica takes at the target utilization.
    pub per_replica: f64,
}

impl InfaasConfig {
    pub fn resolve(&self, profile: &Profile, slo_s: f64) -> Result<InfaasParams> {
        let (_, thr) = profile.best_batch(slo_s).ok_or_else(|| {
            Error::Config(format!(
                "{}: no batch size meets the {:.1} ms objective",
                profile.hardware_class,
                slo_s * 1e3
            ))
        })?;
        Ok(InfaasParams {
            bounds: self.bounds,
            interval_s: self.interval_s,
            scale_down_delay_s: self.scale_down_delay_s,
            per_replica: thr * self.max_utilization,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InfaasState {
    needs: Window,
}

pub fn decide(obs: &Observation, state: &mut InfaasState, p: &InfaasParams) -> Decision {
    let need = (obs.rate() / p.per_replica).ceil() as u32;
    state
        .needs
        .push(obs.now, f64::from(need), p.scale_down_delay_s);
    let desired = if need >= obs.current {
        need
    } else {
        // the highest need over the delay: down only when it stayed lower that long
        let held = state
            .needs
            .max(obs.now, p.scale_down_delay_s)
            .unwrap_or(0.0) as u32;
        held.min(obs.current)
    };
    Decision::new(
        p.bounds.clamp(desired),
        format!(
            "need {need} at {:.1} req/s, {:.1} per replica",
            obs.rate(),
            p.per_replica
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{test_profile, ServiceModel};

    #[test]
    fn up_at_once_down_after_the_delay() {
        // 10 ms per request at batch 1, 25 ms at batch 4 (160/s): objective 100 ms → batch 4
        let prof = test_profile(
            "c",
            1.0,
            &[(1, 10.0), (4, 25.0)],
            ServiceModel::Deterministic,
        );
        let p = InfaasConfig::default().resolve(&prof, 0.1).unwrap();
        assert!((p.per_replica - 128.0).abs() < 1e-9);
        let mut s = InfaasState::default();
        let o = |now: f64, current: u32, rate: f64| Observation {
            now,
            current,
            ready: current,
            arrivals: (rate * 2.0) as u64,
            elapsed: 2.0,
            ..Observation::default()
        };
        assert_eq!(decide(&o(0.0, 1, 500.0), &mut s, &p).replicas, 4);
        // load falls to 100/s: need 1, but held at 4 for 60 s
        let mut t = 2.0;
        while t < 60.0 {
            assert_eq!(decide(&o(t, 4, 100.0), &mut s, &p).replicas, 4, "{t}");
            t += 2.0;
        }
        assert_eq!(decide(&o(60.0, 4, 100.0), &mut s, &p).replicas, 1);
        // zero load: the minimum
        assert_eq!(decide(&o(200.0, 1, 0.0), &mut s, &p).replicas, 1);
        // an objective no batch size meets is a clear error
        let e = InfaasConfig::default().resolve(&prof, 0.01).unwrap_err();
        assert!(e.to_string().contains("no batch size meets"), "{e}");
    }
}

//! Knative's Pod Autoscaler (KPA), concurrency mode.
//!
//! Every 2 s: the average concurrency over the stable window (60 s) and over the panic
//! window (10 % of it, 6 s) is divided by the per-pod target (`target ×
//! target_utilization`, Knative's 100 × 0.7 by default) and rounded up. Both are bound
//! by the rates: at most `max_scale_up_rate × ready` (1000) and at least `ready /
//! max_scale_down_rate` (2). When the panic count reaches `panic_threshold` (200 %)
//! of the ready pods, the KPA panics: it follows the panic window and never scales
//! down, until a whole stable window has passed without the threshold being reached.
//! Scale to zero (min 0) waits `scale_to_zero_grace_s` (30 s) after the stable
//! window last saw traffic.

use serde::{Deserialize, Serialize};

use super::{Bounds, Decision, Observation, Window};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpaConfig {
    #[serde(flatten)]
    pub bounds: Bounds,
    /// Concurrency per pod (`autoscaling.knative.dev/target`, default 100).
    #[serde(default = "target")]
    pub target: f64,
    #[serde(default = "utilization")]
    pub target_utilization: f64,
    #[serde(default = "stable")]
    pub stable_window_s: f64,
    #[serde(default = "panic_pct")]
    pub panic_window_percentage: f64,
    /// 2.0 = 200 %.
    #[serde(default = "panic_threshold")]
    pub panic_threshold: f64,
    #[serde(default = "up_rate")]
    pub max_scale_up_rate: f64,
    #[serde(default = "down_rate")]
    pub max_scale_down_rate: f64,
    #[serde(default = "grace")]
    pub scale_to_zero_grace_s: f64,
    #[serde(default = "tick")]
    pub tick_s: f64,
    #[serde(default = "initial")]
    pub initial_scale: u32,
}

fn target() -> f64 {
    100.0
}
fn utilization() -> f64 {
    0.7
}
fn stable() -> f64 {
    60.0
}
fn panic_pct() -> f64 {
    10.0
}
fn panic_threshold() -> f64 {
    2.0
}
fn up_rate() -> f64 {
    1000.0
}
fn down_rate() -> f64 {
    2.0
}
fn grace() -> f64 {
    30.0
}
fn tick() -> f64 {
    2.0
}
fn initial() -> u32 {
    1
}

impl KpaConfig {
    pub fn with_target(target: f64, bounds: Bounds) -> KpaConfig {
        KpaConfig {
            bounds,
            target,
            target_utilization: utilization(),
            stable_window_s: stable(),
            panic_window_percentage: panic_pct(),
            panic_threshold: panic_threshold(),
            max_scale_up_rate: up_rate(),
            max_scale_down_rate: down_rate(),
            scale_to_zero_grace_s: grace(),
            tick_s: tick(),
            initial_scale: initial(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KpaState {
    concurrency: Window,
    panic_since: Option<f64>,
    max_panic_pods: u32,
    last_traffic: Option<f64>,
}

impl KpaState {
    pub fn panicking(&self) -> bool {
        self.panic_since.is_some()
    }
}

pub fn decide(obs: &Observation, state: &mut KpaState, cfg: &KpaConfig) -> Decision {
    let now = obs.now;
    state
        .concurrency
        .push(now, obs.in_flight_avg, cfg.stable_window_s);
    if obs.in_flight_avg > 0.0 || obs.arrivals > 0 {
        state.last_traffic = Some(now);
    }
    let panic_window = cfg.stable_window_s * cfg.panic_window_percentage / 100.0;
    let stable = state
        .concurrency
        .mean(now, cfg.stable_window_s)
        .unwrap_or(0.0);
    let panic = state.concurrency.mean(now, panic_window).unwrap_or(stable);
    let per_pod = cfg.target * cfg.target_utilization;
    let ready = obs.ready.max(1);
    let max_up = (cfg.max_scale_up_rate * f64::from(ready)).ceil() as u32;
    let max_down = (f64::from(ready) / cfg.max_scale_down_rate).floor() as u32;
    let bound = |n: u32| n.clamp(max_down, max_up.max(max_down));
    let stable_pods = bound((stable / per_pod).ceil() as u32);
    let panic_pods = bound((panic / per_pod).ceil() as u32);
    let over = f64::from(panic_pods) / f64::from(ready) >= cfg.panic_threshold;
    match state.panic_since {
        None if over => {
            state.panic_since = Some(now);
            state.max_panic_pods = 0;
        }
        // still over: extend the panic
        Some(_) if over => state.panic_since = Some(now),
        Some(since) if now - since >= cfg.stable_window_s => {
            state.panic_since = None;
            state.max_panic_pods = 0;
        }
        _ => {}
    }
    let (mut desired, mode) = if state.panic_since.is_some() {
        let d = panic_pods.max(state.max_panic_pods).max(obs.current);
        state.max_panic_pods = d;
        (d, "panic")
    } else {
        (stable_pods, "stable")
    };
    if desired == 0 {
        let idle = state.last_traffic.map_or(now, |t| now - t);
        if idle < cfg.scale_to_zero_grace_s && obs.current > 0 {
            desired = 1;
        }
    }
    let desired = cfg.bounds.clamp(desired);
    Decision::new(
        desired,
        format!("{mode}: stable {stable:.1}, panic {panic:.1} concurrent at {per_pod:.1} per pod"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(now: f64, current: u32, conc: f64) -> Observation {
        Observation {
            now,
            current,
            ready: current,
            in_flight_avg: conc,
            arrivals: u64::from(conc > 0.0),
            elapsed: 2.0,
            ..Observation::default()
        }
    }

    fn cfg() -> KpaConfig {
        // target 10 × 0.7 → 7 per pod
        KpaConfig::with_target(
            10.0,
            Bounds {
                min_replicas: 1,
                max_replicas: 1000,
            },
        )
    }

    #[test]
    fn stable_mode_follows_the_60_s_average() {
        let c = cfg();
        let mut s = KpaState::default();
        // 70 concurrent on 10 pods for a minute: exactly 10 pods
        let mut d = Decision::new(0, "");
        for i in 0..30 {
            d = decide(&obs(f64::from(i) * 2.0, 10, 70.0), &mut s, &c);
        }
        assert_eq!(d.replicas, 10);
        assert!(!s.panicking());
    }

    #[test]
    fn panics_at_200_percent_and_never_scales_down_in_panic() {
        let c = cfg();
        let mut s = KpaState::default();
        let mut t = 0.0;
        for _ in 0..30 {
            decide(&obs(t, 2, 14.0), &mut s, &c);
            t += 2.0;
        }
        // a burst: 6-s average 42 → 6 pods = 300 % of 2 ready → panic, follow the burst
        let mut d = decide(&obs(t, 2, 42.0), &mut s, &c);
        t += 2.0;
        assert!(s.panicking());
        // panic window mean (14 + 14 + 42) / 3 ≈ 23.3 → 4 pods (200 %)
        assert_eq!(d.replicas, 4, "{}", d.reason);
        for _ in 0..3 {
            d = decide(&obs(t, d.replicas, 42.0), &mut s, &c);
            t += 2.0;
        }
        assert_eq!(d.replicas, 6);
        // load drops: still panicking, never below the panic maximum
        d = decide(&obs(t, 6, 7.0), &mut s, &c);
        t += 2.0;
        assert_eq!(d.replicas, 6);
        // a whole stable window without the threshold ends panic; then the stable
        // average decides (rate bound: at most half of the ready pods removed per tick)
        let mut current = d.replicas;
        for _ in 0..40 {
            let d = decide(&obs(t, current, 7.0), &mut s, &c);
            current = d.replicas;
            t += 2.0;
        }
        assert!(!s.panicking());
        assert_eq!(current, 1);
    }

    #[test]
    fn scale_down_rate_halves_at_most() {
        let c = cfg();
        let mut s = KpaState::default();
        let d = decide(&obs(0.0, 20, 0.0), &mut s, &c);
        assert_eq!(d.replicas, 10);
    }

    #[test]
    fn scale_to_zero_after_grace() {
        let mut c = cfg();
        c.bounds.min_replicas = 0;
        c.max_scale_down_rate = 1e9;
        let mut s = KpaState::default();
        decide(&obs(0.0, 1, 7.0), &mut s, &c);
        // no traffic: keeps 1 pod until 30 s after the last traffic
        let mut zero_at = None;
        let mut t = 2.0;
        let mut current = 1;
        while t < 120.0 {
            let d = decide(&obs(t, current, 0.0), &mut s, &c);
            if d.replicas == 0 && zero_at.is_none() {
                zero_at = Some(t);
            }
            current = d.replicas;
            t += 2.0;
        }
        // the stable average stays > 0 until the 7 leaves the 60-s window
        assert_eq!(zero_at, Some(60.0));
    }
}

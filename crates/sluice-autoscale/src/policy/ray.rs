//! Ray Serve's default autoscaling policy.
//!
//! The controller loop runs every 0.1 s. The signal is the total number of ongoing
//! requests (queued at handles + running at replicas) averaged over
//! `look_back_period_s` (30 s). `error_ratio = ongoing / (target_ongoing_requests ×
//! running)`, smoothed as `1 + (error_ratio − 1) × factor` (`upscale_smoothing_factor`
//! above 1, `downscale_smoothing_factor` below, default 1), `desired = ceil(running ×
//! smoothed)`; if smoothing alone keeps a count that should fall, it falls by one. A
//! decision is applied only after it has held for `upscale_delay_s` (30 s) or
//! `downscale_delay_s` (600 s) of consecutive loops; from zero replicas any request
//! scales to one at once. Defaults: target 2, min 1, max 100 (`num_replicas="auto"`).

use serde::{Deserialize, Serialize};

use super::{Bounds, Decision, Observation, Window};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RayConfig {
    #[serde(flatten)]
    pub bounds: Bounds,
    #[serde(default)]
    pub initial_replicas: Option<u32>,
    #[serde(default = "target")]
    pub target_ongoing_requests: f64,
    #[serde(default = "up_delay")]
    pub upscale_delay_s: f64,
    #[serde(default = "down_delay")]
    pub downscale_delay_s: f64,
    #[serde(default = "factor")]
    pub upscale_smoothing_factor: f64,
    #[serde(default = "factor")]
    pub downscale_smoothing_factor: f64,
    #[serde(default = "look_back")]
    pub look_back_period_s: f64,
    #[serde(default = "loop_s")]
    pub control_loop_s: f64,
}

fn target() -> f64 {
    2.0
}
fn up_delay() -> f64 {
    30.0
}
fn down_delay() -> f64 {
    600.0
}
fn factor() -> f64 {
    1.0
}
fn look_back() -> f64 {
    30.0
}
fn loop_s() -> f64 {
    0.1
}

impl Default for RayConfig {
    fn default() -> RayConfig {
        RayConfig {
            bounds: Bounds::default(),
            initial_replicas: None,
            target_ongoing_requests: target(),
            upscale_delay_s: up_delay(),
            downscale_delay_s: down_delay(),
            upscale_smoothing_factor: factor(),
            downscale_smoothing_factor: factor(),
            look_back_period_s: look_back(),
            control_loop_s: loop_s(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RayState {
    ongoing: Window,
    /// Consecutive loops wanting up (> 0) or down (< 0).
    counter: i64,
}

/// Ray's `_calculate_desired_num_replicas` (bounds applied).
pub fn desired_replicas(cfg: &RayConfig, total_ongoing: f64, running: u32) -> u32 {
    if running == 0 {
        return cfg.bounds.clamp(u32::from(total_ongoing > 0.0));
    }
    let running_f = f64::from(running);
    let error_ratio = total_ongoing / (cfg.target_ongoing_requests * running_f);
    let factor = if error_ratio >= 1.0 {
        cfg.upscale_smoothing_factor
    } else {
        cfg.downscale_smoothing_factor
    };
    let smoothed = 1.0 + (error_ratio - 1.0) * factor;
    let mut desired = (running_f * smoothed).ceil().max(0.0) as u32;
    if ((running_f * error_ratio).ceil() as u32) < running && desired == running {
        desired -= 1;
    }
    cfg.bounds.clamp(desired)
}

pub fn decide(obs: &Observation, state: &mut RayState, cfg: &RayConfig) -> Decision {
    let now = obs.now;
    state
        .ongoing
        .push(now, obs.in_flight_avg, cfg.look_back_period_s);
    let ongoing = state
        .ongoing
        .mean(now, cfg.look_back_period_s)
        .unwrap_or(0.0);
    let current = obs.current;
    if current == 0 && obs.in_flight_avg > 0.0 {
        state.counter = 0;
        return Decision::new(cfg.bounds.clamp(1), "scale from zero");
    }
    let desired = desired_replicas(
        cfg,
        ongoing,
        obs.ready.min(current).max(u32::from(current > 0)),
    );
    let loops = |s: f64| (s / cfg.control_loop_s).round() as i64;
    if desired > current {
        state.counter = state.counter.max(0) + 1;
        if state.counter > loops(cfg.upscale_delay_s) {
            state.counter = 0;
            return Decision::new(desired, format!("upscale: {ongoing:.1} ongoing"));
        }
    } else if desired < current {
        state.counter = state.counter.min(0) - 1;
        if -state.counter > loops(cfg.downscale_delay_s) {
            state.counter = 0;
            return Decision::new(desired, format!("downscale: {ongoing:.1} ongoing"));
        }
    } else {
        state.counter = 0;
    }
    Decision::new(
        current,
        format!("hold: {ongoing:.1} ongoing, wants {desired}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_formula_and_smoothing() {
        let c = RayConfig::default();
        // 1 replica with 10 ongoing at target 2 → 5
        assert_eq!(desired_replicas(&c, 10.0, 1), 5);
        // 4 replicas with 8 ongoing → hold
        assert_eq!(desired_replicas(&c, 8.0, 4), 4);
        // upscale_smoothing_factor 0.5: error ratio 2.5 → 1 + 1.5 × 0.5 = 1.75 → 2 × 1.75
        let c = RayConfig {
            upscale_smoothing_factor: 0.5,
            downscale_smoothing_factor: 0.5,
            ..RayConfig::default()
        };
        assert_eq!(desired_replicas(&c, 10.0, 2), 4);
        // downscale stuck by smoothing: 10 replicas, 17 ongoing (ratio 0.85 → 9.25 → 10)
        // falls by one
        assert_eq!(desired_replicas(&c, 17.0, 10), 9);
        // bounds
        let c = RayConfig {
            bounds: Bounds {
                min_replicas: 2,
                max_replicas: 3,
            },
            ..RayConfig::default()
        };
        assert_eq!(desired_replicas(&c, 100.0, 2), 3);
        assert_eq!(desired_replicas(&c, 0.0, 3), 2);
    }

    #[test]
    fn delays_30_s_up_600_s_down() {
        // a look-back shorter than one loop, so that the signal steps with the load and
        // only the delays are measured
        let c = RayConfig {
            look_back_period_s: 0.05,
            ..RayConfig::default()
        };
        let mut s = RayState::default();
        let mut t = 0.0;
        let mut current = 1;
        let mut up_at = None;
        // 10 ongoing from t = 0
        for _ in 0..400 {
            let d = decide(
                &Observation {
                    now: t,
                    current,
                    ready: current,
                    in_flight_avg: 10.0,
                    ..Default::default()
                },
                &mut s,
                &c,
            );
            if d.replicas != current && up_at.is_none() {
                up_at = Some(t);
            }
            current = d.replicas;
            t += 0.1;
        }
        // 301 consecutive loops of 0.1 s: ≈ 30 s
        assert!((up_at.unwrap() - 30.0).abs() < 0.15, "{up_at:?}");
        assert_eq!(current, 5);
        // load gone: nothing until 600 s of loops
        let start = t;
        let mut down_at = None;
        for _ in 0..6100 {
            let d = decide(
                &Observation {
                    now: t,
                    current,
                    ready: current,
                    in_flight_avg: 0.0,
                    ..Default::default()
                },
                &mut s,
                &c,
            );
            if d.replicas != current && down_at.is_none() {
                down_at = Some(t - start);
            }
            current = d.replicas;
            t += 0.1;
        }
        assert!((down_at.unwrap() - 600.0).abs() < 0.15, "{down_at:?}");
        assert_eq!(current, 1);
    }

    #[test]
    fn scale_from_zero_is_immediate() {
        let c = RayConfig {
            bounds: Bounds {
                min_replicas: 0,
                max_replicas: 10,
            },
            ..RayConfig::default()
        };
        let mut s = RayState::default();
        let d = decide(
            &Observation {
                now: 0.0,
                current: 0,
                in_flight_avg: 1.0,
                ..Default::default()
            },
            &mut s,
            &c,
        );
        assert_eq!(d.replicas, 1);
    }
}

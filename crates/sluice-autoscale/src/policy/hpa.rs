//! Kubernetes HorizontalPodAutoscaler v2, as its controller computes a replica count.
//!
//! `desired = ceil(ratio × pods)` with `ratio = average metric / target`, nothing done
//! while `|ratio − 1| ≤ tolerance` (0.1). Missing metrics: when the ratio says scale
//! down, pods without metrics count as at 100 % of target; when it says scale up, as 0 %
//! (and not-yet-ready pods as 0 %); if that turns the direction around or into the
//! tolerance band, nothing changes. Then `behavior`: the stabilization window (scale
//! up: the lowest recommendation in the window; scale down: the highest), then the
//! scaling policies — each allows a change of `Pods` replicas or `Percent` of the
//! replicas at the start of its period, per `periodSeconds`, and `selectPolicy` picks
//! the largest change (`Max`, default), the smallest (`Min`) or none (`Disabled`).
//! Defaults are the controller's: scale up 0 s window, max(4 pods, 100 %) per 15 s;
//! scale down 300 s window, 100 % per 15 s; sync every 15 s.

use serde::{Deserialize, Serialize};

use super::{Bounds, Decision, Observation};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HpaConfig {
    #[serde(flatten)]
    pub bounds: Bounds,
    pub metric: HpaMetric,
    #[serde(default = "tolerance")]
    pub tolerance: f64,
    #[serde(default = "sync")]
    pub sync_period_s: f64,
    #[serde(default = "Rules::default_up")]
    pub scale_up: Rules,
    #[serde(default = "Rules::default_down")]
    pub scale_down: Rules,
}

fn tolerance() -> f64 {
    0.1
}
fn sync() -> f64 {
    15.0
}

/// The metric and its target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HpaMetric {
    /// Resource metric: average busy fraction of the pods vs `target` (0.7 = 70 %).
    Utilization { target: f64 },
    /// Pods metric `AverageValue`: requests in flight per pod vs `target`.
    Concurrency { target: f64 },
    /// External metric `AverageValue`: requests per second over all pods ÷ `target`.
    RequestsPerSecond { target: f64 },
}

/// `behavior.scaleUp` or `behavior.scaleDown`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub stabilization_window_s: f64,
    #[serde(default)]
    pub select_policy: Select,
    pub policies: Vec<ScalingPolicy>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Select {
    #[default]
    Max,
    Min,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingPolicy {
    #[serde(rename = "type")]
    pub kind: PolicyType,
    pub value: u32,
    pub period_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyType {
    Pods,
    Percent,
}

impl Rules {
    pub fn default_up() -> Rules {
        Rules {
            stabilization_window_s: 0.0,
            select_policy: Select::Max,
            policies: vec![
                ScalingPolicy {
                    kind: PolicyType::Pods,
                    value: 4,
                    period_s: 15.0,
                },
                ScalingPolicy {
                    kind: PolicyType::Percent,
                    value: 100,
                    period_s: 15.0,
                },
            ],
        }
    }

    pub fn default_down() -> Rules {
        Rules {
            stabilization_window_s: 300.0,
            select_policy: Select::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyType::Percent,
                value: 100,
                period_s: 15.0,
            }],
        }
    }
}

impl HpaConfig {
    /// An HPA with the controller's default behaviour on one metric.
    pub fn with_metric(metric: HpaMetric, bounds: Bounds) -> HpaConfig {
        HpaConfig {
            bounds,
            metric,
            tolerance: tolerance(),
            sync_period_s: sync(),
            scale_up: Rules::default_up(),
            scale_down: Rules::default_down(),
        }
    }
}

/// What the controller remembers between syncs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HpaState {
    /// (time, raw recommendation) for the stabilization windows.
    recommendations: Vec<(f64, u32)>,
    /// (time, replicas added) and (time, replicas removed) for the policies' periods.
    up_events: Vec<(f64, u32)>,
    down_events: Vec<(f64, u32)>,
}

/// The metric-only recommendation (`None`: no pod reported a metric; keep the count).
pub fn metric_recommendation(obs: &Observation, cfg: &HpaConfig) -> Option<u32> {
    let current = obs.current;
    match cfg.metric {
        HpaMetric::RequestsPerSecond { target } => {
            // External AverageValue: desired = ceil(total / target), tolerance on the ratio.
            let total = obs.rate();
            let ratio = total / (target * f64::from(current.max(1)));
            if current > 0 && (ratio - 1.0).abs() <= cfg.tolerance {
                return Some(current);
            }
            Some((total / target).ceil() as u32)
        }
        HpaMetric::Utilization { target } | HpaMetric::Concurrency { target } => {
            let value = |p: &super::PodSample| match cfg.metric {
                HpaMetric::Utilization { .. } => p.utilization,
                _ => p.concurrency,
            };
            let ready: Vec<f64> = obs
                .pods
                .iter()
                .filter(|p| p.ready)
                .filter_map(value)
                .collect();
            if ready.is_empty() {
                return None;
            }
            let missing = obs
                .pods
                .iter()
                .filter(|p| p.ready && value(p).is_none())
                .count();
            let unready = obs.pods.iter().filter(|p| !p.ready).count();
            let sum: f64 = ready.iter().sum();
            let ratio = sum / ready.len() as f64 / target;
            if missing == 0 && unready == 0 {
                if (ratio - 1.0).abs() <= cfg.tolerance {
                    return Some(current);
                }
                return Some((ratio * ready.len() as f64).ceil() as u32);
            }
            // Missing metrics: assume the least favourable value for the move.
            let (extra_sum, extra_n) = if ratio < 1.0 {
                // scale down: missing pods at 100 % of target; unready pods ignored
                (missing as f64 * target, missing)
            } else {
                // scale up: missing and unready pods at 0
                (0.0, missing + unready)
            };
            let n = ready.len() + extra_n;
            let new_ratio = (sum + extra_sum) / n as f64 / target;
            if (new_ratio - 1.0).abs() <= cfg.tolerance || (ratio < 1.0) != (new_ratio < 1.0) {
                return Some(current);
            }
            let desired = (new_ratio * n as f64).ceil() as u32;
            // A recomputed ratio may not move past the current count in the wrong direction.
            if (new_ratio > 1.0 && desired < current) || (new_ratio < 1.0 && desired > current) {
                return Some(current);
            }
            Some(desired)
        }
    }
}

pub fn decide(obs: &Observation, state: &mut HpaState, cfg: &HpaConfig) -> Decision {
    let now = obs.now;
    let current = obs.current;
    let Some(raw) = metric_recommendation(obs, cfg) else {
        return Decision::new(current, "no metrics: keep the replica count");
    };
    // Stabilization (recommendations are kept for the longer window).
    let keep = cfg
        .scale_up
        .stabilization_window_s
        .max(cfg.scale_down.stabilization_window_s);
    if state.recommendations.is_empty() {
        // The controller seeds the window with the current count on its first sync.
        state.recommendations.push((now, current));
    }
    state.recommendations.retain(|&(t, _)| t > now - keep);
    let mut up_rec = raw;
    let mut down_rec = raw;
    for &(t, r) in &state.recommendations {
        if t > now - cfg.scale_up.stabilization_window_s {
            up_rec = up_rec.min(r);
        }
        if t > now - cfg.scale_down.stabilization_window_s {
            down_rec = down_rec.max(r);
        }
    }
    state.recommendations.push((now, raw));
    let mut stabilized = current;
    if stabilized < up_rec {
        stabilized = up_rec;
    }
    if stabilized > down_rec {
        stabilized = down_rec;
    }
    // Scaling policies and bounds.
    let desired = rate_limited(now, current, stabilized, state, cfg);
    let reason = if desired > current {
        format!("scale up: metric wants {raw}, stabilized {stabilized}, policies allow {desired}")
    } else if desired < current {
        format!("scale down: metric wants {raw}, stabilized {stabilized}, policies allow {desired}")
    } else {
        format!("hold: metric wants {raw}, stabilized {stabilized}")
    };
    if desired > current {
        state.up_events.push((now, desired - current));
    } else if desired < current {
        state.down_events.push((now, current - desired));
    }
    let longest = cfg
        .scale_up
        .policies
        .iter()
        .chain(&cfg.scale_down.policies)
        .map(|p| p.period_s)
        .fold(0.0, f64::max);
    state.up_events.retain(|&(t, _)| t > now - longest);
    state.down_events.retain(|&(t, _)| t > now - longest);
    Decision::new(desired, reason)
}

fn changed_in(events: &[(f64, u32)], now: f64, period: f64) -> i64 {
    events
        .iter()
        .filter(|&&(t, _)| t > now - period)
        .map(|&(_, d)| i64::from(d))
        .sum()
}

fn rate_limited(now: f64, current: u32, desired: u32, state: &HpaState, cfg: &HpaConfig) -> u32 {
    let b = cfg.bounds;
    let cur = i64::from(current);
    let d = if desired > current {
        let rules = &cfg.scale_up;
        let limit = match rules.select_policy {
            Select::Disabled => cur,
            sel => {
                let mut limit: Option<i64> = None;
                for p in &rules.policies {
                    let start = cur - changed_in(&state.up_events, now, p.period_s)
                        + changed_in(&state.down_events, now, p.period_s);
                    let proposed = match p.kind {
                        PolicyType::Pods => start + i64::from(p.value),
                        PolicyType::Percent => {
                            (start as f64 * (1.0 + f64::from(p.value) / 100.0)).ceil() as i64
                        }
                    };
                    limit = Some(match (limit, sel) {
                        (None, _) => proposed,
                        (Some(l), Select::Min) => l.min(proposed),
                        (Some(l), _) => l.max(proposed),
                    });
                }
                limit.unwrap_or(cur)
            }
        };
        let limit = limit.max(cur).min(i64::from(b.max_replicas));
        i64::from(desired).min(limit)
    } else if desired < current {
        let rules = &cfg.scale_down;
        let limit = match rules.select_policy {
            Select::Disabled => cur,
            sel => {
                let mut limit: Option<i64> = None;
                for p in &rules.policies {
                    let start = cur - changed_in(&state.up_events, now, p.period_s)
                        + changed_in(&state.down_events, now, p.period_s);
                    let proposed = match p.kind {
                        PolicyType::Pods => start - i64::from(p.value),
                        // truncated, as the controller does: 72 × 0.9 = 64.8 → 64
                        PolicyType::Percent => {
                            (start as f64 * (1.0 - f64::from(p.value) / 100.0)) as i64
                        }
                    };
                    limit = Some(match (limit, sel) {
                        (None, _) => proposed,
                        // for scale-down the smallest change is the highest count
                        (Some(l), Select::Min) => l.max(proposed),
                        (Some(l), _) => l.min(proposed),
                    });
                }
                limit.unwrap_or(cur)
            }
        };
        let limit = limit.min(cur).max(i64::from(b.min_replicas));
        i64::from(desired).max(limit)
    } else {
        cur
    };
    b.clamp(d.max(0) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PodSample;

    fn obs(now: f64, current: u32, util: f64) -> Observation {
        Observation {
            now,
            current,
            ready: current,
            pods: vec![
                PodSample {
                    ready: true,
                    utilization: Some(util),
                    concurrency: None
                };
                current as usize
            ],
            elapsed: 15.0,
            ..Observation::default()
        }
    }

    fn util_hpa(min: u32, max: u32) -> HpaConfig {
        HpaConfig::with_metric(
            HpaMetric::Utilization { target: 0.5 },
            Bounds {
                min_replicas: min,
                max_replicas: max,
            },
        )
    }

    #[test]
    fn the_documented_algorithm_and_tolerance() {
        // Docs: current 200m, target 100m → double; current 50m → halve.
        let cfg = util_hpa(1, 100);
        assert_eq!(metric_recommendation(&obs(0.0, 4, 1.0), &cfg), Some(8));
        assert_eq!(metric_recommendation(&obs(0.0, 4, 0.25), &cfg), Some(2));
        // Within 10 %: nothing happens (ratio 1.08 and 0.92)
        assert_eq!(metric_recommendation(&obs(0.0, 10, 0.54), &cfg), Some(10));
        assert_eq!(metric_recommendation(&obs(0.0, 10, 0.46), &cfg), Some(10));
        // just outside: 1.12 × 10 → 12
        assert_eq!(metric_recommendation(&obs(0.0, 10, 0.56), &cfg), Some(12));
    }

    #[test]
    fn documented_percent_scale_down_80_72_64() {
        // Docs (configurable scaling behavior): 80 replicas, scale down to 10 with
        // "Percent 10 per 60 s": first step removes 8 (→ 72); next, 10 % of 72 is 7.2,
        // rounded up to 8 (→ 64).
        let mut cfg = util_hpa(1, 100);
        cfg.scale_down = Rules {
            stabilization_window_s: 0.0,
            select_policy: Select::Max,
            policies: vec![ScalingPolicy {
                kind: PolicyType::Percent,
                value: 10,
                period_s: 60.0,
            }],
        };
        let mut s = HpaState::default();
        // 80 pods at 1/8 of target → metric wants 10
        let mut current = 80;
        let mut seen = vec![];
        for tick in 0..17 {
            let t = f64::from(tick) * 15.0;
            let d = decide(&obs(t, current, 0.5 / 8.0), &mut s, &cfg);
            if d.replicas != current {
                seen.push((t, d.replicas));
            }
            current = d.replicas;
        }
        assert_eq!(seen[..4], [(0.0, 72), (60.0, 64), (120.0, 57), (180.0, 51)]);
    }

    #[test]
    fn default_behaviour_scales_up_by_max_of_4_pods_and_100_percent() {
        let cfg = util_hpa(1, 100);
        let mut s = HpaState::default();
        // 1 pod at 10× target → wants 10; policies allow max(1+4, 2) = 5 per 15 s
        let d = decide(&obs(0.0, 1, 5.0), &mut s, &cfg);
        assert_eq!(d.replicas, 5);
        // 5 pods at 2× → wants 10; 15 s later a new period: max(5+4, 10) = 10
        let d = decide(&obs(15.0, 5, 1.0), &mut s, &cfg);
        assert_eq!(d.replicas, 10);
        // max bound
        let cfg = util_hpa(1, 7);
        let mut s = HpaState::default();
        assert_eq!(decide(&obs(0.0, 4, 5.0), &mut s, &cfg).replicas, 7);
    }

    #[test]
    fn default_scale_down_waits_for_the_300_s_window() {
        let cfg = util_hpa(2, 100);
        let mut s = HpaState::default();
        assert_eq!(decide(&obs(0.0, 8, 0.5), &mut s, &cfg).replicas, 8);
        // load falls to a quarter: the window still holds the 8 recommendation
        let mut t = 15.0;
        while t < 300.0 {
            assert_eq!(
                decide(&obs(t, 8, 0.125), &mut s, &cfg).replicas,
                8,
                "at {t}"
            );
            t += 15.0;
        }
        // the 8 left the window: 100 % per 15 s allows going to the min bound at once
        assert_eq!(decide(&obs(300.0, 8, 0.125), &mut s, &cfg).replicas, 2);
        // min bound: zero load never goes below 2
        assert_eq!(decide(&obs(315.0, 2, 0.0), &mut s, &cfg).replicas, 2);
    }

    #[test]
    fn select_policy_min_and_disabled() {
        let mut cfg = util_hpa(1, 100);
        cfg.scale_up.select_policy = Select::Min;
        let mut s = HpaState::default();
        // min(1+4, ceil(1×2)) = 2
        assert_eq!(decide(&obs(0.0, 1, 5.0), &mut s, &cfg).replicas, 2);
        cfg.scale_up.select_policy = Select::Disabled;
        let mut s = HpaState::default();
        assert_eq!(decide(&obs(0.0, 1, 5.0), &mut s, &cfg).replicas, 1);
    }

    #[test]
    fn missing_metrics_are_counted_against_the_move() {
        let cfg = util_hpa(1, 100);
        // 4 pods: 2 report 2× target, 2 report nothing → scale up with missing at 0:
        // ratio (1+1+0+0)/4/0.5 = 1.0 → within tolerance: hold
        let mut o = obs(0.0, 4, 1.0);
        o.pods[2].utilization = None;
        o.pods[3].utilization = None;
        assert_eq!(metric_recommendation(&o, &cfg), Some(4));
        // 2 report 0.1 (scale down), 2 missing assumed at target: (0.1+0.1+0.5+0.5)/4/0.5 = 0.6
        let mut o = obs(0.0, 4, 0.1);
        o.pods[2].utilization = None;
        o.pods[3].utilization = None;
        assert_eq!(metric_recommendation(&o, &cfg), Some(3));
        // unready pods count as 0 when scaling up: 2 ready at 1.5 (ratio 3), 2 starting:
        // (1.5+1.5)/4/0.5 = 1.5 → 6
        let mut o = obs(0.0, 4, 1.5);
        o.pods[2].ready = false;
        o.pods[3].ready = false;
        assert_eq!(metric_recommendation(&o, &cfg), Some(6));
        // no metric at all: keep the count
        let mut o = obs(0.0, 3, 1.0);
        for p in &mut o.pods {
            p.utilization = None;
        }
        let d = decide(&o, &mut HpaState::default(), &cfg);
        assert_eq!(d.replicas, 3);
        assert!(d.reason.contains("no metrics"));
    }

    #[test]
    fn external_rps_metric() {
        let cfg = HpaConfig::with_metric(
            HpaMetric::RequestsPerSecond { target: 10.0 },
            Bounds::default(),
        );
        let mut o = obs(0.0, 2, 0.0);
        o.arrivals = 15 * 95; // 95 req/s over 15 s
        assert_eq!(metric_recommendation(&o, &cfg), Some(10));
        o.arrivals = 0;
        // zero load: the min bound (1)
        assert_eq!(decide(&o, &mut HpaState::default(), &cfg).replicas, 2); // window holds 2
        let mut c = cfg;
        c.scale_down.stabilization_window_s = 0.0;
        assert_eq!(decide(&o, &mut HpaState::default(), &c).replicas, 1);
    }
}

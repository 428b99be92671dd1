//! Sluice's SLO-aware policy: size the replicas from what one replica can answer
//! within the objective, for the traffic's envelope, not from a utilization target.
//!
//! 1. Capacity: the profile's batch size of highest throughput whose runs leave a
//!    request inside the objective (`2 × p99(b) ≤ slo`); `slack = slo − 2 × p99(b)` is
//!    the queueing time a request may still spend.
//! 2. Envelope (InferLine's tuner): over the last `history_s`, for each window `w` in
//!    `windows_s`, the largest number of arrivals in any `w`-long span. `n` replicas
//!    answer a burst of `A_w` arrivals in time when `A_w ≤ n × capacity × (w + slack)`
//!    — a burst may queue as long as it drains within the slack. The short windows
//!    catch bursts, the long ones sustained load; the need is the largest. The queue
//!    present now must also drain within the slack.
//! 3. Cost term: above that need, one more replica is added while the misses it saves
//!    (Erlang-C estimate of P(wait > slack) at the envelope's peak rate, times
//!    `miss_penalty` per miss) are worth more than its price per hour.
//! 4. Up at once; down only to the highest need seen over `scale_down_window_s`.
//!
//! Defaults (600-s history, 300-s scale-down window) are those that reached 0.99
//! attainment on the diurnal, bursty and step traces of `BENCHMARKS.md` with a
//! 3.5-s cold start: a shorter history forgets the last burst before the next one.

use serde::{Deserialize, Serialize};

use super::{Bounds, Decision, Observation, Window};
use crate::profile::Profile;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    #[serde(flatten)]
    pub bounds: Bounds,
    #[serde(default = "interval")]
    pub interval_s: f64,
    /// Envelope windows (seconds).
    #[serde(default = "windows")]
    pub windows_s: Vec<f64>,
    /// How far back the envelope looks.
    #[serde(default = "history")]
    pub history_s: f64,
    #[serde(default = "down_window")]
    pub scale_down_window_s: f64,
    /// Fraction of a replica's measured throughput the plan may use.
    #[serde(default = "headroom")]
    pub max_utilization: f64,
    /// Dollars one request answered late costs (0: no cost term).
    #[serde(default = "penalty")]
    pub miss_penalty: f64,
    /// Price of a replica per hour (default: the profile's).
    #[serde(default)]
    pub cost_per_hour: Option<f64>,
}

fn interval() -> f64 {
    1.0
}
fn windows() -> Vec<f64> {
    vec![1.0, 5.0, 30.0, 60.0]
}
fn history() -> f64 {
    600.0
}
fn down_window() -> f64 {
    300.0
}
fn headroom() -> f64 {
    0.85
}
fn penalty() -> f64 {
    1e-4
}

impl Default for SloConfig {
    fn default() -> SloConfig {
        SloConfig {
            bounds: Bounds::default(),
            interval_s: interval(),
            windows_s: windows(),
            history_s: history(),
            scale_down_window_s: down_window(),
            max_utilization: headroom(),
            miss_penalty: penalty(),
            cost_per_hour: None,
        }
    }
}

/// The policy bound to a profile and an objective.
#[derive(Debug, Clone, PartialEq)]
pub struct SloParams {
    pub bounds: Bounds,
    pub interval_s: f64,
    pub windows_s: Vec<f64>,
    pub history_s: f64,
    pub scale_down_window_s: f64,
    /// Requests per second a replica answers at the chosen batch size (measured).
    pub throughput: f64,
    /// `throughput × max_utilization`.
    pub capacity: f64,
    pub batch_size: u32,
    pub slack_s: f64,
    pub miss_penalty: f64,
    pub cost_per_hour: f64,
}

impl SloConfig {
    pub fn resolve(&self, profile: &Profile, slo_s: f64) -> Result<SloParams> {
        let (b, thr) = profile.best_batch(slo_s).ok_or_else(|| {
            Error::Config(format!(
                "{}: no batch size meets the {:.1} ms objective",
                profile.hardware_class,
                slo_s * 1e3
            ))
        })?;
        if self.windows_s.is_empty() || self.windows_s.iter().any(|w| !(w.is_finite() && *w > 0.0))
        {
            return Err(Error::Config(
                "slo policy: windows_s must be positive".into(),
            ));
        }
        if !(self.max_utilization > 0.0 && self.max_utilization <= 1.0) {
            return Err(Error::Config(
                "slo policy: max_utilization must be in (0, 1]".into(),
            ));
        }
        Ok(SloParams {
            bounds: self.bounds,
            interval_s: self.interval_s,
            windows_s: self.windows_s.clone(),
            history_s: self
                .history_s
                .max(self.windows_s.iter().copied().fold(0.0, f64::max)),
            scale_down_window_s: self.scale_down_window_s,
            throughput: thr,
            capacity: thr * self.max_utilization,
            batch_size: b,
            slack_s: slo_s - 2.0 * profile.p99_s(b),
            miss_penalty: self.miss_penalty,
            cost_per_hour: self.cost_per_hour.or(profile.cost_per_hour).unwrap_or(0.0),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SloState {
    /// (tick time, arrivals in the tick)
    arrivals: std::collections::VecDeque<(f64, u64)>,
    needs: Window,
    /// The last computed need (what `sluice_replicas_needed` exports).
    pub last_need: u32,
}

/// Erlang C: probability that an arrival waits, `c` servers, offered load `a = λ/μ`.
pub fn erlang_c(c: u32, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    if a >= f64::from(c) {
        return 1.0;
    }
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    let c = f64::from(c);
    c * b / (c - a * (1.0 - b))
}

/// P(wait > t) in M/M/c with rate `lambda`, per-server rate `mu`.
pub fn p_wait_exceeds(c: u32, lambda: f64, mu: f64, t: f64) -> f64 {
    let a = lambda / mu;
    if a >= f64::from(c) {
        return 1.0;
    }
    erlang_c(c, a) * (-(f64::from(c) * mu - lambda) * t).exp()
}

/// The envelope: per window, the most arrivals in any span of that length (spans
/// end at tick boundaries).
fn envelope(arrivals: &std::collections::VecDeque<(f64, u64)>, windows: &[f64]) -> Vec<(f64, u64)> {
    windows
        .iter()
        .map(|&w| {
            let mut best = 0;
            let mut sum = 0;
            let mut lo = 0;
            for hi in 0..arrivals.len() {
                sum += arrivals[hi].1;
                // a tick at time t covers (t - interval, t]; keep ticks with t > t_hi - w
                while arrivals[lo].0 <= arrivals[hi].0 - w + 1e-9 {
                    sum -= arrivals[lo].1;
                    lo += 1;
                }
                best = best.max(sum);
            }
            (w, best)
        })
        .collect()
}

/// Records one tick's arrivals and forgets those that left the history.
pub fn observe(obs: &Observation, state: &mut SloState, p: &SloParams) {
    state.arrivals.push_back((obs.now, obs.arrivals));
    while state
        .arrivals
        .front()
        .is_some_and(|&(t, _)| t <= obs.now - p.history_s)
    {
        state.arrivals.pop_front();
    }
}

/// The envelope of the arrivals observed so far: per window of `p.windows_s`, the most
/// arrivals in any span of that length.
pub fn current_envelope(state: &SloState, p: &SloParams) -> Vec<(f64, u64)> {
    envelope(&state.arrivals, &p.windows_s)
}

/// The replicas the observed traffic needs *before rounding up* and without the cost
/// term: the largest over the envelope's windows of `A_w / (capacity × (w + slack))`
/// (a window shorter than the tick counts as the tick), and the queue that must drain
/// within the slack. A sum of these over replicas that share a fleet's traffic,
/// rounded up, is the fleet's need (what the server exports as
/// `sluice_replicas_needed`).
pub fn demand(obs: &Observation, state: &SloState, p: &SloParams) -> (f64, String) {
    let tick = obs.elapsed.max(1e-9);
    let mut need = 0.0f64;
    let mut why = String::from("idle");
    for (w, count) in current_envelope(state, p) {
        let w = w.max(tick);
        let n = count as f64 / (p.capacity * (w + p.slack_s.max(0.0)));
        if n > need {
            need = n;
            why = format!("{count} arrivals in {w:.0} s");
        }
    }
    let backlog = obs.queued as f64 / (p.throughput * p.slack_s.max(tick));
    if backlog > need {
        need = backlog;
        why = format!("queue of {} must drain within the slack", obs.queued);
    }
    (need, why)
}

/// The replica count the traffic seen so far needs (no hysteresis).
pub fn need(obs: &Observation, state: &mut SloState, p: &SloParams) -> (u32, String) {
    observe(obs, state, p);
    let tick = obs.elapsed.max(1e-9);
    let (fraction, mut why) = demand(obs, state, p);
    let mut need = fraction.ceil() as u32;
    let mut peak_rate: f64 = 0.0;
    for (w, count) in current_envelope(state, p) {
        peak_rate = peak_rate.max(count as f64 / w.max(tick));
    }
    // Cost term: add replicas while the misses one saves cost more than it does.
    if p.miss_penalty > 0.0 && peak_rate > 0.0 {
        let mut n = need.max(1);
        while n < p.bounds.max_replicas {
            let saved = p_wait_exceeds(n, peak_rate, p.throughput, p.slack_s)
                - p_wait_exceeds(n + 1, peak_rate, p.throughput, p.slack_s);
            if saved * peak_rate * 3600.0 * p.miss_penalty <= p.cost_per_hour {
                break;
            }
            n += 1;
        }
        if n > need {
            why = format!("{why}; +{} for the cost of misses", n - need);
            need = n;
        }
    }
    state.last_need = need;
    (need, why)
}

pub fn decide(obs: &Observation, state: &mut SloState, p: &SloParams) -> Decision {
    let (n, why) = need(obs, state, p);
    state
        .needs
        .push(obs.now, f64::from(n), p.scale_down_window_s);
    let desired = if n >= obs.current {
        n
    } else {
        (state
            .needs
            .max(obs.now, p.scale_down_window_s)
            .unwrap_or(0.0) as u32)
            .min(obs.current)
    };
    Decision::new(p.bounds.clamp(desired), format!("need {n}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{test_profile, ServiceModel};

    fn params(penalty: f64) -> SloParams {
        // 5 ms at batch 1 (200/s), 20 ms at batch 8 (400/s); objective 100 ms → batch 8,
        // slack 60 ms; capacity 400 × 0.85 = 340/s
        let prof = test_profile(
            "c",
            1.0,
            &[(1, 5.0), (8, 20.0)],
            ServiceModel::Deterministic,
        );
        let cfg = SloConfig {
            miss_penalty: penalty,
            ..SloConfig::default()
        };
        cfg.resolve(&prof, 0.1).unwrap()
    }

    fn tick(now: f64, current: u32, arrivals: u64) -> Observation {
        Observation {
            now,
            current,
            ready: current,
            arrivals,
            elapsed: 1.0,
            ..Observation::default()
        }
    }

    #[test]
    fn capacity_comes_from_the_best_batch_within_the_objective() {
        let p = params(0.0);
        assert_eq!(p.batch_size, 8);
        assert!((p.throughput - 400.0).abs() < 1e-9 && (p.capacity - 340.0).abs() < 1e-9);
        assert!((p.slack_s - 0.06).abs() < 1e-12);
    }

    #[test]
    fn a_one_second_burst_scales_up_at_once_and_down_after_the_window() {
        let p = params(0.0);
        let mut s = SloState::default();
        // steady 300/s: 1 replica (300 ≤ 340 × 1.06)
        let mut t = 1.0;
        for _ in 0..60 {
            assert_eq!(decide(&tick(t, 1, 300), &mut s, &p).replicas, 1);
            t += 1.0;
        }
        // one second of 1000: ceil(1000 / (340 × 1.06)) = 3, at once
        let d = decide(&tick(t, 1, 1000), &mut s, &p);
        assert_eq!(d.replicas, 3, "{}", d.reason);
        t += 1.0;
        // back to 300/s: the 1-s envelope still holds the burst for the 600-s history,
        // then the need is 1, but the count stays until 300 s after that
        let burst = t - 1.0;
        let mut down_at = None;
        let mut current = 3;
        while t < burst + 1000.0 {
            let d = decide(&tick(t, current, 300), &mut s, &p);
            if d.replicas < current && down_at.is_none() {
                down_at = Some(t - burst);
            }
            current = d.replicas;
            t += 1.0;
        }
        assert_eq!(current, 1);
        // the last tick whose envelope holds the burst is +599 s (it leaves the 600-s
        // history at +600 s); that need leaves the 300-s scale-down window at +899 s
        assert_eq!(down_at, Some(899.0));
    }

    #[test]
    fn sustained_load_uses_the_long_windows_and_zero_load_the_minimum() {
        let p = params(0.0);
        let mut s = SloState::default();
        let mut d = Decision::new(0, "");
        for i in 1..=60 {
            d = decide(&tick(f64::from(i), 5, 1000), &mut s, &p);
        }
        // 60 000 in 60 s → ceil(60000 / (340 × 60.06)) = 3
        assert_eq!(d.replicas, 3, "{}", d.reason);
        let mut s = SloState::default();
        assert_eq!(decide(&tick(1.0, 1, 0), &mut s, &p).replicas, 1);
        let p2 = SloParams {
            bounds: Bounds {
                min_replicas: 2,
                max_replicas: 4,
            },
            ..p
        };
        assert_eq!(
            decide(&tick(1.0, 2, 0), &mut SloState::default(), &p2).replicas,
            2
        );
        assert_eq!(
            decide(&tick(1.0, 2, 100_000), &mut SloState::default(), &p2).replicas,
            4
        );
    }

    #[test]
    fn demand_is_the_need_before_rounding_up() {
        let p = params(0.0);
        let mut s = SloState::default();
        let obs = tick(1.0, 1, 1000);
        observe(&obs, &mut s, &p);
        // 1000 in the 1-s window: 1000 / (340 × 1.06)
        let (d, why) = demand(&obs, &s, &p);
        assert!((d - 1000.0 / (340.0 * 1.06)).abs() < 1e-9, "{d}");
        assert!(why.contains("1000 arrivals in 1 s"), "{why}");
        assert_eq!(
            current_envelope(&s, &p),
            vec![(1.0, 1000), (5.0, 1000), (30.0, 1000), (60.0, 1000)]
        );
        let mut s2 = SloState::default();
        assert_eq!(need(&obs, &mut s2, &p).0, d.ceil() as u32);
    }

    #[test]
    fn erlang_c_matches_known_values() {
        // M/M/1: P(wait) = ρ
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        // c = 2, a = 1: C = 1/3
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(erlang_c(3, 3.0), 1.0);
    }

    #[test]
    fn the_cost_term_adds_replicas_only_when_misses_cost_more() {
        // 330/s on one replica is inside the envelope (1 replica), but close to the
        // measured 400/s: with an expensive miss the policy buys a second replica.
        let cheap = params(0.0);
        let dear = params(0.01);
        let mut s = SloState::default();
        assert_eq!(decide(&tick(1.0, 1, 330), &mut s, &cheap).replicas, 1);
        let mut s = SloState::default();
        let d = decide(&tick(1.0, 1, 330), &mut s, &dear);
        assert_eq!(d.replicas, 2, "{}", d.reason);
        assert!(d.reason.contains("cost of misses"));
    }
}

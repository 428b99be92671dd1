//! The scenarios: MLPerf's four (SingleStream, MultiStream, Server, Offline), the
//! Server peak search, and the two sweeps, each a sequence of closed- or open-loop runs.

use std::time::Duration;

use serde::Serialize;

use crate::peak::PeakSearch;
use crate::run::{closed_loop_paced, open_loop, Outcome, Phase, Progress, Target};
use crate::schedule::poisson;
use crate::stats::Summary;

/// What to run.
#[derive(Debug, Clone)]
pub enum Scenario {
    /// One query at a time; the metric is the 90th percentile latency.
    SingleStream,
    /// One query of N samples at a time; the metric is the 99th percentile latency.
    MultiStream { samples_per_query: usize },
    /// Poisson arrivals at `qps`; valid when p99 <= `bound`.
    Server { qps: f64, bound: Duration },
    /// The highest Poisson rate whose p99 meets `bound`, starting from `start`.
    ServerPeak {
        start: f64,
        bound: Duration,
        tolerance: f64,
    },
    /// As many samples as `concurrency` clients get through; the metric is samples/s.
    Offline { concurrency: usize },
    /// Closed loop at each concurrency.
    ConcurrencySweep { levels: Vec<usize> },
    /// Open loop (Poisson) at each rate.
    RateSweep {
        rates: Vec<f64>,
        bound: Option<Duration>,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::SingleStream => "SingleStream",
            Scenario::MultiStream { .. } => "MultiStream",
            Scenario::Server { .. } => "Server",
            Scenario::ServerPeak { .. } => "Server (find peak)",
            Scenario::Offline { .. } => "Offline",
            Scenario::ConcurrencySweep { .. } => "concurrency sweep",
            Scenario::RateSweep { .. } => "rate sweep",
        }
    }

    /// Whether the result is a curve worth plotting.
    pub fn is_sweep(&self) -> bool {
        matches!(
            self,
            Scenario::ConcurrencySweep { .. }
                | Scenario::RateSweep { .. }
                | Scenario::ServerPeak { .. }
        )
    }
}

/// Run settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    pub phase: Phase,
    pub seed: u64,
    pub max_in_flight: usize,
    /// Open loop: the measured span grows until at least this many queries are due.
    pub min_queries: u64,
    pub progress: bool,
    /// Closed loop: each client's mean pause after an answer (exponential, seeded).
    pub think: Option<Duration>,
}

/// One run of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_qps: Option<f64>,
    /// Open loop: queries scheduled per second in the measured window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_qps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meets_bound: Option<bool>,
    #[serde(flatten)]
    pub summary: Summary,
}

/// The scenario's one number.
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// For bounded scenarios: whether the bound was met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
}

fn result(label: String, o: &Outcome) -> RunResult {
    RunResult {
        label,
        concurrency: None,
        target_qps: None,
        scheduled_qps: None,
        meets_bound: None,
        summary: o.recorder.summary(o.elapsed),
    }
}

async fn closed(
    target: &Target,
    s: &Settings,
    workers: usize,
    label: String,
) -> anyhow::Result<RunResult> {
    let progress = Progress::new(s.progress, &label, s.phase.warmup + s.phase.duration);
    let think = s.think.map(|mean| (mean, s.seed));
    let o = closed_loop_paced(target, workers, s.phase, think, &progress).await?;
    let mut r = result(label, &o);
    r.concurrency = Some(workers);
    Ok(r)
}

async fn poisson_run(
    target: &Target,
    s: &Settings,
    qps: f64,
    bound: Option<Duration>,
) -> anyhow::Result<RunResult> {
    let label = format!("poisson {qps:.1}/s");
    let duration = s
        .phase
        .duration
        .max(Duration::from_secs_f64(s.min_queries as f64 / qps));
    let span = s.phase.warmup + duration;
    let progress = Progress::new(s.progress, &label, span);
    let schedule = poisson(qps, span, s.seed);
    let o = open_loop(target, schedule, s.phase.warmup, s.max_in_flight, &progress).await?;
    let mut r = result(label, &o);
    r.target_qps = Some(qps);
    r.scheduled_qps = Some(o.scheduled as f64 / duration.as_secs_f64());
    r.meets_bound = bound.map(|b| meets(&r, b));
    Ok(r)
}

/// A bounded run passes when its p99 is within the bound and nothing failed.
fn meets(r: &RunResult, bound: Duration) -> bool {
    r.summary.errors == 0
        && r.summary.requests > 0
        && r.summary.latency_ms.p99 <= bound.as_secs_f64() * 1e3
}

/// Runs `scenario`; returns every run and the headline.
pub async fn run(
    scenario: &Scenario,
    target: &Target,
    s: &Settings,
) -> anyhow::Result<(Vec<RunResult>, Headline)> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(match scenario {
        Scenario::SingleStream => {
            let r = closed(target, s, 1, "single stream".into()).await?;
            let h = Headline {
                metric: "90th percentile latency".into(),
                value: r.summary.latency_ms.p90,
                unit: "ms".into(),
                valid: None,
            };
            (vec![r], h)
        }
        Scenario::MultiStream { samples_per_query } => {
            let r = closed(target, s, 1, format!("multi stream x{samples_per_query}")).await?;
            let h = Headline {
                metric: "99th percentile latency".into(),
                value: r.summary.latency_ms.p99,
                unit: "ms".into(),
                valid: None,
            };
            (vec![r], h)
        }
        Scenario::Server { qps, bound } => {
            let r = poisson_run(target, s, *qps, Some(*bound)).await?;
            let h = Headline {
                metric: format!("99th percentile latency (bound {:.3} ms)", ms(*bound)),
                value: r.summary.latency_ms.p99,
                unit: "ms".into(),
                valid: r.meets_bound,
            };
            (vec![r], h)
        }
        Scenario::ServerPeak {
            start,
            bound,
            tolerance,
        } => {
            let mut search = PeakSearch::new(*start, *tolerance);
            let mut runs = Vec::new();
            while let Some(qps) = search.next() {
                let r = poisson_run(target, s, qps, Some(*bound)).await?;
                search.record(qps, r.meets_bound == Some(true));
                runs.push(r);
            }
            let peak = search.peak();
            let h = Headline {
                metric: format!("highest Poisson QPS with p99 <= {:.3} ms", ms(*bound)),
                value: peak.unwrap_or(0.0),
                unit: "queries/s".into(),
                valid: Some(peak.is_some()),
            };
            (runs, h)
        }
        Scenario::Offline { concurrency } => {
            let r = closed(target, s, *concurrency, format!("offline c{concurrency}")).await?;
            let h = Headline {
                metric: "throughput".into(),
                value: r.summary.samples_per_s,
                unit: "samples/s".into(),
                valid: None,
            };
            (vec![r], h)
        }
        Scenario::ConcurrencySweep { levels } => {
            let mut runs = Vec::new();
            for &c in levels {
                runs.push(closed(target, s, c, format!("concurrency {c}")).await?);
            }
            let best = runs
                .iter()
                .map(|r| r.summary.throughput_rps)
                .fold(0.0, f64::max);
            let h = Headline {
                metric: "highest throughput".into(),
                value: best,
                unit: "requests/s".into(),
                valid: None,
            };
            (runs, h)
        }
        Scenario::RateSweep { rates, bound } => {
            let mut runs = Vec::new();
            for &q in rates {
                runs.push(poisson_run(target, s, q, *bound).await?);
            }
            let best = runs
                .iter()
                .filter(|r| r.meets_bound != Some(false))
                .map(|r| r.summary.throughput_rps)
                .fold(0.0, f64::max);
            let h = Headline {
                metric: "highest achieved throughput".to_owned()
                    + &bound.map_or(String::new(), |b| format!(" with p99 <= {:.3} ms", ms(b))),
                value: best,
                unit: "requests/s".into(),
                valid: None,
            };
            (runs, h)
        }
    })
}

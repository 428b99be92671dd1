//! `sluice bench`: a load generator for any KServe v2 server (Sluice, Triton,
//! MLServer, a hand-made FastAPI one, ...) over HTTP JSON, HTTP binary tensors or
//! gRPC, with MLPerf's scenarios (SingleStream, MultiStream, Server with a peak
//! search, Offline), a closed-loop concurrency sweep and an open-loop rate sweep.
//!
//! Key decision: numbers worth publishing. Open-loop arrivals follow a Poisson
//! schedule computed up front from a fixed seed and latency is measured from each
//! request's *scheduled* send time, so a stalled server cannot hide its delay (no
//! coordinated omission); latencies go into HDR histograms; warm-up is excluded;
//! requests are encoded once before the clock starts. The validation against
//! MLCommons LoadGen and perf_analyzer is in `bench/` (see BENCHMARKS.md).

mod inputs;
mod peak;
mod report;
use sluice_core::rng;
mod run;
mod scenario;
mod schedule;
mod stats;
mod zipf;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::ValueEnum;
use sluice_client::{Client, ClientConfig, Protocol};

pub use inputs::{make_samples, InputPlan};
pub use peak::PeakSearch;
pub use report::{svg_plot, table, Report};
pub use rng::Rng;
pub use run::{closed_loop, closed_loop_paced, open_loop, Outcome, Phase, Progress, Query, Target};
pub use scenario::{Headline, RunResult, Scenario, Settings};
pub use schedule::poisson;
pub use stats::{Latency, Recorder, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    HttpJson,
    HttpBinary,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    SingleStream,
    MultiStream,
    Server,
    Offline,
    ConcurrencySweep,
    RateSweep,
}

/// Load a KServe v2 server and measure it (MLPerf scenarios, sweeps).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server address: `host:port` or `http://host:port` (the gRPC port for `--protocol grpc`).
    #[arg(long, short = 'u', default_value = "127.0.0.1:8000")]
    pub url: String,

    /// How requests travel.
    #[arg(long, value_enum, default_value_t = ProtocolArg::HttpBinary)]
    pub protocol: ProtocolArg,

    /// Model to load.
    #[arg(long, short = 'm')]
    pub model: String,

    /// Model version (default: the server picks).
    #[arg(long)]
    pub model_version: Option<String>,

    /// Scenario (default: single-stream, or the sweep a `--*-range` asks for).
    #[arg(long, value_enum)]
    pub scenario: Option<ScenarioArg>,

    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of load before each run's measurement starts (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Seed of the arrival schedule and the random inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Rows per request, for models whose inputs start with a variable batch dimension.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,

    /// Shape of an input with variable dimensions: `NAME=D0,D1,...` (repeatable).
    #[arg(long = "shape", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,

    /// Send an input's data from a `.npy` file, shape included: `NAME=FILE` (repeatable).
    #[arg(long = "input", value_parser = parse_file)]
    pub inputs: Vec<(String, PathBuf)>,

    /// Distinct random requests to rotate through.
    #[arg(long, default_value_t = 16)]
    pub distinct_inputs: usize,

    /// Send the distinct requests in a Zipf-distributed order with this exponent
    /// (1.0: the k-th most popular is sent 1/k as often as the first) instead of in
    /// rotation; for response-cache benchmarks.
    #[arg(long)]
    pub zipf: Option<f64>,

    /// MultiStream: samples per query (one request of N rows when the model batches,
    /// else N batch-1 requests at once).
    #[arg(long, default_value_t = 8)]
    pub samples_per_query: usize,

    /// Closed-loop scenarios (single-stream, concurrency): each client pauses after
    /// every answer for an exponentially distributed time of this mean, so requests
    /// meet an idle server and never queue behind each other (latency as a lightly
    /// loaded replica serves it; throughput then counts the pauses).
    #[arg(long)]
    pub think_ms: Option<f64>,

    /// Server: Poisson arrival rate (queries/s); with `--find-peak`, where the search starts.
    #[arg(long)]
    pub target_qps: Option<f64>,

    /// Server and rate sweep: the p99 latency bound in milliseconds.
    #[arg(long)]
    pub latency_bound_ms: Option<f64>,

    /// Server: search for the highest rate whose p99 meets the bound (as LoadGen's
    /// FindPeakPerformance mode).
    #[arg(long)]
    pub find_peak: bool,

    /// `--find-peak` stops when the passing and failing rates are this close (relative).
    #[arg(long, default_value_t = 0.05)]
    pub peak_tolerance: f64,

    /// Offline: clients sending requests back to back.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,

    /// Closed-loop sweep over concurrencies `START:END[:STEP]`.
    #[arg(long)]
    pub concurrency_range: Option<String>,

    /// Open-loop sweep over Poisson rates `START:END[:STEP]` (queries/s).
    #[arg(long)]
    pub rate_range: Option<String>,

    /// Open loop: most requests outstanding at once (later sends wait; the wait counts
    /// in their latency).
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Open loop: measure at least this many queries per run (the run is longer than
    /// `--duration` when the rate is too low for that).
    #[arg(long, default_value_t = 64)]
    pub min_queries: u64,

    /// Seconds to wait for one answer before counting it as failed.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,

    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// Write a latency-vs-throughput SVG plot here (sweeps and `--find-peak`).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Load-generator threads (default: the CPUs this process may use).
    #[arg(long)]
    pub threads: Option<usize>,

    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s.split_once('=').ok_or("expected NAME=D0,D1,...")?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<i64>()
                .map_err(|_| format!("bad dimension {d:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if dims.iter().any(|&d| d < 0) {
        return Err("dimensions must be >= 0".into());
    }
    Ok((name.to_owned(), dims))
}

/// Parses a `NAME=FILE` flag (`sluice bench --input`, `sluice profile --input`).
pub fn parse_file(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("{s}: expected NAME=FILE.npy"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// `START:END[:STEP]` as a list (inclusive).
pub fn parse_range(s: &str) -> anyhow::Result<Vec<f64>> {
    let parts = s
        .split(':')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .with_context(|| format!("bad range {s:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (start, end, step) = match parts[..] {
        [a, b] => (a, b, 1.0),
        [a, b, c] => (a, b, c),
        _ => bail!("a range is START:END[:STEP], got {s:?}"),
    };
    ensure!(start > 0.0 && end >= start && step > 0.0, "bad range {s:?}");
    let mut out = Vec::new();
    let mut i = 0.0;
    while start + i * step <= end * (1.0 + 1e-9) {
        out.push(start + i * step);
        i += 1.0;
    }
    Ok(out)
}

impl BenchArgs {
    fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
        ensure!(v.is_finite() && v >= 0.0, "{what} must be >= 0 seconds");
        Ok(Duration::from_secs_f64(v))
    }

    /// The scenario these flags ask for, checked.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let bound = self
            .latency_bound_ms
            .map(|ms| {
                ensure!(ms > 0.0, "--latency-bound-ms must be > 0");
                Ok(Duration::from_secs_f64(ms / 1e3))
            })
            .transpose()?;
        let kind = match (self.scenario, &self.concurrency_range, &self.rate_range) {
            (Some(k), _, _) => k,
            (None, Some(_), None) => ScenarioArg::ConcurrencySweep,
            (None, None, Some(_)) => ScenarioArg::RateSweep,
            (None, None, None) => ScenarioArg::SingleStream,
            (None, Some(_), Some(_)) => bail!("give --concurrency-range or --rate-range, not both"),
        };
        Ok(match kind {
            ScenarioArg::SingleStream => Scenario::SingleStream,
            ScenarioArg::MultiStream => {
                ensure!(
                    self.samples_per_query > 0,
                    "--samples-per-query must be > 0"
                );
                Scenario::MultiStream {
                    samples_per_query: self.samples_per_query,
                }
            }
            ScenarioArg::Server => {
                let bound = bound.context("the Server scenario needs --latency-bound-ms")?;
                let qps = self
                    .target_qps
                    .context("the Server scenario needs --target-qps")?;
                ensure!(qps > 0.0, "--target-qps must be > 0");
                if self.find_peak {
                    ensure!(self.peak_tolerance > 0.0, "--peak-tolerance must be > 0");
                    Scenario::ServerPeak {
                        start: qps,
                        bound,
                        tolerance: self.peak_tolerance,
                    }
                } else {
                    Scenario::Server { qps, bound }
                }
            }
            ScenarioArg::Offline => {
                ensure!(self.concurrency > 0, "--concurrency must be > 0");
                Scenario::Offline {
                    concurrency: self.concurrency,
                }
            }
            ScenarioArg::ConcurrencySweep => {
                let r = self
                    .concurrency_range
                    .as_deref()
                    .context("a concurrency sweep needs --concurrency-range START:END[:STEP]")?;
                Scenario::ConcurrencySweep {
                    levels: parse_range(r)?.into_iter().map(|c| c as usize).collect(),
                }
            }
            ScenarioArg::RateSweep => {
                let r = self
                    .rate_range
                    .as_deref()
                    .context("a rate sweep needs --rate-range START:END[:STEP]")?;
                Scenario::RateSweep {
                    rates: parse_range(r)?,
                    bound,
                }
            }
        })
    }
}

/// `sluice bench`: runs the scenario, prints the table, writes the report and plot.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let scenario = args.scenario()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .thread_name("bench-io")
        .build()?;
    let report = runtime.block_on(bench(&args, &scenario))?;
    print!("{}", table(&report));
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, svg_plot(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let answered: u64 = report.runs.iter().map(|r| r.summary.requests).sum();
    if answered == 0 {
        let first = report
            .runs
            .iter()
            .find_map(|r| r.summary.first_error.clone());
        bail!(
            "no request succeeded{}",
            first.map_or(String::new(), |e| format!(": {e}"))
        );
    }
    Ok(())
}

/// Connects, builds the queries and runs the scenario.
pub async fn bench(args: &BenchArgs, scenario: &Scenario) -> anyhow::Result<Report> {
    let protocol = match args.protocol {
        ProtocolArg::HttpJson => Protocol::HttpJson,
        ProtocolArg::HttpBinary => Protocol::HttpBinary,
        ProtocolArg::Grpc => Protocol::Grpc,
    };
    ensure!(args.distinct_inputs > 0, "--distinct-inputs must be > 0");
    ensure!(args.batch_size > 0, "--batch-size must be > 0");
    ensure!(args.max_in_flight > 0, "--max-in-flight must be > 0");
    let config = ClientConfig {
        url: args.url.clone(),
        protocol,
        timeout: BenchArgs::secs(args.request_timeout, "--request-timeout")?,
    };
    let phase = Phase {
        warmup: BenchArgs::secs(args.warmup, "--warmup")?,
        duration: BenchArgs::secs(args.duration, "--duration")?,
    };
    ensure!(!phase.duration.is_zero(), "--duration must be > 0");
    let client = Client::connect(&config)
        .await
        .with_context(|| format!("cannot reach {}", args.url))?;
    let version = args.model_version.as_deref();
    let meta = client
        .model_metadata(&args.model, version)
        .await
        .with_context(|| format!("cannot read the metadata of model {}", args.model))?;
    let mut plan = InputPlan {
        batch_size: args.batch_size,
        shapes: args.shapes.iter().cloned().collect(),
        files: args.inputs.iter().cloned().collect(),
        seed: args.seed,
    };
    // MultiStream: a query of N samples is one request of N rows when the model
    // batches, else N batch-1 requests sent together.
    let (per_query, count) = match scenario {
        Scenario::MultiStream { samples_per_query } if inputs::batches(&meta) => {
            plan.batch_size = *samples_per_query;
            (1, args.distinct_inputs)
        }
        Scenario::MultiStream { samples_per_query } => {
            (*samples_per_query, args.distinct_inputs * samples_per_query)
        }
        _ => (1, args.distinct_inputs),
    };
    let samples = make_samples(&meta, &plan, count)?;
    let queries = samples
        .chunks(per_query)
        .map(|chunk| {
            Ok(Query {
                requests: chunk
                    .iter()
                    .map(|s| client.prepare(&args.model, version, &s.tensors))
                    .collect::<Result<_, _>>()?,
                samples: chunk.iter().map(|s| s.rows).sum(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let queries = match args.zipf {
        Some(s) if s.is_finite() && s >= 0.0 => zipf::reorder(&queries, s, args.seed),
        Some(_) => anyhow::bail!("--zipf must be a number >= 0"),
        None => queries,
    };
    // One request first: a model that cannot answer fails here with its error.
    client
        .infer(&queries[0].requests[0])
        .await
        .with_context(|| format!("model {} does not answer a first request", args.model))?;
    let target = Target {
        client: config,
        queries: Arc::new(queries),
    };
    let settings = Settings {
        phase,
        seed: args.seed,
        max_in_flight: args.max_in_flight,
        min_queries: args.min_queries,
        progress: !args.quiet,
        think: args
            .think_ms
            .map(|ms| {
                anyhow::ensure!(
                    ms.is_finite() && (0.0..=3_600_000.0).contains(&ms),
                    "--think-ms must be a number of milliseconds in 0..=3600000"
                );
                Ok(std::time::Duration::from_secs_f64(ms / 1e3))
            })
            .transpose()?
            .filter(|d| !d.is_zero()),
    };
    let (runs, result) = scenario::run(scenario, &target, &settings).await?;
    Ok(Report {
        tool: "sluice bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario: scenario.name().to_owned(),
        url: args.url.clone(),
        protocol: protocol.name().to_owned(),
        model: args.model.clone(),
        settings: serde_json::json!({
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "seed": args.seed,
            "batch_size": plan.batch_size,
            "distinct_inputs": args.distinct_inputs,
            "zipf": args.zipf,
            "samples_per_query": args.samples_per_query,
            "target_qps": args.target_qps,
            "latency_bound_ms": args.latency_bound_ms,
            "find_peak": args.find_peak,
            "peak_tolerance": args.peak_tolerance,
            "concurrency": args.concurrency,
            "concurrency_range": args.concurrency_range,
            "rate_range": args.rate_range,
            "max_in_flight": args.max_in_flight,
            "min_queries": args.min_queries,
            "inputs": meta.inputs,
        }),
        runs,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive() {
        assert_eq!(parse_range("1:4").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            parse_range("100:300:100").unwrap(),
            vec![100.0, 200.0, 300.0]
        );
        assert_eq!(parse_range("0.5:1.5:0.5").unwrap(), vec![0.5, 1.0, 1.5]);
        assert!(parse_range("4:1").is_err());
        assert!(parse_range("1:2:3:4").is_err());
        assert!(parse_range("a:b").is_err());
    }

    #[test]
    fn shapes_and_files_parse() {
        assert_eq!(parse_shape("x=1,64").unwrap(), ("x".into(), vec![1, 64]));
        assert!(parse_shape("x").is_err());
        assert!(parse_shape("x=1,-1").is_err());
        assert_eq!(parse_file("x=a.npy").unwrap().1, PathBuf::from("a.npy"));
    }
}

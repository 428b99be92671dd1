//! Shared pieces of the system benchmarks: a server (in this process, or a real
//! `sluice serve` child through `sluice-test-support`), the raw engine's own timing,
//! and load through `sluice bench`'s closed and open loops (`sluice-bench`), so these
//! figures and `sluice bench`'s come from one load generator.
#![allow(
    dead_code,
    reason = "each bench target includes this module and uses a different part of it"
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sluice_backend_tract::TractBackend;
use sluice_bench::{Outcome, Phase, Progress, Query, Recorder};
use sluice_client::{ClientConfig, InputTensor, Protocol, RequestParameters};
use sluice_core::{Backend, DataType, InstanceOptions, Tensor};
use sluice_repository::{Repository, RepositoryOptions};
use sluice_runtime::{Backends, Runtime};

/// What one measurement saw: `sluice bench`'s recorder (HDR histogram, errors by
/// kind) over its measured window.
#[derive(Debug)]
pub struct Summary(Outcome);

impl Summary {
    fn recorder(&self) -> &Recorder {
        &self.0.recorder
    }
    fn secs(&self) -> f64 {
        self.0.elapsed.as_secs_f64()
    }
    /// Items answered per second (rows: requests here are batch 1, raw engine runs
    /// carry their batch).
    pub fn per_second(&self) -> f64 {
        self.recorder().samples as f64 / self.secs()
    }
    /// Answers within `objective` per second.
    pub fn goodput(&self, objective: Duration) -> f64 {
        self.recorder().count_within(objective) as f64 / self.secs()
    }
    pub fn percentile(&self, p: f64) -> Duration {
        self.recorder().quantile(p)
    }
    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.recorder().summary(self.0.elapsed).latency_ms.mean / 1e3)
    }
    pub fn ok(&self) -> u64 {
        self.recorder().count()
    }
    /// Refused at once (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    pub fn rejected(&self) -> u64 {
        self.recorder()
            .errors_of(&["status 429", "status ResourceExhausted"])
    }
    /// Timed out in the queue (HTTP 504, gRPC `DEADLINE_EXCEEDED`).
    pub fn timeouts(&self) -> u64 {
        self.recorder()
            .errors_of(&["status 504", "status DeadlineExceeded"])
    }
    /// No answer: the connection failed or closed, or the client gave up.
    pub fn unanswered(&self) -> u64 {
        self.recorder().errors_of(&["transport", "timeout"])
    }
    /// Answered with another error than a rejection (timeouts included).
    pub fn other(&self) -> u64 {
        self.recorder().error_count() - self.rejected() - self.unanswered()
    }
    /// Every request counted (answered or not).
    pub fn total(&self) -> u64 {
        self.ok() + self.recorder().error_count()
    }
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn seconds_from_env(default: f64) -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn workspace_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Deterministic input bytes for `count` f32 elements.
pub fn f32_bytes(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|i| ((i % 17) as f32 / 17.0).to_le_bytes())
        .collect()
}

/// Loads one model of a repository on tract and times `Instance::run` at `rows`.
pub fn raw_engine(repo: &Path, model: &str, rows: usize, seconds: Duration) -> Summary {
    let source = Repository::open(repo, RepositoryOptions::default())
        .unwrap()
        .read_model(model)
        .unwrap();
    let v = &source.versions[0];
    let loaded = TractBackend::new().load(&source.load_spec(v)).unwrap();
    let mut instance = loaded
        .instance(&InstanceOptions {
            index: 0,
            intra_op_threads: 1,
        })
        .unwrap();
    let input = &source.config.input[0];
    let row: usize = input.dims.iter().map(|&d| d as usize).product();
    let mut shape = vec![rows];
    shape.extend(input.dims.iter().map(|&d| d as usize));
    let data = Bytes::from(f32_bytes(rows * row));
    let mut recorder = Recorder::default();
    let started = Instant::now();
    while started.elapsed() < seconds || recorder.count() < 3 {
        let t = Instant::now();
        let x = Tensor::new(
            input.name.clone(),
            DataType::F32,
            shape.clone(),
            data.clone(),
        )
        .unwrap();
        std::hint::black_box(instance.run(vec![x]).unwrap());
        recorder.ok(t.elapsed(), rows as u64);
    }
    Summary(Outcome {
        recorder,
        elapsed: started.elapsed(),
        scheduled: 0,
    })
}

/// Where a server listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://127.0.0.1:port`
    pub http: String,
    /// `127.0.0.1:port`
    pub grpc: String,
}

/// Starts an in-process server (HTTP and gRPC) on 127.0.0.1 over `repo`.
pub async fn start_server(repo: &Path) -> (Endpoints, Runtime) {
    let config = sluice_test_support::runtime_config(repo).build();
    let runtime = tokio::task::spawn_blocking(move || {
        Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap()
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = sluice_server::app(runtime.clone(), sluice_server::HttpConfig::default());
    tokio::spawn(sluice_server::serve(
        listener,
        router,
        4096,
        std::future::pending(),
    ));
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let service = sluice_server::grpc_service(runtime.clone(), Default::default());
    tokio::spawn(sluice_server::serve_grpc(
        grpc_listener,
        service,
        std::future::pending(),
    ));
    let endpoints = Endpoints {
        http: format!("http://{addr}"),
        grpc: grpc.to_string(),
    };
    (endpoints, runtime)
}

/// What the load sends: one batch-1 request of `dims` f32 values for one model.
#[derive(Debug, Clone)]
pub struct Load {
    pub model: String,
    pub input: &'static str,
    pub dims: &'static [usize],
    /// The request's `timeout` parameter (the server's queue timeout for it).
    pub timeout: Option<Duration>,
}

/// `sluice bench`'s target for `load` at `url`: Triton binary HTTP
/// ([`Protocol::HttpBinary`]) or gRPC `ModelInfer` with `raw_input_contents`
/// ([`Protocol::Grpc`]), encoded once.
pub async fn target(url: &str, protocol: Protocol, load: &Load) -> sluice_bench::Target {
    let client = ClientConfig {
        url: url.to_owned(),
        protocol,
        timeout: Duration::from_secs(120),
    };
    let connected = sluice_client::Client::connect(&client)
        .await
        .expect("a connection to the server");
    let mut shape = vec![1i64];
    shape.extend(load.dims.iter().map(|&d| d as i64));
    let elements: usize = load.dims.iter().product();
    let tensor = InputTensor::new(
        load.input,
        DataType::F32,
        shape,
        Bytes::from(f32_bytes(elements)),
    )
    .unwrap();
    let parameters = RequestParameters {
        timeout: load.timeout,
    };
    let request = connected
        .prepare_with(&load.model, None, &[tensor], parameters)
        .unwrap();
    sluice_bench::Target {
        client,
        queries: Arc::new(vec![Query {
            requests: vec![request],
            samples: 1,
        }]),
    }
}

/// `clients` clients, each on its own connection, each sending its next request when
/// the last one is answered (`sluice bench`'s closed loop, no warm-up).
pub async fn closed_loop(
    target: &sluice_bench::Target,
    clients: usize,
    seconds: Duration,
) -> Summary {
    let phase = Phase {
        warmup: Duration::ZERO,
        duration: seconds,
    };
    let quiet = Progress::new(false, "", seconds);
    Summary(
        sluice_bench::closed_loop(target, clients, phase, &quiet)
            .await
            .expect("closed-loop load"),
    )
}

/// Poisson arrivals at `rate` per second for `seconds` (`sluice bench`'s open loop:
/// the schedule from a fixed seed, latency from each request's scheduled time, at
/// most 1024 in flight, as wrk2 does: a request due while all are busy waits, and the
/// wait counts in its latency).
pub async fn open_loop(target: &sluice_bench::Target, rate: f64, seconds: Duration) -> Summary {
    let schedule = sluice_bench::poisson(rate, seconds, 1);
    let quiet = Progress::new(false, "", seconds);
    Summary(
        sluice_bench::open_loop(target, schedule, Duration::ZERO, 1024, &quiet)
            .await
            .expect("open-loop load"),
    )
}

/// Resident memory of a process (this one when `None`), in MiB.
pub fn rss_mib(pid: Option<u32>) -> f64 {
    sluice_runtime::process::resident_bytes(pid).map_or(0.0, |b| b as f64 / (1 << 20) as f64)
}

/// A `sluice serve` child process (killed on drop).
pub use sluice_test_support::ServerProcess;

/// Starts the real `sluice serve` on `repo`, pinned to `cpus` with `taskset` (e.g. "0"),
/// so the load generator (this process, pinned elsewhere) does not share its cores.
pub fn spawn_server(repo: &Path, cpus: &str) -> (Endpoints, ServerProcess) {
    let process = sluice_test_support::Serve::new(env!("CARGO_BIN_EXE_sluice"), repo)
        .pinned(cpus)
        .spawn();
    let endpoints = Endpoints {
        http: process.http_url(),
        grpc: process.grpc_addr(),
    };
    (endpoints, process)
}

/// `(executions, items)` of a model so far, from Triton's statistics extension
/// (`GET v2/models/{m}/stats`); their difference over a run gives its mean batch size.
pub async fn engine_counts(base: &str, model: &str) -> (u64, u64) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("{base}/v2/models/{model}/stats").parse().unwrap();
    let response = client.get(uri).await.expect("stats request");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let m = &stats["model_stats"][0];
    (
        m["execution_count"].as_u64().unwrap_or(0),
        m["inference_count"].as_u64().unwrap_or(0),
    )
}

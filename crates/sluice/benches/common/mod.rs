//! Shared pieces of the system benchmarks: an in-process server, a keep-alive HTTP
//! client sending Triton binary requests, closed- and open-loop load, percentiles.
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
use sluice_core::{Backend, DataType, InstanceOptions, Tensor};
use sluice_repository::{Repository, RepositoryOptions};
use sluice_runtime::{Backends, Runtime};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Latencies and counts of one measurement.
#[derive(Debug, Default)]
pub struct Summary {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub ok: usize,
    pub rejected: usize,
    /// Answered with another status (504: timed out in the queue).
    pub other: usize,
    /// Answered 504 (among `other`).
    pub timeouts: usize,
    /// No answer: the connection failed or closed.
    pub errors: usize,
    /// Successful answers within the latency objective.
    pub good: usize,
}

impl Summary {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn goodput(&self) -> f64 {
        self.good as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let ix = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[ix]
    }
    pub fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32
    }
    fn merge(&mut self, other: Summary) {
        self.latencies.extend(other.latencies);
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.other += other.other;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.good += other.good;
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
    let mut s = Summary::default();
    let started = Instant::now();
    while started.elapsed() < seconds || s.ok < 3 {
        let t = Instant::now();
        let x = Tensor::new(
            input.name.clone(),
            DataType::F32,
            shape.clone(),
            data.clone(),
        )
        .unwrap();
        std::hint::black_box(instance.run(vec![x]).unwrap());
        s.latencies.push(t.elapsed());
        s.ok += rows;
    }
    s.elapsed = started.elapsed();
    s
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

/// A Triton binary infer request for one batch-1 input of `elements` f32 values.
#[derive(Clone)]
pub struct BinaryRequest {
    pub url: String,
    body: Bytes,
    header_len: usize,
}

impl BinaryRequest {
    pub fn new(
        base: &str,
        model: &str,
        input: &str,
        dims: &[usize],
        timeout: Option<Duration>,
    ) -> Self {
        let elements: usize = dims.iter().product();
        let x = f32_bytes(elements);
        let mut shape = vec![1];
        shape.extend_from_slice(dims);
        let mut header = serde_json::json!({
            "inputs": [{"name": input, "shape": shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": x.len()}}],
            "parameters": {"binary_data_output": true}
        });
        if let Some(t) = timeout {
            header["parameters"]["timeout"] = serde_json::json!(t.as_micros() as u64);
        }
        let header = header.to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&x);
        BinaryRequest {
            url: format!("{base}/v2/models/{model}/infer"),
            body: Bytes::from(body),
            header_len: header.len(),
        }
    }

    /// Sends once; returns the HTTP status (0 on a transport error).
    pub async fn send(&self, client: &HttpClient) -> u16 {
        let request = hyper::Request::post(&self.url)
            .header("Inference-Header-Content-Length", self.header_len)
            .body(Full::new(self.body.clone()))
            .unwrap();
        match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                status
            }
            Err(_) => 0,
        }
    }
}

/// What a load client sends: a Triton binary HTTP request, or the same batch-1 tensor
/// as a gRPC `ModelInfer` with `raw_input_contents` (over the client's own HTTP/2
/// connection).
#[derive(Clone)]
pub enum Target {
    Http(BinaryRequest),
    Grpc {
        url: String,
        request: sluice_client::PreparedRequest,
    },
}

impl Target {
    /// The gRPC form of a batch-1 request for `model` at `url` (`host:port`).
    pub async fn grpc(url: &str, model: &str, input: &str, dims: &[usize]) -> Self {
        let client = grpc_connect(url).await;
        let mut shape = vec![1i64];
        shape.extend(dims.iter().map(|&d| d as i64));
        let elements: usize = dims.iter().product();
        let tensor = sluice_client::InputTensor::new(
            input,
            DataType::F32,
            shape,
            Bytes::from(f32_bytes(elements)),
        )
        .unwrap();
        let request = client.prepare(model, None, &[tensor]).unwrap();
        Target::Grpc {
            url: url.to_owned(),
            request,
        }
    }

    /// One client's connection (HTTP: one kept-alive connection; gRPC: its own HTTP/2
    /// connection).
    pub async fn connect(&self) -> Connection {
        match self {
            Target::Http(r) => Connection::Http(client(1), r.clone()),
            Target::Grpc { url, request } => {
                Connection::Grpc(grpc_connect(url).await, request.clone())
            }
        }
    }
}

async fn grpc_connect(url: &str) -> sluice_client::Client {
    sluice_client::Client::connect(&sluice_client::ClientConfig {
        url: url.to_owned(),
        protocol: sluice_client::Protocol::Grpc,
        timeout: Duration::from_secs(120),
    })
    .await
    .expect("gRPC connection to the server")
}

/// A connected load client.
pub enum Connection {
    Http(HttpClient, BinaryRequest),
    Grpc(sluice_client::Client, sluice_client::PreparedRequest),
}

impl Connection {
    /// Sends once; the answer as an HTTP status (gRPC codes mapped to their HTTP
    /// equivalents: `RESOURCE_EXHAUSTED` 429, `DEADLINE_EXCEEDED` 504; 0 = no answer).
    pub async fn send(&self) -> u16 {
        match self {
            Connection::Http(client, request) => request.send(client).await,
            Connection::Grpc(client, request) => match client.infer(request).await {
                Ok(_) => 200,
                Err(sluice_client::Error::Server { status, .. }) => match status.as_str() {
                    "ResourceExhausted" => 429,
                    "DeadlineExceeded" => 504,
                    _ => 500,
                },
                Err(_) => 0,
            },
        }
    }
}

pub fn client(max_idle: usize) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .build_http()
}

fn count(s: &mut Summary, status: u16, latency: Duration, objective: Duration) {
    match status {
        200 => {
            s.ok += 1;
            s.latencies.push(latency);
            if latency <= objective {
                s.good += 1;
            }
        }
        429 => s.rejected += 1,
        0 => s.errors += 1,
        504 => {
            s.timeouts += 1;
            s.other += 1;
        }
        _ => s.other += 1,
    }
}

/// `clients` clients, each on its own connection, sending the next request when the
/// last one is answered.
pub async fn closed_loop(target: &Target, clients: usize, seconds: Duration) -> Summary {
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(target.connect().await);
    }
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|connection| {
            tokio::spawn(async move {
                let mut s = Summary::default();
                while started.elapsed() < seconds {
                    let t = Instant::now();
                    let status = connection.send().await;
                    count(&mut s, status, t.elapsed(), Duration::MAX);
                }
                s
            })
        })
        .collect();
    let mut total = Summary::default();
    for t in tasks {
        total.merge(t.await.unwrap());
    }
    total.elapsed = started.elapsed();
    total
}

/// Poisson arrivals at `rate` per second (fixed seed). Latency is measured from each
/// request's scheduled send time, so a stalled server cannot hide its delay.
pub async fn open_loop(
    request: &BinaryRequest,
    rate: f64,
    seconds: Duration,
    objective: Duration,
) -> Summary {
    // At most this many requests in flight on as many kept-alive connections, as
    // wrk2 does: a request due while all are busy waits here, and that wait counts in
    // its latency (measured from its scheduled time), so nothing is hidden; without
    // the cap a flood opens a connection per request and runs out of ports.
    let connections = 1024;
    let client = client(connections);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(connections));
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let started = tokio::time::Instant::now();
    let mut at = started;
    let mut tasks = Vec::new();
    while at.duration_since(started) < seconds {
        tokio::time::sleep_until(at).await;
        let request = request.clone();
        let client = client.clone();
        let scheduled = at;
        let slots = std::sync::Arc::clone(&slots);
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let status = request.send(&client).await;
            (status, scheduled.elapsed())
        }));
        at += Duration::from_secs_f64(-(1.0 - uniform()).ln() / rate);
    }
    let mut s = Summary::default();
    for t in tasks {
        let (status, latency) = t.await.unwrap();
        count(&mut s, status, latency, objective);
    }
    s.elapsed = seconds;
    s
}

/// Resident memory of a process (this one when `None`), in MiB.
pub fn rss_mib(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |p| format!("/proc/{p}/status"),
    );
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
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
    let client = client(1);
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

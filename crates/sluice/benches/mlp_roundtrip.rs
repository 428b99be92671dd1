//! What the HTTP path costs on top of the engine: the example MLP (784-256-10) at
//! batch 1, run (a) as a raw tract call in this process and (b) as a Triton binary
//! infer request over loopback HTTP to an in-process Sluice server, with 1 client and
//! with 8 concurrent clients (keep-alive connections, one per client).
//!
//! Run: `cargo bench -p sluice --bench mlp_roundtrip` (env `BENCH_SECONDS`, default 5).
//! Client and server share this process and its cores, so read the figures as ratios.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_backend_tract::TractBackend;
use sluice_core::{Backend, DataType, InstanceOptions, LoadSpec, Tensor};
use sluice_repository::{Repository, RepositoryOptions};
use sluice_runtime::{Backends, Runtime, RuntimeConfig};

fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models")
}

fn input_bytes() -> Vec<u8> {
    (0..784)
        .flat_map(|i| ((i % 17) as f32 / 17.0).to_le_bytes())
        .collect()
}

struct Summary {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Summary {
    fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let ix = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[ix]
    }
    fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len().max(1) as u32
    }
}

fn raw_tract(seconds: Duration) -> Summary {
    let source = Repository::open(repo_root(), RepositoryOptions::default())
        .unwrap()
        .read_model("mlp")
        .unwrap();
    let v = &source.versions[0];
    let model = TractBackend
        .load(&LoadSpec {
            model_name: "mlp",
            version: v.version,
            model_file: &v.model_file,
            config: &source.config,
        })
        .unwrap();
    let mut instance = model
        .instance(&InstanceOptions {
            index: 0,
            intra_op_threads: 1,
        })
        .unwrap();
    let data = Bytes::from(input_bytes());
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < seconds {
        let t = Instant::now();
        let x = Tensor::new("input", DataType::F32, vec![1, 784], data.clone()).unwrap();
        let out = instance.run(vec![x]).unwrap();
        std::hint::black_box(out);
        latencies.push(t.elapsed());
    }
    Summary {
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

fn request_body() -> (Bytes, usize) {
    let x = input_bytes();
    let header = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&x);
    (Bytes::from(body), header.len())
}

async fn http_clients(url: String, clients: usize, seconds: Duration) -> Summary {
    let (body, header_len) = request_body();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http::<Full<Bytes>>();
            let mut latencies = Vec::new();
            while started.elapsed() < seconds {
                let t = Instant::now();
                let request = hyper::Request::post(&url)
                    .header("Inference-Header-Content-Length", header_len)
                    .body(Full::new(body.clone()))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                std::hint::black_box(bytes);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Summary {
        count: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

fn main() {
    let seconds = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let mut raw = raw_tract(seconds);

    let config = RuntimeConfig {
        repository: repo_root(),
        repository_options: RepositoryOptions::default(),
        default_backend: "tract".into(),
        intra_op_threads: 1,
        queue_capacity: 1024,
        strict_readiness: true,
    };
    let runtime = Runtime::start(config, Backends::new().with(Arc::new(TractBackend))).unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut one, mut eight) = tokio.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sluice_server::app(runtime.clone(), sluice_server::HttpConfig::default());
        tokio::spawn(sluice_server::serve(
            listener,
            router,
            std::future::pending(),
        ));
        let url = format!("http://{addr}/v2/models/mlp/infer");
        let _warmup = http_clients(url.clone(), 1, Duration::from_millis(300)).await;
        let one = http_clients(url.clone(), 1, seconds).await;
        let eight = http_clients(url, 8, seconds).await;
        (one, eight)
    });

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "MLP 784-256-10, batch 1, {}s per measurement",
        seconds.as_secs()
    );
    println!("| path | clients | req/s | mean µs | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for (name, clients, s) in [
        ("raw tract call", 1, &mut raw),
        ("HTTP binary infer", 1, &mut one),
        ("HTTP binary infer", 8, &mut eight),
    ] {
        let (p50, p99) = (s.percentile(0.5), s.percentile(0.99));
        println!(
            "| {name} | {clients} | {:.0} | {:.1} | {:.1} | {:.1} |",
            s.per_second(),
            us(s.mean()),
            us(p50),
            us(p99)
        );
    }
    println!(
        "HTTP round trip / raw call (p50, 1 client): {:.2}x; added latency {:.1} µs",
        us(one.percentile(0.5)) / us(raw.percentile(0.5)),
        us(one.percentile(0.5)) - us(raw.percentile(0.5))
    );
    println!(
        "8 clients / 1 client throughput: {:.2}x",
        eight.per_second() / one.per_second()
    );
}

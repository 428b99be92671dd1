//! `sluice`: the command line. It reads flags (each also an environment variable),
//! turns them into validated configs once, wires the tract backend into the runtime
//! and serves the KServe v2 protocol over HTTP and gRPC, from one tokio runtime,
//! until SIGINT or SIGTERM.
//!
//! Key decision: this is the only crate that reads the environment and turns on
//! engines; everything below receives explicit config structs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_runtime::{ControlMode, LifecycleConfig, Runtime, RuntimeConfig};
use sluice_server::{GrpcConfig, HttpConfig, LogControl, LogHandle, MetricsConfig};

mod autoscale;
mod engines;
mod profile;
mod ready_file;
mod repositories;
mod route;
mod security;

/// Connections the metrics port keeps open at once.
const METRICS_MAX_CONNECTIONS: usize = 64;
#[cfg(feature = "otlp")]
mod otlp;

/// Sluice: an inference server for ONNX models that speaks KServe v2 / Triton's protocol.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a model repository over HTTP and gRPC (KServe v2).
    Serve(ServeArgs),
    /// Load a KServe v2 server (Sluice or any other) and measure it: MLPerf scenarios,
    /// concurrency and rate sweeps, JSON report and plot.
    Bench(sluice_bench::BenchArgs),
    /// Replay an arrival trace against replicas described by a profile and compare
    /// autoscaling policies (HPA, KEDA, Knative, Ray Serve, INFaaS, Sluice's SLO-aware).
    Simulate(autoscale::SimulateArgs),
    /// Choose per pipeline stage the hardware classes, batch size and replicas of lowest
    /// cost whose simulated p99 meets the objective.
    Plan(autoscale::PlanArgs),
    /// Measure models of a repository in process: latency and throughput per batch
    /// size and instance count, load time and memory; writes a profile JSON the
    /// server seeds its scheduler with, a table and SVG plots.
    Profile(profile::ProfileArgs),
    /// Route KServe v2 traffic (HTTP and gRPC) to replicas by model: placement,
    /// power of two choices on predicted completion time, retries and hedged requests.
    Route(route::RouteArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    #[command(flatten)]
    repositories: repositories::RepositoryArgs,

    /// Address to listen on for HTTP.
    #[arg(long, env = "SLUICE_HTTP_ADDRESS", default_value = "0.0.0.0")]
    http_address: std::net::IpAddr,

    /// HTTP port (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "SLUICE_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// Largest accepted request body in bytes; larger ones are answered with 413.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,

    /// HTTP connections open at once; past it new connections wait in the kernel's
    /// backlog until one closes, which bounds memory under a flood (0: no limit).
    #[arg(long, env = "SLUICE_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    http_max_connections: usize,

    /// Seconds an HTTP client has to send a whole request head (request line and
    /// headers), counted from the accept and, on a keep-alive connection, from the
    /// previous response (so it is also the idle keep-alive timeout); slower or silent
    /// connections are closed and cannot hold --http-max-connections slots (0: no bound).
    #[arg(long, env = "SLUICE_HTTP_HEADER_READ_TIMEOUT", default_value_t = 30.0,
          value_parser = parse_seconds)]
    http_header_read_timeout: f64,

    /// Address to listen on for gRPC (default: the HTTP address).
    #[arg(long, env = "SLUICE_GRPC_ADDRESS")]
    grpc_address: Option<std::net::IpAddr>,

    /// gRPC port (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "SLUICE_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,

    /// Largest gRPC message accepted or sent, in bytes; larger ones are answered
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SLUICE_GRPC_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    grpc_max_message_bytes: usize,

    /// gRPC connections open at once; past it new connections wait in the kernel's
    /// backlog (0: no limit). A connection silent for --http-header-read-timeout after
    /// the accept is closed.
    #[arg(long, env = "SLUICE_GRPC_MAX_CONNECTIONS", default_value_t = 4096)]
    grpc_max_connections: usize,

    /// Calls open at once on one gRPC connection (HTTP/2 max concurrent streams).
    #[arg(long, env = "SLUICE_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    grpc_max_concurrent_streams: u32,

    /// Largest metadata (HTTP/2 header list) of one gRPC call, in bytes.
    #[arg(long, env = "SLUICE_GRPC_MAX_METADATA_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    grpc_max_metadata_bytes: u32,

    /// Milliseconds of silence before a gRPC connection is pinged (Triton's flag;
    /// 0: no pings).
    #[arg(long, env = "SLUICE_GRPC_KEEPALIVE_TIME", default_value_t = 7_200_000)]
    grpc_keepalive_time: u64,

    /// Milliseconds a pinged gRPC peer has to answer before it is disconnected
    /// (Triton's flag).
    #[arg(long, env = "SLUICE_GRPC_KEEPALIVE_TIMEOUT", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    grpc_keepalive_timeout: u64,

    /// Backend for models that do not name one (`tract` or `onnxruntime`).
    #[arg(long, env = "SLUICE_DEFAULT_BACKEND", default_value = "tract")]
    default_backend: String,

    #[command(flatten)]
    engines: engines::EngineArgs,

    #[command(flatten)]
    security: Box<security::SecurityArgs>,

    /// Threads one model instance may use for one run (a model's
    /// `intra_op_thread_count` parameter overrides it).
    #[arg(long, env = "SLUICE_INTRA_OP_THREADS", default_value_t = 1)]
    intra_op_threads: usize,

    /// Cores the models may take together (instances × intra-op threads): the
    /// budget the autoscaler shares between the models that set the
    /// `sluice_autoscale_instances` parameter (default: every core of the machine).
    #[arg(long, env = "SLUICE_CPU_BUDGET")]
    cpu_budget: Option<usize>,

    /// Milliseconds between two ticks of the autoscaler.
    #[arg(long, env = "SLUICE_AUTOSCALE_INTERVAL_MS", default_value_t = 1000)]
    autoscale_interval_ms: u64,

    /// The autoscaler's drift-plus-penalty trade-off V: the cost of one core in
    /// instances of unmet demand (higher: fewer cores, later).
    #[arg(long, env = "SLUICE_AUTOSCALE_V", default_value_t = 0.5)]
    autoscale_v: f64,

    /// Requests that may wait per model version before new ones get 429
    /// (a model's `dynamic_batching.default_queue_policy.max_queue_size` overrides it).
    #[arg(long, env = "SLUICE_QUEUE_CAPACITY", default_value_t = 1024)]
    queue_capacity: usize,

    /// `max_batch_size` given to models without a config whose tensors all start
    /// with a variable dimension (Triton's default-max-batch-size).
    #[arg(long, env = "SLUICE_DEFAULT_MAX_BATCH_SIZE", default_value_t = 4)]
    default_max_batch_size: i32,

    /// Ready only when every model in the repository is ready (Triton's default).
    #[arg(long, env = "SLUICE_STRICT_READINESS", default_value_t = true, action = clap::ArgAction::Set)]
    strict_readiness: bool,

    /// Serve Prometheus metrics on `--metrics-port` (`GET /metrics`).
    #[arg(long, env = "SLUICE_ALLOW_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    allow_metrics: bool,

    /// Address to listen on for metrics (default: the HTTP address).
    #[arg(long, env = "SLUICE_METRICS_ADDRESS")]
    metrics_address: Option<std::net::IpAddr>,

    /// Metrics port (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,

    /// Also export Triton's metric names (`nv_inference_*`) for existing dashboards.
    #[arg(long, env = "SLUICE_METRICS_TRITON_COMPAT")]
    metrics_triton_compat: bool,

    /// Export `sluice_replicas_needed` per model: the replicas the traffic needs to meet
    /// this latency objective (ms), by the SLO-aware autoscaling policy on live
    /// measurements (`deploy/overlays/slo` scales on it).
    #[arg(long, env = "SLUICE_METRICS_SLO_MS", value_parser = clap::value_parser!(u64).range(1..))]
    metrics_slo_ms: Option<u64>,

    /// OpenTelemetry collector for request spans (OTLP/HTTP, e.g.
    /// `http://127.0.0.1:4318`); requests that carry a W3C `traceparent` are exported
    /// as children of the caller's span. Needs the `otlp` cargo feature (default).
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    /// How the set of loaded models changes: `none` loads every model at start and
    /// never changes it; `poll` also applies what changes in the repository;
    /// `explicit` loads only `--load-model` models and then what the repository API
    /// loads and unloads (Triton's model control modes).
    #[arg(long, env = "SLUICE_MODEL_CONTROL_MODE", value_enum, default_value_t = ControlModeArg::None)]
    model_control_mode: ControlModeArg,

    /// Explicit mode: a model to load at start (repeat the flag; `*` loads all).
    #[arg(long = "load-model", env = "SLUICE_LOAD_MODEL", value_delimiter = ',')]
    load_model: Vec<String>,

    /// Poll mode: seconds between repository scans (fractions allowed). A change is
    /// applied once two scans in a row see the same files.
    #[arg(long, env = "SLUICE_REPOSITORY_POLL_SECS", default_value_t = 15.0)]
    repository_poll_secs: f64,

    /// Memory the loaded models may take together, in bytes (measured per version at
    /// load). With a budget, models load on first use and the least recently used
    /// idle ones are unloaded to stay under it; requests to them wait for the reload.
    #[arg(long, env = "SLUICE_MODEL_MEMORY_BUDGET")]
    model_memory_budget: Option<u64>,

    /// Seconds after SIGTERM during which new requests are still answered while
    /// readiness already reports 503, so that Kubernetes removes the pod from its
    /// Service endpoints (and kube-proxy, ingresses and meshes follow, which takes a
    /// few seconds) before anything is refused. Then new requests get 503, accepted
    /// ones finish, and the process exits 0. A second signal ends the grace at once.
    #[arg(long, env = "SLUICE_DRAIN_GRACE_SECS", default_value_t = 0.0)]
    drain_grace_secs: f64,

    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, e.g. `info` or `sluice=debug,info` (RUST_LOG syntax).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,

    /// For tests only: a folder of named pipes. A model with a pipe of its name here
    /// (found when it loads) runs each batch only after reading one byte from it, so
    /// a test decides when a request leaves the engine. Never set in production.
    #[arg(long, env = "SLUICE_TEST_EXECUTION_GATES")]
    test_execution_gates: Option<PathBuf>,

    /// The response cache, as Triton's flag: `local,size=BYTES[,ttl=SECONDS]` (an
    /// in-process cache under a byte budget), `redis,host=H[,port=P,user=U,password=..,
    /// db=N,socket_timeout=MS,connect_timeout=MS,pool_size=N,ttl=SECONDS]` (shared by
    /// replicas; the password may come from SLUICE_CACHE_REDIS_PASSWORD instead) or
    /// `none` (the default); repeatable, one or more keys each. Models opt in with
    /// `response_cache { enable: true }`. In the environment, separate values with `;`.
    #[arg(
        long = "cache-config",
        env = "SLUICE_CACHE_CONFIG",
        value_delimiter = ';'
    )]
    cache_config: Vec<String>,

    /// Once listening, write this file: JSON with the process id and each listener's
    /// address and port (removed on exit). For supervisors and tests that bind port 0.
    #[arg(long, env = "SLUICE_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ControlModeArg {
    None,
    Poll,
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    // Every rustls client and server in the process (TLS listeners, the OTLP exporter's and
    // object_store's reqwest, built with no provider of their own) uses ring. Installing
    // fails only when one is already installed, which is the same provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => sluice_bench::main(args),
        Command::Simulate(args) => autoscale::simulate(args),
        Command::Plan(args) => autoscale::plan(args),
        Command::Route(args) => route::main(args),
        Command::Profile(args) => profile::main(args),
    }
}

/// What must live as long as the server: the live log filter, and the OTLP
/// exporter (flushed when dropped).
struct Logs {
    control: LogHandle,
    #[cfg(feature = "otlp")]
    _exporter: Option<otlp::Exporter>,
}

/// Installs the log subscriber with a filter that `v2/logging` can replace live,
/// and the OTLP exporter when asked for.
fn init_logs(args: &ServeArgs) -> anyhow::Result<Logs> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    #[cfg(feature = "otlp")]
    let (export, exporter) = match &args.otlp_endpoint {
        Some(endpoint) => {
            let (layer, exporter) = otlp::layer(endpoint)?;
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    #[cfg(not(feature = "otlp"))]
    anyhow::ensure!(
        args.otlp_endpoint.is_none(),
        "--otlp-endpoint needs a sluice built with the `otlp` cargo feature"
    );
    #[cfg(not(feature = "otlp"))]
    let export: Option<tracing_subscriber::layer::Identity> = None;
    let registry = tracing_subscriber::registry().with(filter).with(export);
    let format = match args.log_format {
        LogFormat::Text => {
            registry.with(output).init();
            "text"
        }
        LogFormat::Json => {
            registry.with(output.json()).init();
            "json"
        }
    };
    Ok(Logs {
        control: LogHandle(std::sync::Arc::new(LiveFilter { handle, format })),
        #[cfg(feature = "otlp")]
        _exporter: exporter,
    })
}

/// The installed filter, behind `v2/logging` and gRPC `LogSettings`.
struct LiveFilter {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    format: &'static str,
}

impl LogControl for LiveFilter {
    fn filter(&self) -> String {
        self.handle
            .with_current(ToString::to_string)
            .unwrap_or_default()
    }
    fn max_level(&self) -> tracing::level_filters::LevelFilter {
        self.handle
            .with_current(|f| f.max_level_hint())
            .ok()
            .flatten()
            .unwrap_or(tracing::level_filters::LevelFilter::TRACE)
    }
    fn set_filter(&self, filter: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
    fn format(&self) -> &'static str {
        self.format
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let logs = init_logs(&args)?;
    let ready_out = args
        .ready_file
        .as_deref()
        .map(ready_file::ReadyFile::claim)
        .transpose()?;
    anyhow::ensure!(
        args.intra_op_threads > 0,
        "--intra-op-threads must be at least 1"
    );
    anyhow::ensure!(
        args.queue_capacity > 0,
        "--queue-capacity must be at least 1"
    );
    anyhow::ensure!(
        args.default_max_batch_size >= 0,
        "--default-max-batch-size must be >= 0"
    );
    anyhow::ensure!(
        args.grpc_max_message_bytes > 0,
        "--grpc-max-message-bytes must be at least 1"
    );
    anyhow::ensure!(
        !args.allow_metrics
            || args.metrics_port == 0
            || (args.metrics_port != args.http_port && args.metrics_port != args.grpc_port)
            || args.metrics_address.is_some_and(|a| a != args.http_address),
        "--metrics-port ({}) must differ from --http-port and --grpc-port",
        args.metrics_port
    );
    anyhow::ensure!(
        args.grpc_port == 0
            || args.grpc_port != args.http_port
            || args.grpc_address.is_some_and(|a| a != args.http_address),
        "--grpc-port and --http-port must differ (both are {} on {})",
        args.http_port,
        args.http_address
    );
    anyhow::ensure!(
        args.repository_poll_secs.is_finite() && args.repository_poll_secs > 0.0,
        "--repository-poll-secs must be a positive number of seconds"
    );
    anyhow::ensure!(
        args.load_model.is_empty() || args.model_control_mode == ControlModeArg::Explicit,
        "--load-model needs --model-control-mode explicit"
    );
    anyhow::ensure!(
        args.drain_grace_secs.is_finite() && args.drain_grace_secs >= 0.0,
        "--drain-grace-secs must be a number of seconds >= 0"
    );
    anyhow::ensure!(
        args.model_memory_budget != Some(0),
        "--model-memory-budget must be at least 1 byte"
    );
    let security = security::Security::from_args(&args.security)?;
    if let Some(budget) = &security.body_budget {
        anyhow::ensure!(
            budget.total() >= args.max_body_bytes && budget.total() >= args.grpc_max_message_bytes,
            "--max-inflight-body-bytes ({}) must be at least --max-body-bytes ({}) and \
             --grpc-max-message-bytes ({}), or 0 for no bound",
            budget.total(),
            args.max_body_bytes,
            args.grpc_max_message_bytes
        );
    }
    let cache = sluice_runtime::CacheConfig::parse(args.cache_config.as_slice())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_redis_secrets(
            std::env::var("SLUICE_CACHE_REDIS_PASSWORD").ok(),
            std::env::var("SLUICE_CACHE_REDIS_USERNAME").ok(),
        );
    let lifecycle = LifecycleConfig {
        mode: match args.model_control_mode {
            ControlModeArg::None => ControlMode::None,
            ControlModeArg::Poll => ControlMode::Poll,
            ControlModeArg::Explicit => ControlMode::Explicit,
        },
        startup_models: args.load_model.clone(),
        poll_interval: std::time::Duration::from_secs_f64(args.repository_poll_secs),
        memory_budget: args.model_memory_budget,
    };
    let repositories = args.repositories.open(&repositories::Mode {
        control: lifecycle.mode,
        poll_interval: lifecycle.poll_interval,
        startup_models: &lifecycle.startup_models,
    })?;
    let config = RuntimeConfig {
        repository: repositories.path.clone(),
        repository_options: sluice_repository_options(args.default_max_batch_size),
        default_backend: args.default_backend.clone(),
        intra_op_threads: args.intra_op_threads,
        queue_capacity: args.queue_capacity,
        strict_readiness: args.strict_readiness,
        lifecycle,
        execution_gates: args.test_execution_gates.clone(),
        cache,
    };
    let backends = engines::backends(&args.engines, &args.default_backend)?;
    tracing::info!(repository = ?args.repositories.model_repository, "loading models");
    let runtime = Runtime::start(config, backends).map_err(|e| anyhow::anyhow!("{e}"))?;
    repositories.attach(&runtime)?;
    let cpu_budget = args.cpu_budget.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    anyhow::ensure!(cpu_budget > 0, "--cpu-budget must be at least 1");
    anyhow::ensure!(
        (1..=3_600_000).contains(&args.autoscale_interval_ms),
        "--autoscale-interval-ms must be between 1 and 3600000"
    );
    anyhow::ensure!(
        args.autoscale_v.is_finite() && args.autoscale_v >= 0.0,
        "--autoscale-v must be a number >= 0"
    );
    runtime
        .start_autoscaler(sluice_runtime::AutoscaleConfig {
            cpu_budget,
            interval: std::time::Duration::from_millis(args.autoscale_interval_ms),
            v: args.autoscale_v,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready = runtime
        .index()
        .iter()
        .filter(|e| e.state == sluice_runtime::ModelState::Ready)
        .count();
    tracing::info!(ready, total = runtime.index().len(), "models loaded");

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-io")
        .build()?;
    tokio.block_on(async {
        let mut signals = Signals::new()?;
        let grace = std::time::Duration::from_secs_f64(args.drain_grace_secs);
        sluice_server::tls::spawn_reloader(security.reloaders(), security.reload_interval);
        runtime.open_cache().await;
        // gRPC is bound first: the "listening" lines come out gRPC, then HTTP.
        let grpc_addr = SocketAddr::new(
            args.grpc_address.unwrap_or(args.http_address),
            args.grpc_port,
        );
        let grpc_listener = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {grpc_addr} for gRPC"))?;
        let local = grpc_listener.local_addr()?;
        tracing::info!("gRPC server listening on {local}");
        let metrics_listener = if args.allow_metrics {
            let addr = SocketAddr::new(
                args.metrics_address.unwrap_or(args.http_address),
                args.metrics_port,
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            tracing::info!("metrics server listening on {}", listener.local_addr()?);
            Some(listener)
        } else {
            None
        };
        let addr = SocketAddr::new(args.http_address, args.http_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("HTTP server listening on {local}");
        if let Some(file) = &ready_out {
            file.write(&ready_file::Bound {
                http: local,
                grpc: grpc_listener.local_addr()?,
                metrics: metrics_listener
                    .as_ref()
                    .map(|l| l.local_addr())
                    .transpose()?,
            })?;
        }
        let router = sluice_server::app(
            runtime.clone(),
            HttpConfig {
                max_body_bytes: args.max_body_bytes,
                log_control: Some(logs.control.clone()),
                auth: security.http_auth.clone(),
                body_budget: security.body_budget.clone(),
            },
        );
        let grpc = sluice_server::grpc_service(
            runtime.clone(),
            GrpcConfig {
                max_message_bytes: args.grpc_max_message_bytes,
                log_control: Some(logs.control.clone()),
                auth: security.grpc_auth.clone(),
                body_budget: security.body_budget.clone(),
                limits: sluice_server::GrpcLimits {
                    max_connections: args.grpc_max_connections,
                    first_byte_timeout: (args.http_header_read_timeout > 0.0)
                        .then(|| std::time::Duration::from_secs_f64(args.http_header_read_timeout)),
                    max_concurrent_streams: args.grpc_max_concurrent_streams,
                    max_header_list_bytes: args.grpc_max_metadata_bytes,
                    keepalive_interval: (args.grpc_keepalive_time > 0)
                        .then(|| std::time::Duration::from_millis(args.grpc_keepalive_time)),
                    keepalive_timeout: std::time::Duration::from_millis(
                        args.grpc_keepalive_timeout,
                    ),
                },
            },
        );
        // One signal stops both servers; each then finishes its in-flight requests.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let until_stopped = move || {
            let mut stopping = stopping.clone();
            async move {
                let _ = stopping.wait_for(|&s| s).await;
            }
        };
        // Set when shutdown begins: past it, open connections are closed.
        let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
        let at_exit_timeout = move || {
            let mut deadline = deadline_rx.clone();
            async move {
                let d = deadline
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|d| *d);
                match d {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            }
        };
        {
            let runtime = runtime.clone();
            let exit_timeout = security.exit_timeout;
            tokio::spawn(async move {
                signals.next().await;
                drain(&runtime, grace, exit_timeout, &deadline_tx, &mut signals).await;
                let _ = stop.send(true);
            });
        }
        let http = async {
            let limits = sluice_server::ConnectionLimits {
                max_connections: args.http_max_connections,
                header_read_timeout: (args.http_header_read_timeout > 0.0)
                    .then(|| std::time::Duration::from_secs_f64(args.http_header_read_timeout)),
            };
            let options = sluice_server::ServeOptions {
                limits,
                tls: security.http_tls.clone(),
            };
            sluice_server::serve_http(
                listener,
                router,
                options,
                until_stopped(),
                at_exit_timeout(),
            )
            .await
            .context("HTTP server failed")
        };
        let grpc = async {
            let tls = security.grpc_tls.clone();
            sluice_server::serve_grpc_with(
                grpc_listener,
                grpc,
                tls,
                until_stopped(),
                at_exit_timeout(),
            )
            .await
            .context("gRPC server failed")
        };
        let metrics = async {
            let Some(listener) = metrics_listener else {
                return anyhow::Ok(());
            };
            let app = sluice_server::metrics_app(
                runtime.clone(),
                MetricsConfig {
                    triton_compat: args.metrics_triton_compat,
                    replicas_needed_slo: args.metrics_slo_ms.map(std::time::Duration::from_millis),
                },
            );
            let options = sluice_server::ServeOptions {
                limits: sluice_server::ConnectionLimits::new(METRICS_MAX_CONNECTIONS),
                tls: security.metrics_tls.clone(),
            };
            sluice_server::serve_http(listener, app, options, until_stopped(), at_exit_timeout())
                .await
                .context("metrics server failed")
        };
        tokio::try_join!(http, grpc, metrics)?;
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.shutdown()).await?;
        repositories.stop();
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn sluice_repository_options(default_max_batch_size: i32) -> sluice_runtime::RepositoryOptions {
    sluice_runtime::RepositoryOptions {
        default_max_batch_size,
    }
}

/// The drain after the first signal: readiness false at once; new requests still
/// answered for `grace` (or until a second signal); then new requests refused with
/// 503 while the listeners stay open until every accepted request is answered (so a
/// late client gets a clear 503, not a refused connection), for at most
/// `exit_timeout`, which also bounds how long the servers then wait for open
/// connections (`deadline`). The servers stop after.
async fn drain(
    runtime: &Runtime,
    grace: std::time::Duration,
    exit_timeout: std::time::Duration,
    deadline: &tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    signals: &mut Signals,
) {
    runtime.begin_drain();
    if !grace.is_zero() {
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: not ready; still accepting requests for the drain grace"
        );
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            () = signals.next() => tracing::info!("second signal: drain grace ended early"),
        }
    }
    tracing::info!("shutting down: refusing new requests, finishing in-flight requests");
    runtime.begin_shutdown();
    let exit_at = tokio::time::Instant::now() + exit_timeout;
    let _ = deadline.send(Some(exit_at));
    let busy = || {
        runtime
            .stats(None, None)
            .unwrap_or_default()
            .iter()
            .any(|v| v.stats.in_flight() > 0 || v.queue_len > 0)
    };
    while busy() {
        if tokio::time::Instant::now() >= exit_at {
            tracing::warn!("exit timeout: requests still in flight are abandoned");
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// How often the drain checks whether accepted requests are all answered.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// SIGINT and SIGTERM, listened for from the moment [`Signals::new`] is called (so a
/// signal that arrives before the servers run is not lost to the default action).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A number of seconds: finite, 0 or more, at most a day.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("'{text}' is not a number of seconds in 0..=86400")),
    }
}

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
use sluice_runtime::{Runtime, RuntimeConfig};
use sluice_server::{GrpcConfig, HttpConfig};

mod engines;

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
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// Model repository: one folder per model, Triton's layout
    /// (`<model>/config.pbtxt|config.json`, `<model>/<version>/model.onnx`).
    #[arg(long, env = "SLUICE_MODEL_REPOSITORY")]
    model_repository: PathBuf,

    /// Address to listen on for HTTP.
    #[arg(long, env = "SLUICE_HTTP_ADDRESS", default_value = "0.0.0.0")]
    http_address: std::net::IpAddr,

    /// HTTP port (0 picks a free port; the chosen one is logged).
    #[arg(long, env = "SLUICE_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// Largest accepted request body in bytes; larger ones are answered with 413.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,

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

    /// Backend for models that do not name one (`tract` or `onnxruntime`).
    #[arg(long, env = "SLUICE_DEFAULT_BACKEND", default_value = "tract")]
    default_backend: String,

    #[command(flatten)]
    engines: engines::EngineArgs,

    /// Threads one model instance may use for one run (a model's
    /// `intra_op_thread_count` parameter overrides it).
    #[arg(long, env = "SLUICE_INTRA_OP_THREADS", default_value_t = 1)]
    intra_op_threads: usize,

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

    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, e.g. `info` or `sluice=debug,info` (RUST_LOG syntax).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn init_logs(args: &ServeArgs) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args)?;
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
        args.grpc_port == 0
            || args.grpc_port != args.http_port
            || args.grpc_address.is_some_and(|a| a != args.http_address),
        "--grpc-port and --http-port must differ (both are {} on {})",
        args.http_port,
        args.http_address
    );
    let config = RuntimeConfig {
        repository: args.model_repository.clone(),
        repository_options: sluice_repository_options(args.default_max_batch_size),
        default_backend: args.default_backend.clone(),
        intra_op_threads: args.intra_op_threads,
        queue_capacity: args.queue_capacity,
        strict_readiness: args.strict_readiness,
    };
    let backends = engines::backends(&args.engines, &args.default_backend)?;
    tracing::info!(repository = %args.model_repository.display(), "loading models");
    let runtime = Runtime::start(config, backends).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        let signal = shutdown_signal()?;
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
        let addr = SocketAddr::new(args.http_address, args.http_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!("HTTP server listening on {local}");
        let router = sluice_server::app(
            runtime.clone(),
            HttpConfig {
                max_body_bytes: args.max_body_bytes,
            },
        );
        let grpc = sluice_server::grpc_service(
            runtime.clone(),
            GrpcConfig {
                max_message_bytes: args.grpc_max_message_bytes,
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
        {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                signal.await;
                tracing::info!("shutting down: finishing in-flight requests");
                runtime.begin_shutdown();
                let _ = stop.send(true);
            });
        }
        let http = async {
            sluice_server::serve(listener, router, until_stopped())
                .await
                .context("HTTP server failed")
        };
        let grpc = async {
            sluice_server::serve_grpc(grpc_listener, grpc, until_stopped())
                .await
                .context("gRPC server failed")
        };
        tokio::try_join!(http, grpc)?;
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || runtime.shutdown()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn sluice_repository_options(default_max_batch_size: i32) -> sluice_runtime::RepositoryOptions {
    sluice_runtime::RepositoryOptions {
        default_max_batch_size,
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is called (so a signal that
/// arrives before the servers run is not lost to the default action), and resolves on
/// the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

//! `sluice route`: flags of the router, turned into a validated
//! [`sluice_router::RouterConfig`] once, and the process around it (log output,
//! listeners, SIGINT/SIGTERM).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_router::{
    parse_replica, Discovery, HedgeConfig, HedgeDelay, OutlierConfig, PlacementConfig, ReplicaTls,
    RouterConfig,
};

#[derive(Parser, Debug)]
pub struct RouteArgs {
    /// A replica, `HOST:HTTP_PORT[/GRPC_PORT]` (repeat the flag, or comma-separate).
    #[arg(long = "replica", env = "SLUICE_ROUTE_REPLICAS", value_delimiter = ',')]
    replicas: Vec<String>,

    /// Find replicas by DNS instead: every address this name resolves to (a
    /// Kubernetes headless Service, e.g. `sluice-replicas.default.svc.cluster.local`).
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_DNS", conflicts_with = "replicas")]
    replica_dns: Option<String>,

    /// The replicas' HTTP port (DNS discovery).
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_HTTP_PORT", default_value_t = 8000)]
    replica_http_port: u16,

    /// The replicas' gRPC port (DNS discovery, and `--replica` without `/GRPC_PORT`).
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_GRPC_PORT", default_value_t = 8001)]
    replica_grpc_port: u16,

    /// Seconds between DNS resolutions.
    #[arg(long, env = "SLUICE_ROUTE_DNS_REFRESH_SECS", default_value_t = 5.0)]
    dns_refresh_secs: f64,

    /// Milliseconds between polls of every replica's load endpoint.
    #[arg(long, env = "SLUICE_ROUTE_POLL_MS", default_value_t = 200)]
    poll_ms: u64,

    /// A probe that takes longer (milliseconds) marks the replica down.
    #[arg(long, env = "SLUICE_ROUTE_PROBE_TIMEOUT_MS", default_value_t = 1000)]
    probe_timeout_ms: u64,

    /// Transport failures in a row that eject a replica (passive outlier detection).
    #[arg(long, env = "SLUICE_ROUTE_EJECT_AFTER", default_value_t = 3)]
    eject_after: u32,

    /// The first ejection's length in seconds; the n-th lasts n times as long (n ≤ 10).
    #[arg(long, env = "SLUICE_ROUTE_EJECT_SECS", default_value_t = 5.0)]
    eject_secs: f64,

    /// When to send a backup request: `off`, a percentile of the model's recent
    /// latencies through this router (`p95`, the default, once 20 are known; `p99` once
    /// 100 are; any `pNN` or `pNN.N` from p50 to p99.5) or a number of milliseconds.
    #[arg(long, env = "SLUICE_ROUTE_HEDGE", default_value = "p95")]
    hedge: String,

    /// Extra (backup) requests allowed, as a share of requests.
    #[arg(long, env = "SLUICE_ROUTE_HEDGE_MAX_RATIO", default_value_t = 0.05)]
    hedge_max_ratio: f64,

    /// Backup requests allowed beyond the share (and the starting budget).
    #[arg(long, env = "SLUICE_ROUTE_HEDGE_BURST", default_value_t = 3.0)]
    hedge_burst: f64,

    /// Seconds the hedge budget is counted over: in any such span, backups ≤ burst +
    /// max ratio × requests of the span.
    #[arg(long, env = "SLUICE_ROUTE_HEDGE_WINDOW_SECS", default_value_t = 10.0)]
    hedge_window_secs: f64,

    /// Do not load models nobody holds, nor add copies by rate (the replicas then load
    /// on first use themselves, under their memory budget, or answer why not).
    #[arg(long, env = "SLUICE_ROUTE_NO_PLACEMENT")]
    no_placement: bool,

    /// Requests per minute one copy of a model carries before another is added
    /// (ModelMesh's scale-up threshold).
    #[arg(long, env = "SLUICE_ROUTE_COPY_RATE_PER_MIN", default_value_t = 2000.0)]
    copy_rate_per_min: f64,

    /// Seconds a request without a deadline waits for its model to load.
    #[arg(long, env = "SLUICE_ROUTE_LOAD_TIMEOUT_SECS", default_value_t = 60.0)]
    load_timeout_secs: f64,

    /// TLS to the replicas: verify their certificates against this CA (PEM) and use
    /// HTTPS and gRPC over TLS for every forwarded request, poll and load.
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_TLS_CA")]
    replica_tls_ca: Option<PathBuf>,

    /// A client certificate chain (PEM) for replicas that require mutual TLS
    /// (`sluice serve --tls-client-ca`); with --replica-tls-key.
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_TLS_CERT")]
    replica_tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_TLS_KEY")]
    replica_tls_key: Option<PathBuf>,

    /// The name the replicas' certificates must carry, instead of the address each is
    /// reached at (replicas found by DNS are reached by IP; their certificates
    /// usually name the Service).
    #[arg(long, env = "SLUICE_ROUTE_REPLICA_TLS_SERVER_NAME")]
    replica_tls_server_name: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "SLUICE_ROUTE_ADDRESS", default_value = "0.0.0.0")]
    address: IpAddr,

    /// HTTP port (0: a free one, logged).
    #[arg(long, env = "SLUICE_ROUTE_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// gRPC port (0: a free one, logged).
    #[arg(long, env = "SLUICE_ROUTE_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,

    /// Largest HTTP request body and gRPC message, in bytes.
    #[arg(long, env = "SLUICE_ROUTE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes: usize,

    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        v.is_finite() && (0.0..=86_400.0).contains(&v),
        "{name} must be a number of seconds in 0..=86400"
    );
    Ok(Duration::from_secs_f64(v))
}

impl RouteArgs {
    fn config(&self) -> anyhow::Result<RouterConfig> {
        let discovery = match &self.replica_dns {
            Some(name) => Discovery::Dns {
                name: name.clone(),
                http_port: self.replica_http_port,
                grpc_port: self.replica_grpc_port,
                refresh: seconds("--dns-refresh-secs", self.dns_refresh_secs)?,
            },
            None => {
                anyhow::ensure!(
                    !self.replicas.is_empty(),
                    "name the replicas with --replica HOST:PORT[/GRPC_PORT] or --replica-dns NAME"
                );
                let list = self
                    .replicas
                    .iter()
                    .map(|r| parse_replica(r.trim(), self.replica_grpc_port))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("--replica: {e}"))?;
                Discovery::Static(list)
            }
        };
        let delay = HedgeDelay::parse(&self.hedge).map_err(|e| anyhow::anyhow!(e))?;
        let replica_tls = match (&self.replica_tls_ca, &self.replica_tls_cert, &self.replica_tls_key) {
            (None, None, None) => {
                anyhow::ensure!(
                    self.replica_tls_server_name.is_none(),
                    "--replica-tls-server-name needs --replica-tls-ca"
                );
                None
            }
            (Some(ca), cert, key) => {
                let identity = match (cert, key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => anyhow::bail!("--replica-tls-cert and --replica-tls-key go together"),
                };
                Some(
                    ReplicaTls::from_files(ca, identity, self.replica_tls_server_name.as_deref())
                        .map_err(|e| anyhow::anyhow!("TLS to the replicas: {e}"))?,
                )
            }
            (None, _, _) => anyhow::bail!(
                "--replica-tls-cert and --replica-tls-key need --replica-tls-ca (the CA the replicas' certificates are checked against)"
            ),
        };
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.hedge_max_ratio),
            "--hedge-max-ratio must be in 0..=1"
        );
        anyhow::ensure!(
            self.hedge_burst.is_finite() && self.hedge_burst >= 0.0,
            "--hedge-burst must be >= 0"
        );
        anyhow::ensure!(self.poll_ms > 0, "--poll-ms must be at least 1");
        anyhow::ensure!(self.eject_after > 0, "--eject-after must be at least 1");
        anyhow::ensure!(
            self.copy_rate_per_min.is_finite() && self.copy_rate_per_min > 0.0,
            "--copy-rate-per-min must be positive"
        );
        let defaults = RouterConfig::default();
        Ok(RouterConfig {
            discovery,
            replica_tls,
            poll_interval: Duration::from_millis(self.poll_ms),
            probe_timeout: Duration::from_millis(self.probe_timeout_ms.max(1)),
            outlier: OutlierConfig {
                consecutive_errors: self.eject_after,
                base_ejection: seconds("--eject-secs", self.eject_secs)?,
            },
            hedge: HedgeConfig {
                delay,
                max_ratio: self.hedge_max_ratio,
                burst: self.hedge_burst,
                window: seconds("--hedge-window-secs", self.hedge_window_secs)?
                    .max(Duration::from_millis(10)),
                ..defaults.hedge
            },
            placement: PlacementConfig {
                enabled: !self.no_placement,
                copy_rate_per_min: self.copy_rate_per_min,
                load_timeout: seconds("--load-timeout-secs", self.load_timeout_secs)?,
            },
            max_body_bytes: self.max_body_bytes,
            grpc_max_message_bytes: self.max_body_bytes,
        })
    }
}

pub fn main(args: RouteArgs) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = args.config()?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-route")
        .build()?;
    tokio.block_on(async {
        let grpc_addr = SocketAddr::new(args.address, args.grpc_port);
        let grpc = tokio::net::TcpListener::bind(grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {grpc_addr} for gRPC"))?;
        tracing::info!("gRPC server listening on {}", grpc.local_addr()?);
        let http_addr = SocketAddr::new(args.address, args.http_port);
        let http = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot listen on {http_addr}"))?;
        tracing::info!("HTTP server listening on {}", http.local_addr()?);
        let mut signals = crate::Signals::new()?;
        let shutdown = async move {
            signals.next().await;
            tracing::info!("shutting down: finishing in-flight requests");
        };
        sluice_router::run(config, http, Some(grpc), shutdown)
            .await
            .context("router failed")?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

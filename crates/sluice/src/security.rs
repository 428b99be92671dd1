//! The security flags of `sluice serve`: TLS (with Triton's gRPC aliases), scoped
//! API keys (with Triton's restricted-API form) and the exit timeout, turned into
//! the configs `sluice_server` takes.
//!
//! Key decision: API keys come from a file (`--api-keys-file`, e.g. a mounted
//! Kubernetes Secret) or the `SLUICE_API_KEYS` environment variable, never from a
//! flag's value, so they do not show in `ps` or shell history; they are never
//! logged (only their names and scopes are).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_server::auth::{self, AuthPolicy, Scopes};
use sluice_server::tls::{TlsFiles, TlsReloader, ALPN_GRPC, ALPN_HTTP};

/// The environment variable that may hold API keys (same format as the file).
pub const API_KEYS_ENV: &str = "SLUICE_API_KEYS";

#[derive(clap::Args, Debug)]
pub struct SecurityArgs {
    /// PEM certificate chain for TLS on HTTP (and gRPC, unless --grpc-server-cert
    /// is given). Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM CA certificates: with it, clients must present a certificate it signed
    /// (mutual TLS) on the TLS listeners.
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,

    /// Serve gRPC over TLS (Triton's flag; the certificate is --grpc-server-cert or
    /// --tls-cert).
    #[arg(long, env = "SLUICE_GRPC_USE_SSL", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    grpc_use_ssl: bool,

    /// Require client certificates on gRPC, signed by --grpc-root-cert (Triton's flag).
    #[arg(long, env = "SLUICE_GRPC_USE_SSL_MUTUAL", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    grpc_use_ssl_mutual: bool,

    /// PEM certificate for gRPC TLS (Triton's flag; default: --tls-cert).
    #[arg(long, env = "SLUICE_GRPC_SERVER_CERT")]
    grpc_server_cert: Option<PathBuf>,

    /// PEM key for gRPC TLS (Triton's flag; default: --tls-key).
    #[arg(long, env = "SLUICE_GRPC_SERVER_KEY")]
    grpc_server_key: Option<PathBuf>,

    /// PEM CA that signs gRPC client certificates, for --grpc-use-ssl-mutual
    /// (Triton's flag; default: --tls-client-ca).
    #[arg(long, env = "SLUICE_GRPC_ROOT_CERT")]
    grpc_root_cert: Option<PathBuf>,

    /// Serve metrics over TLS too, with --tls-cert / --tls-key / --tls-client-ca.
    #[arg(long, env = "SLUICE_METRICS_TLS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_tls: bool,

    /// Seconds between checks of the TLS files for changes (0: reload on SIGHUP only).
    #[arg(long, env = "SLUICE_TLS_RELOAD_INTERVAL_SECS", default_value_t = 30.0,
          value_parser = crate::parse_seconds)]
    tls_reload_interval_secs: f64,

    /// File of API keys, one per line: `<name> <scopes> <key>`, scopes a comma list
    /// of health, metadata, inference, shared-memory, model-config,
    /// model-repository, statistics, trace, logging, or `*`. Keys can also come from
    /// the SLUICE_API_KEYS environment variable (entries separated by newlines or
    /// `;`). With keys, every category needs a key with its scope except
    /// --api-open-scopes.
    #[arg(long, env = "SLUICE_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,

    /// Categories open without a key when API keys are configured (comma list, or
    /// `none`).
    #[arg(long, env = "SLUICE_API_OPEN_SCOPES", default_value = "health")]
    api_open_scopes: String,

    /// Triton's restricted HTTP APIs, `<apis>:<header>=<value>` (repeatable): those
    /// categories need that header with that value (or an API key with the scope).
    #[arg(long, env = "SLUICE_HTTP_RESTRICTED_API", value_delimiter = ';')]
    http_restricted_api: Vec<String>,

    /// Triton's restricted gRPC protocols, `<apis>:<header>=<value>` (repeatable).
    #[arg(long, env = "SLUICE_GRPC_RESTRICTED_PROTOCOL", value_delimiter = ';')]
    grpc_restricted_protocol: Vec<String>,

    /// Seconds after shutdown begins (after the drain grace) that in-flight requests
    /// and open connections get to finish; then connections still open are closed
    /// and the process exits (Triton's flag).
    #[arg(long, env = "SLUICE_EXIT_TIMEOUT_SECS", default_value_t = 30.0,
          value_parser = crate::parse_seconds)]
    exit_timeout_secs: f64,

    /// Input tensors one inference request may carry (HTTP and gRPC); more: 400 /
    /// INVALID_ARGUMENT, checked before the request is decoded.
    #[arg(long, env = "SLUICE_MAX_REQUEST_INPUTS", default_value_t = 1024)]
    max_request_inputs: usize,

    /// Requested outputs one inference request may list.
    #[arg(long, env = "SLUICE_MAX_REQUEST_OUTPUTS", default_value_t = 1024)]
    max_request_outputs: usize,

    /// Parameters one inference request, input or output may carry.
    #[arg(long, env = "SLUICE_MAX_REQUEST_PARAMETERS", default_value_t = 256)]
    max_request_parameters: usize,

    /// Tensor elements one inference request may carry (all inputs, by shape and by
    /// gRPC contents), checked before anything is allocated for them.
    #[arg(long, env = "SLUICE_MAX_REQUEST_ELEMENTS", default_value_t = 1 << 28)]
    max_request_elements: u64,

    /// Bytes a gRPC inference request may take once decoded (estimated from the
    /// encoded message before decoding it).
    #[arg(long, env = "SLUICE_MAX_REQUEST_DECODED_BYTES", default_value_t = 1 << 30)]
    max_request_decoded_bytes: u64,

    /// Bytes of request bodies all requests in flight may hold together, HTTP and
    /// gRPC (bodies as sent, held until each request is answered); a request that
    /// would pass it is refused at once with 503 / RESOURCE_EXHAUSTED, so many
    /// concurrent large bodies cannot exhaust memory. At least --max-body-bytes and
    /// --grpc-max-message-bytes (0: no bound).
    #[arg(long, env = "SLUICE_MAX_INFLIGHT_BODY_BYTES",
          default_value_t = sluice_server::DEFAULT_BODY_BUDGET_BYTES)]
    max_inflight_body_bytes: usize,
}

/// What the security flags resolve to.
pub struct Security {
    pub http_tls: Option<TlsReloader>,
    pub grpc_tls: Option<TlsReloader>,
    pub metrics_tls: Option<TlsReloader>,
    pub reload_interval: Option<Duration>,
    pub http_auth: Option<Arc<AuthPolicy>>,
    pub grpc_auth: Option<Arc<AuthPolicy>>,
    pub exit_timeout: Duration,
    /// `--max-inflight-body-bytes` (`None`: no bound).
    pub body_budget: Option<sluice_server::BodyBudget>,
}

impl Security {
    pub fn from_args(args: &SecurityArgs) -> anyhow::Result<Security> {
        anyhow::ensure!(
            args.max_request_inputs > 0
                && args.max_request_outputs > 0
                && args.max_request_elements > 0
                && args.max_request_decoded_bytes > 0,
            "the --max-request-* limits must be at least 1"
        );
        sluice_server::limits::install(sluice_server::limits::RequestLimits {
            max_inputs: args.max_request_inputs,
            max_outputs: args.max_request_outputs,
            max_parameters: args.max_request_parameters,
            max_elements: args.max_request_elements,
            max_decoded_bytes: args.max_request_decoded_bytes,
        });
        let http_files = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        anyhow::ensure!(
            args.tls_client_ca.is_none() || http_files.is_some() || args.grpc_use_ssl,
            "--tls-client-ca needs TLS (--tls-cert and --tls-key)"
        );
        let grpc_wanted = args.grpc_use_ssl
            || args.grpc_use_ssl_mutual
            || args.grpc_server_cert.is_some()
            || args.grpc_server_key.is_some();
        let grpc_files = if grpc_wanted {
            let cert = args
                .grpc_server_cert
                .clone()
                .or_else(|| args.tls_cert.clone());
            let key = args
                .grpc_server_key
                .clone()
                .or_else(|| args.tls_key.clone());
            let (Some(cert), Some(key)) = (cert, key) else {
                anyhow::bail!(
                    "gRPC TLS needs a certificate and key (--grpc-server-cert and \
                     --grpc-server-key, or --tls-cert and --tls-key)"
                );
            };
            let client_ca = if args.grpc_use_ssl_mutual {
                let ca = args
                    .grpc_root_cert
                    .clone()
                    .or_else(|| args.tls_client_ca.clone());
                anyhow::ensure!(
                    ca.is_some(),
                    "--grpc-use-ssl-mutual needs --grpc-root-cert (or --tls-client-ca)"
                );
                ca
            } else {
                args.tls_client_ca.clone()
            };
            Some(TlsFiles {
                cert,
                key,
                client_ca,
            })
        } else {
            http_files.clone()
        };
        anyhow::ensure!(
            !args.metrics_tls || http_files.is_some(),
            "--metrics-tls needs --tls-cert and --tls-key"
        );
        let load = |files: &Option<TlsFiles>, alpn: &[&[u8]], what: &str| {
            files
                .clone()
                .map(|f| TlsReloader::load(f, alpn))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{what} TLS: {e}"))
        };
        let http_tls = load(&http_files, ALPN_HTTP, "HTTP")?;
        let grpc_tls = load(&grpc_files, ALPN_GRPC, "gRPC")?;
        let metrics_tls = if args.metrics_tls {
            load(&http_files, ALPN_HTTP, "metrics")?
        } else {
            None
        };

        let mut keys = Vec::new();
        if let Some(path) = &args.api_keys_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-keys-file {}", path.display()))?;
            keys.extend(
                auth::parse_keys(&text, &path.display().to_string())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        if let Ok(text) = std::env::var(API_KEYS_ENV) {
            keys.extend(auth::parse_keys(&text, API_KEYS_ENV).map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        let open = Scopes::parse(&args.api_open_scopes)
            .map_err(|e| anyhow::anyhow!("--api-open-scopes: {e}"))?;
        let restrictions = |specs: &[String], flag: &str| {
            specs
                .iter()
                .map(|s| auth::parse_restriction(s).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let policy = |restricted: Vec<auth::Restriction>, what: &str| {
            let policy = AuthPolicy::new(&keys, &restricted, open);
            if policy.is_active() {
                tracing::info!("{what} API access: {}", policy.summary());
                Some(Arc::new(policy))
            } else {
                None
            }
        };
        let http_auth = policy(
            restrictions(&args.http_restricted_api, "--http-restricted-api")?,
            "HTTP",
        );
        let grpc_auth = policy(
            restrictions(&args.grpc_restricted_protocol, "--grpc-restricted-protocol")?,
            "gRPC",
        );
        if http_auth.is_some() && http_tls.is_none() {
            tracing::warn!("API keys are required but HTTP is not TLS: keys travel in the clear");
        }
        Ok(Security {
            http_tls,
            grpc_tls,
            metrics_tls,
            reload_interval: (args.tls_reload_interval_secs > 0.0)
                .then(|| Duration::from_secs_f64(args.tls_reload_interval_secs)),
            http_auth,
            grpc_auth,
            exit_timeout: Duration::from_secs_f64(args.exit_timeout_secs),
            body_budget: (args.max_inflight_body_bytes > 0)
                .then(|| sluice_server::BodyBudget::new(args.max_inflight_body_bytes)),
        })
    }

    /// The TLS listeners' reloaders (for SIGHUP and file watching).
    pub fn reloaders(&self) -> Vec<TlsReloader> {
        [&self.http_tls, &self.grpc_tls, &self.metrics_tls]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

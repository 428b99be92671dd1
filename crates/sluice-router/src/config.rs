//! The router's settings, validated once by the binary and passed down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::view::ReplicaAddr;

/// Where the replicas are.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// A fixed list.
    Static(Vec<ReplicaAddr>),
    /// Every address a DNS name resolves to (a Kubernetes headless Service), resolved
    /// again every `refresh`.
    Dns {
        name: String,
        http_port: u16,
        grpc_port: u16,
        refresh: Duration,
    },
}

/// Passive outlier detection (as Envoy's `consecutive_gateway_failure`).
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Transport failures in a row that eject a replica.
    pub consecutive_errors: u32,
    /// The first ejection lasts this long; the n-th lasts n times as long (at most 10).
    pub base_ejection: Duration,
}

/// The hedge budget's window unless configured.
pub const DEFAULT_HEDGE_WINDOW: Duration = Duration::from_secs(10);

impl HedgeDelay {
    /// The default: the p95, as DLIS does.
    pub const P95: HedgeDelay = HedgeDelay::Percentile(950);

    /// Parses `off`, `pNN` or `pNN.N` (a percentile in 50..=99.5: the window of 512
    /// latencies holds at least two above it) or a number of milliseconds.
    pub fn parse(text: &str) -> Result<HedgeDelay, String> {
        let bad = || {
            format!(
                "--hedge must be off, a percentile (p95, p99: p50 to p99.5) or a number of milliseconds, got '{text}'"
            )
        };
        if text == "off" {
            return Ok(HedgeDelay::Off);
        }
        if let Some(p) = text.strip_prefix('p') {
            let v: f64 = p.parse().map_err(|_| bad())?;
            let tenths = (v * 10.0).round();
            if !(500.0..=995.0).contains(&tenths) || (tenths / 10.0 - v).abs() > 1e-9 {
                return Err(bad());
            }
            return Ok(HedgeDelay::Percentile(tenths as u16));
        }
        let ms: f64 = text.parse().map_err(|_| bad())?;
        if !ms.is_finite() || !(0.0..=3_600_000.0).contains(&ms) {
            return Err(bad());
        }
        Ok(HedgeDelay::Fixed(Duration::from_secs_f64(ms / 1000.0)))
    }
}

/// When a request gets a backup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    Off,
    /// After a percentile of the model's recent latencies through this router, in
    /// tenths of a percent (950: the p95, the default; 990: the p99, for fewer and
    /// later backups).
    Percentile(u16),
    /// After a fixed delay.
    Fixed(Duration),
}

#[derive(Debug, Clone)]
pub struct HedgeConfig {
    pub delay: HedgeDelay,
    /// Extra requests allowed, as a share of requests (0.05: at most 5 % more).
    pub max_ratio: f64,
    /// Hedges allowed beyond the share (and the budget a router starts with).
    pub burst: f64,
    /// The span the share is counted over: in any such span, hedges ≤ burst +
    /// max_ratio × requests.
    pub window: Duration,
    /// Latencies needed before a percentile is trusted (at least enough that one
    /// latency lies above it: 100 for the p99, 200 for the p99.5).
    pub min_samples: usize,
    /// A percentile delay is never shorter than this.
    pub min_delay: Duration,
}

/// Placement of models on replicas in explicit mode.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// Load models that no replica holds on first request, and add copies by rate.
    pub enabled: bool,
    /// Requests per minute one copy is meant to carry (ModelMesh scales at 2000).
    pub copy_rate_per_min: f64,
    /// How long a request waits for a load at most when it has no deadline.
    pub load_timeout: Duration,
}

/// TLS from the router to its replicas (HTTPS for forwarding and polls, TLS for the
/// gRPC channels): the replicas' certificates are verified against a CA of the
/// user's, and a client certificate is presented when the replicas require mutual
/// TLS (`sluice serve --tls-client-ca`).
#[derive(Clone)]
pub struct ReplicaTls {
    /// The rustls client settings (ring provider; ALPN is set per protocol).
    pub client: Arc<ClientConfig>,
    /// The name the replicas' certificates are checked for, instead of the address
    /// each is reached at (pods found by DNS are reached by IP, their certificates
    /// usually name the Service).
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ReplicaTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ReplicaTls {
    /// Reads the CA (and the client certificate and key, which come together);
    /// errors name the file and what is wrong with it.
    pub fn from_files(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<ReplicaTls, String> {
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots);
        let client = match identity {
            Some((cert, key)) => {
                let chain = pem_certs(cert)?;
                let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!("cannot read a private key from {}: {e}", key.display())
                })?;
                builder.with_client_auth_cert(chain, der).map_err(|e| {
                    format!(
                        "the certificate {} and key {} do not make a usable pair: {e}",
                        cert.display(),
                        key.display()
                    )
                })?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = server_name
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|e| format!("'{n}' is not a DNS name or IP address: {e}"))
            })
            .transpose()?;
        Ok(ReplicaTls {
            client: Arc::new(client),
            server_name,
        })
    }
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub discovery: Discovery,
    /// TLS to the replicas; plain HTTP and gRPC without it.
    pub replica_tls: Option<ReplicaTls>,
    /// How often every replica's load endpoint is read.
    pub poll_interval: Duration,
    /// A probe that takes longer fails.
    pub probe_timeout: Duration,
    pub outlier: OutlierConfig,
    pub hedge: HedgeConfig,
    pub placement: PlacementConfig,
    /// Largest HTTP request body accepted.
    pub max_body_bytes: usize,
    /// Largest gRPC message accepted and sent.
    pub grpc_max_message_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            discovery: Discovery::Static(Vec::new()),
            replica_tls: None,
            poll_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_secs(1),
            outlier: OutlierConfig {
                consecutive_errors: 3,
                base_ejection: Duration::from_secs(5),
            },
            hedge: HedgeConfig {
                delay: HedgeDelay::P95,
                max_ratio: 0.05,
                burst: 3.0,
                window: DEFAULT_HEDGE_WINDOW,
                min_samples: 20,
                min_delay: Duration::from_millis(1),
            },
            placement: PlacementConfig {
                enabled: true,
                copy_rate_per_min: 2000.0,
                load_timeout: Duration::from_secs(60),
            },
            max_body_bytes: 64 * 1024 * 1024,
            grpc_max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Parses `HOST:HTTP_PORT` or `HOST:HTTP_PORT/GRPC_PORT` (gRPC defaults to
/// `default_grpc`). IPv6 hosts go in brackets: `[::1]:8000/8001`.
pub fn parse_replica(text: &str, default_grpc: u16) -> Result<ReplicaAddr, String> {
    let bad = || format!("'{text}' is not HOST:HTTP_PORT[/GRPC_PORT]");
    let (hostport, grpc) = match text.split_once('/') {
        Some((h, g)) => (h, Some(g.parse::<u16>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let http_port = port.parse::<u16>().map_err(|_| bad())?;
    Ok(ReplicaAddr {
        host: host.to_string(),
        http_port,
        grpc_port: grpc.unwrap_or(default_grpc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses() {
        let a = parse_replica("127.0.0.1:8000/8001", 9).unwrap();
        assert_eq!(
            (a.host.as_str(), a.http_port, a.grpc_port),
            ("127.0.0.1", 8000, 8001)
        );
        let a = parse_replica("svc.ns:8000", 8001).unwrap();
        assert_eq!((a.host.as_str(), a.grpc_port), ("svc.ns", 8001));
        let a = parse_replica("[::1]:80/81", 9).unwrap();
        assert_eq!((a.host.as_str(), a.id()), ("::1", "[::1]:80".to_string()));
        for bad in ["", "host", ":80", "h:x", "h:80/x", "h:99999"] {
            assert!(parse_replica(bad, 1).is_err(), "{bad}");
        }
    }
}

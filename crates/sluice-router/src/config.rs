//! The router's settings, validated once by the binary and passed down.

use std::time::Duration;

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

/// When a request gets a backup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    Off,
    /// After the p95 of the model's recent latencies through this router.
    P95,
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
    /// Latencies needed before the p95 is trusted.
    pub min_samples: usize,
    /// The p95 delay is never shorter than this.
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

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub discovery: Discovery,
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

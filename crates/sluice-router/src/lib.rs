//! `sluice route`: one KServe v2 address (HTTP and gRPC) in front of many Sluice
//! replicas, each holding a subset of a large repository.
//!
//! Key decision: the router keeps no state of its own that matters. Its view — which
//! replica is up, what it holds, how busy it is — is rebuilt every poll interval from
//! the replicas themselves (`GET /v2/sluice/load`), discovery is a static list or DNS
//! (a Kubernetes headless Service), and every placement decision is a pure function of
//! that view ([`placement`]), so any number of router pods agree without talking to
//! each other and Kubernetes does the lifecycle.
//!
//! A request goes to a replica that holds its model, by power of two choices on
//! predicted completion time (requests ahead × learned service time, [`view`]); a model
//! nobody holds is loaded first on the placement's choice while the request waits; a
//! replica that fails before answering is retried once elsewhere and, after repeated
//! failures, ejected; after the model's recent p95 (or a fixed delay) a backup request
//! goes to a second replica, within a budget of extra requests ([`forward`]). HTTP bodies
//! are forwarded as received (binary tensor extension included); only a `timeout`
//! parameter is rewritten to the time that is left.

pub mod config;
pub mod forward;
mod grpc;
pub mod hedge;
mod http;
pub mod placement;
pub mod poll;
pub mod stats;
pub mod view;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::http::uri::Scheme;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use config::{
    parse_replica, Discovery, HedgeConfig, HedgeDelay, OutlierConfig, PlacementConfig, ReplicaTls,
    RouterConfig,
};
pub use view::ReplicaAddr;

/// A counter for `/metrics`.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The router's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: Counter,
    pub retries: Counter,
    pub hedges: Counter,
    pub hedge_wins: Counter,
    pub ejections: Counter,
    pub loads: Counter,
    pub errors: Counter,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;
/// One lock per (replica, model) pair, so one load of a model runs on a replica at a time.
type LoadLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// What every handler and the poller share.
pub struct Shared {
    pub config: RouterConfig,
    pub view: Mutex<view::View>,
    pub metrics: Metrics,
    pub(crate) http: HttpClient,
    /// `https` with TLS to the replicas, `http` without.
    pub(crate) scheme: Scheme,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) loads: LoadLocks,
    grpc_clients: Mutex<HashMap<String, grpc::Client>>,
}

impl Shared {
    pub fn new(config: RouterConfig) -> Arc<Shared> {
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector(config.replica_tls.as_ref(), false));
        let scheme = if config.replica_tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let mut view = view::View::new(config.hedge.window);
        // A static list is known at once (health unknown until the first probe).
        if let Discovery::Static(list) = &config.discovery {
            view.set_replicas(list);
        }
        Arc::new(Shared {
            config,
            view: Mutex::new(view),
            metrics: Metrics::default(),
            http,
            scheme,
            rng: Mutex::new(fastrand::Rng::new()),
            loads: Mutex::new(HashMap::new()),
            grpc_clients: Mutex::new(HashMap::new()),
        })
    }

    /// Usable replicas now.
    pub fn up_count(&self) -> usize {
        self.view
            .lock()
            .expect("view lock")
            .up_count(std::time::Instant::now())
    }
}

/// An error with its causes (`client error (Connect): invalid peer certificate: ...`):
/// hyper's own message alone does not say why a connection failed.
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// The connector to the replicas: TCP with no delay, and TLS when configured (HTTP/1.1
/// for forwarding and polls, or HTTP/2 for the gRPC channels, by ALPN). Without TLS it
/// connects plain `http` URIs only; with TLS, `https` only, so nothing goes out in
/// clear by mistake.
pub(crate) fn connector(tls: Option<&ReplicaTls>, http2: bool) -> HttpsConnector<HttpConnector> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let builder = match tls {
        Some(tls) => {
            let b = HttpsConnectorBuilder::new()
                .with_tls_config((*tls.client).clone())
                .https_only();
            match &tls.server_name {
                Some(name) => {
                    b.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
                }
                None => b,
            }
        }
        // No root is trusted: an `https` URI cannot even be built for a replica here.
        None => HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http(),
    };
    if http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    }
}

/// Serves the router on the two listeners until `shutdown` resolves; the poller runs
/// beside them.
pub async fn run(
    config: RouterConfig,
    http_listener: tokio::net::TcpListener,
    grpc_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Shared::new(config);
    let poller = tokio::spawn(poll::run(shared.clone()));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until = move || {
        let mut s = stopping.clone();
        async move {
            let _ = s.wait_for(|&v| v).await;
        }
    };
    let app = http::app(shared.clone());
    let listener = axum::serve::ListenerExt::tap_io(http_listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(listener, app).with_graceful_shutdown(until());
    let grpc_server = async {
        match grpc_listener {
            Some(l) => grpc::serve(shared.clone(), l, until())
                .await
                .map_err(std::io::Error::other),
            None => Ok(()),
        }
    };
    let result = tokio::try_join!(http_server, grpc_server).map(|_| ());
    poller.abort();
    result
}

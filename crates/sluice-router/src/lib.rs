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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use config::{
    parse_replica, Discovery, HedgeConfig, HedgeDelay, OutlierConfig, PlacementConfig, RouterConfig,
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

type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// One lock per (replica, model) pair, so one load of a model runs on a replica at a time.
type LoadLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// What every handler and the poller share.
pub struct Shared {
    pub config: RouterConfig,
    pub view: Mutex<view::View>,
    pub metrics: Metrics,
    pub(crate) http: HttpClient,
    pub(crate) rng: Mutex<fastrand::Rng>,
    pub(crate) loads: LoadLocks,
    grpc_clients: Mutex<HashMap<String, grpc::Client>>,
}

impl Shared {
    pub fn new(config: RouterConfig) -> Arc<Shared> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
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

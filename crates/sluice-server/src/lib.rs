//! Protocol adapters: the KServe v2 / Open Inference Protocol over HTTP (axum) and
//! gRPC (tonic, in [`grpc`]), with Triton's binary-tensor, model-configuration and
//! repository-index extensions.
//!
//! Key decision: this crate is the only one that knows wire shapes. Handlers decode
//! JSON, binary bodies and protobuf messages into `sluice_core` types (through the
//! rules both protocols share in `wire`), hand them to the runtime, and encode the
//! answer; every error leaves with the HTTP status ([`status_of`]) or gRPC code
//! ([`grpc_code_of`]) its [`ErrorKind`](sluice_core::ErrorKind) maps to. [`app`]
//! builds the router without binding a socket, so handler tests drive it with
//! `tower::ServiceExt::oneshot`.

mod codec;
mod error;
pub mod grpc;
mod health;
mod infer;
mod listener;
mod logging;
mod metrics;
mod models;
mod repository;
mod stats;
mod trace;
mod wire;

use axum::Router;
use sluice_runtime::Runtime;

pub use error::{grpc_code_of, grpc_status, status_of, ApiError};
pub use grpc::{grpc_service, serve_grpc, GrpcConfig, GrpcService};
pub use listener::LimitedListener;
pub use logging::{LogControl, LogHandle};
pub use metrics::{metrics_app, render as render_metrics, MetricsConfig};
pub use trace::{parse_traceparent, TraceContextLayer, TraceParent};

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// The live log filter behind `v2/logging`; without one that endpoint answers 503.
    pub log_control: Option<LogHandle>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024 * 1024,
            log_control: None,
        }
    }
}

/// State shared by the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub runtime: Runtime,
    pub config: HttpConfig,
}

/// The v2 HTTP router over a runtime.
pub fn app(runtime: Runtime, config: HttpConfig) -> Router {
    let state = AppState { runtime, config };
    Router::new()
        .merge(health::router())
        .merge(models::router())
        .merge(repository::router())
        .merge(infer::router())
        .merge(stats::router())
        .merge(logging::router())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
        .layer(TraceContextLayer)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish. At most `max_connections` connections are open at once (0: no
/// limit); see [`LimitedListener`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        LimitedListener::new(listener, max_connections),
        router.into_make_service(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

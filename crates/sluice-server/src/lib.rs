//! Protocol adapters: the KServe v2 / Open Inference Protocol over HTTP (axum),
//! with Triton's binary-tensor, model-configuration and repository-index extensions.
//!
//! Key decision: this crate is the only one that knows wire shapes. Handlers decode
//! JSON and binary bodies into `sluice_core` types, hand them to the runtime, and
//! encode the answer; every error leaves as `{"error": "..."}` with the status its
//! [`ErrorKind`](sluice_core::ErrorKind) maps to. [`app`] builds the router without
//! binding a socket, so handler tests drive it with `tower::ServiceExt::oneshot`.

mod codec;
mod error;
mod health;
mod infer;
mod models;

use std::net::SocketAddr;

use axum::Router;
use sluice_runtime::Runtime;

pub use error::ApiError;

/// Settings of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024 * 1024,
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
        .merge(infer::router())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

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

pub mod auth;
mod body;
mod body_budget;
mod bounded;
mod codec;
mod data;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
mod health;
mod infer;
mod instances;
pub mod limits;
mod listener;
mod load;
mod logging;
mod metrics;
mod models;
mod raw;
mod repository;
mod serve;
mod stats;
pub mod tls;
mod trace;
mod wire;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sluice_runtime::Runtime;

pub use body_budget::{BodyBudget, DEFAULT_BODY_BUDGET_BYTES};
pub use error::{grpc_code_of, grpc_status, status_of, ApiError};
pub use grpc::{grpc_service, serve_grpc, serve_grpc_with, GrpcConfig, GrpcLimits, GrpcService};
pub use listener::LimitedListener;
pub use logging::{LogControl, LogHandle};
pub use metrics::{metrics_app, render as render_metrics, MetricsConfig};
pub use serve::{serve_http, ServeOptions};
pub use trace::{parse_traceparent, TraceContextLayer, TraceParent};

/// Settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// The live log filter behind `v2/logging`; without one that endpoint answers 503.
    pub log_control: Option<LogHandle>,
    /// Who may call what (`None`: everything open); see [`auth`].
    pub auth: Option<std::sync::Arc<auth::AuthPolicy>>,
    /// Request-body bytes all requests in flight may hold, shared with gRPC
    /// (`None`: no bound); see [`BodyBudget`].
    pub body_budget: Option<BodyBudget>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024 * 1024,
            log_control: None,
            auth: None,
            body_budget: None,
        }
    }
}

/// State shared by the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub runtime: Runtime,
    pub config: HttpConfig,
}

/// The v2 HTTP router over a runtime. Every error it answers is JSON
/// (`{"error": ...}`), axum's own rejections included, and every body it reads is
/// bounded by `max_body_bytes`.
pub fn app(runtime: Runtime, config: HttpConfig) -> Router {
    let limit = config.max_body_bytes;
    let auth = config.auth.clone();
    let budget = config.body_budget.clone();
    let state = AppState { runtime, config };
    Router::new()
        .merge(health::router())
        .merge(models::router())
        .merge(repository::router())
        .merge(infer::router())
        .merge(stats::router())
        .merge(logging::router())
        .merge(load::router())
        .merge(instances::router())
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            budget,
            body_budget::http_layer,
        ))
        .layer(tower::util::option_layer(auth.map(auth::HttpAuthLayer)))
        .layer(TraceContextLayer)
}

/// Turns an error response that is not JSON (axum's extractor rejections, 405s,
/// body-limit 413s) into `{"error": "<its text>"}` with the same status and headers,
/// so a client always gets an error body it can read.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut json = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    json
}

/// Bounds on the HTTP connections one server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (0: no limit); see [`LimitedListener`].
    pub max_connections: usize,
    /// A request head (request line and headers) must arrive whole within this time,
    /// counted from the accept and, on a keep-alive connection, from the end of the
    /// previous response; else the connection is closed. Idle and slowloris clients
    /// therefore cannot hold the `max_connections` slots. `None`: no bound.
    pub header_read_timeout: Option<std::time::Duration>,
}

/// hyper's own default for `header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl ConnectionLimits {
    pub fn new(max_connections: usize) -> Self {
        ConnectionLimits {
            max_connections,
            header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish. At most `max_connections` connections are open at once (0: no
/// limit); see [`LimitedListener`]. Request heads must arrive within
/// [`DEFAULT_HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        router,
        ConnectionLimits::new(max_connections),
        shutdown,
    )
    .await
}

/// [`serve`] with the given [`ConnectionLimits`], plain HTTP, and no bound on how
/// long open connections may take to finish after `shutdown` (see [`serve_http`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_http(
        listener,
        router,
        ServeOptions { limits, tls: None },
        shutdown,
        std::future::pending(),
    )
    .await
}

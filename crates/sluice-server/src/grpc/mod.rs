//! The KServe v2 protocol over gRPC (`inference.GRPCInferenceService`, tonic) and the
//! standard health service (`grpc.health.v1.Health`, tonic-health).
//!
//! Requests decode into the same core types as HTTP requests and reach the same
//! [`Runtime`]; errors leave with the gRPC code of their kind
//! ([`grpc_code_of`](crate::grpc_code_of)). Messages past
//! [`GrpcConfig::max_message_bytes`] are refused both ways with `RESOURCE_EXHAUSTED`:
//! requests by tonic's decoder (whose answer is rewritten from `OUT_OF_RANGE` to the
//! code gRPC itself uses for this), responses before they are encoded. The health
//! service reports `SERVING` for the server (`""`) and for
//! `inference.GRPCInferenceService` while the runtime is ready, `NOT_SERVING`
//! otherwise and from the moment shutdown begins.

mod config;
pub(crate) mod convert;
pub(crate) mod guard;
mod service;
mod stream;
mod tls_incoming;

use std::future::Future;
use std::time::Duration;

use sluice_core::{Error, ErrorKind};
use sluice_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use sluice_proto::INFERENCE_SERVICE_NAME;
use sluice_runtime::Runtime;
use tonic::codegen::http;
use tonic::{Code, Status};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::error::grpc_status;
use service::Inference;

/// How often the health service looks at the runtime's readiness.
const READINESS_POLL: Duration = Duration::from_millis(250);

/// Settings of the gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Largest message accepted or sent, in bytes; larger ones get `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// The live log filter behind `LogSettings`; without one it answers `UNAVAILABLE`.
    pub log_control: Option<crate::LogHandle>,
    /// Who may call what (`None`: everything open); see [`crate::auth`].
    pub auth: Option<std::sync::Arc<crate::auth::AuthPolicy>>,
    /// Bounds on connections and HTTP/2 streams.
    pub limits: GrpcLimits,
    /// Request-body bytes all calls in flight may hold, shared with HTTP (`None`: no
    /// bound); see [`crate::BodyBudget`].
    pub body_budget: Option<crate::BodyBudget>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_message_bytes: 64 * 1024 * 1024,
            log_control: None,
            auth: None,
            limits: GrpcLimits::default(),
            body_budget: None,
        }
    }
}

/// Bounds on the gRPC listener's connections and their HTTP/2 streams.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcLimits {
    /// Connections open at once (0: no limit); past it new ones wait in the backlog.
    pub max_connections: usize,
    /// A connection that sends no byte (no HTTP/2 preface, no TLS hello) this long
    /// after the accept is closed. `None`: no bound.
    pub first_byte_timeout: Option<Duration>,
    /// Calls open at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Largest header list (metadata) of one call, in bytes
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`). A call a little past it is refused on its
    /// own; one far past it (more `CONTINUATION` frames than the limit allows) ends
    /// the connection, h2's defence against the CONTINUATION flood.
    pub max_header_list_bytes: u32,
    /// HTTP/2 keep-alive pings after this much silence; a peer that does not answer
    /// within `keepalive_timeout` is disconnected. `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    /// How long a pinged peer has to answer.
    pub keepalive_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_connections: 4096,
            first_byte_timeout: Some(crate::DEFAULT_HEADER_READ_TIMEOUT),
            max_concurrent_streams: 1024,
            max_header_list_bytes: 256 << 10,
            keepalive_interval: Some(Duration::from_secs(7200)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// The gRPC services over a runtime, ready to be served by [`serve_grpc`].
pub struct GrpcService {
    runtime: Runtime,
    max_message_bytes: usize,
    shutdown: tokio::sync::watch::Sender<bool>,
    inference: GrpcInferenceServiceServer<Inference>,
    health: HealthServer<HealthService>,
    reporter: HealthReporter,
    auth: Option<std::sync::Arc<crate::auth::AuthPolicy>>,
    limits: GrpcLimits,
    body_budget: Option<crate::BodyBudget>,
}

/// Builds the inference and health services over `runtime`, binding nothing.
pub fn grpc_service(runtime: Runtime, config: GrpcConfig) -> GrpcService {
    let limit = config.max_message_bytes;
    let auth = config.auth.clone();
    let limits = config.limits.clone();
    let body_budget = config.body_budget.clone();
    let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
    let inference = GrpcInferenceServiceServer::new(Inference {
        runtime: runtime.clone(),
        max_message_bytes: limit,
        shutdown: shutting_down,
        log_control: config.log_control,
    })
    .max_decoding_message_size(limit)
    // Responses are checked against the limit before encoding, with a clearer
    // message; tonic's own check stays as a backstop a little above it.
    .max_encoding_message_size(limit.saturating_add(64));
    let reporter = HealthReporter::new();
    let health = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    GrpcService {
        runtime,
        max_message_bytes: limit,
        shutdown,
        inference,
        health,
        reporter,
        auth,
        limits,
        body_budget,
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets in-flight
/// calls finish. Health turns `NOT_SERVING` as soon as `shutdown` resolves, and open
/// streams end with `UNAVAILABLE` once their requests in flight are answered.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    service: GrpcService,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_grpc_with(listener, service, None, shutdown, std::future::pending()).await
}

/// [`serve_grpc`] with optional TLS, and a bound: once `force_close` resolves
/// (after `shutdown`), connections still open are no longer waited for and this
/// returns, so the process can exit.
pub async fn serve_grpc_with(
    listener: tokio::net::TcpListener,
    service: GrpcService,
    tls: Option<crate::tls::TlsReloader>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    force_close: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let GrpcService {
        runtime,
        max_message_bytes,
        shutdown: end_streams,
        inference,
        health,
        reporter,
        auth,
        limits,
        body_budget,
    } = service;
    let mut ready = runtime.ready();
    set_health(&reporter, ready).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(READINESS_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return,
                }
                let now = runtime.ready();
                if now != ready {
                    ready = now;
                    set_health(&reporter, ready).await;
                }
            }
        })
    };
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
        let _ = end_streams.send(true);
        let _ = stop.send(());
        let _ = follower.await;
        set_health(&reporter, false).await;
    };
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(limits.keepalive_interval)
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(crate::TraceContextLayer)
        .layer(tower::util::option_layer(
            auth.map(crate::auth::GrpcAuthLayer),
        ))
        .layer(crate::body_budget::GrpcBudgetLayer(body_budget))
        .layer(tower::util::MapRequestLayer::new(
            move |request: http::Request<tonic::body::Body>| {
                guard::guard_request(request, max_message_bytes)
            },
        ))
        .layer(tower::util::MapResponseLayer::new(
            move |mut response: http::Response<tonic::body::Body>| {
                rewrite_size_error(response.headers_mut(), max_message_bytes);
                response
            },
        ))
        .add_service(health)
        .add_service(inference);
    let served = async move {
        let incoming = tls_incoming::incoming(listener, tls, &limits);
        server
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    };
    let bound = async move {
        if signalled_rx.await.is_ok() {
            force_close.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = served => result,
        () = bound => {
            tracing::warn!("closing the gRPC connections still open at the exit timeout");
            Ok(())
        }
    }
}

async fn set_health(reporter: &HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(INFERENCE_SERVICE_NAME, status)
        .await;
}

/// The error for a message of `len` bytes past the limit.
pub(crate) fn too_large(what: &str, len: usize, limit: usize) -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!(
            "the {what} message is {len} bytes, over the limit of {limit} bytes \
             (--grpc-max-message-bytes)"
        ),
    )
}

/// Tonic reports a message past the size limit as `OUT_OF_RANGE`; gRPC's own
/// implementations, and so its clients, use `RESOURCE_EXHAUSTED`. Other statuses
/// pass unchanged.
pub(crate) fn transport_status(status: Status, limit: usize) -> Status {
    let message = status.message();
    if status.code() != Code::OutOfRange || !message.contains("message length too large") {
        return status;
    }
    let what = if message.contains("encoded") {
        "response"
    } else {
        "request"
    };
    let len = message
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    let error = match len {
        Some(len) => too_large(what, len, limit),
        None => Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the {what} message is over the limit of {limit} bytes (--grpc-max-message-bytes)"
            ),
        ),
    };
    grpc_status(&error)
}

/// Applies [`transport_status`] to a trailers-only response (how tonic answers a
/// request it could not decode).
fn rewrite_size_error(headers: &mut http::HeaderMap, limit: usize) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::OutOfRange {
        let _ = transport_status(status, limit).add_header(headers);
    }
}

#[cfg(test)]
mod tests;

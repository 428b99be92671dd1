use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_core::{Error, ErrorKind};

/// An error on its way to an HTTP client: `{"error": "<message>"}` with the status
/// of its kind. Internal failures are logged in full and the message is kept.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError(Error::not_found(message))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError(Error::invalid(message))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::Unsupported | ErrorKind::Cancelled => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code of an error kind: the categories of [`status_of`] in gRPC's words.
/// A message past the size limit is `RESOURCE_EXHAUSTED`, as gRPC itself answers.
pub fn grpc_code_of(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::Unsupported => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::ResourceExhausted | ErrorKind::PayloadTooLarge => tonic::Code::ResourceExhausted,
        ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorKind::Cancelled => tonic::Code::Cancelled,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// Logs an error that leaves for a client, whichever the protocol: server-side
/// failures (5xx) as warnings, the client's own mistakes at debug level.
pub(crate) fn log_error(error: &Error) {
    if status_of(error.kind()).is_server_error() {
        tracing::warn!(kind = %error.kind(), error = %error, "request failed");
    } else {
        tracing::debug!(kind = %error.kind(), error = %error, "request rejected");
    }
}

/// An error on its way to a gRPC client: the status of its kind, with its message.
pub fn grpc_status(error: &Error) -> tonic::Status {
    log_error(error);
    tonic::Status::new(grpc_code_of(error.kind()), error.message())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind());
        log_error(&self.0);
        (
            status,
            Json(serde_json::json!({ "error": self.0.message() })),
        )
            .into_response()
    }
}

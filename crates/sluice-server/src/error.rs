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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind());
        if status.is_server_error() {
            tracing::warn!(kind = %self.0.kind(), error = %self.0, "request failed");
        } else {
            tracing::debug!(kind = %self.0.kind(), error = %self.0, "request rejected");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.0.message() })),
        )
            .into_response()
    }
}

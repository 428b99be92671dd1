use std::fmt;

/// The stable category of an [`Error`]. It picks the HTTP status, the gRPC code
/// and the metrics label, so it must not change meaning once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not match the model (HTTP 400).
    InvalidArgument,
    /// Unknown model or version (HTTP 404).
    NotFound,
    /// The model exists but cannot serve now: failed to load, loading, shutting down (HTTP 503).
    Unavailable,
    /// A queue is full; retry later (HTTP 429).
    ResourceExhausted,
    /// The request body is larger than the configured limit (HTTP 413).
    PayloadTooLarge,
    /// The request's deadline passed before it could be answered (HTTP 504).
    DeadlineExceeded,
    /// The request was cancelled by its client.
    Cancelled,
    /// Something the request asks for is not supported by this server or model (HTTP 400).
    Unsupported,
    /// The engine failed while running a valid request, or another server-side fault (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// A short, stable label (`invalid_argument`), used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that can reach a client: a stable kind and a message written for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// `Result` with Sluice's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The same error with `context: ` put in front of its message.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

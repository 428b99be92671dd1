//! Model repositories in object storage: `--model-repository s3://BUCKET/PREFIX`
//! (and Triton's `s3://HOST:PORT/BUCKET/PREFIX`), mixed with local folders.
//!
//! Key decision: the runtime never talks to a store. This crate mirrors each remote
//! repository into a local cache and shows every repository, local or remote, to
//! the runtime as one folder of symlinks (the *view*), so the runtime's one code path
//! (read a folder, fingerprint it, load, hot swap) serves buckets too. Downloads are
//! streamed to disk in parallel, checked (size, and the listed ETag through
//! `If-Match`), and become visible only by renames: an object's bytes, then a
//! complete model folder, then the view's link to it. A model folder changes in the
//! view only when two listings in a row agree on it, the same debounce as a local
//! poll, so an upload in progress is never loaded. A store that does not answer
//! keeps what was downloaded serving, is retried with backoff, and its reason is
//! reported per model through [`RepositorySet::notes`], with secrets removed.

mod cache;
mod set;
mod store;
mod url;

pub use set::{Fetched, Note, RepositorySet, SetConfig, SyncMode};
pub use store::{ObjectInfo, Redactor, Remote, StoreSettings};
pub use url::{RepositoryLocation, S3Url};

/// What can go wrong with a remote repository. Texts never hold credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A `--model-repository` value that is not a usable URL.
    #[error("{0}")]
    InvalidUrl(String),
    /// The store cannot be reached, refuses the credentials, or has no such bucket.
    #[error("{0}")]
    Store(String),
    /// One model cannot be used (a bad key, an oversized or vanished object).
    #[error("{0}")]
    Model(String),
    /// The local cache cannot be written.
    #[error("{0}")]
    Cache(String),
}

impl Error {
    /// A stable name of the kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidUrl(_) => "invalid_url",
            Error::Store(_) => "store",
            Error::Model(_) => "model",
            Error::Cache(_) => "cache",
        }
    }
}

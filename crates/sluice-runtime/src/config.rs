//! The runtime's settings: what the binary validates and hands in.

use std::path::PathBuf;
use std::time::Duration;

use crate::{CacheConfig, RepositoryOptions};

/// Settings of the runtime, validated by the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub repository: PathBuf,
    pub repository_options: RepositoryOptions,
    /// Backend for models that do not name one (and for `onnxruntime_onnx` models
    /// when ONNX Runtime is not built in).
    pub default_backend: String,
    /// Threads per instance for one run, unless the model's `intra_op_thread_count`
    /// parameter says otherwise.
    pub intra_op_threads: usize,
    /// Requests that may wait per model version before new ones are rejected,
    /// unless the model's `default_queue_policy.max_queue_size` says otherwise.
    pub queue_capacity: usize,
    /// Triton's strict readiness: the server is ready only when every model is.
    pub strict_readiness: bool,
    /// Which models load when, and how much memory they may take.
    pub lifecycle: LifecycleConfig,
    /// For tests: a folder of named pipes that gate the runs of the models they
    /// name (see `--test-execution-gates`); `None` in production.
    pub execution_gates: Option<PathBuf>,
    /// The response cache (`--cache-config`); models opt in with `response_cache`.
    pub cache: CacheConfig,
}

/// Triton's model control modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Load every model at start; the set never changes.
    #[default]
    None,
    /// Load every model at start, then apply what changes on disk.
    Poll,
    /// Load only the start-up models; the repository API loads and unloads.
    Explicit,
}

/// How the set of loaded models changes over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    pub mode: ControlMode,
    /// Explicit mode: the models to load at start (`*` for all).
    pub startup_models: Vec<String>,
    /// Poll mode: how often the repository is scanned. A change is applied once two
    /// scans in a row see the same files (debounce).
    pub poll_interval: Duration,
    /// Resident memory the loaded models may take together, in bytes. With a budget,
    /// models also load on first use and the least recently used idle ones are
    /// unloaded to make room.
    pub memory_budget: Option<u64>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            mode: ControlMode::None,
            startup_models: Vec::new(),
            poll_interval: Duration::from_secs(15),
            memory_budget: None,
        }
    }
}

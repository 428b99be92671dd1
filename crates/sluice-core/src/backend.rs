use std::path::Path;
use std::sync::Arc;

use crate::{BytesContent, ModelConfig, Result, Tensor};

/// An execution engine (tract, ONNX Runtime, ...). It turns a model file into a
/// [`LoadedModel`], prepared once: parsed, typed and optimized.
pub trait Backend: Send + Sync {
    /// The name used in `backend: "..."` and in logs.
    fn name(&self) -> &'static str;

    /// Loads and prepares a model. The config is already validated; the backend checks
    /// that the file's inputs and outputs agree with it.
    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>>;

    /// What the engine accepts in `BYTES` input elements; requests are checked
    /// against it before they are queued. Default: any bytes.
    fn bytes_content(&self) -> BytesContent {
        BytesContent::Any
    }
}

/// What a backend needs to load one version of one model.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec<'a> {
    pub model_name: &'a str,
    pub version: u64,
    pub model_file: &'a Path,
    pub config: &'a ModelConfig,
}

impl LoadSpec<'_> {
    /// An error naming `<version>/<file>` when the model file is missing, so every
    /// backend reports it the same way.
    pub fn check_file_exists(&self) -> Result<()> {
        if self.model_file.is_file() {
            return Ok(());
        }
        let file = self
            .model_file
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        Err(crate::Error::invalid(format!(
            "model file '{}/{file}' does not exist",
            self.version
        )))
    }
}

/// A prepared model. Instances share whatever the engine allows them to (weights,
/// optimized plans); each instance owns its mutable run state.
pub trait LoadedModel: Send + Sync {
    fn instance(&self, options: &InstanceOptions) -> Result<Box<dyn Instance>>;

    /// A way to run this model on the caller's thread, for models whose runs are so
    /// cheap (microseconds, no engine state) that a hand-over to an instance thread
    /// would cost more than the run; `None` (the default) for every engine.
    fn inline(&self) -> Option<Arc<dyn InlineRun>> {
        None
    }
}

/// A run with no state of its own, safe to call from any thread at once (see
/// [`LoadedModel::inline`]). Same contract as [`Instance::run`].
pub trait InlineRun: Send + Sync {
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>>;
}

/// Per-instance settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOptions {
    /// Index of this instance within the model's instance pool.
    pub index: usize,
    /// Threads the engine may use inside one run (1 = run on the instance thread only).
    pub intra_op_threads: usize,
}

/// One runnable copy of a model, driven by exactly one instance thread.
pub trait Instance: Send {
    /// Runs a batch. `inputs` holds one tensor per model input in the config's
    /// order (dimension 0 is the batch when the model batches). Returns one
    /// tensor per configured output, in the config's order.
    ///
    /// A failure of the engine on this batch is an `Err`, never a panic.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>>;
}

/// The message of a caught panic, for the error that replaces it at a backend boundary.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Runs `f`, turning a panic inside it into an internal error
/// ("{engine} panicked while {action}: ..."), for use at a backend boundary.
pub fn catch_panics<T>(engine: &str, action: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(crate::Error::internal(format!(
            "{engine} panicked while {action}: {}",
            panic_message(panic.as_ref())
        )))
    })
}

//! What the runtime answers about its models: index rows, metadata, statistics,
//! and what a load request may carry. Plain values, copied out of the registry.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::ModelSignature;

use crate::PoolStats;

/// The state of a model or version, as the repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Unavailable,
    Loading,
    Unloading,
}

impl ModelState {
    /// Triton's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Unloading => "UNLOADING",
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: Option<u64>,
    pub state: ModelState,
    pub reason: String,
    /// Ready versions: how long loading (engine, instances, warmup) took.
    pub load_duration: Option<Duration>,
    /// Ready versions: the memory loading took (see the `build` module for how it is measured).
    pub memory_bytes: Option<u64>,
    /// Ready versions: instances serving now and intra-op threads of each.
    pub instances: Option<(usize, usize)>,
}

/// Metadata of a model (or one of its versions).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub name: String,
    /// Ready versions, ascending.
    pub versions: Vec<u64>,
    pub platform: String,
    pub signature: Arc<ModelSignature>,
}

/// Statistics of one ready model version.
#[derive(Debug, Clone)]
pub struct VersionStats {
    pub name: String,
    pub version: u64,
    pub stats: Arc<PoolStats>,
    /// Requests waiting in its queue now.
    pub queue_len: usize,
    /// How long loading it took (engine load, instances, scheduler, warmup).
    pub load_duration: Duration,
    /// The memory loading it took (measured; see the `build` module).
    pub memory_bytes: u64,
    /// Instances serving now, and what they run (see [`crate::InstanceView`]).
    pub instances: crate::InstanceView,
}

/// What a load request may carry besides the model name (Triton's load parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// A config in Triton's JSON form, used instead of the one on disk.
    pub config: Option<String>,
    /// Model files, `<version>/<file name>` → bytes; they replace the model's folder
    /// (a config must be given with them, as Triton requires).
    pub files: Vec<(String, Vec<u8>)>,
}

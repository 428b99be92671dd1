//! The runtime: the registry of models the server answers for. It reads the
//! repository, picks a backend per model, loads each selected version into an
//! instance pool, routes validated requests to the right pool, and changes the set
//! of loaded models while traffic flows (control modes, load/unload, hot swap,
//! memory budget; see the `lifecycle` and `budget` modules).
//!
//! Key decisions: each model and each version carries its own state and reason, and
//! a model's serving state is one immutable `Loaded` (module `build`) behind an
//! `Arc` that a change replaces whole. A request takes an `Arc` of the version it
//! runs on, so a swap or unload never pulls a pool from under it: the old pool is
//! dropped (drained, then joined) only once no request holds it. A request for a
//! model that is loading waits for it (bounded by its timeout) instead of failing.
//! Nothing here panics on what it reads from disk; backends are injected by the
//! binary, so this crate never names an engine.

mod backends;
mod budget;
mod build;
mod cache;
mod config;
mod describe;
mod ensemble;
mod entry;
mod family;
mod gate;
mod infer;
mod lifecycle;
mod lookup;
mod poll;
pub mod process;
mod remote;
mod scale;
mod seed;
mod split;
mod stats;
mod views;
mod warmup;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sluice_core::Error;
use sluice_repository::Repository;
pub use sluice_repository::RepositoryOptions;
pub use sluice_scheduler::{Histogram, HistogramSnapshot, Outcome, PoolStats};

pub use backends::Backends;
pub use cache::{CacheConfig, CacheStats, LocalCacheConfig, RedisCacheConfig, RedisTls, Secret};
pub use config::{ControlMode, LifecycleConfig, RuntimeConfig};
pub(crate) use entry::{Absent, Entry, Shell, State};
pub use family::VariantChoices;
pub use remote::RemoteRepositories;
pub use scale::{AutoscaleConfig, InstanceView, AUTOSCALE_PARAMETER};
pub use views::{IndexEntry, LoadOptions, ModelMetadata, ModelState, VersionStats};

/// The model registry. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    backends: Backends,
    repository: Repository,
    models: RwLock<BTreeMap<String, Entry>>,
    /// Bumped after every change of a model's state; requests waiting for a load watch it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Serializes loads, so memory measurements and budget decisions see one at a time.
    loader: Mutex<()>,
    /// LRU clock: ticks on every request.
    clock: AtomicU64,
    /// The last eviction could not get under the budget (every other model was busy):
    /// the next finished request retries it.
    over_budget: AtomicBool,
    /// First memory measurement of each (model, version) file; see `build`.
    measured: Mutex<std::collections::HashMap<(String, u64), (sluice_core::FileIdentity, u64)>>,
    /// Drain began: readiness is false, requests are still accepted.
    draining: AtomicBool,
    shutting_down: AtomicBool,
    /// The response cache, when one is configured.
    cache: Option<cache::ResponseCache>,
    /// Remote repositories mirrored into the repository folder (see `remote`).
    remote: std::sync::OnceLock<Arc<dyn remote::RemoteRepositories>>,
    /// Variant families (see `family`).
    families: family::Families,
}

impl Runtime {
    pub(crate) fn models(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn models_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn notify(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn may_autoload_unknown(&self) -> bool {
        self.inner.config.lifecycle.memory_budget.is_some()
            && self.inner.config.lifecycle.mode != ControlMode::Explicit
    }

    /// The server process is up.
    pub fn live(&self) -> bool {
        true
    }

    /// Readiness turns false while requests are still accepted: the first step of a
    /// drain, so load balancers stop routing here before [`Runtime::begin_shutdown`]
    /// refuses new work.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Stops accepting requests (readiness turns false). Queued requests still finish.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.notify();
    }

    /// Drains and stops every instance pool. Blocking.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let _loads = self
            .inner
            .loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let models = std::mem::take(&mut *self.models_mut());
        drop(models);
    }
}

/// The cores this process may run on (its CPU affinity and cgroup quota: `taskset`,
/// a container's cpuset or limit), read once.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

// The texts of the lookup errors follow Triton's ("Request for unknown model: ..."),
// whose clients and example scripts match on that prefix; Sluice adds the reason.

/// A model the repository does not have (404).
pub(crate) fn unknown_model(name: &str) -> Error {
    Error::not_found(format!("Request for unknown model: '{name}' is not found"))
}

/// A known model with no version that can serve now (503), and why.
pub(crate) fn unavailable(name: &str, reason: &str) -> Error {
    Error::unavailable(format!(
        "Request for unknown model: '{name}' has no available versions ({reason})"
    ))
}

/// A version the model does not have (404).
pub(crate) fn no_version(name: &str, version: u64) -> Error {
    Error::not_found(format!(
        "Request for unknown model: '{name}' version {version} is not found"
    ))
}

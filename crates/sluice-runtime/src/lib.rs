//! The runtime: the registry of models the server answers for. It reads the
//! repository, picks a backend per model, loads each selected version into an
//! instance pool, routes validated requests to the right pool, and changes the set
//! of loaded models while traffic flows (control modes, load/unload, hot swap,
//! memory budget; see [`lifecycle`](crate::lifecycle)).
//!
//! Key decisions: each model and each version carries its own state and reason, and
//! a model's serving state is one immutable [`Loaded`](build::Loaded) behind an
//! `Arc` that a change replaces whole. A request takes an `Arc` of the version it
//! runs on, so a swap or unload never pulls a pool from under it: the old pool is
//! dropped (drained, then joined) only once no request holds it. A request for a
//! model that is loading waits for it (bounded by its timeout) instead of failing.
//! Nothing here panics on what it reads from disk; backends are injected by the
//! binary, so this crate never names an engine.

mod build;
mod cache;
mod gate;
mod lifecycle;
mod memory;
mod poll;
mod warmup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use sluice_core::{
    Backend, Error, InferRequest, InferResponse, ModelConfig, ModelSignature, Result, Tensor,
};
use sluice_repository::Repository;
pub use sluice_repository::RepositoryOptions;
use sluice_scheduler::JobOptions;
pub use sluice_scheduler::{HistogramSnapshot, Outcome, PoolStats};

use build::{Loaded, Served, VersionSlot};
pub use cache::{CacheConfig, CacheStats, LocalCacheConfig, RedisCacheConfig, Secret};

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

/// Named backends available to the runtime.
#[derive(Clone, Default)]
pub struct Backends {
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
}

impl Backends {
    pub fn new() -> Self {
        Self::default()
    }
    #[must_use]
    pub fn with(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backends.insert(backend.name(), backend);
        self
    }
    fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends.get(name)
    }
    fn names(&self) -> Vec<&'static str> {
        self.backends.keys().copied().collect()
    }
}

/// What a model is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Loading,
    Unloading,
}

/// Why a model has nothing serving.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Absent {
    NotLoaded,
    Unloaded,
    Evicted,
    Failed(String),
}

impl Absent {
    fn reason(&self) -> String {
        match self {
            Absent::NotLoaded => "not loaded".to_owned(),
            Absent::Unloaded => "unloaded".to_owned(),
            Absent::Evicted => {
                "unloaded to stay under the memory budget; loads again on first use".to_owned()
            }
            Absent::Failed(reason) => reason.clone(),
        }
    }
}

/// Config, platform and versions of the last load, kept while a model is evicted so
/// its metadata and config still answer.
struct Shell {
    config: Arc<ModelConfig>,
    platform: String,
    versions: Vec<u64>,
}

/// What metadata and config answers read: from what serves, or from the last load.
struct Described {
    config: Arc<ModelConfig>,
    platform: String,
    /// Every version (ready or not).
    versions: Vec<u64>,
    ready: Vec<u64>,
}

/// A model the registry knows.
struct Entry {
    serving: Option<Arc<Loaded>>,
    phase: Phase,
    /// Why nothing serves (meaningful while `serving` is `None`).
    absent: Absent,
    /// May be loaded on first use (a memory budget is set and it was not unloaded on purpose).
    autoload: bool,
    /// The repository fingerprint of the files the last load attempt read (poll mode).
    fingerprint: Option<u64>,
    shell: Option<Shell>,
}

impl Entry {
    fn new(autoload: bool) -> Entry {
        Entry {
            serving: None,
            phase: Phase::Idle,
            absent: Absent::NotLoaded,
            autoload,
            fingerprint: None,
            shell: None,
        }
    }

    /// Nothing serves, but requests are served through a load on first use (evicted,
    /// or not yet loaded under a memory budget), whether or not that load runs now.
    fn on_demand(&self) -> bool {
        self.serving.is_none()
            && self.autoload
            && matches!(self.absent, Absent::NotLoaded | Absent::Evicted)
    }

    /// Nothing serves but a request may start a load.
    fn startable(&self) -> bool {
        self.serving.is_none()
            && self.phase == Phase::Idle
            && self.autoload
            && matches!(self.absent, Absent::NotLoaded | Absent::Evicted)
    }
}

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
    measured: Mutex<std::collections::HashMap<(String, u64), (build::FileKey, u64)>>,
    /// Drain began: readiness is false, requests are still accepted.
    draining: AtomicBool,
    shutting_down: AtomicBool,
    /// The response cache, when one is configured.
    cache: Option<cache::ResponseCache>,
}

/// Where a request stands with its model.
enum Lookup {
    Ready(Arc<Served>, u64),
    /// A load is under way: wait for a change.
    Wait,
    /// Nothing serves and a load may start.
    Start,
    Fail(Error),
}

impl Runtime {
    fn models(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn models_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn may_autoload_unknown(&self) -> bool {
        self.inner.config.lifecycle.memory_budget.is_some()
            && self.inner.config.lifecycle.mode != ControlMode::Explicit
    }

    /// The server process is up.
    pub fn live(&self) -> bool {
        true
    }

    /// The server accepts inference requests: not draining or shutting down and, with
    /// strict readiness, every loaded model ready (models evicted under the memory
    /// budget, or unloaded on purpose, do not count against it).
    pub fn ready(&self) -> bool {
        if self.inner.draining.load(Ordering::Acquire)
            || self.inner.shutting_down.load(Ordering::Acquire)
        {
            return false;
        }
        if !self.inner.config.strict_readiness {
            return true;
        }
        self.models().values().all(|e| match &e.serving {
            Some(l) => l
                .versions
                .values()
                .all(|v| matches!(v, VersionSlot::Ready(_))),
            None => e.on_demand() || e.absent == Absent::Unloaded,
        })
    }

    /// Every model of the repository (and every loaded version) with its state, the
    /// reason when not ready, and the load time and memory of ready versions.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut names: std::collections::BTreeSet<String> = self
            .inner
            .repository
            .model_names()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let models = self.models();
        names.extend(models.keys().cloned());
        let mut out = Vec::new();
        for name in names {
            let row = |version, state, reason: String| IndexEntry {
                name: name.clone(),
                version,
                state,
                reason,
                load_duration: None,
                memory_bytes: None,
            };
            let Some(e) = models.get(&name) else {
                out.push(row(
                    None,
                    ModelState::Unavailable,
                    Absent::NotLoaded.reason(),
                ));
                continue;
            };
            match &e.serving {
                Some(loaded) => {
                    for (&version, v) in &loaded.versions {
                        out.push(match v {
                            VersionSlot::Ready(s) => IndexEntry {
                                load_duration: Some(s.load_duration),
                                memory_bytes: Some(s.memory_bytes),
                                ..row(Some(version), ModelState::Ready, String::new())
                            },
                            VersionSlot::Failed(r) => {
                                row(Some(version), ModelState::Unavailable, r.clone())
                            }
                        });
                    }
                }
                None => out.push(match e.phase {
                    Phase::Loading => row(None, ModelState::Loading, String::new()),
                    Phase::Unloading => row(None, ModelState::Unloading, String::new()),
                    Phase::Idle => row(None, ModelState::Unavailable, e.absent.reason()),
                }),
            }
        }
        out
    }

    /// Memory taken by the loaded versions together, and the budget if one is set.
    pub fn memory_usage(&self) -> (u64, Option<u64>) {
        let used = self
            .models()
            .values()
            .filter_map(|e| e.serving.as_ref())
            .map(|l| l.memory_bytes())
            .sum();
        (used, self.inner.config.lifecycle.memory_budget)
    }

    /// Where a request for `name` (and `version`) stands, without waiting.
    fn lookup(&self, name: &str, version: Option<u64>) -> Lookup {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Lookup::Fail(Error::unavailable("the server is shutting down"));
        }
        let models = self.models();
        let Some(e) = models.get(name) else {
            if let Err(e) = sluice_repository::check_model_name(name) {
                return Lookup::Fail(e);
            }
            let on_disk = self.inner.repository.root().join(name).is_dir();
            return if on_disk && self.may_autoload_unknown() {
                Lookup::Start
            } else if on_disk {
                Lookup::Fail(unavailable(name, &Absent::NotLoaded.reason()))
            } else {
                Lookup::Fail(unknown_model(name))
            };
        };
        let loading = e.phase == Phase::Loading;
        let Some(loaded) = &e.serving else {
            return match e.phase {
                Phase::Loading => Lookup::Wait,
                Phase::Unloading => Lookup::Fail(unavailable(name, "unloading")),
                Phase::Idle if e.startable() => Lookup::Start,
                Phase::Idle => Lookup::Fail(unavailable(name, &e.absent.reason())),
            };
        };
        let found = match version {
            Some(v) => match loaded.versions.get(&v) {
                Some(VersionSlot::Ready(s)) => Some((Arc::clone(s), v)),
                _ if loading => return Lookup::Wait,
                None => return Lookup::Fail(no_version(name, v)),
                Some(VersionSlot::Failed(reason)) => {
                    return Lookup::Fail(Error::unavailable(format!(
                        "Request for unknown model: '{name}' version {v} is not at ready state ({reason})"
                    )))
                }
            },
            None => loaded.ready().last().map(|(v, s)| (Arc::clone(s), v)),
        };
        match found {
            Some((served, v)) => {
                let tick = self.inner.clock.fetch_add(1, Ordering::Relaxed) + 1;
                loaded.last_used.store(tick, Ordering::Relaxed);
                Lookup::Ready(served, v)
            }
            None if loading => Lookup::Wait,
            None => {
                let reason = loaded
                    .versions
                    .values()
                    .find_map(|s| match s {
                        VersionSlot::Failed(r) => Some(r.as_str()),
                        VersionSlot::Ready(_) => None,
                    })
                    .unwrap_or("no version is ready");
                Lookup::Fail(unavailable(name, reason))
            }
        }
    }

    /// The version a request runs on: at once when it is ready; after the load when
    /// the model is loading or must first be (re)loaded; an error when its `timeout`
    /// passes first.
    async fn acquire(
        &self,
        name: &str,
        version: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Served>, u64)> {
        // The common case, a loaded model, needs no subscription to changes.
        if let Lookup::Ready(served, v) = self.lookup(name, version) {
            return Ok((served, v));
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // Subscribed before looking again, so a change in between is not missed.
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.borrow_and_update();
            match self.lookup(name, version) {
                Lookup::Ready(served, v) => return Ok((served, v)),
                Lookup::Fail(e) => return Err(e),
                Lookup::Start => self.start_autoload(name),
                Lookup::Wait => {}
            }
            let changed = match deadline {
                None => changes.changed().await,
                Some(d) => match tokio::time::timeout_at(d, changes.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => {
                        return Err(Error::new(
                            sluice_core::ErrorKind::DeadlineExceeded,
                            format!(
                                "model '{name}' was still loading when the request's timeout of {} ms passed",
                                timeout.unwrap_or_default().as_millis()
                            ),
                        ))
                    }
                },
            };
            if changed.is_err() {
                return Err(Error::unavailable("the server is shutting down"));
            }
        }
    }

    /// Checks that a model (and version) can serve now or after a load it may start,
    /// without running anything.
    pub fn check_servable(&self, name: &str, version: Option<u64>) -> Result<()> {
        match self.lookup(name, version) {
            Lookup::Fail(e) => Err(e),
            Lookup::Ready(..) | Lookup::Wait | Lookup::Start => Ok(()),
        }
    }

    /// Whether a model (or one version) can serve: ready, or loadable on first use.
    /// Unknown model or version: `NotFound`.
    pub fn model_ready(&self, name: &str, version: Option<u64>) -> Result<bool> {
        match self.lookup(name, version) {
            Lookup::Ready(..) | Lookup::Start => Ok(true),
            // Reloading after an eviction is invisible to clients; other loads are not ready yet.
            Lookup::Wait => Ok(self.models().get(name).is_some_and(Entry::on_demand)),
            Lookup::Fail(e) if e.kind() == sluice_core::ErrorKind::NotFound => Err(e),
            Lookup::Fail(_) => Ok(false),
        }
    }

    /// Config, platform and versions (all, ready or not) of a model, from what serves
    /// or, while evicted, from its last load.
    fn describe(&self, name: &str) -> Result<Described> {
        let models = self.models();
        let Some(e) = models.get(name) else {
            sluice_repository::check_model_name(name)?;
            return Err(match self.lookup_unknown(name) {
                true => unavailable(name, &Absent::NotLoaded.reason()),
                false => unknown_model(name),
            });
        };
        match (&e.serving, &e.shell) {
            (Some(l), _) => Ok(Described {
                config: Arc::clone(&l.config),
                platform: l.platform.clone(),
                versions: l.versions.keys().copied().collect(),
                ready: l.ready().map(|(v, _)| v).collect(),
            }),
            (None, Some(s)) if e.autoload => Ok(Described {
                config: Arc::clone(&s.config),
                platform: s.platform.clone(),
                versions: s.versions.clone(),
                ready: s.versions.clone(),
            }),
            (None, _) => Err(unavailable(name, &e.absent.reason())),
        }
    }

    fn lookup_unknown(&self, name: &str) -> bool {
        self.inner.repository.root().join(name).is_dir()
    }

    /// The configuration of a model, completed (auto-complete, chosen backend).
    pub fn model_config(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelConfig>> {
        let d = self.describe(name)?;
        if let Some(v) = version {
            if !d.versions.contains(&v) {
                return Err(no_version(name, v));
            }
        }
        Ok(d.config)
    }

    /// Metadata of a model or one of its versions.
    pub fn model_metadata(&self, name: &str, version: Option<u64>) -> Result<ModelMetadata> {
        let d = self.describe(name)?;
        let listed = match version {
            Some(v) if !d.versions.contains(&v) => return Err(no_version(name, v)),
            Some(v) => vec![v],
            None => d.ready,
        };
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions: listed,
            platform: d.platform,
            signature: Arc::new(ModelSignature::from_config(&d.config)),
        })
    }

    /// Runs one request on the model (and version) it names; waits while the model
    /// loads (bounded by the request's timeout).
    pub async fn infer(
        &self,
        name: &str,
        version: Option<u64>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::unavailable("the server is shutting down"));
        }
        let arrived = std::time::Instant::now();
        let (served, v) = self.acquire(name, version, request.timeout).await?;
        // Time spent waiting for a load counts against the request's timeout.
        let options = JobOptions {
            priority: request.priority,
            timeout: request.timeout.map(|t| {
                t.saturating_sub(arrived.elapsed())
                    .max(Duration::from_micros(1))
            }),
        };
        let control = request.cache;
        let valid = match served.signature.validate(request) {
            Ok(valid) => valid,
            Err(e) => {
                served
                    .pool
                    .stats()
                    .record(Outcome::Invalid, arrived.elapsed());
                return Err(e);
            }
        };
        let id = valid.id.clone();
        let wanted = valid.outputs.clone();
        let result = match self.inner.cache.as_ref().filter(|_| served.cache_enabled) {
            Some(cache) => {
                let job = cache::CachedJob {
                    model: name,
                    version: v,
                    control,
                    request: valid,
                    options,
                    arrived,
                };
                cache.run(&served, job).await
            }
            None => served.pool.infer(valid, options).await,
        };
        drop(served);
        if self.inner.over_budget.load(Ordering::Acquire) {
            self.trim_to_budget();
        }
        let mut all: Vec<Option<Tensor>> = result?.into_iter().map(Some).collect();
        let outputs = wanted
            .iter()
            .map(|&ix| all.get_mut(ix).and_then(Option::take))
            .collect::<Option<Vec<Tensor>>>()
            .ok_or_else(|| {
                Error::internal("the engine returned fewer outputs than the model declares")
            })?;
        Ok(InferResponse {
            model_name: name.to_owned(),
            model_version: v,
            id,
            outputs,
        })
    }

    /// Figures of the response cache (after applying pending evictions), when one
    /// is configured.
    pub async fn cache_stats(&self) -> Option<CacheStats> {
        let cache = self.inner.cache.as_ref()?;
        cache.settle().await;
        Some(cache.stats())
    }

    /// Counts a request for a servable model that was refused before it reached
    /// [`Runtime::infer`] (a body or message that could not be decoded) as invalid.
    pub fn record_invalid(&self, name: &str, version: Option<u64>, elapsed: Duration) {
        if let Ok(mut versions) = self.stats(Some(name), version) {
            // With no version named, the request was meant for the newest one.
            if let Some(v) = versions.pop() {
                v.stats.record(Outcome::Invalid, elapsed);
            }
        }
    }

    /// Statistics of the ready versions of every model (`name` `None`), of one
    /// model, or of one version. Errors like [`Runtime::infer`] for an unknown model
    /// or a version that is not ready (a model evicted under the memory budget has
    /// no ready version until its next request loads it).
    pub fn stats(&self, name: Option<&str>, version: Option<u64>) -> Result<Vec<VersionStats>> {
        let one = |name: &str, v: u64, served: &Served| VersionStats {
            name: name.to_owned(),
            version: v,
            stats: Arc::clone(served.pool.stats()),
            queue_len: served.pool.queue_len(),
            load_duration: served.load_duration,
            memory_bytes: served.memory_bytes,
        };
        let models = self.models();
        let ready = |name: &str, e: &Entry| -> Vec<VersionStats> {
            e.serving.as_ref().map_or_else(Vec::new, |l| {
                l.ready().map(|(v, s)| one(name, v, s)).collect()
            })
        };
        match (name, version) {
            (None, _) => Ok(models.iter().flat_map(|(n, e)| ready(n, e)).collect()),
            (Some(name), None) => match models.get(name) {
                Some(e)
                    if e.serving
                        .as_ref()
                        .is_some_and(|l| l.ready().next().is_some()) =>
                {
                    Ok(ready(name, e))
                }
                _ => {
                    drop(models);
                    Err(self.not_ready_error(name, None))
                }
            },
            (Some(name), Some(v)) => {
                let found = models.get(name).and_then(|e| {
                    e.serving.as_ref().and_then(|l| match l.versions.get(&v) {
                        Some(VersionSlot::Ready(s)) => Some(one(name, v, s)),
                        _ => None,
                    })
                });
                drop(models);
                found
                    .map(|f| vec![f])
                    .ok_or_else(|| self.not_ready_error(name, Some(v)))
            }
        }
    }

    /// The error a request would get for a model (version) that has nothing ready.
    fn not_ready_error(&self, name: &str, version: Option<u64>) -> Error {
        match self.lookup(name, version) {
            Lookup::Fail(e) => e,
            Lookup::Ready(..) | Lookup::Wait | Lookup::Start => {
                unavailable(name, "no version is loaded now")
            }
        }
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

// The texts of the lookup errors follow Triton's ("Request for unknown model: ..."),
// whose clients and example scripts match on that prefix; Sluice adds the reason.

/// A model the repository does not have (404).
pub(crate) fn unknown_model(name: &str) -> Error {
    Error::not_found(format!("Request for unknown model: '{name}' is not found"))
}

/// A known model with no version that can serve now (503), and why.
fn unavailable(name: &str, reason: &str) -> Error {
    Error::unavailable(format!(
        "Request for unknown model: '{name}' has no available versions ({reason})"
    ))
}

/// A version the model does not have (404).
fn no_version(name: &str, version: u64) -> Error {
    Error::not_found(format!(
        "Request for unknown model: '{name}' version {version} is not found"
    ))
}

//! The runtime: the registry of models the server answers for. It reads the
//! repository, picks a backend per model, loads each selected version into an
//! instance pool, and routes validated requests to the right pool.
//!
//! Key decision: each model and each version carries its own state and reason. A
//! model whose config or file is broken is recorded as unavailable with the reason
//! (shown by the repository index and the log) and every other model keeps serving;
//! nothing here panics on what it reads from disk. Backends are injected by the
//! binary, so this crate never names an engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, Error, InferRequest, InferResponse, InstanceOptions, LoadSpec, ModelConfig,
    ModelSignature, Result, Tensor,
};
pub use sluice_repository::RepositoryOptions;
use sluice_repository::{ModelSource, Repository};
pub use sluice_scheduler::{HistogramSnapshot, Outcome, PoolStats};
use sluice_scheduler::{InstancePool, JobOptions, SchedulerConfig};

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
}

/// The state of a model or version, as the repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Unavailable,
}

impl ModelState {
    /// Triton's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
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

struct Served {
    signature: Arc<ModelSignature>,
    pool: InstancePool,
    load_duration: Duration,
}

/// Statistics of one ready model version.
#[derive(Debug, Clone)]
pub struct VersionStats {
    pub name: String,
    pub version: u64,
    pub stats: Arc<PoolStats>,
    /// Requests waiting in its queue now.
    pub queue_len: usize,
    /// How long loading it took (engine load, instances, scheduler).
    pub load_duration: Duration,
}

enum VersionSlot {
    Ready(Served),
    Failed(String),
}

enum ModelSlot {
    /// The config could be read; versions loaded or failed one by one.
    Loaded {
        config: Arc<ModelConfig>,
        platform: String,
        versions: BTreeMap<u64, VersionSlot>,
    },
    /// The model could not be read at all.
    Failed(String),
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

/// The model registry. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    config: RuntimeConfig,
    backends: Backends,
    models: RwLock<BTreeMap<String, Arc<ModelSlot>>>,
    shutting_down: AtomicBool,
}

impl Runtime {
    /// Reads the repository and loads every model. Blocking: call it before serving
    /// or from a blocking thread. Fails only when the repository itself cannot be read.
    pub fn start(config: RuntimeConfig, backends: Backends) -> Result<Runtime> {
        if backends.get(&config.default_backend).is_none() {
            return Err(Error::invalid(format!(
                "default backend '{}' is not built in (available: {:?})",
                config.default_backend,
                backends.names()
            )));
        }
        let repository = Repository::open(&config.repository, config.repository_options.clone())?;
        let runtime = Runtime {
            inner: Arc::new(Inner {
                config,
                backends,
                models: RwLock::new(BTreeMap::new()),
                shutting_down: AtomicBool::new(false),
            }),
        };
        for name in repository.model_names()? {
            let slot = runtime.load_model(&repository, &name);
            runtime
                .inner
                .models
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name, Arc::new(slot));
        }
        Ok(runtime)
    }

    fn load_model(&self, repository: &Repository, name: &str) -> ModelSlot {
        let source = match repository.read_model(name) {
            Ok(source) => source,
            Err(e) => {
                tracing::error!(model = name, reason = %e, "model is unavailable");
                return ModelSlot::Failed(e.message().to_owned());
            }
        };
        let (backend, mut config) = match self.pick_backend(&source) {
            Ok(picked) => picked,
            Err(e) => {
                tracing::error!(model = name, reason = %e, "model is unavailable");
                return ModelSlot::Failed(e.message().to_owned());
            }
        };
        if config.backend.is_empty() {
            config.backend = backend.name().to_owned();
        }
        let platform = if config.platform.is_empty() {
            format!("{}_onnx", backend.name())
        } else {
            config.platform.clone()
        };
        let mut versions = BTreeMap::new();
        for v in &source.versions {
            let started = Instant::now();
            let slot = match self.load_version(backend.as_ref(), &config, name, v) {
                Ok(mut served) => {
                    served.load_duration = started.elapsed();
                    tracing::info!(
                        model = name,
                        version = v.version,
                        backend = backend.name(),
                        instances = config.instance_count(),
                        load_ms = started.elapsed().as_millis() as u64,
                        "model version is ready"
                    );
                    VersionSlot::Ready(served)
                }
                Err(e) => {
                    tracing::error!(model = name, version = v.version, reason = %e, "model version is unavailable");
                    VersionSlot::Failed(e.message().to_owned())
                }
            };
            versions.insert(v.version, slot);
        }
        ModelSlot::Loaded {
            config: Arc::new(config),
            platform,
            versions,
        }
    }

    fn pick_backend(&self, source: &ModelSource) -> Result<(Arc<dyn Backend>, ModelConfig)> {
        let config = source.config.clone();
        let default = self.inner.config.default_backend.as_str();
        let wanted = match (config.backend.as_str(), config.platform.as_str()) {
            ("", "" | "onnxruntime_onnx") | ("onnxruntime", _) => {
                if self.inner.backends.get("onnxruntime").is_some() {
                    "onnxruntime"
                } else {
                    default
                }
            }
            ("", other) => {
                return Err(Error::unsupported(format!(
                    "platform '{other}' is not supported (Sluice serves ONNX models)"
                )))
            }
            (backend, _) => backend,
        };
        let backend = self.inner.backends.get(wanted).ok_or_else(|| {
            Error::unsupported(format!(
                "backend '{wanted}' is not available in this server (available: {:?})",
                self.inner.backends.names()
            ))
        })?;
        Ok((Arc::clone(backend), config))
    }

    fn load_version(
        &self,
        backend: &dyn Backend,
        config: &ModelConfig,
        name: &str,
        version: &sluice_repository::ModelVersion,
    ) -> Result<Served> {
        let spec = LoadSpec {
            model_name: name,
            version: version.version,
            model_file: &version.model_file,
            config,
        };
        let loaded = backend.load(&spec)?;
        let intra_op_threads = match config.parameter("intra_op_thread_count") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "parameter intra_op_thread_count must be a positive integer, got '{v}'"
                    ))
                })?,
            None => self.inner.config.intra_op_threads,
        };
        let instances = (0..config.instance_count())
            .map(|index| {
                loaded.instance(&InstanceOptions {
                    index,
                    intra_op_threads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let scheduler = SchedulerConfig::from_model_config(
            format!("{name}:{}", version.version),
            config,
            self.inner.config.queue_capacity,
        )?;
        let pool = InstancePool::start(scheduler, instances)?;
        Ok(Served {
            signature: Arc::new(ModelSignature::from_config(config)),
            pool,
            load_duration: Duration::ZERO,
        })
    }

    fn slot(&self, name: &str) -> Result<Arc<ModelSlot>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("unknown model '{name}'")))
    }

    /// The server process is up.
    pub fn live(&self) -> bool {
        true
    }

    /// The server accepts inference requests: not shutting down and, with strict
    /// readiness, every model of the repository ready.
    pub fn ready(&self) -> bool {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return false;
        }
        !self.inner.config.strict_readiness
            || self.index().iter().all(|e| e.state == ModelState::Ready)
    }

    /// Every model (and version) with its state and the reason when unavailable.
    pub fn index(&self) -> Vec<IndexEntry> {
        let models = self
            .inner
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for (name, slot) in models.iter() {
            match slot.as_ref() {
                ModelSlot::Failed(reason) => out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: ModelState::Unavailable,
                    reason: reason.clone(),
                }),
                ModelSlot::Loaded { versions, .. } => {
                    for (&version, v) in versions {
                        let (state, reason) = match v {
                            VersionSlot::Ready(_) => (ModelState::Ready, String::new()),
                            VersionSlot::Failed(r) => (ModelState::Unavailable, r.clone()),
                        };
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: Some(version),
                            state,
                            reason,
                        });
                    }
                }
            }
        }
        out
    }

    /// Whether a model (or one version) is ready. Unknown model or version: `NotFound`.
    pub fn model_ready(&self, name: &str, version: Option<u64>) -> Result<bool> {
        match self.resolve(name, version) {
            Ok(_) => Ok(!self.inner.shutting_down.load(Ordering::Acquire)),
            Err(e) if e.kind() == sluice_core::ErrorKind::Unavailable => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The configuration of a model, completed (auto-complete, chosen backend).
    pub fn model_config(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelConfig>> {
        let slot = self.slot(name)?;
        match slot.as_ref() {
            ModelSlot::Failed(reason) => Err(unavailable(name, reason)),
            ModelSlot::Loaded {
                config, versions, ..
            } => {
                if let Some(v) = version {
                    if !versions.contains_key(&v) {
                        return Err(no_version(name, v));
                    }
                }
                Ok(Arc::clone(config))
            }
        }
    }

    /// Metadata of a model or one of its versions.
    pub fn model_metadata(&self, name: &str, version: Option<u64>) -> Result<ModelMetadata> {
        let slot = self.slot(name)?;
        let ModelSlot::Loaded {
            config,
            platform,
            versions,
        } = slot.as_ref()
        else {
            let ModelSlot::Failed(reason) = slot.as_ref() else {
                unreachable!()
            };
            return Err(unavailable(name, reason));
        };
        let ready: Vec<u64> = versions
            .iter()
            .filter(|(_, v)| matches!(v, VersionSlot::Ready(_)))
            .map(|(&k, _)| k)
            .collect();
        let listed = match version {
            Some(v) if !versions.contains_key(&v) => return Err(no_version(name, v)),
            Some(v) => vec![v],
            None => ready,
        };
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions: listed,
            platform: platform.clone(),
            signature: Arc::new(ModelSignature::from_config(config)),
        })
    }

    /// Finds the serving version: the one asked for, or the highest ready one.
    fn resolve(&self, name: &str, version: Option<u64>) -> Result<(Arc<ModelSlot>, u64)> {
        let slot = self.slot(name)?;
        let chosen = match slot.as_ref() {
            ModelSlot::Failed(reason) => return Err(unavailable(name, reason)),
            ModelSlot::Loaded { versions, .. } => match version {
                Some(v) => match versions.get(&v) {
                    None => return Err(no_version(name, v)),
                    Some(VersionSlot::Failed(reason)) => {
                        return Err(Error::unavailable(format!(
                            "version {v} of model '{name}' is not available: {reason}"
                        )))
                    }
                    Some(VersionSlot::Ready(_)) => v,
                },
                None => {
                    let ready = versions
                        .iter()
                        .rev()
                        .find(|(_, s)| matches!(s, VersionSlot::Ready(_)));
                    match ready {
                        Some((&v, _)) => v,
                        None => {
                            let reason = versions
                                .values()
                                .find_map(|s| match s {
                                    VersionSlot::Failed(r) => Some(r.as_str()),
                                    VersionSlot::Ready(_) => None,
                                })
                                .unwrap_or("no version is ready");
                            return Err(unavailable(name, reason));
                        }
                    }
                }
            },
        };
        Ok((slot, chosen))
    }

    /// Checks that a model (and version) can serve now, without running anything.
    pub fn check_servable(&self, name: &str, version: Option<u64>) -> Result<()> {
        self.resolve(name, version).map(|_| ())
    }

    /// Runs one request on the model (and version) it names.
    pub async fn infer(
        &self,
        name: &str,
        version: Option<u64>,
        request: InferRequest,
    ) -> Result<InferResponse> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::unavailable("the server is shutting down"));
        }
        let (slot, v) = self.resolve(name, version)?;
        let ModelSlot::Loaded { versions, .. } = slot.as_ref() else {
            unreachable!("resolved")
        };
        let Some(VersionSlot::Ready(served)) = versions.get(&v) else {
            unreachable!("resolved")
        };
        let options = JobOptions {
            priority: request.priority,
            timeout: request.timeout,
        };
        let arrived = Instant::now();
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
        let mut all: Vec<Option<Tensor>> = served
            .pool
            .infer(valid, options)
            .await?
            .into_iter()
            .map(Some)
            .collect();
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
    /// or a version that is not ready.
    pub fn stats(&self, name: Option<&str>, version: Option<u64>) -> Result<Vec<VersionStats>> {
        let one = |name: &str, v: u64, served: &Served| VersionStats {
            name: name.to_owned(),
            version: v,
            stats: Arc::clone(served.pool.stats()),
            queue_len: served.pool.queue_len(),
            load_duration: served.load_duration,
        };
        let ready = |name: &str, slot: &ModelSlot| -> Vec<VersionStats> {
            let ModelSlot::Loaded { versions, .. } = slot else {
                return Vec::new();
            };
            versions
                .iter()
                .filter_map(|(&v, s)| match s {
                    VersionSlot::Ready(served) => Some(one(name, v, served)),
                    VersionSlot::Failed(_) => None,
                })
                .collect()
        };
        match (name, version) {
            (None, _) => {
                let models = self
                    .inner
                    .models
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Ok(models
                    .iter()
                    .flat_map(|(name, slot)| ready(name, slot))
                    .collect())
            }
            (Some(name), None) => {
                // Resolving first gives the usual error when nothing is ready.
                let (slot, _) = self.resolve(name, None)?;
                Ok(ready(name, &slot))
            }
            (Some(name), Some(v)) => {
                let (slot, v) = self.resolve(name, Some(v))?;
                let ModelSlot::Loaded { versions, .. } = slot.as_ref() else {
                    unreachable!("resolved")
                };
                let Some(VersionSlot::Ready(served)) = versions.get(&v) else {
                    unreachable!("resolved")
                };
                Ok(vec![one(name, v, served)])
            }
        }
    }

    /// Stops accepting requests (readiness turns false). Queued requests still finish.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Drains and stops every instance pool. Blocking.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let models = std::mem::take(
            &mut *self
                .inner
                .models
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        drop(models);
    }
}

fn unavailable(name: &str, reason: &str) -> Error {
    Error::unavailable(format!("model '{name}' is not available: {reason}"))
}

fn no_version(name: &str, version: u64) -> Error {
    Error::not_found(format!("model '{name}' has no version {version}"))
}

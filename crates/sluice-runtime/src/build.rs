//! Turning a [`ModelSource`] into something that serves: the backend choice, one
//! instance pool per version, warmup, and the measured load time and memory.
//!
//! Key decision: memory is measured, not guessed: the process's resident set is read
//! before and after a version is loaded, instantiated and warmed up (loads are
//! serialized, so the delta belongs to that version). Because an allocator may reuse
//! memory freed by an earlier unload (the delta then undercounts), the model file's
//! size is the floor (the weights are in memory once loaded), and the runtime
//! remembers the first measurement of each file: a reload of the same file after an
//! eviction reports the larger of the two, so budget decisions do not drift.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{Backend, Error, FileIdentity, ModelConfig, ModelSignature, ReshapePlan, Result};
use sluice_repository::{ModelSource, ModelVersion};
use sluice_scheduler::{InstancePool, JobOptions, SchedulerConfig};

use crate::{warmup, Backends};

/// One ready version: its pool and what it cost to load.
///
/// Lifetime rule (what [`Loaded::idle`] and `lifecycle::drain` rely on when they read
/// `Arc::strong_count`): an `Arc<Served>` is held by the `Loaded` maps that list it
/// (one, or two while a swap carries it over) and by each request from
/// `Runtime::acquire` until `Runtime::infer` drops it after its run. New request
/// clones are made only under the registry's read lock from a `Loaded` the registry
/// holds; nothing else keeps one. So under the registry's write lock a count of 1
/// means no request holds it, and once a `Loaded` has left the registry its counts
/// only fall.
pub(crate) struct Served {
    pub signature: Arc<ModelSignature>,
    pub pool: InstancePool,
    pub load_duration: Duration,
    pub memory_bytes: u64,
    /// Which file this version was loaded from, to reuse it when nothing changed.
    pub file: Option<FileIdentity>,
    /// Unique to this load (part of the response cache's key, so a reload of the
    /// same version number never answers from the previous load's entries).
    pub generation: u64,
    /// `response_cache { enable: true }` in its config.
    pub cache_enabled: bool,
    /// Requests larger than a batch are split across its instances (see `split`).
    pub split: bool,
    /// What a shared response cache knows this version by (see
    /// [`crate::cache::identity`]); 0 without a shared cache, or when the cache is
    /// off for it and the cache is local.
    pub identity: u128,
    /// Set when this version is an ensemble: its requests run as a dataflow over
    /// other models (see `ensemble`), and `pool` has no instances (only statistics).
    pub ensemble: Option<Arc<crate::ensemble::Ensemble>>,
    /// Builds more instances of this version (live instance changes, `scale`);
    /// `None` for an ensemble, which has no engine of its own.
    pub factory: Option<crate::scale::Factory>,
}

pub(crate) enum VersionSlot {
    Ready(Arc<Served>),
    Failed(String),
}

/// A model as it serves: its completed config and its versions.
pub(crate) struct Loaded {
    pub config: Arc<ModelConfig>,
    pub platform: String,
    pub versions: BTreeMap<u64, VersionSlot>,
    /// Tick of the runtime's LRU clock at the last request (or the load).
    pub last_used: AtomicU64,
}

impl Loaded {
    pub fn ready(&self) -> impl Iterator<Item = (u64, &Arc<Served>)> {
        self.versions.iter().filter_map(|(&v, s)| match s {
            VersionSlot::Ready(served) => Some((v, served)),
            VersionSlot::Failed(_) => None,
        })
    }
    pub fn memory_bytes(&self) -> u64 {
        self.ready().map(|(_, s)| s.memory_bytes).sum()
    }
    /// No request holds any of its versions (only the registry does). Meaningful under
    /// the registry's write lock (see the lifetime rule on [`Served`]).
    pub fn idle(&self) -> bool {
        self.ready().all(|(_, s)| Arc::strong_count(s) == 1)
    }
}

impl BuildContext<'_> {
    /// The [`Served::identity`] of a version run by `backend`: its digest when its
    /// answers are cached, or when any version's may be keyed by it (a shared cache,
    /// where a caching ensemble keys by its steps); else 0.
    pub fn identity(&self, config: &ModelConfig, backend: &str, version: &ModelVersion) -> u128 {
        match (
            config.response_cache_enabled() || self.shared_cache,
            version.model_file.parent(),
        ) {
            (true, Some(dir)) => crate::cache::identity(config, backend, dir),
            _ => 0,
        }
    }
}

/// Settings a load needs from the runtime config.
pub(crate) struct BuildContext<'a> {
    pub backends: &'a Backends,
    pub default_backend: &'a str,
    pub intra_op_threads: usize,
    pub queue_capacity: usize,
    /// Tests only: the folder of execution gates (see [`crate::gate`]).
    pub execution_gates: Option<&'a Path>,
    /// Hands out load generations (see [`Served::generation`]).
    pub generations: &'a AtomicU64,
    /// The response cache is shared between replicas (Redis): every version gets an
    /// [`Served::identity`], since an ensemble that caches keys its answers by its
    /// steps' identities whether or not the steps cache themselves.
    pub shared_cache: bool,
}

/// Picks the backend of a model and completes its config with it.
pub(crate) fn pick_backend(
    cx: &BuildContext<'_>,
    source: &ModelSource,
) -> Result<(Arc<dyn Backend>, ModelConfig, String)> {
    let mut config = source.config.clone();
    let wanted = match (config.backend.as_str(), config.platform.as_str()) {
        ("", "" | "onnxruntime_onnx") | ("onnxruntime", _) => {
            if cx.backends.get("onnxruntime").is_some() {
                "onnxruntime"
            } else {
                cx.default_backend
            }
        }
        ("", other) => {
            return Err(Error::unsupported(format!(
                "platform '{other}' is not supported (Sluice serves ONNX models)"
            )))
        }
        (backend, _) => backend,
    };
    let backend = cx.backends.get(wanted).ok_or_else(|| {
        Error::unsupported(format!(
            "backend '{wanted}' is not available in this server (available: {:?})",
            cx.backends.names()
        ))
    })?;
    if config.backend.is_empty() {
        config.backend = backend.name().to_owned();
    }
    let platform = if config.platform.is_empty() {
        format!("{}_onnx", backend.name())
    } else {
        config.platform.clone()
    };
    Ok((Arc::clone(backend), config, platform))
}

/// Requests of a model that runs inline (see `LoadedModel::inline`) with more input
/// bytes than this are queued for its instances: 1 MiB, a softmax over 262,144
/// floats, well under a millisecond, so an async worker is never held for long.
pub(crate) const INLINE_MAX_BYTES: usize = 1 << 20;

/// Loads one version: engine, instances, pool, warmup. Ready only when all succeeded.
pub(crate) fn load_version(
    cx: &BuildContext<'_>,
    backend: &dyn Backend,
    config: &ModelConfig,
    source: &ModelSource,
    version: &ModelVersion,
    model_dir: &Path,
) -> Result<Served> {
    let started = Instant::now();
    let file = FileIdentity::of(&version.model_file);
    let rss_before = crate::process::resident_bytes(None);
    // The engine sees each reshaped tensor with its reshape's shape; requests are
    // validated and batched with the config's dims, and `Reshaped` instances turn one
    // into the other around the engine.
    let engine_config = config.engine_config();
    let spec = sluice_core::LoadSpec {
        config: engine_config.as_ref().unwrap_or(config),
        ..source.load_spec(version)
    };
    let loaded = backend.load(&spec)?;
    let intra_op_threads = intra_op_threads(config, cx.intra_op_threads)?;
    crate::scale::settings(config)?;
    let factory = crate::scale::Factory::new(
        loaded,
        ReshapePlan::of(config),
        cx.execution_gates
            .map(|dir| (dir.to_path_buf(), source.name.clone())),
    );
    let instances = (0..config.instance_count())
        .map(|_| factory.build(intra_op_threads))
        .collect::<Result<Vec<_>>>()?;
    let scheduler = SchedulerConfig::from_model_config(
        format!("{}:{}", source.name, version.version),
        config,
        cx.queue_capacity,
    )?;
    let signature =
        Arc::new(ModelSignature::from_config(config).with_bytes_content(backend.bytes_content()));
    let pool = InstancePool::start_with_threads(scheduler, instances, intra_op_threads)?;
    let pool = match factory.inline() {
        Some(run) => {
            tracing::debug!(model = %source.name, "small requests run inline");
            pool.with_inline(run, INLINE_MAX_BYTES)
        }
        None => pool,
    };
    crate::seed::from_profile(&pool, model_dir, &source.name, version.version);
    run_warmup(config, &signature, &pool, model_dir)?;
    let rss_after = crate::process::resident_bytes(None);
    let measured = match (rss_before, rss_after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => 0,
    };
    Ok(Served {
        signature,
        pool,
        load_duration: started.elapsed(),
        memory_bytes: measured.max(file.map_or(0, |f| f.len)),
        file,
        generation: cx
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        cache_enabled: config.response_cache_enabled(),
        split: crate::split::enabled(config)?,
        identity: cx.identity(config, backend.name(), version),
        ensemble: None,
        factory: Some(factory),
    })
}

/// The intra-op threads of each instance: the `intra_op_thread_count` parameter, else
/// the server's default.
pub(crate) fn intra_op_threads(config: &ModelConfig, default: usize) -> Result<usize> {
    match config.parameter("intra_op_thread_count") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "parameter intra_op_thread_count must be a positive integer, got '{v}'"
                ))
            }),
        None => Ok(default),
    }
}

fn run_warmup(
    config: &ModelConfig,
    signature: &ModelSignature,
    pool: &InstancePool,
    model_dir: &Path,
) -> Result<()> {
    let samples = warmup::samples(config, model_dir)?;
    if samples.is_empty() {
        return Ok(());
    }
    // The pool answers through tokio primitives; a small runtime of its own lets a
    // blocking loader thread wait for it whether or not it runs inside tokio.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the warmup runtime: {e}")))?;
    for sample in samples {
        for _ in 0..sample.count {
            let valid = signature
                .validate(sample.request.clone())
                .map_err(|e| e.context(format!("model_warmup '{}'", sample.name)))?;
            rt.block_on(pool.infer(valid, JobOptions::default()))
                .map_err(|e| e.context(format!("model_warmup '{}' failed", sample.name)))?;
        }
    }
    Ok(())
}

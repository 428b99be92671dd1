//! Changing the set of loaded models: start-up per control mode, load (with a
//! config override or files from the request), unload, hot swap, and eviction under
//! the memory budget.
//!
//! Key decision: a new or changed version is loaded beside the one serving, warmed
//! up, and only then swapped in, in one write of the registry; versions whose config
//! and file did not change are carried over as they are. The replaced versions are
//! dropped only when no request holds them any more, so in-flight and queued requests
//! finish on the version they started on, and no request sees a half-loaded one.
//! Loads are serialized by one lock (a load of a large model delays other loads, never
//! requests to loaded models).

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, RwLock, Weak};
use std::time::Duration;

use sluice_core::{Error, Result};
use sluice_repository::Repository;

use crate::build::{self, BuildContext, Loaded, Served, VersionSlot};
use crate::{
    Absent, Backends, ControlMode, Entry, Inner, LoadOptions, Runtime, RuntimeConfig, Shell, State,
};
use sluice_core::FileIdentity;

impl Runtime {
    /// Reads the repository and loads the models the control mode selects (all of
    /// them, or the `--load-model` ones in explicit mode); in poll mode, starts the
    /// thread that applies changes on disk. Blocking: call it before serving or from
    /// a blocking thread. Fails only when the repository itself cannot be read.
    pub fn start(config: RuntimeConfig, backends: Backends) -> Result<Runtime> {
        if backends.get(&config.default_backend).is_none() {
            return Err(Error::invalid(format!(
                "default backend '{}' is not built in (available: {:?})",
                config.default_backend,
                backends.names()
            )));
        }
        let repository = Repository::open(&config.repository, config.repository_options.clone())?;
        let names = repository.model_names()?;
        let lifecycle = config.lifecycle.clone();
        let cache = crate::cache::ResponseCache::start(&config.cache)?;
        let runtime = Runtime {
            inner: Arc::new(Inner {
                config,
                backends,
                repository,
                models: RwLock::new(BTreeMap::new()),
                changes: tokio::sync::watch::Sender::new(0),
                loader: std::sync::Mutex::new(()),
                clock: AtomicU64::new(0),
                over_budget: AtomicBool::new(false),
                measured: std::sync::Mutex::new(std::collections::HashMap::new()),
                draining: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                cache,
                remote: std::sync::OnceLock::new(),
                families: crate::family::Families::default(),
            }),
        };
        let startup: Vec<String> = match lifecycle.mode {
            ControlMode::None | ControlMode::Poll => names,
            ControlMode::Explicit if lifecycle.startup_models.iter().any(|m| m == "*") => names,
            ControlMode::Explicit => lifecycle.startup_models.clone(),
        };
        for name in startup {
            // Failures are recorded in the index and logged; other models still load.
            let _ = runtime.load_now(&name, &LoadOptions::default());
        }
        if lifecycle.mode == ControlMode::Poll {
            crate::poll::spawn(&runtime, lifecycle.poll_interval)?;
        }
        Ok(runtime)
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Runtime {
        Runtime { inner }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn repository(&self) -> &Repository {
        &self.inner.repository
    }

    /// The control mode the server runs in.
    pub fn control_mode(&self) -> ControlMode {
        self.inner.config.lifecycle.mode
    }

    fn explicit_only(&self, what: &str) -> Result<()> {
        match self.inner.config.lifecycle.mode {
            ControlMode::Explicit => Ok(()),
            ControlMode::Poll => Err(Error::unsupported(format!(
                "explicit model {what} is not allowed in model control mode 'poll'; \
                 start the server with --model-control-mode explicit"
            ))),
            ControlMode::None => Err(Error::unsupported(format!(
                "explicit model {what} is not allowed in model control mode 'none'; \
                 start the server with --model-control-mode explicit"
            ))),
        }
    }

    /// Loads or reloads a model (explicit mode), beside what serves now; returns once
    /// the new versions serve. A load that fails leaves a serving model as it was.
    /// Blocking.
    pub fn load(&self, name: &str, options: &LoadOptions) -> Result<()> {
        self.explicit_only("load")?;
        sluice_repository::check_model_name(name)?;
        if options.files.is_empty() {
            self.refresh_remote(name)?;
        }
        self.load_now(name, options)
    }

    /// Unloads a model (explicit mode): new requests are refused at once, requests
    /// already in flight or queued finish first. Blocking.
    pub fn unload(&self, name: &str) -> Result<()> {
        self.explicit_only("unload")?;
        sluice_repository::check_model_name(name)?;
        self.check_not_composing(name)?;
        self.unload_now(name, false)
    }

    pub(crate) fn lock_loader(&self) -> MutexGuard<'_, ()> {
        self.inner
            .loader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin_load(&self, name: &str) {
        let autoload = self.inner.config.lifecycle.memory_budget.is_some();
        self.models_mut()
            .entry(name.to_owned())
            .or_insert_with(|| Entry::new(autoload))
            .begin_load();
        self.notify();
    }

    /// Starts loading a model a request is waiting for, unless a load already runs.
    pub(crate) fn start_autoload(&self, name: &str) {
        {
            let autoload = self.inner.config.lifecycle.memory_budget.is_some();
            let mut models = self.models_mut();
            let e = models
                .entry(name.to_owned())
                .or_insert_with(|| Entry::new(autoload));
            if !e.startable() {
                return;
            }
            e.begin_load();
        }
        self.notify();
        let runtime = self.clone();
        let name_for_error = name.to_owned();
        let name = name.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("sluice-load-{name}"))
            .spawn(move || {
                tracing::info!(model = %name, "loading on first use");
                let _ = runtime.load_now(&name, &LoadOptions::default());
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a loader thread");
            if let Some(e) = self.models_mut().get_mut(&name_for_error) {
                e.load_failed(format!("cannot start a loader thread: {error}"));
            }
            self.notify();
        }
    }

    /// Loads (or reloads) a model now, whatever the control mode. Blocking.
    pub(crate) fn load_now(&self, name: &str, options: &LoadOptions) -> Result<()> {
        if let Some(family) = self
            .family_config(name)
            .filter(|_| options.files.is_empty())
        {
            return self.load_family(name, family);
        }
        self.load_composing(name, options);
        let guard = self.lock_loader();
        if self.is_shutting_down() {
            return Err(Error::unavailable("the server is shutting down"));
        }
        self.begin_load(name);
        // Taken before reading, so a change made during the load is seen by the next scan.
        let fingerprint = if options.files.is_empty() {
            self.inner.repository.fingerprint(name).ok()
        } else {
            None
        };
        let result = self.load_locked(name, options, fingerprint);
        let old = match result {
            Ok(old) => old,
            Err(e) => {
                tracing::error!(model = name, reason = %e, "model load failed");
                self.load_failed(name, &e, fingerprint);
                return Err(e);
            }
        };
        self.make_room(0, Some(name));
        drop(guard);
        if let Some((old, carried)) = old {
            drain(&old, &carried);
        }
        self.recheck_dependents(name);
        Ok(())
    }

    /// Records a failed load: a model that serves keeps serving; one of the repository
    /// that does not is unavailable with the reason.
    ///
    /// A name with no folder in the repository (a load of `file:` entries, or a typo)
    /// that does not serve is forgotten, whatever the error: the caller got the reason,
    /// and a record would keep the server not ready (strict readiness) until someone
    /// unloaded that name, and let the index grow by one entry per failed name. Triton
    /// likewise counts only live models for readiness: one that failed to load is
    /// `UNAVAILABLE`, not "not ready". The index stays bounded by the repository's
    /// folders plus the models that serve.
    fn load_failed(&self, name: &str, error: &Error, fingerprint: Option<u64>) {
        let exists = self.inner.repository.root().join(name).is_dir();
        let mut models = self.models_mut();
        if let Some(e) = models.get_mut(name) {
            // Poll mode retries only once these files change again.
            e.fingerprint = fingerprint;
            e.load_failed(error.message().to_owned());
            if e.serving().is_none() && !exists {
                models.remove(name);
            }
        }
        drop(models);
        self.notify();
    }

    /// Reads and loads a model beside the serving one and swaps it in. Returns the
    /// replaced one, to drain once the loader lock is released.
    fn load_locked(
        &self,
        name: &str,
        options: &LoadOptions,
        fingerprint: Option<u64>,
    ) -> Result<Option<Replaced>> {
        let repo = &self.inner.repository;
        let files_dir;
        let (source, dir) = if options.files.is_empty() {
            let dir = repo.model_dir(name)?;
            let source = repo.read_model_at(name, &dir, options.config.as_deref())?;
            (source, dir)
        } else {
            let Some(config) = options.config.as_deref() else {
                return Err(Error::invalid(
                    "a load with model files must also give the model's config (parameter 'config')",
                ));
            };
            files_dir = write_files(&options.files)?;
            let dir = files_dir.path().to_path_buf();
            let source = repo.read_model_at(name, &dir, Some(config))?;
            (source, dir)
        };
        let cx = BuildContext {
            backends: &self.inner.backends,
            default_backend: &self.inner.config.default_backend,
            intra_op_threads: self.inner.config.intra_op_threads,
            queue_capacity: self.inner.config.queue_capacity,
            execution_gates: self.inner.config.execution_gates.as_deref(),
            generations: &self.inner.clock,
            shared_cache: self.inner.cache.as_ref().is_some_and(|c| c.is_shared()),
        };
        // An ensemble has no backend: its versions are built by `ensemble`.
        let (backend, config, platform) = if crate::ensemble::is_ensemble(&source.config) {
            let platform = source.config.platform.clone();
            (None, source.config.clone(), platform)
        } else {
            let (backend, config, platform) = build::pick_backend(&cx, &source)?;
            (Some(backend), config, platform)
        };
        let backend_name = backend.as_ref().map_or("ensemble", |b| b.name());
        let old = self
            .models()
            .get(name)
            .and_then(|e| e.serving().map(Arc::clone));
        let mut versions = BTreeMap::new();
        // Instance counts and intra-op threads change in place (see `scale`).
        // A config equal to the serving one also resets counts the instances API
        // changed, unless the autoscaler owns them.
        let in_place = old.as_ref().is_some_and(|old| {
            crate::scale::instances_only(&old.config, &config)
                && (*old.config != config
                    || !matches!(crate::scale::settings(&config), Ok(Some(_))))
        });
        let mut resized = Vec::new();
        for v in &source.versions {
            let reusable = old.as_ref().and_then(|old| {
                let same_config = *old.config == config || in_place;
                match old.versions.get(&v.version) {
                    Some(VersionSlot::Ready(s))
                        if same_config
                            && options.files.is_empty()
                            && FileIdentity::same(s.file, FileIdentity::of(&v.model_file)) =>
                    {
                        Some(Arc::clone(s))
                    }
                    _ => None,
                }
            });
            if let Some(served) = reusable {
                if in_place {
                    resized.push((v.version, Arc::clone(&served)));
                }
                versions.insert(v.version, VersionSlot::Ready(served));
                continue;
            }
            let estimate = old
                .as_ref()
                .and_then(|o| match o.versions.get(&v.version) {
                    Some(VersionSlot::Ready(s)) => Some(s.memory_bytes),
                    _ => None,
                })
                .unwrap_or_else(|| FileIdentity::of(&v.model_file).map_or(0, |f| f.len));
            self.make_room(estimate, Some(name));
            let built = match &backend {
                Some(backend) => {
                    build::load_version(&cx, backend.as_ref(), &config, &source, v, &dir)
                }
                None => self.build_ensemble(&cx, &config, v),
            };
            let slot = match built {
                Ok(mut served) => {
                    served.memory_bytes =
                        self.remembered_memory(name, v.version, served.file, served.memory_bytes);
                    tracing::info!(
                        model = name,
                        version = v.version,
                        backend = backend_name,
                        instances = config.instance_count(),
                        load_ms = served.load_duration.as_millis() as u64,
                        memory_bytes = served.memory_bytes,
                        "model version is ready"
                    );
                    VersionSlot::Ready(Arc::new(served))
                }
                Err(e) => {
                    tracing::error!(model = name, version = v.version, reason = %e, "model version is unavailable");
                    VersionSlot::Failed(e.message().to_owned())
                }
            };
            versions.insert(v.version, slot);
        }
        if !resized.is_empty() {
            crate::scale::settings(&config)?;
            let threads = build::intra_op_threads(&config, self.inner.config.intra_op_threads)?;
            let count = config.instance_count();
            for (version, served) in &resized {
                let before = served.pool.instances();
                if before.serving == count && served.pool.count_with_threads(threads) == count {
                    continue;
                }
                served.resize(count, threads)?;
                tracing::info!(
                    model = name,
                    version,
                    instances = count,
                    threads_per_instance = threads,
                    from_instances = before.serving,
                    from_threads = before.threads_per_instance,
                    reason = "config changed only instance_group counts or intra_op_thread_count",
                    "instances changed in place (no reload)"
                );
            }
        }
        drop(resized);
        let loaded = Loaded {
            config: Arc::new(config),
            platform,
            versions,
            last_used: AtomicU64::new(self.inner.clock.fetch_add(1, Ordering::Relaxed) + 1),
        };
        let new_ready = loaded.ready().count();
        let old_ready = old.as_ref().map_or(0, |o| o.ready().count());
        if new_ready == 0 && old_ready > 0 {
            let reason = first_failure(&loaded);
            return Err(Error::unavailable(format!(
                "model '{name}' keeps serving its previous versions: the new ones failed to load: {reason}"
            )));
        }
        if new_ready == 0 && !repo.root().join(name).is_dir() {
            // Nothing to record for a name outside the repository (see `load_failed`).
            let reason = first_failure(&loaded);
            return Err(Error::unavailable(format!(
                "model '{name}' failed to load: {reason}"
            )));
        }
        let shell = Shell {
            config: Arc::clone(&loaded.config),
            platform: loaded.platform.clone(),
            versions: loaded.versions.keys().copied().collect(),
        };
        let failed = (new_ready == 0).then(|| first_failure(&loaded));
        let carried: Vec<Weak<Served>> = loaded.ready().map(|(_, s)| Arc::downgrade(s)).collect();
        let replaced = {
            let mut models = self.models_mut();
            let autoload = self.inner.config.lifecycle.memory_budget.is_some();
            let e = models
                .entry(name.to_owned())
                .or_insert_with(|| Entry::new(autoload));
            e.autoload = autoload;
            e.fingerprint = fingerprint;
            e.shell = Some(shell);
            e.serve(Arc::new(loaded))
        };
        self.notify();
        match failed {
            Some(reason) => Err(Error::unavailable(format!(
                "model '{name}' failed to load: {reason}"
            ))),
            None => Ok(replaced.map(|old| (old, carried))),
        }
    }

    /// Unloads a model: refuses new requests, lets held ones finish, drops its pools.
    /// `forget` removes it from the registry (its folder left the repository).
    pub(crate) fn unload_now(&self, name: &str, forget: bool) -> Result<()> {
        if self.family(name).is_some() {
            self.unload_family(name);
            return Ok(());
        }
        let old = {
            let _guard = self.lock_loader();
            let mut models = self.models_mut();
            let Some(e) = models.get_mut(name) else {
                drop(models);
                return if self.inner.repository.root().join(name).is_dir() {
                    Ok(())
                } else {
                    Err(crate::unknown_model(name))
                };
            };
            e.begin_unload()
        };
        self.notify();
        if let Some(old) = old {
            tracing::info!(model = name, "unloading: letting held requests finish");
            drain(&old, &[]);
        }
        {
            // A name with no repository folder (loaded from `file:` entries) is forgotten
            // too, so loads and unloads of new names cannot grow the index.
            let forget = forget || !self.inner.repository.root().join(name).is_dir();
            let mut models = self.models_mut();
            if forget {
                models.remove(name);
            } else if let Some(e) = models.get_mut(name) {
                if e.serving().is_none() {
                    e.state = State::Absent(Absent::Unloaded);
                    e.autoload = false;
                }
            }
        }
        self.notify();
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }
}

fn first_failure(loaded: &Loaded) -> String {
    loaded
        .versions
        .values()
        .find_map(|s| match s {
            VersionSlot::Failed(r) => Some(r.clone()),
            VersionSlot::Ready(_) => None,
        })
        .unwrap_or_else(|| "no version was selected".to_owned())
}

/// What a load replaced: the old model, and the versions the new one carried over
/// (weak, so they count for nothing in the strong counts `drain` reads).
type Replaced = (Arc<Loaded>, Vec<Weak<Served>>);

/// Waits until no request holds a version of `old` that was not carried over into
/// its replacement, then drops `old` (each dropped pool runs what is queued and joins
/// its threads).
///
/// Why polling the strong count is safe (the lifetime rule of
/// [`Served`](crate::build::Served)): once `old` has left the registry nothing can
/// reach its versions to clone a new `Arc`, so each count only falls; a count of 1 is
/// `old`'s own map, and anything above it is a request still running on that version
/// (carried versions are also held by their new `Loaded`, hence skipped). The carried
/// list is compared by address through `Weak`s, which keep each allocation alive, so
/// an address can never be reused by another version while it is compared.
pub(crate) fn drain(old: &Arc<Loaded>, carried: &[Weak<Served>]) {
    let started = std::time::Instant::now();
    let mut next_log = Duration::from_secs(5);
    let is_carried = |s: &Arc<Served>| {
        carried
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(s)))
    };
    loop {
        let busy = old
            .ready()
            .any(|(_, s)| Arc::strong_count(s) > 1 && !is_carried(s));
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
        if started.elapsed() > next_log {
            next_log += Duration::from_secs(5);
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "waiting for in-flight requests to finish before unloading"
            );
        }
    }
}

/// Writes the files of a load request into a fresh temporary folder
/// (`<version>/<name>`); the folder goes away once the load is over.
fn write_files(files: &[(String, Vec<u8>)]) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-load-")
        .tempdir()
        .map_err(|e| Error::internal(format!("cannot create a folder for the model files: {e}")))?;
    let names: std::collections::HashSet<&Path> =
        files.iter().map(|(p, _)| Path::new(p.as_str())).collect();
    for (path, bytes) in files {
        let rel = Path::new(path);
        // `Path` drops a trailing '/' and empty or '.' parts; the file name must not.
        let plain = !path.is_empty()
            && !path.split('/').any(|part| part.is_empty() || part == ".")
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(Error::invalid(format!(
                "file parameter 'file:{path}' must be a relative path to a file such as \
                 'file:1/model.onnx'"
            )));
        }
        if let Some(folder) = rel.ancestors().skip(1).find(|a| names.contains(a)) {
            return Err(Error::invalid(format!(
                "file parameter 'file:{path}' is inside 'file:{}', which is a file",
                folder.display()
            )));
        }
        let target = dir.path().join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::internal(format!("cannot write 'file:{path}': {e}")))?;
        }
        std::fs::write(&target, bytes)
            .map_err(|e| Error::internal(format!("cannot write 'file:{path}': {e}")))?;
    }
    Ok(dir)
}

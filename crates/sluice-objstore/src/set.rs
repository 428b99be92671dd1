//! The set of `--model-repository` locations behind one view folder, and the thread
//! that keeps the view in step with the stores.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};

use crate::cache::{Cache, View};
use crate::store::{ModelListing, Remote, StoreSettings};
use crate::{Error, RepositoryLocation};

/// What the control mode asks of the remote repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Download everything at start; a store that is down then is retried (with
    /// backoff) until it answers once, and its models are then loaded.
    Once,
    /// Also list every interval and mirror what changed, once two listings in a row
    /// agree (the runtime's poll then reloads it).
    Poll,
    /// Download a model when a load asks for it (and the start-up models); list
    /// every interval only to show what the stores hold in the index.
    OnDemand,
}

/// Settings of a [`RepositorySet`].
#[derive(Debug, Clone)]
pub struct SetConfig {
    /// In flag order; the first location that holds a model name serves it.
    pub locations: Vec<RepositoryLocation>,
    /// `None`: a temporary folder, removed on exit.
    pub cache_dir: Option<PathBuf>,
    pub store: StoreSettings,
    pub mode: SyncMode,
    /// Time between listings (the repository poll interval).
    pub interval: Duration,
    /// The longest wait between tries of a store that does not answer.
    pub max_backoff: Duration,
    /// Objects larger than this make their model unavailable.
    pub max_object_bytes: u64,
    /// Downloads at once per model.
    pub concurrency: usize,
    /// `OnDemand`: models to download at start (`*`: all).
    pub startup_models: Vec<String>,
}

/// A note for the repository index: why a model (or a whole repository, named by
/// its URL) is not as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub name: String,
    pub reason: String,
}

/// What a sync of one model downloaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub downloaded: usize,
    pub reused: usize,
    pub bytes: u64,
}

enum Source {
    Local(PathBuf),
    Remote { remote: Remote, id: String },
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Local(p) => p.display().to_string(),
            Source::Remote { remote, .. } => remote.url().to_string(),
        }
    }
}

/// One remote's memory between scans.
#[derive(Default)]
struct RemoteState {
    /// Fingerprints of the previous listing (debounce).
    seen: Option<BTreeMap<String, u64>>,
    /// Fingerprint of the listing last acted on per model (linked, or refused).
    applied: BTreeMap<String, u64>,
    failures: u32,
    next_due: Option<Instant>,
    reached: bool,
}

struct State {
    remotes: Vec<RemoteState>,
    /// Model → index of the source whose files the view shows.
    owner: BTreeMap<String, usize>,
    /// Snapshots each model's view entry pointed at, newest last (for clean-up).
    history: BTreeMap<String, Vec<PathBuf>>,
}

#[derive(Default)]
struct Notes {
    models: BTreeMap<String, String>,
    sources: BTreeMap<String, String>,
    /// Models a store holds that are not in the view (explicit mode).
    available: BTreeMap<String, String>,
}

struct SetInner {
    config: SetConfig,
    cache: Cache,
    view: View,
    sources: Vec<Source>,
    rt: tokio::runtime::Runtime,
    state: Mutex<State>,
    notes: Mutex<Notes>,
    stop: AtomicBool,
}

/// The repositories of a server, shown to the runtime as one local folder. Cheap to clone.
#[derive(Clone)]
pub struct RepositorySet {
    inner: Arc<SetInner>,
}

impl std::fmt::Debug for RepositorySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositorySet")
            .field("view", &self.inner.view.path())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fingerprint(listing: &ModelListing) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match listing {
        Ok(files) => files.iter().for_each(|f| f.hash(&mut h)),
        Err(reason) => reason.hash(&mut h),
    }
    h.finish()
}

/// Model folders of a local repository (hidden ones skipped), sorted.
fn local_names(dir: &Path) -> Result<Vec<String>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read repository '{}': {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

impl RepositorySet {
    /// Opens the cache, builds the view and fills it: local models at once, remote
    /// ones downloaded (per the mode). A store that does not answer is noted and
    /// retried later; only a bad local folder or cache is an error here.
    pub fn open(config: SetConfig) -> Result<RepositorySet, Error> {
        let cache = Cache::open(config.cache_dir.as_deref())?;
        let view = View::new(&cache)?;
        let mut sources = Vec::new();
        for location in &config.locations {
            sources.push(match location {
                RepositoryLocation::Local(p) => {
                    if !p.is_dir() {
                        return Err(Error::Cache(format!(
                            "model repository '{}' is not a folder",
                            p.display()
                        )));
                    }
                    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                    Source::Local(abs)
                }
                RepositoryLocation::S3(url) => {
                    let id = format!(
                        "{:016x}",
                        xxhash_rust::xxh3::xxh3_64(url.to_string().as_bytes())
                    );
                    Source::Remote {
                        remote: Remote::new(url.clone(), &config.store)?,
                        id,
                    }
                }
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::Cache(format!("cannot start the download threads: {e}")))?;
        let remotes = sources.iter().map(|_| RemoteState::default()).collect();
        let set = RepositorySet {
            inner: Arc::new(SetInner {
                config,
                cache,
                view,
                sources,
                rt,
                state: Mutex::new(State {
                    remotes,
                    owner: BTreeMap::new(),
                    history: BTreeMap::new(),
                }),
                notes: Mutex::new(Notes::default()),
                stop: AtomicBool::new(false),
            }),
        };
        set.scan(true);
        Ok(set)
    }

    /// The folder to give the runtime as its repository.
    pub fn view_path(&self) -> &Path {
        self.inner.view.path()
    }

    /// The cache folder.
    pub fn cache_path(&self) -> &Path {
        self.inner.cache.root()
    }

    /// Why models (or whole repositories) are not as their stores hold them.
    pub fn notes(&self) -> Vec<Note> {
        let notes = lock(&self.inner.notes);
        notes
            .sources
            .iter()
            .chain(&notes.models)
            .chain(&notes.available)
            .map(|(name, reason)| Note {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Stops the background thread and, for a temporary cache, removes it (the
    /// runtime may still hold this set through its hook, so this cannot wait for a drop).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        let _state = lock(&self.inner.state);
        if self.inner.cache.is_temporary() {
            let _ = std::fs::remove_dir_all(self.inner.cache.root());
        }
    }

    /// Starts the thread that lists the stores every interval (see [`SyncMode`]).
    /// `on_new` is called (on that thread) with each model a `Once` set downloaded
    /// after start-up, because its store was down then.
    pub fn spawn(&self, on_new: Box<dyn Fn(&str) + Send>) -> Result<(), Error> {
        // A weak handle: the set (and a temporary cache) goes away with its owner.
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.interval;
        std::thread::Builder::new()
            .name("sluice-objstore-poll".to_owned())
            .spawn(move || {
                let tick = Duration::from_millis(50).min(interval);
                loop {
                    let mut slept = Duration::ZERO;
                    while slept < interval {
                        std::thread::sleep(tick);
                        slept += tick;
                        match weak.upgrade() {
                            Some(inner) if !inner.stop.load(Ordering::Acquire) => {}
                            _ => return,
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let set = RepositorySet { inner };
                    if set.inner.config.mode == SyncMode::Once && set.all_reached() {
                        return;
                    }
                    for name in set.scan(false) {
                        on_new(&name);
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::Cache(format!("cannot start the repository thread: {e}")))
    }

    fn all_reached(&self) -> bool {
        let state = lock(&self.inner.state);
        self.inner
            .sources
            .iter()
            .zip(&state.remotes)
            .all(|(s, r)| matches!(s, Source::Local(_)) || r.reached)
    }

    fn block_on<F: std::future::Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        // On a thread of its own, so callers inside another tokio runtime are fine.
        std::thread::scope(|s| {
            s.spawn(|| self.inner.rt.block_on(fut))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Lists one remote's models, each folder checked.
    fn list_remote(&self, remote: &Remote) -> Result<BTreeMap<String, ModelListing>, Error> {
        let cap = self.inner.config.max_object_bytes;
        self.block_on(async {
            let names = remote.model_names().await?;
            futures_util::stream::iter(names)
                .map(|name| async move {
                    let listing = remote.list_model(&name, cap).await?;
                    Ok::<_, Error>((name, listing))
                })
                .buffer_unordered(8)
                // A folder with no objects left (some stores keep the empty "folder")
                // is no model, as in S3.
                .try_filter(|(_, listing)| {
                    futures_util::future::ready(!matches!(listing, Ok(files) if files.is_empty()))
                })
                .try_collect::<BTreeMap<_, _>>()
                .await
        })
    }

    /// Downloads what the cache lacks of one model and returns its snapshot folder.
    fn fetch(
        &self,
        remote: &Remote,
        id: &str,
        name: &str,
        files: &BTreeMap<String, crate::store::ObjectInfo>,
        fp: u64,
    ) -> Result<(PathBuf, Fetched), Error> {
        let cache = &self.inner.cache;
        let started = Instant::now();
        let mut blobs = BTreeMap::new();
        let mut missing = Vec::new();
        let mut fetched = Fetched::default();
        for (rel, object) in files {
            let blob = cache.blob_path(id, object);
            if crate::cache::has_blob(&blob, object.size) {
                fetched.reused += 1;
            } else {
                missing.push((object.clone(), blob.clone()));
            }
            blobs.insert(rel.clone(), blob);
        }
        let concurrency = self.inner.config.concurrency.max(1);
        self.block_on(async {
            futures_util::stream::iter(missing)
                .map(|(object, blob)| async move {
                    let temp = cache.temp_file()?;
                    remote.download(&object, &temp).await?;
                    crate::cache::persist(temp, &blob)?;
                    Ok::<u64, Error>(object.size)
                })
                .buffer_unordered(concurrency)
                .try_for_each(|size| {
                    fetched.downloaded += 1;
                    fetched.bytes += size;
                    futures_util::future::ready(Ok(()))
                })
                .await
        })?;
        let snapshot = cache.snapshot(id, name, fp, &blobs)?;
        tracing::info!(
            repository = %remote.url(),
            model = name,
            downloaded = fetched.downloaded,
            reused = fetched.reused,
            bytes = fetched.bytes,
            ms = started.elapsed().as_millis() as u64,
            "model files are in the cache"
        );
        Ok((snapshot, fetched))
    }

    /// Points the view at a model's new folder and removes snapshots of it older
    /// than the one it replaced.
    fn show(
        &self,
        state: &mut State,
        name: &str,
        owner: usize,
        target: &Path,
    ) -> Result<(), Error> {
        self.inner.view.link(name, target)?;
        state.owner.insert(name.to_owned(), owner);
        let history = state.history.entry(name.to_owned()).or_default();
        if history.last().map(PathBuf::as_path) != Some(target) {
            history.push(target.to_path_buf());
        }
        while history.len() > 2 {
            let old = history.remove(0);
            if old.starts_with(self.inner.cache.root()) {
                let _ = std::fs::remove_dir_all(&old);
            }
        }
        Ok(())
    }

    fn hide(&self, state: &mut State, name: &str) {
        self.inner.view.unlink(name);
        state.owner.remove(name);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let base = self.inner.config.interval;
        let cap = self.inner.config.max_backoff.max(base);
        base.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(cap)
    }

    /// One pass over every location. Returns the models newly shown by a `Once`
    /// set after start-up (their store was down at start).
    fn scan(&self, initial: bool) -> Vec<String> {
        let mode = self.inner.config.mode;
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        let before: BTreeSet<String> = state.owner.keys().cloned().collect();
        let mut claimed: BTreeMap<String, usize> = BTreeMap::new();
        let mut model_notes: BTreeMap<String, String> = BTreeMap::new();
        let mut source_notes: BTreeMap<String, String> = BTreeMap::new();
        let mut available: BTreeMap<String, String> = BTreeMap::new();
        let mut newly = Vec::new();
        let previous_notes = std::mem::take(&mut lock(&self.inner.notes).models);
        for (i, source) in self.inner.sources.iter().enumerate() {
            let keep_previous = |state: &State, claimed: &mut BTreeMap<String, usize>| {
                for (name, &o) in &state.owner {
                    if o == i {
                        claimed.entry(name.clone()).or_insert(i);
                    }
                }
            };
            match source {
                Source::Local(dir) => match local_names(dir) {
                    Ok(names) => {
                        for name in names {
                            if let Some(&first) = claimed.get(&name) {
                                self.duplicate(&mut model_notes, &name, first, i);
                                continue;
                            }
                            if let Err(e) = self.show(state, &name, i, &dir.join(&name)) {
                                model_notes.insert(name.clone(), e.to_string());
                            }
                            claimed.insert(name, i);
                        }
                    }
                    Err(reason) => {
                        source_notes.insert(source.label(), reason);
                        keep_previous(state, &mut claimed);
                    }
                },
                Source::Remote { remote, id } => {
                    let due = state.remotes[i]
                        .next_due
                        .is_none_or(|d| Instant::now() >= d);
                    let skip =
                        !initial && (!due || (mode == SyncMode::Once && state.remotes[i].reached));
                    if skip {
                        if let Some(old) = lock(&self.inner.notes).sources.get(&source.label()) {
                            source_notes.insert(source.label(), old.clone());
                        }
                        for (name, reason) in &previous_notes {
                            if state.owner.get(name) == Some(&i) {
                                model_notes.insert(name.clone(), reason.clone());
                            }
                        }
                        keep_previous(state, &mut claimed);
                        continue;
                    }
                    let listed = match self.list_remote(remote) {
                        Ok(listed) => listed,
                        Err(e) => {
                            let r = &mut state.remotes[i];
                            r.failures += 1;
                            let wait = self.backoff(r.failures);
                            r.next_due = Some(Instant::now() + wait);
                            let reason = format!(
                                "{e}; retrying in {:.1} s (attempt {})",
                                wait.as_secs_f64(),
                                r.failures
                            );
                            tracing::warn!(repository = %remote.url(), %reason, "object store unavailable");
                            for (name, &o) in &state.owner {
                                if o == i {
                                    model_notes.insert(
                                        name.clone(),
                                        format!("serving the files downloaded before; {reason}"),
                                    );
                                }
                            }
                            source_notes.insert(source.label(), reason);
                            keep_previous(state, &mut claimed);
                            continue;
                        }
                    };
                    let first_contact = !state.remotes[i].reached;
                    {
                        let r = &mut state.remotes[i];
                        if r.failures > 0 {
                            tracing::info!(repository = %remote.url(), "object store answers again");
                        }
                        r.failures = 0;
                        r.next_due = None;
                        r.reached = true;
                    }
                    let prints: BTreeMap<String, u64> = listed
                        .iter()
                        .map(|(n, l)| (n.clone(), fingerprint(l)))
                        .collect();
                    let seen = state.remotes[i].seen.replace(prints.clone());
                    for (name, listing) in listed {
                        if let Some(&first) = claimed.get(&name) {
                            self.duplicate(&mut model_notes, &name, first, i);
                            continue;
                        }
                        let fp = prints[&name];
                        let shown = state.owner.get(&name) == Some(&i);
                        let wanted = match mode {
                            SyncMode::OnDemand => {
                                shown
                                    || (initial
                                        && self
                                            .inner
                                            .config
                                            .startup_models
                                            .iter()
                                            .any(|m| m == "*" || *m == name))
                            }
                            SyncMode::Once | SyncMode::Poll => true,
                        };
                        if !wanted {
                            available
                                .insert(name.clone(), format!("not loaded (in {})", remote.url()));
                            continue;
                        }
                        if mode == SyncMode::OnDemand && shown && !initial {
                            // Explicit mode: a load request refreshes it.
                            claimed.insert(name.clone(), i);
                            continue;
                        }
                        let stable = initial
                            || first_contact
                            || seen.as_ref().and_then(|s| s.get(&name)) == Some(&fp);
                        let applied = state.remotes[i].applied.get(&name) == Some(&fp);
                        if applied || !stable {
                            if shown {
                                claimed.insert(name.clone(), i);
                                if let Some(n) = previous_notes.get(&name) {
                                    model_notes.insert(name.clone(), n.clone());
                                }
                            } else if let (true, Some(n)) = (applied, previous_notes.get(&name)) {
                                model_notes.insert(name.clone(), n.clone());
                            }
                            continue;
                        }
                        let result = match &listing {
                            Ok(files) => self.fetch(remote, id, &name, files, fp),
                            Err(reason) => Err(Error::Model(reason.clone())),
                        };
                        match result {
                            Ok((snapshot, _)) => match self.show(state, &name, i, &snapshot) {
                                Ok(()) => {
                                    state.remotes[i].applied.insert(name.clone(), fp);
                                    claimed.insert(name.clone(), i);
                                    if !initial && first_contact && mode == SyncMode::Once {
                                        newly.push(name.clone());
                                    }
                                }
                                Err(e) => {
                                    model_notes.insert(name.clone(), e.to_string());
                                }
                            },
                            Err(e) => {
                                let listing_bad = listing.is_err();
                                if listing_bad {
                                    state.remotes[i].applied.insert(name.clone(), fp);
                                }
                                tracing::error!(repository = %remote.url(), model = %name, reason = %e, "cannot fetch the model");
                                let reason = if shown {
                                    claimed.insert(name.clone(), i);
                                    format!("serving the files downloaded before; {e}")
                                } else {
                                    e.to_string()
                                };
                                model_notes.insert(name.clone(), reason);
                            }
                        }
                    }
                    // A model that left the store leaves the view once two listings agree.
                    for (name, &o) in &state.owner {
                        if o == i && !prints.contains_key(name) {
                            let gone_before = seen.as_ref().is_none_or(|s| !s.contains_key(name));
                            if !gone_before {
                                claimed.entry(name.clone()).or_insert(i);
                            }
                        }
                    }
                    state.remotes[i]
                        .applied
                        .retain(|n, _| prints.contains_key(n));
                }
            }
        }
        for name in before {
            if !claimed.contains_key(&name) {
                tracing::info!(model = %name, "model left its repository");
                self.hide(state, &name);
            }
        }
        let mut notes = lock(&self.inner.notes);
        notes.models = model_notes;
        notes.sources = source_notes;
        notes.available = available;
        newly
    }

    fn duplicate(
        &self,
        notes: &mut BTreeMap<String, String>,
        name: &str,
        first: usize,
        other: usize,
    ) {
        let (a, b) = (&self.inner.sources[first], &self.inner.sources[other]);
        tracing::warn!(model = name, served_from = %a.label(), ignored = %b.label(), "a model name is in two repositories");
        notes.insert(
            name.to_owned(),
            format!("also in {}; the copy in {} is served", b.label(), a.label()),
        );
    }

    /// Explicit mode, before a load: brings `name` up to date from the first
    /// location that holds it. A name no location holds is removed from the view
    /// (the load then reports it unknown). Errors carry the reason (no secrets).
    pub fn refresh(&self, name: &str) -> Result<(), Error> {
        let mut state = lock(&self.inner.state);
        let state = &mut *state;
        for (i, source) in self.inner.sources.iter().enumerate() {
            match source {
                Source::Local(dir) => {
                    let dir = dir.join(name);
                    if dir.is_dir() {
                        return self.show(state, name, i, &dir);
                    }
                }
                Source::Remote { remote, id } => {
                    let cap = self.inner.config.max_object_bytes;
                    let listing = self.block_on(remote.list_model(name, cap))?;
                    match &listing {
                        Ok(files) if files.is_empty() => continue,
                        Ok(files) => {
                            let fp = fingerprint(&listing);
                            let (snapshot, _) = self.fetch(remote, id, name, files, fp)?;
                            self.show(state, name, i, &snapshot)?;
                            state.remotes[i].applied.insert(name.to_owned(), fp);
                            let mut notes = lock(&self.inner.notes);
                            notes.models.remove(name);
                            notes.available.remove(name);
                            return Ok(());
                        }
                        Err(reason) => return Err(Error::Model(reason.clone())),
                    }
                }
            }
        }
        self.hide(state, name);
        Ok(())
    }
}

impl Drop for SetInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

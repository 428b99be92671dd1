//! The response cache: answers of models with `response_cache { enable: true }`,
//! kept in process under a byte budget (Triton's `--cache-config local,size=N`) or
//! in a Redis server that replicas share (`--cache-config redis,host=H,port=P`).
//!
//! Key decision: the cache holds a model version's *whole* answer (every output,
//! before the server picks the requested ones and encodes them as JSON or binary),
//! keyed by what decides that answer and nothing else: the model name, the version
//! that answers, which load of it answers, and every input's name, datatype, shape
//! and bytes. Requested outputs and their wire form are applied to the cached
//! answer, so they need not be in the key and requests that differ only there share
//! one entry. No request parameter reaches the engine today (priority and timeout
//! change when, not what), so none is in the key.
//!
//! "Which load" differs by store. In process it is the load generation: a reload of
//! the same version number is a new generation, so a hot swap never serves an old
//! answer. Across replicas generations mean nothing, so Redis entries carry the
//! [`identity`] of the version instead: a digest of its files, the parts of its
//! config that can change an answer, and the backend that runs it. Replicas serving
//! the same files share entries; a changed file never meets an old entry.
//!
//! Entries are found by a 128-bit XXH3 hash of that fingerprint, and each keeps the
//! fingerprint itself: an entry is used only when its fingerprint equals the
//! request's, so even a hash collision can never return another request's answer.
//! Concurrent identical misses on one replica run the model once ([`flight`]);
//! waiters give up at their own deadline. A cache problem never fails a request.

mod config;
mod flight;
mod key;
mod local;
mod redis;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{CacheControl, Error, ErrorKind, ModelConfig, Result, Tensor, ValidRequest};
use sluice_scheduler::{JobOptions, Outcome, PoolStats};
use xxhash_rust::xxh3::Xxh3;

use crate::build::Served;
pub use config::{CacheConfig, LocalCacheConfig, RedisCacheConfig, RedisTls, Secret};
use flight::{Flight, Flights};
use key::{Entry, Probe};
use local::LocalStore;
use redis::RedisStore;

/// The identity of a loaded version for a shared cache: an XXH3-128 digest of
/// every file in its version folder (relative path, length, bytes), of its config
/// without the fields that only change how it is scheduled, and of the backend.
pub(crate) fn identity(config: &ModelConfig, backend: &str, version_dir: &Path) -> u128 {
    let mut h = Xxh3::new();
    let text = |h: &mut Xxh3, s: &[u8]| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s);
    };
    text(&mut h, backend.as_bytes());
    let mut answers = config.clone();
    answers.instance_group.clear();
    answers.dynamic_batching = None;
    answers.version_policy = sluice_core::VersionPolicy::default();
    answers.model_warmup = None;
    answers.metric_tags = None;
    answers.response_cache = None;
    text(&mut h, &serde_json::to_vec(&answers).unwrap_or_default());
    let mut files = Vec::new();
    collect_files(version_dir, version_dir, &mut files);
    files.sort();
    for (relative, path) in files {
        text(&mut h, relative.as_bytes());
        match std::fs::read(&path) {
            Ok(bytes) => text(&mut h, &bytes),
            Err(e) => {
                // Unreadable now though it loaded: make the identity unique to this
                // process, so it shares nothing rather than risk a wrong answer.
                tracing::warn!(file = %path.display(), error = %e, "response cache: cannot read a model file; its entries are not shared");
                h.update(&std::process::id().to_le_bytes());
                h.update(&format!("{:?}", Instant::now()).into_bytes());
            }
        }
    }
    h.digest128()
}

/// Regular files under `dir` (following symlinks, as the repository does), with
/// their paths relative to `root`, at most 8 folders deep.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    let depth = dir.strip_prefix(root).map_or(0, |r| r.components().count());
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for item in read.flatten() {
        let path = item.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                out.push((relative.to_string_lossy().into_owned(), path));
            }
            Ok(m) if m.is_dir() && depth < 8 => collect_files(root, &path, out),
            _ => {}
        }
    }
}

/// One request to answer through the cache.
pub(crate) struct CachedJob<'a> {
    pub model: &'a str,
    pub version: u64,
    /// Which load answers (see [`ResponseCache::scope`]; an ensemble's also covers
    /// the loads its steps resolve to).
    pub scope: u128,
    pub control: CacheControl,
    pub request: ValidRequest,
    pub options: JobOptions,
    /// When the request reached the runtime (a hit's `success` time runs from here).
    pub arrived: Instant,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where entries live.
enum Store {
    Local(LocalStore),
    Redis(Box<RedisStore>),
}

impl Store {
    fn scope_of(&self, served: &Served) -> u128 {
        match self {
            Store::Local(_) => u128::from(served.generation),
            Store::Redis(_) => served.identity,
        }
    }

    async fn get(&self, key: u128) -> Option<Arc<Entry>> {
        match self {
            Store::Local(s) => s.get(key).await,
            Store::Redis(s) => s.get(key).await,
        }
    }

    /// Stores an entry; `false` when the store did not take it.
    async fn put(&self, key: u128, entry: &Arc<Entry>) -> bool {
        match self {
            Store::Local(s) => {
                s.put(key, Arc::clone(entry)).await;
                true
            }
            Store::Redis(s) => s.put(key, entry).await,
        }
    }
}

/// The response cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ResponseCache {
    store: Arc<Store>,
    flights: Arc<Flights>,
    pub counters: Arc<CacheCounters>,
}

impl ResponseCache {
    /// The cache `config` asks for (`None` for `CacheConfig::None`). Connects to
    /// Redis once to check it (blocking, bounded by `connect_timeout`).
    pub fn start(config: &CacheConfig) -> Result<Option<ResponseCache>> {
        let counters = Arc::new(CacheCounters::default());
        let store = match config {
            CacheConfig::None => return Ok(None),
            CacheConfig::Local(local) => Store::Local(LocalStore::new(*local, &counters)),
            CacheConfig::Redis(redis) => Store::Redis(Box::new(RedisStore::connect(
                redis.clone(),
                Arc::clone(&counters),
            )?)),
        };
        Ok(Some(ResponseCache {
            store: Arc::new(store),
            flights: Arc::default(),
            counters,
        }))
    }

    /// Entries are shared between replicas (Redis), so loads are told apart by
    /// their identity rather than their generation.
    pub fn is_shared(&self) -> bool {
        matches!(self.store.as_ref(), Store::Redis(_))
    }

    /// Which load of `served` answers, as this store tells loads apart: the load
    /// generation in process, the version's [`identity`] across replicas.
    pub fn scope(&self, served: &Served) -> u128 {
        self.store.scope_of(served)
    }

    /// Answers `job` on `served` with every output of the model: from the cache when
    /// it holds the answer, else by running it with `execute` (once for concurrent
    /// identical requests) and storing the answer as the request's `control` allows.
    /// `execute` runs the version itself (its instance pool, or an ensemble's
    /// dataflow) and counts the run in `served`'s statistics. A cache problem never
    /// fails a request: it runs the model instead.
    pub async fn run<F, Fut>(
        &self,
        served: &Served,
        job: CachedJob<'_>,
        execute: F,
    ) -> Result<Vec<Tensor>>
    where
        F: Fn(ValidRequest, JobOptions) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Tensor>>>,
    {
        let stats = served.pool.stats();
        let CachedJob {
            model,
            version,
            scope,
            control,
            request,
            options,
            arrived,
        } = job;
        if control == CacheControl::Skip {
            return execute(request, options).await;
        }
        let started = Instant::now();
        let deadline = options.timeout.map(|t| started + t);
        // What is left of the request's timeout when it runs after waiting.
        let remaining = move || JobOptions {
            timeout: deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1))
            }),
            ..options
        };
        // Kept for the fingerprint, and to run uncached when the cache cannot answer.
        let retry = request.clone();
        let probe = Probe {
            model,
            version,
            scope,
            inputs: retry.inputs(),
        };
        let key = probe.hash();
        if control.looks_up() {
            if let Some(entry) = self.store.get(key).await {
                if probe.matches(&entry.fingerprint) {
                    return Ok(self.hit(stats, &entry, started, arrived));
                }
            }
        }
        match control {
            // Answered above; kept correct should that change.
            CacheControl::Skip => execute(request, options).await,
            CacheControl::NoStore => {
                self.miss(stats, started.elapsed());
                execute(request, options).await
            }
            CacheControl::Refresh => {
                let outputs = execute(request, options).await?;
                let insert = Instant::now();
                self.store_answer(key, probe, &outputs).await;
                self.miss(stats, insert.elapsed());
                Ok(outputs)
            }
            CacheControl::Use => {
                let execute = &execute;
                let lookup = started.elapsed();
                let pending = Pending::enter(&self.counters);
                let flight = self
                    .flights
                    .run(key, deadline, || async {
                        let outputs = execute(request, remaining()).await?;
                        let insert = Instant::now();
                        let entry = self.store_answer(key, probe, &outputs).await;
                        Ok::<_, Error>((entry, (outputs, insert.elapsed())))
                    })
                    .await;
                drop(pending);
                match flight {
                    Flight::Led(Ok((_, (outputs, insert)))) => {
                        // This request ran the model and stored the answer.
                        self.miss(stats, lookup + insert);
                        Ok(outputs)
                    }
                    // This request's own run failed: its error.
                    Flight::Led(Err(e)) => {
                        self.miss(stats, lookup);
                        Err(e)
                    }
                    Flight::Joined(entry) if probe.matches(&entry.fingerprint) => {
                        Ok(self.hit(stats, &entry, started, arrived))
                    }
                    // A hash collision: the entry answers another request.
                    Flight::Joined(_) => {
                        self.miss(stats, started.elapsed());
                        execute(retry, remaining()).await
                    }
                    Flight::TimedOut => {
                        self.miss(stats, lookup);
                        stats.record(Outcome::Timeout, arrived.elapsed());
                        Err(Error::new(
                            ErrorKind::DeadlineExceeded,
                            format!(
                                "the request timed out after {} µs waiting for an identical \
                                 request's run of model {model}:{version} (response cache)",
                                started.elapsed().as_micros()
                            ),
                        ))
                    }
                }
            }
        }
    }

    /// Builds the entry of a fresh answer and stores it; a store that fails only
    /// costs the next identical request a run.
    async fn store_answer(&self, key: u128, probe: Probe<'_>, outputs: &[Tensor]) -> Arc<Entry> {
        let entry = Arc::new(Entry::new(probe, outputs));
        if self.store.put(key, &entry).await {
            self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        }
        entry
    }

    fn hit(
        &self,
        stats: &PoolStats,
        entry: &Entry,
        started: Instant,
        arrived: Instant,
    ) -> Vec<Tensor> {
        let outputs = entry.outputs.clone();
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        stats.cache_hit.add(1, nanos(started.elapsed()));
        stats.record(Outcome::Success, arrived.elapsed());
        outputs
    }

    fn miss(&self, stats: &PoolStats, took: Duration) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        stats.cache_miss.add(1, nanos(took));
    }

    /// Opens a shared store's connections (see [`RedisStore::open`]); nothing to do
    /// in process.
    pub async fn open(&self) {
        if let Store::Redis(s) = self.store.as_ref() {
            s.open().await;
        }
    }

    /// Applies pending evictions, so the figures read next are exact.
    pub async fn settle(&self) {
        if let Store::Local(s) = self.store.as_ref() {
            s.entries.run_pending_tasks().await;
        }
    }

    pub fn stats(&self) -> CacheStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let local = match self.store.as_ref() {
            Store::Local(s) => Some(s),
            Store::Redis(_) => None,
        };
        CacheStats {
            hits: load(&self.counters.hits),
            misses: load(&self.counters.misses),
            inserts: load(&self.counters.inserts),
            evictions: load(&self.counters.evictions),
            bytes: local.map(|s| s.entries.weighted_size()),
            budget_bytes: local.map(|s| s.budget_bytes),
            entries: local.map(|s| s.entries.entry_count()),
            pending: load(&self.counters.pending),
            errors: load(&self.counters.errors),
            outages: load(&self.counters.outages),
        }
    }
}

/// Counters of the whole cache, for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    /// Entries removed to stay under the budget or because their TTL passed.
    pub evictions: AtomicU64,
    /// Requests inside a lookup that may run the model now: running it, or waiting
    /// for an identical request's run (single-flight).
    pub pending: AtomicU64,
    /// Failed, timed-out or undecodable operations on a shared store.
    pub errors: AtomicU64,
    /// Times the shared store became unavailable (the first error after a success).
    pub outages: AtomicU64,
}

/// Counts a request in [`CacheCounters::pending`] while it lives (also when the
/// request is dropped midway, say because its client went away).
struct Pending<'a>(&'a CacheCounters);

impl<'a> Pending<'a> {
    fn enter(counters: &'a CacheCounters) -> Pending<'a> {
        counters.pending.fetch_add(1, Ordering::Relaxed);
        Pending(counters)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of the cache for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    /// Bytes the entries take now, the budget, and the entry count: known for the
    /// local cache (`None` for Redis, which Redis's own metrics report).
    pub bytes: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub entries: Option<u64>,
    /// See `CacheCounters::pending`.
    pub pending: u64,
    /// See `CacheCounters::errors` and `CacheCounters::outages`.
    pub errors: u64,
    pub outages: u64,
}

#[cfg(test)]
mod tests;

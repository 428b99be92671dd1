//! The response cache: answers of models with `response_cache { enable: true }`,
//! kept in process under a byte budget (Triton's `--cache-config local,size=N`).
//!
//! Key decision: the cache holds a model version's *whole* answer (every output,
//! before the server picks the requested ones and encodes them as JSON or binary),
//! keyed by what decides that answer and nothing else: the model name, the version
//! that answers, that version's load generation (a reload of the same version
//! number is a new generation, so a hot swap never serves an old answer), and every
//! input's name, datatype, shape and bytes. Requested outputs and their wire form
//! are applied to the cached answer, so they need not be in the key and requests
//! that differ only there share one entry. No request parameter reaches the engine
//! today (priority and timeout change when, not what), so none is in the key.
//!
//! The map is keyed by a 128-bit XXH3 hash of that fingerprint, and each entry keeps
//! the fingerprint itself: an entry is used only when its fingerprint equals the
//! request's, so even a hash collision can never return another request's answer.
//! [`moka`] does the bookkeeping: a weigher counting fingerprint and output bytes
//! against the budget, TinyLFU admission with LRU eviction, an optional TTL, and
//! single-flight: concurrent identical misses wait for the first one's run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_core::{CacheControl, Error, Result, Tensor, ValidRequest};
use sluice_scheduler::{JobOptions, Outcome, PoolStats};
use xxhash_rust::xxh3::Xxh3;

use crate::build::Served;

/// Where answers are cached (validated from `--cache-config` by [`CacheConfig::parse`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheConfig {
    /// No response cache: `response_cache` in model configs is ignored.
    #[default]
    None,
    /// In process, under a byte budget.
    Local(LocalCacheConfig),
}

/// Settings of the in-process cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalCacheConfig {
    /// Bytes the entries may take together (fingerprints, outputs and bookkeeping).
    pub size_bytes: u64,
    /// How long an entry lives after it is stored; `None`: until evicted.
    pub ttl: Option<Duration>,
}

impl CacheConfig {
    /// Parses Triton's `--cache-config` values, each `<cache>,<key>=<value>[,...]`
    /// (repeatable, as `--cache-config local,size=1048576 --cache-config local,ttl=60`),
    /// or `none`. Keys of `local`: `size` (bytes, required) and Sluice's `ttl`
    /// (seconds, fractions allowed).
    pub fn parse<S: AsRef<str>>(flags: &[S]) -> Result<CacheConfig> {
        let mut cache: Option<&str> = None;
        let mut size = None;
        let mut ttl = None;
        let mut none = false;
        for flag in flags {
            let flag = flag.as_ref().trim();
            if flag.is_empty() {
                continue;
            }
            let mut parts = flag.split(',');
            let name = parts.next().unwrap_or_default().trim();
            match name {
                "none" => {
                    none = true;
                    continue;
                }
                "local" => {}
                "redis" => {
                    return Err(Error::unsupported(
                        "--cache-config redis: the Redis cache is not built yet; use 'local,size=BYTES'",
                    ))
                }
                other => {
                    return Err(Error::invalid(format!(
                        "--cache-config: unknown cache '{other}' (expected 'local' or 'none')"
                    )))
                }
            }
            if cache.is_some_and(|c| c != name) {
                return Err(Error::invalid(
                    "--cache-config: only one cache may be configured",
                ));
            }
            cache = Some(name);
            for part in parts {
                let (key, value) = part.split_once('=').ok_or_else(|| {
                    Error::invalid(format!("--cache-config {name}: '{part}' is not key=value"))
                })?;
                match key.trim() {
                    "size" => {
                        size = Some(value.trim().parse::<u64>().map_err(|_| {
                            Error::invalid(format!(
                                "--cache-config local: size must be a number of bytes, got '{value}'"
                            ))
                        })?);
                    }
                    "ttl" => {
                        let secs = value
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|s| s.is_finite() && *s > 0.0)
                            .ok_or_else(|| {
                                Error::invalid(format!(
                                    "--cache-config local: ttl must be a positive number of seconds, got '{value}'"
                                ))
                            })?;
                        ttl = Some(Duration::from_secs_f64(secs.min(1e9)));
                    }
                    other => {
                        return Err(Error::invalid(format!(
                            "--cache-config local: unknown key '{other}' (expected size or ttl)"
                        )))
                    }
                }
            }
        }
        match (none, cache) {
            (true, Some(_)) => Err(Error::invalid(
                "--cache-config none cannot be combined with a cache",
            )),
            (_, None) => Ok(CacheConfig::None),
            (false, Some(_)) => {
                let size_bytes =
                    size.ok_or_else(|| Error::invalid("--cache-config local needs size=BYTES"))?;
                if size_bytes == 0 {
                    return Err(Error::invalid(
                        "--cache-config local: size must be positive (use 'none' to turn the cache off)",
                    ));
                }
                Ok(CacheConfig::Local(LocalCacheConfig { size_bytes, ttl }))
            }
        }
    }
}

/// One request to answer through the cache.
pub(crate) struct CachedJob<'a> {
    pub model: &'a str,
    pub version: u64,
    pub control: CacheControl,
    pub request: ValidRequest,
    pub options: JobOptions,
    /// When the request reached the runtime (a hit's `success` time runs from here).
    pub arrived: Instant,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ResponseCache {
    /// Answers `job` on `served` with every output of the model: from the cache when
    /// it holds the answer, else by running the model (once for concurrent identical
    /// requests) and storing the answer as the request's `control` allows. A cache
    /// problem never fails a request: it runs the model instead.
    pub async fn run(&self, served: &Served, job: CachedJob<'_>) -> Result<Vec<Tensor>> {
        let stats = served.pool.stats();
        let CachedJob {
            model,
            version,
            control,
            request,
            options,
            arrived,
        } = job;
        if control == CacheControl::Skip {
            return served.pool.infer(request, options).await;
        }
        // Kept for the fingerprint, and to run uncached when the cache cannot answer.
        let retry = request.clone();
        let probe = Probe {
            model,
            version,
            generation: served.generation,
            inputs: &retry.inputs,
        };
        let started = Instant::now();
        let key = probe.hash();
        match control {
            // Answered above; kept correct should that change.
            CacheControl::Skip => served.pool.infer(request, options).await,
            CacheControl::NoStore => {
                if let Some(entry) = self.entries.get(&key).await {
                    if probe.matches(&entry.fingerprint) {
                        return Ok(self.hit(stats, &entry, started, arrived));
                    }
                }
                self.miss(stats, started.elapsed());
                served.pool.infer(request, options).await
            }
            CacheControl::Refresh => {
                let outputs = served.pool.infer(request, options).await?;
                let insert = Instant::now();
                let entry = Arc::new(Entry::new(probe, &outputs));
                self.entries.insert(key, entry).await;
                self.inserted().await;
                self.miss(stats, insert.elapsed());
                Ok(outputs)
            }
            CacheControl::Use => {
                let pool = &served.pool;
                let mut ran: Option<Duration> = None;
                let init = async {
                    let run = Instant::now();
                    let outputs = pool.infer(request, options).await;
                    ran = Some(run.elapsed());
                    Ok::<_, Error>(Arc::new(Entry::new(probe, &outputs?)))
                };
                let pending = Pending::enter(&self.counters);
                let got = self.entries.try_get_with(key, init).await;
                drop(pending);
                match (got, ran) {
                    (Ok(entry), Some(ran)) => {
                        // This request ran the model and stored the answer.
                        self.inserted().await;
                        self.miss(stats, started.elapsed().saturating_sub(ran));
                        Ok(entry.outputs.clone())
                    }
                    (Ok(entry), None) if probe.matches(&entry.fingerprint) => {
                        Ok(self.hit(stats, &entry, started, arrived))
                    }
                    // A hash collision: the entry answers another request.
                    (Ok(_), None) => {
                        self.miss(stats, started.elapsed());
                        served.pool.infer(retry, options).await
                    }
                    // This request's own run failed: its error.
                    (Err(e), Some(_)) => Err((*e).clone()),
                    // The run this request waited for failed (say, that request's
                    // deadline): run this one on its own.
                    (Err(_), None) => {
                        self.miss(stats, started.elapsed());
                        served.pool.infer(retry, options).await
                    }
                }
            }
        }
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

    /// Counts an insert and applies the evictions it causes at once, so the cache is
    /// back under its budget before the request is answered.
    async fn inserted(&self) {
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        self.entries.run_pending_tasks().await;
    }
}

/// What decides a model version's answer: compared in full on every hit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fingerprint {
    pub model: String,
    pub version: u64,
    pub generation: u64,
    pub inputs: Vec<Tensor>,
}

/// What identifies the request being answered, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe<'a> {
    pub model: &'a str,
    pub version: u64,
    pub generation: u64,
    pub inputs: &'a [Tensor],
}

impl Probe<'_> {
    /// The 128-bit hash of the fingerprint; every field is length-prefixed so no two
    /// different fingerprints serialize alike.
    pub fn hash(&self) -> u128 {
        let mut h = Xxh3::new();
        let text = |h: &mut Xxh3, s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        text(&mut h, self.model);
        h.update(&self.version.to_le_bytes());
        h.update(&self.generation.to_le_bytes());
        h.update(&(self.inputs.len() as u64).to_le_bytes());
        for t in self.inputs {
            text(&mut h, &t.name);
            text(&mut h, t.datatype.v2_name());
            h.update(&(t.shape.len() as u64).to_le_bytes());
            for &d in &t.shape {
                h.update(&(d as u64).to_le_bytes());
            }
            h.update(&(t.data.len() as u64).to_le_bytes());
            h.update(&t.data);
        }
        h.digest128()
    }

    /// The stored entry answers exactly this request.
    pub fn matches(&self, f: &Fingerprint) -> bool {
        f.model == self.model
            && f.version == self.version
            && f.generation == self.generation
            && f.inputs.len() == self.inputs.len()
            && f.inputs.iter().zip(self.inputs).all(|(a, b)| {
                a.name == b.name
                    && a.datatype == b.datatype
                    && a.shape == b.shape
                    && a.data == b.data
            })
    }

    /// An owned fingerprint, its input bytes copied so an entry never pins a larger
    /// request body it was sliced from.
    pub fn to_fingerprint(self) -> Fingerprint {
        Fingerprint {
            model: self.model.to_owned(),
            version: self.version,
            generation: self.generation,
            inputs: self.inputs.iter().map(compact).collect(),
        }
    }
}

/// A tensor whose bytes are its own (not a slice of a batch or request buffer).
fn compact(t: &Tensor) -> Tensor {
    Tensor {
        name: t.name.clone(),
        datatype: t.datatype,
        shape: t.shape.clone(),
        data: Bytes::copy_from_slice(&t.data),
    }
}

/// One cached answer: what it answers and every output of the model.
#[derive(Debug)]
pub(crate) struct Entry {
    pub fingerprint: Fingerprint,
    pub outputs: Vec<Tensor>,
}

/// Bookkeeping bytes counted per entry and per tensor besides names and data.
const ENTRY_OVERHEAD: usize = 160;
const TENSOR_OVERHEAD: usize = 80;

impl Entry {
    pub fn new(probe: Probe<'_>, outputs: &[Tensor]) -> Entry {
        Entry {
            fingerprint: probe.to_fingerprint(),
            outputs: outputs.iter().map(compact).collect(),
        }
    }

    /// The bytes this entry takes out of the budget (key included).
    pub fn weight(&self) -> u32 {
        let tensor = |t: &Tensor| TENSOR_OVERHEAD + t.name.len() + t.shape.len() * 8 + t.data.len();
        let bytes = ENTRY_OVERHEAD
            + 16
            + self.fingerprint.model.len()
            + self.fingerprint.inputs.iter().map(tensor).sum::<usize>()
            + self.outputs.iter().map(tensor).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
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
    /// Bytes the entries take now, and the budget.
    pub bytes: u64,
    pub budget_bytes: u64,
    pub entries: u64,
    /// See `CacheCounters::pending`.
    pub pending: u64,
}

/// The in-process response cache. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ResponseCache {
    pub entries: moka::future::Cache<u128, Arc<Entry>>,
    pub counters: Arc<CacheCounters>,
    budget_bytes: u64,
}

impl ResponseCache {
    pub fn new(config: LocalCacheConfig) -> ResponseCache {
        let counters = Arc::new(CacheCounters::default());
        let evictions = Arc::clone(&counters);
        let mut builder = moka::future::Cache::builder()
            .name("sluice-response-cache")
            .max_capacity(config.size_bytes)
            .weigher(|_: &u128, e: &Arc<Entry>| e.weight())
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
            });
        if let Some(ttl) = config.ttl {
            builder = builder.time_to_live(ttl);
        }
        ResponseCache {
            entries: builder.build(),
            counters,
            budget_bytes: config.size_bytes,
        }
    }

    /// Applies pending evictions, so the figures read next are exact.
    pub async fn settle(&self) {
        self.entries.run_pending_tasks().await;
    }

    pub fn stats(&self) -> CacheStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: load(&self.counters.hits),
            misses: load(&self.counters.misses),
            inserts: load(&self.counters.inserts),
            evictions: load(&self.counters.evictions),
            bytes: self.entries.weighted_size(),
            budget_bytes: self.budget_bytes,
            entries: self.entries.entry_count(),
            pending: load(&self.counters.pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::DataType;

    use super::*;

    fn t(name: &str, dt: DataType, shape: Vec<usize>, data: &[u8]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: dt,
            shape,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn probe(inputs: &[Tensor]) -> Probe<'_> {
        Probe {
            model: "m",
            version: 1,
            generation: 7,
            inputs,
        }
    }

    #[test]
    fn config_parses_triton_flags() {
        assert_eq!(CacheConfig::parse::<&str>(&[]).unwrap(), CacheConfig::None);
        assert_eq!(CacheConfig::parse(&["none"]).unwrap(), CacheConfig::None);
        assert_eq!(
            CacheConfig::parse(&["local,size=1048576"]).unwrap(),
            CacheConfig::Local(LocalCacheConfig {
                size_bytes: 1_048_576,
                ttl: None
            })
        );
        assert_eq!(
            CacheConfig::parse(&["local,size=100", "local,ttl=1.5"]).unwrap(),
            CacheConfig::Local(LocalCacheConfig {
                size_bytes: 100,
                ttl: Some(Duration::from_millis(1500))
            })
        );
        for bad in [
            &["local"][..],
            &["local,size=0"],
            &["local,size=-1"],
            &["local,size=10,colour=red"],
            &["local,size"],
            &["memcached,size=1"],
            &["none", "local,size=10"],
            &["local,size=10,ttl=0"],
            &["redis,host=localhost"],
        ] {
            assert!(CacheConfig::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_differs_on_everything_that_decides_the_answer() {
        let base = vec![t("x", DataType::F32, vec![1, 2], &[0; 8])];
        let h = probe(&base).hash();
        let variants = [
            vec![t("y", DataType::F32, vec![1, 2], &[0; 8])],
            vec![t("x", DataType::I32, vec![1, 2], &[0; 8])],
            vec![t("x", DataType::F32, vec![2, 1], &[0; 8])],
            vec![t("x", DataType::F32, vec![2], &[0; 8])],
            vec![t("x", DataType::F32, vec![1, 2], &[0, 0, 0, 0, 0, 0, 0, 1])],
            vec![
                t("x", DataType::F32, vec![1, 2], &[0; 8]),
                t("z", DataType::F32, vec![0], &[]),
            ],
        ];
        for v in &variants {
            assert_ne!(probe(v).hash(), h, "{v:?}");
            assert!(!probe(v).matches(&probe(&base).to_fingerprint()));
        }
        let other_version = Probe {
            version: 2,
            ..probe(&base)
        };
        let other_generation = Probe {
            generation: 8,
            ..probe(&base)
        };
        let other_model = Probe {
            model: "n",
            ..probe(&base)
        };
        for p in [other_version, other_generation, other_model] {
            assert_ne!(p.hash(), h);
            assert!(!p.matches(&probe(&base).to_fingerprint()));
        }
        // Equal content in another buffer: the same key.
        let copy = vec![t("x", DataType::F32, vec![1, 2], &[0; 8])];
        assert_eq!(probe(&copy).hash(), h);
        assert!(probe(&copy).matches(&probe(&base).to_fingerprint()));
    }

    #[tokio::test]
    async fn a_colliding_hash_never_returns_another_answer() {
        let cache = ResponseCache::new(LocalCacheConfig {
            size_bytes: 1 << 20,
            ttl: None,
        });
        let a = vec![t("x", DataType::F32, vec![1], &[1, 0, 0, 0])];
        let b = vec![t("x", DataType::F32, vec![1], &[2, 0, 0, 0])];
        let answer = vec![t("y", DataType::F32, vec![1], &[9, 9, 9, 9])];
        // Store a's answer under b's hash, as a collision would.
        cache
            .entries
            .insert(probe(&b).hash(), Arc::new(Entry::new(probe(&a), &answer)))
            .await;
        let found = cache.entries.get(&probe(&b).hash()).await.unwrap();
        assert!(!probe(&b).matches(&found.fingerprint));
        assert!(probe(&a).matches(&found.fingerprint));
    }

    #[tokio::test]
    async fn the_budget_is_never_exceeded() {
        let budget = 64 * 1024;
        let cache = ResponseCache::new(LocalCacheConfig {
            size_bytes: budget,
            ttl: None,
        });
        for i in 0u32..2000 {
            let inputs = vec![t("x", DataType::U32, vec![1], &i.to_le_bytes())];
            let outputs = vec![t("y", DataType::U8, vec![300], &[7; 300])];
            let entry = Arc::new(Entry::new(probe(&inputs), &outputs));
            cache.entries.insert(probe(&inputs).hash(), entry).await;
            cache.settle().await;
            let s = cache.stats();
            assert!(s.bytes <= budget, "{} > {budget} after {i}", s.bytes);
        }
        let s = cache.stats();
        assert!(s.entries > 10, "the cache should hold entries: {s:?}");
        assert!(cache.counters.evictions.load(Ordering::Relaxed) > 0);
    }
}

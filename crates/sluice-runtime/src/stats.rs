//! Statistics of the ready versions, memory use, and the cache's figures.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Error, ModelConfig, Result};

use crate::build::{Served, VersionSlot};
use crate::lookup::Lookup;
use crate::{unavailable, CacheStats, Entry, Outcome, Runtime, VersionStats};

impl Runtime {
    /// Memory taken by the loaded versions together, and the budget if one is set.
    pub fn memory_usage(&self) -> (u64, Option<u64>) {
        let used = self
            .models()
            .values()
            .filter_map(|e| e.serving())
            .map(|l| l.memory_bytes())
            .sum();
        (used, self.inner.config.lifecycle.memory_budget)
    }

    /// Figures of the response cache (after applying pending evictions), when one
    /// is configured.
    pub async fn cache_stats(&self) -> Option<CacheStats> {
        let cache = self.inner.cache.as_ref()?;
        cache.settle().await;
        Some(cache.stats())
    }

    /// Opens the response cache's connections to a shared store (Redis) now, so the
    /// first requests do not pay the handshakes; call it once inside the server's
    /// tokio runtime, before serving. Never fails: a store that is down is an outage.
    pub async fn open_cache(&self) {
        if let Some(cache) = self.inner.cache.as_ref() {
            cache.open().await;
        }
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
        let one = |name: &str, v: u64, served: &Served, config: &ModelConfig| VersionStats {
            name: name.to_owned(),
            version: v,
            stats: Arc::clone(served.pool.stats()),
            queue_len: served.pool.queue_len(),
            load_duration: served.load_duration,
            memory_bytes: served.memory_bytes,
            instances: crate::scale::view(v, served, config),
        };
        if let Some(family) = name.and_then(|n| self.family(n).map(|f| (n, f))) {
            let (name, found) = family;
            found?;
            let rows = self.family_stats(Some(name), version);
            return match (rows.is_empty(), version) {
                (true, Some(v)) => Err(crate::no_version(name, v)),
                _ => Ok(rows),
            };
        }
        let models = self.models();
        let ready = |name: &str, e: &Entry| -> Vec<VersionStats> {
            e.serving().map_or_else(Vec::new, |l| {
                l.ready().map(|(v, s)| one(name, v, s, &l.config)).collect()
            })
        };
        match (name, version) {
            (None, _) => {
                let mut all: Vec<VersionStats> =
                    models.iter().flat_map(|(n, e)| ready(n, e)).collect();
                drop(models);
                all.extend(self.family_stats(None, None));
                all.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
                Ok(all)
            }
            (Some(name), None) => match models.get(name) {
                Some(e) if e.serving().is_some_and(|l| l.ready().next().is_some()) => {
                    Ok(ready(name, e))
                }
                _ => {
                    drop(models);
                    Err(self.not_ready_error(name, None))
                }
            },
            (Some(name), Some(v)) => {
                let found = models.get(name).and_then(|e| {
                    e.serving().and_then(|l| match l.versions.get(&v) {
                        Some(VersionSlot::Ready(s)) => Some(one(name, v, s, &l.config)),
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
}

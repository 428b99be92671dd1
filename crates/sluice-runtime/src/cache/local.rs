//! The in-process store: [`moka`] under a byte budget (a weigher counting
//! fingerprint and output bytes, TinyLFU admission with LRU eviction, an optional
//! TTL). Outputs are shared as `Bytes`, so a hit copies nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::LocalCacheConfig;
use super::key::Entry;
use super::CacheCounters;

pub(crate) struct LocalStore {
    pub entries: moka::future::Cache<u128, Arc<Entry>>,
    pub budget_bytes: u64,
}

impl LocalStore {
    pub fn new(config: LocalCacheConfig, counters: &Arc<CacheCounters>) -> LocalStore {
        let evictions = Arc::clone(counters);
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
        LocalStore {
            entries: builder.build(),
            budget_bytes: config.size_bytes,
        }
    }

    pub async fn get(&self, key: u128) -> Option<Arc<Entry>> {
        self.entries.get(&key).await
    }

    /// Stores and applies the evictions it causes at once, so the cache is back
    /// under its budget before the request is answered.
    pub async fn put(&self, key: u128, entry: Arc<Entry>) {
        self.entries.insert(key, entry).await;
        self.entries.run_pending_tasks().await;
    }
}

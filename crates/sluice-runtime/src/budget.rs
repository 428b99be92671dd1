//! The memory budget: what a version is accounted at, and eviction of the least
//! recently used idle models to make room.

use std::sync::atomic::Ordering;

use crate::build::FileKey;
use crate::lifecycle::drain;
use crate::{Absent, Phase, Runtime};

impl Runtime {
    /// The memory to account for a version: the larger of this measurement and the
    /// first one of the same file.
    pub(crate) fn remembered_memory(
        &self,
        name: &str,
        version: u64,
        file: &FileKey,
        measured: u64,
    ) -> u64 {
        let mut memo = self
            .inner
            .measured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (name.to_owned(), version);
        match memo.get(&key) {
            Some((f, first)) if f == file => measured.max(*first),
            _ => {
                memo.insert(key, (file.clone(), measured));
                measured
            }
        }
    }

    /// Retries getting under the memory budget on a thread of its own (called when a
    /// request finishes while the runtime is over budget).
    pub(crate) fn trim_to_budget(&self) {
        if !self.inner.over_budget.swap(false, Ordering::AcqRel) {
            return;
        }
        let runtime = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-trim".to_owned())
            .spawn(move || {
                let _guard = runtime.lock_loader();
                runtime.make_room(0, "");
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a thread to get under the memory budget");
        }
    }

    /// Unloads least recently used idle models until `need` more bytes fit in the
    /// budget. A model some request holds is never chosen; when nothing can go, the
    /// load proceeds over budget (with a warning) rather than fail a request.
    pub(crate) fn make_room(&self, need: u64, keep: &str) {
        let Some(budget) = self.inner.config.lifecycle.memory_budget else {
            return;
        };
        loop {
            let victim = {
                let mut models = self.models_mut();
                let used: u64 = models
                    .values()
                    .filter_map(|e| e.serving.as_ref())
                    .map(|l| l.memory_bytes())
                    .sum();
                let loaded_count = models.values().filter(|e| e.serving.is_some()).count();
                // The last loaded model stays even when it alone is over the budget:
                // evicting it would only make its next request reload it.
                let last_one = keep.is_empty() && loaded_count <= 1;
                if used.saturating_add(need) <= budget || last_one {
                    self.inner.over_budget.store(false, Ordering::Release);
                    return;
                }
                let candidate = models
                    .iter()
                    .filter(|(n, e)| {
                        n.as_str() != keep
                            && e.phase == Phase::Idle
                            && e.serving
                                .as_ref()
                                .is_some_and(|l| l.memory_bytes() > 0 && l.idle())
                    })
                    .min_by_key(|(_, e)| {
                        e.serving
                            .as_ref()
                            .map_or(0, |l| l.last_used.load(Ordering::Relaxed))
                    })
                    .map(|(n, _)| n.clone());
                let Some(victim) = candidate else {
                    self.inner.over_budget.store(true, Ordering::Release);
                    tracing::warn!(
                        used,
                        need,
                        budget,
                        "over the memory budget: every other loaded model is in use"
                    );
                    return;
                };
                let e = models.get_mut(&victim).expect("chosen from the map");
                e.absent = Absent::Evicted;
                e.autoload = true;
                let loaded = e.serving.take();
                tracing::info!(model = %victim, used, need, budget, "evicting the least recently used idle model");
                loaded
            };
            self.notify();
            if let Some(loaded) = victim {
                drain(&loaded, &[]);
            }
        }
    }
}

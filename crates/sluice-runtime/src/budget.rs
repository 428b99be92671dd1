//! The memory budget: what a version is accounted at, and eviction of the least
//! recently used idle models to make room.

use std::sync::atomic::Ordering;

use sluice_core::FileIdentity;

use crate::lifecycle::drain;
use crate::{Entry, Runtime, State};

impl Runtime {
    /// The memory to account for a version: the larger of this measurement and the
    /// first one of the same file (one whose identity cannot be read is measured anew).
    pub(crate) fn remembered_memory(
        &self,
        name: &str,
        version: u64,
        file: Option<FileIdentity>,
        measured: u64,
    ) -> u64 {
        let mut memo = self
            .inner
            .measured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (name.to_owned(), version);
        match memo.get(&key) {
            Some((f, first)) if FileIdentity::same(Some(*f), file) => measured.max(*first),
            _ => {
                if let Some(file) = file {
                    memo.insert(key, (file, measured));
                }
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
                runtime.make_room(0, None);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a thread to get under the memory budget");
        }
    }

    /// Unloads least recently used idle models until `need` more bytes fit in the
    /// budget, never the model named `keep` (the one being loaded; `None` when
    /// trimming after requests). A model some request holds is never chosen; when
    /// nothing can go, the load proceeds over budget (with a warning) rather than fail
    /// a request.
    pub(crate) fn make_room(&self, need: u64, keep: Option<&str>) {
        let Some(budget) = self.inner.config.lifecycle.memory_budget else {
            return;
        };
        loop {
            let victim = {
                let mut models = self.models_mut();
                let used: u64 = models
                    .values()
                    .filter_map(Entry::serving)
                    .map(|l| l.memory_bytes())
                    .sum();
                let loaded_count = models.values().filter_map(Entry::serving).count();
                // The last loaded model stays even when it alone is over the budget:
                // evicting it would only make its next request reload it.
                let last_one = keep.is_none() && loaded_count <= 1;
                if used.saturating_add(need) <= budget || last_one {
                    self.inner.over_budget.store(false, Ordering::Release);
                    return;
                }
                let steps = crate::ensemble::composing_in_use(models.iter(), None);
                let candidate = models
                    .iter()
                    .filter(|(n, e)| {
                        keep != Some(n.as_str())
                            && !steps.contains(n.as_str())
                            && matches!(&e.state, State::Serving { loaded, reloading: false }
                                if loaded.memory_bytes() > 0 && loaded.idle())
                    })
                    .min_by_key(|(_, e)| {
                        e.serving()
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
                let loaded = e.evict();
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

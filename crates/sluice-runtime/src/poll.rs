//! Poll mode: a thread that scans the repository and applies what changed: new
//! models load, changed ones reload (hot swap), removed ones unload.
//!
//! Key decision: debounce by stability, not by time since the last write: a model is
//! reloaded only when its fingerprint (names and `FileIdentity`s of its files)
//! differs from what was last loaded *and* is the same on two scans in a row, so a
//! copy still in progress is never loaded half-written. A reload that fails leaves
//! the last good versions serving.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::{Error, Result};

use crate::{LoadOptions, Runtime};

/// Starts the poll thread; it ends when the runtime is dropped or shuts down.
pub(crate) fn spawn(runtime: &Runtime, interval: Duration) -> Result<()> {
    let weak = runtime.downgrade();
    std::thread::Builder::new()
        .name("sluice-poll".to_owned())
        .spawn(move || {
            let mut seen = HashMap::new();
            let tick = Duration::from_millis(50).min(interval);
            loop {
                let mut slept = Duration::ZERO;
                while slept < interval {
                    std::thread::sleep(tick);
                    slept += tick;
                    match weak.upgrade() {
                        Some(inner)
                            if !inner
                                .shutting_down
                                .load(std::sync::atomic::Ordering::Acquire) => {}
                        _ => return,
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                scan(&Runtime::from_inner(inner), &mut seen);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::internal(format!("cannot start the poll thread: {e}")))
}

/// One scan: `seen` holds each model's fingerprint from the previous scan.
fn scan(runtime: &Runtime, seen: &mut HashMap<String, u64>) {
    let repository = runtime.repository();
    let Ok(names) = repository.model_names() else {
        tracing::warn!("poll: cannot read the repository; keeping every model as it is");
        return;
    };
    let mut now = HashMap::new();
    for name in &names {
        if let Ok(fp) = repository.fingerprint(name) {
            now.insert(name.clone(), fp);
        }
    }
    for (name, &fp) in &now {
        if runtime.is_shutting_down() {
            return;
        }
        let stable = seen.get(name) == Some(&fp);
        if !stable {
            continue;
        }
        let (known, applied, evicted) = runtime.poll_view(name);
        if applied == Some(fp) || evicted {
            // Unchanged, or evicted: the next load reads whatever is on disk then.
            continue;
        }
        tracing::info!(model = %name, new = !known, "poll: model changed on disk; loading");
        let _ = runtime.load_now(name, &LoadOptions::default());
    }
    for name in runtime.known_models() {
        if !now.contains_key(&name) && !names.contains(&name) {
            tracing::info!(model = %name, "poll: model left the repository; unloading");
            let _ = runtime.unload_now(&name, true);
        }
    }
    *seen = now;
}

impl Runtime {
    /// For the poll thread: whether the model is known, the fingerprint of its last
    /// load, and whether it is evicted.
    fn poll_view(&self, name: &str) -> (bool, Option<u64>, bool) {
        let models = self.models();
        match models.get(name) {
            None => (false, None, false),
            Some(e) => (
                true,
                e.fingerprint,
                e.absent() == Some(&crate::Absent::Evicted),
            ),
        }
    }

    fn known_models(&self) -> Vec<String> {
        self.models().keys().cloned().collect()
    }
}

//! Where a request stands with its model: ready, wait for a load, start one, or
//! fail with Triton's error texts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{Error, Result};

use crate::build::{Served, VersionSlot};
use crate::{no_version, unavailable, unknown_model, Absent, Entry, Runtime, State};

/// Where a request stands with its model.
pub(crate) enum Lookup {
    Ready(Arc<Served>, u64),
    /// A load is under way: wait for a change.
    Wait,
    /// Nothing serves and a load may start.
    Start,
    Fail(Error),
}

impl Runtime {
    /// Where a request for `name` (and `version`) stands, without waiting.
    pub(crate) fn lookup(&self, name: &str, version: Option<u64>) -> Lookup {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Lookup::Fail(Error::unavailable("the server is shutting down"));
        }
        let models = self.models();
        let Some(e) = models.get(name) else {
            if let Err(e) = sluice_repository::check_model_name(name) {
                return Lookup::Fail(e);
            }
            let on_disk = self.inner.repository.root().join(name).is_dir();
            return if on_disk && self.may_autoload_unknown() {
                Lookup::Start
            } else if on_disk {
                Lookup::Fail(unavailable(name, &Absent::NotLoaded.reason()))
            } else {
                Lookup::Fail(unknown_model(name))
            };
        };
        let loading = e.loading();
        let loaded = match &e.state {
            State::Serving { loaded, .. } => loaded,
            State::Loading { .. } => return Lookup::Wait,
            State::Unloading => return Lookup::Fail(unavailable(name, "unloading")),
            State::Absent(_) if e.startable() => return Lookup::Start,
            State::Absent(a) => return Lookup::Fail(unavailable(name, &a.reason())),
        };
        let found = match version {
            Some(v) => match loaded.versions.get(&v) {
                Some(VersionSlot::Ready(s)) => Some((Arc::clone(s), v)),
                _ if loading => return Lookup::Wait,
                None => return Lookup::Fail(no_version(name, v)),
                Some(VersionSlot::Failed(reason)) => {
                    return Lookup::Fail(Error::unavailable(format!(
                        "Request for unknown model: '{name}' version {v} is not at ready state ({reason})"
                    )))
                }
            },
            None => loaded.ready().last().map(|(v, s)| (Arc::clone(s), v)),
        };
        match found {
            Some((served, v)) => {
                let tick = self.inner.clock.fetch_add(1, Ordering::Relaxed) + 1;
                loaded.last_used.store(tick, Ordering::Relaxed);
                Lookup::Ready(served, v)
            }
            None if loading => Lookup::Wait,
            None => {
                let reason = loaded
                    .versions
                    .values()
                    .find_map(|s| match s {
                        VersionSlot::Failed(r) => Some(r.as_str()),
                        VersionSlot::Ready(_) => None,
                    })
                    .unwrap_or("no version is ready");
                Lookup::Fail(unavailable(name, reason))
            }
        }
    }

    /// The version a request runs on: at once when it is ready; after the load when
    /// the model is loading or must first be (re)loaded; an error when its `timeout`
    /// passes first.
    pub(crate) async fn acquire(
        &self,
        name: &str,
        version: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Served>, u64)> {
        // The common case, a loaded model, needs no subscription to changes.
        if let Lookup::Ready(served, v) = self.lookup(name, version) {
            return Ok((served, v));
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        // Subscribed before looking again, so a change in between is not missed.
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.borrow_and_update();
            match self.lookup(name, version) {
                Lookup::Ready(served, v) => return Ok((served, v)),
                Lookup::Fail(e) => return Err(e),
                Lookup::Start => self.start_autoload(name),
                Lookup::Wait => {}
            }
            let changed = match deadline {
                None => changes.changed().await,
                Some(d) => match tokio::time::timeout_at(d, changes.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => {
                        return Err(Error::new(
                            sluice_core::ErrorKind::DeadlineExceeded,
                            format!(
                                "model '{name}' was still loading when the request's timeout of {} ms passed",
                                timeout.unwrap_or_default().as_millis()
                            ),
                        ))
                    }
                },
            };
            if changed.is_err() {
                return Err(Error::unavailable("the server is shutting down"));
            }
        }
    }

    /// Checks that a model (and version) can serve now or after a load it may start,
    /// without running anything.
    pub fn check_servable(&self, name: &str, version: Option<u64>) -> Result<()> {
        if let Some(described) = self.family_described(name) {
            return described.and_then(|(_, v)| match version {
                Some(asked) if asked != v => Err(no_version(name, asked)),
                _ => Ok(()),
            });
        }
        match self.lookup(name, version) {
            Lookup::Fail(e) => Err(e),
            Lookup::Ready(..) | Lookup::Wait | Lookup::Start => Ok(()),
        }
    }

    /// Whether a model (or one version) can serve: ready, or loadable on first use.
    /// Unknown model or version: `NotFound`.
    pub fn model_ready(&self, name: &str, version: Option<u64>) -> Result<bool> {
        if let Some(described) = self.family_described(name) {
            return match (described, version) {
                (Ok((_, v)), Some(asked)) if asked != v => Err(no_version(name, asked)),
                (described, _) => Ok(described.is_ok()),
            };
        }
        match self.lookup(name, version) {
            Lookup::Ready(..) | Lookup::Start => Ok(true),
            // Reloading after an eviction is invisible to clients; other loads are not ready yet.
            Lookup::Wait => Ok(self.models().get(name).is_some_and(Entry::on_demand)),
            Lookup::Fail(e) if e.kind() == sluice_core::ErrorKind::NotFound => Err(e),
            Lookup::Fail(_) => Ok(false),
        }
    }
}

//! The hook through which repositories that are not local folders (object stores,
//! mirrored into a local view folder by `sluice-objstore`) take part: reasons in the
//! repository index, and a refresh before an explicit load.
//!
//! Key decision: the runtime still reads one local folder; what fills that folder is
//! behind this trait, so the runtime names no store and no store client.

use std::sync::Arc;

use sluice_core::{Error, Result};

use crate::{IndexEntry, ModelState, Runtime};

/// What the runtime asks of the code that mirrors remote repositories.
pub trait RemoteRepositories: Send + Sync {
    /// `(name, reason)` pairs for the index: a model whose store has a problem (the
    /// reason is added to its row), or a name the index does not list yet (a whole
    /// repository by its URL, a model not downloaded), shown as `UNAVAILABLE`.
    fn notes(&self) -> Vec<(String, String)>;

    /// Explicit mode, before a load reads the repository folder: bring `name` up to
    /// date in it. An `Err` fails the load with that (credential-free) reason.
    fn refresh(&self, name: &str) -> std::result::Result<(), String>;
}

impl Runtime {
    /// Attaches the remote repositories (once; later calls are ignored).
    pub fn attach_remote(&self, remote: Arc<dyn RemoteRepositories>) {
        let _ = self.inner.remote.set(remote);
    }

    /// Loads a model that appeared in the repository folder after start-up, in any
    /// control mode (a store that was down at start answered later). Blocking.
    pub fn load_discovered(&self, name: &str) -> Result<()> {
        sluice_repository::check_model_name(name)?;
        self.load_now(name, &crate::LoadOptions::default())
    }

    /// Explicit loads: refresh the model from its store first.
    pub(crate) fn refresh_remote(&self, name: &str) -> Result<()> {
        match self.inner.remote.get() {
            Some(r) => r.refresh(name).map_err(Error::unavailable),
            None => Ok(()),
        }
    }
}

/// Adds the remote notes to the index rows (sorted by name, as the index is).
pub(crate) fn annotate(remote: Option<&Arc<dyn RemoteRepositories>>, rows: &mut Vec<IndexEntry>) {
    let Some(remote) = remote else { return };
    let mut added = false;
    for (name, reason) in remote.notes() {
        let mut found = false;
        for row in rows.iter_mut().filter(|r| r.name == name) {
            found = true;
            row.reason = if row.reason.is_empty() {
                reason.clone()
            } else {
                format!("{}; {reason}", row.reason)
            };
        }
        if !found {
            added = true;
            rows.push(IndexEntry {
                name,
                version: None,
                state: ModelState::Unavailable,
                reason,
                load_duration: None,
                memory_bytes: None,
                instances: None,
            });
        }
    }
    if added {
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    }
}

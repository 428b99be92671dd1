//! The registry's record of one model: what serves, what it is doing, and why
//! nothing serves when nothing does.

use std::sync::Arc;

use sluice_core::ModelConfig;

use crate::build::Loaded;

/// What a model is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    Loading,
    Unloading,
}

/// Why a model has nothing serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Absent {
    NotLoaded,
    Unloaded,
    Evicted,
    Failed(String),
}

impl Absent {
    pub(crate) fn reason(&self) -> String {
        match self {
            Absent::NotLoaded => "not loaded".to_owned(),
            Absent::Unloaded => "unloaded".to_owned(),
            Absent::Evicted => {
                "unloaded to stay under the memory budget; loads again on first use".to_owned()
            }
            Absent::Failed(reason) => reason.clone(),
        }
    }
}

/// Config, platform and versions of the last load, kept while a model is evicted so
/// its metadata and config still answer.
pub(crate) struct Shell {
    pub(crate) config: Arc<ModelConfig>,
    pub(crate) platform: String,
    pub(crate) versions: Vec<u64>,
}

/// A model the registry knows.
pub(crate) struct Entry {
    pub(crate) serving: Option<Arc<Loaded>>,
    pub(crate) phase: Phase,
    /// Why nothing serves (meaningful while `serving` is `None`).
    pub(crate) absent: Absent,
    /// May be loaded on first use (a memory budget is set and it was not unloaded on purpose).
    pub(crate) autoload: bool,
    /// The repository fingerprint of the files the last load attempt read (poll mode).
    pub(crate) fingerprint: Option<u64>,
    pub(crate) shell: Option<Shell>,
}

impl Entry {
    pub(crate) fn new(autoload: bool) -> Entry {
        Entry {
            serving: None,
            phase: Phase::Idle,
            absent: Absent::NotLoaded,
            autoload,
            fingerprint: None,
            shell: None,
        }
    }

    /// Nothing serves, but requests are served through a load on first use (evicted,
    /// or not yet loaded under a memory budget), whether or not that load runs now.
    pub(crate) fn on_demand(&self) -> bool {
        self.serving.is_none()
            && self.autoload
            && matches!(self.absent, Absent::NotLoaded | Absent::Evicted)
    }

    /// Nothing serves but a request may start a load.
    pub(crate) fn startable(&self) -> bool {
        self.serving.is_none()
            && self.phase == Phase::Idle
            && self.autoload
            && matches!(self.absent, Absent::NotLoaded | Absent::Evicted)
    }
}

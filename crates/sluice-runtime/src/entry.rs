//! The registry's record of one model: what serves, what it is doing, and why
//! nothing serves when nothing does.

use std::sync::Arc;

use sluice_core::ModelConfig;

use crate::build::Loaded;

/// Why a model has nothing serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Absent {
    NotLoaded,
    Unloaded,
    Evicted,
    Failed(String),
}

impl Absent {
    /// Nothing serves yet, or it was evicted: a first use may load it.
    pub(crate) fn on_demand(&self) -> bool {
        matches!(self, Absent::NotLoaded | Absent::Evicted)
    }

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

/// Where a model stands. Each state holds only what is true in it: a model serves
/// a [`Loaded`] only in `Serving`, and has a reason for serving nothing only in the
/// states where nothing serves.
pub(crate) enum State {
    /// Serves `loaded`. `reloading`: a new load is being built beside it (requests
    /// for a version it lacks wait for that load instead of failing).
    Serving {
        loaded: Arc<Loaded>,
        reloading: bool,
    },
    /// A load is under way and nothing serves; `after` is why nothing served before
    /// (so a reload after an eviction stays invisible to readiness).
    Loading { after: Absent },
    /// An unload is draining: nothing new is accepted, held requests finish.
    Unloading,
    /// Nothing serves and nothing is under way, for this reason.
    Absent(Absent),
}

/// A model the registry knows: its state, and what outlives one load.
pub(crate) struct Entry {
    pub(crate) state: State,
    /// May be loaded on first use (a memory budget is set and it was not unloaded on purpose).
    pub(crate) autoload: bool,
    /// The repository fingerprint of the files the last load attempt read (poll mode).
    pub(crate) fingerprint: Option<u64>,
    /// What the last successful load served, for answers while it is evicted.
    pub(crate) shell: Option<Shell>,
}

impl Entry {
    pub(crate) fn new(autoload: bool) -> Entry {
        Entry {
            state: State::Absent(Absent::NotLoaded),
            autoload,
            fingerprint: None,
            shell: None,
        }
    }

    /// What serves, in any state.
    pub(crate) fn serving(&self) -> Option<&Arc<Loaded>> {
        match &self.state {
            State::Serving { loaded, .. } => Some(loaded),
            State::Loading { .. } | State::Unloading | State::Absent(_) => None,
        }
    }

    /// Why nothing serves, while nothing serves and no unload runs.
    pub(crate) fn absent(&self) -> Option<&Absent> {
        match &self.state {
            State::Absent(a) | State::Loading { after: a } => Some(a),
            State::Serving { .. } | State::Unloading => None,
        }
    }

    /// A load is under way (first load or a reload beside what serves).
    pub(crate) fn loading(&self) -> bool {
        matches!(
            self.state,
            State::Loading { .. }
                | State::Serving {
                    reloading: true,
                    ..
                }
        )
    }

    /// The reason an answer gives when nothing serves.
    pub(crate) fn reason(&self) -> String {
        self.absent()
            .map_or_else(|| "unloading".to_owned(), Absent::reason)
    }

    /// Nothing serves, but requests are served through a load on first use (evicted,
    /// or not yet loaded under a memory budget), whether or not that load runs now.
    /// While an unload drains, the model counts as it did before the unload (a load
    /// leaves `NotLoaded` as its reason, so that is `autoload`).
    pub(crate) fn on_demand(&self) -> bool {
        match &self.state {
            State::Serving { .. } => false,
            State::Unloading => self.autoload,
            State::Loading { after: a } | State::Absent(a) => self.autoload && a.on_demand(),
        }
    }

    /// Nothing serves, nothing runs, and a request may start a load.
    pub(crate) fn startable(&self) -> bool {
        matches!(&self.state, State::Absent(a) if self.autoload && a.on_demand())
    }

    /// A load begins: beside what serves, or from nothing.
    pub(crate) fn begin_load(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Unloading) {
            State::Serving { loaded, .. } => State::Serving {
                loaded,
                reloading: true,
            },
            State::Loading { after } | State::Absent(after) => State::Loading { after },
            State::Unloading => State::Loading {
                after: Absent::NotLoaded,
            },
        };
    }

    /// A load failed (or could not start): what serves keeps serving; else the
    /// model is absent for `reason`.
    pub(crate) fn load_failed(&mut self, reason: String) {
        self.state = match std::mem::replace(&mut self.state, State::Unloading) {
            State::Serving { loaded, .. } => State::Serving {
                loaded,
                reloading: false,
            },
            State::Loading { .. } | State::Unloading | State::Absent(_) => {
                State::Absent(Absent::Failed(reason))
            }
        };
    }

    /// A load succeeded: `loaded` serves now; returns what served before.
    pub(crate) fn serve(&mut self, loaded: Arc<Loaded>) -> Option<Arc<Loaded>> {
        let new = State::Serving {
            loaded,
            reloading: false,
        };
        match std::mem::replace(&mut self.state, new) {
            State::Serving { loaded, .. } => Some(loaded),
            State::Loading { .. } | State::Unloading | State::Absent(_) => None,
        }
    }

    /// An unload begins: returns what served, to drain.
    pub(crate) fn begin_unload(&mut self) -> Option<Arc<Loaded>> {
        match std::mem::replace(&mut self.state, State::Unloading) {
            State::Serving { loaded, .. } => Some(loaded),
            State::Loading { .. } | State::Unloading | State::Absent(_) => None,
        }
    }

    /// Evicted under the memory budget: returns what served, to drain; the next
    /// request loads it again.
    pub(crate) fn evict(&mut self) -> Option<Arc<Loaded>> {
        self.autoload = true;
        match std::mem::replace(&mut self.state, State::Absent(Absent::Evicted)) {
            State::Serving { loaded, .. } => Some(loaded),
            other => {
                self.state = other;
                None
            }
        }
    }
}

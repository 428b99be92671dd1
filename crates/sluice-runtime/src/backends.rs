//! The engines the binary injects, by name: this crate never names one.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::Backend;

/// Named backends available to the runtime.
#[derive(Clone, Default)]
pub struct Backends {
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
}

impl Backends {
    pub fn new() -> Self {
        Self::default()
    }
    #[must_use]
    pub fn with(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backends.insert(backend.name(), backend);
        self
    }
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        self.backends.get(name)
    }
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.backends.keys().copied().collect()
    }
}

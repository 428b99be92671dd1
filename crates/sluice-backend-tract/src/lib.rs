//! The tract backend: ONNX models run by tract, the pure-Rust inference engine,
//! with nothing to install.
//!
//! Key decision: a model is parsed, typed and optimized once at load into shared
//! plans (`Arc<TypedRunnableModel>`); each instance only owns run states over them,
//! so extra instances cost no extra weights. When the model batches
//! (`max_batch_size > 0`) dimension 0 is the batch symbol (the file's own, or `N`),
//! and every `-1` dimension of the config keeps the ONNX file's own symbol (so
//! inputs that share a sequence length stay tied) or gets a fresh one; that
//! symbolic plan serves every shape the config allows. Because tract runs fixed shapes several times faster on
//! convolutional networks, a batching model also gets one plan per *planned* batch
//! size ([`BatchPlans`], the `tract_planned_batch_sizes` parameter). The plans are
//! timed at load (the fastest of a few runs), and a batch runs as the cheapest
//! sequence of runs: padded up to one larger plan, cut into several smaller ones when tract's per-item cost
//! grows with the batch (it does on convnets), or on the symbolic plan; the outputs
//! are sliced and joined back, invisible to the scheduler. tract's errors become `Error`s and its panics are caught at the
//! backend boundary: a model that fails to load or a run that fails is an error for
//! that model or request, never a crash of the server.

mod cache;
mod calibrate;
mod convert;
mod graph;
mod instance;
mod plans;

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_core::{Backend, Error, LoadSpec, LoadedModel, ModelConfig, Result};
use tract_onnx::prelude::{TractError, TypedRunnableModel};

use crate::cache::Caches;
use crate::calibrate::Calibration;
use crate::plans::Schedule;
pub use crate::plans::{BatchPlans, PLANNED_BATCH_SIZES};

/// Settings of the tract backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TractConfig {
    /// Which fixed-batch plans to prepare next to the symbolic one.
    pub batch_plans: BatchPlans,
}

/// The tract execution backend. Clones share one set of caches (plans of loaded
/// models, calibrations); separately made backends share nothing.
#[derive(Debug, Clone, Default)]
pub struct TractBackend {
    config: TractConfig,
    caches: Arc<Caches>,
}

impl TractBackend {
    /// The backend with its defaults (planned batch sizes per model).
    pub fn new() -> Self {
        TractBackend::default()
    }

    pub fn with_config(config: TractConfig) -> Self {
        TractBackend {
            config,
            caches: Arc::default(),
        }
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let loaded =
            sluice_core::catch_panics("tract", "loading", || self.caches.load(spec, self.config))?;
        Ok(Arc::new(loaded))
    }
}

pub(crate) struct TractModel {
    /// The plans, shared with other loads of the same file (see [`load`]).
    pub(crate) plans: Arc<Plans>,
    pub(crate) batching: bool,
    pub(crate) config: ModelConfig,
}

pub(crate) fn tract_err(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::invalid(format!("{context}: {e:#}"))
}

/// A model's optimized plans and their schedule: immutable, shared by every loaded
/// model built from the same unchanged file with the same shapes and plans.
pub(crate) struct Plans {
    /// The plan with a symbolic batch: serves every batch size.
    pub(crate) symbolic: Arc<TypedRunnableModel>,
    /// Fixed-batch plans by batch size, ascending.
    pub(crate) planned: BTreeMap<usize, Arc<TypedRunnableModel>>,
    /// How each batch size runs on them.
    pub(crate) schedule: Arc<Schedule>,
    /// The timings the schedule was made from.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "read by the tests that check calibrations are shared"
        )
    )]
    pub(crate) calibration: Option<Calibration>,
}

#[cfg(test)]
mod tests;

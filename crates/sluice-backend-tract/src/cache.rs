//! What loads of the same unchanged file share: the optimized plans (while a
//! model built from them is loaded) and the calibration (for the life of the
//! backend value).
//!
//! Key decision: the caches belong to the [`TractBackend`](crate::TractBackend) value
//! (an `Arc<Caches>` its clones share), not to the process: two backends — two
//! servers in one process, or two tests — never see each other's plans or timings.
//! Entries are keyed by a [`PlanKey`]: the file's [`FileIdentity`] and every part of
//! the config that shapes a plan, compared field by field.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use sluice_core::{DataType, FileIdentity, LoadSpec, ModelConfig, Result};
use tract_onnx::prelude::TypedRunnableModel;

use crate::calibrate::{calibrate, Calibration};
use crate::graph::{build, check_datatypes};
use crate::{plans, Plans, TractConfig, TractModel};

/// The caches of one backend value.
#[derive(Default)]
pub(crate) struct Caches {
    /// Plans of loaded models. Weak: the plans live only while a loaded model or
    /// one of its instances holds them; a dead entry is pruned on the next insert.
    plans: Mutex<HashMap<PlanKey, Weak<Plans>>>,
    /// Calibrations, kept after their plans go, so a reload gets the same schedule.
    calibrations: Mutex<HashMap<PlanKey, Calibration>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("plans", &lock(&self.plans).len())
            .field("calibrations", &lock(&self.calibrations).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One tensor of the config as far as a plan depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TensorShape {
    name: String,
    data_type: DataType,
    dims: Vec<i64>,
}

/// What a plan is built from: the file, the config's inputs and outputs (names,
/// datatypes, dims), the batch size, and the planned batch sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PlanKey {
    file: FileIdentity,
    inputs: Vec<TensorShape>,
    outputs: Vec<TensorShape>,
    max_batch_size: i32,
    sizes: Vec<usize>,
}

impl PlanKey {
    /// `None` when the file cannot be identified (then nothing is shared).
    fn of(spec: &LoadSpec<'_>, sizes: &[usize]) -> Option<PlanKey> {
        let shapes = |ts: &[sluice_core::TensorConfig]| {
            ts.iter()
                .map(|t| TensorShape {
                    name: t.name.clone(),
                    data_type: t.data_type,
                    dims: t.dims.clone(),
                })
                .collect()
        };
        Some(PlanKey {
            file: FileIdentity::of(spec.model_file)?,
            inputs: shapes(&spec.config.input),
            outputs: shapes(&spec.config.output),
            max_batch_size: spec.config.max_batch_size,
            sizes: sizes.to_vec(),
        })
    }
}

impl Caches {
    /// Loads a model. When a model loaded from the same unchanged file, with the same
    /// inputs, outputs, batch size and plans, is still loaded, its plans are shared
    /// (they are immutable; each instance keeps its own run state): the same file
    /// served under several names or versions costs its weights once and loads at
    /// once, and runs on the very same plans (separately built copies of one file were
    /// measured up to 10 % apart in speed in one process).
    pub(crate) fn load(&self, spec: &LoadSpec<'_>, backend: TractConfig) -> Result<TractModel> {
        let config = spec.config;
        check_datatypes(config)?;
        let sizes = plans::planned_sizes(backend.batch_plans, config)?;
        spec.check_file_exists()?;
        let key = PlanKey::of(spec, &sizes);
        let found = key
            .as_ref()
            .and_then(|k| lock(&self.plans).get(k).and_then(Weak::upgrade));
        let plans = match found {
            Some(plans) => {
                tracing::info!(
                    model = spec.model_name,
                    version = spec.version,
                    "tract plans shared with a loaded model of the same file"
                );
                plans
            }
            None => {
                let plans = Arc::new(build(spec, sizes, self, key.as_ref())?);
                match key {
                    Some(k) => {
                        let mut map = lock(&self.plans);
                        map.retain(|_, w| w.strong_count() > 0);
                        // Two loads of the same file at once: the first one stored wins.
                        match map.get(&k).and_then(Weak::upgrade) {
                            Some(first) => first,
                            None => {
                                map.insert(k, Arc::downgrade(&plans));
                                plans
                            }
                        }
                    }
                    None => plans,
                }
            }
        };
        Ok(TractModel {
            plans,
            batching: config.max_batch_size > 0,
            config: config.clone(),
        })
    }

    /// [`calibrate`], remembered for the same unchanged file and plans: a model
    /// reloaded (hot swap of its config, eviction under a memory budget, the same
    /// file under several names) gets the same schedule at once instead of timings
    /// taken anew, which on a busy machine can differ by a fifth between two loads of
    /// one file.
    pub(crate) fn calibrate_once(
        &self,
        key: Option<&PlanKey>,
        symbolic: &Arc<TypedRunnableModel>,
        planned: &BTreeMap<usize, Arc<TypedRunnableModel>>,
        config: &ModelConfig,
    ) -> Option<Calibration> {
        if let Some(c) = key.and_then(|k| lock(&self.calibrations).get(k).cloned()) {
            return Some(c);
        }
        let c = calibrate(symbolic, planned, config)?;
        let Some(k) = key else { return Some(c) };
        // Two loads timing the same file at once: the first one remembered wins.
        Some(
            lock(&self.calibrations)
                .entry(k.clone())
                .or_insert(c)
                .clone(),
        )
    }
}

//! What loads of the same unchanged file share: the optimized plans (while a
//! model built from them is loaded) and the calibration (for the process).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_core::{LoadSpec, ModelConfig, Result};
use tract_onnx::prelude::TypedRunnableModel;

use crate::calibrate::{calibrate, Calibration};
use crate::graph::{build, check_datatypes};
use crate::{plans, Plans, TractConfig, TractModel};
use std::collections::BTreeMap;

/// An unchanged file: device, inode, size, modification time (ns).
type FileId = (u64, u64, u64, i128);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The file and what of the config shapes the plans.
type PlanKey = (FileId, String);

fn plan_key(path: &std::path::Path, config: &ModelConfig, sizes: &[usize]) -> Option<PlanKey> {
    let shape = format!(
        "{:?}",
        (&config.input, &config.output, config.max_batch_size, sizes)
    );
    Some((file_id(path)?, shape))
}

/// Loads a model. When a model loaded from the same unchanged file, with the same
/// inputs, outputs, batch size and plans, is still loaded, its plans are shared (they
/// are immutable; each instance keeps its own run state): the same file served under
/// several names or versions costs its weights once and loads at once, and runs on
/// the very same plans (separately built copies of one file were measured up to 10 %
/// apart in speed in one process).
pub(crate) fn load(spec: &LoadSpec<'_>, backend: TractConfig) -> Result<TractModel> {
    type Shared = std::sync::Mutex<HashMap<PlanKey, std::sync::Weak<Plans>>>;
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let config = spec.config;
    check_datatypes(config)?;
    let sizes = plans::planned_sizes(backend.batch_plans, config)?;
    spec.check_file_exists()?;
    let key = plan_key(spec.model_file, config, &sizes);
    let shared = SHARED.get_or_init(Default::default);
    let found = key
        .as_ref()
        .and_then(|k| lock(shared).get(k).and_then(std::sync::Weak::upgrade));
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
            let plans = Arc::new(build(spec, sizes)?);
            match key {
                Some(k) => {
                    let mut map = lock(shared);
                    map.retain(|_, w| w.strong_count() > 0);
                    // Two loads of the same file at once: the first one stored wins.
                    match map.get(&k).and_then(std::sync::Weak::upgrade) {
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

/// What a calibration depends on: the file, the planned sizes and the input shapes.
type CalibrationKey = (FileId, Vec<usize>, Vec<Vec<i64>>);

/// [`calibrate`], remembered per process for the same unchanged file and plans: a
/// model reloaded (hot swap of its config, eviction under a memory budget, the same
/// file under several names) gets the same schedule at once instead of timings taken
/// anew, which on a busy machine can differ by a fifth between two loads of one file.
pub(crate) fn calibrate_once(
    path: &std::path::Path,
    symbolic: &Arc<TypedRunnableModel>,
    planned: &BTreeMap<usize, Arc<TypedRunnableModel>>,
    config: &ModelConfig,
) -> Option<Calibration> {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<HashMap<CalibrationKey, Calibration>>> =
        std::sync::OnceLock::new();
    let key = file_id(path).map(|id| {
        (
            id,
            planned.keys().copied().collect::<Vec<_>>(),
            config
                .input
                .iter()
                .map(|i| i.dims.clone())
                .collect::<Vec<_>>(),
        )
    });
    let seen = SEEN.get_or_init(Default::default);
    if let Some(c) = key.as_ref().and_then(|k| lock(seen).get(k).cloned()) {
        return Some(c);
    }
    let c = calibrate(symbolic, planned, config)?;
    let Some(k) = key else { return Some(c) };
    // Two loads timing the same file at once: the first one remembered wins.
    Some(lock(seen).entry(k).or_insert(c).clone())
}

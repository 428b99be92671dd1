//! Seeds a new pool's learned latency from the model's profile (`profile.json` in
//! its folder, written by `sluice profile`), so its first requests are predicted
//! (early rejection, variant choice) before it has run. A profile that does not
//! parse, or names another version, is logged and ignored: it never fails a load.

use std::path::Path;

use sluice_scheduler::InstancePool;

/// The file a model's profile is read from, in its folder.
pub(crate) const PROFILE_FILE: &str = "profile.json";

pub(crate) fn from_profile(pool: &InstancePool, model_dir: &Path, model: &str, version: u64) {
    let path = model_dir.join(PROFILE_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    match sluice_autoscale::profile::Profile::from_json(&text) {
        Ok(p) if p.version.is_empty() || p.version == version.to_string() => {
            pool.seed_latency(&p.run_latencies());
            tracing::info!(
                model,
                version,
                batch_sizes = p.batches.len(),
                "learned latency seeded from the model's profile"
            );
        }
        Ok(p) => tracing::info!(
            model,
            version,
            profiled = %p.version,
            "the model's profile is of another version; not used"
        ),
        Err(error) => tracing::warn!(model, %error, "the model's profile.json is not used"),
    }
}

//! The backend conformance suite: one set of cases, each a function taking a
//! `&dyn Backend`, that every Sluice backend must pass. It follows tract's "suites
//! vs runners" split: the cases live here, once; each backend crate is a runner
//! whose `tests/conformance.rs` is one line, [`conformance_suite!`], which expands
//! to one `#[test]` per case against that backend. A new case is added here and
//! runs against every backend at once; a new backend gets the whole suite by
//! adding the runner.
//!
//! Key decision: the reference is independent of both engines. Expected outputs
//! come from ONNX Runtime in Python (`scripts/make_conformance_fixtures.py` writes
//! `tests/data/conformance/reference.json`), and each backend is compared with that
//! file within a stated tolerance, never with the other backend.
//!
//! This crate is a dev-dependency only (`publish = false`); it reads files of the
//! repository (example models, broken models, fixtures).

pub mod cases;
mod reference;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sluice_core::Backend;
use sluice_core::{InstanceOptions, LoadSpec, LoadedModel, ModelConfig, Result};
use sluice_repository::{Repository, RepositoryOptions};

pub use reference::{assert_close, reference_cases, ReferenceCase, Tolerance};

/// The workspace root (where `examples/` and `tests/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A model's completed config and the file of its highest version, read the way the
/// server reads them (auto-complete included).
pub fn model_source(repository: &str, model: &str) -> Result<(ModelConfig, PathBuf)> {
    let repo = Repository::open(
        workspace_root().join(repository),
        RepositoryOptions::default(),
    )?;
    let source = repo.read_model(model)?;
    let version = source
        .versions
        .last()
        .ok_or_else(|| sluice_core::Error::not_found(format!("{model} has no version")))?;
    Ok((source.config, version.model_file.clone()))
}

/// Loads `model` from `repository` (relative to the workspace root) on `backend`.
pub fn load(backend: &dyn Backend, repository: &str, model: &str) -> Result<Arc<dyn LoadedModel>> {
    let (config, file) = model_source(repository, model)?;
    load_with(backend, model, &config, &file)
}

/// Loads a model from an explicit config and file.
pub fn load_with(
    backend: &dyn Backend,
    model: &str,
    config: &ModelConfig,
    file: &Path,
) -> Result<Arc<dyn LoadedModel>> {
    backend.load(&LoadSpec {
        model_name: model,
        version: 1,
        model_file: file,
        config,
    })
}

/// Instance options with `threads` intra-op threads.
pub fn threads(index: usize, threads: usize) -> InstanceOptions {
    InstanceOptions {
        index,
        intra_op_threads: threads,
    }
}

/// The ONNX Runtime library for tests: `ORT_DYLIB_PATH`, else the one inside the
/// workspace's `.venv` (the Python test venv). `None` when neither exists.
pub fn ort_library_for_tests() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = workspace_root().join(".venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .find(|p| p.is_dir())
}

/// Whether a runner must fail (rather than skip) when its engine is unavailable:
/// `SLUICE_REQUIRE_ORT=1`, which `scripts/test.sh` sets.
pub fn engine_required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Expands to one `#[test]` per conformance case. `$backend` is an expression of
/// type `Option<Arc<dyn Backend>>`, evaluated in each test; `None` skips the case
/// with a message (an engine that is not installed on this machine).
///
/// ```ignore
/// sluice_backend_tests::conformance_suite!(Some(std::sync::Arc::new(TractBackend::new())));
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!(@cases $backend;
            digits_matches_reference,
            mlp_matches_reference,
            cnn_matches_reference,
            mixed_datatypes_and_several_outputs_match_reference,
            dynamic_shapes_match_reference,
            every_batch_size_matches_row_by_row,
            broken_models_fail_to_load_with_reasons,
            a_config_that_disagrees_with_the_file_is_refused,
            a_failing_run_is_an_error_and_the_instance_recovers,
            instances_run_on_their_own_threads,
        );
    };
    (@cases $backend:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                let backend: ::std::option::Option<::std::sync::Arc<dyn $crate::Backend>> = $backend;
                match backend {
                    ::std::option::Option::Some(b) => $crate::cases::$case(b.as_ref()),
                    ::std::option::Option::None => {
                        eprintln!("skipped {}: backend not available", stringify!($case));
                    }
                }
            }
        )+
    };
}

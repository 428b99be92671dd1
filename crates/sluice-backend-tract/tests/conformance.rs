//! The backend conformance suite (crate `sluice-backend-tests`) against tract, twice:
//! with the default planned batch sizes (fixed-shape plans, padding) and with the
//! symbolic-batch plan only.

mod planned {
    sluice_backend_tests::conformance_suite!(Some(std::sync::Arc::new(
        sluice_backend_tract::TractBackend::new()
    )));
}

mod symbolic_only {
    use sluice_backend_tract::{BatchPlans, TractBackend, TractConfig};

    sluice_backend_tests::conformance_suite!(Some(std::sync::Arc::new(TractBackend::with_config(
        TractConfig {
            batch_plans: BatchPlans::SymbolicOnly,
        }
    ))));
}

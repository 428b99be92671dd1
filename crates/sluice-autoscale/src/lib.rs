//! `sluice-autoscale`: how many replicas, of which hardware, at which batch size.
//!
//! Three parts share one vocabulary (a [`profile::Profile`] per model and hardware
//! class, an arrival [`trace`]): the [`policy`] module holds autoscaling policies as
//! pure functions (Kubernetes HPA v2, KEDA, Knative KPA, Ray Serve, INFaaS and Sluice's
//! SLO-aware policy); [`sim`] is a discrete-event simulator that replays a trace
//! against replicas whose run times come from the profile, with dynamic batching,
//! queueing, cold starts and each policy's control loop at its real interval; [`plan`]
//! searches per-stage hardware, batch size and replica counts of lowest cost whose
//! simulated p99 meets an objective.
//!
//! Key decision: nothing here owns a clock, a thread or a socket. Time is an `f64` of
//! seconds passed in, so the same `decide` runs in the simulator, in tests with exact
//! instants, and behind a server's gauge; and a simulated day takes seconds.

pub mod budget;
pub mod plan;
pub mod plot;
pub mod policy;
pub mod profile;
pub mod profile_plot;
pub mod report;
pub use sluice_core::rng;
pub mod sim;
pub mod trace;

/// Errors of this crate: all are problems with what the user gave (config, profile,
/// trace), reported with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("invalid trace: {0}")]
    Trace(String),
    #[error("plot: {0}")]
    Plot(String),
}

impl Error {
    /// A stable label for the kind of error.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Trace(_) => "trace",
            Error::Plot(_) => "plot",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

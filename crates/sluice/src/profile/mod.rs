//! `sluice profile`: measures models of a repository in this process, through the
//! real runtime, scheduler and engine: per batch size (1, 2, 4, … max_batch_size)
//! the p50/p99 latency of one request and the throughput with the configured
//! instances, the throughput per instance count, the load time and the memory the
//! load took. It writes a `sluice-profile/1` JSON (the format `sluice simulate` and
//! `sluice plan` read, and the server reads at start from `profile.json` in a
//! model's folder to seed its scheduler's learned latency), prints a table, and
//! plots it (SVG). Given several models, it also prints the comparison a reader of
//! Bianco et al. ("Benchmark analysis of representative deep neural network
//! architectures") expects — accuracy, latency at batch 1, best throughput, memory —
//! and plots accuracy against latency.
//!
//! Key decision: the measurement goes through `Runtime::infer`, exactly the path a
//! server request takes after decoding, so the figures include queueing and
//! batching as served (not the raw engine, which `sluice-engine-bench` measures),
//! and the numbers seed a scheduler that sees the same path. With `--url` it measures
//! a running server over the wire instead (module `remote`, through `sluice bench`'s
//! load generator), for a server that is already deployed or is not Sluice.

mod measure;
mod remote;
mod report;

use std::path::{Path, PathBuf};

use anyhow::Context;
use sluice_autoscale::profile::Profile;
use sluice_runtime::{ControlMode, LifecycleConfig, Runtime, RuntimeConfig};

pub use measure::Settings;

/// Flags of `sluice profile`.
#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// The model repository (measured in this process).
    #[arg(long, env = "SLUICE_MODEL_REPOSITORY", required_unless_present_any = ["url", "profile"])]
    model_repository: Option<PathBuf>,
    /// Measure a running server over HTTP instead (`host:port` or `http://host:port`):
    /// Sluice, Triton or any KServe v2 server with Triton's config extension.
    #[arg(long, conflicts_with_all = ["model_repository", "shape", "input"])]
    url: Option<String>,
    /// How requests travel with `--url`.
    #[arg(long, value_enum, default_value_t = RemoteProtocol::HttpBinary, requires = "url")]
    protocol: RemoteProtocol,
    /// A model to profile (repeat for several; a comparison table follows).
    #[arg(long = "model", required_unless_present = "profile")]
    models: Vec<String>,
    /// A profile JSON written earlier, added to the comparison without measuring.
    #[arg(long)]
    profile: Vec<PathBuf>,
    /// Batch sizes to measure (default: 1, 2, 4, … up to max_batch_size, and it).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Instance counts to measure the throughput at (the largest batch size); the
    /// model is reloaded with each (with `--url`: set in place through Sluice's
    /// `POST v2/models/{m}/instances`, and the count it ran put back after). Default:
    /// only the configured count.
    #[arg(long, value_delimiter = ',')]
    instances: Vec<u32>,
    /// Most requests per measured point.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Time per measured point, in seconds (at least 5 requests each).
    #[arg(long, default_value_t = 1.0)]
    seconds_per_point: f64,
    /// A variable input dimension: `NAME=D1,D2` (excluding the batch dimension).
    #[arg(long)]
    shape: Vec<String>,
    /// An input's values from a `.npy` file: `NAME=FILE` (repeatable). For a model
    /// that batches, the file's first dimension is its rows and a request of B rows
    /// takes them in turn; the other dimensions fix the input's shape. For inputs
    /// that random values would make invalid: token ids, type ids, indices.
    #[arg(long, value_parser = sluice_bench::parse_file)]
    input: Vec<(String, PathBuf)>,
    /// Where to write the profile: a file (one model) or a folder (several). Default:
    /// `profile.json` in each model's folder, where the server reads it (with `--url`:
    /// `<model>.profile.json` in the current folder).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Where to write the accuracy-vs-latency plot of several models (SVG).
    #[arg(long)]
    compare_plot: Option<PathBuf>,
    /// The name of this machine kind in the profile.
    #[arg(long, default_value = "this-machine")]
    hardware_class: String,
    /// Threads per instance for one run.
    #[arg(long, default_value_t = 1)]
    intra_op_threads: usize,
    /// Backend for models that do not name one.
    #[arg(long, default_value = "tract")]
    default_backend: String,
    #[command(flatten)]
    engines: crate::engines::EngineArgs,
}

/// The protocols `--url` measures over.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum RemoteProtocol {
    HttpBinary,
    HttpJson,
}

pub fn main(args: ProfileArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds_per_point.is_finite() && args.seconds_per_point > 0.0,
        "--seconds-per-point must be a positive number"
    );
    anyhow::ensure!(args.requests >= 1, "--requests must be at least 1");
    anyhow::ensure!(
        args.output.is_none()
            || args.models.len() <= 1
            || args.output.as_ref().is_some_and(|o| o.is_dir()),
        "--output must be an existing folder when several models are profiled"
    );
    let settings = Settings {
        batch_sizes: args.batch_sizes.clone(),
        instances: args.instances.clone(),
        max_requests: args.requests,
        seconds_per_point: args.seconds_per_point,
        shapes: measure::parse_shapes(&args.shape)?,
        files: args.input.iter().cloned().collect(),
        hardware_class: args.hardware_class.clone(),
    };
    let mut profiles = Vec::new();
    if let (Some(url), false) = (&args.url, args.models.is_empty()) {
        let protocol = match args.protocol {
            RemoteProtocol::HttpBinary => sluice_client::Protocol::HttpBinary,
            RemoteProtocol::HttpJson => sluice_client::Protocol::HttpJson,
        };
        for model in &args.models {
            let profile = remote::measure(url, protocol, model, &settings)
                .with_context(|| format!("profiling model '{model}' at {url}"))?;
            let default = PathBuf::from(format!("{model}.profile.json"));
            profiles.push(keep(profile, args.output.as_deref(), default)?);
        }
    } else if let (Some(repository), false) = (&args.model_repository, args.models.is_empty()) {
        let backends = crate::engines::backends(&args.engines, &args.default_backend)?;
        let runtime = start(&args, repository, backends)?;
        for model in &args.models {
            let profile = measure::measure(&runtime, model, &settings)
                .with_context(|| format!("profiling model '{model}'"))?;
            let default = repository.join(model).join("profile.json");
            profiles.push(keep(profile, args.output.as_deref(), default)?);
        }
        runtime.shutdown();
    }
    for path in &args.profile {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        profiles.push(
            Profile::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        );
    }
    if profiles.len() > 1 {
        println!("{}", report::comparison(&profiles));
        if let Some(path) = &args.compare_plot {
            let svg = sluice_autoscale::profile_plot::accuracy_latency_svg(&profiles)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

/// A runtime over the repository that loads nothing until asked (explicit mode).
pub fn start(
    args: &ProfileArgs,
    repository: &Path,
    backends: sluice_runtime::Backends,
) -> anyhow::Result<Runtime> {
    let config = RuntimeConfig {
        repository: repository.to_path_buf(),
        repository_options: crate::sluice_repository_options(4),
        default_backend: args.default_backend.clone(),
        intra_op_threads: args.intra_op_threads,
        queue_capacity: 4096,
        strict_readiness: false,
        lifecycle: LifecycleConfig {
            mode: ControlMode::Explicit,
            ..LifecycleConfig::default()
        },
        execution_gates: None,
        cache: sluice_runtime::CacheConfig::default(),
    };
    Runtime::start(config, backends).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Writes a measured profile where `--output` says (a folder: `<model>.profile.json`
/// in it; a file: there; none: `default`) and prints its table.
fn keep(profile: Profile, output: Option<&Path>, default: PathBuf) -> anyhow::Result<Profile> {
    let path = match output {
        Some(o) if o.is_dir() => o.join(format!("{}.profile.json", profile.model)),
        Some(o) => o.to_path_buf(),
        None => default,
    };
    write(&path, &profile)?;
    println!("{}", report::table(&profile));
    println!("profile: {}", path.display());
    Ok(profile)
}

/// Writes the profile's JSON and, beside it, its plot (`.svg`).
fn write(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(profile)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    let svg =
        sluice_autoscale::profile_plot::profile_svg(profile).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plot = path.with_extension("svg");
    std::fs::write(&plot, svg).with_context(|| format!("writing {}", plot.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests;

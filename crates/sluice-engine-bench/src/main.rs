//! `engine-bench`: times one model on one of Sluice's backends, in process, the way
//! an instance thread runs it (`Backend::load` once, one `Instance` per intra-op
//! thread count, `Instance::run` on whole batches), and prints one JSON line per
//! (batch, threads) cell. `scripts/bench_engines.py` runs it next to Python's
//! onnxruntime on the same files and writes the table in BENCHMARKS.md.
//!
//! Key decision: no server, no HTTP. The table compares engines, so the numbers
//! must not include protocol costs that are the same for every engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use sluice_backend_ort::{OrtBackend, OrtOptions};
use sluice_backend_tract::{BatchPlans, TractBackend, TractConfig};
use sluice_core::rng::Rng;
use sluice_core::{Backend, DataType, InstanceOptions, Tensor, TensorConfig};
use sluice_repository::{Repository, RepositoryOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// ONNX Runtime through `sluice-backend-ort`.
    Ort,
    /// tract with the planned batch sizes of the model's config.
    Tract,
    /// tract with the symbolic-batch plan only.
    TractSymbolic,
}

/// Times a model on one Sluice backend; prints JSON lines.
#[derive(Parser, Debug)]
struct Args {
    /// Model repository (Triton layout).
    #[arg(long)]
    repository: PathBuf,
    /// Model name in the repository.
    #[arg(long)]
    model: String,
    #[arg(long, value_enum)]
    engine: Engine,
    /// ONNX Runtime library (file or folder), for `--engine ort`.
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Intra-op thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Length of every variable non-batch dimension (sequence length).
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Time to spend per cell after one warm-up run (at least one timed run).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Most timed runs per cell.
    #[arg(long, default_value_t = 200)]
    max_runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend: Arc<dyn Backend> = match args.engine {
        Engine::Ort => {
            let library = args
                .ort_library
                .clone()
                .context("--engine ort needs --ort-library")?;
            Arc::new(OrtBackend::new(&OrtOptions { library }).map_err(anyhow::Error::msg)?)
        }
        Engine::Tract => Arc::new(TractBackend::new()),
        Engine::TractSymbolic => Arc::new(TractBackend::with_config(TractConfig {
            batch_plans: BatchPlans::SymbolicOnly,
        })),
    };
    let repo = Repository::open(&args.repository, RepositoryOptions::default())
        .map_err(anyhow::Error::msg)?;
    let source = repo.read_model(&args.model).map_err(anyhow::Error::msg)?;
    let version = source.versions.last().context("no version")?;
    let started = Instant::now();
    let loaded = backend
        .load(&source.load_spec(version))
        .map_err(anyhow::Error::msg)?;
    let load_s = started.elapsed().as_secs_f64();
    let max = usize::try_from(source.config.max_batch_size).unwrap_or(0);
    for &threads in &args.threads {
        let mut instance = loaded
            .instance(&InstanceOptions {
                index: 0,
                intra_op_threads: threads,
            })
            .map_err(anyhow::Error::msg)?;
        for &batch in &args.batches {
            if batch > max {
                bail!("batch {batch} is above max_batch_size {max}");
            }
            let inputs: Vec<Tensor> = source
                .config
                .input
                .iter()
                .map(|i| input(i, batch, args.seq))
                .collect::<anyhow::Result<_>>()?;
            let warm = Instant::now();
            instance.run(inputs.clone()).map_err(anyhow::Error::msg)?;
            let warm = warm.elapsed();
            let runs = ((args.seconds / warm.as_secs_f64().max(1e-6)).ceil() as usize)
                .clamp(1, args.max_runs);
            let mut times: Vec<Duration> = Vec::with_capacity(runs);
            let all = Instant::now();
            for _ in 0..runs {
                let t = Instant::now();
                instance.run(inputs.clone()).map_err(anyhow::Error::msg)?;
                times.push(t.elapsed());
            }
            let total = all.elapsed().as_secs_f64();
            times.sort();
            let p50 = times[times.len() / 2].as_secs_f64() * 1e3;
            let line = serde_json::json!({
                "engine": match args.engine {
                    Engine::Ort => "sluice-ort",
                    Engine::Tract => "sluice-tract-planned",
                    Engine::TractSymbolic => "sluice-tract-symbolic",
                },
                "model": args.model,
                "batch": batch,
                "threads": threads,
                "runs": runs,
                "items_per_s": (batch * runs) as f64 / total,
                "p50_ms": p50,
                "load_s": load_s,
            });
            println!("{line}");
        }
    }
    Ok(())
}

/// Deterministic input rows: floats in [-1, 1); int64 token ids in [1000, 2000),
/// except `*mask*` inputs (all 1) and `*type*` inputs (all 0), as a tokenizer gives.
fn input(spec: &TensorConfig, batch: usize, seq: usize) -> anyhow::Result<Tensor> {
    let mut shape = vec![batch];
    shape.extend(spec.dims.iter().map(|&d| usize::try_from(d).unwrap_or(seq)));
    let count: usize = shape.iter().product();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut next = || rng.next_u64() >> 33;
    let data: Vec<u8> = match spec.data_type {
        DataType::F32 => (0..count)
            .flat_map(|_| ((next() % 2000) as f32 / 1000.0 - 1.0).to_le_bytes())
            .collect(),
        DataType::I64 => (0..count)
            .flat_map(|_| {
                let v: i64 = if spec.name.contains("mask") {
                    1
                } else if spec.name.contains("type") {
                    0
                } else {
                    1000 + (next() % 1000) as i64
                };
                v.to_le_bytes()
            })
            .collect(),
        other => bail!("input '{}': no generator for {other}", spec.name),
    };
    Tensor::new(spec.name.clone(), spec.data_type, shape, Bytes::from(data))
        .map_err(anyhow::Error::msg)
}

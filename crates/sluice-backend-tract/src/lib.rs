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

mod convert;
mod plans;

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{
    Backend, DataType, Error, Instance, InstanceOptions, LoadSpec, LoadedModel, ModelConfig,
    Result, Tensor,
};
use tract_hir::infer::GenericFactoid;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{
    tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, Symbol, TDim,
    TValue, TVec, TractError, TypedFact, TypedModel, TypedRunnableModel, TypedSimpleState,
};

use crate::convert::{datum_type, from_tract, to_tract};
pub use crate::plans::{BatchPlans, PLANNED_BATCH_SIZES};
use crate::plans::{Chunk, Schedule, SYMBOLIC};

/// Settings of the tract backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TractConfig {
    /// Which fixed-batch plans to prepare next to the symbolic one.
    pub batch_plans: BatchPlans,
}

/// The tract execution backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct TractBackend {
    config: TractConfig,
}

impl TractBackend {
    /// The backend with its defaults (planned batch sizes per model).
    pub fn new() -> Self {
        TractBackend::default()
    }

    pub fn with_config(config: TractConfig) -> Self {
        TractBackend { config }
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let loaded = sluice_core::catch_panics("tract", "loading", || load(spec, self.config))?;
        Ok(Arc::new(loaded))
    }
}

struct TractModel {
    /// The plans, shared with other loads of the same file (see [`load`]).
    plans: Arc<Plans>,
    batching: bool,
    config: ModelConfig,
}

fn tract_err(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::invalid(format!("{context}: {e:#}"))
}

/// A model's optimized plans and their schedule: immutable, shared by every loaded
/// model built from the same unchanged file with the same shapes and plans.
struct Plans {
    /// The plan with a symbolic batch: serves every batch size.
    symbolic: Arc<TypedRunnableModel>,
    /// Fixed-batch plans by batch size, ascending.
    planned: BTreeMap<usize, Arc<TypedRunnableModel>>,
    /// How each batch size runs on them.
    schedule: Arc<Schedule>,
    /// The timings the schedule was made from.
    #[cfg_attr(not(test), allow(dead_code))]
    calibration: Option<Calibration>,
}

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
fn load(spec: &LoadSpec<'_>, backend: TractConfig) -> Result<TractModel> {
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

/// Refuses, before the file is read, a config with a tensor of a datatype tract
/// cannot run (`BYTES`: tract has no string kernels for ONNX; `BF16`).
fn check_datatypes(config: &ModelConfig) -> Result<()> {
    let tensors = config
        .input
        .iter()
        .map(|t| ("input", t))
        .chain(config.output.iter().map(|t| ("output", t)));
    for (kind, t) in tensors {
        if datum_type(t.data_type).is_none() {
            let hint = if t.data_type == DataType::Bytes {
                "; use backend \"onnxruntime\" for string models"
            } else {
                ""
            };
            return Err(Error::unsupported(format!(
                "the tract backend does not support {} tensors ({kind} '{}'){hint}",
                t.data_type, t.name
            )));
        }
    }
    Ok(())
}

/// Reads, checks and optimizes the file into plans, and times them.
fn build(spec: &LoadSpec<'_>, sizes: Vec<usize>) -> Result<Plans> {
    let config = spec.config;
    let path = spec.model_file;
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(tract_err("tract cannot read the ONNX file"))?;

    // Inputs: the config's order, by name.
    let file_inputs: Vec<String> = model
        .input_outlets()
        .map_err(tract_err("inputs"))?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    for input in &config.input {
        if !file_inputs.contains(&input.name) {
            return Err(Error::invalid(format!(
                "config input '{}' is not an input of the ONNX file (its inputs are {file_inputs:?})",
                input.name
            )));
        }
    }
    if let Some(extra) = file_inputs
        .iter()
        .find(|n| !config.input.iter().any(|i| &i.name == *n))
    {
        return Err(Error::invalid(format!(
            "the ONNX file's input '{extra}' is missing from the config"
        )));
    }
    // The file's own input facts, by the file's order, before they are replaced.
    let file_facts: HashMap<String, InferenceFact> = file_inputs
        .iter()
        .enumerate()
        .filter_map(|(ix, name)| Some((name.clone(), model.input_fact(ix).ok()?.clone())))
        .collect();
    model
        .set_input_names(config.input.iter().map(|i| i.name.as_str()))
        .map_err(tract_err("inputs"))?;
    let file_dims = |name: &str| -> Vec<Option<TDim>> {
        file_facts
            .get(name)
            .map(|f| {
                f.shape
                    .dims()
                    .map(|d| match d {
                        GenericFactoid::Only(d) => Some(d.clone()),
                        GenericFactoid::Any => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // The batch symbol: the file's own (`batch`, `N`, ...) when its first input names
    // one, since the file's inner shapes use it; else `N`.
    let batch = match config.input.first().map(|i| file_dims(&i.name)) {
        Some(dims) => match dims.first() {
            Some(Some(TDim::Sym(sym))) => sym.clone(),
            _ => model.symbols.sym("N"),
        },
        None => model.symbols.sym("N"),
    };
    let batching = config.max_batch_size > 0;
    for (ix, input) in config.input.iter().enumerate() {
        let dt = datum_type(input.data_type).ok_or_else(|| {
            Error::unsupported(format!(
                "input '{}': tract does not support {}",
                input.name, input.data_type
            ))
        })?;
        let file_dims = file_dims(&input.name);
        let offset = usize::from(batching);
        let mut shape: TVec<TDim> = tvec![];
        if batching {
            shape.push(batch.clone().into());
        }
        for (d_ix, &d) in input.dims.iter().enumerate() {
            shape.push(if d >= 0 {
                TDim::Val(d)
            } else {
                match file_dims.get(d_ix + offset) {
                    // The file names this dimension (`sequence`): keep its symbol, so
                    // every input with the same name gets the same length.
                    Some(Some(dim @ TDim::Sym(_))) => dim.clone(),
                    _ => model
                        .symbols
                        .sym(&format!("{}_{d_ix}", sanitize(&input.name)))
                        .into(),
                }
            });
        }
        model
            .set_input_fact(ix, InferenceFact::dt_shape(dt, shape))
            .map_err(tract_err("input facts"))?;
    }

    // Outputs: the config's, by name, in its order.
    let mut outlets = Vec::with_capacity(config.output.len());
    for output in &config.output {
        let outlet = model
            .output_outlets()
            .map_err(tract_err("outputs"))?
            .iter()
            .copied()
            .find(|o| {
                model.outlet_label(*o) == Some(output.name.as_str())
                    || model.node(o.node).name == output.name
            });
        let Some(outlet) = outlet else {
            let known: Vec<String> = model
                .output_outlets()
                .map_err(tract_err("outputs"))?
                .iter()
                .map(|o| {
                    model
                        .outlet_label(*o)
                        .map_or_else(|| model.node(o.node).name.clone(), str::to_owned)
                })
                .collect();
            return Err(Error::invalid(format!(
                "config output '{}' is not an output of the ONNX file (its outputs are {known:?})",
                output.name
            )));
        };
        outlets.push(outlet);
    }
    model
        .select_output_outlets(&outlets)
        .map_err(tract_err("outputs"))?;

    let typed = model
        .into_typed()
        .and_then(TypedModel::into_decluttered)
        .map_err(tract_err("tract cannot analyse the model"))?;
    check_outputs(&typed, config)?;
    let symbolic = optimize(typed.clone()).map_err(tract_err("tract cannot optimize the model"))?;
    let mut planned = BTreeMap::new();
    for n in sizes {
        match plan_for_batch(&typed, &batch, n) {
            Ok(plan) => {
                planned.insert(n, plan);
            }
            Err(e) => tracing::warn!(
                model = spec.model_name,
                batch = n,
                "tract cannot plan this batch size; the symbolic plan serves it: {e:#}"
            ),
        }
    }
    let max = usize::try_from(config.max_batch_size).unwrap_or(0);
    let calibration = calibrate_once(path, &symbolic, &planned, config);
    let schedule = match &calibration {
        Some(c) => {
            let per_item = |costs: &[(usize, f64)]| {
                costs
                    .iter()
                    .map(|(n, t)| format!("{n}:{:.3}", t * 1e3 / *n as f64))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            tracing::info!(
                model = spec.model_name,
                version = spec.version,
                planned_ms_per_item = %per_item(&c.planned),
                symbolic_ms_per_item = %per_item(&c.symbolic),
                "tract batch plans measured"
            );
            Schedule::from_costs(&c.planned, &c.symbolic, max)
        }
        None => Schedule::padded(&planned.keys().copied().collect::<Vec<_>>(), max),
    };
    tracing::debug!(
        model = spec.model_name,
        version = spec.version,
        planned = ?planned.keys().collect::<Vec<_>>(),
        "tract plans ready"
    );
    Ok(Plans {
        symbolic,
        planned,
        schedule: Arc::new(schedule),
        calibration,
    })
}

/// Times each plan (single-threaded, on zeros, after a warm-up run; the fastest of a
/// few runs) at each planned size: the fixed plans at their size and the symbolic plan at every
/// size, so the schedule can choose between one padded run, several smaller ones
/// and the symbolic plan. `None` when a non-batch dimension is variable (no input
/// to time with) or a run fails. Each plan is timed in increasing sizes until one
/// run takes over a second; larger sizes are then priced at the last measured cost
/// per item.
fn calibrate(
    symbolic: &Arc<TypedRunnableModel>,
    planned: &BTreeMap<usize, Arc<TypedRunnableModel>>,
    config: &ModelConfig,
) -> Option<Calibration> {
    if planned.len() < 2 || config.input.iter().any(|i| i.dims.iter().any(|&d| d < 0)) {
        return None;
    }
    let sizes: Vec<usize> = planned.keys().copied().collect();
    let mut fixed = Vec::with_capacity(sizes.len());
    for (&n, plan) in planned {
        let previous = fixed.last().copied();
        fixed.push((n, time_plan(plan, config, n, previous)?));
    }
    let mut sym: Vec<(usize, f64)> = Vec::with_capacity(sizes.len());
    for &n in &sizes {
        let previous = sym.last().copied();
        sym.push((n, time_plan(symbolic, config, n, previous)?));
    }
    Some(Calibration {
        planned: fixed,
        symbolic: sym,
    })
}

#[derive(Debug, Clone, PartialEq)]
struct Calibration {
    planned: Vec<(usize, f64)>,
    symbolic: Vec<(usize, f64)>,
}

/// What a calibration depends on: the file, the planned sizes and the input shapes.
type CalibrationKey = (FileId, Vec<usize>, Vec<Vec<i64>>);

/// [`calibrate`], remembered per process for the same unchanged file and plans: a
/// model reloaded (hot swap of its config, eviction under a memory budget, the same
/// file under several names) gets the same schedule at once instead of timings taken
/// anew, which on a busy machine can differ by a fifth between two loads of one file.
fn calibrate_once(
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

/// Seconds for one run of `plan` on `n` rows of zeros; priced from `previous`
/// (size, seconds) without running when that run already took over a second.
fn time_plan(
    plan: &Arc<TypedRunnableModel>,
    config: &ModelConfig,
    n: usize,
    previous: Option<(usize, f64)>,
) -> Option<f64> {
    const SLOW: Duration = Duration::from_secs(1);
    if let Some((last, t)) = previous {
        if t >= SLOW.as_secs_f64() {
            return Some(t / last as f64 * n as f64);
        }
    }
    let inputs = config
        .input
        .iter()
        .map(|i| {
            let mut shape = vec![n];
            shape.extend(i.dims.iter().map(|&d| d as usize));
            let dt = datum_type(i.data_type)?;
            tract_onnx::prelude::Tensor::zero_dt(dt, &shape)
                .ok()
                .map(tract_onnx::prelude::IntoTValue::into_tvalue)
        })
        .collect::<Option<TVec<TValue>>>()?;
    let mut state = TypedSimpleState::new(plan).ok()?;
    let seconds = catch_unwind(AssertUnwindSafe(|| -> Option<f64> {
        let start = Instant::now();
        state.run(inputs.clone()).ok()?;
        let first = start.elapsed();
        if first >= SLOW / 2 {
            return Some(first.as_secs_f64());
        }
        // The fastest of up to five runs (stopping once they add up to 100 ms): one
        // sample on a busy machine can pick a padded plan that costs a third more.
        let mut best = Duration::MAX;
        let mut spent = Duration::ZERO;
        for _ in 0..5 {
            let start = Instant::now();
            state.run(inputs.clone()).ok()?;
            let took = start.elapsed();
            best = best.min(took);
            spent += took;
            if spent >= Duration::from_millis(100) {
                break;
            }
        }
        Some(best.as_secs_f64())
    }))
    .ok()??;
    Some(seconds.max(1e-9))
}

fn check_outputs(typed: &TypedModel, config: &ModelConfig) -> Result<()> {
    for (ix, output) in config.output.iter().enumerate() {
        let fact: &TypedFact = typed.output_fact(ix).map_err(tract_err("outputs"))?;
        let expected = datum_type(output.data_type).ok_or_else(|| {
            Error::unsupported(format!(
                "output '{}': tract does not support {}",
                output.name, output.data_type
            ))
        })?;
        // Integer outputs computed as symbolic dims are cast at run time.
        let castable = fact.datum_type == DatumType::TDim
            && matches!(expected, DatumType::I64 | DatumType::I32);
        if fact.datum_type.unquantized() != expected && !castable {
            return Err(Error::invalid(format!(
                "output '{}': the config says {} but the model produces {:?}",
                output.name, output.data_type, fact.datum_type
            )));
        }
    }
    Ok(())
}

fn optimize(typed: TypedModel) -> tract_onnx::prelude::TractResult<Arc<TypedRunnableModel>> {
    typed.into_optimized()?.into_runnable()
}

/// The plan with the batch symbol bound to `n`: every shape derived from the batch
/// becomes concrete, and tract picks kernels for it.
fn plan_for_batch(
    typed: &TypedModel,
    batch: &Symbol,
    n: usize,
) -> tract_onnx::prelude::TractResult<Arc<TypedRunnableModel>> {
    let subs = HashMap::from([(batch.clone(), TDim::Val(n as i64))]);
    optimize(typed.set_symbols(&subs)?)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl LoadedModel for TractModel {
    fn instance(&self, options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        let state = |plan: &Arc<TypedRunnableModel>| {
            TypedSimpleState::new(plan)
                .map_err(|e| Error::internal(format!("tract cannot create a run state: {e:#}")))
        };
        let executor = if options.intra_op_threads > 1 {
            Executor::multithread_with_name(
                options.intra_op_threads,
                &format!("tract-{}", options.index),
            )
        } else {
            Executor::SingleThread
        };
        Ok(Box::new(TractInstance {
            _shared: Arc::clone(&self.plans),
            symbolic: state(&self.plans.symbolic)?,
            planned: self
                .plans
                .planned
                .iter()
                .map(|(&n, plan)| (n, Arc::clone(plan), None))
                .collect(),
            schedule: Arc::clone(&self.plans.schedule),
            batching: self.batching,
            inputs: self
                .config
                .input
                .iter()
                .map(|i| (i.name.clone(), i.data_type, i.dims.clone()))
                .collect(),
            executor,
            outputs: self
                .config
                .output
                .iter()
                .map(|o| (o.name.clone(), o.data_type))
                .collect(),
        }))
    }
}

/// A planned batch size, its plan, and this instance's run state over it (made on
/// first use, so sizes the batcher never forms cost no memory here).
type PlannedState = (usize, Arc<TypedRunnableModel>, Option<TypedSimpleState>);

struct TractInstance {
    /// Keeps the plans findable for other loads of the same file while this
    /// instance serves (the loaded model may be dropped once its instances exist).
    _shared: Arc<Plans>,
    symbolic: TypedSimpleState,
    planned: Vec<PlannedState>,
    schedule: Arc<Schedule>,
    batching: bool,
    /// Name, datatype and dims (without the batch) of each input, in order.
    inputs: Vec<(String, DataType, Vec<i64>)>,
    executor: Executor,
    outputs: Vec<(String, DataType)>,
}

impl TractInstance {
    /// Checks a batch against the config before tract sees it: an optimized tract
    /// plan trusts its input shapes, and a wrong one must be an error, not a wrong
    /// answer. (The scheduler only sends validated batches; this is the backstop.)
    fn check(&self, inputs: &[Tensor]) -> Result<()> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::internal(format!(
                "the model takes {} inputs, the batch has {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let batch = usize::from(self.batching);
        for (t, (name, dt, dims)) in inputs.iter().zip(&self.inputs) {
            let fits = t.datatype == *dt
                && t.shape.len() == dims.len() + batch
                && dims
                    .iter()
                    .zip(&t.shape[batch..])
                    .all(|(&d, &s)| d < 0 || usize::try_from(d) == Ok(s));
            if !fits {
                return Err(Error::internal(format!(
                    "input '{name}': {} {:?} does not fit {dt} {dims:?}{}",
                    t.datatype,
                    t.shape,
                    if self.batching {
                        " after the batch"
                    } else {
                        ""
                    }
                )));
            }
        }
        Ok(())
    }

    /// The runs this batch is cut into; empty: one run on the symbolic plan.
    fn chunks(&self, inputs: &[Tensor]) -> Vec<Chunk> {
        if !self.batching || self.planned.is_empty() {
            return Vec::new();
        }
        let Some(rows) = inputs.first().and_then(|t| t.shape.first().copied()) else {
            return Vec::new();
        };
        if rows == 0 || inputs.iter().any(|t| t.shape.first() != Some(&rows)) {
            return Vec::new();
        }
        self.schedule.chunks(rows).to_vec()
    }

    /// Runs `inputs` (the rows of one chunk) padded to the planned size `size` (or
    /// on the symbolic plan) and returns the outputs cut back to those rows; `None`
    /// when an output does not lead with the batch, so it cannot be cut.
    fn run_chunk(&mut self, inputs: &[Tensor], size: usize) -> Result<Option<Vec<Tensor>>> {
        if size == SYMBOLIC {
            let outputs = self.run_on(inputs, None)?;
            return self.convert(&outputs, None).map(Some);
        }
        let rows = inputs.first().map_or(0, Tensor::rows);
        let outputs = self.run_on(inputs, Some(size))?;
        if outputs.iter().any(|o| o.shape().first() != Some(&size)) {
            return Ok(None);
        }
        self.convert(&outputs, Some(rows)).map(Some)
    }

    fn convert(&self, outputs: &[TValue], rows: Option<usize>) -> Result<Vec<Tensor>> {
        if outputs.len() != self.outputs.len() {
            return Err(Error::internal(format!(
                "tract returned {} outputs, expected {}",
                outputs.len(),
                self.outputs.len()
            )));
        }
        outputs
            .iter()
            .zip(&self.outputs)
            .map(|(value, (name, dt))| from_tract(name, *dt, value, rows))
            .collect()
    }

    /// Runs the batch chunk by chunk and joins the outputs; `None` as in `run_chunk`.
    fn run_chunks(&mut self, inputs: &[Tensor], chunks: &[Chunk]) -> Result<Option<Vec<Tensor>>> {
        if let [(size, _)] = chunks {
            return self.run_chunk(inputs, *size);
        }
        let rows: Vec<usize> = chunks.iter().map(|c| c.1).collect();
        let parts = inputs
            .iter()
            .map(|t| t.split_rows(&rows))
            .collect::<Result<Vec<_>>>()?;
        let mut per_chunk: Vec<Vec<Tensor>> = Vec::with_capacity(chunks.len());
        for (ix, &(size, _)) in chunks.iter().enumerate() {
            let chunk_inputs: Vec<Tensor> = parts.iter().map(|p| p[ix].clone()).collect();
            match self.run_chunk(&chunk_inputs, size)? {
                Some(out) => per_chunk.push(out),
                None => return Ok(None),
            }
        }
        (0..self.outputs.len())
            .map(|o| {
                let pieces: Vec<&Tensor> = per_chunk.iter().map(|c| &c[o]).collect();
                Tensor::concat_rows(&pieces)
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn run_state(&mut self, size: Option<usize>) -> Result<&mut TypedSimpleState> {
        let Some(size) = size else {
            return Ok(&mut self.symbolic);
        };
        let (_, plan, state) = self
            .planned
            .iter_mut()
            .find(|p| p.0 == size)
            .ok_or_else(|| Error::internal(format!("no plan for batch size {size}")))?;
        if state.is_none() {
            *state =
                Some(TypedSimpleState::new(plan).map_err(|e| {
                    Error::internal(format!("tract cannot create a run state: {e:#}"))
                })?);
        }
        state
            .as_mut()
            .ok_or_else(|| Error::internal("tract run state missing"))
    }

    fn run_on(&mut self, inputs: &[Tensor], size: Option<usize>) -> Result<TVec<TValue>> {
        let values = inputs
            .iter()
            .map(|t| to_tract(t, size))
            .collect::<Result<TVec<TValue>>>()?;
        let executor = self.executor.clone();
        let state = self.run_state(size)?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            multithread_tract_scope(executor, || state.run(values))
        }));
        match result {
            Ok(Ok(outputs)) => Ok(outputs),
            Ok(Err(e)) => Err(Error::internal(format!(
                "tract failed to run the model: {e:#}"
            ))),
            Err(panic) => Err(Error::internal(format!(
                "tract panicked while running the model: {}",
                sluice_core::panic_message(panic.as_ref())
            ))),
        }
    }
}

impl Instance for TractInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.check(&inputs)?;
        let chunks = self.chunks(&inputs);
        if !chunks.is_empty() {
            if let Some(outputs) = self.run_chunks(&inputs, &chunks)? {
                return Ok(outputs);
            }
            // An output without the batch as dimension 0 cannot be cut back:
            // this instance runs on the symbolic plan from now on.
            tracing::warn!(
                "an output does not lead with the batch; tract planned shapes are off for this instance"
            );
            self.planned.clear();
        }
        let outputs = self.run_on(&inputs, None)?;
        self.convert(&outputs, None)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sluice_repository::{Repository, RepositoryOptions};

    use super::*;

    fn calibration_of(root: &Path) -> Option<Calibration> {
        let source = Repository::open(root, RepositoryOptions::default())
            .unwrap()
            .read_model("cnn")
            .unwrap();
        load(
            &source.load_spec(&source.versions[0]),
            TractConfig::default(),
        )
        .unwrap()
        .plans
        .calibration
        .clone()
    }

    #[test]
    fn loaded_models_of_one_file_share_their_plans() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
        let source = Repository::open(&examples, RepositoryOptions::default())
            .unwrap()
            .read_model("cnn")
            .unwrap();
        let spec = source.load_spec(&source.versions[0]);
        let a = load(&spec, TractConfig::default()).unwrap();
        let b = load(&spec, TractConfig::default()).unwrap();
        assert!(Arc::ptr_eq(&a.plans, &b.plans), "one set of plans");
        // Another batch size shapes other plans: built anew.
        let mut smaller = source.config.clone();
        smaller.max_batch_size = source.config.max_batch_size / 2;
        let c = load(
            &LoadSpec {
                config: &smaller,
                ..spec
            },
            TractConfig::default(),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&a.plans, &c.plans));
        // The server keeps only instances once they exist: they keep the plans shared.
        let plans = Arc::downgrade(&a.plans);
        let instance = a
            .instance(&InstanceOptions {
                index: 0,
                intra_op_threads: 1,
            })
            .unwrap();
        drop((a, b));
        let d = load(&spec, TractConfig::default()).unwrap();
        assert!(std::ptr::eq(plans.as_ptr(), Arc::as_ptr(&d.plans)));
        drop(instance);
    }

    #[test]
    fn a_bytes_model_is_refused_at_load_naming_the_engine() {
        let config = ModelConfig {
            max_batch_size: 4,
            input: vec![
                sluice_core::TensorConfig::new("x", DataType::F32, vec![2]),
                sluice_core::TensorConfig::new("text", DataType::Bytes, vec![1]),
            ],
            output: vec![sluice_core::TensorConfig::new("y", DataType::F32, vec![1])],
            ..ModelConfig::default()
        };
        let spec = LoadSpec {
            model_name: "strings",
            version: 1,
            model_file: Path::new("no/such/model.onnx"),
            config: &config,
        };
        let err = TractBackend::new().load(&spec).err().expect("refused");
        assert_eq!(err.kind(), sluice_core::ErrorKind::Unsupported);
        assert_eq!(
            err.message(),
            "the tract backend does not support BYTES tensors (input 'text'); \
             use backend \"onnxruntime\" for string models"
        );
    }

    #[test]
    fn a_reloaded_file_keeps_its_calibration_and_a_new_one_is_timed() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
        let first = calibration_of(&examples);
        assert!(first.is_some(), "the example CNN batches and is calibrated");
        assert_eq!(
            first,
            calibration_of(&examples),
            "the same file: remembered"
        );
        // A copy is another file: timed anew (nanosecond timings never repeat exactly).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cnn/1")).unwrap();
        std::fs::copy(
            examples.join("cnn/1/model.onnx"),
            dir.path().join("cnn/1/model.onnx"),
        )
        .unwrap();
        let copy = calibration_of(dir.path());
        assert!(copy.is_some());
        assert_ne!(first, copy);
    }
}

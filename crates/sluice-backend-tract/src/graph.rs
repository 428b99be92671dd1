//! Graph preparation: the ONNX file read, its inputs and outputs matched to the
//! config, the batch and `-1` dimensions made symbolic, and the plans optimized.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sluice_core::{DataType, Error, LoadSpec, ModelConfig, Result};
use tract_hir::infer::GenericFactoid;
use tract_onnx::prelude::{
    tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, Symbol, TDim, TVec,
    TypedFact, TypedModel, TypedRunnableModel,
};

use crate::cache::{Caches, PlanKey};
use crate::convert::datum_type;
use crate::plans::Schedule;
use crate::{tract_err, Plans};

/// Refuses, before the file is read, a config with a tensor of a datatype tract
/// cannot run (`BYTES`: tract has no string kernels for ONNX; `BF16`).
pub(crate) fn check_datatypes(config: &ModelConfig) -> Result<()> {
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

/// Reads, checks and optimizes the file into plans, and times them (or takes the
/// timings `caches` remembers under `key`).
pub(crate) fn build(
    spec: &LoadSpec<'_>,
    sizes: Vec<usize>,
    caches: &Caches,
    key: Option<&PlanKey>,
) -> Result<Plans> {
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
    let calibration = caches.calibrate_once(key, &symbolic, &planned, config);
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

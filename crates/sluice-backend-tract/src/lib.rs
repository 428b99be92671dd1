//! The tract backend: ONNX models run by tract, the pure-Rust inference engine,
//! with nothing to install.
//!
//! Key decision: a model is parsed, typed and optimized once at load into one
//! shared plan (`Arc<TypedRunnableModel>`); each instance only owns a run state
//! over that plan, so extra instances cost no extra weights. When the model
//! batches (`max_batch_size > 0`) dimension 0 is the symbol `N`, and every `-1`
//! dimension of the config gets its own symbol, so one plan serves every shape the
//! config allows. tract's errors become `Error`s and its panics are caught at the
//! backend boundary: a model that fails to load or a run that fails is an error
//! for that model or request, never a crash of the server.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;
use sluice_core::{
    Backend, DataType, Error, Instance, InstanceOptions, LoadSpec, LoadedModel, ModelConfig,
    Result, Tensor,
};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::{
    tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TDim,
    TValue, TVec, TractError, TypedFact, TypedRunnableModel, TypedSimpleState,
};

/// The tract execution backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct TractBackend;

impl TractBackend {
    pub fn new() -> Self {
        TractBackend
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let loaded = catch_unwind(AssertUnwindSafe(|| load(spec))).map_err(|panic| {
            Error::internal(format!(
                "tract panicked while loading: {}",
                panic_message(&panic)
            ))
        })??;
        Ok(Arc::new(loaded))
    }
}

struct TractModel {
    plan: Arc<TypedRunnableModel>,
    config: ModelConfig,
}

fn tract_err(context: &str) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::invalid(format!("{context}: {e:#}"))
}

fn load(spec: &LoadSpec<'_>) -> Result<TractModel> {
    let config = spec.config;
    let path = spec.model_file;
    if !path.is_file() {
        return Err(Error::invalid(format!(
            "model file '{}/{}' does not exist",
            spec.version,
            path.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        )));
    }
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
    model
        .set_input_names(config.input.iter().map(|i| i.name.as_str()))
        .map_err(tract_err("inputs"))?;
    let batch = model.symbols.sym("N");
    for (ix, input) in config.input.iter().enumerate() {
        let dt = datum_type(input.data_type).ok_or_else(|| {
            Error::unsupported(format!(
                "input '{}': tract does not support {}",
                input.name, input.data_type
            ))
        })?;
        let mut shape: TVec<TDim> = tvec![];
        if config.max_batch_size > 0 {
            shape.push(batch.clone().into());
        }
        for (d_ix, &d) in input.dims.iter().enumerate() {
            shape.push(if d < 0 {
                model
                    .symbols
                    .sym(&format!("{}_{d_ix}", sanitize(&input.name)))
                    .into()
            } else {
                TDim::Val(d)
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
        .into_optimized()
        .map_err(tract_err("tract cannot optimize the model"))?;
    for (ix, output) in config.output.iter().enumerate() {
        let fact: &TypedFact = typed.output_fact(ix).map_err(tract_err("outputs"))?;
        let expected = datum_type(output.data_type).ok_or_else(|| {
            Error::unsupported(format!(
                "output '{}': tract does not support {}",
                output.name, output.data_type
            ))
        })?;
        // tract computes some integer outputs (shapes, ArgMax over class ids) as
        // symbolic dims; they are cast to the config's integer type at run time.
        let castable = fact.datum_type == DatumType::TDim
            && matches!(expected, DatumType::I64 | DatumType::I32);
        if fact.datum_type.unquantized() != expected && !castable {
            return Err(Error::invalid(format!(
                "output '{}': the config says {} but the model produces {:?}",
                output.name, output.data_type, fact.datum_type
            )));
        }
    }
    let plan = typed
        .into_runnable()
        .map_err(tract_err("tract cannot plan the model"))?;
    tracing::debug!(
        model = spec.model_name,
        version = spec.version,
        "tract plan ready"
    );
    Ok(TractModel {
        plan,
        config: config.clone(),
    })
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl LoadedModel for TractModel {
    fn instance(&self, options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        let state = TypedSimpleState::new(&self.plan)
            .map_err(|e| Error::internal(format!("tract cannot create a run state: {e:#}")))?;
        let executor = if options.intra_op_threads > 1 {
            Executor::multithread_with_name(
                options.intra_op_threads,
                &format!("tract-{}", options.index),
            )
        } else {
            Executor::SingleThread
        };
        Ok(Box::new(TractInstance {
            state,
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

struct TractInstance {
    state: TypedSimpleState,
    executor: Executor,
    outputs: Vec<(String, DataType)>,
}

impl Instance for TractInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let values = inputs
            .iter()
            .map(to_tract)
            .collect::<Result<TVec<TValue>>>()?;
        let executor = self.executor.clone();
        let state = &mut self.state;
        let result = catch_unwind(AssertUnwindSafe(|| {
            multithread_tract_scope(executor, || state.run(values))
        }));
        let outputs = match result {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => {
                return Err(Error::internal(format!(
                    "tract failed to run the model: {e:#}"
                )))
            }
            Err(panic) => {
                return Err(Error::internal(format!(
                    "tract panicked while running the model: {}",
                    panic_message(&panic)
                )))
            }
        };
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
            .map(|(value, (name, dt))| from_tract(name, *dt, value))
            .collect()
    }
}

fn datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bf16 | DataType::Bytes => return None,
    })
}

fn to_tract(tensor: &Tensor) -> Result<TValue> {
    let dt = datum_type(tensor.datatype).ok_or_else(|| {
        Error::unsupported(format!(
            "input '{}': tract does not support {}",
            tensor.name, tensor.datatype
        ))
    })?;
    if dt == DatumType::Bool && tensor.data.iter().any(|&b| b > 1) {
        return Err(Error::invalid(format!(
            "input '{}': BOOL bytes must be 0 or 1",
            tensor.name
        )));
    }
    let mut t = tract_onnx::prelude::Tensor::zero_dt(dt, &tensor.shape)
        .map_err(|e| Error::internal(format!("input '{}': {e:#}", tensor.name)))?;
    t.as_bytes_mut().copy_from_slice(&tensor.data);
    Ok(t.into_tvalue())
}

fn from_tract(name: &str, dt: DataType, value: &TValue) -> Result<Tensor> {
    let expected = datum_type(dt).unwrap_or(DatumType::Blob);
    if value.datum_type() == DatumType::TDim {
        let cast = value
            .cast_to_dt(expected)
            .map_err(|e| Error::internal(format!("output '{name}': cannot cast to {dt}: {e:#}")))?;
        return Tensor::new(
            name,
            dt,
            cast.shape().to_vec(),
            Bytes::copy_from_slice(cast.as_bytes()),
        );
    }
    if value.datum_type().unquantized() != expected {
        return Err(Error::internal(format!(
            "output '{name}': tract produced {:?}, the config says {dt}",
            value.datum_type()
        )));
    }
    Tensor::new(
        name,
        dt,
        value.shape().to_vec(),
        Bytes::copy_from_slice(value.as_bytes()),
    )
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

//! The ONNX Runtime backend: ONNX models run by Microsoft's ONNX Runtime, the fast
//! path for real convolutional and transformer models.
//!
//! Key decision: the engine is a shared library opened at run time (`ort`'s
//! `load-dynamic`), never linked or downloaded at build time. The binary finds a
//! `libonnxruntime` file (a flag, an environment variable, or the one inside PyPI's
//! `onnxruntime` wheel) and passes its path to [`OrtBackend::new`], which checks it
//! and opens it once for the process; a missing or incompatible library is an
//! `Error` there, so the server can fall back to tract and say why, instead of
//! panicking at the first ONNX Runtime call.
//!
//! What instances share: one process-wide ONNX Runtime environment, and per model
//! a prepacked-weights container, so the weights ONNX Runtime repacks for its
//! kernels (MatMul, Conv) exist once however many instances run. Each instance owns
//! one `Session` (a session runs one batch at a time) with its own intra-op threads.
//! Errors and panics from the engine are caught at this boundary: a model that
//! fails to load or a run that fails is an error for that model or request.

mod convert;
mod settings;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::PrepackedWeights;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::ValueType;
use sluice_core::{
    Backend, BytesContent, DataType, Error, Instance, InstanceOptions, LoadSpec, LoadedModel,
    ModelConfig, Result, Tensor, TensorConfig,
};

use crate::settings::SessionSettings;

/// Where the ONNX Runtime library is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtOptions {
    /// A `libonnxruntime` shared library, or a folder holding one (such as the
    /// `onnxruntime/capi` folder of the Python package).
    pub library: PathBuf,
}

/// The ONNX Runtime execution backend. Cheap to clone.
#[derive(Clone)]
pub struct OrtBackend {
    env: Environment,
    library: PathBuf,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// ONNX Runtime allows one environment per process; every backend value shares it.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

impl OrtBackend {
    /// Opens the ONNX Runtime library and creates the process's environment.
    ///
    /// Fails with [`sluice_core::ErrorKind::Unavailable`] when the file is missing, is
    /// not an ONNX Runtime library, or is older than the API this build needs
    /// (1.24). A library can be opened only once per process: later calls reuse the
    /// first one that succeeded, whatever path they name.
    pub fn new(options: &OrtOptions) -> Result<OrtBackend> {
        let library = resolve_library(&options.library)?;
        let mut slot = ENVIRONMENT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((loaded, env)) = slot.as_ref() {
            if *loaded != library {
                tracing::warn!(
                    requested = %library.display(),
                    loaded = %loaded.display(),
                    "ONNX Runtime is already loaded in this process; reusing it"
                );
            }
            return Ok(OrtBackend {
                env: env.clone(),
                library: loaded.clone(),
            });
        }
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Environment> {
            let builder = ort::init_from(&library).map_err(|e| {
                Error::unavailable(format!(
                    "cannot load ONNX Runtime from '{}': {e}",
                    library.display()
                ))
            })?;
            let env = builder
                .with_name("sluice")
                .with_telemetry(false)
                .build()
                .map_err(|e| {
                    Error::unavailable(format!("cannot create the ONNX Runtime environment: {e}"))
                })?;
            // ONNX Runtime's own log goes to `tracing`; its INFO level is a line per
            // graph transformer, so only warnings and errors are passed on.
            env.set_log_level(ort::logging::LogLevel::Warning);
            Ok(env)
        }))
        .map_err(|panic| {
            Error::unavailable(format!(
                "ONNX Runtime panicked while loading '{}': {}",
                library.display(),
                sluice_core::panic_message(panic.as_ref())
            ))
        })??;
        *slot = Some((library.clone(), opened.clone()));
        Ok(OrtBackend {
            env: opened,
            library,
        })
    }

    /// The library file that was opened.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ONNX Runtime's build description (version, git commit).
    pub fn build_info(&self) -> String {
        catch_unwind(ort::info).map_or_else(|_| "unknown".to_owned(), str::to_owned)
    }
}

/// The ONNX Runtime shared library inside `dir`, if there is one: `libonnxruntime.so`
/// or `libonnxruntime.so.<version>` (Linux), `libonnxruntime[.<version>].dylib`
/// (macOS), `onnxruntime.dll` (Windows). The highest version wins.
pub fn find_library(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            let version = library_version(&name)?;
            path.is_file().then_some((version, path))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, path)| path)
}

/// `Some(version numbers)` when `name` is an ONNX Runtime library file name.
fn library_version(name: &str) -> Option<Vec<u64>> {
    let rest = if let Some(rest) = name.strip_prefix("libonnxruntime.so") {
        rest.strip_prefix('.').unwrap_or(rest)
    } else if let Some(rest) = name.strip_prefix("libonnxruntime") {
        rest.strip_suffix(".dylib")?.trim_start_matches('.')
    } else if name == "onnxruntime.dll" {
        ""
    } else {
        return None;
    };
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('.').map(|p| p.parse().ok()).collect()
}

fn resolve_library(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() {
        find_library(path).ok_or_else(|| {
            Error::unavailable(format!(
                "no ONNX Runtime library (libonnxruntime.so*) in '{}'",
                path.display()
            ))
        })?
    } else if path.is_file() {
        path.to_path_buf()
    } else {
        return Err(Error::unavailable(format!(
            "the ONNX Runtime library '{}' does not exist",
            path.display()
        )));
    };
    // `ort` resolves relative paths against the executable's folder; be explicit.
    std::fs::canonicalize(&file).map_err(|e| {
        Error::unavailable(format!(
            "cannot open the ONNX Runtime library '{}': {e}",
            file.display()
        ))
    })
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    /// ONNX string tensors are filled from C strings: UTF-8 without NUL characters.
    fn bytes_content(&self) -> BytesContent {
        BytesContent::Text
    }

    fn load(&self, spec: &LoadSpec<'_>) -> Result<Arc<dyn LoadedModel>> {
        let loaded =
            sluice_core::catch_panics("ONNX Runtime", "loading", || self.load_model(spec))?;
        Ok(Arc::new(loaded))
    }
}

impl OrtBackend {
    fn load_model(&self, spec: &LoadSpec<'_>) -> Result<OrtModel> {
        let config = spec.config;
        let path = spec.model_file;
        spec.check_file_exists()?;
        let settings = SessionSettings::from_config(config)?;
        let model = OrtModel {
            env: self.env.clone(),
            file: path.to_path_buf(),
            settings,
            prepacked: PrepackedWeights::new(),
            inputs: config.input.iter().map(|i| i.name.clone()).collect(),
            outputs: config
                .output
                .iter()
                .map(|o| (o.name.clone(), o.data_type))
                .collect(),
            first: Mutex::new(None),
        };
        // One session now: it proves the file loads and agrees with the config, and
        // becomes the first instance's session.
        let session = model.session(1)?;
        check_signature(&session, config)?;
        *model.first.lock().unwrap_or_else(PoisonError::into_inner) = Some(session);
        tracing::debug!(
            model = spec.model_name,
            version = spec.version,
            "onnxruntime session ready"
        );
        Ok(model)
    }
}

struct OrtModel {
    env: Environment,
    file: PathBuf,
    settings: SessionSettings,
    prepacked: PrepackedWeights,
    inputs: Vec<String>,
    outputs: Vec<(String, DataType)>,
    /// The session made at load (one intra-op thread), kept for the first instance
    /// that asks for one thread.
    first: Mutex<Option<Session>>,
}

fn ort_err(context: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::invalid(format!("{context}: {e}"))
}

impl OrtModel {
    fn session(&self, intra_op_threads: usize) -> Result<Session> {
        let s = &self.settings;
        let cpu = ep::CPU::default().with_arena_allocator(s.mem_arena).build();
        let mut builder = Session::builder(&self.env)
            .map_err(ort_err("ONNX Runtime cannot create a session"))?
            .with_optimization_level(s.optimization.level())
            .map_err(|e| ort_err("graph_optimization_level")(e.into()))?
            .with_intra_threads(intra_op_threads)
            .map_err(|e| ort_err("intra_op_thread_count")(e.into()))?
            .with_inter_threads(s.inter_op_threads)
            .map_err(|e| ort_err("inter_op_thread_count")(e.into()))?
            .with_parallel_execution(s.parallel)
            .map_err(|e| ort_err("execution_mode")(e.into()))?
            .with_memory_pattern(s.mem_pattern)
            .map_err(|e| ort_err("enable_mem_pattern")(e.into()))?
            .with_execution_providers([cpu])
            .map_err(|e| ort_err("enable_mem_arena")(e.into()))?
            .with_prepacked_weights(&self.prepacked)
            .map_err(|e| ort_err("prepacked weights")(e.into()))?;
        builder
            .commit_from_file(&self.file)
            .map_err(ort_err("ONNX Runtime cannot load the ONNX file"))
    }
}

/// Checks that the session's inputs and outputs agree with the config: names,
/// element types, ranks and fixed dimensions.
fn check_signature(session: &Session, config: &ModelConfig) -> Result<()> {
    let batch = usize::from(config.max_batch_size > 0);
    let file_inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    for input in &config.input {
        let outlet = session
            .inputs()
            .iter()
            .find(|o| o.name() == input.name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "config input '{}' is not an input of the ONNX file (its inputs are {file_inputs:?})",
                    input.name
                ))
            })?;
        check_tensor("input", input, outlet.dtype(), batch)?;
    }
    if let Some(extra) = file_inputs
        .iter()
        .find(|n| !config.input.iter().any(|i| i.name == **n))
    {
        return Err(Error::invalid(format!(
            "the ONNX file's input '{extra}' is missing from the config"
        )));
    }
    let file_outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for output in &config.output {
        let outlet = session
            .outputs()
            .iter()
            .find(|o| o.name() == output.name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "config output '{}' is not an output of the ONNX file (its outputs are {file_outputs:?})",
                    output.name
                ))
            })?;
        check_tensor("output", output, outlet.dtype(), batch)?;
    }
    Ok(())
}

fn check_tensor(kind: &str, config: &TensorConfig, file: &ValueType, batch: usize) -> Result<()> {
    let ValueType::Tensor { ty, shape, .. } = file else {
        return Err(Error::unsupported(format!(
            "{kind} '{}' is not a tensor in the ONNX file ({file})",
            config.name
        )));
    };
    if convert::element_type(config.data_type) != *ty {
        return Err(Error::invalid(format!(
            "{kind} '{}': the config says {} but the model has {ty}",
            config.name, config.data_type
        )));
    }
    let file_dims: &[i64] = shape;
    if file_dims.len() != config.dims.len() + batch {
        return Err(Error::invalid(format!(
            "{kind} '{}': the config gives {} dimensions{} but the model has {} ({file_dims:?})",
            config.name,
            config.dims.len(),
            if batch == 1 { " plus the batch" } else { "" },
            file_dims.len()
        )));
    }
    for (&want, &have) in config.dims.iter().zip(&file_dims[batch..]) {
        if want > 0 && have > 0 && want != have {
            return Err(Error::invalid(format!(
                "{kind} '{}': the config's dims {:?} do not match the model's {file_dims:?}",
                config.name, config.dims
            )));
        }
    }
    Ok(())
}

impl LoadedModel for OrtModel {
    fn instance(&self, options: &InstanceOptions) -> Result<Box<dyn Instance>> {
        let threads = options.intra_op_threads.max(1);
        let kept = if threads == 1 {
            self.first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        } else {
            None
        };
        let session = match kept {
            Some(session) => session,
            None => {
                catch_unwind(AssertUnwindSafe(|| self.session(threads))).map_err(|panic| {
                    Error::internal(format!(
                        "ONNX Runtime panicked while creating a session: {}",
                        sluice_core::panic_message(panic.as_ref())
                    ))
                })??
            }
        };
        let selector = self
            .outputs
            .iter()
            .fold(OutputSelector::no_default(), |s, (name, _)| s.with(name));
        let run_options = RunOptions::new()
            .map_err(|e| Error::internal(format!("ONNX Runtime run options: {e}")))?
            .with_outputs(selector);
        Ok(Box::new(OrtInstance {
            session,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            run_options,
        }))
    }
}

struct OrtInstance {
    session: Session,
    inputs: Vec<String>,
    outputs: Vec<(String, DataType)>,
    run_options: RunOptions<HasSelectedOutputs>,
}

impl Instance for OrtInstance {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::internal(format!(
                "the model takes {} inputs, the batch has {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let values = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(t, name)| Ok((name.as_str(), convert::to_ort(t)?)))
            .collect::<Result<Vec<(&str, SessionInputValue<'_>)>>>()?;
        let session = &mut self.session;
        let run_options = &self.run_options;
        let outputs = &self.outputs;
        let result = catch_unwind(AssertUnwindSafe(move || -> Result<Vec<Tensor>> {
            let results = session.run_with_options(values, run_options).map_err(|e| {
                Error::internal(format!("ONNX Runtime failed to run the model: {e}"))
            })?;
            outputs
                .iter()
                .map(|(name, dt)| {
                    let value = results.get(name).ok_or_else(|| {
                        Error::internal(format!("ONNX Runtime returned no output '{name}'"))
                    })?;
                    convert::from_ort(name, *dt, value)
                })
                .collect()
        }));
        result.unwrap_or_else(|panic| {
            Err(Error::internal(format!(
                "ONNX Runtime panicked while running the model: {}",
                sluice_core::panic_message(panic.as_ref())
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names() {
        assert_eq!(library_version("libonnxruntime.so"), Some(vec![]));
        assert_eq!(
            library_version("libonnxruntime.so.1.32.0"),
            Some(vec![1, 32, 0])
        );
        assert_eq!(
            library_version("libonnxruntime.1.20.1.dylib"),
            Some(vec![1, 20, 1])
        );
        assert_eq!(library_version("onnxruntime.dll"), Some(vec![]));
        assert_eq!(library_version("libonnxruntime_providers_shared.so"), None);
        assert_eq!(library_version("libonnxruntime.so.1.x"), None);
    }

    #[test]
    fn find_library_picks_the_highest_version() {
        let dir = std::env::temp_dir().join(format!("sluice-ort-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = find_library(&dir).unwrap();
        assert!(found.ends_with("libonnxruntime.so.1.32.0"), "{found:?}");
        assert!(find_library(&dir.join("nope")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_panic() {
        let err = OrtBackend::new(&OrtOptions {
            library: PathBuf::from("/nonexistent/libonnxruntime.so.1.32.0"),
        })
        .unwrap_err();
        assert_eq!(err.kind(), sluice_core::ErrorKind::Unavailable);
        assert!(err.message().contains("does not exist"), "{err}");
        // A file that is not a shared library.
        let bogus =
            std::env::temp_dir().join(format!("sluice-ort-bogus-{}.so", std::process::id()));
        std::fs::write(&bogus, b"not a library").unwrap();
        let err = OrtBackend::new(&OrtOptions {
            library: bogus.clone(),
        })
        .unwrap_err();
        std::fs::remove_file(&bogus).unwrap();
        assert_eq!(err.kind(), sluice_core::ErrorKind::Unavailable);
        assert!(err.message().contains("cannot load ONNX Runtime"), "{err}");
    }
}

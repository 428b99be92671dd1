//! The model repository: Triton's on-disk layout, read into validated
//! [`ModelConfig`]s and the version files to load.
//!
//! ```text
//! <repository>/<model>/config.pbtxt | config.json | (none: auto-complete from ONNX)
//! <repository>/<model>/<version>/model.onnx
//! ```
//!
//! Key decision: this crate only reads files. It never starts an engine; an ONNX file
//! is opened here only to auto-complete a missing config from the graph's declared
//! inputs and outputs, the way Triton's `--strict-model-config=false` does. Each model
//! is read on its own, so a broken model is an `Err` for that model alone and the
//! runtime keeps serving the rest.

mod onnx;
pub mod pbtxt;

use std::path::{Path, PathBuf};

use sluice_core::{limits, Error, LoadSpec, ModelConfig, Result, TensorConfig};

pub use onnx::{signature as onnx_signature, OnnxSignature, OnnxTensor};

/// Fields of Triton's `model_config.proto` that are `repeated`, and those that are maps,
/// for reading `config.pbtxt`.
const PBTXT_SCHEMA: pbtxt::Schema<'static> = pbtxt::Schema {
    repeated: &[
        "input",
        "output",
        "dims",
        "shape",
        "instance_group",
        "gpus",
        "preferred_batch_size",
        "versions",
        "model_warmup",
        "batch_input",
        "batch_output",
        "step",
        "target_name",
        "source_input",
        "secondary_devices",
        "profile",
        "control_input",
        "state",
    ],
    maps: &[
        "parameters",
        "priority_queue_policy",
        "cc_model_filenames",
        "metric_tags",
        "input_map",
        "output_map",
        "inputs",
    ],
};

/// Options for reading a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryOptions {
    /// `max_batch_size` given to auto-completed models whose inputs and outputs all
    /// start with a variable dimension (Triton's `default-max-batch-size`, 4).
    pub default_max_batch_size: i32,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        RepositoryOptions {
            default_max_batch_size: 4,
        }
    }
}

/// Where a model's configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    Pbtxt,
    Json,
    /// No config file: everything was read from the ONNX file.
    AutoComplete,
}

/// One model of the repository, read and checked, with the versions its policy selects.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    pub name: String,
    pub config: ModelConfig,
    pub origin: ConfigOrigin,
    /// Selected versions, ascending.
    pub versions: Vec<ModelVersion>,
}

impl ModelSource {
    /// What a backend needs to load `version` of this model with its config as read.
    pub fn load_spec<'a>(&'a self, version: &'a ModelVersion) -> LoadSpec<'a> {
        LoadSpec {
            model_name: &self.name,
            version: version.version,
            model_file: &version.model_file,
            config: &self.config,
        }
    }
}

/// One version folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub version: u64,
    pub model_file: PathBuf,
}

/// A model repository on the local file system.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
    options: RepositoryOptions,
}

impl Repository {
    /// Opens a repository folder; it must exist.
    pub fn open(root: impl Into<PathBuf>, options: RepositoryOptions) -> Result<Repository> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::not_found(format!(
                "model repository '{}' is not a folder",
                root.display()
            )));
        }
        Ok(Repository { root, options })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the model folders, sorted. Hidden folders are skipped.
    pub fn model_names(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| {
            Error::unavailable(format!(
                "cannot read repository '{}': {e}",
                self.root.display()
            ))
        })?;
        let mut names: Vec<String> = entries
            .filter_map(std::result::Result::ok)
            .filter(|e| e.path().is_dir()) // follows symlinks, as Triton does
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The folder of a model (the name is checked to be one plain path component).
    pub fn model_dir(&self, name: &str) -> Result<PathBuf> {
        check_model_name(name)?;
        Ok(self.root.join(name))
    }

    /// The config a model's folder declares (`config.pbtxt` or `config.json`), as
    /// written: not completed from the model file, not validated (a variant family
    /// is recognized by its platform before it is read as a model).
    pub fn declared_config(&self, name: &str) -> Result<ModelConfig> {
        Ok(read_config(&self.model_dir(name)?)?.0)
    }

    /// Reads one model: its config (parsed, auto-completed, validated) and versions.
    pub fn read_model(&self, name: &str) -> Result<ModelSource> {
        self.read_model_at(name, &self.model_dir(name)?, None)
    }

    /// Reads a model from `dir` (its repository folder, or a folder of files given in a
    /// load request), with `config_json` (Triton's JSON form) in place of the folder's
    /// config file when given.
    pub fn read_model_at(
        &self,
        name: &str,
        dir: &Path,
        config_json: Option<&str>,
    ) -> Result<ModelSource> {
        check_model_name(name)?;
        if !dir.is_dir() {
            return Err(Error::not_found(format!(
                "no model '{name}' in the repository"
            )));
        }
        let (mut config, origin) = match config_json {
            Some(text) => (
                ModelConfig::from_json(text).map_err(|e| e.context("config override"))?,
                ConfigOrigin::Json,
            ),
            None => read_config(dir)?,
        };
        if config.name.is_empty() {
            config.name = name.to_owned();
        } else if config.name != name {
            return Err(Error::invalid(format!(
                "config name '{}' does not match the model folder '{name}'",
                config.name
            )));
        }
        let file_name = if config.default_model_filename.is_empty() {
            "model.onnx".to_owned()
        } else {
            check_model_filename(&config.default_model_filename)?;
            config.default_model_filename.clone()
        };
        let available = version_folders(dir)?;
        if available.is_empty() {
            return Err(Error::invalid(format!(
                "model '{name}' has no numbered version folder (expected {name}/1/{file_name})"
            )));
        }
        let selected = config.version_policy.select(&available);
        if selected.is_empty() {
            return Err(Error::invalid(format!(
                "the version policy of '{name}' selects none of the versions on disk {available:?}"
            )));
        }
        let threads = selected.len().saturating_mul(config.instance_count());
        if threads > limits::MAX_INSTANCES {
            return Err(Error::invalid(format!(
                "model '{name}': {} versions of {} instances each are {threads} instances, \
                 too many (at most {})",
                selected.len(),
                config.instance_count(),
                limits::MAX_INSTANCES
            )));
        }
        let versions: Vec<ModelVersion> = selected
            .iter()
            .map(|&v| {
                let version_dir = dir.join(v.to_string());
                let model_file = version_dir.join(&file_name);
                Ok(ModelVersion {
                    version: v,
                    model_file,
                })
            })
            .collect::<Result<_>>()?;
        if config.input.is_empty() || config.output.is_empty() {
            let latest = &versions[versions.len() - 1].model_file;
            let bytes = read_bounded(latest, MAX_AUTO_COMPLETE_BYTES).map_err(|e| {
                Error::invalid(format!(
                    "cannot read '{}' to auto-complete the config: {e}",
                    rel(&self.root, latest)
                ))
            })?;
            let onnx = onnx::signature(&bytes)?;
            auto_complete(&mut config, &onnx, origin, &self.options)?;
        }
        config.validate()?;
        Ok(ModelSource {
            name: name.to_owned(),
            config,
            origin,
            versions,
        })
    }
}

impl Repository {
    /// A summary of what is on disk for a model: the names and
    /// [`FileIdentity`](sluice_core::FileIdentity)s (device, inode, size, modification
    /// time) of its config files, version folders and their files (and `warmup/`). Equal
    /// fingerprints mean nothing was added, removed or rewritten; poll mode compares them.
    pub fn fingerprint(&self, name: &str) -> Result<u64> {
        use std::hash::{Hash, Hasher};
        let dir = self.model_dir(name)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut stack = vec![(dir.clone(), 0usize)];
        while let Some((folder, depth)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&folder)
                .map_err(|e| Error::not_found(format!("cannot read model '{name}': {e}")))?
                .filter_map(std::result::Result::ok)
                .collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                path.strip_prefix(&dir).unwrap_or(&path).hash(&mut hasher);
                // The same notion of "the same file" as the engines' and the runtime's.
                sluice_core::FileIdentity::from_metadata(&meta).hash(&mut hasher);
                if meta.is_dir() && depth < 2 {
                    stack.push((path, depth + 1));
                }
            }
        }
        Ok(hasher.finish())
    }
}

/// The largest ONNX file read to auto-complete a config (protobuf's own 2 GiB limit).
const MAX_AUTO_COMPLETE_BYTES: u64 = 2 << 30;

/// `default_model_filename` names a file inside each version folder: a relative path of
/// plain components (no root, no `..`, no `.`, no NUL).
fn check_model_filename(file_name: &str) -> Result<()> {
    use std::path::Component;
    let path = Path::new(file_name);
    let plain = !file_name.contains('\0')
        && !file_name.ends_with('/')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && !file_name
            .split('/')
            .any(|part| part == "." || part.is_empty());
    if plain {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "default_model_filename '{file_name}' must be a relative path inside the \
             version folder (no leading '/', no '..')"
        )))
    }
}

/// Reads a regular file of at most `limit` bytes (never a device, FIFO or folder).
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > limit {
        return Err(std::io::Error::other(format!(
            "{} bytes is larger than the {limit} bytes read to auto-complete",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other("the file grew past the limit"));
    }
    Ok(bytes)
}

/// A model name must be one plain path component.
pub fn check_model_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.starts_with('.');
    if bad {
        return Err(Error::invalid(format!(
            "'{name}' is not a valid model name"
        )));
    }
    Ok(())
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read_config(dir: &Path) -> Result<(ModelConfig, ConfigOrigin)> {
    let pbtxt_path = dir.join("config.pbtxt");
    let json_path = dir.join("config.json");
    if pbtxt_path.is_file() {
        let text = std::fs::read_to_string(&pbtxt_path)
            .map_err(|e| Error::invalid(format!("cannot read config.pbtxt: {e}")))?;
        Ok((parse_config_pbtxt(&text)?, ConfigOrigin::Pbtxt))
    } else if json_path.is_file() {
        let text = std::fs::read_to_string(&json_path)
            .map_err(|e| Error::invalid(format!("cannot read config.json: {e}")))?;
        let config = ModelConfig::from_json(&text).map_err(|e| e.context("config.json"))?;
        Ok((config, ConfigOrigin::Json))
    } else {
        Ok((ModelConfig::default(), ConfigOrigin::AutoComplete))
    }
}

/// Parses the text of a `config.pbtxt` into a model config (not yet validated).
pub fn parse_config_pbtxt(text: &str) -> Result<ModelConfig> {
    let value = pbtxt::parse(text, PBTXT_SCHEMA)
        .map_err(|e| Error::invalid(format!("config.pbtxt: {e}")))?;
    ModelConfig::from_json_value(value).map_err(|e| e.context("config.pbtxt"))
}

/// Numbered subfolders of a model folder.
fn version_folders(dir: &Path) -> Result<Vec<u64>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::invalid(format!("cannot read model folder: {e}")))?;
    Ok(entries
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect())
}

/// Fills missing inputs, outputs and `max_batch_size` from the ONNX graph.
fn auto_complete(
    config: &mut ModelConfig,
    onnx: &OnnxSignature,
    origin: ConfigOrigin,
    options: &RepositoryOptions,
) -> Result<()> {
    let batchable = onnx
        .inputs
        .iter()
        .chain(&onnx.outputs)
        .all(|t| t.dims.first() == Some(&-1));
    if config.max_batch_size == 0 && config.input.is_empty() && config.output.is_empty() {
        // Triton's rule: a model whose every tensor starts with a variable dimension batches.
        if batchable && options.default_max_batch_size > 0 {
            config.max_batch_size = options.default_max_batch_size;
        }
    } else if config.max_batch_size > 0 && !batchable {
        return Err(Error::invalid(format!(
            "max_batch_size is {} but the ONNX model's tensors do not all start with a \
             variable batch dimension",
            config.max_batch_size
        )));
    }
    let strip = config.max_batch_size > 0;
    let complete = |tensors: &[OnnxTensor]| -> Vec<TensorConfig> {
        tensors
            .iter()
            .map(|t| {
                let dims = if strip {
                    t.dims[1..].to_vec()
                } else {
                    t.dims.clone()
                };
                TensorConfig::new(t.name.clone(), t.datatype, dims)
            })
            .collect()
    };
    if config.input.is_empty() {
        config.input = complete(&onnx.inputs);
    }
    if config.output.is_empty() {
        config.output = complete(&onnx.outputs);
    }
    tracing::debug!(model = %config.name, ?origin, "auto-completed the config from the ONNX file");
    Ok(())
}

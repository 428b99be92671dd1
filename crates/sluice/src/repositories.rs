//! `--model-repository` (repeatable: folders and `s3://` buckets) and the model cache
//! flags, turned into the one folder the runtime reads.
//!
//! One local folder is handed to the runtime as it is. Anything else (several
//! folders, or a bucket) goes through `sluice-objstore`, which mirrors buckets into
//! the cache and shows every repository as one view folder of symlinks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_objstore::{RepositoryLocation, RepositorySet, SetConfig, StoreSettings, SyncMode};
use sluice_runtime::{ControlMode, RemoteRepositories, Runtime};

#[derive(Args, Debug)]
pub struct RepositoryArgs {
    /// Model repository, Triton's layout (`<model>/config.pbtxt|config.json`,
    /// `<model>/<version>/model.onnx`): a folder, or an S3 bucket as
    /// `s3://BUCKET/PREFIX` or `s3://[http(s)://]HOST:PORT/BUCKET/PREFIX` (credentials,
    /// region and endpoint from the standard `AWS_*` variables). Repeat the flag to
    /// serve several; a model name found in two is served from the first.
    #[arg(long, env = "SLUICE_MODEL_REPOSITORY", required = true)]
    pub model_repository: Vec<String>,

    /// Folder that keeps models downloaded from object stores, so a restart
    /// downloads only what changed (default: a temporary folder, removed on exit).
    #[arg(long, env = "SLUICE_MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,

    /// Largest object a remote model may hold, in bytes; a model with a larger one
    /// is unavailable with the reason.
    #[arg(long, env = "SLUICE_MODEL_MAX_OBJECT_BYTES", default_value_t = 16 << 30)]
    pub model_max_object_bytes: u64,

    /// Objects downloaded at once per model.
    #[arg(long, env = "SLUICE_MODEL_DOWNLOAD_CONCURRENCY", default_value_t = 8)]
    pub model_download_concurrency: usize,
}

/// The repository folder for the runtime, and the set that fills it (if any).
pub struct Repositories {
    pub path: PathBuf,
    set: Option<RepositorySet>,
}

/// How the runtime's control mode applies to the stores.
pub struct Mode<'a> {
    pub control: ControlMode,
    pub poll_interval: Duration,
    pub startup_models: &'a [String],
}

impl RepositoryArgs {
    /// Reads the flags; downloads what the control mode loads at start. Only a bad
    /// flag, folder or cache is an error: a store that is down is retried later.
    pub fn open(&self, mode: &Mode<'_>) -> anyhow::Result<Repositories> {
        let mut locations = Vec::new();
        for text in &self.model_repository {
            locations.push(
                RepositoryLocation::parse(text)
                    .map_err(|e| anyhow::anyhow!("--model-repository {text}: {e}"))?,
            );
        }
        if let [RepositoryLocation::Local(path)] = locations.as_slice() {
            return Ok(Repositories {
                path: path.clone(),
                set: None,
            });
        }
        anyhow::ensure!(
            self.model_download_concurrency > 0,
            "--model-download-concurrency must be at least 1"
        );
        let store = StoreSettings {
            aws: std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .collect(),
            ..StoreSettings::default()
        };
        let set = RepositorySet::open(SetConfig {
            locations,
            cache_dir: self.model_cache_dir.clone(),
            store,
            mode: match mode.control {
                ControlMode::None => SyncMode::Once,
                ControlMode::Poll => SyncMode::Poll,
                ControlMode::Explicit => SyncMode::OnDemand,
            },
            interval: mode.poll_interval,
            max_backoff: Duration::from_secs(30),
            max_object_bytes: self.model_max_object_bytes,
            concurrency: self.model_download_concurrency,
            startup_models: mode.startup_models.to_vec(),
        })
        .context("cannot open the model repositories")?;
        tracing::info!(
            view = %set.view_path().display(),
            cache = %set.cache_path().display(),
            "repositories mirrored into the model cache"
        );
        Ok(Repositories {
            path: set.view_path().to_path_buf(),
            set: Some(set),
        })
    }
}

impl Repositories {
    /// Connects the runtime: index notes, explicit refreshes, and the thread that
    /// follows the stores (loading, in mode `none`, models of a store that was down
    /// at start).
    pub fn attach(&self, runtime: &Runtime) -> anyhow::Result<()> {
        let Some(set) = &self.set else {
            return Ok(());
        };
        runtime.attach_remote(Arc::new(Hook(set.clone())));
        let runtime = runtime.clone();
        set.spawn(Box::new(move |name| {
            tracing::info!(
                model = name,
                "loading a model whose store answered after start-up"
            );
            let _ = runtime.load_discovered(name);
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Stops following the stores.
    pub fn stop(&self) {
        if let Some(set) = &self.set {
            set.stop();
        }
    }
}

struct Hook(RepositorySet);

impl RemoteRepositories for Hook {
    fn notes(&self) -> Vec<(String, String)> {
        self.0
            .notes()
            .into_iter()
            .map(|n| (n.name, n.reason))
            .collect()
    }

    fn refresh(&self, name: &str) -> Result<(), String> {
        self.0.refresh(name).map_err(|e| e.to_string())
    }
}

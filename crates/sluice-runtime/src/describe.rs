//! What the registry says about its models: readiness, the repository index,
//! configs and metadata (from what serves or, while evicted, from the last load).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_core::{ModelConfig, ModelSignature, Result};

use crate::build::VersionSlot;
use crate::{
    no_version, unavailable, unknown_model, Absent, IndexEntry, ModelMetadata, ModelState, Runtime,
    State,
};

/// What metadata and config answers read: from what serves, or from the last load.
struct Described {
    config: Arc<ModelConfig>,
    platform: String,
    /// Every version (ready or not).
    versions: Vec<u64>,
    ready: Vec<u64>,
}

impl Runtime {
    /// The server accepts inference requests: not draining or shutting down and, with
    /// strict readiness, every loaded model ready (models evicted under the memory
    /// budget, or unloaded on purpose, do not count against it).
    pub fn ready(&self) -> bool {
        if self.inner.draining.load(Ordering::Acquire)
            || self.inner.shutting_down.load(Ordering::Acquire)
        {
            return false;
        }
        if !self.inner.config.strict_readiness {
            return true;
        }
        self.models().values().all(|e| match e.serving() {
            Some(l) => l
                .versions
                .values()
                .all(|v| matches!(v, VersionSlot::Ready(_))),
            None => e.on_demand() || e.absent() == Some(&Absent::Unloaded),
        })
    }

    /// Every model of the repository (and every loaded version) with its state, the
    /// reason when not ready, and the load time and memory of ready versions.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut names: std::collections::BTreeSet<String> = self
            .inner
            .repository
            .model_names()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let models = self.models();
        names.extend(models.keys().cloned());
        let mut out = Vec::new();
        for name in names {
            if let Some(row) = self.family_index_row(&name) {
                out.push(row);
                continue;
            }
            let row = |version, state, reason: String| IndexEntry {
                name: name.clone(),
                version,
                state,
                reason,
                load_duration: None,
                memory_bytes: None,
                instances: None,
            };
            let Some(e) = models.get(&name) else {
                out.push(row(
                    None,
                    ModelState::Unavailable,
                    Absent::NotLoaded.reason(),
                ));
                continue;
            };
            match &e.state {
                State::Serving { loaded, .. } => {
                    for (&version, v) in &loaded.versions {
                        out.push(match v {
                            VersionSlot::Ready(s) => IndexEntry {
                                load_duration: Some(s.load_duration),
                                memory_bytes: Some(s.memory_bytes),
                                instances: Some({
                                    let c = s.pool.instances();
                                    (c.serving, c.threads_per_instance)
                                }),
                                ..row(Some(version), ModelState::Ready, String::new())
                            },
                            VersionSlot::Failed(r) => {
                                row(Some(version), ModelState::Unavailable, r.clone())
                            }
                        });
                    }
                }
                State::Loading { .. } => out.push(row(None, ModelState::Loading, String::new())),
                State::Unloading => out.push(row(None, ModelState::Unloading, String::new())),
                State::Absent(a) => out.push(row(None, ModelState::Unavailable, a.reason())),
            }
        }
        drop(models);
        crate::remote::annotate(self.inner.remote.get(), &mut out);
        out
    }

    /// Config, platform and versions (all, ready or not) of a model, from what serves
    /// or, while evicted, from its last load.
    fn describe(&self, name: &str) -> Result<Described> {
        if let Some(described) = self.family_described(name) {
            let (config, v) = described?;
            return Ok(Described {
                platform: config.platform.clone(),
                config,
                versions: vec![v],
                ready: vec![v],
            });
        }
        let models = self.models();
        let Some(e) = models.get(name) else {
            sluice_repository::check_model_name(name)?;
            return Err(match self.lookup_unknown(name) {
                true => unavailable(name, &Absent::NotLoaded.reason()),
                false => unknown_model(name),
            });
        };
        match (e.serving(), &e.shell) {
            (Some(l), _) => Ok(Described {
                config: Arc::clone(&l.config),
                platform: l.platform.clone(),
                versions: l.versions.keys().copied().collect(),
                ready: l.ready().map(|(v, _)| v).collect(),
            }),
            (None, Some(s)) if e.autoload => Ok(Described {
                config: Arc::clone(&s.config),
                platform: s.platform.clone(),
                versions: s.versions.clone(),
                ready: s.versions.clone(),
            }),
            (None, _) => Err(unavailable(name, &e.reason())),
        }
    }

    fn lookup_unknown(&self, name: &str) -> bool {
        self.inner.repository.root().join(name).is_dir()
    }

    /// The configuration of a model, completed (auto-complete, chosen backend).
    pub fn model_config(&self, name: &str, version: Option<u64>) -> Result<Arc<ModelConfig>> {
        let d = self.describe(name)?;
        if let Some(v) = version {
            if !d.versions.contains(&v) {
                return Err(no_version(name, v));
            }
        }
        Ok(d.config)
    }

    /// Metadata of a model or one of its versions.
    pub fn model_metadata(&self, name: &str, version: Option<u64>) -> Result<ModelMetadata> {
        let d = self.describe(name)?;
        let listed = match version {
            Some(v) if !d.versions.contains(&v) => return Err(no_version(name, v)),
            Some(v) => vec![v],
            None => d.ready,
        };
        Ok(ModelMetadata {
            name: name.to_owned(),
            versions: listed,
            platform: d.platform,
            signature: Arc::new(ModelSignature::from_config(&d.config)),
        })
    }
}

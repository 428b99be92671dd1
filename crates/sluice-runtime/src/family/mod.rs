//! Variant families (model-less serving, after INFaaS): one logical model whose
//! requests are answered by one of several variants — other models of the
//! repository doing the same task at different accuracy and cost — chosen per
//! request from a latency objective and an accuracy floor.
//!
//! Key decision: a family owns no engine and no queue. Its variants are ordinary
//! models (loaded, batched, cached, counted as usual); a request to the family reads
//! each variant's live prediction from its own queue (work ahead, the latency the
//! scheduler learned per batch size, seeded from the variant's `profile.json`, the
//! instance count), picks one (`choose`), and runs there through the normal request
//! path. So a family adds one lock per variant to a request and nothing to a model
//! that is not in a family. Its registry sits beside the models' (`Families`), and
//! the few places that answer for a model name (infer, metadata, config, readiness,
//! index, statistics) ask it first.

mod choose;
mod serve;
mod spec;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sluice_core::{Error, ModelConfig, ModelSignature, Result};

use crate::{IndexEntry, ModelState, PoolStats, Runtime, VersionStats};
pub(crate) use spec::PLATFORM;
use spec::{FamilySpec, VariantSpec};

/// The one version a family reports.
const VERSION: u64 = 1;

/// A family that serves.
pub(crate) struct Family {
    spec: FamilySpec,
    /// The family's config completed with its variants' inputs and outputs.
    config: Arc<ModelConfig>,
    signature: Arc<ModelSignature>,
    stats: Arc<PoolStats>,
    /// Per variant (in `spec.variants` order): how it kept its predictions, and how
    /// many requests it was chosen for.
    health: Vec<Mutex<choose::Health>>,
    choices: Vec<AtomicU64>,
    load_duration: Duration,
}

/// How many requests of a family one variant answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantChoices {
    pub variant: String,
    /// The version the config pins, or 0 for the newest ready one.
    pub pinned_version: u64,
    pub count: u64,
}

enum Slot {
    Ready(Arc<Family>),
    Failed(String),
}

/// The families the runtime knows, by name.
#[derive(Default)]
pub(crate) struct Families {
    map: RwLock<BTreeMap<String, Slot>>,
}

impl Families {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Slot>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Runtime {
    fn families(&self) -> &Families {
        &self.inner.families
    }

    /// The family of that name, if `name` is one: `Ok` when it serves, `Err` with
    /// the reason when it failed to load.
    pub(crate) fn family(&self, name: &str) -> Option<std::result::Result<Arc<Family>, Error>> {
        match self.families().read().get(name)? {
            Slot::Ready(f) => Some(Ok(Arc::clone(f))),
            Slot::Failed(reason) => Some(Err(crate::unavailable(name, reason))),
        }
    }

    /// The declared config of `name` when its folder is a family (platform
    /// `sluice_family`); `None` for every other model.
    pub(crate) fn family_config(&self, name: &str) -> Option<ModelConfig> {
        if sluice_repository::check_model_name(name).is_err() {
            return None;
        }
        let config = match self.repository().declared_config(name) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(model = name, error = %e, "config not read as a family");
                return None;
            }
        };
        (config.platform == PLATFORM).then_some(config)
    }

    /// Loads a family: reads its variants, loads those that do not serve yet, checks
    /// that they agree, and serves it. A bad family is recorded with its reason (and
    /// refused); other models are not touched.
    pub(crate) fn load_family(&self, name: &str, declared: ModelConfig) -> Result<()> {
        let started = Instant::now();
        let mut declared = declared;
        if declared.name.is_empty() {
            declared.name = name.to_owned();
        }
        let result = self.build_family(name, &declared, started);
        let mut families = self.families().write();
        match result {
            Ok(family) => {
                tracing::info!(
                    family = name,
                    variants = family.spec.variants.len(),
                    "variant family is ready"
                );
                families.insert(name.to_owned(), Slot::Ready(Arc::new(family)));
                drop(families);
                self.notify();
                Ok(())
            }
            Err(e) => {
                tracing::error!(family = name, reason = %e, "variant family is unavailable");
                families.insert(name.to_owned(), Slot::Failed(e.message().to_owned()));
                drop(families);
                self.notify();
                Err(e)
            }
        }
    }

    fn build_family(&self, name: &str, declared: &ModelConfig, started: Instant) -> Result<Family> {
        if declared.name != name {
            return Err(Error::invalid(format!(
                "config name '{}' does not match the model folder '{name}'",
                declared.name
            )));
        }
        let spec = FamilySpec::parse(declared)?;
        let mut configs = Vec::with_capacity(spec.variants.len());
        for v in &spec.variants {
            configs.push(self.variant_config(name, v)?);
        }
        let named: Vec<(&str, &ModelConfig)> = spec
            .variants
            .iter()
            .zip(&configs)
            .map(|(v, c)| (v.model.as_str(), c.as_ref()))
            .collect();
        let config = spec::complete(declared, &named)?;
        let signature = Arc::new(ModelSignature::from_config(&config));
        let max_rows = usize::try_from(config.max_batch_size).unwrap_or(0);
        Ok(Family {
            health: spec.variants.iter().map(|_| Mutex::default()).collect(),
            choices: spec.variants.iter().map(|_| AtomicU64::new(0)).collect(),
            stats: Arc::new(PoolStats::new(max_rows)),
            spec,
            config: Arc::new(config),
            signature,
            load_duration: started.elapsed(),
        })
    }

    /// The completed config of one variant, loading it first when it does not serve.
    fn variant_config(&self, family: &str, v: &VariantSpec) -> Result<Arc<ModelConfig>> {
        let context = || format!("family '{family}': variant '{}'", v.model);
        if !self.repository().root().join(&v.model).is_dir() {
            return Err(Error::invalid(format!(
                "{}: no such model in the repository",
                context()
            )));
        }
        if self.family_config(&v.model).is_some() {
            return Err(Error::invalid(format!(
                "{}: is itself a family (families do not nest)",
                context()
            )));
        }
        if !matches!(
            self.lookup(&v.model, v.version),
            crate::lookup::Lookup::Ready(..)
        ) {
            self.load_now(&v.model, &crate::LoadOptions::default())
                .map_err(|e| e.context(format!("{}: failed to load", context())))?;
        }
        self.model_config(&v.model, v.version)
            .map_err(|e| e.context(context()))
    }

    /// Forgets a family (unload).
    pub(crate) fn unload_family(&self, name: &str) {
        self.families()
            .write()
            .insert(name.to_owned(), Slot::Failed("unloaded".to_owned()));
        self.notify();
    }

    /// The index row of a family, if `name` is one.
    pub(crate) fn family_index_row(&self, name: &str) -> Option<IndexEntry> {
        let families = self.families().read();
        let slot = families.get(name)?;
        Some(match slot {
            Slot::Ready(f) => IndexEntry {
                name: name.to_owned(),
                version: Some(VERSION),
                state: ModelState::Ready,
                reason: String::new(),
                load_duration: Some(f.load_duration),
                memory_bytes: Some(0),
                // A family runs nothing itself: its variants have the instances.
                instances: None,
            },
            Slot::Failed(reason) => IndexEntry {
                name: name.to_owned(),
                version: None,
                state: ModelState::Unavailable,
                reason: reason.clone(),
                load_duration: None,
                memory_bytes: None,
                instances: None,
            },
        })
    }

    /// Config and versions of a family that serves, for metadata and config answers.
    pub(crate) fn family_described(&self, name: &str) -> Option<Result<(Arc<ModelConfig>, u64)>> {
        Some(self.family(name)?.map(|f| (Arc::clone(&f.config), VERSION)))
    }

    /// The statistics rows of the families that serve (`name` `None`), or of one.
    pub(crate) fn family_stats(
        &self,
        name: Option<&str>,
        version: Option<u64>,
    ) -> Vec<VersionStats> {
        let families = self.families().read();
        families
            .iter()
            .filter(|(n, _)| name.is_none_or(|m| m == n.as_str()))
            .filter(|_| version.is_none_or(|v| v == VERSION))
            .filter_map(|(n, slot)| match slot {
                Slot::Ready(f) => Some(VersionStats {
                    name: n.clone(),
                    version: VERSION,
                    stats: Arc::clone(&f.stats),
                    queue_len: 0,
                    load_duration: f.load_duration,
                    memory_bytes: 0,
                    instances: crate::InstanceView {
                        version: VERSION,
                        count: 0,
                        threads_per_instance: 0,
                        running_threads: 0,
                        autoscale: None,
                    },
                }),
                Slot::Failed(_) => None,
            })
            .collect()
    }

    /// The folder of the model repository.
    pub fn repository_root(&self) -> &std::path::Path {
        self.repository().root()
    }

    /// Per family that serves: how many requests each variant answered.
    pub fn variant_choices(&self) -> Vec<(String, Vec<VariantChoices>)> {
        self.families()
            .read()
            .iter()
            .filter_map(|(n, slot)| match slot {
                Slot::Ready(f) => Some((n.clone(), f.choice_counts())),
                Slot::Failed(_) => None,
            })
            .collect()
    }
}

impl Family {
    fn choice_counts(&self) -> Vec<VariantChoices> {
        self.spec
            .variants
            .iter()
            .zip(&self.choices)
            .map(|(v, c)| VariantChoices {
                variant: v.model.clone(),
                pinned_version: v.version.unwrap_or(0),
                count: c.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect()
    }
}

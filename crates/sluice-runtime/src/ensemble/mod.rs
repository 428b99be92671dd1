//! Triton ensembles (`platform: "ensemble"`) served as normal models: loaded, listed,
//! described, counted and unloaded like any other, and each request run as a
//! dataflow over the composing models (module `run`).
//!
//! Key decisions:
//! - **A model that forwards to other models.** An ensemble version is an ordinary
//!   [`Served`] in the registry whose pool has no instances (it only holds the
//!   ensemble's own statistics) and whose `ensemble` field holds the checked graph.
//!   So metadata, config, readiness, the index, statistics, `/metrics`, unload and
//!   drain need no ensemble code at all; only the request path asks
//!   `served.ensemble` (one branch in `infer`).
//! - **Each step is a normal request** to its composing model through
//!   [`Runtime::infer`]: its lookup (the newest ready version, or the pinned one), its
//!   scheduler (batching across concurrent ensemble requests, priorities, instances)
//!   and its statistics. A step resolves its model when it starts, so a composing
//!   model's hot swap sends later steps to the new version while a step already
//!   running finishes on the old one: no ensemble request fails for a swap.
//! - **Dataflow in one future**: the steps that may start run as one
//!   `FuturesUnordered` inside the request's own future, so independent branches run
//!   at once (each on its model's instance threads), and dropping the request (its
//!   client left, or its timeout passed) drops every step with it: a queued step
//!   never runs and no later step starts. Tensors are `Bytes` shared between steps
//!   and into the response, never copied.
//! - **Loaded with its composing models**: loading an ensemble first loads every
//!   composing model that does not serve yet; an explicit unload of a composing
//!   model that a serving ensemble uses is refused (name the ensemble, or unload it
//!   with `unload_dependents`), and the memory budget never evicts one.

mod run;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::ensemble::{EnsembleGraph, EnsembleStep, PLATFORM};
use sluice_core::{Error, ModelConfig, ModelSignature, Result};
use sluice_repository::ModelVersion;
use sluice_scheduler::{InstancePool, SchedulerConfig};

use crate::build::{BuildContext, Loaded, Served, VersionSlot};
use crate::{Entry, LoadOptions, Runtime};

/// The checked graph of one ensemble version, and what its requests share.
pub(crate) struct Ensemble {
    name: String,
    graph: EnsembleGraph,
    /// Per step, its `max_inflight_requests` bound (`None`: unbounded).
    limits: Vec<Option<run::Limit>>,
    /// The ensemble's outputs, in config order.
    outputs: Vec<String>,
}

impl Ensemble {
    /// The composing models' names, each once.
    fn composing(&self) -> BTreeSet<String> {
        self.graph
            .scheduling
            .step
            .iter()
            .map(|s| s.model_name.clone())
            .collect()
    }
}

/// The config describes an ensemble.
pub(crate) fn is_ensemble(config: &ModelConfig) -> bool {
    config.platform == PLATFORM
}

/// The ensemble a serving model is, if it is one.
fn of(loaded: &Loaded) -> Option<&Arc<Ensemble>> {
    loaded.ready().find_map(|(_, s)| s.ensemble.as_ref())
}

/// The models that serving ensembles (other than `except`) use as steps.
pub(crate) fn composing_in_use<'a>(
    models: impl Iterator<Item = (&'a String, &'a Entry)>,
    except: Option<&str>,
) -> BTreeSet<String> {
    models
        .filter(|(n, _)| Some(n.as_str()) != except)
        .filter_map(|(_, e)| e.serving().and_then(|l| of(l)).map(|x| x.composing()))
        .flatten()
        .collect()
}

/// How the reason of an ensemble made unavailable by a step's reload begins.
const STEP_CHANGED: &str = "a step of this ensemble changed:";

thread_local! {
    /// The ensembles whose composing models this thread is loading (a guard against
    /// ensembles that contain each other).
    static LOADING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

impl Runtime {
    /// Before `name` loads: when it is an ensemble, loads each composing model that does
    /// not serve yet (their failures show in the ensemble's own load error). Called
    /// without the loader lock.
    pub(crate) fn load_composing(&self, name: &str, options: &LoadOptions) {
        if !options.files.is_empty() {
            return;
        }
        let config = match &options.config {
            Some(text) => ModelConfig::from_json(text).ok(),
            None => self
                .repository()
                .read_model(name)
                .ok()
                .map(|source| source.config),
        };
        let Some(config) = config.filter(is_ensemble) else {
            return;
        };
        let Ok(Some(scheduling)) = sluice_core::ensemble::EnsembleScheduling::from_config(&config)
        else {
            return;
        };
        let nested = LOADING.with(|l| {
            let mut l = l.borrow_mut();
            if l.iter().any(|n| n == name) {
                return true;
            }
            l.push(name.to_owned());
            false
        });
        if nested {
            return;
        }
        let steps: BTreeSet<&str> = scheduling
            .step
            .iter()
            .map(|s| s.model_name.as_str())
            .collect();
        for step in steps {
            let serving = self
                .models()
                .get(step)
                .is_some_and(|e| e.serving().is_some());
            if !serving {
                tracing::info!(ensemble = name, model = step, "loading a composing model");
                let _ = self.load_now(step, &LoadOptions::default());
            }
        }
        LOADING.with(|l| l.borrow_mut().retain(|n| n != name));
    }

    /// The config a step's model (and version) serves with now.
    fn composing_config(&self, step: &EnsembleStep) -> Result<ModelConfig> {
        let name = &step.model_name;
        let models = self.models();
        let Some(e) = models.get(name) else {
            return Err(Error::unavailable(format!(
                "model '{name}' is not in the repository"
            )));
        };
        let Some(loaded) = e.serving() else {
            return Err(Error::unavailable(format!(
                "model '{name}' is not loaded ({})",
                e.reason()
            )));
        };
        if let Ok(v) = u64::try_from(step.model_version) {
            match loaded.versions.get(&v) {
                Some(VersionSlot::Ready(_)) => {}
                Some(VersionSlot::Failed(reason)) => {
                    return Err(Error::unavailable(format!(
                        "version {v} of model '{name}' is not ready ({reason})"
                    )))
                }
                None => {
                    return Err(Error::unavailable(format!(
                        "model '{name}' has no version {v} loaded"
                    )))
                }
            }
        }
        Ok((*loaded.config).clone())
    }

    /// Builds one version of an ensemble: its graph checked against what its
    /// composing models serve now.
    pub(crate) fn build_ensemble(
        &self,
        cx: &BuildContext<'_>,
        config: &ModelConfig,
        version: &ModelVersion,
    ) -> Result<Served> {
        let started = Instant::now();
        let graph = EnsembleGraph::build(config, |step| self.composing_config(step))?;
        let max = graph.scheduling.max_inflight_requests as usize;
        let limits = graph
            .scheduling
            .step
            .iter()
            .map(|_| (max > 0).then(|| run::Limit::new(max, cx.queue_capacity)))
            .collect();
        let ensemble = Ensemble {
            name: config.name.clone(),
            outputs: config.output.iter().map(|t| t.name.clone()).collect(),
            graph,
            limits,
        };
        let max_batch = usize::try_from(config.max_batch_size).unwrap_or(0);
        // No instances: the pool only keeps the ensemble's own statistics.
        let pool = InstancePool::start(
            SchedulerConfig::simple(format!("{}:{}", config.name, version.version), max_batch, 1),
            Vec::new(),
        )?;
        Ok(Served {
            signature: Arc::new(ModelSignature::from_config(config)),
            pool,
            load_duration: started.elapsed(),
            memory_bytes: 0,
            file: None,
            generation: cx
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            cache_enabled: config.response_cache_enabled(),
            // The ensemble's own part of a shared cache's key: its config (the graph)
            // and whatever its version folder holds; the steps' loads are added per
            // request (`Runtime::ensemble_scope`).
            identity: cx.identity(config, PLATFORM, version),
            ensemble: Some(Arc::new(ensemble)),
            factory: None,
            split: false,
        })
    }

    /// The cache scope of one request to the ensemble `served`: the ensemble's own
    /// load and, step by step, the load each step resolves to now (recursively for an
    /// ensemble inside it), so an answer is never reused once a step's model has
    /// changed. `None` when a step does not serve at this moment, or is a variant
    /// family (its answer depends on the load): such a request runs uncached.
    pub(crate) fn ensemble_scope(
        &self,
        cache: &crate::cache::ResponseCache,
        served: &Served,
        ensemble: &Ensemble,
        depth: usize,
    ) -> Option<u128> {
        use crate::lookup::Lookup;
        if depth > 8 {
            return None;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&cache.scope(served).to_le_bytes());
        for step in &ensemble.graph.scheduling.step {
            if self.family(&step.model_name).is_some() {
                return None;
            }
            let version = u64::try_from(step.model_version).ok();
            let Lookup::Ready(step_served, v) = self.lookup(&step.model_name, version) else {
                return None;
            };
            let part = match &step_served.ensemble {
                Some(inner) => self.ensemble_scope(cache, &step_served, inner, depth + 1)?,
                None => cache.scope(&step_served),
            };
            h.update(&(step.model_name.len() as u64).to_le_bytes());
            h.update(step.model_name.as_bytes());
            h.update(&v.to_le_bytes());
            h.update(&part.to_le_bytes());
        }
        Some(h.digest128())
    }

    /// After `name` loaded (or reloaded): checks again, against what their steps serve
    /// now, the ensembles that use it as a step, as Triton reloads a model's dependents.
    /// A serving ensemble whose graph no longer checks (the step's inputs or outputs
    /// changed) is unloaded and marked unavailable with the reason, rather than failing
    /// each request at that step; one unavailable for that reason loads again once its
    /// graph checks. Called without the loader lock.
    pub(crate) fn recheck_dependents(&self, name: &str) {
        let mut serving = Vec::new();
        let mut broken = Vec::new();
        for (n, e) in self.models().iter() {
            if n == name {
                continue;
            }
            if let Some(loaded) = e.serving() {
                if of(loaded).is_some_and(|x| x.composing().contains(name)) {
                    serving.push((n.clone(), Arc::clone(&loaded.config)));
                }
            } else if e.reason().starts_with(STEP_CHANGED)
                && e.shell.as_ref().is_some_and(|shell| {
                    sluice_core::ensemble::EnsembleScheduling::from_config(&shell.config)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.step.iter().any(|st| st.model_name == name))
                })
            {
                broken.push(n.clone());
            }
        }
        for (ensemble, config) in serving {
            let Err(e) = EnsembleGraph::build(&config, |step| self.composing_config(step)) else {
                continue;
            };
            let reason = format!(
                "{STEP_CHANGED} '{name}' loaded again and the ensemble no longer fits it: {}; \
                 it loads again once its steps fit",
                e.message()
            );
            tracing::error!(model = %ensemble, step = name, reason = %reason, "ensemble is unavailable");
            if self.unload_now(&ensemble, false).is_ok() {
                // Unloaded: the entry records the reason as a failed load would (a
                // load that started meanwhile keeps what it serves).
                if let Some(entry) = self.models_mut().get_mut(&ensemble) {
                    entry.load_failed(reason);
                }
                self.notify();
            }
        }
        for ensemble in broken {
            tracing::info!(model = %ensemble, step = name, "a step of an unavailable ensemble loaded: loading it again");
            if let Err(e) = self.load_now(&ensemble, &LoadOptions::default()) {
                tracing::error!(model = %ensemble, reason = %e, "ensemble is still unavailable");
            }
        }
    }

    /// Refuses the explicit unload of a model that a serving ensemble uses as a step.
    pub(crate) fn check_not_composing(&self, name: &str) -> Result<()> {
        let users: Vec<String> = self
            .models()
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter(|(_, e)| {
                e.serving()
                    .and_then(|l| of(l))
                    .is_some_and(|x| x.composing().contains(name))
            })
            .map(|(n, _)| format!("'{n}'"))
            .collect();
        if users.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "model '{name}' is a step of the loaded ensemble(s) {}; unload those first, or \
             unload them with unload_dependents to unload their steps too",
            users.join(", ")
        )))
    }

    /// Triton's unload with `unload_dependents`: unloads `name` and then, when it was
    /// an ensemble, each of its composing models that no other serving ensemble uses
    /// (the same way down, for ensembles inside it). Blocking.
    pub fn unload_with_dependents(&self, name: &str) -> Result<()> {
        let steps = self
            .models()
            .get(name)
            .and_then(|e| e.serving().and_then(|l| of(l)).map(|x| x.composing()))
            .unwrap_or_default();
        self.unload(name)?;
        for step in steps {
            let used = composing_in_use(self.models().iter(), None).contains(&step);
            let serving = self
                .models()
                .get(&step)
                .is_some_and(|e| e.serving().is_some());
            if !used && serving {
                self.unload_with_dependents(&step)?;
            }
        }
        Ok(())
    }
}

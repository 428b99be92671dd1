//! Live instance counts: a loaded version adds and retires instances in place
//! (through a load whose config changes only `instance_group` counts and
//! `intra_op_thread_count`, poll mode, or [`Runtime::set_instances`]), and the
//! controller that sets them from the load under a CPU budget
//! ([`Runtime::start_autoscaler`]).
//!
//! Key decisions: a version keeps the engine's prepared model (its [`Factory`]), so a
//! new instance costs one run state or session, never a reload: its load time,
//! version and response-cache generation stay. The pool starts new threads before it
//! retires old ones, and a retired thread finishes its batch while the queue stays
//! for the others, so a change drops no request. The decisions are
//! `sluice_autoscale::budget::decide`, a pure function; this module only observes
//! the pools and applies the answer. The controller holds `Arc`s of the versions it
//! observes only during one tick, taken under the registry's read lock like a
//! request's (the lifetime rule of [`Served`]), so a drain waits for it at most one
//! tick.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_autoscale::budget::{self, BudgetConfig, BudgetState, ModelObservation, Observations};
use sluice_core::{
    limits, Error, InlineRun, Instance, InstanceOptions, LoadedModel, ModelConfig, ReshapePlan,
    Result,
};

use crate::build::{Served, VersionSlot};
use crate::{Outcome, Runtime};

/// The model parameter that turns the controller on: `"MIN:MAX"` instances.
pub const AUTOSCALE_PARAMETER: &str = "sluice_autoscale_instances";
/// Seconds a lower need must hold before the controller lowers the count (default 30).
pub const DOWN_WINDOW_PARAMETER: &str = "sluice_autoscale_down_window_s";
/// Fraction of an instance's throughput the controller plans for (default 0.8).
pub const UTILIZATION_PARAMETER: &str = "sluice_autoscale_target_utilization";

/// Builds instances of one loaded version.
pub(crate) struct Factory {
    model: Arc<dyn LoadedModel>,
    reshape: Option<Arc<ReshapePlan>>,
    /// Tests: the gates folder and the model's name (see [`crate::gate`]).
    gate: Option<(PathBuf, String)>,
    next_index: AtomicUsize,
    /// One change at a time per version.
    resizing: Mutex<()>,
}

impl Factory {
    pub(crate) fn new(
        model: Arc<dyn LoadedModel>,
        reshape: Option<Arc<ReshapePlan>>,
        gate: Option<(PathBuf, String)>,
    ) -> Factory {
        Factory {
            model,
            reshape,
            gate,
            next_index: AtomicUsize::new(0),
            resizing: Mutex::new(()),
        }
    }

    /// One more instance with `threads` intra-op threads.
    pub(crate) fn build(&self, threads: usize) -> Result<Box<dyn Instance>> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let instance = self.model.instance(&InstanceOptions {
            index,
            intra_op_threads: threads,
        })?;
        let instance = match &self.reshape {
            Some(plan) => plan.wrap(instance),
            None => instance,
        };
        Ok(match &self.gate {
            None => instance,
            Some((dir, name)) => match crate::gate::open(dir, name)? {
                Some(gate) => Box::new(crate::gate::GatedInstance {
                    inner: instance,
                    gate,
                }),
                None => instance,
            },
        })
    }

    /// The model's run on the caller's thread, when its engine offers one and nothing
    /// wraps its instances (a reshape, or a test's execution gate, which must hold
    /// every run).
    pub(crate) fn inline(&self) -> Option<Arc<dyn InlineRun>> {
        if self.reshape.is_some() {
            return None;
        }
        if let Some((dir, name)) = &self.gate {
            if crate::gate::exists(dir, name) {
                return None;
            }
        }
        self.model.inline()
    }
}

impl Served {
    /// Runs `count` instances of `threads` intra-op threads each: builds the missing
    /// ones first (nothing changes if one fails), then retires the extra ones (those
    /// with other thread counts first). Blocking.
    pub(crate) fn resize(&self, count: usize, threads: usize) -> Result<()> {
        let Some(factory) = self.factory.as_ref() else {
            return Err(Error::invalid(
                "an ensemble has no instances of its own: change its steps' instances",
            ));
        };
        let _one = factory
            .resizing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = self.pool.count_with_threads(threads);
        if keep < count {
            let new = (keep..count)
                .map(|_| factory.build(threads))
                .collect::<Result<Vec<_>>>()?;
            self.pool.add(new, threads)?;
        }
        let serving = self.pool.instances().serving;
        if serving > count {
            self.pool.retire(serving - count, Some(threads));
        }
        Ok(())
    }
}

/// The controller's settings of one model, from its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    pub min: u32,
    pub max: u32,
    pub down_window_s: f64,
    pub target_utilization: f64,
}

/// The controller's settings in a config: `None` when it is off; an error names the
/// parameter to fix.
pub(crate) fn settings(config: &ModelConfig) -> Result<Option<Settings>> {
    let Some(range) = config.parameter(AUTOSCALE_PARAMETER) else {
        return Ok(None);
    };
    let bad = || {
        Error::invalid(format!(
            "parameter {AUTOSCALE_PARAMETER} must be \"MIN:MAX\" instances with \
             1 <= MIN <= MAX <= {}, got '{range}'",
            limits::MAX_INSTANCES
        ))
    };
    let (lo, hi) = range.trim().split_once(':').ok_or_else(bad)?;
    let min: u32 = lo.trim().parse().map_err(|_| bad())?;
    let max: u32 = hi.trim().parse().map_err(|_| bad())?;
    if min == 0 || min > max || max as usize > limits::MAX_INSTANCES {
        return Err(bad());
    }
    let number = |key: &str, default: f64, ok: fn(f64) -> bool, what: &str| -> Result<f64> {
        match config.parameter(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && ok(*x))
                .ok_or_else(|| {
                    Error::invalid(format!("parameter {key} must be {what}, got '{v}'"))
                }),
        }
    };
    Ok(Some(Settings {
        min,
        max,
        down_window_s: number(
            DOWN_WINDOW_PARAMETER,
            30.0,
            |x| (0.0..=86_400.0).contains(&x),
            "seconds between 0 and 86400",
        )?,
        target_utilization: number(
            UTILIZATION_PARAMETER,
            0.8,
            |x| x > 0.0 && x <= 1.0,
            "a fraction in (0, 1]",
        )?,
    }))
}

/// Whether two configs differ at most in what a running version changes in place:
/// instance counts, intra-op threads and the controller's parameters.
pub(crate) fn instances_only(old: &ModelConfig, new: &ModelConfig) -> bool {
    if old.instance_group.len() != new.instance_group.len() {
        return false;
    }
    let strip = |c: &ModelConfig| {
        let mut c = c.clone();
        for g in &mut c.instance_group {
            g.count = 0;
        }
        for key in [
            "intra_op_thread_count",
            AUTOSCALE_PARAMETER,
            DOWN_WINDOW_PARAMETER,
            UTILIZATION_PARAMETER,
        ] {
            c.parameters.remove(key);
        }
        c
    };
    strip(old) == strip(new)
}

/// What one ready version runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub version: u64,
    /// Instances taking batches.
    pub count: usize,
    /// Intra-op threads of each.
    pub threads_per_instance: usize,
    /// Instance threads alive (retired ones still finishing a batch included).
    pub running_threads: usize,
    /// The controller's bounds, when it is on for this model.
    pub autoscale: Option<(u32, u32)>,
}

pub(crate) fn view(version: u64, served: &Served, config: &ModelConfig) -> InstanceView {
    let c = served.pool.instances();
    InstanceView {
        version,
        count: c.serving,
        threads_per_instance: c.threads_per_instance,
        running_threads: c.running,
        autoscale: settings(config).ok().flatten().map(|s| (s.min, s.max)),
    }
}

impl Runtime {
    /// The instances of every ready version of a model.
    pub fn instances(&self, name: &str) -> Result<Vec<InstanceView>> {
        let models = self.models();
        let loaded = models
            .get(name)
            .and_then(|e| e.serving())
            .filter(|l| l.ready().next().is_some());
        match loaded {
            Some(l) => Ok(l.ready().map(|(v, s)| view(v, s, &l.config)).collect()),
            None => {
                drop(models);
                Err(match self.stats(Some(name), None) {
                    Err(e) => e,
                    Ok(_) => crate::unavailable(name, "no version is loaded now"),
                })
            }
        }
    }

    /// Changes the instance count and/or the intra-op threads of every ready version
    /// of a model in place (no reload; any control mode). With the controller on, a
    /// count must lie within its bounds (it moves on from there). Blocking.
    pub fn set_instances(
        &self,
        name: &str,
        count: Option<usize>,
        threads: Option<usize>,
    ) -> Result<Vec<InstanceView>> {
        if let Some(c) = count {
            if c == 0 || c > limits::MAX_INSTANCES {
                return Err(Error::invalid(format!(
                    "count must be between 1 and {}, got {c}",
                    limits::MAX_INSTANCES
                )));
            }
        }
        if let Some(t) = threads {
            if t == 0 || t > 1024 {
                return Err(Error::invalid(format!(
                    "intra_op_thread_count must be between 1 and 1024, got {t}"
                )));
            }
        }
        let _loads = self.lock_loader();
        let (versions, config) = {
            let models = self.models();
            let Some(loaded) = models.get(name).and_then(|e| e.serving()) else {
                drop(models);
                return self.instances(name);
            };
            let versions: Vec<(u64, Arc<Served>)> =
                loaded.ready().map(|(v, s)| (v, Arc::clone(s))).collect();
            (versions, Arc::clone(&loaded.config))
        };
        if let (Some(c), Some(s)) = (count, settings(&config)?) {
            if c < s.min as usize || c > s.max as usize {
                return Err(Error::invalid(format!(
                    "model '{name}' scales itself between {} and {} instances \
                     ({AUTOSCALE_PARAMETER}); a count of {c} is outside them",
                    s.min, s.max
                )));
            }
        }
        for (v, served) in &versions {
            let now = served.pool.instances();
            let c = count.unwrap_or(now.serving);
            let t = threads.unwrap_or(now.threads_per_instance.max(1));
            served.resize(c, t)?;
            tracing::info!(
                model = name,
                version = v,
                instances = c,
                threads_per_instance = t,
                from_instances = now.serving,
                from_threads = now.threads_per_instance,
                reason = "instances API",
                "instances changed in place"
            );
        }
        drop(versions);
        self.instances(name)
    }

    /// Starts the controller thread: every `interval` it observes the versions whose
    /// models set [`AUTOSCALE_PARAMETER`] and applies `sluice_autoscale`'s budgeted
    /// decision. It ends when the runtime shuts down.
    pub fn start_autoscaler(&self, config: AutoscaleConfig) -> Result<()> {
        let weak = self.downgrade();
        std::thread::Builder::new()
            .name("sluice-autoscale".to_owned())
            .spawn(move || {
                let started = Instant::now();
                let mut controller = Controller::default();
                let step = Duration::from_millis(20).min(config.interval);
                loop {
                    let mut slept = Duration::ZERO;
                    while slept < config.interval {
                        std::thread::sleep(step);
                        slept += step;
                        match weak.upgrade() {
                            Some(inner) if !inner.shutting_down.load(Ordering::Acquire) => {}
                            _ => return,
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let runtime = Runtime::from_inner(inner);
                    controller.tick(&runtime, &config, started.elapsed().as_secs_f64());
                }
            })
            .map(|_| ())
            .map_err(|e| Error::internal(format!("cannot start the autoscaler thread: {e}")))
    }
}

/// Settings of the controller of the whole server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoscaleConfig {
    /// Cores all models may take together (instances × intra-op threads).
    pub cpu_budget: usize,
    /// Time between two ticks.
    pub interval: Duration,
    /// Drift-plus-penalty's trade-off (see `sluice_autoscale::budget`).
    pub v: f64,
}

/// Counters of one version at the previous tick.
struct Seen {
    arrivals: u64,
    answered: u64,
    misses: u64,
    at: Instant,
}

#[derive(Default)]
struct Controller {
    state: BudgetState,
    seen: HashMap<String, Seen>,
}

struct Unit {
    key: String,
    name: String,
    version: u64,
    served: Arc<Served>,
    settings: Settings,
}

impl Controller {
    fn tick(&mut self, runtime: &Runtime, config: &AutoscaleConfig, now: f64) {
        // A load in progress owns the registry's changes: skip this tick.
        let Ok(_loads) = runtime.inner.loader.try_lock() else {
            return;
        };
        let mut fixed = 0usize;
        let mut units = Vec::new();
        {
            let models = runtime.models();
            for (name, e) in models.iter() {
                let Some(loaded) = e.serving() else { continue };
                let s = settings(&loaded.config).ok().flatten();
                for (&version, slot) in &loaded.versions {
                    let VersionSlot::Ready(served) = slot else {
                        continue;
                    };
                    match s {
                        Some(settings) => units.push(Unit {
                            key: format!("{name}:{version}"),
                            name: name.clone(),
                            version,
                            served: Arc::clone(served),
                            settings,
                        }),
                        None => {
                            let c = served.pool.instances();
                            fixed += c.serving * c.threads_per_instance.max(1);
                        }
                    }
                }
            }
        }
        if units.is_empty() {
            self.seen.clear();
            return;
        }
        let at = Instant::now();
        let observations: Vec<ModelObservation> = units
            .iter()
            .map(|u| {
                let pool = &u.served.pool;
                let stats = pool.stats();
                let arrivals = stats.ended() + stats.in_flight();
                // Throughput counts the work done: a quick refusal is not an answer.
                let answered = stats.outcome(Outcome::Success);
                let misses =
                    stats.outcome(Outcome::Timeout) + stats.rejected_early.load(Ordering::Relaxed);
                let prev = self.seen.insert(
                    u.key.clone(),
                    Seen {
                        arrivals,
                        answered,
                        misses,
                        at,
                    },
                );
                let (d_arr, d_done, d_miss, elapsed) = match prev {
                    Some(p) => (
                        arrivals.saturating_sub(p.arrivals),
                        answered.saturating_sub(p.answered),
                        misses.saturating_sub(p.misses),
                        at.duration_since(p.at).as_secs_f64(),
                    ),
                    None => (0, 0, 0, 0.0),
                };
                let c = pool.instances();
                let batch = pool.max_batch_size();
                ModelObservation {
                    name: u.key.clone(),
                    current: c.serving as u32,
                    cores_per_instance: c.threads_per_instance.max(1) as u32,
                    min: u.settings.min,
                    max: u.settings.max,
                    arrivals: d_arr,
                    elapsed,
                    queued: pool.queue_len() as u64,
                    deadline_misses: d_miss,
                    batch: batch as u32,
                    service_s: pool.latency_estimate(batch).map(|d| d.as_secs_f64()),
                    deadline_s: pool.default_timeout().map(|d| d.as_secs_f64()),
                    target_utilization: u.settings.target_utilization,
                    down_window_s: u.settings.down_window_s,
                    completed: d_done,
                }
            })
            .collect();
        self.seen.retain(|k, _| units.iter().any(|u| &u.key == k));
        let obs = Observations {
            now,
            budget: config.cpu_budget.saturating_sub(fixed) as u32,
            models: observations,
        };
        let allocation = budget::decide(
            &obs,
            &mut self.state,
            &BudgetConfig {
                v: config.v,
                ..BudgetConfig::default()
            },
        );
        for (u, (o, g)) in units.iter().zip(obs.models.iter().zip(&allocation.grants)) {
            if g.instances == o.current {
                tracing::debug!(model = %u.name, version = u.version, instances = g.instances, reason = %g.reason, "autoscale: no change");
                continue;
            }
            let threads = o.cores_per_instance as usize;
            match u.served.resize(g.instances as usize, threads) {
                Ok(()) => tracing::info!(
                    model = %u.name,
                    version = u.version,
                    instances = g.instances,
                    from_instances = o.current,
                    threads_per_instance = threads,
                    cores_used = allocation.cores,
                    cpu_budget = obs.budget,
                    reason = %g.reason,
                    "autoscale: instances changed"
                ),
                Err(e) => tracing::warn!(
                    model = %u.name,
                    version = u.version,
                    instances = g.instances,
                    error = %e,
                    "autoscale: cannot change the instances"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{InstanceGroup, ModelParameter};

    fn with(params: &[(&str, &str)], counts: &[u32]) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            instance_group: counts
                .iter()
                .map(|&count| InstanceGroup {
                    count,
                    ..serde_json::from_str("{}").unwrap()
                })
                .collect(),
            parameters: params
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        ModelParameter {
                            string_value: (*v).to_owned(),
                        },
                    )
                })
                .collect(),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn only_counts_and_threads_change_in_place() {
        let a = with(&[], &[1]);
        assert!(instances_only(&a, &with(&[], &[4])));
        assert!(instances_only(
            &a,
            &with(
                &[("intra_op_thread_count", "2"), (AUTOSCALE_PARAMETER, "1:3")],
                &[2]
            )
        ));
        // a new group, or another parameter, is a reload
        assert!(!instances_only(&a, &with(&[], &[1, 1])));
        assert!(!instances_only(&a, &with(&[("other", "x")], &[1])));
        let mut b = a.clone();
        b.max_batch_size = 8;
        assert!(!instances_only(&a, &b));
    }

    #[test]
    fn settings_parse_and_refuse_clearly() {
        assert_eq!(settings(&with(&[], &[1])).unwrap(), None);
        let s = settings(&with(
            &[
                (AUTOSCALE_PARAMETER, " 1 : 4 "),
                (DOWN_WINDOW_PARAMETER, "2.5"),
            ],
            &[1],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.min, s.max, s.down_window_s, s.target_utilization),
            (1, 4, 2.5, 0.8)
        );
        for bad in ["4", "0:2", "3:2", "1:x", "1:100000"] {
            let e = settings(&with(&[(AUTOSCALE_PARAMETER, bad)], &[1])).unwrap_err();
            assert!(e.to_string().contains("MIN:MAX"), "{bad}: {e}");
        }
        let e = settings(&with(
            &[(AUTOSCALE_PARAMETER, "1:2"), (UTILIZATION_PARAMETER, "1.5")],
            &[1],
        ))
        .unwrap_err();
        assert!(e.to_string().contains(UTILIZATION_PARAMETER), "{e}");
    }
}

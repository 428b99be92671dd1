//! Triton ensembles (`platform: "ensemble"`): the `ensemble_scheduling` block of a
//! config, checked with Triton's rules, and the dependency graph an executor runs.
//!
//! Checking happens in two stages, because the second needs other models:
//! 1. [`EnsembleScheduling::from_config`] (run by [`ModelConfig::validate`]): what
//!    the ensemble's own config can get wrong — no steps, a step with no model or no
//!    maps, `instance_group`/`model_warmup`/batching blocks on an ensemble, a tensor
//!    written twice, a step input nothing writes, an ensemble input no step reads, an
//!    ensemble output nothing writes, a written tensor nobody reads, a cycle.
//! 2. [`EnsembleGraph::build`]: the same plus each step against its composing model's
//!    config — every composing input mapped (exactly once: map keys are unique),
//!    every mapped name a real input/output of that model, datatypes and shapes that
//!    agree along every edge, batch sizes that fit.
//!
//! Every error names the ensemble, the step (its index and model) and the tensor.
//!
//! Key decision: the graph is plain data (who depends on whom, a topological order)
//! plus a [`ReadyTracker`] that says which steps may start once others finish, so the
//! executor holds no graph logic of its own: it starts the steps the tracker hands
//! out and reports each one's completion.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{DataType, Error, ModelConfig, Result, TensorConfig};

/// The `platform` of an ensemble.
pub const PLATFORM: &str = "ensemble";

/// Triton's `ModelEnsembling`: the steps of an ensemble.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleScheduling {
    #[serde(default)]
    pub step: Vec<EnsembleStep>,
    /// At most this many ensemble requests in flight in each step (0: no bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_inflight_requests: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn latest() -> i64 {
    -1
}

/// Triton's `ModelEnsembling.Step`: one composing model and how its tensors connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleStep {
    pub model_name: String,
    /// The composing model's version; -1 (the default) is the latest ready one.
    #[serde(default = "latest", with = "int64")]
    pub model_version: i64,
    /// Composing model input → ensemble tensor it reads.
    #[serde(default)]
    pub input_map: BTreeMap<String, String>,
    /// Composing model output → ensemble tensor it writes.
    #[serde(default)]
    pub output_map: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_namespace: String,
}

/// int64 fields are strings in the proto's JSON mapping; accept numbers too.
mod int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            N(i64),
            S(String),
        }
        match Int::deserialize(d)? {
            Int::N(n) => Ok(n),
            Int::S(s) => s
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("'{s}' is not an integer"))),
        }
    }
}

/// Where an ensemble tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An input of the ensemble request.
    EnsembleInput,
    /// Output `output` of step `step`.
    Step { step: usize, output: String },
}

impl EnsembleStep {
    fn label(&self, index: usize) -> String {
        format!("step {index} (model '{}')", self.model_name)
    }
}

impl EnsembleScheduling {
    /// The ensemble block of `config`, checked with the rules that need no other
    /// model; `None` when `config` is not an ensemble.
    pub fn from_config(config: &ModelConfig) -> Result<Option<EnsembleScheduling>> {
        let is_ensemble = config.platform == PLATFORM;
        let fail = |msg: String| Error::invalid(format!("ensemble '{}': {msg}", config.name));
        let scheduling = match (&config.ensemble_scheduling, is_ensemble) {
            (None, false) => return Ok(None),
            (Some(_), false) => {
                return Err(Error::invalid(format!(
                    "model '{}' has ensemble_scheduling but its platform is '{}', not 'ensemble'",
                    config.name, config.platform
                )))
            }
            (None, true) => {
                return Err(fail("platform 'ensemble' needs ensemble_scheduling".into()))
            }
            (Some(value), true) => EnsembleScheduling::deserialize(value)
                .map_err(|e| fail(format!("invalid ensemble_scheduling: {e}")))?,
        };
        let refused = [
            ("instance_group", !config.instance_group.is_empty()),
            ("model_warmup", config.model_warmup.is_some()),
            ("dynamic_batching", config.dynamic_batching.is_some()),
            ("sequence_batching", config.sequence_batching.is_some()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(fail(format!(
                "{field} must not be set on an ensemble (each composing model has its own)"
            )));
        }
        if !config.backend.is_empty() {
            return Err(fail(format!(
                "an ensemble has no backend, the config says backend '{}'",
                config.backend
            )));
        }
        scheduling.check_topology(config)?;
        Ok(Some(scheduling))
    }

    /// Steps, maps, producers and consumers; returns who writes each tensor.
    fn check_topology(&self, config: &ModelConfig) -> Result<BTreeMap<String, Source>> {
        let fail = |msg: String| Error::invalid(format!("ensemble '{}': {msg}", config.name));
        if self.step.is_empty() {
            return Err(fail("ensemble_scheduling has no step".into()));
        }
        let mut producers: BTreeMap<String, Source> = config
            .input
            .iter()
            .map(|t| (t.name.clone(), Source::EnsembleInput))
            .collect();
        for (i, step) in self.step.iter().enumerate() {
            let label = step.label(i);
            if step.model_name.is_empty() {
                return Err(fail(format!("step {i} has no model_name")));
            }
            if step.model_name == config.name {
                return Err(fail(format!("{label} is the ensemble itself")));
            }
            if step.model_version < -1 {
                return Err(fail(format!(
                    "{label}: model_version {} is invalid (-1 for the latest, or a version)",
                    step.model_version
                )));
            }
            if step.input_map.is_empty() {
                return Err(fail(format!("{label} has no input_map")));
            }
            if step.output_map.is_empty() {
                return Err(fail(format!("{label} has no output_map")));
            }
            for (output, tensor) in &step.output_map {
                if tensor.is_empty() {
                    return Err(fail(format!(
                        "{label} maps output '{output}' to an empty name"
                    )));
                }
                match producers.get(tensor) {
                    None => {}
                    Some(Source::EnsembleInput) => {
                        return Err(fail(format!(
                            "{label} writes tensor '{tensor}', which is an ensemble input"
                        )))
                    }
                    Some(Source::Step { step: other, .. }) => {
                        return Err(fail(format!(
                            "tensor '{tensor}' is written twice: by {} and by {label}",
                            self.step[*other].label(*other)
                        )))
                    }
                }
                producers.insert(
                    tensor.clone(),
                    Source::Step {
                        step: i,
                        output: output.clone(),
                    },
                );
            }
        }
        let mut consumed = BTreeSet::new();
        for (i, step) in self.step.iter().enumerate() {
            for (input, tensor) in &step.input_map {
                if !producers.contains_key(tensor) {
                    return Err(fail(format!(
                        "{} reads tensor '{tensor}' (for its input '{input}'), which is neither an \
                         ensemble input nor written by any step",
                        step.label(i)
                    )));
                }
                consumed.insert(tensor.as_str());
            }
        }
        for input in &config.input {
            if !consumed.contains(input.name.as_str()) {
                return Err(fail(format!(
                    "ensemble input '{}' is not read by any step",
                    input.name
                )));
            }
        }
        let outputs: BTreeSet<&str> = config.output.iter().map(|t| t.name.as_str()).collect();
        for output in &config.output {
            match producers.get(&output.name) {
                Some(Source::Step { .. }) => {}
                Some(Source::EnsembleInput) => {
                    return Err(fail(format!(
                        "ensemble output '{}' is also an ensemble input; a step must write it",
                        output.name
                    )))
                }
                None => {
                    return Err(fail(format!(
                        "ensemble output '{}' is not written by any step",
                        output.name
                    )))
                }
            }
        }
        for (tensor, source) in &producers {
            if let Source::Step { step, .. } = source {
                if !consumed.contains(tensor.as_str()) && !outputs.contains(tensor.as_str()) {
                    return Err(fail(format!(
                        "tensor '{tensor}' written by {} is neither read by a step nor an ensemble output",
                        self.step[*step].label(*step)
                    )));
                }
            }
        }
        let deps = dependencies(&self.step, &producers);
        topological_order(&deps).map_err(|stuck| {
            let names: Vec<String> = stuck.iter().map(|&i| self.step[i].label(i)).collect();
            fail(format!("the steps form a cycle: {}", names.join(", ")))
        })?;
        Ok(producers)
    }
}

/// For each step, the steps whose outputs it reads (sorted, no duplicates).
fn dependencies(steps: &[EnsembleStep], producers: &BTreeMap<String, Source>) -> Vec<Vec<usize>> {
    steps
        .iter()
        .map(|step| {
            let set: BTreeSet<usize> = step
                .input_map
                .values()
                .filter_map(|t| match producers.get(t) {
                    Some(Source::Step { step, .. }) => Some(*step),
                    _ => None,
                })
                .collect();
            set.into_iter().collect()
        })
        .collect()
}

/// Kahn's algorithm; `Err` holds the steps left on or behind a cycle.
fn topological_order(deps: &[Vec<usize>]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); deps.len()];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            dependents[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..deps.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == deps.len() {
        Ok(order)
    } else {
        Err((0..deps.len()).filter(|i| !order.contains(i)).collect())
    }
}

/// A checked ensemble: its steps, where each tensor comes from, and the dependency
/// graph between steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleGraph {
    pub scheduling: EnsembleScheduling,
    /// Ensemble tensor → who writes it.
    pub sources: BTreeMap<String, Source>,
    /// For each step, the steps it waits for (sorted).
    pub depends_on: Vec<Vec<usize>>,
    /// For each step, the steps waiting for it (sorted).
    pub dependents: Vec<Vec<usize>>,
    /// The steps in an order where each comes after those it depends on.
    pub order: Vec<usize>,
}

impl EnsembleGraph {
    /// Checks the ensemble `config` against the configs of its composing models
    /// (`composing` gives the config a step's model and version resolve to, or the
    /// error that they do not) and builds its graph.
    pub fn build(
        config: &ModelConfig,
        composing: impl Fn(&EnsembleStep) -> Result<ModelConfig>,
    ) -> Result<EnsembleGraph> {
        let Some(scheduling) = EnsembleScheduling::from_config(config)? else {
            return Err(Error::invalid(format!(
                "model '{}' is not an ensemble (platform '{}')",
                config.name, config.platform
            )));
        };
        let sources = scheduling.check_topology(config)?;
        let fail = |msg: String| Error::invalid(format!("ensemble '{}': {msg}", config.name));
        let models = scheduling
            .step
            .iter()
            .enumerate()
            .map(|(i, s)| {
                composing(s).map_err(|e| fail(format!("{}: {}", s.label(i), e.message())))
            })
            .collect::<Result<Vec<ModelConfig>>>()?;
        let ensemble_batch = config.max_batch_size;
        let names = |ts: &[TensorConfig]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        // Outputs first: the input checks below look producers' outputs up.
        for (i, (step, model)) in scheduling.step.iter().zip(&models).enumerate() {
            let label = step.label(i);
            for output in step.output_map.keys() {
                if !model.output.iter().any(|t| &t.name == output) {
                    return Err(fail(format!(
                        "{label}: output_map names '{output}', which is not an output of '{}' \
                         (its outputs are {:?})",
                        step.model_name,
                        names(&model.output)
                    )));
                }
            }
        }
        for (i, (step, model)) in scheduling.step.iter().zip(&models).enumerate() {
            let label = step.label(i);
            if ensemble_batch > 0
                && model.max_batch_size > 0
                && model.max_batch_size < ensemble_batch
            {
                return Err(fail(format!(
                    "{label}: the ensemble's max_batch_size {ensemble_batch} is more than the \
                     model's {}",
                    model.max_batch_size
                )));
            }
            for (input, tensor) in &step.input_map {
                let Some(want) = model.input.iter().find(|t| &t.name == input) else {
                    return Err(fail(format!(
                        "{label}: input_map names '{input}', which is not an input of '{}' (its \
                         inputs are {:?})",
                        step.model_name,
                        names(&model.input)
                    )));
                };
                let (have, have_batch, from) = match &sources[tensor] {
                    Source::EnsembleInput => {
                        let t = config
                            .input
                            .iter()
                            .find(|t| &t.name == tensor)
                            .expect("an input");
                        (t, ensemble_batch, "ensemble input".to_owned())
                    }
                    Source::Step { step: p, output } => {
                        let producer = &models[*p];
                        let t = producer
                            .output
                            .iter()
                            .find(|t| &t.name == output)
                            .expect("output_map keys were checked above");
                        (
                            t,
                            producer.max_batch_size,
                            format!("output '{output}' of {}", scheduling.step[*p].label(*p)),
                        )
                    }
                };
                check_edge(&Edge {
                    tensor,
                    from: &from,
                    have,
                    have_batch,
                    to: &format!("input '{input}' of {label}"),
                    want,
                    want_batch: model.max_batch_size,
                })
                .map_err(fail)?;
            }
            if let Some(missing) = model
                .input
                .iter()
                .find(|t| !t.optional && !step.input_map.contains_key(&t.name))
            {
                return Err(fail(format!(
                    "{label}: input '{}' of '{}' is not mapped in input_map",
                    missing.name, step.model_name
                )));
            }
        }
        for output in &config.output {
            let Source::Step {
                step: p,
                output: name,
            } = &sources[&output.name]
            else {
                unreachable!("checked by check_topology")
            };
            let producer = &models[*p];
            let have = producer
                .output
                .iter()
                .find(|t| &t.name == name)
                .expect("output_map keys were checked above");
            check_edge(&Edge {
                tensor: &output.name,
                from: &format!("output '{name}' of {}", scheduling.step[*p].label(*p)),
                have,
                have_batch: producer.max_batch_size,
                to: "the ensemble output",
                want: output,
                want_batch: ensemble_batch,
            })
            .map_err(fail)?;
        }
        let depends_on = dependencies(&scheduling.step, &sources);
        let mut dependents = vec![Vec::new(); depends_on.len()];
        for (i, d) in depends_on.iter().enumerate() {
            for &p in d {
                dependents[p].push(i);
            }
        }
        let order = topological_order(&depends_on).map_err(|_| fail("cycle".into()))?;
        Ok(EnsembleGraph {
            scheduling,
            sources,
            depends_on,
            dependents,
            order,
        })
    }

    /// A tracker for one ensemble request.
    pub fn tracker(&self) -> ReadyTracker<'_> {
        ReadyTracker {
            graph: self,
            pending: self.depends_on.iter().map(Vec::len).collect(),
            done: vec![false; self.depends_on.len()],
        }
    }
}

/// One tensor flowing from a producer into a consumer.
struct Edge<'a> {
    tensor: &'a str,
    from: &'a str,
    have: &'a TensorConfig,
    have_batch: i32,
    to: &'a str,
    want: &'a TensorConfig,
    want_batch: i32,
}

/// Datatype and shape agreement along an edge. Shapes are compared whole (the batch
/// dimension, when a side batches, as a leading -1); -1 matches any size.
fn check_edge(e: &Edge<'_>) -> std::result::Result<(), String> {
    if e.have.data_type != e.want.data_type {
        return Err(format!(
            "tensor '{}': {} is {} but {} takes {}",
            e.tensor,
            e.from,
            name(e.have.data_type),
            e.to,
            name(e.want.data_type)
        ));
    }
    let full = |t: &TensorConfig, batch: i32| -> Vec<i64> {
        if batch > 0 {
            std::iter::once(-1).chain(t.dims.iter().copied()).collect()
        } else {
            t.dims.clone()
        }
    };
    let (have, want) = (full(e.have, e.have_batch), full(e.want, e.want_batch));
    let fits = have.len() == want.len()
        && have
            .iter()
            .zip(&want)
            .all(|(&a, &b)| a == -1 || b == -1 || a == b);
    if !fits {
        return Err(format!(
            "tensor '{}': {} has shape {have:?} but {} takes {want:?} (with the batch dimension \
             as -1 where a model batches)",
            e.tensor, e.from, e.to
        ));
    }
    Ok(())
}

fn name(d: DataType) -> &'static str {
    d.config_name()
}

/// Which steps of one ensemble request may start: those whose producers are done.
#[derive(Debug, Clone)]
pub struct ReadyTracker<'a> {
    graph: &'a EnsembleGraph,
    pending: Vec<usize>,
    done: Vec<bool>,
}

impl ReadyTracker<'_> {
    /// The steps that read only ensemble inputs: they start at once.
    pub fn initial(&self) -> Vec<usize> {
        (0..self.pending.len())
            .filter(|&i| self.graph.depends_on[i].is_empty())
            .collect()
    }

    /// Marks `step` done; returns the steps that became ready because of it. A step
    /// reported twice, or out of range, makes nothing ready.
    pub fn complete(&mut self, step: usize) -> Vec<usize> {
        if self.done.get(step).copied() != Some(false) {
            return Vec::new();
        }
        self.done[step] = true;
        let mut ready = Vec::new();
        for &d in &self.graph.dependents[step] {
            self.pending[d] -= 1;
            if self.pending[d] == 0 {
                ready.push(d);
            }
        }
        ready
    }

    /// Every step is done.
    pub fn finished(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

#[cfg(test)]
mod tests;

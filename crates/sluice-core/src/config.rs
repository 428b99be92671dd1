//! Triton's model configuration schema (`model_config.proto`), with the same field
//! names, so a `config.json` is the JSON form of a `config.pbtxt` and `GET
//! v2/models/{m}/config` answers in the shape Triton's clients expect.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::{DataType, Error, Result};

/// Bounds on the numbers a config may hold, so one config cannot start threads or
/// hold requests without end (`validate` refuses a config past any of them).
pub mod limits {
    use std::time::Duration;

    /// Instances (one OS thread each) over all instance groups and selected versions.
    pub const MAX_INSTANCES: usize = 256;
    /// `max_batch_size`.
    pub const MAX_BATCH_SIZE: i32 = 1 << 16;
    /// `dynamic_batching.max_queue_delay_microseconds` (and the adaptive bound): 60 s.
    pub const MAX_QUEUE_DELAY_MICROSECONDS: u64 = 60_000_000;
    /// `priority_levels`.
    pub const MAX_PRIORITY_LEVELS: u64 = 1024;
    /// A queue policy's `max_queue_size`.
    pub const MAX_QUEUE_SIZE: u32 = 1 << 20;
    /// A queue policy's `default_timeout_microseconds`; request timeouts longer than
    /// this are cut to it (so a deadline `now + timeout` always exists): 24 h.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
}

/// A model's configuration. Fields Sluice does not act on yet are kept as raw
/// JSON so they round-trip through `GET .../config`; unknown fields are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub backend: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    #[serde(default)]
    pub max_batch_size: i32,
    #[serde(default)]
    pub input: Vec<TensorConfig>,
    #[serde(default)]
    pub output: Vec<TensorConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    #[serde(default)]
    pub instance_group: Vec<InstanceGroup>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_model_filename: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, ModelParameter>,

    // Parsed and kept, not acted on yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimization: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_batching: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble_scheduling: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc_model_filenames: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_tags: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_warmup: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_operations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_transaction_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_repository_agents: Option<Value>,
    /// Triton's per-model switch of the response cache (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_cache: Option<ResponseCache>,
}

/// Triton's `response_cache` block (`ModelResponseCache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCache {
    /// Answers of this model are cached when the server has a cache configured.
    #[serde(default)]
    pub enable: bool,
}

/// Which versions of a model to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The `num_versions` highest numbered versions.
    Latest {
        #[serde(default = "one")]
        num_versions: u32,
    },
    /// Every version found.
    All {},
    /// Exactly these versions.
    Specific {
        #[serde(default)]
        versions: Vec<u64>,
    },
}

fn one() -> u32 {
    1
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl ModelConfig {
    /// The model asks for its answers to be cached (`response_cache { enable: true }`).
    pub fn response_cache_enabled(&self) -> bool {
        self.response_cache.is_some_and(|c| c.enable)
    }
}

impl VersionPolicy {
    /// The versions to serve out of those `available` on disk, ascending.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        match self {
            VersionPolicy::Latest { num_versions } => {
                let keep = (*num_versions as usize).min(sorted.len());
                sorted.split_off(sorted.len() - keep)
            }
            VersionPolicy::All {} => sorted,
            VersionPolicy::Specific { versions } => {
                sorted.retain(|v| versions.contains(v));
                sorted
            }
        }
    }
}

/// An `input` or `output` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    pub name: String,
    #[serde(with = "config_datatype")]
    pub data_type: DataType,
    #[serde(default)]
    pub dims: Vec<i64>,
    /// The shape the model's tensor has when it differs from the client's `dims`
    /// (Triton's `reshape`; both exclude the batch dimension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshape: Option<Reshape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_shape_tensor: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_ragged_batch: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label_filename: String,
}

impl TensorConfig {
    pub fn new(name: impl Into<String>, data_type: DataType, dims: Vec<i64>) -> Self {
        TensorConfig {
            name: name.into(),
            data_type,
            dims,
            reshape: None,
            format: None,
            optional: false,
            is_shape_tensor: false,
            allow_ragged_batch: false,
            label_filename: String::new(),
        }
    }
}

/// Triton's `reshape { shape: [...] }` of an input or output: the shape of the
/// model's own tensor (without the batch dimension); `[]` is one scalar per row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reshape {
    #[serde(default)]
    pub shape: Vec<i64>,
}

/// Triton's `dynamic_batching` block. Parsed now; the batcher acts on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    #[serde(default)]
    pub preferred_batch_size: Vec<i64>,
    #[serde(default)]
    pub max_queue_delay_microseconds: u64,
    #[serde(default)]
    pub preserve_ordering: bool,
    #[serde(default)]
    pub priority_levels: u64,
    #[serde(default)]
    pub default_priority_level: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_policy: Option<QueuePolicy>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priority_queue_policy: BTreeMap<u64, QueuePolicy>,
}

impl DynamicBatching {
    /// The [`limits`] on delays, levels, queue sizes and timeouts.
    fn check_bounds(&self) -> Result<()> {
        if self.max_queue_delay_microseconds > limits::MAX_QUEUE_DELAY_MICROSECONDS {
            return Err(Error::invalid(format!(
                "max_queue_delay_microseconds {} is too large (at most {})",
                self.max_queue_delay_microseconds,
                limits::MAX_QUEUE_DELAY_MICROSECONDS
            )));
        }
        if self.priority_levels > limits::MAX_PRIORITY_LEVELS {
            return Err(Error::invalid(format!(
                "priority_levels {} is too large (at most {})",
                self.priority_levels,
                limits::MAX_PRIORITY_LEVELS
            )));
        }
        let policies = self
            .default_queue_policy
            .iter()
            .chain(self.priority_queue_policy.values());
        for p in policies {
            if p.max_queue_size > limits::MAX_QUEUE_SIZE {
                return Err(Error::invalid(format!(
                    "max_queue_size {} is too large (at most {})",
                    p.max_queue_size,
                    limits::MAX_QUEUE_SIZE
                )));
            }
            let max_timeout = limits::MAX_TIMEOUT.as_micros();
            if u128::from(p.default_timeout_microseconds) > max_timeout {
                return Err(Error::invalid(format!(
                    "default_timeout_microseconds {} is too large (at most {max_timeout})",
                    p.default_timeout_microseconds
                )));
            }
        }
        Ok(())
    }
}

/// A queue policy (`ModelQueuePolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicy {
    #[serde(default = "reject")]
    pub timeout_action: String,
    #[serde(default)]
    pub default_timeout_microseconds: u64,
    #[serde(default)]
    pub allow_timeout_override: bool,
    #[serde(default)]
    pub max_queue_size: u32,
}

fn reject() -> String {
    "REJECT".to_owned()
}

/// An `instance_group` entry: how many copies of the model run, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceGroup {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default = "kind_cpu")]
    pub kind: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_devices: Option<Value>,
}

fn kind_cpu() -> String {
    "KIND_CPU".to_owned()
}

/// A `parameters` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParameter {
    #[serde(default)]
    pub string_value: String,
}

/// Triton's rules for a `reshape` (`ValidateIOShape`): positive sizes or -1, the same
/// element count as `dims`, and, with variable dimensions, the same count in each run
/// of fixed dimensions between them. An empty reshape (a scalar per row) needs `dims`
/// of one element and a batching model.
fn check_reshape(kind: &str, t: &TensorConfig, shape: &[i64], max_batch_size: i32) -> Result<()> {
    let name = &t.name;
    if let Some(d) = shape.iter().find(|&&d| d < -1 || d == 0) {
        return Err(Error::invalid(format!(
            "{kind} '{name}': reshape dimension {d} is invalid (use a positive size or -1)"
        )));
    }
    if shape.is_empty() && max_batch_size == 0 {
        return Err(Error::invalid(format!(
            "{kind} '{name}': an empty reshape needs max_batch_size > 0 \
             (a model that does not batch cannot take scalar tensors)"
        )));
    }
    // Element counts of the runs of fixed dimensions between variable ones.
    let runs = |dims: &[i64]| -> Option<Vec<i64>> {
        let mut runs = vec![1i64];
        for &d in dims {
            if d == -1 {
                runs.push(1);
            } else {
                let last = runs.last_mut().expect("one run at least");
                *last = last.checked_mul(d)?;
            }
        }
        Some(runs)
    };
    let (Some(from), Some(to)) = (runs(&t.dims), runs(shape)) else {
        return Err(Error::invalid(format!(
            "{kind} '{name}': dims or reshape hold too many elements"
        )));
    };
    if from.len() != to.len() {
        return Err(Error::invalid(format!(
            "{kind} '{name}': dims {:?} and reshape {shape:?} have different numbers of \
             variable-size (-1) dimensions",
            t.dims
        )));
    }
    if from != to {
        return Err(Error::invalid(format!(
            "{kind} '{name}': dims {:?} and reshape {shape:?} hold different numbers of elements",
            t.dims
        )));
    }
    Ok(())
}

mod config_datatype {
    use super::*;

    pub fn serialize<S: Serializer>(d: &DataType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.config_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
        let name = String::deserialize(d)?;
        DataType::from_config_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown data_type '{name}' (expected one of TYPE_BOOL, TYPE_UINT8..TYPE_UINT64, \
                 TYPE_INT8..TYPE_INT64, TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_BF16, TYPE_STRING)"
            ))
        })
    }
}

impl ModelConfig {
    /// Parses the JSON form (`config.json`).
    pub fn from_json(text: &str) -> Result<ModelConfig> {
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid config: {e}")))
    }

    /// Parses an already-built JSON value (the pbtxt parser produces one).
    pub fn from_json_value(value: Value) -> Result<ModelConfig> {
        serde_json::from_value(value).map_err(|e| Error::invalid(format!("invalid config: {e}")))
    }

    /// Checks what serde cannot: sizes, dims, duplicate names, counts.
    pub fn validate(&self) -> Result<()> {
        if self.max_batch_size < 0 {
            return Err(Error::invalid(format!(
                "max_batch_size must be >= 0, got {}",
                self.max_batch_size
            )));
        }
        if self.input.is_empty() {
            return Err(Error::invalid("the model declares no inputs"));
        }
        if self.output.is_empty() {
            return Err(Error::invalid("the model declares no outputs"));
        }
        for (kind, tensors) in [("input", &self.input), ("output", &self.output)] {
            let mut seen = std::collections::HashSet::new();
            for t in tensors {
                if t.name.is_empty() {
                    return Err(Error::invalid(format!("an {kind} has no name")));
                }
                if !seen.insert(&t.name) {
                    return Err(Error::invalid(format!(
                        "{kind} '{}' is declared twice",
                        t.name
                    )));
                }
                if let Some(d) = t.dims.iter().find(|&&d| d < -1 || d == 0) {
                    return Err(Error::invalid(format!(
                        "{kind} '{}': dimension {d} is invalid (use a positive size or -1)",
                        t.name
                    )));
                }
                if let Some(reshape) = &t.reshape {
                    check_reshape(kind, t, &reshape.shape, self.max_batch_size)?;
                }
            }
        }
        if self.max_batch_size > limits::MAX_BATCH_SIZE {
            return Err(Error::invalid(format!(
                "max_batch_size {} is too large (at most {})",
                self.max_batch_size,
                limits::MAX_BATCH_SIZE
            )));
        }
        for g in &self.instance_group {
            if g.count == 0 {
                return Err(Error::invalid("instance_group count must be at least 1"));
            }
        }
        if self.instance_count() > limits::MAX_INSTANCES {
            return Err(Error::invalid(format!(
                "instance_group counts add up to {} instances, too many (at most {})",
                self.instance_count(),
                limits::MAX_INSTANCES
            )));
        }
        if let Some(db) = &self.dynamic_batching {
            db.check_bounds()?;
            if let Some(p) = db.preferred_batch_size.iter().find(|&&p| p < 1) {
                return Err(Error::invalid(format!(
                    "preferred_batch_size {p} must be >= 1"
                )));
            }
            if self.max_batch_size == 0 {
                return Err(Error::invalid(
                    "dynamic_batching needs max_batch_size > 0 (the model must batch)",
                ));
            }
        }
        crate::ensemble::EnsembleScheduling::from_config(self)?;
        Ok(())
    }

    /// The configuration as the engine sees it: each tensor with a `reshape` has the
    /// reshape's shape as its `dims` (the client-facing `dims` stay in `self`).
    /// `None` when no tensor is reshaped.
    pub fn engine_config(&self) -> Option<ModelConfig> {
        let reshaped = |t: &TensorConfig| t.reshape.is_some();
        if !self.input.iter().chain(&self.output).any(reshaped) {
            return None;
        }
        let mut engine = self.clone();
        for t in engine.input.iter_mut().chain(engine.output.iter_mut()) {
            if let Some(r) = t.reshape.take() {
                t.dims = r.shape;
            }
        }
        Some(engine)
    }

    /// Total instances over all instance groups (1 when none is given).
    pub fn instance_count(&self) -> usize {
        if self.instance_group.is_empty() {
            1
        } else {
            self.instance_group
                .iter()
                .fold(0usize, |n, g| n.saturating_add(g.count as usize))
        }
    }

    /// A string parameter, if set.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.get(key).map(|p| p.string_value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_policy_selects() {
        let avail = [3, 1, 2];
        assert_eq!(VersionPolicy::default().select(&avail), vec![3]);
        assert_eq!(
            VersionPolicy::Latest { num_versions: 2 }.select(&avail),
            vec![2, 3]
        );
        assert_eq!(
            VersionPolicy::Latest { num_versions: 9 }.select(&avail),
            vec![1, 2, 3]
        );
        assert_eq!(VersionPolicy::All {}.select(&avail), vec![1, 2, 3]);
        assert_eq!(
            VersionPolicy::Specific {
                versions: vec![1, 7]
            }
            .select(&avail),
            vec![1]
        );
    }

    #[test]
    fn response_cache_is_typed_and_off_by_default() {
        let on = ModelConfig::from_json(r#"{"response_cache":{"enable":true}}"#).unwrap();
        assert!(on.response_cache_enabled());
        let off = ModelConfig::from_json(r#"{"response_cache":{}}"#).unwrap();
        assert!(!off.response_cache_enabled());
        assert!(!ModelConfig::default().response_cache_enabled());
        assert!(ModelConfig::from_json(r#"{"response_cache":{"enabled":true}}"#).is_err());
        let echoed = serde_json::to_value(&on).unwrap();
        assert_eq!(
            echoed["response_cache"],
            serde_json::json!({"enable": true})
        );
    }

    #[test]
    fn json_config_parses_and_rejects_unknown_fields() {
        let cfg = ModelConfig::from_json(
            r#"{"name":"m","max_batch_size":8,
                "input":[{"name":"x","data_type":"TYPE_FP32","dims":[-1,3]}],
                "output":[{"name":"y","data_type":"TYPE_INT64","dims":[1]}],
                "version_policy":{"specific":{"versions":[2]}},
                "parameters":{"k":{"string_value":"v"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.input[0].data_type, DataType::F32);
        assert_eq!(
            cfg.version_policy,
            VersionPolicy::Specific { versions: vec![2] }
        );
        assert_eq!(cfg.parameter("k"), Some("v"));
        cfg.validate().unwrap();

        let err = ModelConfig::from_json(r#"{"name":"m","max_batch_sise":8}"#).unwrap_err();
        assert!(err.message().contains("max_batch_sise"), "{err}");
        let err = ModelConfig::from_json(
            r#"{"input":[{"name":"x","data_type":"TYPE_FLOAT","dims":[1]}]}"#,
        )
        .unwrap_err();
        assert!(err.message().contains("TYPE_FLOAT"), "{err}");
    }

    fn group() -> InstanceGroup {
        serde_json::from_str("{}").unwrap()
    }

    #[test]
    fn configs_at_the_limits_pass() {
        let mut cfg = ModelConfig {
            max_batch_size: limits::MAX_BATCH_SIZE,
            input: vec![TensorConfig::new("x", DataType::F32, vec![4])],
            output: vec![TensorConfig::new("y", DataType::F32, vec![4])],
            instance_group: vec![InstanceGroup {
                count: limits::MAX_INSTANCES as u32,
                ..group()
            }],
            dynamic_batching: Some(DynamicBatching {
                max_queue_delay_microseconds: limits::MAX_QUEUE_DELAY_MICROSECONDS,
                priority_levels: limits::MAX_PRIORITY_LEVELS,
                default_queue_policy: Some(QueuePolicy {
                    max_queue_size: limits::MAX_QUEUE_SIZE,
                    default_timeout_microseconds: limits::MAX_TIMEOUT.as_micros() as u64,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..ModelConfig::default()
        };
        cfg.validate().unwrap();
        cfg.dynamic_batching = None;
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let base = || ModelConfig {
            input: vec![TensorConfig::new("x", DataType::F32, vec![4])],
            output: vec![TensorConfig::new("y", DataType::F32, vec![4])],
            ..ModelConfig::default()
        };
        base().validate().unwrap();
        type Mutation = Box<dyn Fn(&mut ModelConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("max_batch_size", Box::new(|c| c.max_batch_size = -1)),
            ("no inputs", Box::new(|c| c.input.clear())),
            (
                "declared twice",
                Box::new(|c| c.output.push(c.output[0].clone())),
            ),
            ("dimension 0", Box::new(|c| c.input[0].dims = vec![0])),
            (
                "max_batch_size 65537",
                Box::new(|c| c.max_batch_size = limits::MAX_BATCH_SIZE + 1),
            ),
            (
                "4294967295 instances",
                Box::new(|c| {
                    c.instance_group = vec![InstanceGroup {
                        count: u32::MAX,
                        ..group()
                    }];
                }),
            ),
            (
                "257 instances",
                Box::new(|c| {
                    c.instance_group = vec![
                        InstanceGroup {
                            count: 200,
                            ..group()
                        },
                        InstanceGroup {
                            count: 57,
                            ..group()
                        },
                    ];
                }),
            ),
            (
                "max_queue_delay_microseconds 18446744073709551615",
                Box::new(|c| {
                    c.max_batch_size = 4;
                    c.dynamic_batching = Some(DynamicBatching {
                        max_queue_delay_microseconds: u64::MAX,
                        ..Default::default()
                    });
                }),
            ),
            (
                "priority_levels 1025",
                Box::new(|c| {
                    c.max_batch_size = 4;
                    c.dynamic_batching = Some(DynamicBatching {
                        priority_levels: 1025,
                        ..Default::default()
                    });
                }),
            ),
            (
                "max_queue_size 1048577",
                Box::new(|c| {
                    c.max_batch_size = 4;
                    c.dynamic_batching = Some(DynamicBatching {
                        priority_levels: 2,
                        priority_queue_policy: [(
                            2,
                            QueuePolicy {
                                max_queue_size: limits::MAX_QUEUE_SIZE + 1,
                                ..Default::default()
                            },
                        )]
                        .into(),
                        ..Default::default()
                    });
                }),
            ),
            (
                "default_timeout_microseconds 18446744073709551615",
                Box::new(|c| {
                    c.max_batch_size = 4;
                    c.dynamic_batching = Some(DynamicBatching {
                        default_queue_policy: Some(QueuePolicy {
                            default_timeout_microseconds: u64::MAX,
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }),
            ),
            ("dimension -2", Box::new(|c| c.input[0].dims = vec![-2])),
            (
                "needs max_batch_size",
                Box::new(|c| c.dynamic_batching = Some(Default::default())),
            ),
        ];
        for (expect, mutate) in cases {
            let mut cfg = base();
            mutate(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert!(err.message().contains(expect), "{expect}: {err}");
        }
    }

    #[test]
    fn reshapes_follow_tritons_rules() {
        let check = |max_batch_size: i32, dims: Vec<i64>, shape: Vec<i64>| {
            ModelConfig {
                max_batch_size,
                input: vec![TensorConfig {
                    reshape: Some(Reshape { shape }),
                    ..TensorConfig::new("x", DataType::F32, dims)
                }],
                output: vec![TensorConfig::new("y", DataType::F32, vec![4])],
                ..ModelConfig::default()
            }
            .validate()
            .map_err(|e| e.message().to_owned())
        };
        check(0, vec![3, 224, 224], vec![1, 3, 224, 224]).unwrap();
        check(4, vec![1], vec![]).unwrap();
        check(0, vec![2, 4, -1, 6], vec![8, -1, 1, 6]).unwrap();
        let refused = [
            (0, vec![4], vec![5], "different numbers of elements"),
            (0, vec![2, -1], vec![-1, 2], "different numbers of elements"),
            (0, vec![2, -1], vec![2], "variable-size"),
            (0, vec![4], vec![0, 4], "reshape dimension 0"),
            (0, vec![1], vec![], "needs max_batch_size > 0"),
            (4, vec![2], vec![], "different numbers of elements"),
        ];
        for (mbs, dims, shape, expect) in refused {
            let err = check(mbs, dims.clone(), shape.clone()).unwrap_err();
            assert!(err.contains(expect), "{dims:?} -> {shape:?}: {err}");
        }
        // The engine sees the reshape as its dims; the client keeps dims.
        let config = ModelConfig {
            input: vec![TensorConfig {
                reshape: Some(Reshape { shape: vec![1, 4] }),
                ..TensorConfig::new("x", DataType::F32, vec![4])
            }],
            output: vec![TensorConfig::new("y", DataType::F32, vec![4])],
            ..ModelConfig::default()
        };
        let engine = config.engine_config().unwrap();
        assert_eq!(engine.input[0].dims, vec![1, 4]);
        assert_eq!(engine.input[0].reshape, None);
        assert_eq!(config.input[0].dims, vec![4]);
        assert!(engine.engine_config().is_none());
        let parsed = ModelConfig::from_json(
            r#"{"input":[{"name":"x","data_type":"TYPE_FP32","dims":[1],"reshape":{"shape":[]}}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.input[0].reshape, Some(Reshape { shape: vec![] }));
    }
}

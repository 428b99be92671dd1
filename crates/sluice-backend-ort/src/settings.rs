//! Session options read from a model's config, with the names Triton's onnxruntime
//! backend uses, so an existing Triton repository keeps its tuning.

use ort::session::builder::GraphOptimizationLevel;
use sluice_core::{Error, ModelConfig, Result};

/// How the graph is optimized when a session is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Optimization {
    Disable,
    Basic,
    Extended,
    All,
}

impl Optimization {
    pub(crate) fn level(self) -> GraphOptimizationLevel {
        match self {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Per-model session options (the per-instance intra-op thread count comes with
/// `InstanceOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionSettings {
    /// Threads running independent nodes at once; only used in parallel mode (0: ORT's default).
    pub inter_op_threads: usize,
    /// Run independent nodes in parallel (`execution_mode: 1`).
    pub parallel: bool,
    pub optimization: Optimization,
    pub mem_arena: bool,
    pub mem_pattern: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        // ONNX Runtime's own defaults.
        SessionSettings {
            inter_op_threads: 0,
            parallel: false,
            optimization: Optimization::All,
            mem_arena: true,
            mem_pattern: true,
        }
    }
}

impl SessionSettings {
    /// Reads `parameters` (`inter_op_thread_count`, `execution_mode`,
    /// `graph_optimization_level`, `enable_mem_arena`, `enable_mem_pattern`) and
    /// Triton's `optimization { graph { level } }`. Parameters of other backends are
    /// ignored; a known parameter with a bad value is an error.
    pub(crate) fn from_config(config: &ModelConfig) -> Result<SessionSettings> {
        let mut s = SessionSettings::default();
        if let Some(v) = config.parameter("inter_op_thread_count") {
            s.inter_op_threads = v.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "parameter inter_op_thread_count must be a non-negative integer, got '{v}'"
                ))
            })?;
        }
        if let Some(v) = config.parameter("execution_mode") {
            s.parallel = match v.trim().to_ascii_lowercase().as_str() {
                "0" | "sequential" => false,
                "1" | "parallel" => true,
                _ => {
                    return Err(Error::invalid(format!(
                        "parameter execution_mode must be 0 (sequential) or 1 (parallel), got '{v}'"
                    )))
                }
            };
        }
        // Triton's form first; an explicit parameter wins.
        if let Some(level) = config
            .optimization
            .as_ref()
            .and_then(|o| o.get("graph"))
            .and_then(|g| g.get("level"))
        {
            let level = level.as_i64().ok_or_else(|| {
                Error::invalid(format!(
                    "optimization.graph.level must be an integer, got {level}"
                ))
            })?;
            // Triton: -1 basic, 1 basic + extended, 2 none, anything else all.
            s.optimization = match level {
                -1 => Optimization::Basic,
                1 => Optimization::Extended,
                2 => Optimization::Disable,
                _ => Optimization::All,
            };
        }
        if let Some(v) = config.parameter("graph_optimization_level") {
            s.optimization = match v.trim().to_ascii_lowercase().as_str() {
                "0" | "disable" | "disabled" | "none" => Optimization::Disable,
                "1" | "basic" => Optimization::Basic,
                "2" | "extended" => Optimization::Extended,
                "99" | "3" | "all" => Optimization::All,
                _ => {
                    return Err(Error::invalid(format!(
                        "parameter graph_optimization_level must be one of disable, basic, \
                         extended, all (or ORT's 0, 1, 2, 99), got '{v}'"
                    )))
                }
            };
        }
        if let Some(v) = config.parameter("enable_mem_arena") {
            s.mem_arena = flag("enable_mem_arena", v)?;
        }
        if let Some(v) = config.parameter("enable_mem_pattern") {
            s.mem_pattern = flag("enable_mem_pattern", v)?;
        }
        Ok(s)
    }
}

fn flag(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(Error::invalid(format!(
            "parameter {name} must be 1 or 0 (true or false), got '{value}'"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::ModelParameter;

    fn with(params: &[(&str, &str)], optimization: Option<&str>) -> ModelConfig {
        let mut c = ModelConfig::default();
        for (k, v) in params {
            c.parameters.insert(
                (*k).to_owned(),
                ModelParameter {
                    string_value: (*v).to_owned(),
                },
            );
        }
        c.optimization = optimization.map(|o| {
            let json = format!(r#"{{"optimization": {o}}}"#);
            ModelConfig::from_json(&json).unwrap().optimization.unwrap()
        });
        c
    }

    #[test]
    fn defaults_are_onnx_runtime_defaults() {
        let s = SessionSettings::from_config(&ModelConfig::default()).unwrap();
        assert_eq!(s, SessionSettings::default());
        assert_eq!(s.optimization, Optimization::All);
        assert!(s.mem_arena && s.mem_pattern && !s.parallel);
    }

    #[test]
    fn reads_triton_names() {
        let c = with(
            &[
                ("inter_op_thread_count", "2"),
                ("execution_mode", "1"),
                ("enable_mem_arena", "0"),
                ("enable_mem_pattern", "false"),
                ("tract_planned_batch_sizes", "1,2"), // another backend's: ignored
            ],
            Some(r#"{"graph": {"level": -1}}"#),
        );
        let s = SessionSettings::from_config(&c).unwrap();
        assert_eq!(s.inter_op_threads, 2);
        assert!(s.parallel);
        assert!(!s.mem_arena && !s.mem_pattern);
        assert_eq!(s.optimization, Optimization::Basic);

        let c = with(
            &[("graph_optimization_level", "extended")],
            Some(r#"{"graph": {"level": 2}}"#),
        );
        let s = SessionSettings::from_config(&c).unwrap();
        assert_eq!(s.optimization, Optimization::Extended, "the parameter wins");
        let c = with(&[], Some(r#"{"graph": {"level": 2}}"#));
        let s = SessionSettings::from_config(&c).unwrap();
        assert_eq!(s.optimization, Optimization::Disable);
    }

    #[test]
    fn rejects_bad_values_with_the_parameter_name() {
        for (k, v) in [
            ("inter_op_thread_count", "-1"),
            ("execution_mode", "fast"),
            ("graph_optimization_level", "max"),
            ("enable_mem_arena", "maybe"),
        ] {
            let err = SessionSettings::from_config(&with(&[(k, v)], None)).unwrap_err();
            assert!(err.message().contains(k), "{err}");
        }
        let err = SessionSettings::from_config(&with(&[], Some(r#"{"graph": {"level": "x"}}"#)))
            .unwrap_err();
        assert!(err.message().contains("level"), "{err}");
    }
}

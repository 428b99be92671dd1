//! Scheduling settings of one model version, validated from Triton's
//! `dynamic_batching` block and the server's defaults.

use std::time::Duration;

use sluice_core::{limits, Error, ModelConfig, Result};

/// How a model version is scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// `model:version`, for thread names, logs and errors.
    pub label: String,
    /// Rows one engine run may hold; 0 when the model does not batch.
    pub max_batch_size: usize,
    pub batching: Batching,
    /// Priority levels; index 0 is level 1, the highest.
    pub levels: Vec<LevelPolicy>,
    /// Level (1-based) of requests that name none.
    pub default_level: usize,
    /// Refuse at once (429) a request with a timeout that would be answered after it,
    /// given the work ahead (`sluice_early_rejection`, default on).
    pub early_rejection: bool,
}

/// Whether requests are combined into engine batches.
#[derive(Debug, Clone, PartialEq)]
pub enum Batching {
    /// One request per engine run (Triton's default scheduler).
    Off,
    Dynamic(DynamicBatching),
}

/// Triton's dynamic batcher, plus Sluice's adaptive delay.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicBatching {
    /// Batch sizes (in rows) dispatched as soon as they can be formed, ascending.
    pub preferred: Vec<usize>,
    pub delay: Delay,
    /// Answer requests in the order they arrived, whatever instance ran them.
    pub preserve_ordering: bool,
}

/// How long a batch may wait for more requests once an instance is free.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// Triton's `max_queue_delay_microseconds`.
    Static(Duration),
    /// Learned from the model's latency per batch size, the arrival rate and the
    /// queued requests' deadlines, never longer than `max`.
    Adaptive { max: Duration },
}

/// The queue policy of one priority level (Triton's `ModelQueuePolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelPolicy {
    pub timeout_action: TimeoutAction,
    pub default_timeout: Option<Duration>,
    pub allow_timeout_override: bool,
    /// Requests that may wait at this level; more are rejected at once.
    pub max_queue_size: usize,
}

/// What happens to a request whose timeout passes while it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Answer it with a timeout error; it never runs.
    Reject,
    /// Keep it, behind every request that has not timed out.
    Delay,
}

/// Parameter that turns Sluice's adaptive hold on (`"true"`) in place of Triton's static
/// `max_queue_delay_microseconds` (which then bounds the hold, if set). Off by default:
/// a Triton config means what it means in Triton (a delay of 0 never waits).
pub const ADAPTIVE_PARAMETER: &str = "sluice_adaptive_batching";
/// Parameter that turns early rejection off (`"false"`); on by default.
pub const EARLY_REJECTION_PARAMETER: &str = "sluice_early_rejection";
/// Parameter bounding the adaptive delay, in microseconds.
pub const ADAPTIVE_MAX_DELAY_PARAMETER: &str = "sluice_adaptive_max_delay_microseconds";
/// The adaptive hold's bound when neither `sluice_adaptive_max_delay_microseconds` nor
/// `max_queue_delay_microseconds` sets one: a few fixed costs of a memory-bound model
/// on a CPU (the hold itself stops after one fixed cost), small against the
/// 10–100 ms objectives of interactive serving.
const DEFAULT_ADAPTIVE_MAX_DELAY: Duration = Duration::from_millis(5);

impl SchedulerConfig {
    /// A single-level config without batching, for tests and simple callers.
    pub fn simple(label: impl Into<String>, max_batch_size: usize, queue_capacity: usize) -> Self {
        SchedulerConfig {
            label: label.into(),
            max_batch_size,
            batching: Batching::Off,
            levels: vec![LevelPolicy::reject_after(None, queue_capacity)],
            default_level: 1,
            early_rejection: true,
        }
    }

    /// Reads the scheduling part of a model's config. `queue_capacity` bounds a level
    /// whose policy sets no `max_queue_size`.
    pub fn from_model_config(
        label: impl Into<String>,
        config: &ModelConfig,
        queue_capacity: usize,
    ) -> Result<Self> {
        let label = label.into();
        let max_batch_size = usize::try_from(config.max_batch_size).unwrap_or(0);
        let early_rejection = flag(config, EARLY_REJECTION_PARAMETER)?.unwrap_or(true);
        let Some(db) = &config.dynamic_batching else {
            return Ok(SchedulerConfig {
                label,
                early_rejection,
                ..Self::simple("", max_batch_size, queue_capacity)
            });
        };
        let mut preferred: Vec<usize> = db
            .preferred_batch_size
            .iter()
            .map(|&p| p as usize)
            .collect();
        preferred.sort_unstable();
        preferred.dedup();
        if let Some(p) = preferred.iter().find(|&&p| p > max_batch_size) {
            return Err(Error::invalid(format!(
                "preferred_batch_size {p} is larger than max_batch_size {max_batch_size}"
            )));
        }
        let adaptive = flag(config, ADAPTIVE_PARAMETER)?.unwrap_or(false);
        // Checked whether or not the hold is on: a bad value is a mistake either way.
        let max_param = config
            .parameter(ADAPTIVE_MAX_DELAY_PARAMETER)
            .map(|v| {
                v.trim()
                    .parse()
                    .ok()
                    .filter(|&us| us <= limits::MAX_QUEUE_DELAY_MICROSECONDS)
                    .map(Duration::from_micros)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "parameter {ADAPTIVE_MAX_DELAY_PARAMETER} must be an integer \
                             in 0..={}, got '{v}'",
                            limits::MAX_QUEUE_DELAY_MICROSECONDS
                        ))
                    })
            })
            .transpose()?;
        let static_delay = Duration::from_micros(db.max_queue_delay_microseconds);
        let delay = if adaptive {
            let max = max_param.unwrap_or(if static_delay.is_zero() {
                DEFAULT_ADAPTIVE_MAX_DELAY
            } else {
                static_delay
            });
            Delay::Adaptive { max }
        } else {
            Delay::Static(static_delay)
        };
        let level_count = usize::try_from(db.priority_levels)
            .unwrap_or(usize::MAX)
            .max(1);
        if db.priority_levels > limits::MAX_PRIORITY_LEVELS {
            return Err(Error::invalid(format!(
                "priority_levels {} is too large (at most {})",
                db.priority_levels,
                limits::MAX_PRIORITY_LEVELS
            )));
        }
        let default_level = if db.default_priority_level == 0 {
            level_count.div_ceil(2).max(1)
        } else {
            db.default_priority_level as usize
        };
        if db.priority_levels > 0 && default_level > level_count {
            return Err(Error::invalid(format!(
                "default_priority_level {default_level} is outside 1..={level_count}"
            )));
        }
        let convert = |p: Option<&sluice_core::QueuePolicy>| -> Result<LevelPolicy> {
            let Some(p) = p else {
                return Ok(LevelPolicy::reject_after(None, queue_capacity));
            };
            let timeout_action = match p.timeout_action.as_str() {
                "REJECT" | "" => TimeoutAction::Reject,
                "DELAY" => TimeoutAction::Delay,
                other => {
                    return Err(Error::invalid(format!(
                        "timeout_action must be REJECT or DELAY, got '{other}'"
                    )))
                }
            };
            Ok(LevelPolicy {
                timeout_action,
                default_timeout: (p.default_timeout_microseconds > 0)
                    .then(|| Duration::from_micros(p.default_timeout_microseconds)),
                allow_timeout_override: p.allow_timeout_override,
                max_queue_size: if p.max_queue_size > 0 {
                    p.max_queue_size as usize
                } else {
                    queue_capacity
                },
            })
        };
        let default_policy = convert(db.default_queue_policy.as_ref())?;
        let mut levels = vec![default_policy; level_count];
        for (&level, policy) in &db.priority_queue_policy {
            let ix = usize::try_from(level)
                .ok()
                .filter(|&l| l >= 1 && l <= level_count)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "priority_queue_policy names level {level}, outside 1..={level_count}"
                    ))
                })?;
            levels[ix - 1] = convert(Some(policy))?;
        }
        Ok(SchedulerConfig {
            label,
            max_batch_size,
            batching: Batching::Dynamic(DynamicBatching {
                preferred,
                delay,
                preserve_ordering: db.preserve_ordering,
            }),
            levels,
            default_level,
            early_rejection,
        })
    }

    /// The number of requests all levels may hold together.
    pub fn total_capacity(&self) -> usize {
        self.levels.iter().map(|l| l.max_queue_size).sum()
    }

    pub fn preserve_ordering(&self) -> bool {
        matches!(&self.batching, Batching::Dynamic(d) if d.preserve_ordering)
    }
}

/// A `"true"`/`"false"` model parameter, if set.
fn flag(config: &ModelConfig, name: &str) -> Result<Option<bool>> {
    match config.parameter(name) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(other) => Err(Error::invalid(format!(
            "parameter {name} must be true or false, got '{other}'"
        ))),
    }
}

impl LevelPolicy {
    /// Reject on timeout, the request may set its own timeout.
    pub fn reject_after(default_timeout: Option<Duration>, max_queue_size: usize) -> Self {
        LevelPolicy {
            timeout_action: TimeoutAction::Reject,
            default_timeout,
            allow_timeout_override: true,
            max_queue_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(db: &str, params: &str) -> Result<SchedulerConfig> {
        let json = format!(
            r#"{{"max_batch_size": 8, "input": [{{"name":"x","data_type":"TYPE_FP32","dims":[1]}}],
                "output": [{{"name":"y","data_type":"TYPE_FP32","dims":[1]}}],
                "dynamic_batching": {db}, "parameters": {{{params}}}}}"#
        );
        SchedulerConfig::from_model_config("m:1", &ModelConfig::from_json(&json).unwrap(), 100)
    }

    #[test]
    fn reads_triton_dynamic_batching() {
        let c = config(
            r#"{"preferred_batch_size":[8,4],"max_queue_delay_microseconds":500,"preserve_ordering":true,
                "priority_levels":3,"default_priority_level":2,
                "default_queue_policy":{"timeout_action":"DELAY","default_timeout_microseconds":1000,"max_queue_size":5},
                "priority_queue_policy":{"1":{"max_queue_size":2,"allow_timeout_override":true}}}"#,
            "",
        )
        .unwrap();
        let Batching::Dynamic(d) = &c.batching else {
            panic!("batching")
        };
        assert_eq!(d.preferred, vec![4, 8]);
        assert_eq!(d.delay, Delay::Static(Duration::from_micros(500)));
        assert!(c.preserve_ordering());
        assert_eq!(c.levels.len(), 3);
        assert_eq!(c.default_level, 2);
        assert_eq!(c.levels[0].max_queue_size, 2);
        assert_eq!(c.levels[0].timeout_action, TimeoutAction::Reject);
        assert_eq!(c.levels[1].timeout_action, TimeoutAction::Delay);
        assert_eq!(c.levels[1].default_timeout, Some(Duration::from_millis(1)));
        assert_eq!(c.total_capacity(), 12);
    }

    #[test]
    fn adaptive_only_when_asked() {
        // Triton's meaning: no delay set (or 0) never waits.
        let c = config("{}", "").unwrap();
        let Batching::Dynamic(d) = &c.batching else {
            panic!("batching")
        };
        assert_eq!(d.delay, Delay::Static(Duration::ZERO));
        assert!(c.early_rejection);
        let c = config(
            "{}",
            r#""sluice_adaptive_batching":{"string_value":"true"}"#,
        )
        .unwrap();
        let Batching::Dynamic(d) = &c.batching else {
            panic!("batching")
        };
        assert_eq!(
            d.delay,
            Delay::Adaptive {
                max: DEFAULT_ADAPTIVE_MAX_DELAY
            }
        );
        let c = config(
            r#"{"max_queue_delay_microseconds": 100}"#,
            r#""sluice_adaptive_batching":{"string_value":"true"}"#,
        )
        .unwrap();
        let Batching::Dynamic(d) = &c.batching else {
            panic!("batching")
        };
        assert_eq!(
            d.delay,
            Delay::Adaptive {
                max: Duration::from_micros(100)
            }
        );
        let c = config(
            "{}",
            r#""sluice_adaptive_batching":{"string_value":"false"}"#,
        )
        .unwrap();
        let Batching::Dynamic(d) = &c.batching else {
            panic!("batching")
        };
        assert_eq!(d.delay, Delay::Static(Duration::ZERO));
    }

    #[test]
    fn rejects_inconsistent_settings() {
        for (db, expect) in [
            (
                r#"{"preferred_batch_size":[16]}"#,
                "larger than max_batch_size",
            ),
            (
                r#"{"priority_levels":2,"default_priority_level":3}"#,
                "outside 1..=2",
            ),
            (
                r#"{"priority_levels":2,"priority_queue_policy":{"5":{}}}"#,
                "level 5",
            ),
            (
                r#"{"default_queue_policy":{"timeout_action":"DROP"}}"#,
                "REJECT or DELAY",
            ),
        ] {
            let err = config(db, "").unwrap_err();
            assert!(err.message().contains(expect), "{db}: {err}");
        }
        let err = config(
            "{}",
            r#""sluice_adaptive_max_delay_microseconds":{"string_value":"60000001"}"#,
        )
        .unwrap_err();
        assert!(err.message().contains("0..=60000000"), "{err}");
        config(
            "{}",
            r#""sluice_adaptive_max_delay_microseconds":{"string_value":"60000000"}"#,
        )
        .unwrap();
    }

    #[test]
    fn early_rejection_can_be_turned_off() {
        let off = r#""sluice_early_rejection":{"string_value":"false"}"#;
        assert!(!config("{}", off).unwrap().early_rejection);
        let json = r#"{"max_batch_size": 0, "input": [{"name":"x","data_type":"TYPE_FP32","dims":[1]}],
            "output": [{"name":"y","data_type":"TYPE_FP32","dims":[1]}],
            "parameters": {"sluice_early_rejection":{"string_value":"false"}}}"#;
        let c =
            SchedulerConfig::from_model_config("m:1", &ModelConfig::from_json(json).unwrap(), 9)
                .unwrap();
        assert!(!c.early_rejection, "also without dynamic_batching");
        let err = config("{}", r#""sluice_early_rejection":{"string_value":"no"}"#).unwrap_err();
        assert!(
            err.message()
                .contains("sluice_early_rejection must be true or false"),
            "{err}"
        );
    }
}

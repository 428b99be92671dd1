//! A family's `config.pbtxt`, read and checked: which models are its variants, how
//! accurate and costly each is, and the default objective.
//!
//! ```text
//! name: "classifier"
//! platform: "sluice_family"
//! parameters: { key: "variant.resnet50"    value: { string_value: "accuracy=0.761 cost=4" } }
//! parameters: { key: "variant.mobilenetv2" value: { string_value: "accuracy=0.718 cost=1" } }
//! parameters: { key: "latency_objective_ms" value: { string_value: "50" } }
//! parameters: { key: "min_accuracy"         value: { string_value: "0.70" } }
//! ```
//!
//! Every parameter key is known (a typo is an error, not a silent default); each
//! variant is another model of the repository, optionally pinned to a version.

use std::time::Duration;

use sluice_core::{Error, ModelConfig, Result, TensorConfig};

/// The platform that marks a model folder as a variant family.
pub(crate) const PLATFORM: &str = "sluice_family";

const VARIANT_PREFIX: &str = "variant.";

/// One variant as the family's config states it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VariantSpec {
    pub model: String,
    /// A pinned version; `None` serves the model's newest ready version.
    pub version: Option<u64>,
    pub accuracy: f64,
    /// Relative cost (ties between equally accurate variants go to the cheaper one).
    pub cost: f64,
}

/// A family as its config states it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FamilySpec {
    /// Most accurate first (ties: cheaper first, then by name).
    pub variants: Vec<VariantSpec>,
    pub default_latency: Option<Duration>,
    pub default_min_accuracy: Option<f64>,
}

fn number(family: &str, key: &str, text: &str) -> Result<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "family '{family}': parameter '{key}' must be a finite number >= 0, got '{text}'"
            ))
        })
}

impl FamilySpec {
    /// Reads the family's parameters (the caller checked the platform).
    pub(crate) fn parse(config: &ModelConfig) -> Result<FamilySpec> {
        let family = config.name.as_str();
        let mut variants = Vec::new();
        let mut default_latency = None;
        let mut default_min_accuracy = None;
        for (key, value) in &config.parameters {
            let text = value.string_value.as_str();
            if let Some(model) = key.strip_prefix(VARIANT_PREFIX) {
                variants.push(Self::variant(family, model, text)?);
            } else if key == "latency_objective_ms" {
                let ms = number(family, key, text)?;
                if ms <= 0.0 {
                    return Err(Error::invalid(format!(
                        "family '{family}': latency_objective_ms must be > 0, got '{text}'"
                    )));
                }
                default_latency = Some(Duration::from_secs_f64(ms / 1e3));
            } else if key == "min_accuracy" {
                default_min_accuracy = Some(number(family, key, text)?);
            } else {
                return Err(Error::invalid(format!(
                    "family '{family}': unknown parameter '{key}' (expected 'variant.<model>', \
                     'latency_objective_ms' or 'min_accuracy')"
                )));
            }
        }
        if variants.is_empty() {
            return Err(Error::invalid(format!(
                "family '{family}' names no variants (add parameters with keys \
                 'variant.<model>' and values such as \"accuracy=0.76 cost=1\")"
            )));
        }
        if variants.iter().any(|v| v.model == family) {
            return Err(Error::invalid(format!(
                "family '{family}' names itself as a variant"
            )));
        }
        variants.sort_by(|a, b| {
            b.accuracy
                .total_cmp(&a.accuracy)
                .then(a.cost.total_cmp(&b.cost))
                .then(a.model.cmp(&b.model))
        });
        Ok(FamilySpec {
            variants,
            default_latency,
            default_min_accuracy,
        })
    }

    fn variant(family: &str, model: &str, text: &str) -> Result<VariantSpec> {
        sluice_repository::check_model_name(model)
            .map_err(|e| e.context(format!("family '{family}': variant '{model}'")))?;
        let (mut accuracy, mut cost, mut version) = (None, 1.0, None);
        for field in text.split([' ', ',', ';']).filter(|f| !f.is_empty()) {
            let (k, v) = field.split_once('=').ok_or_else(|| {
                Error::invalid(format!(
                    "family '{family}': variant '{model}': '{field}' is not key=value \
                     (expected e.g. \"accuracy=0.76 cost=1 version=2\")"
                ))
            })?;
            let key = format!("variant.{model} {k}");
            match k {
                "accuracy" => accuracy = Some(number(family, &key, v)?),
                "cost" => cost = number(family, &key, v)?,
                "version" => {
                    version = Some(v.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        Error::invalid(format!(
                            "family '{family}': variant '{model}': version must be a positive integer, got '{v}'"
                        ))
                    })?);
                }
                other => {
                    return Err(Error::invalid(format!(
                        "family '{family}': variant '{model}': unknown field '{other}' \
                         (expected accuracy, cost, version)"
                    )))
                }
            }
        }
        let accuracy = accuracy.ok_or_else(|| {
            Error::invalid(format!(
                "family '{family}': variant '{model}' states no accuracy (e.g. \"accuracy=0.76\")"
            ))
        })?;
        Ok(VariantSpec {
            model: model.to_owned(),
            version,
            accuracy,
            cost,
        })
    }
}

/// Checks that every variant takes the same inputs and gives the same outputs as
/// the first (names, datatypes, dims, and whether it batches), and returns the
/// family's completed config: its own, with the variants' inputs and outputs and
/// the smallest `max_batch_size` of them.
pub(crate) fn complete(
    family: &ModelConfig,
    variants: &[(&str, &ModelConfig)],
) -> Result<ModelConfig> {
    let Some((first_name, first)) = variants.first() else {
        return Err(Error::invalid(format!(
            "family '{}' names no variants",
            family.name
        )));
    };
    let describe = |t: &TensorConfig| format!("{} {:?}", t.data_type.v2_name(), t.dims);
    let same = |what: &str, a: &[TensorConfig], b: &[TensorConfig], name: &str| -> Result<()> {
        let mut a: Vec<&TensorConfig> = a.iter().collect();
        let mut b: Vec<&TensorConfig> = b.iter().collect();
        a.sort_by(|x, y| x.name.cmp(&y.name));
        b.sort_by(|x, y| x.name.cmp(&y.name));
        let names = |v: &[&TensorConfig]| v.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        if names(&a) != names(&b) {
            return Err(Error::invalid(format!(
                "family '{}': the {what}s of variant '{name}' ({:?}) differ from those of variant '{first_name}' ({:?})",
                family.name,
                names(&b),
                names(&a)
            )));
        }
        for (x, y) in a.iter().zip(&b) {
            if x.data_type != y.data_type || x.dims != y.dims {
                return Err(Error::invalid(format!(
                    "family '{}': {what} '{}' of variant '{name}' is {}, variant '{first_name}' has {}",
                    family.name,
                    x.name,
                    describe(y),
                    describe(x)
                )));
            }
        }
        Ok(())
    };
    for (name, v) in &variants[1..] {
        same("input", &first.input, &v.input, name)?;
        same("output", &first.output, &v.output, name)?;
        if (first.max_batch_size > 0) != (v.max_batch_size > 0) {
            return Err(Error::invalid(format!(
                "family '{}': variant '{name}' {} but variant '{first_name}' {} (their requests would differ in shape)",
                family.name,
                batches(v.max_batch_size),
                batches(first.max_batch_size)
            )));
        }
    }
    let mut config = family.clone();
    config.input = first.input.clone();
    config.output = first.output.clone();
    config.max_batch_size = variants
        .iter()
        .map(|(_, v)| v.max_batch_size)
        .min()
        .unwrap_or(0);
    Ok(config)
}

fn batches(max_batch_size: i32) -> String {
    if max_batch_size > 0 {
        format!("batches (max_batch_size {max_batch_size})")
    } else {
        "does not batch".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{DataType, ModelParameter};

    fn family(params: &[(&str, &str)]) -> ModelConfig {
        ModelConfig {
            name: "fam".into(),
            platform: PLATFORM.into(),
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

    fn model(input: &str, dims: Vec<i64>, max_batch_size: i32) -> ModelConfig {
        ModelConfig {
            name: "v".into(),
            max_batch_size,
            input: vec![TensorConfig::new(input, DataType::F32, dims.clone())],
            output: vec![TensorConfig::new("y", DataType::F32, dims)],
            ..ModelConfig::default()
        }
    }

    #[test]
    fn variants_are_read_and_ordered_most_accurate_first_then_cheapest() {
        let spec = FamilySpec::parse(&family(&[
            ("variant.small", "accuracy=0.70"),
            ("variant.big", "accuracy=0.9, cost=4 version=2"),
            ("variant.big_cheap", "accuracy=0.9 cost=2"),
            ("latency_objective_ms", "25"),
            ("min_accuracy", "0.5"),
        ]))
        .unwrap();
        let names: Vec<&str> = spec.variants.iter().map(|v| v.model.as_str()).collect();
        assert_eq!(names, ["big_cheap", "big", "small"]);
        assert_eq!(spec.variants[1].version, Some(2));
        assert_eq!(spec.variants[1].cost, 4.0);
        assert_eq!(spec.variants[2].cost, 1.0);
        assert_eq!(spec.default_latency, Some(Duration::from_millis(25)));
        assert_eq!(spec.default_min_accuracy, Some(0.5));
    }

    #[test]
    fn bad_family_configs_are_refused_with_the_reason() {
        for (params, want) in [
            (vec![], "names no variants"),
            (vec![("variant.a", "cost=1")], "states no accuracy"),
            (
                vec![("variant.a", "accuracy=high")],
                "must be a finite number",
            ),
            (
                vec![("variant.a", "accuracy=0.5 speed=3")],
                "unknown field 'speed'",
            ),
            (vec![("variant.a", "accuracy")], "is not key=value"),
            (
                vec![("variant.a", "accuracy=0.5 version=0")],
                "positive integer",
            ),
            (vec![("variant.fam", "accuracy=0.5")], "names itself"),
            (
                vec![("variant.a", "accuracy=0.5"), ("latency_ms", "3")],
                "unknown parameter 'latency_ms'",
            ),
            (
                vec![("variant.a", "accuracy=0.5"), ("latency_objective_ms", "0")],
                "must be > 0",
            ),
            (vec![("variant.../x", "accuracy=0.5")], "variant '../x'"),
        ] {
            let err = FamilySpec::parse(&family(&params)).unwrap_err();
            assert!(err.message().contains(want), "{params:?}: {err}");
            assert_eq!(err.kind(), sluice_core::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn variants_must_agree_on_inputs_outputs_and_batching() {
        let fam = family(&[]);
        let a = model("x", vec![4], 8);
        let ok = complete(&fam, &[("a", &a), ("b", &model("x", vec![4], 2))]).unwrap();
        assert_eq!(ok.max_batch_size, 2, "the smallest batch of the variants");
        assert_eq!(ok.input, a.input);
        assert_eq!(ok.platform, PLATFORM);
        for (other, want) in [
            (model("z", vec![4], 8), "the inputs of variant 'b'"),
            (
                model("x", vec![5], 8),
                "input 'x' of variant 'b' is FP32 [5]",
            ),
            (model("x", vec![4], 0), "variant 'b' does not batch"),
        ] {
            let err = complete(&fam, &[("a", &a), ("b", &other)]).unwrap_err();
            assert!(err.message().contains(want), "{err}");
        }
        let mut typed = model("x", vec![4], 8);
        typed.output[0].data_type = DataType::I64;
        let err = complete(&fam, &[("a", &a), ("b", &typed)]).unwrap_err();
        assert!(
            err.message().contains("output 'y' of variant 'b' is INT64"),
            "{err}"
        );
    }
}

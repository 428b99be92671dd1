//! A model's configuration as the `inference.ModelConfig` message.
//!
//! The core [`ModelConfig`](sluice_core::ModelConfig) serializes to the JSON form of
//! Triton's configuration (the same body `GET v2/models/{m}/config` returns), and the
//! proto messages read protobuf's JSON mapping, so one conversion covers every field,
//! including those Sluice keeps without acting on them. A field whose JSON has no
//! protobuf form (a hand-written `config.json` may hold one) is left out of the
//! message and logged; the rest of the configuration is still returned.

use serde_json::{Map, Value};
use sluice_core::{Error, Result};
use sluice_proto::inference::ModelConfig;

/// Converts a model's configuration to its protobuf message.
pub fn model_config(config: &sluice_core::ModelConfig) -> Result<ModelConfig> {
    let json = serde_json::to_value(config)
        .map_err(|e| Error::internal(format!("cannot encode the model configuration: {e}")))?;
    let Value::Object(fields) = json else {
        return Err(Error::internal(
            "the model configuration is not a JSON object",
        ));
    };
    if let Ok(message) = serde_json::from_value(Value::Object(fields.clone())) {
        return Ok(message);
    }
    // Add the fields one at a time and keep those that convert together.
    let mut kept = Map::new();
    for (name, value) in fields {
        kept.insert(name.clone(), value);
        if let Err(e) = serde_json::from_value::<ModelConfig>(Value::Object(kept.clone())) {
            tracing::warn!(
                model = %config.name,
                field = %name,
                error = %e,
                "a model configuration field has no protobuf form; the gRPC ModelConfig leaves it out"
            );
            kept.remove(&name);
        }
    }
    serde_json::from_value(Value::Object(kept))
        .map_err(|e| Error::internal(format!("cannot encode the model configuration: {e}")))
}

#[cfg(test)]
mod tests {
    use sluice_core::{DataType, DynamicBatching, TensorConfig, VersionPolicy};
    use sluice_proto::inference::{self, model_config::SchedulingChoice};

    use super::*;

    #[test]
    fn every_field_converts() {
        let config = sluice_core::ModelConfig::from_json(
            r#"{"name":"m","backend":"tract","max_batch_size":8,
                "version_policy":{"specific":{"versions":[1,3]}},
                "input":[{"name":"x","data_type":"TYPE_FP16","dims":[-1,4],"format":"FORMAT_NCHW"}],
                "output":[{"name":"y","data_type":"TYPE_STRING","dims":[1],"label_filename":"l.txt"}],
                "dynamic_batching":{"preferred_batch_size":[2,4],"max_queue_delay_microseconds":100,
                    "default_queue_policy":{"max_queue_size":7}},
                "instance_group":[{"kind":"KIND_CPU","count":2}],
                "parameters":{"k":{"string_value":"v"}},
                "optimization":{"execution_accelerators":{"cpu_execution_accelerator":[{"name":"openvino"}]}},
                "model_warmup":[{"name":"w","batch_size":1,"inputs":{"x":{"data_type":"TYPE_FP16","dims":[4],"zero_data":true}}}]}"#,
        )
        .unwrap();
        let message = model_config(&config).unwrap();
        assert_eq!(message.name, "m");
        assert_eq!(message.backend, "tract");
        assert_eq!(message.max_batch_size, 8);
        assert_eq!(message.input[0].data_type(), inference::DataType::TypeFp16);
        assert_eq!(message.input[0].dims, vec![-1, 4]);
        assert_eq!(
            message.output[0].data_type(),
            inference::DataType::TypeString
        );
        assert_eq!(message.output[0].label_filename, "l.txt");
        let Some(SchedulingChoice::DynamicBatching(db)) = &message.scheduling_choice else {
            panic!("dynamic_batching is missing: {message:?}");
        };
        assert_eq!(db.preferred_batch_size, vec![2, 4]);
        assert_eq!(db.default_queue_policy.as_ref().unwrap().max_queue_size, 7);
        assert_eq!(message.instance_group[0].count, 2);
        assert_eq!(
            message.instance_group[0].kind(),
            inference::model_instance_group::Kind::Cpu
        );
        assert_eq!(message.parameters["k"].string_value, "v");
        let accelerators = message
            .optimization
            .unwrap()
            .execution_accelerators
            .unwrap();
        assert_eq!(accelerators.cpu_execution_accelerator[0].name, "openvino");
        assert_eq!(message.model_warmup[0].inputs["x"].dims, vec![4]);
    }

    #[test]
    fn a_field_without_protobuf_form_is_left_out() {
        let mut config = sluice_core::ModelConfig {
            name: "m".into(),
            max_batch_size: 4,
            version_policy: VersionPolicy::All {},
            input: vec![TensorConfig::new("x", DataType::F32, vec![3])],
            output: vec![TensorConfig::new("y", DataType::F32, vec![1])],
            dynamic_batching: Some(DynamicBatching::default()),
            ..Default::default()
        };
        config.optimization = Some(serde_json::json!({"no_such_field": 1}));
        let message = model_config(&config).unwrap();
        assert!(message.optimization.is_none());
        assert_eq!(message.input[0].name, "x");
        assert!(message.scheduling_choice.is_some());
    }
}

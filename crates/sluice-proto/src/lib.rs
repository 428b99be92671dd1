//! The KServe v2 / Open Inference Protocol over gRPC, with Triton's extensions:
//! package `inference`, service `GRPCInferenceService`, and the model configuration
//! messages of `model_config.proto`.
//!
//! Key decision: the `.proto` files in `proto/` are our own, written from the
//! published specifications, with the specification's package, service, message and
//! field names and numbers so existing clients work unchanged. They are compiled at
//! build time with the `protoc` that ships inside the `protoc-bin-vendored` crate:
//! nothing needs installing. `bytes` fields are [`bytes::Bytes`], so a tensor payload
//! in `raw_input_contents` is a slice of the received message, not a copy. The model
//! configuration messages also implement serde's traits with protobuf's JSON mapping
//! (field names as in the `.proto`), which is how the server turns a configuration
//! held as JSON into a [`inference::ModelConfig`].

/// Messages, the `GRPCInferenceService` server trait (`grpc_inference_service_server`)
/// and client (`grpc_inference_service_client`).
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
pub mod inference {
    tonic::include_proto!("inference");
    include!(concat!(env!("OUT_DIR"), "/inference.serde.rs"));
}

/// The full gRPC name of the inference service, as health checks name it.
pub const INFERENCE_SERVICE_NAME: &str = inference::grpc_inference_service_server::SERVICE_NAME;

#[cfg(test)]
mod tests {
    use super::inference::{self, model_version_policy, ModelConfig};
    use prost::Message;

    #[test]
    fn service_name_is_the_specifications() {
        assert_eq!(
            super::INFERENCE_SERVICE_NAME,
            "inference.GRPCInferenceService"
        );
    }

    #[test]
    fn model_config_reads_its_json_mapping() {
        let json = serde_json::json!({
            "name": "m",
            "max_batch_size": 8,
            "version_policy": {"latest": {"num_versions": 2}},
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3], "format": "FORMAT_NCHW"}],
            "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": [1]}],
            "dynamic_batching": {"preferred_batch_size": [4], "priority_queue_policy": {"1": {"max_queue_size": 3}}},
            "instance_group": [{"kind": "KIND_CPU", "count": 2}],
            "parameters": {"k": {"string_value": "v"}}
        });
        let config: ModelConfig = serde_json::from_value(json).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input[0].data_type(), inference::DataType::TypeFp32);
        assert_eq!(
            config.input[0].format(),
            inference::model_input::Format::Nchw
        );
        assert_eq!(
            config.output[0].data_type(),
            inference::DataType::TypeString
        );
        assert_eq!(
            config.version_policy.unwrap().policy_choice,
            Some(model_version_policy::PolicyChoice::Latest(
                model_version_policy::Latest { num_versions: 2 }
            ))
        );
        let Some(inference::model_config::SchedulingChoice::DynamicBatching(db)) =
            config.scheduling_choice
        else {
            panic!("dynamic_batching is lost");
        };
        assert_eq!(db.priority_queue_policy[&1].max_queue_size, 3);
        assert_eq!(config.instance_group[0].count, 2);
        assert_eq!(config.parameters["k"].string_value, "v");
    }

    #[test]
    fn raw_contents_decode_as_slices_of_the_message() {
        let request = inference::ModelInferRequest {
            model_name: "m".into(),
            raw_input_contents: vec![bytes::Bytes::from_static(&[1, 2, 3, 4])],
            ..Default::default()
        };
        let wire = bytes::Bytes::from(request.encode_to_vec());
        let decoded = inference::ModelInferRequest::decode(wire.clone()).unwrap();
        let raw = &decoded.raw_input_contents[0];
        assert_eq!(&raw[..], &[1, 2, 3, 4]);
        let start = wire.as_ptr() as usize;
        let at = raw.as_ptr() as usize;
        assert!(
            at >= start && at < start + wire.len(),
            "raw_input_contents was copied out of the message buffer"
        );
    }
}

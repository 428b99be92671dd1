//! The gRPC server on a real socket (port 0) over the example models, driven by the
//! generated tonic client.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use sluice_backend_tract::TractBackend;
use sluice_core::{InferRequest, Tensor};
use sluice_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_proto::inference::model_infer_request::InferInputTensor;
use sluice_proto::inference::{
    ModelConfigRequest, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
    ModelStatisticsRequest, RepositoryIndexRequest, ServerLiveRequest, ServerMetadataRequest,
    ServerReadyRequest,
};
use sluice_runtime::{Backends, Runtime};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::*;

fn runtime() -> Runtime {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models");
    let config = sluice_test_support::runtime_config(repository)
        .queue_capacity(64)
        .build();
    Runtime::start(config, Backends::new().with(Arc::new(TractBackend::new()))).unwrap()
}

fn shared_runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(runtime).clone()
}

/// A server on a free port; dropping `stop` shuts it down.
struct TestServer {
    channel: Channel,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(runtime: Runtime, config: GrpcConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve_grpc(listener, grpc_service(runtime, config), async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestServer {
            channel,
            stop,
            served,
        }
    }

    fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Bytes {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn mlp_request(id: &str, rows: usize) -> ModelInferRequest {
    let values = (0..rows * 784).map(|i| (i % 17) as f32 / 17.0);
    ModelInferRequest {
        model_name: "mlp".into(),
        id: id.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![i64::try_from(rows).unwrap(), 784],
            ..Default::default()
        }],
        raw_input_contents: vec![f32_bytes(values)],
        ..Default::default()
    }
}

#[tokio::test]
async fn health_metadata_config_and_index() {
    let server = TestServer::start(shared_runtime(), GrpcConfig::default()).await;
    let mut client = server.client();
    assert!(
        client
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        client
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "sluice");
    assert!(meta.extensions.contains(&"model_configuration".to_owned()));

    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        client
            .model_ready(ready("mlp", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !client
            .model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let err = client.model_ready(ready("mlp", "x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1"]);
    assert_eq!(
        (
            meta.inputs[0].name.as_str(),
            meta.inputs[0].datatype.as_str()
        ),
        ("input", "FP32")
    );
    assert_eq!(meta.inputs[0].shape, vec![-1, 64]);
    assert_eq!(meta.outputs.len(), 2);

    let config = client
        .model_config(ModelConfigRequest {
            name: "mlp".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 32);
    assert_eq!(config.instance_group[0].count, 2);
    assert_eq!(config.parameters["intra_op_thread_count"].string_value, "1");
    let err = client
        .model_config(ModelConfigRequest {
            name: "mlp".into(),
            version: "9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let index = client
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["cnn", "digits", "mixed", "mlp"]);
    assert!(index.models.iter().all(|m| m.state == "READY"));

    let stats = client
        .model_statistics(ModelStatisticsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = stats.model_stats.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["cnn", "digits", "mixed", "mlp"]);
    for (request, code) in [
        (("nope", ""), Code::NotFound),
        (("mlp", "7"), Code::NotFound),
        (("mlp", "x"), Code::InvalidArgument),
        (("", "1"), Code::InvalidArgument),
    ] {
        let err = client
            .model_statistics(ModelStatisticsRequest {
                name: request.0.into(),
                version: request.1.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
    }
}

#[tokio::test]
async fn infer_matches_the_runtime_and_errors_have_codes() {
    let runtime = shared_runtime();
    let server = TestServer::start(runtime.clone(), GrpcConfig::default()).await;
    let mut client = server.client();
    let request = mlp_request("r1", 3);
    let direct = runtime
        .infer(
            "mlp",
            None,
            InferRequest {
                id: None,
                inputs: vec![Tensor::new(
                    "input",
                    sluice_core::DataType::F32,
                    vec![3, 784],
                    request.raw_input_contents[0].clone(),
                )
                .unwrap()],
                outputs: vec![],
                ..InferRequest::default()
            },
        )
        .await
        .unwrap();
    let response = client.model_infer(request).await.unwrap().into_inner();
    assert_eq!(response.id, "r1");
    assert_eq!(response.model_version, "1");
    assert_eq!(response.outputs[0].name, "probabilities");
    assert_eq!(response.outputs[0].shape, vec![3, 10]);
    assert_eq!(response.raw_output_contents[0], direct.outputs[0].data);

    let mut unknown = mlp_request("r2", 1);
    unknown.model_name = "nope".into();
    let err = client.model_infer(unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut short = mlp_request("r3", 1);
    short.raw_input_contents[0] = short.raw_input_contents[0].slice(4..);
    let err = client.model_infer(short).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("needs 3136 bytes"), "{err:?}");

    let mut wrong_type = mlp_request("r4", 1);
    wrong_type.inputs[0].datatype = "FP64".into();
    wrong_type.inputs[0].shape = vec![1, 392];
    let err = client.model_infer(wrong_type).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("but model 'mlp' expects 'FP32'"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stream_answers_every_request() {
    let server = TestServer::start(shared_runtime(), GrpcConfig::default()).await;
    let mut client = server.client();
    let mut requests: Vec<ModelInferRequest> = (0..8)
        .map(|i| mlp_request(&format!("s{i}"), 1 + i % 3))
        .collect();
    requests[5].model_name = "nope".into();
    let mut answers = client
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        let response = answer.infer_response.clone().unwrap();
        if response.id == "s5" {
            assert!(
                answer
                    .error_message
                    .contains("Request for unknown model: 'nope' is not found"),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.error_message, "");
            let rows = 1 + response.id[1..].parse::<i64>().unwrap() % 3;
            assert_eq!(response.outputs[0].shape, vec![rows, 10]);
        }
        seen.push(response.id);
    }
    seen.sort();
    assert_eq!(seen, (0..8).map(|i| format!("s{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let server = TestServer::start(shared_runtime(), GrpcConfig::default()).await;
    let mut client = server.client();
    let (requests, inbound) = tokio::sync::mpsc::channel(4);
    let mut answers = client
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(inbound))
        .await
        .unwrap()
        .into_inner();
    requests.send(mlp_request("s", 1)).await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.infer_response.unwrap().id, "s");
    // The client keeps its side open; shutdown still ends the stream and the server.
    let _ = server.stop.send(());
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    tokio::time::timeout(Duration::from_secs(10), server.served)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    drop(requests);
}

#[tokio::test]
async fn messages_past_the_limit_are_resource_exhausted() {
    let config = GrpcConfig {
        max_message_bytes: 8 * 1024,
        ..GrpcConfig::default()
    };
    let server = TestServer::start(shared_runtime(), config).await;
    let mut client = server.client();
    // 2 rows of 784 FP32 values: 6 KiB in, well under the limit.
    client.model_infer(mlp_request("ok", 2)).await.unwrap();
    let err = client.model_infer(mlp_request("big", 4)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("over the limit of 8192 bytes (--grpc-max-message-bytes)"),
        "{err:?}"
    );
    // On a stream, the stream ends with the same status.
    let mut answers = client
        .model_stream_infer(tokio_stream::iter(vec![mlp_request("big", 4)]))
        .await
        .unwrap()
        .into_inner();
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // And the server still serves.
    client.model_infer(mlp_request("after", 1)).await.unwrap();
}

#[tokio::test]
async fn responses_past_the_limit_are_refused() {
    // Request sizes are checked by the decoder, response sizes by the service:
    // called directly, a 60-byte limit lets the request in and refuses the answer.
    let service = Inference {
        runtime: shared_runtime(),
        max_message_bytes: 60,
        shutdown: tokio::sync::watch::channel(false).1,
        log_control: None,
    };
    let err = service
        .infer_encoded(mlp_request("r", 1), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.message().contains("the response message is"), "{err}");
}

#[tokio::test]
async fn health_follows_readiness() {
    let runtime = runtime();
    let server = TestServer::start(runtime.clone(), GrpcConfig::default()).await;
    let mut health = HealthClient::new(server.channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for name in ["", INFERENCE_SERVICE_NAME] {
        let status = health.check(check(name)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{name}");
    }
    runtime.begin_shutdown();
    let mut status = 0;
    for _ in 0..40 {
        status = health
            .check(check(INFERENCE_SERVICE_NAME))
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::NotServing as i32);
    runtime.shutdown();
}

#[test]
fn error_kinds_map_to_grpc_codes() {
    let cases = [
        (ErrorKind::InvalidArgument, Code::InvalidArgument),
        (ErrorKind::Unsupported, Code::InvalidArgument),
        (ErrorKind::NotFound, Code::NotFound),
        (ErrorKind::Unavailable, Code::Unavailable),
        (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
        (ErrorKind::PayloadTooLarge, Code::ResourceExhausted),
        (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded),
        (ErrorKind::Cancelled, Code::Cancelled),
        (ErrorKind::Internal, Code::Internal),
    ];
    for (kind, code) in cases {
        assert_eq!(crate::grpc_code_of(kind), code, "{kind}");
        let status = grpc_status(&Error::new(kind, "why"));
        assert_eq!((status.code(), status.message()), (code, "why"));
    }
    let other = transport_status(Status::out_of_range("index 3"), 10);
    assert_eq!(other.code(), Code::OutOfRange);
    let sized = transport_status(
        Status::out_of_range(
            "Error, decoded message length too large: found 20 bytes, the limit is: 10 bytes",
        ),
        10,
    );
    assert_eq!(sized.code(), Code::ResourceExhausted);
    assert_eq!(
        sized.message(),
        "the request message is 20 bytes, over the limit of 10 bytes (--grpc-max-message-bytes)"
    );
}

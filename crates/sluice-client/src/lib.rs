//! `sluice-client`: a small typed client for any KServe v2 / Open Inference Protocol
//! server (Sluice, Triton, MLServer, ...), over HTTP with JSON tensors, HTTP with
//! Triton's binary-tensor extension, or gRPC (`inference.GRPCInferenceService`, with
//! the client `sluice-proto` generates).
//!
//! Key decision: a request is encoded once ([`Client::prepare`]) into the exact bytes
//! or message that goes on the wire, and sent many times ([`Client::infer`]) without
//! re-encoding, so a load generator built on it measures the server, not the encoder.
//! Answers are checked for success (HTTP 200 / gRPC OK) and counted, not decoded.

mod http;
mod npy;

use std::time::Duration;

use bytes::Bytes;
use sluice_core::DataType;
use sluice_proto::inference;

pub use npy::{read_npy, NpyError};

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// HTTP/1.1, tensors as JSON `data`.
    HttpJson,
    /// HTTP/1.1, Triton's binary tensor extension both ways.
    HttpBinary,
    /// gRPC `ModelInfer` with `raw_input_contents`.
    Grpc,
}

impl Protocol {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::HttpJson => "http-json",
            Protocol::HttpBinary => "http-binary",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Everything that can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a usable URL or `host:port`.
    #[error("invalid server address {0:?}")]
    Address(String),
    /// Connecting or sending failed (no answer).
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Server { status: String, message: String },
    /// The answer could not be understood.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The tensor cannot be encoded for this protocol.
    #[error("cannot encode input {name}: {reason}")]
    Encode { name: String, reason: String },
}

impl Error {
    /// A short stable label for counting errors by kind in reports.
    pub fn kind(&self) -> String {
        match self {
            Error::Address(_) => "address".into(),
            Error::Transport(_) => "transport".into(),
            Error::Server { status, .. } => format!("status {status}"),
            Error::Decode(_) => "decode".into(),
            Error::Timeout(_) => "timeout".into(),
            Error::Encode { .. } => "encode".into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One tensor's name, type and shape (`-1`: variable) in a model's metadata.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET v2/models/{m}` / `ModelMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    #[serde(default)]
    pub outputs: Vec<TensorMetadata>,
}

/// An input tensor: little-endian elements without padding.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

impl InputTensor {
    /// Checks that the data holds exactly the elements the shape asks for.
    pub fn new(name: &str, datatype: DataType, shape: Vec<i64>, data: Bytes) -> Result<Self> {
        let fail = |reason: String| Error::Encode {
            name: name.to_owned(),
            reason,
        };
        let size = datatype
            .size()
            .ok_or_else(|| fail(format!("{} tensors are not supported", datatype.v2_name())))?;
        if shape.iter().any(|&d| d < 0) {
            return Err(fail(format!("shape {shape:?} has a negative dimension")));
        }
        let elements: i64 = shape.iter().product();
        if data.len() != elements as usize * size {
            return Err(fail(format!(
                "{} bytes do not hold {elements} {} elements",
                data.len(),
                datatype.v2_name()
            )));
        }
        Ok(InputTensor {
            name: name.to_owned(),
            datatype,
            shape,
            data,
        })
    }
}

/// Where and how to talk.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port`, `host:port` (HTTP), or for gRPC `host:port` / `http://host:port`.
    pub url: String,
    pub protocol: Protocol,
    /// Longest wait for one answer.
    pub timeout: Duration,
}

/// Request-level parameters of an infer request (v2 `parameters`); the default sends none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestParameters {
    /// `timeout` (microseconds on the wire, Triton's meaning): the longest the server
    /// may keep the request queued before answering with a timeout error.
    pub timeout: Option<Duration>,
}

impl RequestParameters {
    fn timeout_us(&self) -> Option<i64> {
        self.timeout
            .map(|t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A request encoded once for the wire, ready to be sent many times.
#[derive(Debug, Clone)]
pub enum PreparedRequest {
    Http(http::HttpRequest),
    Grpc(inference::ModelInferRequest),
}

/// A connected client. Cloning is cheap; clones share the connection pool (HTTP) or
/// the HTTP/2 connection (gRPC); [`Client::connect`] again for a separate connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Inner,
    timeout: Duration,
}

#[derive(Debug, Clone)]
enum Inner {
    Http(http::HttpClient),
    Grpc(GrpcClient),
}

type GrpcClient =
    inference::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

impl Client {
    /// Connects (gRPC) or sets up a connection pool (HTTP).
    pub async fn connect(config: &ClientConfig) -> Result<Client> {
        let base = base_url(&config.url);
        let inner = match config.protocol {
            Protocol::HttpJson | Protocol::HttpBinary => {
                Inner::Http(http::HttpClient::new(&base, config.protocol)?)
            }
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(base.clone())
                    .map_err(|_| Error::Address(config.url.clone()))?
                    .tcp_nodelay(true)
                    .connect_timeout(config.timeout);
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|e| Error::Transport(format!("{base}: {e}")))?;
                Inner::Grpc(
                    GrpcClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX),
                )
            }
        };
        Ok(Client {
            inner,
            timeout: config.timeout,
        })
    }

    /// Any JSON endpoint of an HTTP server: `GET {path}`, or `POST {path}` with `body`
    /// (e.g. Triton's `v2/models/{m}/config` and `v2/repository/index`). HTTP only: a
    /// gRPC client answers [`Error::Address`].
    pub async fn json(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        match &self.inner {
            Inner::Http(c) => c.json(path, body).await,
            Inner::Grpc(_) => Err(Error::Address(format!(
                "{path} is asked over HTTP; this client speaks gRPC"
            ))),
        }
    }

    /// The model's inputs and outputs (`GET v2/models/{m}[/versions/{v}]` or `ModelMetadata`).
    pub async fn model_metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata> {
        match &self.inner {
            Inner::Http(c) => c.model_metadata(model, version).await,
            Inner::Grpc(c) => {
                let request = inference::ModelMetadataRequest {
                    name: model.to_owned(),
                    version: version.unwrap_or_default().to_owned(),
                };
                let m = c
                    .clone()
                    .model_metadata(request)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let tensors = |ts: Vec<inference::model_metadata_response::TensorMetadata>| {
                    ts.into_iter()
                        .map(|t| TensorMetadata {
                            name: t.name,
                            datatype: t.datatype,
                            shape: t.shape,
                        })
                        .collect()
                };
                Ok(ModelMetadata {
                    name: m.name,
                    versions: m.versions,
                    platform: m.platform,
                    inputs: tensors(m.inputs),
                    outputs: tensors(m.outputs),
                })
            }
        }
    }

    /// Encodes an infer request once.
    pub fn prepare(
        &self,
        model: &str,
        version: Option<&str>,
        inputs: &[InputTensor],
    ) -> Result<PreparedRequest> {
        self.prepare_with(model, version, inputs, RequestParameters::default())
    }

    /// Encodes an infer request with request-level `parameters` once.
    pub fn prepare_with(
        &self,
        model: &str,
        version: Option<&str>,
        inputs: &[InputTensor],
        parameters: RequestParameters,
    ) -> Result<PreparedRequest> {
        match &self.inner {
            Inner::Http(c) => Ok(PreparedRequest::Http(
                c.prepare(model, version, inputs, parameters)?,
            )),
            Inner::Grpc(_) => Ok(PreparedRequest::Grpc(inference::ModelInferRequest {
                model_name: model.to_owned(),
                model_version: version.unwrap_or_default().to_owned(),
                inputs: inputs
                    .iter()
                    .map(|t| inference::model_infer_request::InferInputTensor {
                        name: t.name.clone(),
                        datatype: t.datatype.v2_name().to_owned(),
                        shape: t.shape.clone(),
                        ..Default::default()
                    })
                    .collect(),
                raw_input_contents: inputs.iter().map(|t| t.data.clone()).collect(),
                parameters: parameters
                    .timeout_us()
                    .map(|us| {
                        let choice = inference::infer_parameter::ParameterChoice::Int64Param(us);
                        let value = inference::InferParameter {
                            parameter_choice: Some(choice),
                        };
                        ("timeout".to_owned(), value)
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            })),
        }
    }

    /// Sends a prepared request; `Ok` with the answer's size in bytes when the server
    /// answered with success.
    pub async fn infer(&self, request: &PreparedRequest) -> Result<usize> {
        let call = async {
            match (&self.inner, request) {
                (Inner::Http(c), PreparedRequest::Http(r)) => c.infer(r).await,
                (Inner::Grpc(c), PreparedRequest::Grpc(r)) => {
                    let response = c
                        .clone()
                        .model_infer(r.clone())
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if response.outputs.is_empty() {
                        return Err(Error::Decode("an answer without outputs".into()));
                    }
                    Ok(response.raw_output_contents.iter().map(Bytes::len).sum())
                }
                _ => Err(Error::Encode {
                    name: "request".into(),
                    reason: "prepared for another protocol".into(),
                }),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }
}

fn status_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unavailable if status.message().contains("transport") => {
            Error::Transport(status.message().to_owned())
        }
        code => Error::Server {
            status: format!("{code:?}"),
            message: status.message().to_owned(),
        },
    }
}

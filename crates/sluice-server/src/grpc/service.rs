//! The `inference.GRPCInferenceService` RPCs over the runtime.

use prost::Message;
use sluice_core::{ErrorKind, InferResponse, Result, TensorSpec};
use sluice_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use sluice_proto::inference::model_metadata_response::TensorMetadata;
use sluice_proto::inference::repository_index_response::ModelIndex;
use sluice_proto::inference::{
    LogSettingsRequest, LogSettingsResponse, ModelConfigRequest, ModelConfigResponse,
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ModelRepositoryParameter, ModelStatisticsRequest,
    ModelStatisticsResponse, ModelStreamInferResponse, RepositoryIndexRequest,
    RepositoryIndexResponse, RepositoryModelLoadRequest, RepositoryModelLoadResponse,
    RepositoryModelUnloadRequest, RepositoryModelUnloadResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use sluice_runtime::Runtime;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, parse_version};
use super::{config, stream, too_large};
use crate::error::grpc_status;

/// The inference service: the runtime, the message size limit, and whether the
/// server is shutting down (which ends open streams).
#[derive(Clone)]
pub(crate) struct Inference {
    pub runtime: Runtime,
    pub max_message_bytes: usize,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub log_control: Option<crate::LogHandle>,
}

type RpcResult<T> = std::result::Result<Response<T>, Status>;

fn reply<T>(result: Result<T>) -> RpcResult<T> {
    result.map(Response::new).map_err(|e| grpc_status(&e))
}

impl Inference {
    /// Runs one `ModelInferRequest`: names checked first, so an unknown model is
    /// `NOT_FOUND` whatever its inputs, then decoded and queued. `deadline` is the
    /// call's gRPC deadline, which bounds the request's time in the queue like
    /// `parameters.timeout` (the shorter wins).
    pub(crate) async fn infer(
        &self,
        mut request: ModelInferRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<InferResponse> {
        let version = parse_version(&request.model_version)?;
        let model = std::mem::take(&mut request.model_name);
        self.runtime.check_servable(&model, version)?;
        let started = std::time::Instant::now();
        let mut request = convert::infer_request(request).inspect_err(|_| {
            self.runtime
                .record_invalid(&model, version, started.elapsed());
        })?;
        if let Some(deadline) = deadline {
            request.timeout = Some(request.timeout.map_or(deadline, |t| t.min(deadline)));
        }
        self.runtime.infer(&model, version, request).await
    }

    /// Runs a request and encodes its answer, refusing answers past the size limit.
    pub(crate) async fn infer_encoded(
        &self,
        request: ModelInferRequest,
        deadline: Option<std::time::Duration>,
    ) -> Result<ModelInferResponse> {
        let response = convert::infer_response(self.infer(request, deadline).await?);
        let len = response.encoded_len();
        if len > self.max_message_bytes {
            return Err(too_large("response", len, self.max_message_bytes));
        }
        Ok(response)
    }
}

fn tensor_metadata(
    signature: &sluice_core::ModelSignature,
    specs: &[TensorSpec],
) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|t| TensorMetadata {
            name: t.name.clone(),
            datatype: t.datatype.v2_name().to_owned(),
            shape: signature.full_dims(t),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> RpcResult<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse {
            live: self.runtime.live(),
        }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> RpcResult<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.runtime.ready(),
        }))
    }

    /// An unknown model is not ready (as Triton answers), rather than an error.
    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> RpcResult<ModelReadyResponse> {
        let request = request.into_inner();
        reply(parse_version(&request.version).and_then(|version| {
            let ready = match self.runtime.model_ready(&request.name, version) {
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                other => other?,
            };
            Ok(ModelReadyResponse { ready })
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> RpcResult<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "sluice".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: crate::health::EXTENSIONS
                .iter()
                .map(|&e| e.to_owned())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> RpcResult<ModelMetadataResponse> {
        let request = request.into_inner();
        reply(parse_version(&request.version).and_then(|version| {
            let meta = self.runtime.model_metadata(&request.name, version)?;
            let sig = &meta.signature;
            Ok(ModelMetadataResponse {
                inputs: tensor_metadata(sig, &sig.inputs),
                outputs: tensor_metadata(sig, &sig.outputs),
                name: meta.name,
                versions: meta.versions.iter().map(u64::to_string).collect(),
                platform: meta.platform,
            })
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> RpcResult<ModelInferResponse> {
        let deadline = convert::grpc_timeout(request.metadata());
        reply(self.infer_encoded(request.into_inner(), deadline).await)
    }

    type ModelStreamInferStream =
        ReceiverStream<std::result::Result<ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> RpcResult<Self::ModelStreamInferStream> {
        Ok(Response::new(stream::start(
            self.clone(),
            request.into_inner(),
        )))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> RpcResult<ModelConfigResponse> {
        let request = request.into_inner();
        reply(parse_version(&request.version).and_then(|version| {
            let config = self.runtime.model_config(&request.name, version)?;
            Ok(ModelConfigResponse {
                config: Some(config::model_config(&config)?),
            })
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> RpcResult<ModelStatisticsResponse> {
        let request = request.into_inner();
        let model = (!request.name.is_empty()).then_some(request.name.as_str());
        let version = match convert::parse_version(&request.version) {
            Ok(v) => v,
            Err(e) => return reply(Err(e)),
        };
        if model.is_none() && version.is_some() {
            return reply(Err(sluice_core::Error::invalid(
                "a version needs a model name",
            )));
        }
        reply(
            crate::stats::model_statistics(&self.runtime, model, version)
                .map(|model_stats| ModelStatisticsResponse { model_stats }),
        )
    }

    async fn log_settings(
        &self,
        request: Request<LogSettingsRequest>,
    ) -> RpcResult<LogSettingsResponse> {
        use sluice_proto::inference::log_settings_request::setting_value::ParameterChoice as In;
        use sluice_proto::inference::log_settings_response::setting_value::ParameterChoice as Out;
        use sluice_proto::inference::log_settings_response::SettingValue;

        use crate::logging::{current, update, Setting};
        let Some(control) = &self.log_control else {
            return reply(Err(sluice_core::Error::unavailable(
                "log settings are not available in this server",
            )));
        };
        let control = control.0.as_ref();
        let mut updates = Vec::new();
        for (key, value) in request.into_inner().settings {
            let setting = match value.parameter_choice {
                Some(In::BoolParam(b)) => Setting::Bool(b),
                Some(In::Uint32Param(n)) => Setting::U32(n),
                Some(In::StringParam(s)) => Setting::Str(s),
                None => {
                    return reply(Err(sluice_core::Error::invalid(format!(
                        "log setting '{key}' has no value"
                    ))))
                }
            };
            updates.push((key, setting));
        }
        if let Err(e) = update(control, updates) {
            return reply(Err(e));
        }
        let settings = current(control)
            .into_iter()
            .map(|(k, v)| {
                let choice = match v {
                    Setting::Bool(b) => Out::BoolParam(b),
                    Setting::U32(n) => Out::Uint32Param(n),
                    Setting::Str(s) => Out::StringParam(s),
                };
                (
                    k.to_owned(),
                    SettingValue {
                        parameter_choice: Some(choice),
                    },
                )
            })
            .collect();
        reply(Ok(LogSettingsResponse { settings }))
    }

    async fn repository_index(
        &self,
        request: Request<RepositoryIndexRequest>,
    ) -> RpcResult<RepositoryIndexResponse> {
        let request = request.into_inner();
        check_repository_name(&request.repository_name)?;
        let models = crate::repository::index_rows(&self.runtime, request.ready)
            .into_iter()
            .map(|e| ModelIndex {
                name: e.name,
                version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                state: e.state.as_str().to_owned(),
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> RpcResult<RepositoryModelLoadResponse> {
        let request = request.into_inner();
        check_repository_name(&request.repository_name)?;
        let result = async {
            let options = crate::repository::load_options(params(request.parameters))?;
            crate::repository::run_load(self.runtime.clone(), request.model_name, options).await
        }
        .await;
        reply(result.map(|()| RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> RpcResult<RepositoryModelUnloadResponse> {
        let request = request.into_inner();
        check_repository_name(&request.repository_name)?;
        let result = async {
            let dependents = crate::repository::check_unload_params(params(request.parameters))?;
            crate::repository::run_unload(self.runtime.clone(), request.model_name, dependents)
                .await
        }
        .await;
        reply(result.map(|()| RepositoryModelUnloadResponse {}))
    }
}

/// Sluice serves one repository: a named one is refused.
fn check_repository_name(name: &str) -> std::result::Result<(), Status> {
    if name.is_empty() {
        return Ok(());
    }
    Err(grpc_status(&sluice_core::Error::unsupported(format!(
        "repository '{name}': named repositories are not supported; leave repository_name empty"
    ))))
}

/// Repository parameters in the protocol-neutral form.
fn params(
    map: std::collections::HashMap<String, ModelRepositoryParameter>,
) -> Vec<(String, crate::repository::Param)> {
    use crate::repository::Param;
    use sluice_proto::inference::model_repository_parameter::ParameterChoice;
    map.into_iter()
        .map(|(k, v)| {
            let p = match v.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => Param::Bool(b),
                Some(ParameterChoice::Int64Param(_)) => Param::Int,
                Some(ParameterChoice::StringParam(s)) => Param::Str(s),
                Some(ParameterChoice::BytesParam(b)) => Param::Bytes(b.to_vec()),
                None => Param::Str(String::new()),
            };
            (k, p)
        })
        .collect()
}

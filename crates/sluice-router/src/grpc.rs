//! The router's gRPC front end: `inference.GRPCInferenceService` from `sluice-proto`,
//! each call forwarded to a replica's gRPC port over one HTTP/2 channel per replica.
//!
//! Key decision: a replica's `Status` is an answer and goes back unchanged; only a
//! transport failure (a `Status` tonic made from a connection error, which carries its
//! source) is retried elsewhere. A hedge's loser is cancelled by dropping its call,
//! which resets its HTTP/2 stream. The deadline goes on as `grpc-timeout` with the
//! time left (and a `timeout` parameter, when the request had one, is rewritten too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use sluice_proto::inference::infer_parameter::ParameterChoice;
use sluice_proto::inference::*;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::forward::{self, Kind, RouteError};
use crate::view::{ReplicaAddr, Target};
use crate::Shared;

pub type Client = GrpcInferenceServiceClient<Channel>;
type RpcResult<T> = Result<Response<T>, Status>;

impl Shared {
    /// The channel to `addr`'s gRPC port (connected on first use, then shared).
    fn grpc_client(&self, addr: &ReplicaAddr) -> Result<Client, String> {
        self.grpc_client_by_id(&addr.id(), addr)
    }

    fn grpc_client_by_id(&self, id: &str, addr: &ReplicaAddr) -> Result<Client, String> {
        let mut clients = self.grpc_clients.lock().expect("grpc clients lock");
        if let Some(c) = clients.get(id) {
            return Ok(c.clone());
        }
        let endpoint =
            Endpoint::from_shared(format!("{}://{}", self.scheme, addr.grpc_authority()))
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2));
        let channel = match &self.config.replica_tls {
            Some(tls) => endpoint.connect_with_connector_lazy(crate::connector(Some(tls), true)),
            None => endpoint.connect_lazy(),
        };
        let client = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.config.grpc_max_message_bytes)
            .max_encoding_message_size(self.config.grpc_max_message_bytes);
        clients.insert(id.to_string(), client.clone());
        Ok(client)
    }
}

fn to_status(e: &RouteError) -> Status {
    match e {
        RouteError::NoReplica(_) | RouteError::LoadFailed { .. } => {
            Status::unavailable(e.to_string())
        }
        RouteError::Failed(_) => Status::unavailable(e.to_string()),
        RouteError::Deadline => Status::deadline_exceeded(e.to_string()),
    }
}

/// A `Status` made from a connection problem (not one the replica sent).
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The outcome of one call on a replica: its answer (reply or `Status`), or a
/// transport failure.
async fn call<T>(
    fut: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Result<T, Status>, String> {
    match fut.await {
        Ok(r) => Ok(Ok(r.into_inner())),
        Err(s) if is_transport(&s) => Err(s.to_string()),
        Err(s) => Ok(Err(s)),
    }
}

/// The call's deadline: `grpc-timeout`, or the `timeout` parameter (µs) if shorter.
fn deadline_of(
    metadata: &tonic::metadata::MetadataMap,
    request: &ModelInferRequest,
) -> Option<Instant> {
    let now = Instant::now();
    let header = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let param = request
        .parameters
        .get("timeout")
        .and_then(|p| match p.parameter_choice {
            Some(ParameterChoice::Int64Param(t)) => u64::try_from(t).ok(),
            Some(ParameterChoice::Uint64Param(t)) => Some(t),
            _ => None,
        })
        .map(Duration::from_micros);
    match (header, param) {
        (Some(a), Some(b)) => Some(now + a.min(b)),
        (a, b) => a.or(b).map(|d| now + d),
    }
}

fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[derive(Clone)]
pub struct Front {
    shared: Arc<Shared>,
}

impl Front {
    async fn infer(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        self.shared.metrics.requests.inc();
        let model = request.model_name.clone();
        let request = Arc::new(request);
        let shared = self.shared.clone();
        let send = move |target: Arc<Target>, left: Option<Duration>| {
            let shared = shared.clone();
            let request = request.clone();
            async move {
                let mut client = shared.grpc_client_by_id(&target.id, &target.addr)?;
                let mut message = (*request).clone();
                if let Some(left) = left {
                    if let Some(p) = message.parameters.get_mut("timeout") {
                        let micros = i64::try_from(left.as_micros()).unwrap_or(i64::MAX).max(1);
                        p.parameter_choice = Some(ParameterChoice::Int64Param(micros));
                    }
                }
                let mut req = Request::new(message);
                if let Some(left) = left {
                    req.set_timeout(left);
                }
                call(client.model_infer(req)).await
            }
        };
        match forward::route(&self.shared, &model, deadline, Kind::Infer, send).await {
            Ok(answer) => answer,
            Err(e) => {
                self.shared.metrics.errors.inc();
                Err(to_status(&e))
            }
        }
    }

    /// A call about one model (or none: `""`), to a holder or any replica, not hedged.
    async fn other<T, F, Fut>(&self, model: &str, f: F) -> RpcResult<T>
    where
        F: Fn(Client) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let shared = self.shared.clone();
        let send = move |target: Arc<Target>, _left: Option<Duration>| {
            let shared = shared.clone();
            let f = f.clone();
            async move {
                let client = shared.grpc_client_by_id(&target.id, &target.addr)?;
                call(f(client)).await
            }
        };
        match forward::route(&self.shared, model, None, Kind::Other, send).await {
            Ok(answer) => answer.map(Response::new),
            Err(e) => Err(to_status(&e)),
        }
    }

    fn usable(&self) -> Vec<ReplicaAddr> {
        let view = self.shared.view.lock().expect("view lock");
        let now = Instant::now();
        view.replicas
            .values()
            .filter(|r| r.usable(now))
            .map(|r| r.addr.clone())
            .collect()
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Front {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> RpcResult<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> RpcResult<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.shared.up_count() > 0,
        }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> RpcResult<ModelReadyResponse> {
        let m = r.into_inner();
        let name = m.name.clone();
        self.other(&name, move |mut c| {
            let m = m.clone();
            async move { c.model_ready(m).await }
        })
        .await
    }

    async fn server_metadata(
        &self,
        r: Request<ServerMetadataRequest>,
    ) -> RpcResult<ServerMetadataResponse> {
        let m = r.into_inner();
        self.other("", move |mut c| async move { c.server_metadata(m).await })
            .await
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> RpcResult<ModelMetadataResponse> {
        let m = r.into_inner();
        let name = m.name.clone();
        self.other(&name, move |mut c| {
            let m = m.clone();
            async move { c.model_metadata(m).await }
        })
        .await
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> RpcResult<ModelInferResponse> {
        let deadline = deadline_of(r.metadata(), r.get_ref());
        self.infer(r.into_inner(), deadline)
            .await
            .map(Response::new)
    }

    type ModelStreamInferStream =
        tokio_stream::wrappers::ReceiverStream<Result<ModelStreamInferResponse, Status>>;

    /// Each request of the stream is routed on its own; answers come back in order.
    async fn model_stream_infer(
        &self,
        r: Request<Streaming<ModelInferRequest>>,
    ) -> RpcResult<Self::ModelStreamInferStream> {
        let mut incoming = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let front = self.clone();
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let Ok(request) = next else { break };
                let deadline = deadline_of(&tonic::metadata::MetadataMap::new(), &request);
                let reply = match front.infer(request, deadline).await {
                    Ok(resp) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(resp),
                    },
                    Err(s) => ModelStreamInferResponse {
                        error_message: s.message().to_string(),
                        infer_response: None,
                    },
                };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> RpcResult<ModelConfigResponse> {
        let m = r.into_inner();
        let name = m.name.clone();
        self.other(&name, move |mut c| {
            let m = m.clone();
            async move { c.model_config(m).await }
        })
        .await
    }

    /// Every holder's statistics added up (every usable replica's for all models).
    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> RpcResult<ModelStatisticsResponse> {
        let m = r.into_inner();
        let targets: Vec<ReplicaAddr> = if m.name.is_empty() {
            self.usable()
        } else {
            let view = self.shared.view.lock().expect("view lock");
            view.holders(&m.name, Instant::now())
                .iter()
                .map(|r| r.addr.clone())
                .collect()
        };
        if targets.is_empty() {
            // Nobody holds it (or nobody is up): one replica says why.
            let name = m.name.clone();
            return self
                .other(&name, move |mut c| {
                    let m = m.clone();
                    async move { c.model_statistics(m).await }
                })
                .await;
        }
        let calls: Vec<_> = targets
            .into_iter()
            .map(|addr| {
                let shared = self.shared.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    let mut c = shared.grpc_client(&addr).map_err(Status::unavailable)?;
                    c.model_statistics(m).await.map(Response::into_inner)
                })
            })
            .collect();
        let mut answers = Vec::new();
        let mut first_error = None;
        for call in calls {
            match call.await {
                Ok(Ok(resp)) => answers.push(resp.model_stats),
                Ok(Err(status)) => {
                    first_error.get_or_insert(status);
                }
                Err(e) => {
                    first_error.get_or_insert(Status::internal(e.to_string()));
                }
            }
        }
        if answers.is_empty() {
            return Err(first_error.unwrap_or_else(|| Status::unavailable("no replica answered")));
        }
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: crate::stats::merge_proto(answers),
        }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> RpcResult<RepositoryIndexResponse> {
        let m = r.into_inner();
        let addrs = self.usable();
        if addrs.is_empty() {
            return Err(Status::unavailable("no replica is up"));
        }
        let rank = |s: &str| match s {
            "READY" => 3,
            "LOADING" => 2,
            "UNLOADING" => 1,
            _ => 0,
        };
        let mut rows: std::collections::BTreeMap<
            (String, String),
            repository_index_response::ModelIndex,
        > = Default::default();
        for addr in addrs {
            let Ok(mut c) = self.shared.grpc_client(&addr) else {
                continue;
            };
            let Ok(resp) = c.repository_index(m.clone()).await else {
                continue;
            };
            for row in resp.into_inner().models {
                let key = (row.name.clone(), row.version.clone());
                match rows.get(&key) {
                    Some(old) if rank(&old.state) >= rank(&row.state) => {}
                    _ => {
                        rows.insert(key, row);
                    }
                }
            }
        }
        Ok(Response::new(RepositoryIndexResponse {
            models: rows.into_values().collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> RpcResult<RepositoryModelLoadResponse> {
        let m = r.into_inner();
        let holders: Vec<ReplicaAddr> = {
            let view = self.shared.view.lock().expect("view lock");
            view.holders(&m.model_name, Instant::now())
                .iter()
                .map(|r| r.addr.clone())
                .collect()
        };
        if holders.is_empty() {
            forward::ensure_placed(&self.shared, &m.model_name, None)
                .await
                .map_err(|e| to_status(&e))?;
            return Ok(Response::new(RepositoryModelLoadResponse {}));
        }
        for addr in holders {
            let mut c = self
                .shared
                .grpc_client(&addr)
                .map_err(Status::unavailable)?;
            c.repository_model_load(m.clone()).await?;
        }
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> RpcResult<RepositoryModelUnloadResponse> {
        let m = r.into_inner();
        let targets: Vec<ReplicaAddr> = {
            let view = self.shared.view.lock().expect("view lock");
            view.knowers(&m.model_name, Instant::now())
                .iter()
                .filter(|r| {
                    r.holdings
                        .get(&m.model_name)
                        .is_some_and(|h| h.state != crate::view::HoldState::Absent)
                })
                .map(|r| r.addr.clone())
                .collect()
        };
        if targets.is_empty() {
            let name = m.model_name.clone();
            return self
                .other(&name, move |mut c| {
                    let m = m.clone();
                    async move { c.repository_model_unload(m).await }
                })
                .await;
        }
        for addr in targets {
            let mut c = self
                .shared
                .grpc_client(&addr)
                .map_err(Status::unavailable)?;
            c.repository_model_unload(m.clone()).await?;
        }
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }

    async fn log_settings(&self, r: Request<LogSettingsRequest>) -> RpcResult<LogSettingsResponse> {
        let m = r.into_inner();
        self.other("", move |mut c| {
            let m = m.clone();
            async move { c.log_settings(m).await }
        })
        .await
    }
}

/// Serves the gRPC front end on `listener` until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let max = shared.config.grpc_max_message_bytes;
    let service = GrpcInferenceServiceServer::new(Front { shared })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

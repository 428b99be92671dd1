//! `ModelStreamInfer`: a bidirectional stream of inference requests.
//!
//! Each request read from the stream runs as its own task, so several are in flight
//! at once (up to [`MAX_IN_FLIGHT`] per stream; past that the stream is read no
//! further until one finishes). Every request gets exactly one
//! `ModelStreamInferResponse`, in the order they finish: its `infer_response`, or its
//! `error_message` (with the request's model, version and id, to tell which one
//! failed); the stream keeps going after a failed request. A stream that breaks (a
//! message over the size limit, a transport error) ends with that status once the
//! requests already read are answered, and so does every stream when the server
//! begins to shut down (`UNAVAILABLE`), so an idle stream cannot hold up shutdown.
//! When the client goes away, the requests still running are dropped.

use std::sync::Arc;

use prost::Message;
use sluice_proto::inference::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::service::Inference;
use super::{too_large, transport_status};
use crate::error::log_error;

/// Requests of one stream that may run at once.
pub const MAX_IN_FLIGHT: usize = 64;

type Outbound = mpsc::Sender<Result<ModelStreamInferResponse, Status>>;

/// Starts answering `inbound`; the returned stream carries the answers.
pub(crate) fn start(
    service: Inference,
    inbound: Streaming<ModelInferRequest>,
) -> ReceiverStream<Result<ModelStreamInferResponse, Status>> {
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    tokio::spawn(run(service, inbound, tx));
    ReceiverStream::new(rx)
}

async fn run(service: Inference, mut inbound: Streaming<ModelInferRequest>, tx: Outbound) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut shutdown = service.shutdown.clone();
    let shutting_down =
        || Status::unavailable("the server is shutting down; send further requests elsewhere");
    let broken = loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break None,
            },
            () = tx.closed() => return,
            _ = shutdown.wait_for(|&s| s) => break Some(shutting_down()),
        };
        let next = tokio::select! {
            next = inbound.message() => next,
            () = tx.closed() => return,
            _ = shutdown.wait_for(|&s| s) => break Some(shutting_down()),
        };
        match next {
            Ok(Some(request)) => {
                let service = service.clone();
                let tx = tx.clone();
                tasks.spawn(async move {
                    let answer = answer(&service, request).await;
                    // A closed channel means the client left; nothing is waiting.
                    let _ = tx.send(Ok(answer)).await;
                    drop(permit);
                });
            }
            Ok(None) => break None,
            Err(status) => break Some(transport_status(status, service.max_message_bytes)),
        }
    };
    while tasks.join_next().await.is_some() {}
    if let Some(status) = broken {
        tracing::debug!(status = %status, "inference stream ended by an error");
        let _ = tx.send(Err(status)).await;
    }
}

async fn answer(service: &Inference, request: ModelInferRequest) -> ModelStreamInferResponse {
    let header = ModelInferResponse {
        model_name: request.model_name.clone(),
        model_version: request.model_version.clone(),
        id: request.id.clone(),
        ..Default::default()
    };
    let answered = service
        .infer_encoded(request, None)
        .await
        .and_then(|response| {
            let answer = ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(response),
            };
            let len = answer.encoded_len();
            if len > service.max_message_bytes {
                return Err(too_large("response", len, service.max_message_bytes));
            }
            Ok(answer)
        });
    match answered {
        Ok(answer) => answer,
        Err(e) => {
            log_error(&e);
            ModelStreamInferResponse {
                error_message: e.message().to_owned(),
                infer_response: Some(header),
            }
        }
    }
}

//! A server-wide budget of request-body bytes in flight, shared by HTTP and gRPC.
//!
//! Key decision: per-request limits (`--max-body-bytes`, `--grpc-max-message-bytes`)
//! bound one request, not how many arrive at once: 4 096 connections each sending a
//! 64 MiB body would make the server buffer 256 GiB. The budget is a semaphore of
//! bytes ([`BodyBudget`]). A request takes permits for its body as the bytes arrive
//! (an HTTP request with a `Content-Length` takes them all when its head arrives, so
//! a body that cannot fit is refused before a byte of it is read) and never waits
//! for them: when the budget is spent it is refused at once — HTTP 503 with an
//! `{"error"}` body, gRPC `RESOURCE_EXHAUSTED` — and the client may retry. The
//! permits are held until the request is answered (its decoded tensors live that
//! long), so the budget bounds what bodies cost while they are read, decoded and
//! run. A gRPC stream is answered when it opens and may last for hours: it holds the
//! bytes of its message being received and of the one before it (being decoded and
//! run), found by the 5-byte gRPC frame headers, and releases older ones.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use sluice_core::{Error, ErrorKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;

use crate::ApiError;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The budget's default: sixteen bodies of the default `--max-body-bytes` (64 MiB).
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 1 << 30;

/// Bytes of request bodies the whole server holds at once; cheap to clone (one
/// semaphore shared by every listener).
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes (at most tokio's largest semaphore, 2^61 − 1).
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not held by any request now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Takes `n` bytes of the budget now, or `None` when fewer are left.
    fn try_take(&self, n: u64) -> Option<OwnedSemaphorePermit> {
        // Permits are taken in pieces of at most u32::MAX; `merge` joins them.
        let mut left = n;
        let first = u32::try_from(left.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
        let mut permit = self.bytes.clone().try_acquire_many_owned(first).ok()?;
        left -= u64::from(first);
        while left > 0 {
            let piece = u32::try_from(left.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
            permit.merge(self.bytes.clone().try_acquire_many_owned(piece).ok()?);
            left -= u64::from(piece);
        }
        Some(permit)
    }

    /// The refusal's text, for both protocols.
    fn refusal(&self, wanted: u64) -> String {
        format!(
            "the server is busy: {wanted} more bytes of request body would exceed the \
             {} bytes that all requests in flight may hold (--max-inflight-body-bytes, \
             {} bytes free now); retry later",
            self.total,
            self.available()
        )
    }
}

/// The permits one request holds; shared by its body and by the future that answers
/// it, so they are released when both are done.
#[derive(Default)]
struct Held {
    /// Bytes of the message being received (all of an HTTP body).
    current: Option<OwnedSemaphorePermit>,
    /// Bytes of the gRPC message received before it.
    previous: Option<OwnedSemaphorePermit>,
}

type SharedHeld = Arc<Mutex<Held>>;

fn hold(held: &SharedHeld, permit: OwnedSemaphorePermit) {
    let mut held = held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match held.current.as_mut() {
        Some(current) => current.merge(permit),
        None => held.current = Some(permit),
    }
}

/// A gRPC message ended: its bytes become "previous", the older ones are released.
fn rotate(held: &SharedHeld) {
    let mut held = held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    held.previous = held.current.take();
}

/// Where a gRPC body is in its length-prefixed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// In a 5-byte message header, this many bytes of it read; `len` so far.
    Header { read: u8, len: u64 },
    /// In a message's bytes, this many left.
    Message { left: u64 },
}

impl Cursor {
    const START: Cursor = Cursor::Header { read: 0, len: 0 };

    /// Moves over `data`; returns how many messages ended in it.
    fn advance(&mut self, mut data: &[u8]) -> usize {
        let mut ended = 0;
        while !data.is_empty() {
            match *self {
                Cursor::Header { read, len } => {
                    // Byte 0 is the compression flag, bytes 1..5 the length (big endian).
                    let len = if read == 0 {
                        0
                    } else {
                        (len << 8) | u64::from(data[0])
                    };
                    data = &data[1..];
                    *self = if read < 4 {
                        Cursor::Header {
                            read: read + 1,
                            len,
                        }
                    } else if len == 0 {
                        ended += 1;
                        Cursor::START
                    } else {
                        Cursor::Message { left: len }
                    };
                }
                Cursor::Message { left } => {
                    let n = left.min(data.len() as u64);
                    data = &data[usize::try_from(n).unwrap_or(data.len())..];
                    *self = if n == left {
                        ended += 1;
                        Cursor::START
                    } else {
                        Cursor::Message { left: left - n }
                    };
                }
            }
        }
        ended
    }
}

/// How a body's bytes are held and how a refusal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The whole body until the request is answered; refused with HTTP 503.
    Http,
    /// Per message (see the module's text); refused with `RESOURCE_EXHAUSTED`.
    Grpc,
}

/// The error a body ends with when the budget is spent (HTTP).
#[derive(Debug)]
pub(crate) struct OverBudget(String);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverBudget {}

/// The budget's refusal if `error`'s source chain holds one (a body read that failed
/// because the budget is spent).
pub(crate) fn over_budget(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(over) = e.downcast_ref::<OverBudget>() {
            return Some(busy(over.0.clone()));
        }
        source = e.source();
    }
    None
}

fn busy(message: String) -> ApiError {
    ApiError(Error::new(ErrorKind::Unavailable, message))
}

/// A request body whose bytes are counted against the budget as they pass.
pub(crate) struct BudgetBody<B> {
    inner: B,
    budget: BodyBudget,
    held: SharedHeld,
    /// Bytes taken before the body was read (a declared `Content-Length`).
    prepaid: u64,
    protocol: Protocol,
    cursor: Cursor,
    /// The budget refused a frame: the body has ended with that error.
    refused: bool,
}

impl<B> BudgetBody<B> {
    fn new(
        inner: B,
        budget: BodyBudget,
        held: SharedHeld,
        prepaid: u64,
        protocol: Protocol,
    ) -> Self {
        BudgetBody {
            inner,
            budget,
            held,
            prepaid,
            protocol,
            cursor: Cursor::START,
            refused: false,
        }
    }

    /// Counts a data frame of `len` bytes; the refusal when the budget is spent.
    fn count(&mut self, data: &[u8]) -> Result<(), BoxError> {
        let len = data.len() as u64;
        let from_prepaid = len.min(self.prepaid);
        self.prepaid -= from_prepaid;
        let wanted = len - from_prepaid;
        if wanted > 0 {
            let Some(permit) = self.budget.try_take(wanted) else {
                let message = self.budget.refusal(wanted);
                tracing::debug!(%message, "request body refused by the body budget");
                return Err(match self.protocol {
                    Protocol::Http => Box::new(OverBudget(message)),
                    Protocol::Grpc => Box::new(tonic::Status::resource_exhausted(message)),
                });
            };
            hold(&self.held, permit);
        }
        if self.protocol == Protocol::Grpc && self.cursor.advance(data) > 0 {
            rotate(&self.held);
        }
        Ok(())
    }
}

impl<B> HttpBody for BudgetBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.refused {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = this.count(data.chunk()) {
                        this.refused = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// HTTP middleware (`axum::middleware::from_fn_with_state`): counts every request
/// body against the budget and holds its bytes until the response is ready.
pub(crate) async fn http_layer(
    State(budget): State<Option<BodyBudget>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(budget) = budget else {
        return next.run(request).await;
    };
    let held = SharedHeld::default();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // A body larger than the budget itself is left to --max-body-bytes (413), which
    // the server checks at startup to be no larger than the budget.
    let prepaid = if declared > 0 && declared <= budget.total() as u64 {
        let Some(permit) = budget.try_take(declared) else {
            return busy(budget.refusal(declared)).into_response();
        };
        hold(&held, permit);
        declared
    } else {
        0
    };
    let (parts, body) = request.into_parts();
    let body = BudgetBody::new(body, budget, held.clone(), prepaid, Protocol::Http);
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::new(body)))
        .await;
    drop(held);
    response
}

/// The gRPC layer: counts every call's request body against the budget.
#[derive(Debug, Clone)]
pub(crate) struct GrpcBudgetLayer(pub Option<BodyBudget>);

impl<S> tower::Layer<S> for GrpcBudgetLayer {
    type Service = GrpcBudget<S>;

    fn layer(&self, inner: S) -> GrpcBudget<S> {
        GrpcBudget {
            inner,
            budget: self.0.clone(),
        }
    }
}

/// See [`GrpcBudgetLayer`].
#[derive(Debug, Clone)]
pub(crate) struct GrpcBudget<S> {
    inner: S,
    budget: Option<BodyBudget>,
}

impl<S, R> tower::Service<http::Request<tonic::body::Body>> for GrpcBudget<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = R>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<R, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(budget) = self.budget.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let held = SharedHeld::default();
        let (parts, body) = request.into_parts();
        let body = BudgetBody::new(body, budget, held.clone(), 0, Protocol::Grpc);
        let future = self.inner.call(http::Request::from_parts(
            parts,
            tonic::body::Body::new(body),
        ));
        Box::pin(async move {
            let response = future.await;
            drop(held);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn frames(chunks: Vec<&'static [u8]>) -> axum::body::Body {
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        axum::body::Body::new(StreamBody::new(stream))
    }

    #[test]
    fn the_cursor_finds_grpc_message_ends_across_chunks() {
        let mut c = Cursor::START;
        // Two messages of 3 and 0 bytes, then the start of a third of 258.
        assert_eq!(c.advance(&[0, 0, 0, 0, 3, 7, 7]), 0);
        assert_eq!(c, Cursor::Message { left: 1 });
        assert_eq!(c.advance(&[7, 0, 0, 0, 0, 0, 0, 0, 0]), 2);
        assert_eq!(c.advance(&[1, 2]), 0);
        assert_eq!(c, Cursor::Message { left: 258 });
        assert_eq!(c.advance(&[0; 258]), 1);
        assert_eq!(c, Cursor::START);
        // A header split byte by byte.
        for b in [1u8, 0, 0, 0] {
            assert_eq!(c.advance(&[b]), 0);
        }
        assert_eq!(c.advance(&[2]), 0);
        assert_eq!(c.advance(&[9, 9, 1]), 1);
        assert_eq!(c, Cursor::Header { read: 1, len: 0 });
    }

    #[test]
    fn takes_are_all_or_nothing_and_released_on_drop() {
        let budget = BodyBudget::new(100);
        let a = budget.try_take(60).unwrap();
        assert!(budget.try_take(41).is_none());
        assert_eq!(budget.available(), 40);
        let b = budget.try_take(40).unwrap();
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 60);
        drop(b);
        assert_eq!(budget.available(), 100);
        // Larger than one u32 acquisition: taken in pieces.
        let big = BodyBudget::new(usize::MAX);
        let permit = big.try_take(u64::from(u32::MAX) * 2 + 5).unwrap();
        assert_eq!(permit.num_permits() as u64, u64::from(u32::MAX) * 2 + 5);
    }

    #[tokio::test]
    async fn an_http_body_holds_its_bytes_until_dropped_and_refuses_past_the_budget() {
        let budget = BodyBudget::new(10);
        let held = SharedHeld::default();
        let body = BudgetBody::new(
            frames(vec![b"abcd", b"efgh"]),
            budget.clone(),
            held.clone(),
            0,
            Protocol::Http,
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdefgh");
        assert_eq!(budget.available(), 2, "held until the request is answered");

        // Another body over what is left: its error names the flag.
        let other = BudgetBody::new(
            frames(vec![b"x", b"yyy"]),
            budget.clone(),
            SharedHeld::default(),
            0,
            Protocol::Http,
        );
        let err = other.collect().await.unwrap_err();
        let refusal = over_budget(&*err).expect("an OverBudget error");
        assert_eq!(refusal.0.kind(), ErrorKind::Unavailable);
        assert!(
            refusal.0.message().contains("--max-inflight-body-bytes"),
            "{}",
            refusal.0
        );
        assert_eq!(
            budget.available(),
            2,
            "the refused body's byte was released"
        );
        drop(held);
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test]
    async fn prepaid_bytes_are_not_taken_twice() {
        let budget = BodyBudget::new(8);
        let held = SharedHeld::default();
        hold(&held, budget.try_take(8).unwrap());
        let body = BudgetBody::new(
            frames(vec![b"abcd", b"efgh"]),
            budget.clone(),
            held.clone(),
            8,
            Protocol::Http,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 8);
        assert_eq!(budget.available(), 0);
        drop(held);
        assert_eq!(budget.available(), 8);
    }

    #[tokio::test]
    async fn a_grpc_stream_holds_its_last_message_and_the_one_arriving() {
        let budget = BodyBudget::new(1000);
        let held = SharedHeld::default();
        // Three messages of 95 bytes (100 with their headers), the second in two halves.
        let message: &'static [u8] = {
            let mut m = vec![0u8, 0, 0, 0, 95];
            m.extend([1u8; 95]);
            Box::leak(m.into_boxed_slice())
        };
        let mut body = BudgetBody::new(
            frames(vec![message, &message[..50], &message[50..], message]),
            budget.clone(),
            held.clone(),
            0,
            Protocol::Grpc,
        );
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            seen.push(budget.available());
        }
        // Message 2 half in: it and message 1 are held; once whole, message 1 is released.
        assert_eq!(seen, [900, 850, 900, 900]);
        drop(body);
        drop(held);
        assert_eq!(budget.available(), 1000);
    }
}

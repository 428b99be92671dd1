//! Checks every `ModelInfer` / `ModelStreamInfer` message against the request
//! limits ([`crate::limits`]) before tonic and prost decode it.
//!
//! Key decision: the guard wraps the request body and reassembles the gRPC frames
//! (a 5-byte header, then the message) as they arrive; each whole message is scanned
//! on the wire format, without allocating per field, and passed on unchanged. A
//! message over a limit ends the body with an `INVALID_ARGUMENT` status, which tonic
//! returns to the client (a stream ends with it). Frames past the message size limit
//! or compressed pass unscanned: tonic refuses them itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use tonic::codegen::http;

use crate::limits::{self, check_infer_request};

/// Whether calls to `path` carry `ModelInferRequest` messages.
fn guarded(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(sluice_proto::INFERENCE_SERVICE_NAME))
        .is_some_and(|m| m == "/ModelInfer" || m == "/ModelStreamInfer")
}

/// Wraps the body of an inference call in a [`GuardBody`].
pub fn guard_request(
    request: http::Request<tonic::body::Body>,
    max_message_bytes: usize,
) -> http::Request<tonic::body::Body> {
    if !guarded(request.uri().path()) {
        return request;
    }
    let (parts, body) = request.into_parts();
    let body = GuardBody {
        inner: body,
        buffer: BytesMut::new(),
        max_message_bytes,
        passthrough: false,
        ended: false,
    };
    http::Request::from_parts(parts, tonic::body::Body::new(body))
}

/// A request body whose gRPC messages are checked as they pass.
pub struct GuardBody {
    inner: tonic::body::Body,
    buffer: BytesMut,
    max_message_bytes: usize,
    /// Past a frame the guard does not check: everything passes from then on.
    passthrough: bool,
    /// The inner body has ended.
    ended: bool,
}

impl GuardBody {
    /// The next whole frame in the buffer, checked; `None` when more bytes are needed.
    fn next_frame(&mut self) -> Option<Result<Bytes, tonic::Status>> {
        if self.buffer.len() < 5 {
            return None;
        }
        let compressed = self.buffer[0] != 0;
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if compressed || len > self.max_message_bytes {
            self.passthrough = true;
            return Some(Ok(self.buffer.split().freeze()));
        }
        if self.buffer.len() < 5 + len {
            self.buffer.reserve(5 + len - self.buffer.len());
            return None;
        }
        let frame = self.buffer.split_to(5 + len).freeze();
        if let Err(message) = check_infer_request(&frame[5..], &limits::current()) {
            tracing::debug!(%message, "inference message refused by the request limits");
            return Some(Err(tonic::Status::invalid_argument(message)));
        }
        Some(Ok(frame))
    }
}

impl HttpBody for GuardBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if !this.passthrough {
                if let Some(frame) = this.next_frame() {
                    return Poll::Ready(Some(frame.map(Frame::data)));
                }
            } else if !this.buffer.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.buffer.split().freeze()))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if this.passthrough {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            this.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Ready(None) => {
                    // A truncated last frame is handed on for tonic to report.
                    this.ended = true;
                    this.passthrough = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffer.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let mut hint = self.inner.size_hint();
        let buffered = self.buffer.len() as u64;
        hint.set_lower(hint.lower().saturating_add(buffered));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

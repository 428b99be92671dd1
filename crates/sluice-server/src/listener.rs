//! A TCP listener that keeps at most a set number of connections open.
//!
//! Key decision: memory under overload is bounded by connections, not by the queue
//! alone: each open HTTP connection costs a task and buffers (about 25 KB measured
//! with tens of thousands of connections), so an open-loop flood that opens a
//! connection per outstanding request grew the server by hundreds of MB. Past the
//! limit the listener stops accepting: new connections wait in the kernel's backlog
//! until one closes (as nginx does at `worker_connections`), and every connection
//! that is accepted is served normally.
//!
//! A connection must send its first byte within the header-read timeout, or its reads
//! fail and it closes: hyper's own header timeout starts only once it knows the
//! protocol, and detecting HTTP/1 or HTTP/2 waits for the first bytes, so a client that
//! never sends one would otherwise hold its slot for good.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A listener holding at most `max` connections open at once.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    first_byte_timeout: Option<Duration>,
}

impl LimitedListener {
    /// `max` 0 means no limit; a connection silent for `first_byte_timeout` after
    /// the accept is closed.
    pub fn new(inner: TcpListener, max: usize, first_byte_timeout: Option<Duration>) -> Self {
        let max = if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max
        };
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            first_byte_timeout,
        }
    }
}

/// An accepted connection; its slot frees when it is dropped.
pub struct LimitedStream {
    stream: TcpStream,
    /// Until the first byte arrives: when the connection times out.
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl LimitedStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// The first byte the client sends, without consuming it; fails when none
    /// arrives within the first-byte timeout (or the client closes first).
    pub async fn peek_first(&mut self) -> io::Result<u8> {
        let mut byte = [0u8; 1];
        let peek = self.stream.peek(&mut byte);
        let n = match self.first_byte.as_mut() {
            Some(deadline) => tokio::select! {
                n = peek => n?,
                () = deadline.as_mut() => return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                )),
            },
            None => peek.await?,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a byte",
            ));
        }
        Ok(byte[0])
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let _ = stream.set_nodelay(true);
        (
            LimitedStream {
                stream,
                first_byte: self
                    .first_byte_timeout
                    .map(|t| Box::pin(tokio::time::sleep(t))),
                _slot: slot,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Some(deadline) = self.first_byte.as_mut() {
            match &poll {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.first_byte = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
                _ => {}
            }
        }
        poll
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

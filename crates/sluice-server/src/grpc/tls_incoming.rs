//! The gRPC listener's connections, plain or over TLS: a stream of accepted (and
//! handshaken) connections for tonic's `serve_with_incoming_shutdown`.
//!
//! Key decision: the same bounds as HTTP's listener ([`LimitedListener`]): at most
//! [`GrpcLimits::max_connections`] connections are open at once (past it new ones
//! wait in the kernel's backlog), and a connection must send its first byte within
//! the first-byte timeout, so idle sockets cannot hold the slots. Handshakes run in
//! their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT),
//! so a client that stalls mid-handshake delays nobody else; each takes the
//! [`TlsReloader`]'s config of the moment, so a reloaded certificate applies to the
//! next connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::GrpcLimits;
use crate::listener::{LimitedListener, LimitedStream};
use crate::tls::{TlsReloader, HANDSHAKE_TIMEOUT};

/// A gRPC connection: plain, or after its TLS handshake. Its connection slot frees
/// when it is dropped.
pub enum GrpcConnection {
    Plain(LimitedStream),
    Tls(Box<tokio_rustls::server::TlsStream<LimitedStream>>),
}

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            GrpcConnection::Plain(s) => s.tcp().connect_info(),
            GrpcConnection::Tls(s) => s.get_ref().0.tcp().connect_info(),
        }
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConnection::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GrpcConnection::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConnection::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GrpcConnection::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConnection::Plain(s) => Pin::new(s).poll_flush(cx),
            GrpcConnection::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcConnection::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GrpcConnection::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcConnection::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            GrpcConnection::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            GrpcConnection::Plain(s) => s.is_write_vectored(),
            GrpcConnection::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` within `limits` and yields each connection (over TLS once
/// its handshake is done); ends (and closes the listener) when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    limits: &GrpcLimits,
) -> ReceiverStream<Result<GrpcConnection, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut listener =
        LimitedListener::new(listener, limits.max_connections, limits.first_byte_timeout);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                a = axum::serve::Listener::accept(&mut listener) => a,
                () = tx.closed() => return,
            };
            let Some(tls) = &tls else {
                if tx.send(Ok(GrpcConnection::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                // A silent client is closed at the first-byte timeout, not the handshake's.
                if let Err(error) = stream.peek_first().await {
                    tracing::debug!(%error, "gRPC connection closed before its handshake");
                    return;
                }
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(GrpcConnection::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

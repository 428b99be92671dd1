//! The HTTP accept loop: connection limits, optional TLS, graceful shutdown with a
//! bound.
//!
//! Key decision: shutdown is graceful first (no new connections; each open one
//! finishes the request it is serving, then closes) and forced after
//! [`ServeOptions`]' `force_close` resolves: connections still open then (a client
//! that never finishes sending its body, a stuck header, an HTTP/2 connection that
//! ignores GOAWAY) are dropped, so SIGTERM always ends the process within a bound.
//! On a TLS listener a client that speaks plain HTTP gets a JSON 400 saying so
//! (as nginx does) instead of a handshake error it cannot read.

use std::future::Future;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::listener::{LimitedListener, LimitedStream};
use crate::tls::{TlsReloader, HANDSHAKE_TIMEOUT};
use crate::ConnectionLimits;

/// How an HTTP listener serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub limits: ConnectionLimits,
    /// TLS for every connection (`None`: plain HTTP).
    pub tls: Option<TlsReloader>,
}

/// Serves `router` on `listener` until `shutdown` resolves; then lets open
/// connections finish their requests until `force_close` resolves, and drops the
/// ones still open then.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    force_close: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = options.limits;
    let mut listener =
        LimitedListener::new(listener, limits.max_connections, limits.header_read_timeout);
    // Dropping `signal_rx` tells the connections to finish; each holds a `close_rx`
    // clone until it is done, so `close_tx.closed()` waits for all of them. Dropping
    // `force_tx` tells them to stop at once.
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (force_tx, force_rx) = tokio::sync::watch::channel(());
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    loop {
        let (io, _addr) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = signal_tx.closed() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = Connection {
            signal_tx: signal_tx.clone(),
            force_rx: force_rx.clone(),
            close_rx: close_rx.clone(),
            limits,
        };
        match options.tls.as_ref() {
            None => {
                tokio::spawn(connection.serve(io, service));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let mut force = force_rx.clone();
                tokio::spawn(async move {
                    let mut io = io;
                    // A TLS client's first byte is a handshake record (22).
                    match io.peek_first().await {
                        Ok(0x16) => {}
                        Ok(_) => return plain_http_to_tls_port(io).await,
                        Err(_) => return,
                    }
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io));
                    let handshake = tokio::select! {
                        h = handshake => h,
                        _ = force.changed() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => connection.serve(tls, service).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(close_rx);
    drop(listener);
    drop(force_rx);
    tokio::select! {
        () = close_tx.closed() => {}
        () = force_close => {
            tracing::warn!("closing the HTTP connections still open at the exit timeout");
            drop(force_tx);
            close_tx.closed().await;
        }
    }
    Ok(())
}

/// What one connection's task holds.
struct Connection {
    signal_tx: tokio::sync::watch::Sender<()>,
    force_rx: tokio::sync::watch::Receiver<()>,
    close_rx: tokio::sync::watch::Receiver<()>,
    limits: ConnectionLimits,
}

impl Connection {
    async fn serve<I>(mut self, io: I, service: TowerToHyperService<Router>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = Builder::new(TokioExecutor::new());
        if let Some(timeout) = self.limits.header_read_timeout {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
        }
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut finishing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                    break;
                }
                () = self.signal_tx.closed(), if !finishing => {
                    finishing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = self.force_rx.changed() => break,
            }
        }
        drop(self.close_rx);
    }
}

/// Answers a plain-HTTP request on a TLS port with a JSON 400 and closes.
async fn plain_http_to_tls_port(mut io: LimitedStream) {
    const BODY: &str =
        r#"{"error":"this port speaks HTTPS (TLS); the request was sent as plain HTTP"}"#;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        // Read what the request sent so far, so closing does not reset the
        // connection before the client reads the answer.
        let mut head = [0u8; 8192];
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            tokio::io::AsyncReadExt::read(&mut io, &mut head),
        )
        .await;
        let _ = io.write_all(response.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await;
}

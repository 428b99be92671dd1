//! TLS for the HTTP, gRPC and metrics listeners: rustls with the `ring` provider.
//!
//! Key decision: a [`TlsReloader`] holds the current `rustls::ServerConfig` behind a
//! lock and every accepted connection takes the config of the moment for its
//! handshake. [`TlsReloader::reload`] (on SIGHUP, or when the files change) builds a
//! new config from the files and swaps it in: connections already open keep the
//! session they negotiated, new ones get the new certificate, and a failed reload
//! (a half-written file, a key that does not match) keeps the old config serving.
//! With a client CA every client must present a certificate it signed (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where a listener's certificate, key and (for mutual TLS) client CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

/// ALPN protocols for an HTTP listener (HTTP/2 and HTTP/1.1).
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN protocols for a gRPC listener (HTTP/2 only; gRPC clients require `h2`).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of one listener, reloadable from its files.
#[derive(Clone)]
pub struct TlsReloader {
    files: Arc<TlsFiles>,
    alpn: Vec<Vec<u8>>,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    /// The file contents the current config was built from (to notice changes).
    loaded: Arc<RwLock<Vec<u8>>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Loads the files; errors name the file and what is wrong with it.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Self, String> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let (config, contents) = build(&files, &alpn)?;
        Ok(TlsReloader {
            files: Arc::new(files),
            alpn,
            current: Arc::new(RwLock::new(Arc::new(config))),
            loaded: Arc::new(RwLock::new(contents)),
        })
    }

    /// The files this listener's TLS comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Rebuilds the config from the files and swaps it in for new connections; on
    /// error the current config stays.
    pub fn reload(&self) -> Result<(), String> {
        let (config, contents) = build(&self.files, &self.alpn)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = contents;
        Ok(())
    }

    /// Reloads when the files' contents differ from the loaded ones; `Ok(true)` when
    /// a new config was swapped in.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = read_all(&self.files)?;
        if *self.loaded.read().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        let result = self.reload().map(|()| true);
        if result.is_err() {
            // Reported once; tried again when the files change again (or on SIGHUP).
            *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = now;
        }
        result
    }

    /// An acceptor with the config of the moment.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        tokio_rustls::TlsAcceptor::from(config)
    }
}

/// The three files' bytes, concatenated with their lengths (a change detector).
fn read_all(files: &TlsFiles) -> Result<Vec<u8>, String> {
    let mut all = Vec::new();
    for path in [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        all.extend_from_slice(&bytes);
    }
    Ok(all)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<(ServerConfig, Vec<u8>), String> {
    let contents = read_all(files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("cannot verify clients with {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the certificate {} and key {} do not make a usable pair: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok((config, contents))
}

/// Reloads every listener's TLS on SIGHUP, and when its files change (checked every
/// `poll`, if given: Kubernetes updates mounted Secrets in place). Failures are
/// logged and the old certificates stay in use. Runs until the process ends.
pub fn spawn_reloader(reloaders: Vec<TlsReloader>, poll: Option<Duration>) {
    if reloaders.is_empty() {
        return;
    }
    #[cfg(unix)]
    {
        let reloaders = reloaders.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        for r in &reloaders {
                            match r.reload() {
                                Ok(()) => tracing::info!(
                                    cert = %r.files().cert.display(),
                                    "SIGHUP: TLS certificates reloaded"
                                ),
                                Err(error) => tracing::error!(
                                    %error,
                                    "SIGHUP: TLS reload failed; keeping the current certificates"
                                ),
                            }
                        }
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP; no TLS reload on it"),
        }
    }
    if let Some(poll) = poll {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.tick().await;
            loop {
                tick.tick().await;
                for r in &reloaders {
                    match r.reload_if_changed() {
                        Ok(true) => tracing::info!(
                            cert = %r.files().cert.display(),
                            "TLS files changed: certificates reloaded"
                        ),
                        Ok(false) => {}
                        Err(error) => tracing::warn!(
                            %error,
                            "TLS files changed but do not load; keeping the current certificates"
                        ),
                    }
                }
            }
        });
    }
}

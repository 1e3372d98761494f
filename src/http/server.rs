//! Accepting connections (plain or TLS), serving each with HTTP/1.1 or HTTP/2, and shutting
//! down gracefully: stop accepting, let responses and fills in flight finish, then leave no
//! temp files behind.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{App, handle};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file is unreadable or holds no usable PEM item.
    #[error("cannot load {path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the pair.
    #[error("invalid TLS certificate/key: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor for a PEM certificate chain and key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if chain.is_empty() {
        return Err(pem_err(cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown` resolves, then shuts down gracefully within
/// `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, watcher) = (Arc::clone(&app), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let result = match tls {
                None => serve_connection(stream, app, watcher).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => serve_connection(stream, app, watcher).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(&app, graceful, shutdown_timeout).await;
}

async fn serve_connection<S>(
    stream: S,
    app: Arc<App>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&app), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    watcher.watch(connection).await
}

/// Lets connections and fills in flight finish (at most `timeout` in all), then removes
/// whatever temp files remain and saves access times.
async fn drain(app: &App, graceful: GracefulShutdown, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    tracing::info!(timeout = ?timeout, "no longer accepting; letting requests in flight finish");
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown timeout; closing them");
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(left, app.mirror.fills.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("downloads still running at the shutdown timeout; discarding them");
    }
    if let Err(e) = app.mirror.store.remove_temp_files().await {
        tracing::warn!(error = %e, "cannot remove temp files");
    }
    if let Err(e) = app.mirror.store.save_access().await {
        tracing::warn!(error = %e, "cannot save access times");
    }
}

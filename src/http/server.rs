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

use tokio::sync::Semaphore;

use super::limits::{Activity, ConnectionTimeouts, Watched, watchdog};
use super::{App, ConnInfo, handle};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file is unreadable or holds no usable PEM item.
    #[error("[server] {key} = \"{path}\": {message}")]
    Pem {
        /// `tls_cert` or `tls_key`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the pair (a key that is not the certificate's, say).
    #[error("[server] tls_cert and tls_key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor for a PEM certificate chain and key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |key: &'static str, path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        key,
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err("tls_cert", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("tls_cert", cert, &e))?;
    if chain.is_empty() {
        return Err(pem_err("tls_cert", cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err("tls_key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What each connection may cost and how many are served at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Header and idle timeouts.
    pub timeouts: ConnectionTimeouts,
    /// A TLS handshake must finish within this long.
    pub tls_handshake: Duration,
    /// The most connections served at once.
    pub max_connections: usize,
    /// The most requests one HTTP/2 connection may have in flight at once.
    pub http2_max_streams: u32,
}

/// Accepts connections until `shutdown` resolves, then shuts down gracefully within
/// `shutdown_timeout`. At most `limits.max_connections` are served at once: further ones wait
/// in the listen backlog until one closes (slow and idle ones are closed by their timeouts),
/// so a flood of idle connections neither exhausts file descriptors nor stops the clients
/// already connected.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
    limits: ConnectionLimits,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0
            && warned_full.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
        {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection cap reached; new connections wait"
            );
            warned_full = Some(Instant::now());
        }
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
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
        let metrics = Arc::clone(&app.mirror.metrics);
        tokio::spawn(async move {
            let _slot = slot;
            metrics.connections_open.inc();
            let activity = Activity::new();
            let stream = Watched::new(stream, Arc::clone(&activity));
            let conn = ConnInfo {
                peer,
                local,
                tls: tls.is_some(),
            };
            let served = match tls {
                None => serve_connection(stream, app, watcher, conn, activity, limits).await,
                Some(tls) => {
                    match tokio::time::timeout(limits.tls_handshake, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, app, watcher, conn, activity, limits).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            metrics
                                .connections_closed
                                .with_label_values(&["tls_handshake_timeout"])
                                .inc();
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.connections_open.dec();
        });
    }
    drop(listener);
    drain(&app, graceful, shutdown_timeout).await;
}

async fn serve_connection<S>(
    stream: S,
    app: Arc<App>,
    watcher: hyper_util::server::graceful::Watcher,
    conn: ConnInfo,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let metrics = Arc::clone(&app.mirror.metrics);
    let watched = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req| {
        let in_flight = watched.begin();
        handle(Arc::clone(&app), req, conn, in_flight)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(limits.http2_max_streams);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = watcher.watch(connection) => served,
        why = watchdog(activity, limits.timeouts) => {
            tracing::debug!(peer = %conn.peer, why, "closing connection");
            metrics.connections_closed.with_label_values(&[match why {
                "idle" => "idle_timeout",
                "send" => "send_timeout",
                _ => "header_timeout",
            }]).inc();
            Ok(())
        }
    }
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
    if let Err(e) = app.mirror.store.save_state().await {
        tracing::warn!(error = %e, "cannot save access times or the index");
    }
}

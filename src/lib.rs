//! regmirror: a pull-through caching mirror for container registries.
//!
//! The pieces, top to bottom (imports run downward only; `docs/architecture.md` tells how a
//! pull, a push and a fill travel through them):
//! - [`http`]: the hyper service, routing and thin handlers, auth, limits, the web UI.
//! - [`maintenance`]: background chores (eviction, GC, upload expiry, the index journal).
//! - [`images`]: whole images (prefetch, export and import bundles).
//! - [`proxy`]: the registry logic (the resolved target, fills, tag TTLs, pushes).
//! - [`upstream`]: the upstream client, auth, routing of names, allowed destinations.
//! - [`cluster`]: what replicas share (keys from the secret, Redis, signed peer reads).
//! - [`metrics`]: every Prometheus metric and the outcome vocabulary.
//! - [`store`]: the content-addressed store, its index, and its backends (fs, S3).
//! - [`config`]: the `mirror.toml` settings; [`oci`]: pure OCI types; [`clock`], [`signing`],
//!   [`units`], [`byte_stream`], [`log_writer`] and [`log_format`].

pub mod byte_stream;
pub(crate) mod clock;
pub mod cluster;
pub mod config;
pub mod http;
pub mod images;
pub mod log_format;
pub mod log_writer;
pub mod maintenance;
pub(crate) mod metrics;
pub mod oci;
pub(crate) mod proxy;
pub(crate) mod signing;
pub mod store;
pub mod units;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use config::Config;
use metrics::Metrics;
use proxy::{Fills, Mirror};
use store::Store;
use upstream::Upstreams;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The bucket cannot be used: missing, unreachable, or the credentials are refused.
    #[error("cannot use the {backend} with {credentials}: {source}")]
    Bucket {
        /// The bucket and endpoint.
        backend: String,
        /// Which credentials were used (an access key id, a file; never a secret).
        credentials: String,
        /// What the object store said.
        source: Box<store::BackendError>,
    },
    /// An upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] http::server::TlsError),
    /// The htpasswd file is unusable.
    #[error(transparent)]
    Htpasswd(#[from] http::htpasswd::HtpasswdError),
    /// A `[[signatures]]` key file is unusable.
    #[error(transparent)]
    SignatureKey(#[from] proxy::SignatureKeyError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks everything `serve` checks before it listens, without opening the store or binding:
/// the TLS certificate and key (readable, and a pair), the htpasswd file, each upstream's
/// client (`ca_file`, password variables), the cluster secret and Redis URL, the bucket's
/// credentials. `regmirror check-config` runs it, so it says "valid" only when `serve` would
/// start.
pub async fn check(config: &Config) -> Result<(), StartError> {
    if let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) {
        http::server::tls_acceptor(cert, key)?;
    }
    load_htpasswd(config).await?;
    proxy::SignatureGate::load(&config.signatures)?;
    Upstreams::new(
        &config.upstreams,
        config.server.offline,
        &Arc::new(Metrics::new()),
    )?;
    cluster::ClusterKeys::from_config(&config.cluster)?;
    config.cluster.redis_url()?;
    match config.storage.backend {
        config::BackendKind::S3 if let Some(s3) = &config.storage.s3 => {
            s3.credentials()?;
        }
        config::BackendKind::Azure if let Some(azure) = &config.storage.azure => {
            azure.resolved_access_key()?;
        }
        _ => {}
    }
    // Builds the bucket's client (reads a GCS credentials file, parses keys) without
    // contacting it.
    if config.storage.backend != config::BackendKind::Fs {
        open_backend(&config.storage, &Metrics::new())?;
    }
    Ok(())
}

/// The htpasswd file `[auth] htpasswd` names, loaded (hashing once: off the async workers).
async fn load_htpasswd(config: &Config) -> Result<Option<http::htpasswd::Htpasswd>, StartError> {
    let Some(path) = config.auth.htpasswd.clone() else {
        return Ok(None);
    };
    let loaded = tokio::task::spawn_blocking(move || http::htpasswd::Htpasswd::load(&path))
        .await
        .map_err(|e| {
            StartError::Htpasswd(http::htpasswd::HtpasswdError::Read {
                path: "htpasswd".into(),
                source: std::io::Error::other(e),
            })
        })??;
    Ok(Some(loaded))
}

/// Builds the mirror (store, upstream clients, fills, metrics) for a server, which owns the
/// store's temp files.
pub async fn build_mirror(config: &Config) -> Result<Arc<Mirror>, StartError> {
    open_mirror(config, true).await
}

/// Builds the mirror for a command (`gc`, `export`, `import`, `prefetch`) that may run beside
/// a server: it leaves the server's temp files alone.
pub async fn build_mirror_for_command(config: &Config) -> Result<Arc<Mirror>, StartError> {
    open_mirror(config, false).await
}

async fn open_mirror(config: &Config, owns_tmp: bool) -> Result<Arc<Mirror>, StartError> {
    let metrics = Arc::new(Metrics::new());
    let storage = &config.storage;
    let backend = open_backend(storage, &metrics)?;
    if !backend.lists_cheaply() {
        // Refused credentials or a missing bucket stop the start, saying which bucket and
        // key, rather than fail at the first pull. A store that does not answer (an outage)
        // does not: a server starts, serves degraded and loads the store when it is back.
        match backend.check().await {
            Ok(()) => {}
            Err(e) if e.is_unavailable() && owns_tmp => {
                tracing::warn!(backend = %backend.describe(), error = %e, "the object store does not answer; starting anyway (not ready until it does)");
            }
            Err(source) => {
                return Err(StartError::Bucket {
                    backend: backend.describe(),
                    credentials: storage.credentials_in_use(),
                    source: Box::new(source),
                });
            }
        }
    }
    let options = store::StoreOptions {
        index_bytes: storage.index_memory_mib * 1024 * 1024,
        hot_cache_bytes: storage.cache_size.0,
        redirect: storage.redirect(),
        seal_key: shared_seal_key(&config.cluster)?,
    };
    let opened = if owns_tmp {
        Store::open(backend, &storage.path, options).await
    } else {
        Store::open_shared(backend, &storage.path, options).await
    };
    let store = Arc::new(opened?);
    let upstreams = Upstreams::new(&config.upstreams, config.server.offline, &metrics)?;
    let fills = Fills::new(
        Arc::clone(&store),
        Arc::clone(&metrics),
        storage.max_upload_size.0,
        !storage.verify_reads,
    );
    let signatures = proxy::SignatureGate::load(&config.signatures)?;
    Ok(Arc::new(
        Mirror::new(store, upstreams, fills, metrics).with_signatures(signatures),
    ))
}

/// The blob seal key the replicas share, derived from the cluster secret; `None` without one
/// (the store keeps a key of its own directory).
fn shared_seal_key(cluster: &config::ClusterConfig) -> Result<Option<store::SealKey>, StartError> {
    let keys = cluster::ClusterKeys::from_config(cluster)?;
    Ok(keys
        .is_shared()
        .then(|| store::SealKey::derive(&keys.derive("blob-seal"))))
}

/// The backend `[storage]` names, its requests counted in `metrics`.
fn open_backend(
    storage: &config::StorageConfig,
    metrics: &Metrics,
) -> Result<Arc<dyn store::Backend>, StartError> {
    use store::backend::Measured;
    let measured = metrics.backend.clone();
    match (storage.backend, &storage.s3) {
        (config::BackendKind::S3, Some(s3)) => {
            let (access_key_id, secret_access_key) = s3.credentials()?;
            let backend = store::S3Backend::s3(store::S3Settings {
                bucket: s3.bucket.clone(),
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                prefix: s3.prefix.clone(),
                access_key_id,
                secret_access_key,
            })
            .map_err(store::StoreError::from)?;
            Ok(Arc::new(Measured::new(backend, measured)))
        }
        (config::BackendKind::Gcs, _) if let Some(gcs) = &storage.gcs => {
            let backend = store::backend::GcsBackend::gcs(store::backend::GcsSettings {
                bucket: gcs.bucket.clone(),
                prefix: gcs.prefix.clone(),
                credentials_file: gcs.credentials_file.clone(),
            })
            .map_err(store::StoreError::from)?;
            Ok(Arc::new(Measured::new(backend, measured)))
        }
        (config::BackendKind::Azure, _) if let Some(azure) = &storage.azure => {
            let backend = store::backend::AzureBackend::azure(store::backend::AzureSettings {
                account: azure.account.clone(),
                container: azure.container.clone(),
                prefix: azure.prefix.clone(),
                access_key: azure.resolved_access_key()?,
                endpoint: azure.endpoint.clone(),
            })
            .map_err(store::StoreError::from)?;
            Ok(Arc::new(Measured::new(backend, measured)))
        }
        _ => {
            let root = &storage.path;
            let backend = store::FsBackend::new(root, &root.join("tmp"));
            Ok(Arc::new(Measured::new(backend, measured)))
        }
    }
}

/// How the other replicas reach this one: `[cluster] advertise_url`, else the listen address
/// when it is a specific one, else `POD_IP` (Kubernetes) with the listen port.
fn advertise_url(config: &Config, listening: SocketAddr) -> Option<String> {
    if let Some(url) = &config.cluster.advertise_url {
        return Some(url.as_str().trim_end_matches('/').to_owned());
    }
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    if !listening.ip().is_unspecified() {
        return Some(format!("{scheme}://{listening}"));
    }
    let ip: std::net::IpAddr = std::env::var("POD_IP").ok()?.parse().ok()?;
    Some(format!(
        "{scheme}://{}",
        SocketAddr::new(ip, listening.port())
    ))
}

/// A running server.
pub struct Server {
    /// The address it listens on (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// The mirror it serves.
    pub mirror: Arc<Mirror>,
    readiness: Arc<http::Readiness>,
    shutdown_delay: std::time::Duration,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Shuts down gracefully: serves on for `shutdown_delay` with `/readyz` answering 503, then
    /// stops accepting connections, waits for responses and fills in flight (up to
    /// `shutdown_timeout`), and removes temp files.
    pub async fn stop(mut self) {
        if !self.shutdown_delay.is_zero() {
            // Still serving, but out of the load balancer's rotation: it stops sending new
            // requests before the listener closes.
            self.readiness.start_draining();
            tracing::info!(delay = ?self.shutdown_delay, "draining: /readyz answers 503");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops (it only stops through [`Server::stop`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds `config.server.listen` and serves in a background task.
pub async fn start(config: &Config) -> Result<Server, StartError> {
    let mirror = build_mirror(config).await?;
    let htpasswd = load_htpasswd(config).await?;
    let keys = cluster::ClusterKeys::from_config(&config.cluster)?;
    if !keys.is_shared() && mirror.store.is_remote() {
        tracing::info!(
            "no [cluster] secret: tokens, upload sessions and blob seals are this replica's own; set one to run several replicas on the bucket"
        );
    }
    // Access rules are matched against the one name a request's repository resolves to: their
    // patterns are read in the same terms, once.
    let mut auth_config = config.auth.clone();
    for rule in &mut auth_config.access {
        for pattern in &mut rule.repositories {
            *pattern = proxy::target::canonical_pattern(pattern, &mirror.upstreams);
        }
    }
    let auth = http::auth::Authenticator::new(&auth_config, htpasswd, keys.derive("token"));
    let readiness = Arc::new(http::Readiness::default());
    let app = Arc::new(http::App {
        mirror: Arc::clone(&mirror),
        auth,
        delete_enabled: config.storage.delete,
        uploads: store::UploadLimits {
            max_blob: config.storage.max_upload_size.0,
            max_total: config.storage.max_uploads_size.0,
            max_sessions_per_client: config.storage.max_upload_sessions_per_client,
            max_chunks: config.storage.max_upload_chunks,
            session_ttl: config.storage.upload_ttl,
        },
        upload_signer: http::uploads::UploadSigner::new(keys.derive("upload")),
        public_url: config.server.public_url.as_ref().map(|u| u.to_string()),
        trusted_proxies: config.server.trusted_proxies.clone(),
        blob_readers: Arc::new(tokio::sync::Semaphore::new(config.server.max_blob_readers)),
        blob_reader_wait: config.server.send_timeout,
        readiness: Arc::clone(&readiness),
        body_idle_timeout: config.server.body_idle_timeout,
    });
    if !mirror.store.is_loaded() {
        mirror.metrics.store_available.set(0);
    }
    mirror.metrics.store_max_bytes.set(
        config
            .storage
            .max_size
            .map_or(0, |m| i64::try_from(m.0).unwrap_or(i64::MAX)),
    );
    let fd_limit = http::limits::raise_fd_limit();
    let limits = http::server::ConnectionLimits {
        timeouts: http::limits::ConnectionTimeouts {
            header_read: config.server.header_read_timeout,
            idle: config.server.idle_timeout,
            send: config.server.send_timeout,
        },
        tls_handshake: config.server.tls_handshake_timeout,
        http2_max_streams: config.server.http2_max_streams,
        max_connections: config
            .server
            .max_connections
            .unwrap_or_else(|| http::limits::default_max_connections(fd_limit)),
    };
    tracing::info!(
        fd_limit,
        max_connections = limits.max_connections,
        "connection limits"
    );
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    if let Some(redis_url) = &config.cluster.redis_url()? {
        let advertise = advertise_url(config, addr);
        let scope = config.storage.scope();
        mirror.metrics.register_redis_up();
        let coordinator = cluster::Coordinator::connect(
            redis_url,
            &scope,
            mirror.store.replica_id(),
            advertise,
            keys.derive("member"),
        )?
        .with_gauge(mirror.metrics.redis_up.clone());
        let peers = cluster::Peers::new(keys.derive("peer"));
        mirror.join_cluster(Arc::new(coordinator), Arc::new(peers));
    }
    let (tx, rx) = oneshot::channel::<()>();
    let background = maintenance::spawn(&mirror, &config.storage);
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(http::server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let shutdown_timeout = config.server.shutdown_timeout;
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        http::server::serve(listener, app, tls, shutdown, shutdown_timeout, limits).await;
        for task in background {
            task.abort();
        }
    });
    Ok(Server {
        addr,
        mirror,
        readiness,
        shutdown_delay: config.server.shutdown_delay,
        shutdown: Some(tx),
        task,
    })
}

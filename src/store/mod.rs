//! The store: a content-addressed blob store, tag records and manifest metadata, with a moka
//! index in front. It knows nothing of HTTP or upstreams, and nothing of where bytes live: a
//! [`Backend`] (a directory, or an S3 bucket) keeps the objects under these keys:
//! ```text
//! blobs/<algorithm>/ab/<hex>         layers, configs and manifests, only ever complete and
//!                                   verified (algorithm: sha256 or sha512)
//! meta/<algorithm>/ab/<hex>.json    media type of a manifest blob
//! tags/<upstream>/<repo>/_tags/<tag>.json   tag records (`_local` for pushed tags)
//! pins/<algorithm>/ab/<hex>/<holder>  pushed content, never evicted: one object per repository
//!                                   that holds it (pushed, or referenced by a pushed manifest)
//! referrers/<algorithm>/ab/<subject hex>/<referrer hex>.json   referrers API index
//! deleted/<algorithm>/ab/<hex>/<holder>   a repository deleted a blob others still hold
//! access.json                       last access times, saved now and then
//! _index/                           the index of a remote backend (see `index`)
//! _uploads/<uuid>/                  a remote backend's push sessions, which every replica
//!                                   can continue (see `shared_uploads`)
//! ```
//! (`keys` codes this layout, and nothing else does.)
//!
//! What is always local, under the staging directory (`[storage] path`):
//! ```text
//! tmp/                              spools and temp files; emptied at start
//! uploads/<uuid>/{repo,owner,data}  push sessions (with a remote backend: local copies of
//!                                   the sessions in `_uploads/`, see `shared_uploads`)
//! cache/                            the hot cache of a remote backend (see `hot`)
//! ```
//! With the filesystem backend the staging directory is the backend's directory too.

pub mod backend;
mod blobs;
mod gc;
mod hot;
mod index;
mod keys;
mod lease;
mod local;
pub mod reads;
mod seal;
mod shared_uploads;
mod tags;
mod uploads;
mod usage;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;

use crate::oci::Digest;

pub use backend::{Backend, BackendError, FsBackend, S3Backend, S3Settings};
pub use blobs::{OpenBlob, Spool, VerifiedSpool};
pub use gc::{EvictionReport, GcReport};
pub use hot::HotCacheStats;
pub use local::{IMPORT_HOLDER, LOCAL, Referrer};
pub use reads::BlobReader;
pub use seal::SealKey;
pub use tags::{TagKey, TagRecord};
pub use uploads::{UploadError, UploadId, UploadLimits};
pub use usage::{BlobEntry, ReadGuard};

/// What the store asks of the other replicas, when there are any (implemented over Redis by
/// `cluster::Coordinator`); `None` answers mean "no one to ask", and the store does alone.
#[async_trait::async_trait]
pub trait ClusterLink: Send + Sync {
    /// Tells the other replicas that the index journal has a new entry.
    async fn announce_change(&self);
    /// Whether this replica holds (or has just taken) the lease `name` for `ttl`.
    async fn lease(&self, name: &str, ttl: Duration) -> Option<bool>;
    /// Records that `owner` opened upload session `id`, counted until it closes or `ttl`
    /// passes; how many sessions `owner` has open over the cluster, this one included.
    async fn open_session(&self, owner: &str, id: &str, ttl: Duration) -> Option<usize>;
    /// Records that `owner`'s upload session `id` ended.
    async fn close_session(&self, owner: &str, id: &str);
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local (staging) file operation failed.
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The object store has not answered since the server started, so the index of what it
    /// holds is not loaded yet: nothing that needs it (GC, eviction) may run.
    #[error("the object store has not answered since start; its index is not loaded yet")]
    NotLoaded,
    /// Bytes offered for a digest hash to something else; nothing was kept.
    #[error("content does not match its digest: {0}")]
    DigestMismatch(#[from] crate::oci::DigestMismatch),
    /// A stored record could not be decoded.
    #[error("corrupt record {key}: {message}")]
    Corrupt {
        /// The object's key.
        key: String,
        /// The decoder's message.
        message: String,
    },
}

impl StoreError {
    /// Whether the object store is unavailable (an outage to ride out, not a refusal).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Backend(e) => e.is_unavailable(),
            StoreError::NotLoaded => true,
            _ => false,
        }
    }

    /// Whether the disk (or the user's quota) is full.
    pub(crate) fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        let source = match self {
            StoreError::Io { source, .. } => source,
            StoreError::Backend(e) => match e.io() {
                Some(source) => source,
                None => return false,
            },
            _ => return false,
        };
        matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
            || source.kind() == io::ErrorKind::StorageFull
    }
}

/// Shorthand for results of this layer.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Attaches a path to an `io::Error`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A manifest read from the store.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// Exactly the bytes received from the upstream or client.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The memory the moka index may use.
    pub index_bytes: u64,
    /// With a remote backend: the bytes the local hot cache may hold.
    pub hot_cache_bytes: u64,
    /// With a remote backend that can presign: blob GETs are redirected to the bucket.
    pub redirect: bool,
    /// With a remote backend: the key that seals blobs committed to it (see `seal`), derived
    /// from the cluster secret; `None` keeps one in `seal.key` in the local directory.
    pub seal_key: Option<SealKey>,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    backend: Arc<dyn Backend>,
    /// The local directory: spools, uploads, and the hot cache.
    staging: PathBuf,
    /// The local copies of a remote backend's blobs (`None` when the backend is local).
    hot: Option<hot::HotCache>,
    /// What the backend holds, without asking it (see `index`).
    index: index::Index,
    /// With a remote backend: seals blobs as they are committed and checks them as they are
    /// read back (see `seal`).
    seal_key: Option<SealKey>,
    redirect: bool,
    usage: usage::Usage,
    /// Notified whenever a blob is added, so eviction runs promptly.
    grew: tokio::sync::Notify,
    /// Tag records, and tags known to be absent. Entries expire after a minute so that changes
    /// made by another process (`regmirror import` beside a server) are seen.
    tags: Cache<TagKey, Option<Arc<TagRecord>>, ahash::RandomState>,
    manifests: Cache<Digest, Arc<StoredManifest>, ahash::RandomState>,
    /// Who holds pins on a manifest, for deciding which repositories see it (see
    /// [`Store::holders_cached`]).
    holders: Cache<Digest, Arc<Vec<String>>, ahash::RandomState>,
    /// What unfinished uploads hold.
    uploads: Mutex<uploads::UploadBook>,
    /// Spool files being written: GC leaves them alone.
    live_spools: Arc<Mutex<HashSet<PathBuf>>>,
    /// This process's id among the replicas sharing a bucket (leases).
    replica: String,
    /// The other replicas, once the server has connected to them.
    link: Arc<std::sync::OnceLock<Arc<dyn ClusterLink>>>,
    /// The object store's outage in progress: since when (ms) and why.
    outage: Mutex<Option<(u64, String)>>,
}

/// The seal key given, else the local directory's own (made at the first start). A local key
/// that cannot be read or made costs speed, not correctness: blobs are then committed unsealed
/// and read back against their digests.
fn open_seal_key(given: Option<SealKey>, staging: &Path) -> Option<SealKey> {
    if given.is_some() {
        return given;
    }
    let path = staging.join("seal.key");
    match SealKey::load_or_create(&path) {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no blob seal key: blobs read back from the bucket are hashed with their digests' algorithm");
            None
        }
    }
}

/// How long the replica folding the index journal holds that chore (renewed every minute).
const INDEX_LEASE: Duration = Duration::from_secs(150);

/// How long the holders of a manifest are remembered. Pins this replica changes are seen at
/// once; another replica's within this time.
const HOLDERS_TTL: Duration = Duration::from_secs(2);

/// Manifests up to this size are kept in memory by the index.
const MAX_INDEXED_MANIFEST: usize = 256 * 1024;

impl Store {
    /// Opens the store for a server, removing temp files a previous run left.
    pub(crate) async fn open(
        backend: Arc<dyn Backend>,
        staging: &Path,
        options: StoreOptions,
    ) -> Result<Store> {
        let store = Store::open_as(backend, staging, options, true).await?;
        store.clean_tmp().await?;
        Ok(store)
    }

    /// Opens the store without touching `tmp/`, for maintenance commands that may run beside a
    /// server (`gc`, `import`, `export`, `prefetch`): what they change reaches the server
    /// through the index journal.
    pub(crate) async fn open_shared(
        backend: Arc<dyn Backend>,
        staging: &Path,
        options: StoreOptions,
    ) -> Result<Store> {
        Store::open_as(backend, staging, options, false).await
    }

    async fn open_as(
        backend: Arc<dyn Backend>,
        staging: &Path,
        options: StoreOptions,
        server: bool,
    ) -> Result<Store> {
        for dir in ["tmp", "uploads"] {
            let path = staging.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(io_err(&path))?;
        }
        let hot = if backend.lists_cheaply() {
            None
        } else {
            Some(hot::HotCache::open_dir(&staging.join("cache"), options.hot_cache_bytes).await?)
        };
        let seal_key = match &hot {
            Some(_) => open_seal_key(options.seal_key, staging),
            None => None,
        };
        let index_bytes = options.index_bytes;
        let link: Arc<std::sync::OnceLock<Arc<dyn ClusterLink>>> = Arc::default();
        let store = Store {
            index: index::Index::load(backend.as_ref(), Arc::clone(&link), server).await?,
            backend,
            staging: staging.to_owned(),
            hot,
            seal_key,
            redirect: options.redirect,
            usage: usage::Usage::default(),
            grew: tokio::sync::Notify::new(),
            tags: Cache::builder()
                .max_capacity(index_bytes / 4 / 256)
                .time_to_live(Duration::from_secs(60))
                .build_with_hasher(ahash::RandomState::new()),
            manifests: Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| {
                    u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
                })
                .max_capacity(index_bytes / 2)
                .build_with_hasher(ahash::RandomState::new()),
            holders: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(HOLDERS_TTL)
                .build_with_hasher(ahash::RandomState::new()),
            uploads: Mutex::default(),
            live_spools: Arc::default(),
            replica: uuid::Uuid::new_v4().to_string(),
            link,
            outage: Mutex::default(),
        };
        match store.load_access().await {
            // Loaded with the index, once the object store answers.
            Err(e) if e.is_unavailable() && !store.index.is_loaded() => {}
            loaded => loaded?,
        }
        store.load_uploads().await?;
        Ok(store)
    }

    /// Connects the store to the other replicas (once; later calls are ignored).
    pub(crate) fn set_cluster_link(&self, link: Arc<dyn ClusterLink>) {
        let _ = self.link.set(link);
    }

    /// Waits until a blob is added.
    pub(crate) async fn grown(&self) {
        self.grew.notified().await;
    }

    /// Where temp files and spools live.
    fn tmp_dir(&self) -> PathBuf {
        self.staging.join("tmp")
    }

    /// Removes every file in `tmp/` (at start: what a run that died mid-write left; at
    /// shutdown: spools of downloads that could not finish).
    pub(crate) async fn remove_temp_files(&self) -> Result<()> {
        self.clean_tmp().await
    }

    /// Removes every leftover temp file: anything in `tmp/` at start is from a run that died
    /// mid-write and was never renamed into place.
    async fn clean_tmp(&self) -> Result<()> {
        let dir = self.tmp_dir();
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io_err(&dir))?;
        let mut removed = 0u32;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            let path = entry.path();
            tokio::fs::remove_file(&path).await.map_err(io_err(&path))?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftover temp files from an earlier run");
        }
        Ok(())
    }

    /// Whether the store can take writes: the staging directory, and the backend (for a bucket:
    /// reachable, the credentials work, writes are accepted).
    pub(crate) async fn check_writable(&self) -> Result<()> {
        let path = self.temp_path("ready");
        let local = tokio::fs::write(&path, b"ok").await.map_err(io_err(&path));
        let _ = tokio::fs::remove_file(&path).await;
        local?;
        if !self.backend.lists_cheaply() {
            self.backend.check().await?;
        }
        Ok(())
    }

    /// A path for a new temp file.
    fn temp_path(&self, purpose: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{purpose}-{}-{n}", std::process::id()))
    }

    /// Reads a small object, mapping "not there" to `None`.
    async fn get_object(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.backend.get(key).await?)
    }

    /// Writes a small object whole.
    async fn put_object(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        Ok(self.backend.put(key, bytes.into()).await?)
    }

    /// Removes an object; whether it existed.
    async fn delete_object(&self, key: &str) -> Result<bool> {
        Ok(self.backend.delete(key).await?)
    }

    /// Saves what is only in memory so far: access times, and a remote backend's index
    /// (folding its journal into one snapshot).
    pub(crate) async fn save_state(&self) -> Result<()> {
        self.save_access().await?;
        let synced = if self.hold_lease("index", INDEX_LEASE).await? {
            self.index.save(self.backend.as_ref()).await?
        } else {
            self.index.sync(self.backend.as_ref()).await?
        };
        self.forget_changed(synced);
        Ok(())
    }

    /// Applies what other replicas changed in the bucket since this one last looked (tags
    /// pushed or deleted, blobs deleted), dropping what this replica cached of it.
    pub(crate) async fn sync_index(&self) -> Result<()> {
        let was_loaded = self.index.is_loaded();
        let synced = self.index.sync(self.backend.as_ref()).await?;
        self.forget_changed(synced);
        if !was_loaded && self.index.is_loaded() {
            self.load_access().await?;
        }
        Ok(())
    }

    /// Notes that the object store failed as in an outage; whether this began one (so that
    /// it is logged once per incident, not per request).
    pub(crate) fn note_outage(&self, e: &StoreError) -> bool {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let began = outage.is_none();
        if began {
            *outage = Some((crate::clock::now_ms(), e.to_string()));
        }
        began
    }

    /// Notes that the object store took a write again; whether this ended an outage.
    pub(crate) fn note_recovered(&self) -> bool {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }

    /// The outage in progress: since when (ms since the epoch) and the first error.
    pub(crate) fn outage(&self) -> Option<(u64, String)> {
        self.outage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the index of what the store holds is loaded (a server whose object store did
    /// not answer at start runs without it until the store answers).
    pub(crate) fn is_loaded(&self) -> bool {
        self.index.is_loaded()
    }

    fn forget_changed(&self, synced: index::Synced) {
        let changes = match synced {
            index::Synced::Changes(changes) => changes,
            index::Synced::Reloaded => {
                self.tags.invalidate_all();
                self.manifests.invalidate_all();
                return;
            }
        };
        for change in changes {
            match change {
                index::Change::AddTag { place } | index::Change::RemoveTag { place } => {
                    if let Some(key) = keys::tag_key_of(&place) {
                        self.tags.invalidate(&key);
                    }
                }
                index::Change::RemoveBlob { digest } | index::Change::Tombstone { digest } => {
                    if let Ok(digest) = digest.parse::<Digest>() {
                        self.manifests.invalidate(&digest);
                        if let Some(hot) = &self.hot
                            && self.index.blob(&digest).is_none()
                        {
                            hot.remove(&digest);
                        }
                    }
                }
                index::Change::AddBlob { .. } => {}
            }
        }
    }
}

//! The disk store: a content-addressed blob store, tag records and manifest metadata, with a
//! moka index in front. It knows nothing of HTTP or upstreams.
//!
//! Layout under the root:
//! ```text
//! blobs/<algorithm>/ab/<hex>         layers, configs and manifests, only ever complete and
//!                                   verified (algorithm: sha256 or sha512)
//! meta/<algorithm>/ab/<hex>.json    media type of a manifest blob
//! tags/<upstream>/<repo>/_tags/<tag>.json   tag records (`_local` for pushed tags)
//! pins/<algorithm>/ab/<hex>/<holder>  pushed content, never evicted: one file per repository
//!                                   that holds it (pushed, or referenced by a pushed manifest)
//! referrers/<algorithm>/ab/<subject hex>/<referrer hex>.json   referrers API index
//! deleted/<algorithm>/ab/<hex>/<holder>   a repository deleted a blob others still hold
//! uploads/<uuid>/{repo,data}        push sessions
//! tmp/                              spools and temp files; emptied at start
//! ```

mod blobs;
mod gc;
mod local;
pub mod reads;
mod tags;
mod uploads;
mod usage;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use crate::oci::Digest;
use crate::oci::digest::Algorithm;

pub use blobs::{Spool, VerifiedSpool};
pub use gc::{EvictionReport, GcReport};
pub use local::{IMPORT_HOLDER, LOCAL, Referrer};
pub use tags::{TagKey, TagRecord};
pub use uploads::{UploadError, UploadId, UploadLimits};
pub use usage::{BlobEntry, ReadGuard};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("store I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Bytes offered for a digest hash to something else; nothing was kept.
    #[error("content does not match digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was offered as.
        expected: Digest,
        /// The digest of the bytes.
        actual: Digest,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
}

impl StoreError {
    /// Whether the disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        matches!(self, StoreError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT))
                || source.kind() == io::ErrorKind::StorageFull)
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

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    root: PathBuf,
    usage: usage::Usage,
    /// Notified whenever a blob is added, so eviction runs promptly.
    grew: tokio::sync::Notify,
    /// Tag records, and tags known to be absent. Entries expire after a minute so that changes
    /// made by another process (`regmirror import` beside a server) are seen.
    tags: Cache<TagKey, Option<TagRecord>>,
    blob_sizes: Cache<Digest, u64>,
    manifests: Cache<Digest, Arc<StoredManifest>>,
    /// What unfinished uploads hold.
    uploads: std::sync::Mutex<uploads::UploadBook>,
    /// Blobs that some repository deleted while others still hold them (see
    /// [`Store::mark_deleted`]): checked in memory first, so reads of other blobs pay nothing.
    tombstoned: std::sync::Mutex<std::collections::HashSet<Digest>>,
}

/// Manifests up to this size are kept in memory by the index.
const MAX_INDEXED_MANIFEST: usize = 256 * 1024;

impl Store {
    /// Opens (creating if needed) the store at `root` for a server, removing temp files a
    /// previous run left. `index_bytes` bounds the memory the index may use.
    pub async fn open(root: &Path, index_bytes: u64) -> Result<Store> {
        let store = Store::open_shared(root, index_bytes).await?;
        store.clean_tmp().await?;
        Ok(store)
    }

    /// Opens the store without touching `tmp/`, for maintenance commands that may run beside a
    /// server (`gc`, `import`, `export`).
    pub async fn open_shared(root: &Path, index_bytes: u64) -> Result<Store> {
        let per_algorithm = ["blobs", "meta", "pins", "deleted"]
            .iter()
            .flat_map(|area| Algorithm::ALL.map(|a| format!("{area}/{}", a.name())));
        let plain = ["tags", "tmp", "uploads"].map(str::to_owned);
        for dir in per_algorithm.chain(plain) {
            let path = root.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(io_err(&path))?;
        }
        let store = Store {
            root: root.to_owned(),
            usage: usage::Usage::default(),
            grew: tokio::sync::Notify::new(),
            tags: Cache::builder()
                .max_capacity(index_bytes / 4 / 256)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            blob_sizes: Cache::builder().max_capacity(index_bytes / 4 / 128).build(),
            manifests: Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| {
                    u32::try_from(m.bytes.len() + 256).unwrap_or(u32::MAX)
                })
                .max_capacity(index_bytes / 2)
                .build(),
            uploads: std::sync::Mutex::default(),
            tombstoned: std::sync::Mutex::default(),
        };
        store.load_usage().await?;
        store.load_uploads().await?;
        store.load_tombstones().await?;
        Ok(store)
    }

    /// Where `area` (`blobs`, `meta`, `pins`, `referrers`) keeps what belongs to `digest`:
    /// `<area>/<algorithm>/<first 2 hex>/<hex>`.
    fn digest_path(&self, area: &str, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(area)
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// Every entry `<area>/<algorithm>/<2 hex>/<hex>` whose name is a valid digest, turned into
    /// a `T` by `keep` (or left out with `None`), listed on the blocking pool. Any I/O error
    /// is an error (callers that delete must not guess); with `strict = false`, stray files
    /// where a `<2 hex>` directory belongs are passed over instead.
    pub(crate) async fn digest_entries<T, F>(
        &self,
        area: &'static str,
        strict: bool,
        keep: F,
    ) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(&std::fs::DirEntry, Digest) -> io::Result<Option<T>> + Send + 'static,
    {
        let root = self.root.join(area);
        let walk =
            {
                let root = root.clone();
                move || -> io::Result<Vec<T>> {
                    let mut out = Vec::new();
                    for algorithm in Algorithm::ALL {
                        for prefix in std::fs::read_dir(root.join(algorithm.name()))? {
                            let prefix = prefix?;
                            if !strict && !prefix.file_type()?.is_dir() {
                                continue;
                            }
                            for entry in std::fs::read_dir(prefix.path())? {
                                let entry = entry?;
                                let Some(digest) = entry.file_name().to_str().and_then(|name| {
                                    Digest::from_parts(algorithm.name(), name).ok()
                                }) else {
                                    continue;
                                };
                                out.extend(keep(&entry, digest)?);
                            }
                        }
                    }
                    Ok(out)
                }
            };
        tokio::task::spawn_blocking(walk)
            .await
            .map_err(|e| StoreError::Io {
                path: root.clone(),
                source: io::Error::other(e),
            })?
            .map_err(io_err(&root))
    }

    /// Waits until a blob is added.
    pub async fn grown(&self) {
        self.grew.notified().await;
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where temp files and spools live.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Removes every file in `tmp/` (at start: what a run that died mid-write left; at
    /// shutdown: spools of downloads that could not finish).
    pub async fn remove_temp_files(&self) -> Result<()> {
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

    /// Writes, syncs and removes a small file in `tmp/`: whether the store can take writes.
    pub async fn check_writable(&self) -> Result<()> {
        let path = self.temp_path("ready");
        let result = self.write_atomic(&path, b"ok").await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }

    /// A path for a new temp file.
    fn temp_path(&self, purpose: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{purpose}-{}-{n}", std::process::id()))
    }

    /// Writes `bytes` to `path` atomically: temp file, fsync, rename.
    pub(crate) async fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        // One trip to the blocking pool for the whole sequence, not one per call: a cold
        // manifest writes three files on the client's path.
        let tmp = self.temp_path("write");
        let (target, bytes) = (path.to_owned(), bytes.to_vec());
        tokio::task::spawn_blocking(move || write_atomic_blocking(&tmp, &target, &bytes))
            .await
            .map_err(|e| StoreError::Io {
                path: path.to_owned(),
                source: io::Error::other(e),
            })?
    }
}

/// Writes `bytes` to `tmp`, syncs it and renames it to `path`; removes `tmp` on failure.
fn write_atomic_blocking(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let result = (|| {
        let mut file = std::fs::File::create(tmp).map_err(io_err(tmp))?;
        file.write_all(bytes).map_err(io_err(tmp))?;
        file.sync_all().map_err(io_err(tmp))?;
        std::fs::rename(tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Reads a file, mapping "not found" to `None`.
async fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

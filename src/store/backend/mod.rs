//! Storage backends: the only code that knows whether the store's bytes live in files or in a
//! bucket. The store (the domain layer above) speaks in keys such as
//! `blobs/sha256/ab/<hex>` or `tags/docker.io/library/alpine/_tags/3.20.json`; a backend keeps
//! the objects under those keys, in the spirit of Distribution's `storagedriver`.
//!
//! Every object is written whole or not at all: small ones with [`Backend::put`], blobs from a
//! verified local file with [`Backend::commit_file`]. Nothing a reader can see is ever partial.

pub mod azure;
pub mod bucket;
pub mod fs;
pub mod gcs;
mod measured;
mod read_ahead;
pub mod s3;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::byte_stream::ByteStream;

pub use azure::{AzureBackend, AzureSettings};
pub use bucket::{BucketBackend, BucketPlace};
pub use fs::FsBackend;
pub use gcs::{GcsBackend, GcsSettings};
pub use measured::{BackendMetrics, Measured};
pub use s3::{S3Backend, S3Settings};

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A local file operation failed.
    #[error("{op} {key}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The key (or local path) concerned.
        key: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The object store answered with a definite refusal (credentials, permissions, a
    /// missing bucket): a configuration to fix, not an outage to wait out.
    #[error("{op} {key} in bucket {bucket}: {message}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What the object store said.
        message: String,
    },
    /// The object store could not be reached or could not answer (connection refused, a
    /// 5xx such as a lost quorum, a timeout), even after a few retries: an outage, which the
    /// mirror rides out (pass-through, readiness, retries in the background).
    #[error("{op} {key} in bucket {bucket}: the object store is unavailable: {message}")]
    Unavailable {
        /// What was being done.
        op: &'static str,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// An entry where the store's layout has none (a file where a directory belongs).
    #[error("unexpected entry {0} in the store")]
    Layout(String),
}

impl BackendError {
    /// Whether this is an outage of the object store (to ride out) rather than a refusal or
    /// a local error.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }

    /// The OS error, when the failure was a local file operation.
    pub fn io(&self) -> Option<&std::io::Error> {
        match self {
            BackendError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand for backend results.
pub type Result<T> = std::result::Result<T, BackendError>;

/// An object as listed or stat'ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, in milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// What [`Backend::commit_file`] did with the local file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The file itself became the object (renamed into place): it is gone from its old path.
    Moved,
    /// The object is a copy of the file (uploaded); the file is still where it was.
    Copied,
}

/// Where a store's objects live.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `fs`, `s3`, `gcs` or `azure`, for metrics and logs.
    fn kind(&self) -> &'static str;

    /// A short description for start-up logs and errors (a directory, a bucket).
    fn describe(&self) -> String;

    /// Whether listing every object is cheap enough to do at each start (a local directory),
    /// so the store may rebuild its index from a listing instead of keeping one.
    fn lists_cheaply(&self) -> bool;

    /// The object's bytes, or `None` if there is no such object.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Writes a small object whole (atomically: readers see the old or the new bytes).
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()>;

    /// The object's size and write time, or `None`.
    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Removes an object; whether it existed (`true` when the backend cannot tell).
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Removes every object under `prefix` (which ends with `/`).
    async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for object in self.list(prefix).await? {
            self.delete(&object.key).await?;
        }
        Ok(())
    }

    /// Every object under `prefix` (which ends with `/`, or is empty for all), at any depth.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Makes the complete, verified local file `file` the object `key`, in one step: the
    /// object appears whole or not at all, even if the process dies midway.
    async fn commit_file(&self, key: &str, file: &Path) -> Result<Committed>;

    /// Opens the object as a local file, when the backend keeps its objects in files (the
    /// page-cache fast path); `None` when it does not have the object or is not local.
    async fn open_local(&self, key: &str) -> Result<Option<(std::fs::File, u64)>>;

    /// Streams the object from byte `from` on; `None` if there is no such object.
    async fn read(&self, key: &str, from: u64) -> Result<Option<ByteStream>>;

    /// Streams an object the caller knows to be `size` bytes long (a blob the index lists) from
    /// byte `from` on, as [`Backend::read`]; a bucket splits a large one into ranged GETs run
    /// side by side. `None` if the backend does not have it.
    async fn read_sized(&self, key: &str, from: u64, _size: u64) -> Result<Option<ByteStream>> {
        self.read(key, from).await
    }

    /// A URL a client may GET the object from directly for `ttl`, when the backend can give
    /// one (a presigned bucket URL).
    async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>>;

    /// Whether the backend is reachable and takes writes (readiness).
    async fn check(&self) -> Result<()>;

    /// Aborts uploads that were started more than `older_than` ago and never finished (what a
    /// process killed mid-commit leaves behind); how many.
    async fn abort_stray_uploads(&self, older_than: Duration) -> Result<u64>;
}

pub(crate) use crate::clock::epoch_ms;

/// A bucket prefix as keys are written under it: without leading or trailing `/`, then one
/// `/` (or nothing at all).
fn key_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// How a bucket backend names itself in logs and errors:
/// `<kind> bucket <bucket> at <location>[ under <prefix>/]`.
fn describe_bucket(kind: &str, bucket: &str, location: &str, prefix: &str) -> String {
    let prefix = key_prefix(prefix);
    let under = if prefix.is_empty() {
        String::new()
    } else {
        format!(" under {prefix}")
    };
    format!("{kind} bucket {bucket} at {location}{under}")
}

/// Reads `len` bytes of `file` at `offset` on the blocking pool (a part of a blob to upload).
async fn read_file_part(
    file: std::sync::Arc<std::fs::File>,
    offset: u64,
    len: usize,
) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The readiness probe of a remote backend: a write, a read and a delete of a scratch
/// object, so that a bucket that exists but refuses writes is not ready.
async fn probe(backend: &dyn Backend) -> Result<()> {
    let key = format!("_ready/{}", uuid::Uuid::new_v4());
    backend.put(&key, Bytes::from_static(b"ok")).await?;
    let read = backend.get(&key).await;
    backend.delete(&key).await?;
    read?;
    Ok(())
}

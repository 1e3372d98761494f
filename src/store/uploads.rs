//! Upload sessions for pushes: `uploads/<id>/data` grows with each chunk; completing a session
//! hashes the data and renames it into `blobs/` only if it matches the digest.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Result, Store, StoreError, io_err};
use crate::oci::{Digest, RepoName};

/// Why an upload operation was refused (besides I/O).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such session (never created, completed, cancelled or expired), or it belongs to
    /// another repository.
    #[error("upload session unknown")]
    Unknown,
    /// A chunk that does not start where the session ends.
    #[error("chunk starts at {got}, the upload is at {expected}")]
    OutOfOrder {
        /// Where the session ends.
        expected: u64,
        /// Where the chunk claims to start.
        got: u64,
    },
    /// The upload would exceed `max_upload_size`.
    #[error("upload larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's body broke off.
    #[error("request body: {0}")]
    Body(String),
    /// The data does not hash to the digest given at completion.
    #[error("content does not match digest {expected} (got {actual})")]
    DigestMismatch {
        /// Given by the client.
        expected: Digest,
        /// Of the data.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A session id: a UUID, validated before it becomes a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// Parses an id from a URL; only UUIDs are ids.
    pub fn parse(s: &str) -> Option<UploadId> {
        uuid::Uuid::parse_str(s)
            .ok()
            .map(|u| UploadId(u.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Store {
    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// Starts a session for `repo`.
    pub async fn create_upload(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId(uuid::Uuid::new_v4().to_string());
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(&dir))?;
        let repo_path = dir.join("repo");
        tokio::fs::write(&repo_path, repo.as_str())
            .await
            .map_err(io_err(&repo_path))?;
        let data = dir.join("data");
        tokio::fs::File::create(&data)
            .await
            .map_err(io_err(&data))?;
        Ok(id)
    }

    /// The session's size so far, if it exists and belongs to `repo`.
    pub async fn upload_len(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> std::result::Result<u64, UploadError> {
        let dir = self.upload_dir(id);
        match tokio::fs::read_to_string(dir.join("repo")).await {
            Ok(owner) if owner == repo.as_str() => {}
            Ok(_) => return Err(UploadError::Unknown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UploadError::Unknown),
            Err(source) => return Err(StoreError::Io { path: dir, source }.into()),
        }
        let data = dir.join("data");
        match tokio::fs::metadata(&data).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UploadError::Unknown),
            Err(source) => Err(StoreError::Io { path: data, source }.into()),
        }
    }

    /// Appends a body to the session. `start`, when the client sent `Content-Range`, must be
    /// where the session ends. Streams to disk; refuses to grow past `limit`.
    pub async fn append_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: S,
        limit: u64,
    ) -> std::result::Result<u64, UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let len = self.upload_len(repo, id).await?;
        if let Some(start) = start.filter(|s| *s != len) {
            return Err(UploadError::OutOfOrder {
                expected: len,
                got: start,
            });
        }
        let data = self.upload_dir(id).join("data");
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&data)
            .await
            .map_err(|e| UploadError::Store(io_err(&data)(e)))?;
        let written = copy_limited(body, &mut file, len, limit).await;
        // Whatever happened, what was written stays consistent with the file's length; on a
        // failed chunk the session is truncated back to where the chunk began.
        if written.is_err() {
            let _ = file.set_len(len).await;
        }
        let total = written?;
        file.flush()
            .await
            .map_err(|e| UploadError::Store(io_err(&data)(e)))?;
        Ok(total)
    }

    /// Verifies the session's data against `digest` and commits it as a pinned blob. The
    /// session is gone afterwards, whatever the outcome.
    pub async fn complete_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
    ) -> std::result::Result<u64, UploadError> {
        self.upload_len(repo, id).await?;
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let hashed = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash_file(&data))
                .await
                .map_err(|e| StoreError::Io {
                    path: PathBuf::new(),
                    source: io::Error::other(e),
                })?
        };
        let (actual, size) = hashed.map_err(|e| UploadError::Store(io_err(&data)(e)))?;
        let result = if &actual != digest {
            Err(UploadError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        } else {
            self.commit_file(&data, digest, size)
                .await
                .map_err(UploadError::from)
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result.map(|()| size)
    }

    /// Moves a verified file into `blobs/` and pins it.
    async fn commit_file(&self, file: &std::path::Path, digest: &Digest, size: u64) -> Result<()> {
        let target = self.blob_path(digest);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_err(parent))?;
        }
        let f = tokio::fs::File::open(file).await.map_err(io_err(file))?;
        f.sync_all().await.map_err(io_err(file))?;
        let existed = tokio::fs::metadata(&target).await.is_ok();
        // Pinned before it appears, so eviction never sees it unpinned.
        self.pin(digest).await?;
        tokio::fs::rename(file, &target)
            .await
            .map_err(io_err(&target))?;
        self.note_blob_size(digest, size);
        if !existed {
            self.added_blob(digest, size);
        }
        Ok(())
    }

    /// Removes a session.
    pub async fn cancel_upload(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> std::result::Result<(), UploadError> {
        self.upload_len(repo, id).await?;
        let dir = self.upload_dir(id);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| UploadError::Store(io_err(&dir)(e)))
    }

    /// Removes sessions idle for longer than `ttl`; returns how many.
    pub async fn expire_uploads(&self, ttl: Duration) -> Result<usize> {
        self.expire_uploads_dry(ttl, false).await
    }

    /// Like [`Store::expire_uploads`]; with `dry_run`, only counts.
    pub(super) async fn expire_uploads_dry(&self, ttl: Duration, dry_run: bool) -> Result<usize> {
        let root = self.root.join("uploads");
        let mut entries = match tokio::fs::read_dir(&root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(StoreError::Io { path: root, source }),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&root))? {
            // The data file's mtime is the last activity; a session being created may not
            // have one yet, so fall back to the directory's.
            let data = entry.path().join("data");
            let modified = match tokio::fs::metadata(&data).await {
                Ok(meta) => meta.modified(),
                Err(_) => tokio::fs::metadata(entry.path())
                    .await
                    .and_then(|m| m.modified()),
            };
            let idle = modified
                .map(|t| now.duration_since(t).unwrap_or_default())
                .unwrap_or_default();
            if idle > ttl {
                if !dry_run {
                    let _ = tokio::fs::remove_dir_all(entry.path()).await;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Copies `body` to `file`, which holds `len` bytes already; fails past `limit` in total.
async fn copy_limited<S, E>(
    mut body: S,
    file: &mut tokio::fs::File,
    mut len: u64,
    limit: u64,
) -> std::result::Result<u64, UploadError>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        len += chunk.len() as u64;
        if len > limit {
            return Err(UploadError::TooLarge { limit });
        }
        file.write_all(&chunk).await.map_err(|e| {
            UploadError::Store(StoreError::Io {
                path: PathBuf::from("upload"),
                source: e,
            })
        })?;
    }
    Ok(len)
}

/// The sha256 and length of a file.
fn hash_file(path: &std::path::Path) -> io::Result<(Digest, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((Digest::from_hasher(hasher), len))
}

//! Upload sessions for pushes, always in the local staging directory: `uploads/<id>/data`
//! grows with each chunk; completing a session hashes the data and commits it to the backend
//! only if it matches the digest.
//!
//! A session belongs to the repository and the client (`owner`) that opened it: nobody else
//! can see, extend, complete or cancel it. What uploads may hold is bounded: a blob's size, the
//! bytes of all sessions together, and the sessions one client may have open. One request at a
//! time may write to a session.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use std::sync::Arc;

use super::seal::{Seal, Sealer};
use super::{Result, Store, StoreError, io_err};
use crate::oci::digest::Algorithm;
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
    #[error("content does not match its digest: {0}")]
    DigestMismatch(crate::oci::DigestMismatch),
    /// All unfinished uploads together hold `max_uploads_size`.
    #[error("upload space is full ({limit} bytes held by unfinished uploads); try again later")]
    SpaceFull {
        /// The limit.
        limit: u64,
    },
    /// The session has as many chunks as a shared session may have.
    #[error(
        "the upload session has {limit} chunks, the most it may have; send the rest in one request"
    )]
    TooManyChunks {
        /// The limit.
        limit: usize,
    },
    /// This client has as many sessions open as it may.
    #[error("too many open upload sessions for this client (at most {limit})")]
    TooManySessions {
        /// The limit.
        limit: usize,
    },
    /// Another request is writing to the session right now.
    #[error("another request is writing to this upload session")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<super::BackendError> for UploadError {
    fn from(e: super::BackendError) -> UploadError {
        UploadError::Store(e.into())
    }
}

/// How long a local copy of a shared session must have been idle before it is removed for no
/// longer being in the bucket.
const LEFTOVER_AGE: Duration = Duration::from_secs(10);

/// Bounds on what uploads may hold.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// The largest blob (`max_upload_size`).
    pub max_blob: u64,
    /// The bytes all unfinished uploads may hold together (`max_uploads_size`).
    pub max_total: u64,
    /// The sessions one client may have open (`max_upload_sessions_per_client`).
    pub max_sessions_per_client: usize,
    /// The chunks one session shared through the bucket may have (`max_upload_chunks`).
    pub max_chunks: usize,
    /// How long an idle session lives (`upload_ttl`): the longest it counts against its
    /// owner's cap over the cluster without word of its end.
    pub session_ttl: std::time::Duration,
}

/// What the unfinished uploads hold: bytes in all, sessions per owner, sessions being written.
#[derive(Default)]
pub(super) struct UploadBook {
    bytes: u64,
    sessions: HashMap<String, usize>,
    busy: HashSet<UploadId>,
}

/// Marks a session as being written until dropped.
struct Writing<'a> {
    store: &'a Store,
    id: UploadId,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.store.upload_book().busy.remove(&self.id);
    }
}

/// A session id: a UUID, validated before it becomes a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    /// Parses an id from a URL; only UUIDs are ids.
    pub(crate) fn parse(s: &str) -> Option<UploadId> {
        uuid::Uuid::parse_str(s)
            .ok()
            .map(|u| UploadId(u.to_string()))
    }

    /// The id as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Store {
    pub(super) fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.staging.join("uploads").join(id.as_str())
    }

    pub(super) fn upload_book(&self) -> std::sync::MutexGuard<'_, UploadBook> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by unfinished uploads.
    pub(crate) fn uploads_bytes(&self) -> u64 {
        self.upload_book().bytes
    }

    /// Counts what the sessions on disk hold (at start).
    pub(super) async fn load_uploads(&self) -> Result<()> {
        let root = self.staging.join("uploads");
        let mut entries = tokio::fs::read_dir(&root).await.map_err(io_err(&root))?;
        let mut book = UploadBook::default();
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&root))? {
            let dir = entry.path();
            let owner = tokio::fs::read_to_string(dir.join("owner"))
                .await
                .unwrap_or_default();
            let size = tokio::fs::metadata(dir.join("data"))
                .await
                .map_or(0, |m| m.len());
            book.bytes += size;
            *book.sessions.entry(owner).or_default() += 1;
        }
        *self.upload_book() = book;
        Ok(())
    }

    /// Tells the other replicas that `owner`'s session `id` ended.
    async fn session_closed(&self, owner: &str, id: &UploadId) {
        if let Some(link) = self.link.get() {
            link.close_session(owner, id.as_str()).await;
        }
    }

    /// Forgets a session that ended (completed, cancelled, expired) with `size` bytes.
    fn upload_ended(&self, owner: &str, size: u64) {
        let mut book = self.upload_book();
        book.bytes = book.bytes.saturating_sub(size);
        if let Some(n) = book.sessions.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                book.sessions.remove(owner);
            }
        }
    }

    /// Counts a session this replica holds a copy of because another one started it.
    pub(super) fn upload_adopted(&self, owner: &str) {
        *self
            .upload_book()
            .sessions
            .entry(owner.to_owned())
            .or_default() += 1;
    }

    /// Counts bytes written to a session's local copy outside [`Store::append_upload`].
    pub(super) fn upload_bytes_added(&self, n: u64) {
        self.upload_book().bytes += n;
    }

    /// Gives back bytes cut from a session's local copy.
    pub(super) fn upload_bytes_released(&self, n: u64) {
        let mut book = self.upload_book();
        book.bytes = book.bytes.saturating_sub(n);
    }

    /// Starts a session for `repo`, owned by `owner`.
    pub(crate) async fn create_upload(
        &self,
        repo: &RepoName,
        owner: &str,
        limits: &UploadLimits,
    ) -> std::result::Result<UploadId, UploadError> {
        {
            let mut book = self.upload_book();
            let open = book.sessions.entry(owner.to_owned()).or_default();
            if *open >= limits.max_sessions_per_client {
                return Err(UploadError::TooManySessions {
                    limit: limits.max_sessions_per_client,
                });
            }
            *open += 1;
        }
        let id = UploadId(uuid::Uuid::new_v4().to_string());
        // Over the cluster (with Redis), the owner's sessions on every replica count.
        if let Some(link) = self.link.get()
            && let Some(open) = link
                .open_session(owner, id.as_str(), limits.session_ttl)
                .await
            && open > limits.max_sessions_per_client
        {
            link.close_session(owner, id.as_str()).await;
            self.upload_ended(owner, 0);
            return Err(UploadError::TooManySessions {
                limit: limits.max_sessions_per_client,
            });
        }
        let dir = self.upload_dir(&id);
        let created = async {
            write_local_session(&dir, repo, owner).await?;
            if self.is_remote() {
                self.publish_session(repo, owner, &id).await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = created {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            self.upload_ended(owner, 0);
            self.session_closed(owner, &id).await;
            return Err(e.into());
        }
        Ok(id)
    }

    /// The session's size so far, if it exists and belongs to `repo` and `owner`.
    pub(crate) async fn upload_len(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> std::result::Result<u64, UploadError> {
        if self.is_remote() {
            let chunks = self.shared_chunks(repo, owner, id).await?;
            return Ok(chunks.last().map_or(0, |c| c.end));
        }
        self.local_upload_len(repo, owner, id).await
    }

    /// The local session's size, if it exists and belongs to `repo` and `owner`.
    async fn local_upload_len(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> std::result::Result<u64, UploadError> {
        let dir = self.upload_dir(id);
        for (file, expected) in [("repo", repo.as_str()), ("owner", owner)] {
            match tokio::fs::read_to_string(dir.join(file)).await {
                Ok(found) if found == expected => {}
                Ok(_) => return Err(UploadError::Unknown),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(UploadError::Unknown);
                }
                Err(source) => return Err(StoreError::Io { path: dir, source }.into()),
            }
        }
        let data = dir.join("data");
        match tokio::fs::metadata(&data).await {
            Ok(meta) => Ok(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UploadError::Unknown),
            Err(source) => Err(StoreError::Io { path: data, source }.into()),
        }
    }

    /// The session's size and how many chunks it has in the bucket (0 when sessions are not
    /// shared), with its local copy brought up to date from the bucket first when they are.
    async fn upload_len_here(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> std::result::Result<(u64, usize), UploadError> {
        if !self.is_remote() {
            return Ok((self.local_upload_len(repo, owner, id).await?, 0));
        }
        let chunks = self.shared_chunks(repo, owner, id).await?;
        self.materialize(repo, owner, id, &chunks).await?;
        Ok((chunks.last().map_or(0, |c| c.end), chunks.len()))
    }

    /// Claims a session for one writer.
    fn start_writing(&self, id: &UploadId) -> std::result::Result<Writing<'_>, UploadError> {
        if !self.upload_book().busy.insert(id.clone()) {
            return Err(UploadError::Busy);
        }
        Ok(Writing {
            store: self,
            id: id.clone(),
        })
    }

    /// Appends a body to the session. `start`, when the client sent `Content-Range`, must be
    /// where the session ends. Streams to disk; refuses to grow past the limits.
    pub(crate) async fn append_upload<S, E>(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
        start: Option<u64>,
        body: S,
        limits: &UploadLimits,
    ) -> std::result::Result<u64, UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _writing = self.start_writing(id)?;
        let (len, chunks) = self.upload_len_here(repo, owner, id).await?;
        // Every request of a shared session lists its chunks: a client may not make that
        // list grow without bound with tiny PATCHes. A request without data (the final PUT)
        // adds no chunk.
        let mut body = body.peekable();
        if chunks >= limits.max_chunks && std::pin::Pin::new(&mut body).peek().await.is_some() {
            return Err(UploadError::TooManyChunks {
                limit: limits.max_chunks,
            });
        }
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
        let written = self.copy_limited(body, &mut file, len, limits).await;
        // Whatever happened, what was written stays consistent with the file's length; on a
        // failed chunk the session is truncated back to where the chunk began.
        if written.is_err() {
            let _ = file.set_len(len).await;
        }
        let total = written?;
        file.flush()
            .await
            .map_err(|e| UploadError::Store(io_err(&data)(e)))?;
        // Shared: the chunk counts once it is in the bucket, where every replica sees it.
        if self.is_remote()
            && total > len
            && let Err(e) = self.publish_chunk(id, len, total).await
        {
            let _ = file.set_len(len).await;
            self.upload_bytes_released(total - len);
            return Err(e.into());
        }
        Ok(total)
    }

    /// Verifies the session's data against `digest` and commits it as a blob pinned for
    /// `holder` (the repository as pushes record it). The session is gone afterwards,
    /// whatever the outcome.
    pub(crate) async fn complete_upload(
        self: &Arc<Self>,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
        digest: &Digest,
        holder: &str,
    ) -> std::result::Result<u64, UploadError> {
        let _writing = self.start_writing(id)?;
        let (len, _) = self.upload_len_here(repo, owner, id).await?;
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let hashed = {
            let (data, algorithm) = (data.clone(), digest.algorithm());
            let sealer = self.seal_key.as_ref().map(|key| key.sealer(digest));
            tokio::task::spawn_blocking(move || hash_file(&data, algorithm, sealer))
                .await
                .map_err(|e| StoreError::Io {
                    path: PathBuf::new(),
                    source: io::Error::other(e),
                })?
        };
        let result = match hashed {
            Err(e) => Err(UploadError::Store(io_err(&data)(e))),
            Ok((actual, _, _)) if &actual != digest => {
                Err(UploadError::DigestMismatch(crate::oci::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                }))
            }
            Ok((_, size, seal)) => self
                .commit_file(&data, digest, size, seal, holder)
                .await
                .map(|()| size)
                .map_err(UploadError::from),
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        self.upload_ended(owner, len);
        self.session_closed(owner, id).await;
        if self.is_remote()
            && let Err(e) = self.unpublish_session(id).await
        {
            // Harmless: the session is expired from the bucket later.
            tracing::warn!(upload = id.as_str(), error = %e, "cannot remove a completed upload session from the bucket");
        }
        result
    }

    /// Commits a verified file (with its seal, if it has one) as a blob pinned for `holder`.
    async fn commit_file(
        self: &Arc<Self>,
        file: &std::path::Path,
        digest: &Digest,
        size: u64,
        seal: Option<Seal>,
        holder: &str,
    ) -> Result<()> {
        // Pinned before it appears, so eviction never sees it unpinned.
        self.pin(digest, holder).await?;
        self.commit_local_file(file, digest, size, seal).await
    }

    /// Removes a session.
    pub(crate) async fn cancel_upload(
        &self,
        repo: &RepoName,
        owner: &str,
        id: &UploadId,
    ) -> std::result::Result<(), UploadError> {
        let _writing = self.start_writing(id)?;
        if self.is_remote() {
            self.shared_chunks(repo, owner, id).await?;
            self.unpublish_session(id).await?;
            if let Ok(len) = self.local_upload_len(repo, owner, id).await {
                let _ = tokio::fs::remove_dir_all(self.upload_dir(id)).await;
                self.upload_ended(owner, len);
            }
            self.session_closed(owner, id).await;
            return Ok(());
        }
        let len = self.local_upload_len(repo, owner, id).await?;
        let dir = self.upload_dir(id);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|e| UploadError::Store(io_err(&dir)(e)))?;
        self.upload_ended(owner, len);
        self.session_closed(owner, id).await;
        Ok(())
    }

    /// Removes sessions idle for longer than `ttl`; returns how many.
    pub(crate) async fn expire_uploads(&self, ttl: Duration) -> Result<usize> {
        self.expire_uploads_dry(ttl, false).await
    }

    /// Like [`Store::expire_uploads`]; with `dry_run`, only counts.
    pub(super) async fn expire_uploads_dry(&self, ttl: Duration, dry_run: bool) -> Result<usize> {
        let mut removed = self.expire_local_uploads(ttl, dry_run).await?;
        if self.is_remote() {
            removed += self.expire_shared_sessions(ttl, dry_run).await?;
        }
        Ok(removed)
    }

    /// Removes local sessions idle for longer than `ttl` and, when sessions are shared, local
    /// copies of sessions the bucket no longer has (completed or cancelled on another replica).
    async fn expire_local_uploads(&self, ttl: Duration, dry_run: bool) -> Result<usize> {
        let root = self.staging.join("uploads");
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
            let data_meta = tokio::fs::metadata(&data).await;
            let modified = match &data_meta {
                Ok(meta) => meta.modified(),
                Err(_) => tokio::fs::metadata(entry.path())
                    .await
                    .and_then(|m| m.modified()),
            };
            let idle = modified
                .map(|t| now.duration_since(t).unwrap_or_default())
                .unwrap_or_default();
            let id = UploadId::parse(&entry.file_name().to_string_lossy());
            let busy = id
                .as_ref()
                .is_some_and(|id| self.upload_book().busy.contains(id));
            if busy {
                continue;
            }
            if idle <= ttl && !self.is_leftover(id.as_ref(), idle).await {
                continue;
            }
            if !dry_run {
                let owner = tokio::fs::read_to_string(entry.path().join("owner"))
                    .await
                    .unwrap_or_default();
                if tokio::fs::remove_dir_all(entry.path()).await.is_ok() {
                    let size = data_meta.as_ref().map_or(0, |m| m.len());
                    self.upload_ended(&owner, size);
                }
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Whether a local session is the copy of one the bucket no longer has. Sessions younger
    /// than [`LEFTOVER_AGE`] are left alone: one being created may not be published yet.
    async fn is_leftover(&self, id: Option<&UploadId>, idle: Duration) -> bool {
        let Some(id) = id else { return false };
        self.is_remote()
            && idle > LEFTOVER_AGE
            && matches!(self.session_published(id).await, Ok(false))
    }

    /// Copies `body` to `file`, which holds `len` bytes already; fails past the blob limit or
    /// when all uploads together would hold more than theirs. Space is reserved chunk by chunk
    /// and given back for what is not kept.
    async fn copy_limited<S, E>(
        &self,
        mut body: S,
        file: &mut tokio::fs::File,
        start: u64,
        limits: &UploadLimits,
    ) -> std::result::Result<u64, UploadError>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut len = start;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                let n = chunk.len() as u64;
                if len + n > limits.max_blob {
                    return Err(UploadError::TooLarge {
                        limit: limits.max_blob,
                    });
                }
                {
                    let mut book = self.upload_book();
                    if book.bytes + n > limits.max_total {
                        return Err(UploadError::SpaceFull {
                            limit: limits.max_total,
                        });
                    }
                    book.bytes += n;
                }
                len += n;
                file.write_all(&chunk).await.map_err(|e| {
                    UploadError::Store(StoreError::Io {
                        path: PathBuf::from("upload"),
                        source: e,
                    })
                })?;
            }
            Ok(len)
        }
        .await;
        if result.is_err() {
            // The session is truncated back to `start`: give back what this request reserved.
            let mut book = self.upload_book();
            book.bytes = book.bytes.saturating_sub(len - start);
        }
        result
    }
}

/// Creates the local directory of a session: who it belongs to, and its (empty) data.
pub(super) async fn write_local_session(
    dir: &std::path::Path,
    repo: &RepoName,
    owner: &str,
) -> Result<()> {
    tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    for (file, text) in [("repo", repo.as_str()), ("owner", owner), ("data", "")] {
        let path = dir.join(file);
        tokio::fs::write(&path, text).await.map_err(io_err(&path))?;
    }
    Ok(())
}

/// The digest (with `algorithm`) and length of a file, and its seal when given a sealer.
fn hash_file(
    path: &std::path::Path,
    algorithm: Algorithm,
    mut sealer: Option<Sealer>,
) -> io::Result<(Digest, u64, Option<Seal>)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(sealer) = &mut sealer {
            sealer.update(&buf[..n]);
        }
        len += n as u64;
    }
    Ok((hasher.finish(), len, sealer.map(Sealer::finish)))
}

//! Objects in a bucket of a cloud object store (S3 and the S3-compatible stores, Azure Blob
//! Storage), over Apache Arrow's `object_store` crate: one implementation of [`Backend`] for
//! them, since `object_store` gives each the same three faces (objects, multipart uploads,
//! signed URLs). Each store's module only builds its client (`s3.rs`, `azure.rs`). GCS has a
//! client of its own (`gcs.rs`).
//!
//! Objects are written whole: small ones with one PUT, blobs with a multipart upload that is
//! completed only after every part is in, so a process killed midway leaves no object, only an
//! unfinished upload (S3: parts kept, and billed, until aborted; Azure: uncommitted
//! blocks, which the service discards after a week). Each upload is recorded under
//! `_multipart/` while it runs, so GC can abort the ones a dead process left.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::read_ahead::{MIN_READ_AHEAD, RangeOpener, ReadAheadBudget, first_segment, sized_read};
use super::{Backend, BackendError, Committed, ObjectInfo, Result};
use crate::byte_stream::{ByteStream, Chunks};

/// How often a failed request to the object store is retried (5xx, connection errors).
pub(super) const RETRIES: usize = 3;

/// How long after its first attempt a request is retried at most.
pub(super) const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to the object store may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request to the object store may wait for its next byte (the answer's head, or
/// more of its body) before it fails: a store that accepts connections and then says nothing
/// ties up a request this long at most, not forever. Sending a request's body counts as
/// waiting for its answer: an 8 MiB upload chunk must go through in this time, as it must
/// under `object_store`'s clients, which bound each request as a whole (30 s by default).
pub(super) const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The retry policy of every object store client: a store that does not answer fails a
/// request within seconds, not minutes; the mirror then passes pulls through and retries in
/// the background (object_store's default is ten retries over up to three minutes).
pub(super) fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// The HTTP options of every object store client.
pub(super) fn client_options(allow_http: bool) -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_allow_http(allow_http)
}

/// Files up to this size are uploaded with one PUT; larger ones in parts of this size.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload in flight at once: enough to keep a link to the bucket busy, while a
/// commit holds at most this many parts in memory.
const PARTS_IN_FLIGHT: usize = 4;

/// Where running multipart uploads are recorded.
const MULTIPART_RECORDS: &str = "_multipart/";

/// The record of a running multipart upload.
#[derive(Serialize, Deserialize)]
struct MultipartRecord {
    key: String,
    upload_id: String,
    started_ms: u64,
}

/// What an object store client must do for a bucket backend: objects, multipart uploads,
/// signed URLs. `object_store`'s S3 and Azure clients do.
pub trait BucketClient: ObjectStore + MultipartStore + Signer {}

impl<T: ObjectStore + MultipartStore + Signer> BucketClient for T {}

/// Which bucket, where, and how it is named in messages.
#[derive(Debug, Clone)]
pub struct BucketPlace {
    /// `s3` or `azure`: metrics and logs.
    pub kind: &'static str,
    /// The bucket (Azure: the container).
    pub bucket: String,
    /// Where it is, for messages (`http://127.0.0.1:3900`, `AWS S3`, an account URL).
    pub location: String,
    /// Every key goes under this prefix.
    pub prefix: String,
}

/// Objects in a bucket.
pub struct BucketBackend<C: BucketClient> {
    store: Arc<C>,
    place: BucketPlace,
    read_ahead: ReadAheadBudget,
}

/// The ranged GETs of one object, for a read that runs ahead of its reader.
struct ObjectRanges<C: BucketClient> {
    store: Arc<C>,
    path: ObjectPath,
    bucket: String,
}

#[async_trait]
impl<C: BucketClient> RangeOpener for ObjectRanges<C> {
    async fn open(&self, start: u64, end: u64) -> std::io::Result<Chunks> {
        let range = Some(GetRange::Bounded(start..end));
        match open_range(&*self.store, &self.path, &self.bucket, range).await {
            Ok((_, chunks)) => Ok(chunks),
            Err(e) => Err(std::io::Error::other(format!(
                "bucket {}: {}",
                self.bucket,
                error_chain(&e)
            ))),
        }
    }
}

/// Opens `range` of the object at `path` (all of it for `None`): the object's size and the
/// bytes asked for.
async fn open_range<C: BucketClient>(
    store: &C,
    path: &ObjectPath,
    bucket: &str,
    range: Option<GetRange>,
) -> object_store::Result<(u64, Chunks)> {
    let options = GetOptions {
        range,
        ..GetOptions::default()
    };
    let got = store.get_opts(path, options).await?;
    let size = got.meta.size;
    let bucket = bucket.to_owned();
    let body = got
        .into_stream()
        .map_err(move |e| std::io::Error::other(format!("bucket {bucket}: {}", error_chain(&e))));
    Ok((size, Box::pin(body)))
}

impl<C: BucketClient> BucketBackend<C> {
    /// A backend over `client`, for the bucket `place` names.
    pub fn new(client: C, place: BucketPlace) -> BucketBackend<C> {
        BucketBackend {
            store: Arc::new(client),
            place,
            read_ahead: ReadAheadBudget::default(),
        }
    }

    /// The object path of a key.
    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{key}", self.prefix()))
    }

    /// The prefix with a trailing `/` (or nothing).
    fn prefix(&self) -> String {
        super::key_prefix(&self.place.prefix)
    }

    fn error(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl FnOnce(object_store::Error) -> BackendError {
        let (bucket, key) = (self.place.bucket.clone(), key.to_owned());
        move |e| {
            let message = error_chain(&e);
            // Refusals name a configuration to fix; anything else (a connection refused, a
            // 5xx after the retries, a timeout) is an outage.
            match e {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::InvalidPath { .. } => BackendError::Remote {
                    op,
                    bucket,
                    key,
                    message,
                },
                _ => BackendError::Unavailable {
                    op,
                    bucket,
                    key,
                    message,
                },
            }
        }
    }

    /// Opens `range` of the object `key` (all of it for `None`): its size and the bytes asked
    /// for; `None` if there is no such object.
    async fn read_range(
        &self,
        key: &str,
        range: Option<GetRange>,
    ) -> Result<Option<(u64, Chunks)>> {
        match open_range(&*self.store, &self.path(key), &self.place.bucket, range).await {
            Ok(opened) => Ok(Some(opened)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("read", key)(e)),
        }
    }

    /// Uploads a large file in parts and completes the upload only once all are in.
    async fn upload_in_parts(&self, key: &str, file: &Path, size: u64) -> Result<()> {
        let path = self.path(key);
        let id = self
            .store
            .create_multipart(&path)
            .await
            .map_err(self.error("start upload of", key))?;
        let record_key = format!("{MULTIPART_RECORDS}{}.json", uuid::Uuid::new_v4());
        let record = MultipartRecord {
            key: key.to_owned(),
            upload_id: id.clone(),
            started_ms: super::epoch_ms(std::time::SystemTime::now()),
        };
        let recorded = match serde_json::to_vec(&record) {
            Ok(bytes) => self.put(&record_key, Bytes::from(bytes)).await,
            Err(e) => Err(BackendError::Layout(e.to_string())),
        };
        let uploaded = match recorded {
            Ok(()) => self.put_parts(&path, &id, key, file, size).await,
            Err(e) => Err(e),
        };
        let result = match uploaded {
            Ok(parts) => self
                .store
                .complete_multipart(&path, &id, parts)
                .await
                .map(|_| ())
                .map_err(self.error("complete upload of", key)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = self.store.abort_multipart(&path, &id).await;
        }
        let _ = self.delete(&record_key).await;
        result
    }

    async fn put_parts(
        &self,
        path: &ObjectPath,
        id: &str,
        key: &str,
        file: &Path,
        size: u64,
    ) -> Result<Vec<object_store::multipart::PartId>> {
        let file = Arc::new(
            std::fs::File::open(file).map_err(|source| BackendError::Io {
                op: "open",
                key: file.display().to_string(),
                source,
            })?,
        );
        let parts = size.div_ceil(PART_SIZE as u64) as usize;
        futures_util::stream::iter(0..parts)
            .map(|index| {
                let file = Arc::clone(&file);
                let id = id.to_owned();
                async move {
                    let offset = index as u64 * PART_SIZE as u64;
                    let len = (size - offset).min(PART_SIZE as u64) as usize;
                    let bytes =
                        super::read_file_part(file, offset, len)
                            .await
                            .map_err(|source| BackendError::Io {
                                op: "read",
                                key: key.to_owned(),
                                source,
                            })?;
                    self.store
                        .put_part(path, &id, index, PutPayload::from(bytes))
                        .await
                        .map_err(self.error("upload part of", key))
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

/// An error with its causes, which hold what the object store actually said.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait]
impl<C: BucketClient> Backend for BucketBackend<C> {
    fn kind(&self) -> &'static str {
        self.place.kind
    }

    fn describe(&self) -> String {
        let place = &self.place;
        super::describe_bucket(place.kind, &place.bucket, &place.location, &place.prefix)
    }

    fn lists_cheaply(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let got = match self.store.get(&self.path(key)).await {
            Ok(got) => got,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error("read", key)(e)),
        };
        got.bytes().await.map(Some).map_err(self.error("read", key))
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(self.error("write", key))
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("stat", key)(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // S3 deletes are idempotent and do not say whether there was an object.
        match self.store.delete(&self.path(key)).await {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.error("delete", key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let base = self.prefix();
        let list_prefix = ObjectPath::from(format!("{base}{}", prefix.trim_end_matches('/')));
        let listed: Vec<_> = self
            .store
            .list(Some(&list_prefix))
            .try_collect()
            .await
            .map_err(self.error("list", prefix))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.as_ref().strip_prefix(&base)?.to_owned();
                Some(ObjectInfo {
                    key,
                    size: meta.size,
                    modified_ms: meta.last_modified.timestamp_millis().max(0) as u64,
                })
            })
            .collect())
    }

    async fn commit_file(&self, key: &str, file: &Path) -> Result<Committed> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|source| BackendError::Io {
                op: "stat",
                key: file.display().to_string(),
                source,
            })?
            .len();
        if size <= PART_SIZE as u64 {
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|source| BackendError::Io {
                    op: "read",
                    key: file.display().to_string(),
                    source,
                })?;
            self.put(key, Bytes::from(bytes)).await?;
        } else {
            self.upload_in_parts(key, file, size).await?;
        }
        Ok(Committed::Copied)
    }

    async fn open_local(&self, _key: &str) -> Result<Option<(std::fs::File, u64)>> {
        Ok(None)
    }

    async fn read(&self, key: &str, from: u64) -> Result<Option<ByteStream>> {
        let range = (from > 0).then_some(GetRange::Offset(from));
        Ok(self
            .read_range(key, range)
            .await?
            .map(|(size, chunks)| ByteStream::from_offset(size, from, chunks)))
    }

    async fn read_sized(&self, key: &str, from: u64, size: u64) -> Result<Option<ByteStream>> {
        if size.saturating_sub(from) <= MIN_READ_AHEAD {
            return self.read(key, from).await;
        }
        // The first segment is opened here, so that a missing object or an unreachable bucket
        // is an answer, not a broken stream; the object's own size counts, should it differ
        // from what the caller was told.
        let range = Some(GetRange::Bounded(first_segment(from)));
        let Some((size, first)) = self.read_range(key, range).await? else {
            return Ok(None);
        };
        let ranges = ObjectRanges {
            store: Arc::clone(&self.store),
            path: self.path(key),
            bucket: self.place.bucket.clone(),
        };
        let budget = &self.read_ahead;
        Ok(Some(sized_read(
            first,
            from,
            size,
            Arc::new(ranges),
            budget,
        )))
    }

    async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>> {
        let url = self
            .store
            .signed_url(http::Method::GET, &self.path(key), ttl)
            .await
            .map_err(self.error("presign", key))?;
        // The URL types of two `url` versions may differ; go through text.
        url::Url::parse(url.as_str())
            .map(Some)
            .map_err(|e| BackendError::Layout(e.to_string()))
    }

    async fn check(&self) -> Result<()> {
        super::probe(self).await
    }

    async fn abort_stray_uploads(&self, older_than: Duration) -> Result<u64> {
        let cutoff = super::epoch_ms(std::time::SystemTime::now())
            .saturating_sub(older_than.as_millis() as u64);
        let mut aborted = 0;
        for object in self.list(MULTIPART_RECORDS).await? {
            let Some(bytes) = self.get(&object.key).await? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<MultipartRecord>(&bytes) else {
                self.delete(&object.key).await?;
                continue;
            };
            if record.started_ms > cutoff {
                continue;
            }
            match self
                .store
                .abort_multipart(&self.path(&record.key), &record.upload_id)
                .await
            {
                Ok(()) => {}
                // Completed or aborted already: only the record was left.
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.error("abort upload of", &record.key)(e)),
            }
            self.delete(&object.key).await?;
            aborted += 1;
        }
        Ok(aborted)
    }
}

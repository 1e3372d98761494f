//! Blobs: `blobs/<algorithm>/<2 hex>/<hex>` in the backend, present only when complete and
//! verified; spools that are hashed while they fill, and committed only when they match.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::backend::Committed;
use super::index::{Change, IndexedBlob};
use super::reads::BlobReader;
use super::seal::{Seal, SealCheck, Sealer};
use super::usage::now_ms;
use super::{MAX_INDEXED_MANIFEST, Result, Store, StoreError, StoredManifest, io_err};
use crate::byte_stream::ByteStream;
use crate::oci::digest::Hasher;
use crate::oci::{Digest, media};

/// How long a presigned blob URL is valid.
const REDIRECT_TTL: Duration = Duration::from_secs(10 * 60);

/// A local temp file being filled with a blob's bytes, hashed as they are written (or, for
/// bytes that need not be verified before readers have them, once they are all written).
///
/// Readers may read it concurrently through [`Spool::reader`] (positional reads, so they never
/// disturb the writer). Only a [`VerifiedSpool`] can be committed; dropping a spool without
/// committing deletes the file.
pub struct Spool {
    path: PathBuf,
    file: Arc<std::fs::File>,
    hasher: Hasher,
    /// How many of the bytes written (from the start) `hasher` has seen.
    hashed: u64,
    written: u64,
    /// For a blob about to be committed to a remote backend: its seal, computed as it is
    /// written (see `seal`).
    sealer: Option<Sealer>,
    /// For a blob read back from a remote backend: its recorded seal, checked as it is
    /// written, so that [`Spool::verify`] need not hash it with the digest's algorithm.
    seal_check: Option<SealCheck>,
    committed: bool,
    live: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Bytes read at a time when [`Spool::verify`] catches up on bytes written unhashed: they come
/// from the page cache, and a buffer this size stays in the CPU's cache for the hash. (Only
/// allocated when there is something to catch up on: a megabyte per fill, zeroed from the heap,
/// raised the peak memory of concurrent fills by a quarter.)
const CATCH_UP_READ: usize = 256 * 1024;

impl Spool {
    /// An empty spool in the new file `file` at `path`, for a blob of `digest`, listed in `live`
    /// while it exists.
    fn new(
        path: PathBuf,
        file: std::fs::File,
        digest: &Digest,
        live: Arc<Mutex<HashSet<PathBuf>>>,
    ) -> Spool {
        Spool {
            path,
            file: Arc::new(file),
            hasher: digest.hasher(),
            hashed: 0,
            written: 0,
            sealer: None,
            seal_check: None,
            committed: false,
            live,
        }
    }

    /// Appends bytes. Blocking I/O: call from a blocking-friendly context.
    pub(crate) fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.hashed == self.written {
            self.hasher.update(chunk);
            self.hashed += chunk.len() as u64;
        }
        self.append_unhashed(chunk)
    }

    /// Appends bytes without hashing them with the digest's algorithm now: [`Spool::verify`]
    /// does that afterwards, reading them back, unless they match their seal. For bytes read
    /// back from our own bucket, so that the hash is not on their readers' path. (A seal
    /// being made or checked sees every byte either way.) Blocking I/O.
    pub(crate) fn append_unhashed(&mut self, chunk: &[u8]) -> io::Result<()> {
        use std::io::Write;
        (&*self.file).write_all(chunk)?;
        if let Some(sealer) = &mut self.sealer {
            sealer.update(chunk);
        }
        if let Some(check) = &mut self.seal_check {
            check.update(chunk);
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Checks the bytes about to be written against `check` (before the first byte).
    pub(crate) fn check_seal(&mut self, check: SealCheck) {
        debug_assert_eq!(self.written, 0);
        self.seal_check = Some(check);
    }

    /// Whether the bytes written are checked against a seal.
    pub(crate) fn has_seal_check(&self) -> bool {
        self.seal_check.is_some()
    }

    /// Hashes what was appended unhashed, reading it back from the file.
    fn catch_up(&mut self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.hashed == self.written {
            return Ok(());
        }
        let mut buf = vec![0u8; CATCH_UP_READ];
        while self.hashed < self.written {
            let len = (self.written - self.hashed).min(CATCH_UP_READ as u64) as usize;
            let read = self.file.read_at(&mut buf[..len], self.hashed)?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.hasher.update(&buf[..read]);
            self.hashed += read as u64;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// A handle for positional reads of what has been written.
    pub(crate) fn reader(&self) -> BlobReader {
        BlobReader::shared(&self.file)
    }

    /// Checks that the bytes written hash to `digest` (hashing first what was appended
    /// unhashed: blocking I/O) — or, for bytes read back from the bucket, that they match
    /// their seal, which was made from bytes that hashed to `digest`. On a mismatch the spool
    /// is dropped (and its file deleted); only a [`VerifiedSpool`] can be committed.
    pub(crate) fn verify(mut self, digest: &Digest) -> Result<VerifiedSpool> {
        let by_seal = match self.seal_check.take().map(SealCheck::matches) {
            Some(true) => true,
            Some(false) => {
                tracing::warn!(%digest, "bytes read back from the bucket do not match their seal; checking them against their digest");
                false
            }
            None => false,
        };
        if !by_seal {
            self.catch_up().map_err(io_err(&self.path))?;
            let actual = std::mem::replace(&mut self.hasher, digest.hasher()).finish();
            digest.check(actual)?;
        }
        let seal = self.sealer.take().map(Sealer::finish);
        Ok(VerifiedSpool {
            spool: self,
            digest: digest.clone(),
            seal,
            by_seal,
        })
    }
}

/// A spool whose bytes are known to hash to its digest: complete and correct, though not yet
/// durable or in place. Dropping it deletes the file, as for a [`Spool`].
pub struct VerifiedSpool {
    spool: Spool,
    digest: Digest,
    /// Its seal, for a blob about to be committed to a remote backend.
    seal: Option<Seal>,
    by_seal: bool,
}

impl VerifiedSpool {
    /// Whether its bytes were found intact by their seal rather than by hashing them.
    pub(crate) fn verified_by_seal(&self) -> bool {
        self.by_seal
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
        if !self.committed {
            // Readers holding the file keep their open handle; the name goes now.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How a stored blob can be read.
pub enum OpenBlob {
    /// From a local file: the filesystem backend's, or the hot cache's copy.
    Local {
        /// The file.
        reader: BlobReader,
        /// Its size.
        size: u64,
    },
    /// Only from the remote backend ([`Store::read_remote`]): no local copy yet.
    Remote {
        /// Its size.
        size: u64,
    },
}

impl OpenBlob {
    /// The blob's size.
    pub(crate) fn size(&self) -> u64 {
        match self {
            OpenBlob::Local { size, .. } | OpenBlob::Remote { size } => *size,
        }
    }
}

impl Store {
    /// The size of a committed blob, or `None` if the store does not have it. Asks the backend
    /// about blobs the index does not know (another process may have committed them).
    pub(crate) async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(blob) = self.index.blob(digest) {
            return Ok(Some(blob.size));
        }
        let Some(object) = self.backend.stat(&Store::blob_key(digest)).await? else {
            return Ok(None);
        };
        let manifest = self.backend.stat(&Store::meta_key(digest)).await?.is_some();
        self.index.learn(
            digest,
            IndexedBlob {
                size: object.size,
                written: object.modified_ms,
                manifest,
                seal: None,
            },
        );
        Ok(Some(object.size))
    }

    /// What the hot cache holds and how it is used (`None` with a local backend).
    pub(crate) fn hot_cache_stats(&self) -> Option<super::HotCacheStats> {
        self.hot.as_ref().map(|h| h.stats())
    }

    /// Whether the index lists the blob (no I/O).
    pub(crate) fn has_blob(&self, digest: &Digest) -> bool {
        self.index.blob(digest).is_some()
    }

    /// Opens a committed blob for reading: from a local file when there is one, else it must
    /// be read from the backend. Counts as an access.
    pub(crate) async fn open_blob(&self, digest: &Digest) -> Result<Option<OpenBlob>> {
        let local = match &self.hot {
            Some(hot) => hot.open(digest).await?,
            None => self.backend.open_local(&Store::blob_key(digest)).await?,
        };
        let opened = match local {
            Some((file, size)) => Some(OpenBlob::Local {
                reader: BlobReader::new(file),
                size,
            }),
            None if self.hot.is_some() => self
                .blob_size(digest)
                .await?
                .map(|size| OpenBlob::Remote { size }),
            None => {
                // The index may still list a blob removed behind our back.
                self.index.forget(digest);
                None
            }
        };
        if opened.is_some() {
            self.touch(digest);
        }
        Ok(opened)
    }

    /// Streams a blob from the remote backend from byte `from` on (what [`OpenBlob::Remote`]
    /// asks for); `None` if the backend does not have it.
    pub(crate) async fn read_remote(
        &self,
        digest: &Digest,
        from: u64,
    ) -> Result<Option<ByteStream>> {
        let key = Store::blob_key(digest);
        // The index knows the size of every blob a read is asked for (opening it put it
        // there): no request to the bucket just to learn it.
        let read = match self.index.blob(digest) {
            Some(blob) => self.backend.read_sized(&key, from, blob.size).await?,
            None => self.backend.read(&key, from).await?,
        };
        Ok(read)
    }

    /// Where a client may fetch the blob directly, when redirects are on and the backend can
    /// presign URLs; `None` otherwise (serve it ourselves).
    pub(crate) async fn blob_redirect(&self, digest: &Digest) -> Result<Option<url::Url>> {
        if !self.redirect || self.blob_size(digest).await?.is_none() {
            return Ok(None);
        }
        self.touch(digest);
        Ok(self
            .backend
            .presigned_get(&Store::blob_key(digest), REDIRECT_TTL)
            .await?)
    }

    /// Creates a spool for a blob about to be fetched and committed, sealed as it is written
    /// when the store has a seal key.
    pub(crate) fn create_spool(&self, digest: &Digest) -> Result<Spool> {
        let mut spool = self.create_local_spool(digest)?;
        spool.sealer = self.seal_key.as_ref().map(|key| key.sealer(digest));
        Ok(spool)
    }

    /// Creates a spool for a local copy of a blob the backend holds, checked against the
    /// blob's seal as it is written when there is one made with this store's key. A blob the
    /// index lists without any seal (committed before seals, or without a key) is sealed as it
    /// is read, so that once verified its seal can be recorded ([`Store::keep_local_copy`]).
    /// A seal made with another key is left as it is: two replicas with different keys would
    /// otherwise take turns replacing each other's.
    pub(crate) fn create_copy_spool(&self, digest: &Digest) -> Result<Spool> {
        let mut spool = self.create_local_spool(digest)?;
        let (Some(key), Some(indexed)) = (&self.seal_key, self.index.blob(digest)) else {
            return Ok(spool);
        };
        match indexed.seal {
            Some(seal) => {
                if let Some(check) = key.check(digest, seal) {
                    spool.check_seal(check);
                }
            }
            None => spool.sealer = Some(key.sealer(digest)),
        }
        Ok(spool)
    }

    fn create_local_spool(&self, digest: &Digest) -> Result<Spool> {
        let path = self.temp_path(&format!("spool-{}", &digest.hex()[..12]));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.live_spools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        Ok(Spool::new(
            path,
            file,
            digest,
            Arc::clone(&self.live_spools),
        ))
    }

    /// Whether `path` is a spool being written.
    pub(super) fn is_live_spool(&self, path: &std::path::Path) -> bool {
        self.live_spools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(path)
    }

    /// Verifies a finished spool against `digest` and, if it matches, commits it. On a
    /// mismatch the spool is deleted and nothing is kept.
    pub(crate) async fn commit_spool(&self, spool: Spool, digest: &Digest) -> Result<u64> {
        self.commit_verified(spool.verify(digest)?).await
    }

    /// Makes a verified spool durable in the backend (renamed into place, or uploaded whole and
    /// then kept in the hot cache).
    pub(crate) async fn commit_verified(&self, verified: VerifiedSpool) -> Result<u64> {
        let VerifiedSpool {
            mut spool,
            digest,
            seal,
            ..
        } = verified;
        let size = spool.written;
        self.commit_local_file(&spool.path, &digest, size, seal)
            .await?;
        spool.committed = true;
        Ok(size)
    }

    /// Keeps a verified spool of a blob read from the remote backend as its local copy.
    pub(crate) async fn keep_local_copy(&self, verified: VerifiedSpool) -> Result<u64> {
        let VerifiedSpool {
            mut spool,
            digest,
            seal,
            ..
        } = verified;
        let size = spool.written;
        if let Some(hot) = &self.hot {
            hot.adopt(&digest, &spool.path, size)?;
            spool.committed = true;
        }
        if let Some(seal) = seal {
            self.record_first_seal(&digest, size, seal).await;
        }
        Ok(size)
    }

    /// Records the seal of a blob read back and verified against its digest, if the index
    /// still lists it, at that size, without a seal: the next replica to read it checks the
    /// seal instead of hashing it. At most one journal entry per blob, whoever reads it; a
    /// failure only costs that speed later.
    async fn record_first_seal(&self, digest: &Digest, size: u64, seal: Seal) {
        let Some(known) = self.index.blob(digest) else {
            return;
        };
        if known.seal.is_some() || known.size != size {
            return;
        }
        let change = Change::AddBlob {
            digest: digest.to_string(),
            blob: IndexedBlob {
                seal: Some(seal),
                ..known
            },
        };
        match self.index.record(self.backend.as_ref(), change).await {
            Ok(()) => tracing::debug!(%digest, "sealed a blob read back from the bucket"),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot record the seal of a blob read back from the bucket")
            }
        }
    }

    /// Commits the complete, verified local file `file` as the blob `digest`, and indexes it
    /// with its `seal` (if it has one).
    pub(super) async fn commit_local_file(
        &self,
        file: &std::path::Path,
        digest: &Digest,
        size: u64,
        seal: Option<Seal>,
    ) -> Result<()> {
        let known = self.index.blob(digest);
        match self
            .backend
            .commit_file(&Store::blob_key(digest), file)
            .await?
        {
            Committed::Moved => {}
            Committed::Copied => match &self.hot {
                Some(hot) => hot.adopt(digest, file, size)?,
                None => {
                    let _ = tokio::fs::remove_file(file).await;
                }
            },
        }
        let manifest = known.is_some_and(|b| b.manifest);
        // Committed again unsealed (another replica's push without a seal key): the bytes
        // are the same, so the earlier seal still holds.
        let seal = seal.or(known.and_then(|b| b.seal));
        self.index
            .record(
                self.backend.as_ref(),
                Change::AddBlob {
                    digest: digest.to_string(),
                    blob: IndexedBlob {
                        size,
                        written: now_ms(),
                        manifest,
                        seal,
                    },
                },
            )
            .await?;
        if known.is_none() {
            self.added_blob(digest);
        }
        Ok(())
    }

    /// Reads a manifest by digest (from the index, else from the backend), as a pull does:
    /// counted as an access, and kept in the index.
    pub(crate) async fn read_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<StoredManifest>>> {
        if let Some(m) = self.manifests.get(digest) {
            self.touch(digest);
            return Ok(Some(m));
        }
        let Some(manifest) = self.load_manifest(digest).await? else {
            return Ok(None);
        };
        self.touch(digest);
        self.index_manifest(&manifest);
        Ok(Some(manifest))
    }

    /// Reads a manifest without it counting as an access or filling the index (for views
    /// of the store that must not change the LRU order).
    pub(crate) async fn peek_manifest(
        &self,
        digest: &Digest,
    ) -> Result<Option<Arc<StoredManifest>>> {
        match self.manifests.get(digest) {
            Some(m) => Ok(Some(m)),
            None => self.load_manifest(digest).await,
        }
    }

    async fn load_manifest(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        let Some(bytes) = self.get_object(&Store::blob_key(digest)).await? else {
            return Ok(None);
        };
        let media_type = match self.get_object(&Store::meta_key(digest)).await? {
            Some(meta) => serde_json::from_slice::<ManifestMeta>(&meta)
                .map(|m| m.media_type)
                .unwrap_or_else(|_| media::manifest_media_type(None, &bytes)),
            None => media::manifest_media_type(None, &bytes),
        };
        Ok(Some(Arc::new(StoredManifest {
            digest: digest.clone(),
            bytes,
            media_type,
        })))
    }

    /// Stores a manifest's exact bytes under its digest, with its media type.
    pub(crate) async fn put_manifest(&self, manifest: Arc<StoredManifest>) -> Result<()> {
        let digest = &manifest.digest;
        digest.check(Digest::of_bytes_with(digest.algorithm(), &manifest.bytes))?;
        let meta = serde_json::to_vec(&ManifestMeta {
            media_type: manifest.media_type.clone(),
        })
        .map_err(|e| StoreError::Corrupt {
            key: Store::meta_key(digest),
            message: e.to_string(),
        })?;
        let existed = self.index.blob(digest).is_some();
        // Metadata first: a blob present in the backend always has its media type beside it.
        self.put_object(&Store::meta_key(digest), meta).await?;
        self.put_object(&Store::blob_key(digest), manifest.bytes.clone())
            .await?;
        let size = manifest.bytes.len() as u64;
        self.index
            .record(
                self.backend.as_ref(),
                Change::AddBlob {
                    digest: digest.to_string(),
                    blob: IndexedBlob {
                        size,
                        written: now_ms(),
                        manifest: true,
                        seal: None,
                    },
                },
            )
            .await?;
        if !existed {
            self.added_blob(digest);
        }
        self.index_manifest(&manifest);
        Ok(())
    }

    fn index_manifest(&self, manifest: &Arc<StoredManifest>) {
        if manifest.bytes.len() <= MAX_INDEXED_MANIFEST {
            self.manifests
                .insert(manifest.digest.clone(), Arc::clone(manifest));
        }
    }

    /// Streams a whole stored blob: from a local file when there is one, else from the backend.
    pub(crate) async fn read_blob(&self, digest: &Digest) -> Result<Option<ByteStream>> {
        if let Some(hot) = &self.hot
            && let Some((file, size)) = hot.open(digest).await?
        {
            let file = tokio::fs::File::from_std(file);
            return Ok(Some(ByteStream::from_offset(
                size,
                0,
                Box::pin(tokio_util::io::ReaderStream::new(file)),
            )));
        }
        Ok(self.backend.read(&Store::blob_key(digest), 0).await?)
    }

    /// The bytes of a small blob (a config, a manifest) whole.
    pub(crate) async fn read_small_blob(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.get_object(&Store::blob_key(digest)).await
    }
}

/// The sidecar record of a manifest blob.
#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestMeta {
    media_type: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &std::path::Path, digest: &Digest) -> Spool {
        let path = dir.join("spool");
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        Spool::new(path, file, digest, Arc::default())
    }

    #[test]
    fn bytes_appended_unhashed_are_hashed_when_verified() {
        let blob: Vec<u8> = (0..3 * CATCH_UP_READ + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = Digest::of_bytes(&blob);
        let dir = tempfile::tempdir().unwrap();
        let mut s = spool(dir.path(), &digest);
        let (first, rest) = blob.split_at(CATCH_UP_READ + 5);
        s.append_unhashed(first).unwrap();
        // Appended the usual way after unhashed bytes: hashed in order all the same.
        s.append(rest).unwrap();
        assert_eq!(s.written(), blob.len() as u64);
        assert!(s.verify(&digest).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let mut s = spool(dir.path(), &digest);
        let mut wrong = blob.clone();
        wrong[2 * CATCH_UP_READ] ^= 1;
        s.append_unhashed(&wrong).unwrap();
        assert!(matches!(
            s.verify(&digest),
            Err(StoreError::DigestMismatch(_))
        ));
        assert!(
            !dir.path().join("spool").exists(),
            "a spool that does not verify is deleted"
        );
    }
}

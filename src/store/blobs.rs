//! Blobs: `blobs/<algorithm>/<2 hex>/<hex>`, present only when complete and verified.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::{
    MAX_INDEXED_MANIFEST, Result, Store, StoreError, StoredManifest, io_err, read_optional,
};
use crate::oci::digest::Hasher;
use crate::oci::{Digest, media};

/// A temp file being filled with a blob's bytes, hashed as they are written.
///
/// Readers may read it concurrently through [`Spool::reader`] (positional reads, so they never
/// disturb the writer). [`Store::commit_spool`] renames it into place only if the hash matches;
/// dropping a spool without committing deletes the file.
pub struct Spool {
    path: PathBuf,
    file: Arc<std::fs::File>,
    hasher: Hasher,
    written: u64,
    committed: bool,
}

impl Spool {
    /// Appends bytes. Blocking I/O: call from a blocking-friendly context.
    pub fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        use std::io::Write;
        (&*self.file).write_all(chunk)?;
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A handle for positional reads of what has been written.
    pub fn reader(&self) -> Arc<std::fs::File> {
        Arc::clone(&self.file)
    }

    /// Where the spool lives.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Checks that the bytes written hash to `digest`. On a mismatch the spool is dropped
    /// (and its file deleted); only a [`VerifiedSpool`] can be committed.
    pub fn verify(mut self, digest: &Digest) -> Result<VerifiedSpool> {
        let actual = std::mem::replace(&mut self.hasher, digest.hasher()).finish();
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(VerifiedSpool {
            spool: self,
            digest: digest.clone(),
        })
    }
}

/// A spool whose bytes are known to hash to its digest: complete and correct, though not yet
/// durable or in place. Dropping it deletes the file, as for a [`Spool`].
pub struct VerifiedSpool {
    spool: Spool,
    digest: Digest,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.committed {
            // Readers holding the file keep their open handle; the name goes now.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Store {
    /// Where a blob lives once committed.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.digest_path("blobs", digest)
    }

    pub(super) fn meta_path(&self, digest: &Digest) -> PathBuf {
        let mut path = self.digest_path("meta", digest).into_os_string();
        path.push(".json");
        PathBuf::from(path)
    }

    /// The size of a committed blob, or `None` if the store does not have it.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.blob_sizes.get(digest) {
            return Ok(Some(size));
        }
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                self.blob_sizes.insert(digest.clone(), meta.len());
                Ok(Some(meta.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Opens a committed blob for reading, with its size.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<(std::fs::File, u64)>> {
        let path = self.blob_path(digest);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, io::Error>((file, len))
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.blob_path(digest),
            source: io::Error::other(e),
        })?;
        match opened {
            Ok((file, len)) => {
                self.blob_sizes.insert(digest.clone(), len);
                self.touch(digest);
                Ok(Some((file, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.blob_sizes.invalidate(digest);
                Ok(None)
            }
            Err(source) => Err(StoreError::Io {
                path: self.blob_path(digest),
                source,
            }),
        }
    }

    /// Creates a spool for a blob about to be fetched.
    pub fn create_spool(&self, digest: &Digest) -> Result<Spool> {
        let path = self.temp_path(&format!("spool-{}", &digest.hex()[..12]));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Spool {
            path,
            file: Arc::new(file),
            hasher: digest.hasher(),
            written: 0,
            committed: false,
        })
    }

    /// Verifies a finished spool against `digest` and, if it matches, syncs it and renames it
    /// into place. On a mismatch the spool is deleted and nothing is kept. Blocking I/O.
    pub fn commit_spool(&self, spool: Spool, digest: &Digest) -> Result<u64> {
        self.commit_verified(spool.verify(digest)?)
    }

    /// Syncs a verified spool and renames it into place. Blocking I/O.
    pub fn commit_verified(&self, verified: VerifiedSpool) -> Result<u64> {
        let VerifiedSpool { mut spool, digest } = verified;
        spool.file.sync_all().map_err(io_err(&spool.path))?;
        let target = self.blob_path(&digest);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let existed = target.exists();
        std::fs::rename(&spool.path, &target).map_err(io_err(&target))?;
        spool.committed = true;
        self.blob_sizes.insert(digest.clone(), spool.written);
        if !existed {
            self.added_blob(&digest, spool.written);
        }
        Ok(spool.written)
    }

    /// Reads a manifest by digest (from the index, else from disk), as a pull does: counted as
    /// an access, and kept in the index.
    pub async fn read_manifest(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        if let Some(m) = self.manifests.get(digest) {
            self.touch(digest);
            return Ok(Some(m));
        }
        let Some(manifest) = self.load_manifest(digest).await? else {
            return Ok(None);
        };
        self.touch(digest);
        self.index_manifest(&manifest).await;
        Ok(Some(manifest))
    }

    /// Reads a manifest without it counting as an access or filling the index (for views
    /// of the store that must not change the LRU order).
    pub async fn peek_manifest(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        match self.manifests.get(digest) {
            Some(m) => Ok(Some(m)),
            None => self.load_manifest(digest).await,
        }
    }

    async fn load_manifest(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>> {
        let Some(bytes) = read_optional(&self.blob_path(digest)).await? else {
            return Ok(None);
        };
        let media_type = match read_optional(&self.meta_path(digest)).await? {
            Some(meta) => serde_json::from_slice::<ManifestMeta>(&meta)
                .map(|m| m.media_type)
                .unwrap_or_else(|_| media::manifest_media_type(None, &bytes)),
            None => media::manifest_media_type(None, &bytes),
        };
        Ok(Some(Arc::new(StoredManifest {
            digest: digest.clone(),
            bytes: Bytes::from(bytes),
            media_type,
        })))
    }

    /// Stores a manifest's exact bytes under its digest, with its media type.
    pub async fn put_manifest(&self, manifest: Arc<StoredManifest>) -> Result<()> {
        let actual = Digest::of_bytes_with(manifest.digest.algorithm(), &manifest.bytes);
        if actual != manifest.digest {
            return Err(StoreError::DigestMismatch {
                expected: manifest.digest.clone(),
                actual,
            });
        }
        let meta = serde_json::to_vec(&ManifestMeta {
            media_type: manifest.media_type.clone(),
        })
        .map_err(|e| StoreError::Corrupt {
            path: self.meta_path(&manifest.digest),
            message: e.to_string(),
        })?;
        let existed = tokio::fs::metadata(self.blob_path(&manifest.digest))
            .await
            .is_ok();
        // Metadata first: a blob present on disk always has its media type beside it.
        self.write_atomic(&self.meta_path(&manifest.digest), &meta)
            .await?;
        self.write_atomic(&self.blob_path(&manifest.digest), &manifest.bytes)
            .await?;
        self.blob_sizes
            .insert(manifest.digest.clone(), manifest.bytes.len() as u64);
        if !existed {
            self.added_blob(&manifest.digest, manifest.bytes.len() as u64);
        }
        self.index_manifest(&manifest).await;
        Ok(())
    }

    async fn index_manifest(&self, manifest: &Arc<StoredManifest>) {
        if manifest.bytes.len() <= MAX_INDEXED_MANIFEST {
            self.manifests
                .insert(manifest.digest.clone(), Arc::clone(manifest));
        }
    }
}

/// The sidecar record of a manifest blob.
#[derive(serde::Serialize, serde::Deserialize)]
struct ManifestMeta {
    media_type: String,
}

//! What the store holds and how it is used: total bytes and blobs (computed from the disk at
//! start, kept up to date in memory), last access per blob (in memory, saved to `access.json`
//! now and then, so a restart keeps the order roughly right), and blobs being read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Result, Store};
use crate::oci::Digest;

/// Counters and access times.
#[derive(Default)]
pub struct Usage {
    bytes: AtomicU64,
    blobs: AtomicU64,
    access: Mutex<HashMap<Digest, u64>>,
    dirty: AtomicBool,
    readers: Mutex<HashMap<Digest, usize>>,
}

/// A blob on disk, as listed by [`Store::list_blobs`].
#[derive(Debug, Clone)]
pub struct BlobEntry {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was last written (committed), in milliseconds since the epoch.
    pub written: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Usage {
    fn lock_access(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, u64>> {
        self.access.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_readers(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held while a blob file is being read; eviction and GC leave the blob alone meanwhile.
pub struct ReadGuard {
    store: Arc<Store>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut readers = self.store.usage.lock_readers();
        if let Some(n) = readers.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.digest);
            }
        }
    }
}

impl Store {
    /// Bytes and number of blobs in the store.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.usage.bytes.load(Ordering::Relaxed),
            self.usage.blobs.load(Ordering::Relaxed),
        )
    }

    /// Records that a new blob of `size` bytes was committed (and accessed now).
    pub(super) fn added_blob(&self, digest: &Digest, size: u64) {
        self.usage.bytes.fetch_add(size, Ordering::Relaxed);
        self.usage.blobs.fetch_add(1, Ordering::Relaxed);
        self.touch(digest);
        self.grew.notify_one();
    }

    /// Records that a blob of `size` bytes was removed.
    pub(super) fn removed_blob(&self, digest: &Digest, size: u64) {
        let _ = self
            .usage
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(size))
            });
        let _ = self
            .usage
            .blobs
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(1))
            });
        self.usage.lock_access().remove(digest);
        self.usage.dirty.store(true, Ordering::Relaxed);
    }

    /// Notes an access to a blob (memory only).
    pub fn touch(&self, digest: &Digest) {
        self.usage.lock_access().insert(digest.clone(), now_ms());
        self.usage.dirty.store(true, Ordering::Relaxed);
    }

    /// When a blob was last accessed, if known since start or from `access.json`.
    pub fn last_access(&self, digest: &Digest) -> Option<u64> {
        self.usage.lock_access().get(digest).copied()
    }

    /// Marks a blob as being read until the guard is dropped.
    pub fn reading(self: &Arc<Self>, digest: &Digest) -> ReadGuard {
        *self.usage.lock_readers().entry(digest.clone()).or_insert(0) += 1;
        ReadGuard {
            store: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// Whether a blob is being read.
    pub fn is_being_read(&self, digest: &Digest) -> bool {
        self.usage.lock_readers().contains_key(digest)
    }

    fn access_path(&self) -> PathBuf {
        self.root.join("access.json")
    }

    /// Saves access times if they changed since the last save.
    pub async fn save_access(&self) -> Result<()> {
        if !self.usage.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let snapshot: HashMap<String, u64> = self
            .usage
            .lock_access()
            .iter()
            .map(|(d, t)| (d.to_string(), *t))
            .collect();
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        self.write_atomic(&self.access_path(), &bytes).await
    }

    /// Computes usage from the disk and loads saved access times.
    pub(super) async fn load_usage(&self) -> Result<()> {
        let blobs = self.list_blobs().await?;
        let bytes = blobs.iter().map(|b| b.size).sum();
        self.usage.bytes.store(bytes, Ordering::Relaxed);
        self.usage
            .blobs
            .store(blobs.len() as u64, Ordering::Relaxed);
        if let Ok(text) = tokio::fs::read(self.access_path()).await {
            let saved: HashMap<String, u64> = serde_json::from_slice(&text).unwrap_or_default();
            let mut access = self.usage.lock_access();
            for (hex, t) in saved {
                // Older files name sha256 blobs by their hex alone.
                let text = if hex.contains(':') {
                    hex
                } else {
                    format!("sha256:{hex}")
                };
                if let Ok(d) = text.parse::<Digest>() {
                    access.insert(d, t);
                }
            }
        }
        Ok(())
    }

    /// Every committed blob with its size and write time.
    pub async fn list_blobs(&self) -> Result<Vec<BlobEntry>> {
        self.digest_entries("blobs", false, |entry, digest| {
            let meta = entry.metadata()?;
            let written = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            Ok(Some(BlobEntry {
                digest,
                size: meta.len(),
                written,
            }))
        })
        .await
    }
}

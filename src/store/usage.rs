//! How the store is used: last access per blob (in memory, saved to `access.json` now and
//! then, so a restart keeps the order roughly right), and blobs being read. What it holds is
//! the index's to say.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{Result, Store};
use crate::oci::Digest;

/// The access times' map (looked up on every cached read).
type AccessTimes = HashMap<Digest, u64, ahash::RandomState>;

/// Counters and access times.
#[derive(Default)]
pub struct Usage {
    access: Mutex<AccessTimes>,
    dirty: AtomicBool,
    readers: Mutex<HashMap<Digest, usize>>,
}

/// A stored blob, as listed by [`Store::list_blobs`].
#[derive(Debug, Clone)]
pub struct BlobEntry {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was last written (committed), in milliseconds since the epoch.
    pub written: u64,
}

pub use crate::clock::now_ms;

impl Usage {
    fn lock_access(&self) -> std::sync::MutexGuard<'_, AccessTimes> {
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

/// Where access times are saved.
const ACCESS: &str = "access.json";

impl Store {
    /// Bytes and number of blobs in the store.
    pub fn usage(&self) -> (u64, u64) {
        self.index.usage()
    }

    /// Records that a new blob was committed (and accessed now).
    pub(super) fn added_blob(&self, digest: &Digest) {
        self.touch(digest);
        self.grew.notify_one();
    }

    /// Records that a blob was removed.
    pub(super) fn removed_blob(&self, digest: &Digest) {
        self.usage.lock_access().remove(digest);
        self.usage.dirty.store(true, Ordering::Relaxed);
    }

    /// Notes an access to a blob (memory only).
    pub(crate) fn touch(&self, digest: &Digest) {
        let now = now_ms();
        // Updated in place when known: a cached manifest's every read comes here.
        let mut access = self.usage.lock_access();
        match access.get_mut(digest) {
            Some(at) => *at = now,
            None => {
                access.insert(digest.clone(), now);
            }
        }
        drop(access);
        self.usage.dirty.store(true, Ordering::Relaxed);
    }

    /// When a blob was last accessed, if known since start or from `access.json`.
    pub fn last_access(&self, digest: &Digest) -> Option<u64> {
        self.usage.lock_access().get(digest).copied()
    }

    /// Marks a blob as being read until the guard is dropped.
    pub(crate) fn reading(self: &Arc<Self>, digest: &Digest) -> ReadGuard {
        *self.usage.lock_readers().entry(digest.clone()).or_insert(0) += 1;
        ReadGuard {
            store: Arc::clone(self),
            digest: digest.clone(),
        }
    }

    /// Whether a blob is being read.
    pub(crate) fn is_being_read(&self, digest: &Digest) -> bool {
        self.usage.lock_readers().contains_key(digest)
    }

    /// Saves access times if they changed since the last save.
    pub async fn save_access(&self) -> Result<()> {
        if !self.usage.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        // Replicas on one bucket share the file: take in what the others saved first, so
        // eviction orders by the latest access on any of them.
        if self.is_remote() {
            self.load_access().await?;
        }
        let snapshot: HashMap<String, u64> = self
            .usage
            .lock_access()
            .iter()
            .map(|(d, t)| (d.to_string(), *t))
            .collect();
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        self.put_object(ACCESS, bytes).await
    }

    /// Loads saved access times.
    pub(super) async fn load_access(&self) -> Result<()> {
        let Some(text) = self.get_object(ACCESS).await? else {
            return Ok(());
        };
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
                let at = access.entry(d).or_default();
                *at = (*at).max(t);
            }
        }
        Ok(())
    }

    /// Every committed blob with its size and write time (from the index).
    pub(crate) fn list_blobs(&self) -> Vec<BlobEntry> {
        self.index
            .blobs()
            .into_iter()
            .map(|(digest, blob)| BlobEntry {
                digest,
                size: blob.size,
                written: blob.written,
            })
            .collect()
    }
}

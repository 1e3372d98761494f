//! The hot cache: local copies of a remote backend's blobs, so warm pulls are read from the
//! local disk (through the page-cache fast path) at the filesystem backend's speed, and the
//! bucket is read once per blob per machine. Capped at `cache_size`: the least recently read
//! copies go first. It holds nothing the bucket lacks (blobs enter it only once committed to
//! the bucket, or read from it), so it may be wiped at any time while regmirror is stopped.
//!
//! Layout: `cache/<algorithm>-<hex>`, one file per blob.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::usage::now_ms;
use super::{Result, StoreError, io_err};
use crate::oci::Digest;

/// What the hot cache holds and how it is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotCacheStats {
    /// Reads answered from a local copy.
    pub hits: u64,
    /// Reads of blobs with no local copy.
    pub misses: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Blobs held.
    pub blobs: u64,
    /// The cap.
    pub capacity: u64,
}

/// A strictly increasing time in milliseconds: two reads in the same millisecond still have
/// an order.
fn stamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    now.max(previous + 1)
}

#[derive(Default)]
struct Entries {
    /// Size and last read of each copy.
    copies: HashMap<Digest, (u64, u64)>,
    bytes: u64,
}

/// Local copies of remote blobs, capped in size.
pub struct HotCache {
    dir: PathBuf,
    capacity: u64,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HotCache {
    /// Opens the cache in `dir`, counting what an earlier run left there (it stays valid: blobs
    /// are immutable), and trims it to `capacity`.
    pub(crate) async fn open_dir(dir: &Path, capacity: u64) -> Result<HotCache> {
        tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
        let mut entries = Entries::default();
        let mut listing = tokio::fs::read_dir(dir).await.map_err(io_err(dir))?;
        while let Some(entry) = listing.next_entry().await.map_err(io_err(dir))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = name
                .split_once('-')
                .and_then(|(algorithm, hex)| Digest::from_parts(algorithm, hex).ok());
            let meta = entry.metadata().await.map_err(io_err(dir))?;
            match digest {
                Some(digest) if meta.is_file() => {
                    let read = meta
                        .accessed()
                        .or(meta.modified())
                        .map_or(0, super::backend::epoch_ms);
                    entries.copies.insert(digest, (meta.len(), read));
                    entries.bytes += meta.len();
                }
                // Not ours (a partial copy cannot be here: copies are renamed in whole).
                _ => {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        let cache = HotCache {
            dir: dir.to_owned(),
            capacity,
            entries: Mutex::new(entries),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        };
        cache.trim(None);
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}", digest.algorithm().name(), digest.hex()))
    }

    /// Opens the local copy of a blob, counted as a hit or a miss.
    pub(crate) async fn open(&self, digest: &Digest) -> Result<Option<(std::fs::File, u64)>> {
        let known = self.lock().copies.contains_key(digest);
        if !known {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let path = self.path(digest);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.path(digest),
            source: std::io::Error::other(e),
        })?;
        match opened {
            Ok(opened) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                if let Some(copy) = self.lock().copies.get_mut(digest) {
                    copy.1 = stamp();
                }
                Ok(Some(opened))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind our back: forget it, read from the backend.
                self.forget(digest);
                self.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(source) => Err(StoreError::Io {
                path: self.path(digest),
                source,
            }),
        }
    }

    /// Takes the complete, verified file at `file` as the copy of `digest` (renamed, so
    /// `file` must be in the staging directory), then trims the cache to its cap.
    pub(crate) fn adopt(&self, digest: &Digest, file: &Path, size: u64) -> Result<()> {
        let target = self.path(digest);
        std::fs::rename(file, &target).map_err(io_err(&target))?;
        {
            let mut entries = self.lock();
            if let Some((old, _)) = entries.copies.insert(digest.clone(), (size, stamp())) {
                entries.bytes -= old;
            }
            entries.bytes += size;
        }
        self.trim(Some(digest));
        Ok(())
    }

    /// Removes the copy of a blob (the blob was deleted).
    pub(crate) fn remove(&self, digest: &Digest) {
        if self.forget(digest) {
            let _ = std::fs::remove_file(self.path(digest));
        }
    }

    fn forget(&self, digest: &Digest) -> bool {
        let mut entries = self.lock();
        match entries.copies.remove(digest) {
            Some((size, _)) => {
                entries.bytes -= size;
                true
            }
            None => false,
        }
    }

    /// Removes the least recently read copies until the cache is within its cap, sparing
    /// `keep` (just added). Readers that have a copy open keep reading it: on Unix the bytes go
    /// when the last handle closes.
    fn trim(&self, keep: Option<&Digest>) {
        let victims = {
            let mut entries = self.lock();
            if entries.bytes <= self.capacity {
                return;
            }
            let mut by_age: Vec<_> = entries
                .copies
                .iter()
                .filter(|(d, _)| Some(*d) != keep)
                .map(|(d, (size, read))| (*read, *size, d.clone()))
                .collect();
            by_age.sort();
            let mut victims = Vec::new();
            for (_, size, digest) in by_age {
                if entries.bytes <= self.capacity {
                    break;
                }
                entries.copies.remove(&digest);
                entries.bytes -= size;
                victims.push(digest);
            }
            victims
        };
        for digest in victims {
            let _ = std::fs::remove_file(self.path(&digest));
        }
    }

    /// Hits, misses, size.
    pub(crate) fn stats(&self) -> HotCacheStats {
        let entries = self.lock();
        HotCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: entries.bytes,
            blobs: entries.copies.len() as u64,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_within_its_cap_dropping_the_least_recently_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HotCache::open_dir(&dir.path().join("cache"), 250)
            .await
            .unwrap();
        let mut digests = Vec::new();
        for n in 0..3u8 {
            let bytes = vec![n; 100];
            let digest = Digest::of_bytes_with(crate::oci::digest::Algorithm::Sha256, &bytes);
            let file = dir.path().join(format!("spool-{n}"));
            std::fs::write(&file, &bytes).unwrap();
            if n == 2 {
                // The first is read again: the second is now the oldest.
                assert!(cache.open(&digests[0]).await.unwrap().is_some());
            }
            cache.adopt(&digest, &file, 100).unwrap();
            digests.push(digest);
        }
        assert!(cache.open(&digests[1]).await.unwrap().is_none());
        assert!(cache.open(&digests[0]).await.unwrap().is_some());
        assert!(cache.open(&digests[2]).await.unwrap().is_some());
        assert_eq!(cache.stats().bytes, 200);
        // A new start counts what is there.
        drop(cache);
        let again = HotCache::open_dir(&dir.path().join("cache"), 250)
            .await
            .unwrap();
        assert_eq!(again.stats().blobs, 2);
    }
}

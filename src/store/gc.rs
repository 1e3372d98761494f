//! Freeing space: eviction of the least recently accessed cached content when the store is
//! over its size cap, and garbage collection of what nothing reaches any more.
//!
//! Neither ever removes pinned (pushed) content, a blob being read, or a blob the caller says
//! is in use (a fill in flight); GC also spares anything younger than its grace period.

use std::collections::HashSet;
use std::time::Duration;

use super::usage::now_ms;
use super::{Result, Store, TagKey};
use crate::oci::manifest::Manifest;
use crate::oci::{Digest, RepoName, Tag};

/// What an eviction removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EvictionReport {
    /// Blobs removed.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Tag records dropped because their manifest went.
    pub tags: u64,
}

/// What a GC removed (or, dry, would remove).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Unreachable blobs.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Tag records whose manifest is gone.
    pub tags: u64,
    /// Expired upload sessions.
    pub uploads: u64,
    /// Leftover temp and spool files.
    pub temp_files: u64,
    /// Unfinished uploads to the backend that a killed process left (aborted).
    pub stray_uploads: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} unreachable blobs ({}), {} dangling tag records, {} expired upload sessions, {} leftover temp files, {} stray backend uploads",
            self.blobs,
            crate::units::HumanBytes(self.bytes),
            self.tags,
            self.uploads,
            self.temp_files,
            self.stray_uploads
        )
    }
}

impl Store {
    /// Removes the least recently accessed cached blobs until the store holds at most
    /// `target` bytes. Skips pinned blobs, blobs being read, and those `in_use` says are.
    pub(crate) async fn evict(
        &self,
        target: u64,
        in_use: impl Fn(&Digest) -> bool,
    ) -> Result<EvictionReport> {
        if !self.index.is_loaded() {
            return Err(super::StoreError::NotLoaded);
        }
        let mut report = EvictionReport::default();
        // Unfinished uploads count against the cap too.
        let used = || self.usage().0 + self.uploads_bytes();
        if used() <= target {
            return Ok(report);
        }
        // Fail closed: if the pins cannot be read, nothing is evicted.
        let pinned = self.pinned().await?;
        let mut candidates: Vec<_> = self
            .list_blobs()
            .into_iter()
            .filter(|b| !pinned.contains(&b.digest))
            .map(|b| (self.last_access(&b.digest).unwrap_or(b.written), b))
            .collect();
        candidates.sort_by_key(|(accessed, _)| *accessed);
        for (_, blob) in candidates {
            if used() <= target {
                break;
            }
            if in_use(&blob.digest) || self.is_being_read(&blob.digest) {
                continue;
            }
            if self.delete_blob(&blob.digest).await? {
                report.blobs += 1;
                report.bytes += blob.size;
            }
        }
        if report.blobs > 0 {
            report.tags = self.drop_dangling_tags(false).await?;
        }
        Ok(report)
    }

    /// Removes tag records whose manifest is no longer stored; returns how many.
    pub(crate) async fn drop_dangling_tags(&self, dry_run: bool) -> Result<u64> {
        let mut dropped = 0;
        for (origin, repo, tag) in self.index.tags() {
            let (Ok(repo), Ok(tag)) = (repo.parse::<RepoName>(), tag.parse::<Tag>()) else {
                continue;
            };
            let key = TagKey {
                upstream: origin,
                repo,
                tag,
            };
            let Some(record) = self.get_tag(&key).await? else {
                continue;
            };
            let present = match record.digest() {
                Some(d) => self.index.blob(&d).is_some(),
                None => false,
            };
            if !present {
                dropped += 1;
                if !dry_run {
                    self.delete_tag(&key).await?;
                }
            }
        }
        Ok(dropped)
    }

    /// Removes blobs that no stored manifest references (manifests themselves are roots, as are
    /// the tags pointing at them), dangling tag records, upload sessions idle for `upload_ttl`,
    /// and temp files, sparing anything written or read (on any replica) within `grace`. With
    /// `dry_run`, only counts.
    pub async fn gc(
        &self,
        grace: Duration,
        upload_ttl: Duration,
        dry_run: bool,
        in_use: impl Fn(&Digest) -> bool,
    ) -> Result<GcReport> {
        if !self.index.is_loaded() {
            return Err(super::StoreError::NotLoaded);
        }
        let mut report = GcReport::default();
        let blobs = self.index.blobs();
        let mut manifests = HashSet::new();
        let mut referenced = HashSet::new();
        // Fail closed: any error reading a manifest aborts the run before anything is
        // removed. Reads go straight to the backend: GC neither fills the index nor counts as
        // an access (it must not reset the LRU order eviction relies on).
        for (digest, blob) in &blobs {
            if !blob.manifest {
                continue;
            }
            manifests.insert(digest.clone());
            let Some(bytes) = self.get_object(&Store::blob_key(digest)).await? else {
                continue;
            };
            referenced.extend(references(&bytes));
        }
        let blobs: Vec<_> = blobs
            .into_iter()
            .map(|(digest, blob)| super::BlobEntry {
                digest,
                size: blob.size,
                written: blob.written,
            })
            .collect();
        // Other replicas on the bucket read blobs too: their access times (saved every
        // minute) spare what they served within the grace period, so a stream they are
        // sending from the bucket is not cut off under them.
        if self.is_remote() {
            self.load_access().await?;
        }
        let cutoff = now_ms().saturating_sub(grace.as_millis() as u64);
        for blob in blobs {
            let reachable = manifests.contains(&blob.digest) || referenced.contains(&blob.digest);
            let young = blob.written > cutoff;
            let read_lately = self.last_access(&blob.digest).is_some_and(|at| at > cutoff);
            if reachable
                || young
                || read_lately
                || in_use(&blob.digest)
                || self.is_being_read(&blob.digest)
            {
                continue;
            }
            report.blobs += 1;
            report.bytes += blob.size;
            if !dry_run {
                self.delete_blob(&blob.digest).await?;
            }
        }
        report.tags = self.drop_dangling_tags(dry_run).await?;
        report.uploads = self.expire_uploads_dry(upload_ttl, dry_run).await? as u64;
        report.temp_files = self.remove_old_temp_files(grace, dry_run).await?;
        if !dry_run {
            report.stray_uploads = self.backend.abort_stray_uploads(grace).await?;
        }
        Ok(report)
    }

    /// Removes files in `tmp/` not written for `age`, except spools being written.
    async fn remove_old_temp_files(&self, age: Duration, dry_run: bool) -> Result<u64> {
        let dir = self.tmp_dir();
        let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
        let mut removed = 0;
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return Ok(0);
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let written = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .map_or(0, crate::clock::epoch_ms);
            if written <= cutoff && !self.is_live_spool(&entry.path()) {
                removed += 1;
                if !dry_run {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        Ok(removed)
    }
}

/// Every digest a manifest refers to: what the manifest parser finds, and, so that a manifest
/// of a type it does not know still protects what it names, every `"digest"` anywhere in the
/// JSON.
fn references(bytes: &[u8]) -> HashSet<Digest> {
    fn walk(value: &serde_json::Value, out: &mut HashSet<Digest>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if key == "digest"
                        && let Some(d) = v.as_str().and_then(|s| s.parse().ok())
                    {
                        out.insert(d);
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashSet::new();
    if let Ok(parsed) = Manifest::parse(None, bytes) {
        out.extend(parsed.blobs);
        out.extend(parsed.children);
    }
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) {
        walk(&doc, &mut out);
    }
    out
}

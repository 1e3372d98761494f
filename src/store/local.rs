//! Content pushed to the mirror: pins (never evicted), local tags, referrers, deletes, and the
//! catalog of repositories the store holds.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, TagKey, io_err, read_optional};
use crate::oci::{Digest, RepoName, Tag};

/// The pseudo-upstream under which pushed tags are recorded. Upstream names are host names
/// (no `_`), so it cannot collide with one.
pub const LOCAL: &str = "_local";

/// A referrer: a manifest whose `subject` is another manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Referrer {
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Its artifact type.
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Who holds the pins of imported content (`regmirror import`).
pub const IMPORT_HOLDER: &str = "_import";

/// A pin holder as a file name: repository names have `/`, never `+`.
fn holder_file(holder: &str) -> String {
    holder.replace('/', "+")
}

/// Pins written before pins had holders: a plain file instead of a directory.
const LEGACY_HOLDER: &str = "_legacy";

impl Store {
    /// `pins/<algorithm>/<2 hex>/<hex>/`: one empty file per holder (a repository the blob was
    /// pushed to or referenced from, or an import).
    fn pin_dir(&self, digest: &Digest) -> PathBuf {
        self.digest_path("pins", digest)
    }

    /// Pins a blob for `holder`: eviction never removes it while anyone holds it. Blocking.
    pub fn pin_blocking(&self, digest: &Digest, holder: &str) -> Result<()> {
        let dir = self.pin_dir(digest);
        match std::fs::metadata(&dir) {
            // A pin from before holders existed: keep it as a holder of its own.
            Ok(meta) if meta.is_file() => {
                std::fs::remove_file(&dir).map_err(io_err(&dir))?;
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let legacy = dir.join(LEGACY_HOLDER);
                std::fs::write(&legacy, b"").map_err(io_err(&legacy))?;
            }
            _ => std::fs::create_dir_all(&dir).map_err(io_err(&dir))?,
        }
        let file = dir.join(holder_file(holder));
        std::fs::write(&file, b"").map_err(io_err(&file))
    }

    /// Pins a blob for `holder` (see [`Store::pin_blocking`]); a repository that deleted the
    /// blob before has it again.
    pub async fn pin(self: &Arc<Self>, digest: &Digest, holder: &str) -> Result<()> {
        if self.has_tombstones(digest) {
            remove_optional(&self.tombstone_path(digest, holder)).await?;
        }
        let (store, digest, holder) = (Arc::clone(self), digest.clone(), holder.to_owned());
        tokio::task::spawn_blocking(move || store.pin_blocking(&digest, &holder))
            .await
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("pins"),
                source: io::Error::other(e),
            })?
    }

    /// Whether `holder` holds a pin on the blob.
    pub async fn is_held_by(&self, digest: &Digest, holder: &str) -> Result<bool> {
        let file = self.pin_dir(digest).join(holder_file(holder));
        match tokio::fs::metadata(&file).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
                Ok(false)
            }
            Err(source) => Err(StoreError::Io { path: file, source }),
        }
    }

    /// Whether anyone holds a pin on the blob.
    pub async fn is_pinned(&self, digest: &Digest) -> Result<bool> {
        let dir = self.pin_dir(digest);
        match tokio::fs::metadata(&dir).await {
            Ok(meta) if meta.is_file() => Ok(true),
            Ok(_) => {
                let mut entries = tokio::fs::read_dir(&dir).await.map_err(io_err(&dir))?;
                Ok(entries.next_entry().await.map_err(io_err(&dir))?.is_some())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        }
    }

    /// Who holds pins on the blob (repository names, `<repository>@<manifest hex>` for what a
    /// pushed manifest references, `_import`, `_legacy`).
    pub async fn holders(&self, digest: &Digest) -> Result<Vec<String>> {
        let dir = self.pin_dir(digest);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            // A plain file: a pin from before holders existed.
            Err(e) if e.raw_os_error() == Some(20) => return Ok(vec![LEGACY_HOLDER.into()]),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut holders = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            holders.push(entry.file_name().to_string_lossy().replace('+', "/"));
        }
        Ok(holders)
    }

    /// Releases `holder`'s pin on the blob; whether it held one.
    pub async fn unpin(&self, digest: &Digest, holder: &str) -> Result<bool> {
        remove_optional(&self.pin_dir(digest).join(holder_file(holder))).await
    }

    fn tombstone_path(&self, digest: &Digest, holder: &str) -> PathBuf {
        self.digest_path("deleted", digest)
            .join(holder_file(holder))
    }

    fn lock_tombstones(&self) -> std::sync::MutexGuard<'_, HashSet<Digest>> {
        self.tombstoned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any repository deleted this blob while others kept it (memory only).
    pub fn has_tombstones(&self, digest: &Digest) -> bool {
        self.lock_tombstones().contains(digest)
    }

    /// Records that `holder` deleted a blob other repositories still hold: for `holder` it is
    /// gone (reads through it answer unknown) until it is pushed or mounted there again.
    pub async fn mark_deleted(&self, digest: &Digest, holder: &str) -> Result<()> {
        let path = self.tombstone_path(digest, holder);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
        }
        tokio::fs::write(&path, b"").await.map_err(io_err(&path))?;
        self.lock_tombstones().insert(digest.clone());
        Ok(())
    }

    /// Whether `holder` deleted this blob (see [`Store::mark_deleted`]).
    pub async fn is_deleted_for(&self, digest: &Digest, holder: &str) -> Result<bool> {
        if !self.has_tombstones(digest) {
            return Ok(false);
        }
        let path = self.tombstone_path(digest, holder);
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Finds the blobs with tombstones (at start).
    pub(super) async fn load_tombstones(&self) -> Result<()> {
        let found = self
            .digest_entries("deleted", true, |_, digest| Ok(Some(digest)))
            .await?
            .into_iter()
            .collect();
        *self.lock_tombstones() = found;
        Ok(())
    }

    /// Removes every pin of a blob.
    async fn remove_pins(&self, digest: &Digest) -> Result<()> {
        let dir = self.pin_dir(digest);
        let removed = match tokio::fs::metadata(&dir).await {
            Ok(meta) if meta.is_file() => tokio::fs::remove_file(&dir).await,
            Ok(_) => tokio::fs::remove_dir_all(&dir).await,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        }
    }

    /// The digests of pinned blobs (held by anyone). An unreadable pin directory is an
    /// error: callers that delete must not guess.
    pub(super) async fn pinned(&self) -> Result<HashSet<Digest>> {
        let pinned = self
            .digest_entries("pins", true, |entry, digest| {
                // A directory of holders (held while not empty), or a pin from before holders.
                let held = !entry.file_type()?.is_dir()
                    || std::fs::read_dir(entry.path())?.next().is_some();
                Ok(held.then_some(digest))
            })
            .await?;
        Ok(pinned.into_iter().collect())
    }

    /// Records a blob's size in the index.
    pub fn note_blob_size(&self, digest: &Digest, size: u64) {
        self.blob_sizes.insert(digest.clone(), size);
    }

    /// Removes a blob (and its pin and metadata). Readers that already opened it keep reading
    /// it: on Unix the bytes go when the last handle closes.
    pub async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        self.blob_sizes.invalidate(digest);
        self.manifests.invalidate(digest);
        let size = tokio::fs::metadata(self.blob_path(digest))
            .await
            .map(|m| m.len());
        let existed = remove_optional(&self.blob_path(digest)).await?;
        if existed {
            self.removed_blob(digest, size.unwrap_or(0));
        }
        self.remove_pins(digest).await?;
        remove_optional(&self.meta_path(digest)).await?;
        if self.lock_tombstones().remove(digest) {
            let dir = self.digest_path("deleted", digest);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            }
        }
        Ok(existed)
    }

    /// The local key of a pushed tag.
    pub fn local_tag_key(repo: &RepoName, tag: &Tag) -> TagKey {
        TagKey {
            upstream: LOCAL.to_owned(),
            repo: repo.clone(),
            tag: tag.clone(),
        }
    }

    /// Removes a tag record; whether it existed.
    pub async fn delete_tag(&self, key: &TagKey) -> Result<bool> {
        self.tags.invalidate(key);
        remove_optional(&self.tag_path(key)).await
    }

    /// The tags recorded for `repo` under `upstream`, sorted.
    pub async fn list_tags(&self, upstream: &str, repo: &RepoName) -> Result<Vec<String>> {
        let dir = self
            .root
            .join("tags")
            .join(upstream)
            .join(repo.as_str())
            .join("_tags");
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut tags = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            if let Some(tag) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                tags.push(tag.to_owned());
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// The tags under `upstream` pointing at `digest`, as keys.
    pub async fn tags_pointing_to(
        &self,
        upstream: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<TagKey>> {
        let mut keys = Vec::new();
        for tag in self.list_tags(upstream, repo).await? {
            let Ok(tag) = tag.parse::<Tag>() else {
                continue;
            };
            let key = TagKey {
                upstream: upstream.to_owned(),
                repo: repo.clone(),
                tag,
            };
            if let Some(record) = self.get_tag(&key).await?
                && record.digest().as_ref() == Some(digest)
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn referrers_dir(&self, subject: &Digest) -> PathBuf {
        self.digest_path("referrers", subject)
    }

    /// Records that `referrer` refers to `subject`.
    pub async fn add_referrer(&self, subject: &Digest, referrer: &Referrer) -> Result<()> {
        let Ok(digest) = referrer.digest.parse::<Digest>() else {
            return Ok(());
        };
        let path = self
            .referrers_dir(subject)
            .join(format!("{}.json", digest.hex()));
        let bytes = serde_json::to_vec(referrer).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        self.write_atomic(&path, &bytes).await
    }

    /// The referrers of `subject` whose manifests are still stored.
    pub async fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>> {
        let dir = self.referrers_dir(subject);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io_err(&dir))? {
            let Some(bytes) = read_optional(&entry.path()).await? else {
                continue;
            };
            let Ok(referrer) = serde_json::from_slice::<Referrer>(&bytes) else {
                continue;
            };
            let alive = match referrer.digest.parse::<Digest>() {
                Ok(d) => self.blob_size(&d).await?.is_some(),
                Err(_) => false,
            };
            if alive {
                out.push(referrer);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Every repository with at least one tag record: where its tags came from (an upstream's
    /// name, or [`LOCAL`] for pushed ones) and its name there (pushed ones by their recorded
    /// name, `<upstream>/<repo>` when they route to an upstream).
    pub async fn repositories(&self) -> Result<Vec<(String, String)>> {
        let root = self.root.join("tags");
        let mut out = Vec::new();
        let mut upstreams = tokio::fs::read_dir(&root).await.map_err(io_err(&root))?;
        while let Some(upstream) = upstreams.next_entry().await.map_err(io_err(&root))? {
            let name = upstream.file_name().to_string_lossy().into_owned();
            let path = upstream.path();
            let found = tokio::task::spawn_blocking(move || {
                let mut found = Vec::new();
                collect_repos(&path, &path, &mut found);
                found
            })
            .await
            .unwrap_or_default();
            out.extend(found.into_iter().map(|repo| (name.clone(), repo)));
        }
        out.sort();
        Ok(out)
    }
}

/// Finds directories holding a non-empty `_tags` below `dir`, as paths relative to `base`.
fn collect_repos(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == "_tags" {
            let non_empty = std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_some());
            if non_empty && let Ok(rel) = dir.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        } else {
            collect_repos(base, &path, out);
        }
    }
}

async fn remove_optional(path: &Path) -> Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

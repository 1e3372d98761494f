//! Content pushed to the mirror: pins (never evicted), local tags, referrers, deletes, and the
//! catalog of repositories the store holds.

use std::collections::HashSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::BackendError;
use super::index::Change;
use super::{Result, Store, StoreError, TagKey};
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

impl Store {
    /// `pins/<algorithm>/<2 hex>/<hex>/`: one empty object per holder (a repository the blob
    /// was pushed to or referenced from, or an import).
    fn pin_prefix(digest: &Digest) -> String {
        format!("{}/", Store::digest_key("pins", digest))
    }

    fn pin_key(digest: &Digest, holder: &str) -> String {
        format!("{}{}", Store::pin_prefix(digest), holder_file(holder))
    }

    /// Pins a blob for `holder`: eviction never removes it while anyone holds it. A
    /// repository that deleted the blob before has it again.
    pub(crate) async fn pin(&self, digest: &Digest, holder: &str) -> Result<()> {
        self.holders.invalidate(digest);
        if self.has_tombstones(digest) {
            self.delete_object(&Store::tombstone_key(digest, holder))
                .await?;
        }
        self.put_object(&Store::pin_key(digest, holder), Bytes::new())
            .await
    }

    /// Whether `holder` holds a pin on the blob.
    pub(crate) async fn is_held_by(&self, digest: &Digest, holder: &str) -> Result<bool> {
        Ok(self
            .backend
            .stat(&Store::pin_key(digest, holder))
            .await?
            .is_some())
    }

    /// Who holds pins on the blob (repository names, `<repository>@<manifest hex>` for what a
    /// pushed manifest references, `_import`).
    pub(crate) async fn holders(&self, digest: &Digest) -> Result<Vec<String>> {
        let prefix = Store::pin_prefix(digest);
        let mut holders: Vec<String> = self
            .backend
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| Some(o.key.strip_prefix(&prefix)?.replace('+', "/")))
            .collect();
        holders.sort();
        Ok(holders)
    }

    /// [`Store::holders`], remembered briefly: reads decide visibility with it on every pull
    /// by digest, and a remote backend answers a listing in milliseconds.
    pub(crate) async fn holders_cached(
        &self,
        digest: &Digest,
    ) -> Result<std::sync::Arc<Vec<String>>> {
        if let Some(holders) = self.holders.get(digest) {
            return Ok(holders);
        }
        let holders = std::sync::Arc::new(self.holders(digest).await?);
        self.holders
            .insert(digest.clone(), std::sync::Arc::clone(&holders));
        Ok(holders)
    }

    /// Releases `holder`'s pin on the blob; whether it held one.
    pub(crate) async fn unpin(&self, digest: &Digest, holder: &str) -> Result<bool> {
        self.holders.invalidate(digest);
        if !self.is_held_by(digest, holder).await? {
            return Ok(false);
        }
        self.delete_object(&Store::pin_key(digest, holder)).await
    }

    fn tombstone_key(digest: &Digest, holder: &str) -> String {
        format!(
            "{}/{}",
            Store::digest_key("deleted", digest),
            holder_file(holder)
        )
    }

    /// Whether any repository deleted this blob while others kept it (memory only).
    pub(crate) fn has_tombstones(&self, digest: &Digest) -> bool {
        self.index.is_tombstoned(digest)
    }

    /// Records that `holder` deleted a blob other repositories still hold: for `holder` it is
    /// gone (reads through it answer unknown) until it is pushed or mounted there again.
    pub(crate) async fn mark_deleted(&self, digest: &Digest, holder: &str) -> Result<()> {
        self.put_object(&Store::tombstone_key(digest, holder), Bytes::new())
            .await?;
        if !self.has_tombstones(digest) {
            self.index
                .record(
                    self.backend.as_ref(),
                    Change::Tombstone {
                        digest: digest.to_string(),
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Whether `holder` deleted this blob (see [`Store::mark_deleted`]).
    pub(crate) async fn is_deleted_for(&self, digest: &Digest, holder: &str) -> Result<bool> {
        if !self.has_tombstones(digest) {
            return Ok(false);
        }
        Ok(self
            .backend
            .stat(&Store::tombstone_key(digest, holder))
            .await?
            .is_some())
    }

    /// The digests of pinned blobs (held by anyone). An entry in the pins area that is not a
    /// pin is an error: callers that delete must not guess.
    pub(super) async fn pinned(&self) -> Result<HashSet<Digest>> {
        let mut pinned = HashSet::new();
        for object in self.backend.list("pins/").await? {
            match Store::parse_digest_key("pins", &object.key) {
                // `<hex>/<holder>`, or `<hex>` alone: a pin from before pins had holders.
                Some((digest, rest)) if rest.is_empty() || rest.len() > 1 => {
                    pinned.insert(digest);
                }
                _ => return Err(BackendError::Layout(object.key).into()),
            }
        }
        Ok(pinned)
    }

    /// Removes a blob (and its pins, metadata and tombstones). Readers that already opened it
    /// keep reading it: on Unix the bytes go when the last handle closes.
    pub(crate) async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        self.manifests.invalidate(digest);
        self.holders.invalidate(digest);
        let existed = self.blob_size(digest).await?.is_some();
        self.delete_object(&Store::blob_key(digest)).await?;
        if let Some(hot) = &self.hot {
            hot.remove(digest);
        }
        if existed {
            self.index
                .record(
                    self.backend.as_ref(),
                    Change::RemoveBlob {
                        digest: digest.to_string(),
                    },
                )
                .await?;
            self.removed_blob(digest);
        }
        self.backend
            .delete_prefix(&Store::pin_prefix(digest))
            .await?;
        self.delete_object(&Store::meta_key(digest)).await?;
        self.backend
            .delete_prefix(&format!("{}/", Store::digest_key("deleted", digest)))
            .await?;
        Ok(existed)
    }

    /// The local key of a pushed tag.
    pub(crate) fn local_tag_key(repo: &RepoName, tag: &Tag) -> TagKey {
        TagKey {
            upstream: LOCAL.to_owned(),
            repo: repo.clone(),
            tag: tag.clone(),
        }
    }

    /// The tags recorded for `repo` under `upstream`, sorted.
    pub(crate) async fn list_tags(&self, upstream: &str, repo: &RepoName) -> Result<Vec<String>> {
        Ok(self.index.tags_of(upstream, repo.as_str()))
    }

    /// The tags under `upstream` pointing at `digest`, as keys.
    pub(crate) async fn tags_pointing_to(
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

    fn referrers_prefix(subject: &Digest) -> String {
        format!("{}/", Store::digest_key("referrers", subject))
    }

    /// Records that `referrer` refers to `subject`.
    pub(crate) async fn add_referrer(&self, subject: &Digest, referrer: &Referrer) -> Result<()> {
        let Ok(digest) = referrer.digest.parse::<Digest>() else {
            return Ok(());
        };
        let key = format!("{}{}.json", Store::referrers_prefix(subject), digest.hex());
        let bytes = serde_json::to_vec(referrer).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        self.put_object(&key, bytes).await
    }

    /// The referrers of `subject` whose manifests are still stored.
    pub(crate) async fn referrers(&self, subject: &Digest) -> Result<Vec<Referrer>> {
        let mut out = Vec::new();
        for object in self.backend.list(&Store::referrers_prefix(subject)).await? {
            let Some(bytes) = self.get_object(&object.key).await? else {
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
    pub(crate) async fn repositories(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = self
            .index
            .tags()
            .into_iter()
            .map(|(origin, repo, _)| (origin, repo))
            .collect();
        out.dedup();
        Ok(out)
    }
}

//! Tag records: which digest a tag of an upstream repository pointed to, and when we last knew.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::index::Change;
use super::{Result, Store, StoreError};
use crate::oci::{Digest, RepoName, Tag};

/// Identifies a tag: the upstream it came from, the repository there, and the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagKey {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository as named on the upstream.
    pub repo: RepoName,
    /// The tag.
    pub tag: Tag,
}

/// A tag key as its three parts, owned ([`TagKey`]) or borrowed: the cache of tag records is
/// looked up by borrowed parts, so a pull that finds its record in memory allocates no key.
pub trait TagKeyParts {
    /// Upstream, repository, tag.
    fn parts(&self) -> (&str, &str, &str);
}

impl TagKeyParts for TagKey {
    fn parts(&self) -> (&str, &str, &str) {
        (&self.upstream, self.repo.as_str(), self.tag.as_str())
    }
}

/// The parts of a tag key, borrowed from the request's own values.
struct BorrowedTagKey<'a> {
    upstream: &'a str,
    repo: &'a RepoName,
    tag: &'a Tag,
}

impl BorrowedTagKey<'_> {
    /// The key as an owned [`TagKey`], for the cache to keep.
    fn to_key(&self) -> TagKey {
        TagKey {
            upstream: self.upstream.to_owned(),
            repo: self.repo.clone(),
            tag: self.tag.clone(),
        }
    }
}

impl TagKeyParts for BorrowedTagKey<'_> {
    fn parts(&self) -> (&str, &str, &str) {
        (self.upstream, self.repo.as_str(), self.tag.as_str())
    }
}

impl<'a> Borrow<dyn TagKeyParts + 'a> for TagKey {
    fn borrow(&self) -> &(dyn TagKeyParts + 'a) {
        self
    }
}

// Owned and borrowed keys hash and compare by their parts alone, so that either finds the other.
impl Hash for dyn TagKeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (upstream, repo, tag) = self.parts();
        upstream.hash(state);
        repo.hash(state);
        tag.hash(state);
    }
}

impl PartialEq for dyn TagKeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn TagKeyParts + '_ {}

impl Hash for TagKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn TagKeyParts).hash(state);
    }
}

/// What the store remembers about a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest the tag pointed to.
    pub digest: String,
    /// That manifest's media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the upstream last confirmed this, in milliseconds since the Unix epoch.
    pub fetched_at_ms: u64,
    /// `digest` parsed, once: a record lives in the cache and every pull by tag reads it.
    #[serde(skip)]
    parsed: ParsedDigest,
}

/// A record's digest as parsed on first use. Part of no comparison: it only repeats `digest`.
#[derive(Debug, Clone, Default)]
struct ParsedDigest(OnceLock<Option<Digest>>);

impl PartialEq for ParsedDigest {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ParsedDigest {}

impl TagRecord {
    /// A record confirmed now.
    pub(crate) fn new(digest: &Digest, media_type: &str, size: u64) -> TagRecord {
        TagRecord {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            size,
            fetched_at_ms: now_ms(),
            parsed: ParsedDigest(OnceLock::from(Some(digest.clone()))),
        }
    }

    /// The digest (records are only written from valid digests; a record read from the store
    /// with anything else has none).
    pub(crate) fn digest(&self) -> Option<Digest> {
        self.parsed
            .0
            .get_or_init(|| self.digest.parse().ok())
            .clone()
    }

    /// How long ago the upstream last confirmed the record.
    pub(crate) fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.fetched_at_ms))
    }

    /// The same record, confirmed now.
    pub(crate) fn refreshed(&self) -> TagRecord {
        TagRecord {
            fetched_at_ms: now_ms(),
            ..self.clone()
        }
    }
}

use crate::clock::now_ms;

impl Store {
    /// [`Store::get_tag`] of the tag `tag` of `repo` under `upstream`: a record this process
    /// holds (what nearly every pull finds) is found without building a key.
    pub(crate) async fn get_tag_of(
        &self,
        upstream: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Arc<TagRecord>>> {
        let parts = BorrowedTagKey {
            upstream,
            repo,
            tag,
        };
        if let Some(record) = self.tags.get(&parts as &dyn TagKeyParts) {
            return Ok(record);
        }
        self.get_tag(&parts.to_key()).await
    }

    /// The record of a tag, if the store has one (shared with the cache: a cached lookup
    /// copies nothing).
    pub(crate) async fn get_tag(&self, key: &TagKey) -> Result<Option<Arc<TagRecord>>> {
        if let Some(record) = self.tags.get(key) {
            return Ok(record);
        }
        let object = Store::tag_key(key);
        let Some(bytes) = self.get_object(&object).await? else {
            // Remembered too: every pull looks for a pushed tag first, and most find none.
            self.tags.insert(key.clone(), None);
            return Ok(None);
        };
        let record: TagRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                key: object,
                message: e.to_string(),
            })?;
        let record = Arc::new(record);
        self.tags.insert(key.clone(), Some(Arc::clone(&record)));
        Ok(Some(record))
    }

    /// Drops what this process cached of a tag record: the next read goes to the backend
    /// (another replica just wrote it).
    pub(crate) fn forget_cached_tag(&self, key: &TagKey) {
        self.tags.invalidate(key);
    }

    /// Writes a tag record (atomically) and indexes it.
    pub(crate) async fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
        let object = Store::tag_key(key);
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            key: object.clone(),
            message: e.to_string(),
        })?;
        self.put_object(&object, bytes).await?;
        self.tags
            .insert(key.clone(), Some(Arc::new(record.clone())));
        let place = Store::tag_place(key);
        // Pushed tags are journaled at every write, so that other replicas drop what they
        // cached of the old record at once; cached upstream tags only when first written
        // (each replica revalidates those by their TTL anyway).
        if key.upstream == super::LOCAL || !self.index.has_tag(&place) {
            self.index
                .record(self.backend.as_ref(), Change::AddTag { place })
                .await?;
        }
        Ok(())
    }

    /// Removes a tag record; whether it existed.
    pub(crate) async fn delete_tag(&self, key: &TagKey) -> Result<bool> {
        self.tags.invalidate(key);
        let existed = self.delete_object(&Store::tag_key(key)).await?;
        let place = Store::tag_place(key);
        if self.index.has_tag(&place) {
            self.index
                .record(self.backend.as_ref(), Change::RemoveTag { place })
                .await?;
        }
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(upstream: &str, repo: &str, tag: &str) -> TagKey {
        TagKey {
            upstream: upstream.to_owned(),
            repo: repo.parse().unwrap(),
            tag: tag.parse().unwrap(),
        }
    }

    #[test]
    fn a_record_read_back_has_its_digest_and_equals_the_one_written() {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let record = TagRecord::new(&digest, "application/json", 12);
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("parsed"), "{json}");
        let read: TagRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(read, record);
        assert_eq!(read.digest(), Some(digest.clone()));
        assert_eq!(read.refreshed().digest(), Some(digest));
        let rotten: TagRecord = serde_json::from_str(
            r#"{"digest":"sha256:nope","media_type":"x","size":1,"fetched_at_ms":0}"#,
        )
        .unwrap();
        assert_eq!(rotten.digest(), None);
    }

    #[test]
    fn a_key_is_found_by_its_borrowed_parts_and_only_by_them() {
        let cache: moka::sync::Cache<TagKey, u32, ahash::RandomState> =
            moka::sync::Cache::builder()
                .max_capacity(100)
                .build_with_hasher(ahash::RandomState::new());
        cache.insert(key("docker.io", "library/alpine", "3"), 1);
        cache.insert(key("docker.io", "library/alpine3", "x"), 2);
        let find = |upstream: &str, repo: &str, tag: &str| {
            let (repo, tag): (RepoName, Tag) = (repo.parse().unwrap(), tag.parse().unwrap());
            let parts = BorrowedTagKey {
                upstream,
                repo: &repo,
                tag: &tag,
            };
            cache.get(&parts as &dyn TagKeyParts)
        };
        assert_eq!(find("docker.io", "library/alpine", "3"), Some(1));
        assert_eq!(find("docker.io", "library/alpine3", "x"), Some(2));
        assert_eq!(find("docker.io", "library/alpine", "x"), None);
        assert_eq!(find("ghcr.io", "library/alpine", "3"), None);
        // The same characters split differently between the parts are another key.
        assert_eq!(find("docker.io", "library/alpine3", "3"), None);
        assert_eq!(cache.get(&key("docker.io", "library/alpine", "3")), Some(1));
    }
}

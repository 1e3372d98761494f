//! Content pushed to the mirror: manifests checked and stored exactly as sent, local tags that
//! win over upstream ones, deletes, and tag listings that merge both.

use std::sync::Arc;

use bytes::Bytes;

use super::{Mirror, ProxyError, Target};
use crate::oci::manifest::{Manifest, ManifestError};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::{LOCAL, Referrer, Store, StoredManifest, TagRecord};
use crate::upstream::RouteError;

/// Why a manifest push was refused.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Not a manifest we accept.
    #[error(transparent)]
    Invalid(#[from] ManifestError),
    /// A blob or child manifest it references is not in the store.
    #[error("manifest references {0}, which is not in the registry")]
    BlobUnknown(Digest),
    /// Pushed by digest, but the bytes hash to another.
    #[error("manifest does not match the digest it was pushed by: {0}")]
    DigestMismatch(crate::oci::DigestMismatch),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ProxyError),
}

impl From<crate::store::StoreError> for PushError {
    fn from(e: crate::store::StoreError) -> PushError {
        PushError::Store(e.into())
    }
}

/// The pin holder for what a pushed manifest references: the repository and the manifest, so
/// that deleting the manifest releases exactly those pins.
fn reference_holder(name: &RepoName, manifest: &Digest) -> String {
    format!("{name}@{}", manifest.hex())
}

/// A walk over what a manifest references: its blobs and child manifests, then (as the caller
/// expands them) the children's, each once, bounded against a hostile index.
struct References {
    pending: Vec<(Digest, bool)>,
    seen: std::collections::HashSet<Digest>,
}

impl References {
    /// The most references walked.
    const MAX: usize = 10_000;

    fn of(manifest: &Manifest) -> References {
        let mut walk = References {
            pending: Vec::new(),
            seen: std::collections::HashSet::new(),
        };
        walk.add(manifest);
        walk
    }

    fn add(&mut self, manifest: &Manifest) {
        self.pending
            .extend(manifest.blobs.iter().map(|d| (d.clone(), false)));
        self.pending
            .extend(manifest.children.iter().map(|d| (d.clone(), true)));
    }

    /// Adds a child manifest's own references.
    fn expand(&mut self, child: &StoredManifest) {
        if let Ok(parsed) = Manifest::parse(Some(&child.media_type), &child.bytes) {
            self.add(&parsed);
        }
    }

    /// The next reference not yet seen, and whether it is a manifest.
    fn next(&mut self) -> Option<(Digest, bool)> {
        while let Some((digest, is_manifest)) = self.pending.pop() {
            if self.seen.len() < Self::MAX && self.seen.insert(digest.clone()) {
                return Some((digest, is_manifest));
            }
        }
        None
    }
}

/// A stored push.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, if any (answered in `OCI-Subject`).
    pub subject: Option<Digest>,
}

impl Mirror {
    /// A pushed tag of `target`, if there is one.
    pub async fn local_manifest(
        &self,
        target: &Target,
        tag: &Tag,
    ) -> Result<Option<Arc<StoredManifest>>, ProxyError> {
        let local = self
            .store
            .get_tag_of(LOCAL, target.canonical(), tag)
            .await?;
        let Some(record) = local else {
            return Ok(None);
        };
        let Some(digest) = record.digest() else {
            return Ok(None);
        };
        Ok(self.store.read_manifest(&digest).await?)
    }

    /// Stores a pushed manifest after checking it: a known media type, every referenced blob
    /// and child present, the digest right when pushed by digest. The bytes are kept exactly.
    pub async fn push_manifest(
        &self,
        target: &Target,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Pushed, PushError> {
        let name = target.canonical();
        let manifest = Manifest::parse(content_type, &bytes)?;
        // Pushed by digest: that digest's algorithm (sha512 too); by tag: the canonical sha256.
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => crate::oci::digest::Algorithm::Sha256,
        };
        let digest = Digest::of_bytes_with(algorithm, &bytes);
        if let Reference::Digest(expected) = reference {
            expected
                .check(digest.clone())
                .map_err(PushError::DigestMismatch)?;
        }
        self.pin_references(&reference_holder(name, &digest), &manifest)
            .await?;
        let size = bytes.len() as u64;
        let stored = Arc::new(StoredManifest {
            digest: digest.clone(),
            bytes,
            media_type: manifest.media_type.clone(),
        });
        // Pinned before it appears, so eviction never sees it unpinned.
        self.store
            .pin(&digest, name.as_str())
            .await
            .map_err(ProxyError::from)?;
        self.store
            .put_manifest(stored)
            .await
            .map_err(ProxyError::from)?;
        if let Reference::Tag(tag) = reference {
            let record = TagRecord::new(&digest, &manifest.media_type, size);
            self.store
                .put_tag(&Store::local_tag_key(name, tag), &record)
                .await
                .map_err(ProxyError::from)?;
        }
        // A signature pushed here may change what this repository's verdicts would be.
        self.signatures.forget_repository(name.as_str());
        if let Some(subject) = &manifest.subject {
            let referrer = Referrer {
                media_type: manifest.media_type.clone(),
                digest: digest.to_string(),
                size,
                artifact_type: manifest.artifact_type.clone(),
                annotations: manifest.annotations.clone(),
            };
            self.store
                .add_referrer(subject, &referrer)
                .await
                .map_err(ProxyError::from)?;
        }
        Ok(Pushed {
            digest,
            subject: manifest.subject,
        })
    }

    /// Pins for `holder` (the pushed manifest, in its repository) every blob and child manifest
    /// `manifest` reaches, the children's own blobs too, however they got into the store, and
    /// checks that each is present. A pushed image then never loses a layer to eviction, even
    /// one that was only cached before. Pinning comes first, so eviction cannot remove a blob
    /// between the check and the pin; on failure the pins this push added are released.
    async fn pin_references(&self, holder: &str, manifest: &Manifest) -> Result<(), PushError> {
        let mut added = Vec::new();
        let mut missing = None;
        let mut walk = References::of(manifest);
        while let Some((digest, is_manifest)) = walk.next() {
            if !self.store.is_held_by(&digest, holder).await? {
                self.store.pin(&digest, holder).await?;
                added.push(digest.clone());
            }
            if self.store.blob_size(&digest).await?.is_none() {
                missing = Some(digest);
                break;
            }
            if is_manifest && let Some(child) = self.store.read_manifest(&digest).await? {
                walk.expand(&child);
            }
        }
        let Some(missing) = missing else {
            return Ok(());
        };
        for digest in added {
            self.store.unpin(&digest, holder).await?;
        }
        Err(PushError::BlobUnknown(missing))
    }

    /// Releases the pins a pushed manifest put on what it references (see
    /// [`Mirror::pin_references`]).
    async fn unpin_references(&self, name: &RepoName, digest: &Digest) -> Result<(), ProxyError> {
        let Some(stored) = self.store.read_manifest(digest).await? else {
            return Ok(());
        };
        let Ok(manifest) = Manifest::parse(Some(&stored.media_type), &stored.bytes) else {
            return Ok(());
        };
        let holder = reference_holder(name, digest);
        let mut walk = References::of(&manifest);
        while let Some((reference, is_manifest)) = walk.next() {
            self.store.unpin(&reference, &holder).await?;
            if is_manifest && let Some(child) = self.store.read_manifest(&reference).await? {
                walk.expand(&child);
            }
        }
        Ok(())
    }

    /// Deletes a pushed tag, or a manifest by digest (with the local tags of `target` pointing
    /// to it). Whether anything was there.
    pub async fn delete_manifest(
        &self,
        target: &Target,
        reference: &Reference,
    ) -> Result<bool, ProxyError> {
        let name = target.canonical();
        match reference {
            Reference::Tag(tag) => Ok(self
                .store
                .delete_tag(&Store::local_tag_key(name, tag))
                .await?),
            Reference::Digest(digest) => {
                let tags = self.store.tags_pointing_to(LOCAL, name, digest).await?;
                for key in &tags {
                    self.store.delete_tag(key).await?;
                }
                self.unpin_references(name, digest).await?;
                Ok(self.release(target, digest).await? || !tags.is_empty())
            }
        }
    }

    /// Deletes a blob through `target` (`DELETE /v2/<name>/blobs/<digest>`). Whether it was
    /// there for `target`.
    pub async fn delete_blob(&self, target: &Target, digest: &Digest) -> Result<bool, ProxyError> {
        self.release(target, digest).await
    }

    /// A delete through one repository: it gives up that repository's hold on the blob; the
    /// bytes go only when no repository holds them any more. A blob another repository holds
    /// stays for it, and is unknown to `target` unless `target` held it too. What no
    /// repository holds (content cached from an upstream, whichever) is not `target`'s to
    /// delete: eviction and GC remove it. Whether `target` had it.
    async fn release(&self, target: &Target, digest: &Digest) -> Result<bool, ProxyError> {
        let held = self
            .store
            .holders(digest)
            .await?
            .iter()
            .any(|h| target.holds(h));
        if !held {
            return Ok(false);
        }
        let name = target.canonical().as_str();
        self.store.unpin(digest, name).await?;
        if !self.store.holders(digest).await?.is_empty() {
            self.store.mark_deleted(digest, name).await?;
            return Ok(true);
        }
        self.store.delete_blob(digest).await?;
        Ok(true)
    }

    /// A page of the tags of `target` (`n` at most, after `last`): pushed ones merged with the
    /// upstream's when it routes to a reachable upstream, sorted and deduplicated, and
    /// whether more follow. With no pushed tags, `n` and `last` are passed on to the upstream.
    /// `None` when neither knows the repository.
    pub async fn list_tags(
        &self,
        target: &Target,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Option<(Vec<String>, bool)>, ProxyError> {
        let local = self.store.list_tags(LOCAL, target.canonical()).await?;
        let route = match target.route() {
            // The upstream is asked only for repositories its lists allow; pushed tags answer
            // regardless.
            Some(route) if super::policy_allows(route).is_err() && !local.is_empty() => None,
            Some(route) => {
                super::policy_allows(route)?;
                Some(route)
            }
            None if local.is_empty() => {
                return Err(RouteError::NoUpstream(target.sent().to_string()).into());
            }
            None => None,
        };
        if local.is_empty()
            && let Some(route) = &route
        {
            let n_up = n.and_then(|n| u32::try_from(n).ok());
            let page = route.upstream.tags_list(&route.repo, n_up, last).await?;
            return Ok(Some((page.tags, page.more)));
        }
        let mut tags = local;
        if let Some(route) = &route {
            match route.upstream.tags_list(&route.repo, None, None).await {
                Ok(page) => tags.extend(page.tags),
                // The pushed tags still answer.
                Err(e) => {
                    tracing::debug!(upstream = route.upstream.name(), error = %e, "upstream tag list unavailable")
                }
            }
        }
        tags.sort();
        tags.dedup();
        if let Some(last) = last {
            tags.retain(|t| t.as_str() > last);
        }
        let more = n.is_some_and(|n| tags.len() > n);
        if let Some(n) = n {
            tags.truncate(n);
        }
        Ok(Some((tags, more)))
    }
}

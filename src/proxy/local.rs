//! Content pushed to the mirror: manifests checked and stored exactly as sent, local tags that
//! win over upstream ones, deletes, and tag listings that merge both.

use std::sync::Arc;

use bytes::Bytes;

use super::{Mirror, ProxyError};
use crate::oci::manifest::{Manifest, ManifestError};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::{LOCAL, Referrer, Store, StoredManifest, TagRecord};

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
    #[error("manifest digest is {actual}, not {expected}")]
    DigestMismatch {
        /// From the URL.
        expected: Digest,
        /// Of the bytes.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ProxyError),
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
    /// The name pushed content of `name` is recorded under: the canonical
    /// `<upstream>/<repository>` when the name routes to an upstream, so that `alpine`,
    /// `library/alpine?ns=docker.io` and `docker.io/library/alpine` are one repository, as they
    /// are for pulls; the name as given otherwise.
    pub fn local_name(&self, ns: Option<&str>, name: &RepoName) -> RepoName {
        self.upstreams
            .resolve(ns, name)
            .ok()
            .and_then(|r| format!("{}/{}", r.upstream.name(), r.repo).parse().ok())
            .unwrap_or_else(|| name.clone())
    }

    /// A pushed tag of `name`, if there is one.
    pub async fn local_manifest(
        &self,
        ns: Option<&str>,
        name: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Arc<StoredManifest>>, ProxyError> {
        let name = &self.local_name(ns, name);
        let Some(record) = self.store.get_tag(&Store::local_tag_key(name, tag)).await? else {
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
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Pushed, PushError> {
        let name = &self.local_name(None, name);
        let manifest = Manifest::parse(content_type, &bytes)?;
        let digest = Digest::of_bytes(&bytes);
        if let Reference::Digest(expected) = reference
            && expected != &digest
        {
            return Err(PushError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        for needed in manifest.blobs.iter().chain(&manifest.children) {
            if self
                .store
                .blob_size(needed)
                .await
                .map_err(ProxyError::from)?
                .is_none()
            {
                return Err(PushError::BlobUnknown(needed.clone()));
            }
        }
        let size = bytes.len() as u64;
        let stored = Arc::new(StoredManifest {
            digest: digest.clone(),
            bytes,
            media_type: manifest.media_type.clone(),
        });
        // Pinned before it appears, so eviction never sees it unpinned.
        self.store.pin(&digest).await.map_err(ProxyError::from)?;
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
        tracing::info!(repo = %name, %reference, %digest, "manifest pushed");
        Ok(Pushed {
            digest,
            subject: manifest.subject,
        })
    }

    /// Deletes a pushed tag, or a manifest by digest (with the local tags of `name` pointing
    /// to it). Whether anything was there.
    pub async fn delete_manifest(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<bool, ProxyError> {
        let name = &self.local_name(None, name);
        match reference {
            Reference::Tag(tag) => Ok(self
                .store
                .delete_tag(&Store::local_tag_key(name, tag))
                .await?),
            Reference::Digest(digest) => {
                for key in self.store.tags_pointing_to(LOCAL, name, digest).await? {
                    self.store.delete_tag(&key).await?;
                }
                Ok(self.store.delete_blob(digest).await?)
            }
        }
    }

    /// A page of the tags of `name` (`n` at most, after `last`): pushed ones merged with the
    /// upstream's when the name routes to a reachable upstream, sorted and deduplicated, and
    /// whether more follow. With no pushed tags, `n` and `last` are passed on to the upstream.
    /// `None` when neither knows the repository.
    pub async fn list_tags(
        &self,
        name: &RepoName,
        ns: Option<&str>,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Option<(Vec<String>, bool)>, ProxyError> {
        let local = self
            .store
            .list_tags(LOCAL, &self.local_name(ns, name))
            .await?;
        let route = match self.upstreams.resolve(ns, name) {
            Ok(route) => Some(route),
            Err(e) if local.is_empty() => return Err(ProxyError::Route(e)),
            Err(_) => None,
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

//! Manifests: served from the store by digest forever, by tag within the tag TTL, revalidated
//! with a HEAD after it, fetched with a GET only when missing or changed.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::Method;

use super::{Mirror, ProxyError};
use crate::metrics::{CacheResult, Kind};
use crate::oci::{Digest, Reference, Tag, media};
use crate::store::{StoredManifest, TagKey, TagRecord};
use crate::upstream::{Resolved, UpstreamError};

/// The largest manifest accepted from an upstream.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest answer: what to put in the headers, and the body for a GET.
#[derive(Debug)]
pub struct ManifestAnswer {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// The exact bytes (`None` for HEAD).
    pub body: Option<Bytes>,
    /// How it was answered.
    pub cache: CacheResult,
}

impl ManifestAnswer {
    fn from_stored(m: &StoredManifest, head: bool, cache: CacheResult) -> ManifestAnswer {
        ManifestAnswer {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            size: m.bytes.len() as u64,
            body: (!head).then(|| m.bytes.clone()),
            cache,
        }
    }
}

impl Mirror {
    /// Answers a manifest GET (`head = false`) or HEAD.
    pub async fn manifest(
        &self,
        route: &Resolved,
        reference: &Reference,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        let answer = match reference {
            Reference::Digest(digest) => self.manifest_by_digest(route, digest, head).await?,
            Reference::Tag(tag) => self.manifest_by_tag(route, tag, head).await?,
        };
        self.metrics
            .lookup(Kind::Manifest, answer.cache, route.upstream.name());
        Ok(answer)
    }

    async fn manifest_by_digest(
        &self,
        route: &Resolved,
        digest: &Digest,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        if let Some(m) = self.store.read_manifest(digest).await? {
            return Ok(ManifestAnswer::from_stored(&m, head, CacheResult::Hit));
        }
        let reference = Reference::Digest(digest.clone());
        if head {
            return self.head_upstream(route, &reference).await;
        }
        let fetched = self.fetch_manifest(route, &reference).await?;
        if &fetched.digest != digest {
            return Err(ProxyError::ManifestDigestMismatch);
        }
        self.store.put_manifest(Arc::clone(&fetched)).await?;
        Ok(ManifestAnswer::from_stored(
            &fetched,
            head,
            CacheResult::Miss,
        ))
    }

    async fn manifest_by_tag(
        &self,
        route: &Resolved,
        tag: &Tag,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        let key = TagKey {
            upstream: route.upstream.name().to_owned(),
            repo: route.repo.clone(),
            tag: tag.clone(),
        };
        let ttl = route.upstream.config().tag_ttl;
        let cached = match self.store.get_tag(&key).await? {
            Some(record) => match record.digest() {
                Some(digest) => self
                    .store
                    .read_manifest(&digest)
                    .await?
                    .map(|m| (record, m)),
                None => None,
            },
            None => None,
        };
        let reference = Reference::Tag(tag.clone());
        if let Some((record, manifest)) = &cached {
            if record.age() < ttl {
                return Ok(ManifestAnswer::from_stored(
                    manifest,
                    head,
                    CacheResult::Hit,
                ));
            }
            // Older than the TTL: a HEAD (free on Docker Hub) tells whether it moved.
            let current = self.head_upstream(route, &reference).await?;
            if current.digest == manifest.digest {
                self.store.put_tag(&key, &record.refreshed()).await?;
                return Ok(ManifestAnswer::from_stored(
                    manifest,
                    head,
                    CacheResult::Revalidated,
                ));
            }
            if head {
                // The tag moved; a client HEAD never turns into an upstream GET.
                return Ok(current);
            }
        } else if head {
            return self.head_upstream(route, &reference).await;
        }
        let fetched = self.fetch_manifest(route, &reference).await?;
        self.store.put_manifest(Arc::clone(&fetched)).await?;
        let record = TagRecord::new(
            &fetched.digest,
            &fetched.media_type,
            fetched.bytes.len() as u64,
        );
        self.store.put_tag(&key, &record).await?;
        Ok(ManifestAnswer::from_stored(
            &fetched,
            head,
            CacheResult::Miss,
        ))
    }

    /// An upstream HEAD, turned into an answer without a body.
    async fn head_upstream(
        &self,
        route: &Resolved,
        reference: &Reference,
    ) -> Result<ManifestAnswer, ProxyError> {
        let response = route
            .upstream
            .manifest(Method::HEAD, &route.repo, reference)
            .await?;
        let headers = response.headers();
        let digest = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok())
            .or_else(|| match reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(_) => None,
            })
            .ok_or_else(|| {
                UpstreamError::Invalid("manifest HEAD without a Docker-Content-Digest".into())
            })?;
        let media_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| media::manifest_media_type(Some(v), b""))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
        Ok(ManifestAnswer {
            digest,
            media_type,
            size: crate::upstream::declared_length(response.headers()).unwrap_or(0),
            body: None,
            cache: CacheResult::Miss,
        })
    }

    /// An upstream GET of a manifest: reads at most [`MAX_MANIFEST_BYTES`], computes the digest
    /// of the exact bytes, and checks it against the upstream's `Docker-Content-Digest`.
    async fn fetch_manifest(
        &self,
        route: &Resolved,
        reference: &Reference,
    ) -> Result<Arc<StoredManifest>, ProxyError> {
        let mut response = route
            .upstream
            .manifest(Method::GET, &route.repo, reference)
            .await?;
        if response
            .content_length()
            .is_some_and(|len| len > MAX_MANIFEST_BYTES as u64)
        {
            return Err(ProxyError::ManifestTooLarge(MAX_MANIFEST_BYTES));
        }
        let declared_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| UpstreamError::Network(crate::upstream::error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(ProxyError::ManifestTooLarge(MAX_MANIFEST_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        let digest = Digest::of_bytes(&body);
        if declared_digest.is_some_and(|d| d != digest) {
            self.metrics
                .digest_mismatches
                .with_label_values(&[route.upstream.name()])
                .inc();
            return Err(ProxyError::ManifestDigestMismatch);
        }
        let media_type = media::manifest_media_type(content_type.as_deref(), &body);
        Ok(Arc::new(StoredManifest {
            digest,
            bytes: Bytes::from(body),
            media_type,
        }))
    }
}

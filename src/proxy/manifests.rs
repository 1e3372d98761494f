//! Manifests: served from the store by digest forever, by tag within the tag TTL, revalidated
//! with a HEAD after it, fetched with a GET only when missing or changed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Mirror, ProxyError};
use crate::cluster::FillClaim;
use crate::oci::{Digest, Reference, RepoName, Tag, media};
use crate::proxy::{CacheResult, Kind};
use crate::store::{IMPORT_HOLDER, LOCAL, StoredManifest, TagKey, TagRecord};
use crate::upstream::{Resolved, RouteError, UpstreamError};

use super::Target;
use super::signatures::Origin;

/// A manifest answer: what to put in the headers, and the body for a GET.
#[derive(Debug, Clone)]
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

/// Identifies an upstream manifest lookup: coalescing key and negative-cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlightKey {
    upstream: String,
    repo: RepoName,
    reference: String,
    head: bool,
}

impl FlightKey {
    fn new(route: &Resolved, reference: &Reference, head: bool) -> FlightKey {
        FlightKey {
            upstream: route.upstream.name().to_owned(),
            repo: route.repo.clone(),
            reference: reference.to_string(),
            head,
        }
    }
}

/// How long a replica's claim on a manifest lookup for the cluster lasts (a lookup is one or
/// two upstream requests, bounded by the upstream's response timeout).
const MANIFEST_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a replica waiting for another's manifest lookup asks whether it is done.
const CLUSTER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

impl Mirror {
    /// Answers a manifest GET (`head = false`) or HEAD of `target`: pushed tags first, then
    /// the store (a manifest by digest only when `target` may see it), then the upstream it
    /// routes to.
    pub async fn manifest(
        self: &Arc<Self>,
        target: &Target,
        reference: &Reference,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        if let Reference::Digest(digest) = reference
            && self.deleted_through(target, digest).await?
        {
            return Err(ProxyError::Upstream(UpstreamError::NotFound));
        }
        let tag = match reference {
            Reference::Tag(tag) => Some(tag.as_str()),
            Reference::Digest(_) => None,
        };
        if let Reference::Tag(tag) = reference
            && let Some(local) =
                super::absent_if_unavailable(self.local_manifest(target, tag).await)?
        {
            if self.signatures.covers(target) {
                // Imported content is gated as the upstream's; pushed content as pushed.
                let origin = self.origin_of(target, &local.digest).await;
                self.check_signature(target, origin, &local.digest, Some(&local.bytes))
                    .await?;
            }
            self.metrics.lookup(Kind::Manifest, CacheResult::Hit, LOCAL);
            self.pulls
                .record(LOCAL, target.canonical().as_str(), Some(tag.as_str()));
            return Ok(ManifestAnswer::from_stored(&local, head, CacheResult::Hit));
        }
        let Some(route) = target.route() else {
            // Unroutable names are pulled by digest from what was pushed to them.
            if let Reference::Digest(digest) = reference
                && let Some(m) = self.visible_manifest(target, digest).await?
            {
                self.check_signature(target, Origin::Local, &m.digest, Some(&m.bytes))
                    .await?;
                self.metrics.lookup(Kind::Manifest, CacheResult::Hit, LOCAL);
                self.pulls.record(LOCAL, target.canonical().as_str(), None);
                return Ok(ManifestAnswer::from_stored(&m, head, CacheResult::Hit));
            }
            return Err(RouteError::NoUpstream(target.sent().to_string()).into());
        };
        // Pushed content answered above; what comes through the upstream obeys its lists,
        // cached or not.
        super::policy_allows(route)?;
        let answer = self.routed_manifest(target, route, reference, head).await?;
        self.check_routed_signature(target, &answer).await?;
        self.pulls
            .record(route.upstream.name(), route.repo.as_str(), tag);
        Ok(answer)
    }

    /// A stored manifest, when `target` may see it: content cached from upstreams is shared by
    /// every name of its upstream, but a manifest that was pushed is seen only through the
    /// repositories that hold it. One pushed to `team/x` is never served as
    /// `library/alpine@<digest>`: such a request asks the upstream, which verifies it.
    pub(super) async fn visible_manifest(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<Arc<StoredManifest>>, ProxyError> {
        let Some(manifest) = self.store.read_manifest(digest).await? else {
            return Ok(None);
        };
        let holders = self.store.holders_cached(digest).await?;
        // What the operator imported is trusted as cached content is.
        let shared = holders.iter().any(|h| h == IMPORT_HOLDER)
            || (holders.is_empty() && target.route().is_some());
        let visible = shared || holders.iter().any(|h| target.holds(h));
        Ok(visible.then_some(manifest))
    }

    pub(super) async fn routed_manifest(
        self: &Arc<Self>,
        target: &Target,
        route: &Resolved,
        reference: &Reference,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        let upstream = route.upstream.name();
        // Fast path: what the store answers alone, with no lock and no upstream.
        if let Some(answer) = super::absent_if_unavailable(
            self.manifest_from_store(target, route, reference, head)
                .await,
        )? {
            self.metrics.lookup(Kind::Manifest, answer.cache, upstream);
            return Ok(answer);
        }
        let negative_key = FlightKey::new(route, reference, false);
        if let Some(until) = self.negative.get(&negative_key) {
            if Instant::now() < until {
                self.metrics
                    .lookup(Kind::Manifest, CacheResult::Negative, upstream);
                return Err(ProxyError::RememberedNotFound);
            }
            self.negative.invalidate(&negative_key);
        }
        let mirror = Arc::clone(self);
        let (target_owned, reference_owned) = (target.clone(), reference.clone());
        // Boxed: the upstream path's future is several KiB; inline, every request's future
        // (cache hits included) would carry it, and hyper moves that future per request.
        let (result, joined) = Box::pin(self.manifest_flights.run(
            FlightKey::new(route, reference, head),
            async move {
                let Some(route) = target_owned.route() else {
                    return Err(RouteError::NoUpstream(target_owned.sent().to_string()).into());
                };
                mirror
                    .manifest_from_upstream(&target_owned, route, &reference_owned, head)
                    .await
            },
        ))
        .await;
        let mut answer = result
            .unwrap_or_else(|| Err(ProxyError::Internal("manifest lookup task failed".into())))?;
        if joined {
            answer.cache = CacheResult::Coalesced;
        }
        self.metrics.lookup(Kind::Manifest, answer.cache, upstream);
        Ok(answer)
    }

    /// A digest in the store, or a tag whose record is younger than the TTL.
    async fn manifest_from_store(
        &self,
        target: &Target,
        route: &Resolved,
        reference: &Reference,
        head: bool,
    ) -> Result<Option<ManifestAnswer>, ProxyError> {
        let stored = match reference {
            Reference::Digest(digest) => self.visible_manifest(target, digest).await?,
            Reference::Tag(tag) => match self.cached_tag(route, tag).await? {
                Some((record, manifest))
                    if record.age() < route.upstream.config().tag_ttl
                        || route.upstream.is_immutable(tag.as_str()) =>
                {
                    Some(manifest)
                }
                _ => None,
            },
        };
        Ok(stored.map(|m| ManifestAnswer::from_stored(&m, head, CacheResult::Hit)))
    }

    fn tag_key(route: &Resolved, tag: &Tag) -> TagKey {
        TagKey {
            upstream: route.upstream.name().to_owned(),
            repo: route.repo.clone(),
            tag: tag.clone(),
        }
    }

    /// The tag record and its manifest, when both are in the store.
    async fn cached_tag(
        &self,
        route: &Resolved,
        tag: &Tag,
    ) -> Result<Option<(Arc<TagRecord>, Arc<StoredManifest>)>, ProxyError> {
        let cached = self
            .store
            .get_tag_of(route.upstream.name(), &route.repo, tag)
            .await?;
        let Some(record) = cached else {
            return Ok(None);
        };
        let Some(digest) = record.digest() else {
            return Ok(None);
        };
        Ok(self
            .store
            .read_manifest(&digest)
            .await?
            .map(|m| (record, m)))
    }

    /// The slow path, run once per key at a time; remembers upstream 404s.
    async fn manifest_from_upstream(
        &self,
        target: &Target,
        route: &Resolved,
        reference: &Reference,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        // Another flight may have filled the store since the fast path looked.
        if let Some(answer) = super::absent_if_unavailable(
            self.manifest_from_store(target, route, reference, head)
                .await,
        )? {
            return Ok(answer);
        }
        let what = format!(
            "manifest:{}/{}:{reference}",
            route.upstream.name(),
            route.repo
        );
        let claim = match self.cluster() {
            Some(cluster) => cluster.claim(&what, MANIFEST_CLAIM_TTL).await,
            None => None,
        };
        if let Some(FillClaim::Follower(_)) = claim
            && let Some(mut answer) = self
                .manifest_from_cluster(target, route, reference, head, &what)
                .await?
        {
            answer.cache = CacheResult::Coalesced;
            return Ok(answer);
        }
        let result = self.manifest_upstream_lookup(route, reference, head).await;
        if let (Some(FillClaim::Leader), Some(cluster)) = (&claim, self.cluster()) {
            cluster.release(&what).await;
        }
        result
    }

    /// Waits while another replica fetches or revalidates the manifest, then answers from
    /// what it stored; `None` when it did not (it failed, or took too long): look it up here.
    async fn manifest_from_cluster(
        &self,
        target: &Target,
        route: &Resolved,
        reference: &Reference,
        head: bool,
        what: &str,
    ) -> Result<Option<ManifestAnswer>, ProxyError> {
        let Some(cluster) = self.cluster() else {
            return Ok(None);
        };
        let deadline = Instant::now() + MANIFEST_CLAIM_TTL;
        while Instant::now() < deadline {
            match cluster.claimed(what).await {
                Some(true) => tokio::time::sleep(CLUSTER_POLL).await,
                Some(false) => break,
                None => return Ok(None),
            }
        }
        // What the leader wrote: its journal entries, and the tag record it refreshed.
        self.follow_cluster().await;
        if let Reference::Tag(tag) = reference {
            self.store.forget_cached_tag(&Self::tag_key(route, tag));
        }
        self.manifest_from_store(target, route, reference, head)
            .await
    }

    /// The upstream lookup itself (by digest or by tag); remembers upstream 404s.
    async fn manifest_upstream_lookup(
        &self,
        route: &Resolved,
        reference: &Reference,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        let result = match reference {
            Reference::Digest(digest) => self.manifest_by_digest(route, digest, head).await,
            Reference::Tag(tag) => self.manifest_by_tag(route, tag, head).await,
        };
        if let Err(ProxyError::Upstream(UpstreamError::NotFound)) = &result {
            let ttl = route.upstream.config().negative_ttl;
            if !ttl.is_zero() {
                self.negative.insert(
                    FlightKey::new(route, reference, false),
                    Instant::now() + ttl,
                );
            }
        }
        result
    }

    async fn manifest_by_digest(
        &self,
        route: &Resolved,
        digest: &Digest,
        head: bool,
    ) -> Result<ManifestAnswer, ProxyError> {
        let reference = Reference::Digest(digest.clone());
        if head {
            return self.head_upstream(route, &reference).await;
        }
        let fetched = self.fetch_manifest(route, &reference).await?;
        if &fetched.digest != digest {
            self.metrics
                .digest_mismatches
                .with_label_values(&[route.upstream.name()])
                .inc();
            return Err(ProxyError::ManifestDigestMismatch);
        }
        let kept = match self.store.put_manifest(Arc::clone(&fetched)).await {
            Ok(()) => self.record_pending_tag(route, &fetched).await,
            Err(e) => Err(e.into()),
        };
        self.kept_or_passed(kept)?;
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
        let key = Self::tag_key(route, tag);
        let reference = Reference::Tag(tag.clone());
        // The store is out: the tag is asked of the upstream, as if never cached.
        let cached = super::absent_if_unavailable(self.cached_tag(route, tag).await)?;
        if let Some((record, manifest)) = &cached {
            // The upstream just failed to answer: do not make this pull wait for it again.
            if route.upstream.recently_unreachable() {
                return Ok(self.serve_stale(route, tag, manifest, head, &UpstreamError::Timeout));
            }
            // Older than the TTL: a HEAD (free on Docker Hub) tells whether it moved.
            match self.head_upstream(route, &reference).await {
                Ok(current) if current.digest == manifest.digest => {
                    let refreshed = self.store.put_tag(&key, &record.refreshed()).await;
                    self.kept_or_passed(refreshed.map_err(ProxyError::from))?;
                    return Ok(ManifestAnswer::from_stored(
                        manifest,
                        head,
                        CacheResult::Revalidated,
                    ));
                }
                // The tag moved; a client HEAD never turns into an upstream GET.
                Ok(current) if head => return self.tag_seen_by_head(route, tag, current).await,
                Ok(_) => {}
                Err(ProxyError::Upstream(e)) if e.is_unavailable() => {
                    return Ok(self.serve_stale(route, tag, manifest, head, &e));
                }
                Err(e) => return Err(e),
            }
        } else if head {
            let current = self.head_upstream(route, &reference).await?;
            return self.tag_seen_by_head(route, tag, current).await;
        }
        let fetched = match self.fetch_manifest(route, &reference).await {
            Ok(fetched) => fetched,
            Err(ProxyError::Upstream(e)) if e.is_unavailable() => {
                return match &cached {
                    Some((_, manifest)) => Ok(self.serve_stale(route, tag, manifest, head, &e)),
                    None => Err(ProxyError::Upstream(e)),
                };
            }
            Err(e) => return Err(e),
        };
        let record = TagRecord::new(
            &fetched.digest,
            &fetched.media_type,
            fetched.bytes.len() as u64,
        );
        // Both writes end in an fsync: overlap them. A tag record whose manifest is missing
        // (a crash between the two) reads as no cached tag, so the order does not matter.
        let kept = tokio::try_join!(
            self.store.put_manifest(Arc::clone(&fetched)),
            self.store.put_tag(&key, &record)
        );
        self.kept_or_passed(kept.map(|_| ()).map_err(ProxyError::from))?;
        Ok(ManifestAnswer::from_stored(
            &fetched,
            head,
            CacheResult::Miss,
        ))
    }

    /// A client HEAD of a tag learned its digest from the upstream. containerd resolves a tag
    /// with a HEAD and then GETs the manifest by digest, so the tag itself is never fetched:
    /// record the tag now if the manifest is already stored, else when the GET by digest
    /// stores it. Later pulls then find the tag in the cache (and can be served stale).
    async fn tag_seen_by_head(
        &self,
        route: &Resolved,
        tag: &Tag,
        current: ManifestAnswer,
    ) -> Result<ManifestAnswer, ProxyError> {
        match self.store.read_manifest(&current.digest).await? {
            Some(stored) => {
                let record = TagRecord::new(
                    &stored.digest,
                    &stored.media_type,
                    stored.bytes.len() as u64,
                );
                self.store
                    .put_tag(&Self::tag_key(route, tag), &record)
                    .await?;
            }
            None => {
                let key = (
                    route.upstream.name().to_owned(),
                    route.repo.clone(),
                    current.digest.clone(),
                );
                self.pending_tags.insert(key, tag.clone());
            }
        }
        Ok(current)
    }

    /// Records the tag a recent HEAD resolved to this manifest, if any (see
    /// [`Mirror::tag_seen_by_head`]).
    async fn record_pending_tag(
        &self,
        route: &Resolved,
        manifest: &StoredManifest,
    ) -> Result<(), ProxyError> {
        let key = (
            route.upstream.name().to_owned(),
            route.repo.clone(),
            manifest.digest.clone(),
        );
        if let Some(tag) = self.pending_tags.remove(&key) {
            let record = TagRecord::new(
                &manifest.digest,
                &manifest.media_type,
                manifest.bytes.len() as u64,
            );
            self.store
                .put_tag(&Self::tag_key(route, &tag), &record)
                .await?;
        }
        Ok(())
    }

    /// The outcome of keeping a fetched manifest: kept, or (the object store in an outage)
    /// passed through to the client unkept, verified as always; other failures fail.
    fn kept_or_passed(&self, kept: Result<(), ProxyError>) -> Result<(), ProxyError> {
        match kept {
            Ok(()) => {
                super::store_answered(&self.store, &self.metrics);
                Ok(())
            }
            Err(ProxyError::Store(e)) if e.is_unavailable() => {
                super::passed_through(&self.store, &self.metrics, "manifest", 0, &e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A cached tag served although it could not be revalidated.
    fn serve_stale(
        &self,
        route: &Resolved,
        tag: &Tag,
        manifest: &StoredManifest,
        head: bool,
        why: &UpstreamError,
    ) -> ManifestAnswer {
        if !matches!(why, UpstreamError::Offline) {
            tracing::warn!(
                upstream = route.upstream.name(),
                repo = %route.repo,
                %tag,
                error = %why,
                "upstream unavailable; serving the cached tag stale"
            );
        }
        ManifestAnswer::from_stored(manifest, head, CacheResult::Stale)
    }

    /// An upstream HEAD, turned into an answer without a body.
    async fn head_upstream(
        &self,
        route: &Resolved,
        reference: &Reference,
    ) -> Result<ManifestAnswer, ProxyError> {
        let head = route.upstream.head_manifest(&route.repo, reference).await?;
        let digest = head
            .digest
            .or_else(|| match reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(_) => None,
            })
            .ok_or_else(|| {
                UpstreamError::Invalid("manifest HEAD without a Docker-Content-Digest".into())
            })?;
        Ok(ManifestAnswer {
            digest,
            media_type: head
                .media_type
                .unwrap_or_else(|| media::OCI_MANIFEST.to_owned()),
            size: head.size.unwrap_or(0),
            body: None,
            cache: CacheResult::Miss,
        })
    }

    /// An upstream GET of a manifest: the digest of the exact bytes, checked against the
    /// upstream's `Docker-Content-Digest`.
    async fn fetch_manifest(
        &self,
        route: &Resolved,
        reference: &Reference,
    ) -> Result<Arc<StoredManifest>, ProxyError> {
        let fetched = route.upstream.get_manifest(&route.repo, reference).await?;
        // The algorithm of the digest asked for, or of the one the upstream claims (sha512
        // content is verified with sha512), else the canonical sha256.
        let algorithm = match (reference, &fetched.declared_digest) {
            (Reference::Digest(d), _) | (Reference::Tag(_), Some(d)) => d.algorithm(),
            (Reference::Tag(_), None) => crate::oci::digest::Algorithm::Sha256,
        };
        let digest = Digest::of_bytes_with(algorithm, &fetched.bytes);
        // The upstream's claim is checked with its own algorithm (it may name the sha256 of
        // content asked for by its sha512).
        let claim_holds = |claimed: &Digest| {
            if claimed.algorithm() == digest.algorithm() {
                *claimed == digest
            } else {
                Digest::of_bytes_with(claimed.algorithm(), &fetched.bytes) == *claimed
            }
        };
        if fetched
            .declared_digest
            .as_ref()
            .is_some_and(|d| !claim_holds(d))
        {
            self.metrics
                .digest_mismatches
                .with_label_values(&[route.upstream.name()])
                .inc();
            return Err(ProxyError::ManifestDigestMismatch);
        }
        Ok(Arc::new(StoredManifest {
            digest,
            bytes: fetched.bytes,
            media_type: fetched.media_type,
        }))
    }
}

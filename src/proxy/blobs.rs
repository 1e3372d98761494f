//! Blobs: served from the store when present, else from a fill shared by every request for the
//! same digest.

use std::sync::Arc;
use std::time::Instant;

use super::fill::{Fill, FillError, FillSource, Joined};
use super::{Mirror, ProxyError, Target};
use crate::cluster::FillClaim;
use crate::oci::{ByteRange, Digest};
use crate::proxy::{CacheResult, Kind};
use crate::store::{BlobReader, OpenBlob};
use crate::upstream::{Resolved, RouteError, UpstreamError};

/// The fill a request joined and how that counts, or `None` when the blob was committed
/// meanwhile (read it from the store).
fn joined(joined: Joined) -> Option<(Arc<Fill>, CacheResult)> {
    match joined {
        Joined::Leader(fill) => Some((fill, CacheResult::Miss)),
        Joined::Follower(fill) => Some((fill, CacheResult::Coalesced)),
        Joined::Verified(fill) => Some((fill, CacheResult::Hit)),
        Joined::Committed => None,
    }
}

/// An answer streaming `range` (all of it for `None`) of a fill of a blob of `size` bytes
/// (unknown: the upstream declared none).
fn fill_answer(
    fill: Arc<Fill>,
    size: Option<u64>,
    range: Option<ByteRange>,
    cache: CacheResult,
) -> Result<BlobAnswer, ProxyError> {
    let span = match (range, size) {
        (Some(r), Some(size)) => Some(
            r.resolve(size)
                .ok_or(ProxyError::RangeNotSatisfiable { size })?,
        ),
        _ => None,
    };
    let (start, end) = match span {
        Some((s, e)) => (s, Some(e)),
        None => (0, size),
    };
    Ok(BlobAnswer {
        size,
        range: span,
        body: BlobBody::Fill { fill, start, end },
        cache,
    })
}

/// How long a replica asked for a blob whose fetch it claimed waits for its fill to start.
const PEER_START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often it looks meanwhile.
const PEER_START_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a replica's claim on the cluster's fetch of a blob lasts unless renewed.
const FILL_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(6);

/// This replica's part in a cluster-wide fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusterRole {
    /// It fetches from the upstream for the cluster.
    Leader,
    /// It reads from the replica that does.
    Follower,
}

impl ClusterRole {
    fn label(self) -> &'static str {
        match self {
            ClusterRole::Leader => "leader",
            ClusterRole::Follower => "follower",
        }
    }
}

/// Where a blob answer's body comes from.
pub enum BlobBody {
    /// HEAD: no body.
    Empty,
    /// `[start, end)` of a stored blob's local file.
    File {
        /// Keeps eviction and GC away while the body is sent.
        guard: crate::store::ReadGuard,
        /// The open file, this answer's own.
        reader: BlobReader,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `[start, end)` of a fill as it arrives (`end = None`: to the end, size unknown).
    Fill {
        /// The fill.
        fill: Arc<Fill>,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: Option<u64>,
    },
    /// The client fetches the blob from this URL (a presigned bucket URL).
    Redirect(url::Url),
}

/// A blob answer.
pub struct BlobAnswer {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// `Some((start, end))` when answering a range (206).
    pub range: Option<(u64, u64)>,
    /// The body.
    pub body: BlobBody,
    /// How it was answered.
    pub cache: CacheResult,
}

impl Mirror {
    /// Answers a blob GET (`head = false`) or HEAD of `target`, optionally for a byte range:
    /// from the store (which is digest-global), else from a fill from the upstream `target`
    /// routes to.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        head: bool,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, ProxyError> {
        let label = target.label();
        if self.deleted_through(target, digest).await? {
            self.metrics
                .lookup(Kind::Blob, CacheResult::Negative, label);
            return Err(ProxyError::Upstream(UpstreamError::NotFound));
        }
        // The object store is out: what only it holds comes from the upstream meanwhile
        // (verified as always; kept again once the store is back).
        let stored = super::absent_if_unavailable(self.blob_from_store(digest, head, range).await)?;
        if let Some(answer) = stored {
            self.metrics.lookup(Kind::Blob, answer.cache, label);
            return Ok(answer);
        }
        let route = target
            .route()
            .ok_or_else(|| RouteError::NoUpstream(target.sent().to_string()))?;
        super::policy_allows(route)?;
        let answer = self.blob_from_upstream(route, digest, head, range).await?;
        self.metrics.lookup(Kind::Blob, answer.cache, label);
        Ok(answer)
    }

    /// Whether the repository deleted this blob while others kept it (see
    /// [`Store::mark_deleted`](crate::store::Store::mark_deleted)). Free unless some repository
    /// deleted it.
    pub(super) async fn deleted_through(
        &self,
        target: &Target,
        digest: &Digest,
    ) -> Result<bool, ProxyError> {
        if !self.store.has_tombstones(digest) {
            return Ok(false);
        }
        let holder = target.canonical().as_str();
        Ok(self.store.is_deleted_for(digest, holder).await?)
    }

    async fn blob_from_upstream(
        &self,
        route: &Resolved,
        digest: &Digest,
        head: bool,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, ProxyError> {
        if head {
            return self.blob_head_upstream(route, digest, range).await;
        }
        let upstream = FillSource::Upstream {
            client: Arc::clone(&route.upstream),
            repo: route.repo.clone(),
        };
        let (source, role) = self.cold_source(upstream.clone(), digest).await;
        let Some((mut fill, mut cache)) = joined(self.fills.start_or_join(source, digest)?) else {
            return self.committed_meanwhile(digest, range).await;
        };
        if let (Some(role), CacheResult::Miss) = (role, cache) {
            self.metrics
                .cluster_fills
                .with_label_values(&[role.label()])
                .inc();
            if role == ClusterRole::Leader {
                self.keep_fill_claim(&fill);
            }
        }
        let mut started = fill.wait_started().await;
        if let (Err(FillError::Peer(e)), Some(ClusterRole::Follower)) = (&started, role) {
            // The leading replica is gone (or refuses): fetch it here rather than fail.
            tracing::info!(%digest, error = %e, "cannot read the blob from the replica leading its fetch; fetching it from the upstream");
            let Some(joined) = joined(self.fills.start_or_join(upstream, digest)?) else {
                return self.committed_meanwhile(digest, range).await;
            };
            (fill, cache) = joined;
            started = fill.wait_started().await;
        }
        fill_answer(fill, started?, range, cache)
    }

    /// A fill that committed its blob between the store's look and joining it.
    async fn committed_meanwhile(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, ProxyError> {
        self.blob_from_store(digest, false, range)
            .await?
            .ok_or(ProxyError::Upstream(UpstreamError::NotFound))
    }

    /// A blob for another replica that reads it from this one while this one leads its
    /// fetch: from the running fill, else from the store. Never from the upstream.
    pub async fn peer_blob(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, ProxyError> {
        // The follower asked because this replica claimed the fetch; between the claim and
        // the fill's start is a moment in which neither is visible yet.
        let deadline = Instant::now() + PEER_START_WAIT;
        loop {
            if let Some(fill) = self.fills.running(digest) {
                let size = fill.wait_started().await?;
                return fill_answer(fill, size, range, CacheResult::Coalesced);
            }
            if let Some(answer) = self.blob_from_store(digest, false, range).await? {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                return Err(ProxyError::Upstream(UpstreamError::NotFound));
            }
            tokio::time::sleep(PEER_START_POLL).await;
        }
    }

    /// Where a cold blob comes from: the upstream, unless another replica of the cluster
    /// already leads its fetch (then from that replica). A fill running here is joined as it
    /// is; without Redis, or while it is unreachable, every replica fetches for itself.
    async fn cold_source(
        &self,
        upstream: FillSource,
        digest: &Digest,
    ) -> (FillSource, Option<ClusterRole>) {
        if self.fills.running(digest).is_some() {
            return (upstream, None);
        }
        let (Some(cluster), Some(peers)) = (self.cluster(), self.peers()) else {
            return (upstream, None);
        };
        match cluster
            .claim(&format!("blob:{digest}"), FILL_CLAIM_TTL)
            .await
        {
            Some(FillClaim::Leader) => (upstream, Some(ClusterRole::Leader)),
            Some(FillClaim::Follower(leader)) => (
                FillSource::Peer {
                    peers: Arc::clone(peers),
                    leader,
                },
                Some(ClusterRole::Follower),
            ),
            None => (upstream, None),
        }
    }

    /// Renews this replica's claim on the cluster's fetch of `fill`'s blob while the fill
    /// runs, and gives it up when the fill ends. A replica killed mid-fill stops renewing:
    /// its claim expires within [`FILL_CLAIM_TTL`] and another replica takes over.
    fn keep_fill_claim(&self, fill: &Arc<Fill>) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let fill = Arc::clone(fill);
        tokio::spawn(async move {
            let what = format!("blob:{}", fill.digest);
            let done = fill.wait_done();
            tokio::pin!(done);
            loop {
                tokio::select! {
                    _ = &mut done => break,
                    _ = tokio::time::sleep(FILL_CLAIM_TTL / 3) => {
                        cluster.renew(&what, FILL_CLAIM_TTL).await;
                    }
                }
            }
            cluster.release(&what).await;
        });
    }

    async fn blob_from_store(
        &self,
        digest: &Digest,
        head: bool,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobAnswer>, ProxyError> {
        if !head && let Some(url) = self.store.blob_redirect(digest).await? {
            return Ok(Some(BlobAnswer {
                size: None,
                range: None,
                body: BlobBody::Redirect(url),
                cache: CacheResult::Hit,
            }));
        }
        let Some(opened) = self.store.open_blob(digest).await? else {
            return Ok(None);
        };
        let size = opened.size();
        let span = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(ProxyError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        let (start, end) = span.unwrap_or((0, size));
        let (body, cache) = match opened {
            _ if head => (BlobBody::Empty, CacheResult::Hit),
            OpenBlob::Local { reader, .. } => (
                BlobBody::File {
                    guard: self.store.reading(digest),
                    reader,
                    start,
                    end,
                },
                CacheResult::Hit,
            ),
            // Stored, but not on this machine: one read of the backend fills the local copy
            // while every request for the blob streams from it.
            OpenBlob::Remote { .. } => {
                match self.fills.start_or_join(FillSource::Backend, digest)? {
                    Joined::Leader(fill) | Joined::Follower(fill) | Joined::Verified(fill) => {
                        // A bucket that does not answer fails the read before its first byte:
                        // say so as a store error, which the caller rides out.
                        if let Err(FillError::Store(e)) = fill.wait_started().await
                            && e.is_unavailable()
                        {
                            return Err(ProxyError::Store(e));
                        }
                        (
                            BlobBody::Fill {
                                fill,
                                start,
                                end: Some(end),
                            },
                            CacheResult::Hit,
                        )
                    }
                    Joined::Committed => return Ok(None),
                }
            }
        };
        Ok(Some(BlobAnswer {
            size: Some(size),
            range: span,
            body,
            cache,
        }))
    }

    /// A HEAD for a blob we do not have: a running fill knows the size, else ask the upstream
    /// with a HEAD (never a GET). Unknown unless the upstream says it has it.
    async fn blob_head_upstream(
        &self,
        route: &Resolved,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobAnswer, ProxyError> {
        let size = match self.fills.running(digest) {
            Some(fill) => fill.wait_started().await?,
            None => match route.upstream.head_blob(&route.repo, digest).await {
                Ok(size) => size,
                // A HEAD is an existence check, and push clients (skopeo, docker push) make
                // one for every blob before uploading it: anything but a yes from the upstream
                // (Docker Hub answers 401 for repositories that do not exist; the upstream may
                // be down) means "not here", so the push proceeds.
                Err(e) => {
                    tracing::debug!(%digest, upstream = route.upstream.name(), error = %e, "blob HEAD upstream failed; answering unknown");
                    return Err(ProxyError::Upstream(UpstreamError::NotFound));
                }
            },
        };
        let span = match (range, size) {
            (Some(r), Some(size)) => Some(
                r.resolve(size)
                    .ok_or(ProxyError::RangeNotSatisfiable { size })?,
            ),
            _ => None,
        };
        Ok(BlobAnswer {
            size,
            range: span,
            body: BlobBody::Empty,
            cache: CacheResult::Miss,
        })
    }
}

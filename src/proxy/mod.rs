//! The registry logic. Pull-through: look in the store, and when content is missing (or a tag
//! is older than its TTL) ask the upstream the name routes to, verify, keep, answer. Local
//! content: pushed manifests and tags, which win over the upstream's.
//!
//! This sits between the HTTP handlers (which only parse and render) and the store and upstream
//! client (which know nothing of each other).

mod blobs;
pub mod fill;
pub mod inventory;
pub mod local;
mod manifests;
pub mod search;
pub mod signatures;
pub mod singleflight;
pub mod target;
mod uploads;

use std::sync::Arc;

use crate::cluster::Coordinator;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::upstream::{RouteError, UpstreamError, Upstreams};

pub use blobs::{BlobAnswer, BlobBody};
pub use fill::{FillError, Fills};
pub use manifests::ManifestAnswer;
// The outcomes the proxy reports belong to the metrics' vocabulary (a layer below).
pub use crate::metrics::{CacheResult, Kind, Source};
pub use signatures::{SignatureGate, SignatureKeyError, SignatureStatus};
pub use singleflight::Singleflight;
pub use target::Target;

/// Errors of the pull-through layer. Cloneable, so that coalesced requests share one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The name routes to no upstream.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The upstream failed or refused, and nothing cached can answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream's `allow`/`deny` lists keep the repository out; names the rule.
    #[error("{0}")]
    Denied(String),
    /// The upstream said 404 a moment ago, and that is remembered (`negative_ttl`).
    #[error("not found upstream a moment ago (remembered for negative_ttl)")]
    RememberedNotFound,
    /// The store failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// A blob fill failed before the response started.
    #[error(transparent)]
    Fill(#[from] FillError),
    /// The upstream sent a manifest whose bytes do not match the digest it claimed or was
    /// asked for.
    #[error("upstream manifest does not match its digest")]
    ManifestDigestMismatch,
    /// A bug or a panicked task; logged.
    #[error("internal error: {0}")]
    Internal(String),
    /// The requested range is outside the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
}

/// Whether the upstream's `allow` and `deny` lists let the repository `route` names be
/// pulled through; the refusal names the rule.
pub(crate) fn policy_allows(route: &crate::upstream::Resolved) -> Result<(), ProxyError> {
    match route.upstream.config().refusal(route.repo.as_str()) {
        Some(rule) => Err(ProxyError::Denied(format!(
            "{}/{} may not be pulled through this mirror: {rule}",
            route.upstream.name(),
            route.repo
        ))),
        None => Ok(()),
    }
}

/// A store lookup during an object-store outage reads as "not in the store", so that the
/// upstream answers instead (passed through); any other failure stays one.
pub(crate) fn absent_if_unavailable<T>(
    found: Result<Option<T>, ProxyError>,
) -> Result<Option<T>, ProxyError> {
    match found {
        Err(ProxyError::Store(e)) if e.is_unavailable() => Ok(None),
        found => found,
    }
}

/// Content the store could not take (an outage), answered to the client anyway: counted, and
/// logged once per incident.
pub(crate) fn passed_through(
    store: &Store,
    metrics: &Metrics,
    kind: &'static str,
    bytes: u64,
    e: &StoreError,
) {
    if store.note_outage(e) {
        tracing::warn!(error = %e, "the object store cannot take content: pulls pass through from the upstream, verified but not kept, until it recovers");
    }
    metrics.store_available.set(0);
    metrics
        .passthrough_requests
        .with_label_values(&[kind])
        .inc();
    metrics.passthrough_bytes.inc_by(bytes);
}

/// The object store took a write: an outage, if any, is over.
pub(crate) fn store_answered(store: &Store, metrics: &Metrics) {
    if store.note_recovered() {
        tracing::info!("the object store takes content again");
    }
    metrics.store_available.set(1);
}

impl From<StoreError> for ProxyError {
    fn from(e: StoreError) -> ProxyError {
        ProxyError::Store(Arc::new(e))
    }
}

/// The mirror: store, upstreams, fills and metrics.
pub struct Mirror {
    /// The disk store.
    pub store: Arc<Store>,
    /// The configured upstreams.
    pub upstreams: Upstreams,
    /// Blob fills in flight.
    pub fills: Arc<Fills>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Manifest lookups that go upstream, one per (upstream, repository, reference) at a time.
    pub manifest_flights: Singleflight<manifests::FlightKey, Result<ManifestAnswer, ProxyError>>,
    /// Upstream 404s for manifests, each remembered until its instant.
    pub negative: moka::sync::Cache<manifests::FlightKey, std::time::Instant>,
    /// Tags a client HEAD resolved to a manifest not yet stored: (upstream, repo, digest) → tag.
    pub pending_tags:
        moka::sync::Cache<(String, crate::oci::RepoName, crate::oci::Digest), crate::oci::Tag>,
    /// Upstream `docker search` answers, kept briefly.
    pub search_cache: search::SearchCache,
    /// Upstream searches in flight, shared by identical searches.
    search_flights: search::SearchFlights,
    /// How many upstream searches may still be made.
    search_budget: Arc<search::SearchBudget>,
    /// What the web UI's views remember and their parsing budget.
    inventory: inventory::InventoryCache,
    /// When tags and repositories were last pulled, for the UI.
    pub pulls: inventory::PullTimes,
    /// The `[[signatures]]` policies and their verdicts.
    pub signatures: SignatureGate,
    /// The other replicas (Redis), once the server joined them.
    cluster: std::sync::OnceLock<Arc<Coordinator>>,
    /// Reads from the other replicas.
    peers: std::sync::OnceLock<Arc<crate::cluster::Peers>>,
    /// The cluster's change counter as of this replica's last journal read.
    seen_changes: std::sync::atomic::AtomicU64,
    /// One journal read at a time.
    following: tokio::sync::Mutex<()>,
}

impl Mirror {
    /// Assembles a mirror.
    pub fn new(
        store: Arc<Store>,
        upstreams: Upstreams,
        fills: Arc<Fills>,
        metrics: Arc<Metrics>,
    ) -> Mirror {
        Mirror {
            store,
            upstreams,
            fills,
            metrics,
            manifest_flights: Singleflight::default(),
            negative: moka::sync::Cache::builder().max_capacity(100_000).build(),
            pending_tags: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
            search_cache: search::search_cache(),
            search_flights: Singleflight::default(),
            search_budget: Arc::default(),
            inventory: inventory::InventoryCache::default(),
            pulls: inventory::PullTimes::default(),
            signatures: SignatureGate::default(),
            cluster: std::sync::OnceLock::new(),
            peers: std::sync::OnceLock::new(),
            seen_changes: std::sync::atomic::AtomicU64::new(0),
            following: tokio::sync::Mutex::new(()),
        }
    }

    /// The mirror with these signature policies (see [`SignatureGate`]).
    pub fn with_signatures(mut self, signatures: SignatureGate) -> Mirror {
        self.signatures = signatures;
        self
    }

    /// Joins the other replicas through `cluster`, reading blobs from them with `peers`
    /// (once; later calls are ignored).
    pub fn join_cluster(&self, cluster: Arc<Coordinator>, peers: Arc<crate::cluster::Peers>) {
        self.store
            .set_cluster_link(Arc::clone(&cluster) as Arc<dyn crate::store::ClusterLink>);
        let _ = self.cluster.set(cluster);
        let _ = self.peers.set(peers);
    }

    /// Resolves the repository a client named (with containerd's `ns`) into the one name
    /// every decision about it uses.
    pub fn target(
        &self,
        ns: Option<&str>,
        name: &crate::oci::RepoName,
    ) -> Result<Target, RouteError> {
        Target::resolve(&self.upstreams, ns, name)
    }

    /// The one name a repository named without `ns` goes by (see [`Target::canonical`]).
    pub fn canonical_name(&self, name: &crate::oci::RepoName) -> crate::oci::RepoName {
        self.target(None, name)
            .map_or_else(|_| name.clone(), |t| t.canonical().clone())
    }

    /// Reads from the other replicas, once joined.
    pub fn peers(&self) -> Option<&Arc<crate::cluster::Peers>> {
        self.peers.get()
    }

    /// The other replicas, when this one joined them.
    pub fn cluster(&self) -> Option<&Arc<Coordinator>> {
        self.cluster.get()
    }

    /// Reads the index journal when the cluster's change counter moved since this replica
    /// last did: one Redis `GET` per request, and a journal read only after a change. Without
    /// Redis (or while it is unreachable) nothing happens here; the journal is read every
    /// second in the background instead.
    pub async fn follow_cluster(&self) {
        use std::sync::atomic::Ordering;
        let Some(cluster) = self.cluster() else {
            return;
        };
        let Some(now) = cluster.changes().await else {
            return;
        };
        // Any difference counts: a Redis that restarted empty counts from zero again.
        if now == self.seen_changes.load(Ordering::Acquire) {
            return;
        }
        let _one = self.following.lock().await;
        if now == self.seen_changes.load(Ordering::Acquire) {
            return; // Another request read the journal meanwhile.
        }
        match self.store.sync_index().await {
            Ok(()) => self.seen_changes.store(now, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "cannot read the index journal"),
        }
    }
}

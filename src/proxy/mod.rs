//! The pull-through logic: look in the store, and when content is missing (or a tag is older
//! than its TTL) ask the upstream the name routes to, verify, keep, answer.
//!
//! This sits between the HTTP handlers (which only parse and render) and the store and upstream
//! client (which know nothing of each other).

mod blobs;
pub mod fill;
mod manifests;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::upstream::{RouteError, UpstreamError, Upstreams};

pub use blobs::{BlobAnswer, BlobBody, ByteRange};
pub use fill::{FillError, FillSettings, Fills};
pub use manifests::ManifestAnswer;

/// Errors of the pull-through layer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The name routes to no upstream.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The upstream failed or refused, and nothing cached can answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blob fill failed before the response started.
    #[error(transparent)]
    Fill(#[from] FillError),
    /// The upstream sent a manifest whose bytes do not match the digest it claimed or was
    /// asked for.
    #[error("upstream manifest does not match its digest")]
    ManifestDigestMismatch,
    /// A manifest larger than we accept.
    #[error("upstream manifest is larger than {0} bytes")]
    ManifestTooLarge(usize),
    /// The requested range is outside the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
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
}

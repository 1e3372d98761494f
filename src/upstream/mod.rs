//! Upstream registries: the HTTP client (with token auth) and the routing of repository names
//! to the upstream that serves them. Knows nothing of hyper or of the store.

pub mod auth;
mod client;
pub mod destinations;
mod routing;

pub use client::{MAX_REFERRERS, SearchHit, UpstreamClient};
pub use routing::{Resolved, RouteError, Upstreams};

/// Errors of the upstream layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// 404: the upstream does not have it.
    #[error("not found upstream")]
    NotFound,
    /// 401 even after answering the challenge: credentials missing or wrong, or (Docker Hub)
    /// the repository does not exist.
    #[error("upstream requires authentication (or the repository does not exist)")]
    Unauthorized,
    /// 403.
    #[error("upstream denied access")]
    Denied,
    /// 429: the upstream's rate limit is exhausted.
    #[error("upstream rate limit exceeded")]
    TooManyRequests,
    /// 416 on a resume request.
    #[error("upstream cannot satisfy the range")]
    RangeNotSatisfiable,
    /// Any other non-success status.
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    /// Connection refused, reset, DNS, TLS...
    #[error("upstream unreachable: {0}")]
    Network(String),
    /// Connect or read timeout.
    #[error("upstream timed out")]
    Timeout,
    /// The mirror runs offline: no upstream is ever contacted.
    #[error("the mirror is offline and does not contact upstreams")]
    Offline,
    /// The upstream's settings cannot be used (an unreadable `ca_file`): found at start.
    #[error("{0}")]
    Config(String),
    /// The upstream answered something we cannot use.
    #[error("invalid upstream response: {0}")]
    Invalid(String),
    /// The upstream sent the mirror (a redirect, a token realm) to an address it may not
    /// contact (see [`destinations`]).
    #[error("{0}")]
    DestinationRefused(String),
    /// A manifest, tag list or token answer larger than we accept.
    #[error("upstream {what} larger than {limit} bytes")]
    TooLarge {
        /// What it was.
        what: &'static str,
        /// The cap.
        limit: u64,
    },
}

impl UpstreamError {
    /// Whether the upstream is unavailable (as opposed to having answered definitively), so
    /// that a cached copy should be served instead. A broken or hostile answer counts as
    /// unavailable: what we cached before is better than nothing.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Network(_)
            | UpstreamError::Timeout
            | UpstreamError::TooManyRequests
            | UpstreamError::Offline
            | UpstreamError::Invalid(_)
            | UpstreamError::TooLarge { .. } => true,
            UpstreamError::Status(s) => *s >= 500,
            _ => false,
        }
    }
}

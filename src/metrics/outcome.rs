//! How a request was answered: the vocabulary of outcomes the proxy reports, the HTTP layer
//! turns into headers and log fields and `metrics` turns into labels. It lives with the
//! metrics, below every layer that uses it.

/// What kind of content a lookup was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A manifest (by tag or digest).
    Manifest,
    /// A blob (layer or config).
    Blob,
}

impl Kind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
        }
    }
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// From the store, no upstream request.
    Hit,
    /// From the store after the upstream confirmed the tag (HEAD) was unchanged.
    Revalidated,
    /// Fetched from the upstream.
    Miss,
    /// Joined a fetch another request had already started.
    Coalesced,
    /// From the store because the upstream is unreachable, failing or rate-limiting (or the
    /// mirror is offline), although the tag is older than its TTL.
    Stale,
    /// An upstream 404 remembered from a moment ago (negative cache).
    Negative,
}

impl CacheResult {
    /// Label value (also used in logs and the `X-Regmirror-Cache` header).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Stale => "stale",
            CacheResult::Negative => "negative",
        }
    }
}

/// Where served bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the store.
    Cache,
    /// Streamed from an upstream fetch.
    Upstream,
}

impl Source {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Upstream => "upstream",
        }
    }
}

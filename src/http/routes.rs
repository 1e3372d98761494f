//! Request paths to routes. Pure: no I/O, every value parsed into its type here.

use crate::oci::{Digest, DigestError, NameError, Reference, ReferenceError, RepoName};

/// What a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository as the client named it.
        name: RepoName,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository as the client named it.
        name: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/` (new session) or `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        /// Repository as the client named it.
        name: RepoName,
        /// The session id as written in the URL (checked by the handler).
        session: Option<String>,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// Repository as the client named it.
        name: RepoName,
        /// The subject.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`.
    TagsList {
        /// Repository as the client named it.
        name: RepoName,
    },
    /// `/v2/_catalog`.
    Catalog,
    /// `/metrics`: Prometheus.
    Metrics,
    /// `/healthz`: liveness.
    Health,
    /// `/readyz`: readiness (the store is writable).
    Ready,
    /// `/token`: Bearer tokens for clients (when auth is configured).
    Token,
    /// `/v1/search`: `docker search`.
    Search,
    /// `/v1/_ping`: the v1 API check dockerd makes before searching.
    V1Ping,
    /// `/ui/...`: the web UI.
    Ui(Page),
    /// `/_cluster/blobs/<digest>`: another replica reads a blob whose fetch this one leads.
    PeerBlob {
        /// The blob.
        digest: Digest,
    },
}

impl Route {
    /// What kind of request this is, for the request log (a closed set).
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Upload { .. } => "upload",
            Route::Referrers { .. } => "referrers",
            Route::TagsList { .. } => "tags",
            Route::Catalog => "catalog",
            Route::Metrics => "metrics",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Token => "token",
            Route::Search => "search",
            Route::V1Ping => "v1_ping",
            Route::Ui(_) => "ui",
            Route::PeerBlob { .. } => "peer_blob",
        }
    }

    /// Whether the answer depends on tags, manifests or blobs that another replica may have
    /// changed (everything of the registry API but the base and the token endpoint).
    pub fn reads_registry_state(&self) -> bool {
        matches!(
            self,
            Route::Manifest { .. }
                | Route::Blob { .. }
                | Route::Upload { .. }
                | Route::TagsList { .. }
                | Route::Catalog
                | Route::Referrers { .. }
                | Route::Ui(_)
        )
    }
}

/// A page of the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/ui/`: the repositories, with a search box.
    Repositories,
    /// `/ui/repo?origin=&name=`: a repository's tags.
    Repository,
    /// `/ui/manifest?digest=`: a manifest's parts and referrers.
    Manifest,
    /// `/ui/blob?digest=&manifest=`: a config or layer, seen from a manifest that lists it.
    Blob,
    /// Any other path under `/ui/`: an HTML 404 in the UI's style.
    NotFound,
    /// `/`: where browsers land; redirected to `/ui/`.
    Root,
    /// `/ui/status`: traffic, upstreams, store.
    Status,
    /// `/ui/style.css`.
    Style,
}

impl Page {
    /// The page at `path`, if any.
    pub fn from_path(path: &str) -> Option<Page> {
        Some(match path {
            "/ui" | "/ui/" => Page::Repositories,
            "/ui/repo" => Page::Repository,
            "/ui/manifest" => Page::Manifest,
            "/ui/blob" => Page::Blob,
            "/ui/status" => Page::Status,
            "/ui/style.css" => Page::Style,
            "/" => Page::Root,
            _ if path.starts_with("/ui/") => Page::NotFound,
            _ => return None,
        })
    }
}

/// Why a path is not a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing lives at this path.
    #[error("not found")]
    NotFound,
    /// The repository name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The manifest reference is neither a tag nor a digest.
    #[error("invalid manifest reference: {0}")]
    Reference(ReferenceError),
    /// The blob digest is invalid.
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
}

/// Parses a request path (without the query).
pub fn parse(path: &str) -> Result<Route, PathError> {
    match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/metrics" => return Ok(Route::Metrics),
        "/healthz" => return Ok(Route::Health),
        "/readyz" => return Ok(Route::Ready),
        "/token" => return Ok(Route::Token),
        "/v2/_catalog" => return Ok(Route::Catalog),
        "/v1/search" => return Ok(Route::Search),
        "/v1/_ping" | "/v1/_ping/" => return Ok(Route::V1Ping),
        _ => {}
    }
    if let Some(page) = Page::from_path(path) {
        return Ok(Route::Ui(page));
    }
    if let Some(digest) = path.strip_prefix("/_cluster/blobs/") {
        return Ok(Route::PeerBlob {
            digest: digest.parse()?,
        });
    }
    let rest = path.strip_prefix("/v2/").ok_or(PathError::NotFound)?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagsList {
            name: name.parse()?,
        });
    }
    if let Some((name, session)) = split_last(rest, "/blobs/uploads") {
        let session = match session.strip_prefix('/').unwrap_or(session) {
            "" => None,
            id if id.contains('/') => return Err(PathError::NotFound),
            id => Some(id.to_owned()),
        };
        return Ok(Route::Upload {
            name: name.parse()?,
            session,
        });
    }
    if let Some((name, digest)) = split_last(rest, "/referrers/") {
        if digest.is_empty() || digest.contains('/') {
            return Err(PathError::NotFound);
        }
        return Ok(Route::Referrers {
            name: name.parse()?,
            digest: digest.parse()?,
        });
    }
    if let Some((name, reference)) = split_last(rest, "/manifests/") {
        if reference.is_empty() || reference.contains('/') {
            return Err(PathError::NotFound);
        }
        return Ok(Route::Manifest {
            name: name.parse()?,
            reference: reference.parse().map_err(PathError::Reference)?,
        });
    }
    if let Some((name, digest)) = split_last(rest, "/blobs/") {
        if digest.is_empty() || digest.contains('/') {
            return Err(PathError::NotFound);
        }
        return Ok(Route::Blob {
            name: name.parse()?,
            digest: digest.parse()?,
        });
    }
    Err(PathError::NotFound)
}

/// Splits at the last occurrence of `sep` (names may contain `manifests` or `blobs` components).
fn split_last<'a>(s: &'a str, sep: &str) -> Option<(&'a str, &'a str)> {
    // Tried at each candidate start from the end: `rfind` with a pattern string sets up a
    // substring searcher per call, which was a measurable share of a cached manifest GET.
    let first = *sep.as_bytes().first()?;
    let at = s
        .bytes()
        .enumerate()
        .rev()
        .filter(|&(_, b)| b == first)
        .map(|(i, _)| i)
        .find(|&i| s.as_bytes()[i..].starts_with(sep.as_bytes()))?;
    Some((&s[..at], &s[at + sep.len()..]))
}

/// The query parameters the API uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// containerd's `ns=<registry host>`.
    pub ns: Option<String>,
    /// Page size for listings.
    pub n: Option<String>,
    /// Last item of the previous page.
    pub last: Option<String>,
    /// `digest=` of an upload.
    pub digest: Option<String>,
    /// `mount=` of a cross-repository mount.
    pub mount: Option<String>,
    /// `from=` of a cross-repository mount.
    pub from: Option<String>,
    /// `artifactType=` filter of the referrers API.
    pub artifact_type: Option<String>,
    /// `scope=` of a token request (there may be several).
    pub scope: Vec<String>,
    /// `q=` of a search.
    pub q: Option<String>,
    /// `page=` of a search.
    pub page: Option<String>,
    /// `origin=` of a UI repository page (an upstream's name, or `_local`).
    pub origin: Option<String>,
    /// `name=` of a UI repository page.
    pub repo: Option<String>,
    /// `manifest=` of a UI blob page: the manifest it was reached from.
    pub manifest: Option<String>,
    /// `_state=` of an upload session: its signature (see `uploads::UploadSigner`).
    pub state: Option<String>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if key == "scope" {
                q.scope.push(value.into_owned());
                continue;
            }
            let slot = match key.as_ref() {
                "ns" => &mut q.ns,
                "manifest" => &mut q.manifest,
                "n" => &mut q.n,
                "last" => &mut q.last,
                "digest" => &mut q.digest,
                "mount" => &mut q.mount,
                "from" => &mut q.from,
                "artifactType" => &mut q.artifact_type,
                "q" => &mut q.q,
                "origin" => &mut q.origin,
                "name" => &mut q.repo,
                "page" => &mut q.page,
                "_state" => &mut q.state,
                _ => continue,
            };
            *slot = Some(value.into_owned());
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn split_last_splits_where_rfind_does() {
        for s in [
            "a/manifests/b",
            "manifests/manifests/x/manifests/y",
            "a/manifests/",
            "/manifests/b",
            "no separator",
            "a/manifest/b",
            "a//manifests//b",
            "é/manifests/ü",
            "",
        ] {
            for sep in ["/manifests/", "/blobs/uploads", "/"] {
                let expected = s.rfind(sep).map(|at| (&s[..at], &s[at + sep.len()..]));
                assert_eq!(split_last(s, sep), expected, "{s:?} at {sep:?}");
            }
        }
    }

    #[test]
    fn parses_routes() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/metrics"), Ok(Route::Metrics));
        assert!(matches!(
            parse("/v2/library/alpine/manifests/latest"),
            Ok(Route::Manifest { ref name, reference: Reference::Tag(_) }) if name.as_str() == "library/alpine"
        ));
        assert!(matches!(
            parse(&format!("/v2/a/manifests/{D}")),
            Ok(Route::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
        assert!(matches!(
            parse(&format!("/v2/ghcr.io/org/app/blobs/{D}")),
            Ok(Route::Blob { ref name, .. }) if name.as_str() == "ghcr.io/org/app"
        ));
        assert!(matches!(
            parse("/v2/a/b/tags/list"),
            Ok(Route::TagsList { ref name }) if name.as_str() == "a/b"
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads/"),
            Ok(Route::Upload { session: None, .. })
        ));
        assert!(matches!(
            parse("/v2/a/blobs/uploads/0b9e1d2c-1234-4c8e-9f00-aabbccddeeff"),
            Ok(Route::Upload { session: Some(ref s), .. }) if s == "0b9e1d2c-1234-4c8e-9f00-aabbccddeeff"
        ));
        assert!(matches!(
            parse(&format!("/v2/a/b/referrers/{D}")),
            Ok(Route::Referrers { ref name, .. }) if name.as_str() == "a/b"
        ));
        assert!(matches!(
            parse("/v2/x/manifests/y/manifests/latest"),
            Ok(Route::Manifest { ref name, .. }) if name.as_str() == "x/manifests/y"
        ));
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(
            parse("/"),
            Ok(Route::Ui(Page::Root)),
            "browsers land on the UI"
        );
        assert_eq!(parse("/ui/nonexistent"), Ok(Route::Ui(Page::NotFound)));
        assert_eq!(parse("/other"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/alpine"), Err(PathError::NotFound));
        assert!(matches!(
            parse("/v2/Alpine/manifests/latest"),
            Err(PathError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/../etc/manifests/latest"),
            Err(PathError::Name(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/..%2f"),
            Err(PathError::Reference(_))
        ));
        assert!(matches!(
            parse("/v2/a/manifests/sha256:zz"),
            Err(PathError::Reference(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/sha256:abc"),
            Err(PathError::Digest(_))
        ));
        assert!(matches!(
            parse("/v2/a/blobs/latest"),
            Err(PathError::Digest(_))
        ));
        assert_eq!(parse("/v2/a/manifests/"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/a/blobs/x/y"), Err(PathError::NotFound));
    }

    #[test]
    fn parses_query() {
        let q = Query::parse(Some("ns=docker.io&n=10&last=v1&other=x"));
        assert_eq!(q.ns.as_deref(), Some("docker.io"));
        assert_eq!(q.n.as_deref(), Some("10"));
        assert_eq!(q.last.as_deref(), Some("v1"));
        assert_eq!(Query::parse(None), Query::default());
    }
}

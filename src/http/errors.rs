//! OCI error responses, and the mapping of every lower layer's errors onto them.

use http::{HeaderValue, Response, header};

use super::body::{Body, full};
use super::routes::PathError;
use crate::oci::ErrorCode;
use crate::proxy::{FillError, ProxyError};
use crate::upstream::{self, UpstreamError};

/// An error to send as OCI error JSON.
#[derive(Debug)]
pub struct ApiError {
    /// The spec's code (which fixes the status).
    pub code: ErrorCode,
    /// A message for humans.
    pub message: String,
    /// Extra headers (`WWW-Authenticate`, `Content-Range`).
    pub headers: Vec<(header::HeaderName, String)>,
    /// The status, when not the one the spec pairs with the code.
    pub status: Option<http::StatusCode>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            headers: Vec::new(),
            status: None,
        }
    }

    /// Overrides the status (e.g. 416 for an out-of-order chunk).
    pub fn with_status(mut self, status: http::StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    /// Adds a header to the response.
    pub fn with_header(mut self, name: header::HeaderName, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The response: status from the code, JSON body (a HEAD's body is dropped where every
    /// answer's is, keeping its `Content-Length`).
    pub fn into_response(self) -> Response<Body> {
        let body = crate::oci::error::error_body(self.code, &self.message, None);
        let len = body.len();
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status.unwrap_or_else(|| self.code.status());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// What a request was about, to choose between `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN` and
/// `NAME_UNKNOWN` for a 404.
#[derive(Debug, Clone, Copy)]
pub enum Resource {
    /// A manifest.
    Manifest,
    /// A blob.
    Blob,
    /// A repository (tag listing).
    Repository,
}

impl Resource {
    fn unknown(self) -> ErrorCode {
        match self {
            Resource::Manifest => ErrorCode::ManifestUnknown,
            Resource::Blob => ErrorCode::BlobUnknown,
            Resource::Repository => ErrorCode::NameUnknown,
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        let code = match &e {
            PathError::NotFound => {
                return ApiError::new(ErrorCode::NameUnknown, "no such API endpoint");
            }
            PathError::Name(_) => ErrorCode::NameInvalid,
            PathError::Reference(crate::oci::ReferenceError::Tag(_)) => ErrorCode::ManifestInvalid,
            PathError::Reference(crate::oci::ReferenceError::Digest(_)) | PathError::Digest(_) => {
                ErrorCode::DigestInvalid
            }
        };
        ApiError::new(code, e.to_string())
    }
}

/// Maps an upstream failure for `resource`.
pub fn upstream_error(e: &UpstreamError, resource: Resource, upstream: &str) -> ApiError {
    match e {
        // Offline, the mirror is the whole registry: what it does not have is unknown (and
        // clients such as dockerd fall back on a 404 as on any error).
        UpstreamError::Offline => ApiError::new(
            resource.unknown(),
            "not in the cache, and the mirror is offline",
        ),
        UpstreamError::NotFound => ApiError::new(resource.unknown(), format!("not found on upstream {upstream}")),
        UpstreamError::Unauthorized => ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "upstream {upstream} refused: the repository does not exist or needs credentials (set username and password for it in the config)"
            ),
        )
        .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"regmirror\"".into()),
        UpstreamError::Denied => ApiError::new(ErrorCode::Denied, format!("upstream {upstream} denied access")),
        UpstreamError::TooManyRequests => ApiError::new(
            ErrorCode::TooManyRequests,
            format!("upstream {upstream} rate limit exceeded and the content is not cached"),
        ),
        UpstreamError::RangeNotSatisfiable => ApiError::new(ErrorCode::RangeInvalid, "range not satisfiable"),
        UpstreamError::DestinationRefused(message) => ApiError::new(ErrorCode::Unavailable, message.clone())
            .with_status(http::StatusCode::BAD_GATEWAY),
        other => ApiError::new(
            ErrorCode::Unavailable,
            format!("upstream {upstream} unavailable and the content is not cached: {other}"),
        ),
    }
}

/// Maps a name that routes nowhere it may (an `ns` that names no configured upstream).
pub fn route_error(e: &upstream::RouteError) -> ApiError {
    match e {
        upstream::RouteError::UnknownNamespace(ns) => ApiError::new(
            ErrorCode::NameUnknown,
            format!("namespace {ns:?} is not a configured upstream of this mirror"),
        ),
        upstream::RouteError::NoUpstream(_) => ApiError::new(ErrorCode::NameUnknown, e.to_string()),
    }
}

/// Maps a pull-through failure for `resource`.
pub fn proxy_error(e: ProxyError, resource: Resource, upstream: &str) -> ApiError {
    match e {
        ProxyError::Route(e) => route_error(&e),
        ProxyError::Denied(message) => ApiError::new(ErrorCode::Denied, message),
        ProxyError::RememberedNotFound => upstream_error(
            &crate::upstream::UpstreamError::NotFound,
            resource,
            upstream,
        ),
        ProxyError::Upstream(e) | ProxyError::Fill(FillError::Upstream(e)) => {
            upstream_error(&e, resource, upstream)
        }
        // A store failure under a fill goes through the one mapping that hides local paths.
        ProxyError::Fill(FillError::Store(e)) => store_error(&e),
        ProxyError::Fill(e) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        ProxyError::ManifestDigestMismatch => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        ProxyError::RangeNotSatisfiable { size } => {
            ApiError::new(ErrorCode::RangeInvalid, e.to_string())
                .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
        }
        ProxyError::Internal(e) => {
            tracing::error!(error = %e, "internal failure");
            ApiError::new(ErrorCode::Unknown, "internal error")
        }
        ProxyError::Store(e) => store_error(&e),
    }
}

/// Maps a store failure: a full disk is 507 with a clear message (clients and operators can
/// act on it), an object store in an outage 503 (nothing changed; try again), anything else
/// a logged 500.
pub fn store_error(e: &crate::store::StoreError) -> ApiError {
    if e.is_unavailable() {
        tracing::debug!(error = %e, "store unavailable");
        return ApiError::new(
            ErrorCode::Unavailable,
            "the mirror's storage is unavailable; nothing was changed, try again later",
        )
        .with_header(header::RETRY_AFTER, "30".into());
    }
    if e.is_disk_full() {
        tracing::error!(error = %e, "storage full");
        return ApiError::new(
            ErrorCode::StorageFull,
            "the mirror's storage is full; nothing was kept",
        );
    }
    tracing::error!(error = %e, "store failure");
    ApiError::new(ErrorCode::Unknown, "internal storage error")
}

/// Maps an upload failure.
pub fn upload_error(e: crate::store::UploadError) -> ApiError {
    use crate::store::UploadError;
    match e {
        UploadError::Unknown => ApiError::new(ErrorCode::BlobUploadUnknown, e.to_string()),
        UploadError::OutOfOrder { .. } => {
            ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string())
                .with_status(http::StatusCode::RANGE_NOT_SATISFIABLE)
        }
        UploadError::TooLarge { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        UploadError::SpaceFull { .. } => ApiError::new(ErrorCode::StorageFull, e.to_string()),
        UploadError::TooManySessions { .. } => {
            ApiError::new(ErrorCode::TooManyRequests, e.to_string())
        }
        UploadError::TooManyChunks { .. } => {
            ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string())
        }
        UploadError::Busy => ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string())
            .with_status(http::StatusCode::CONFLICT),
        UploadError::Body(_) => ApiError::new(ErrorCode::BlobUploadInvalid, e.to_string()),
        UploadError::DigestMismatch(_) => ApiError::new(ErrorCode::DigestInvalid, e.to_string()),
        UploadError::Store(e) => store_error(&e),
    }
}

/// Maps a manifest push failure.
pub fn push_error(e: crate::proxy::local::PushError) -> ApiError {
    use crate::proxy::local::PushError;
    match e {
        PushError::Invalid(_) => ApiError::new(ErrorCode::ManifestInvalid, e.to_string()),
        PushError::BlobUnknown(_) => ApiError::new(ErrorCode::ManifestBlobUnknown, e.to_string()),
        PushError::DigestMismatch(_) => ApiError::new(ErrorCode::DigestInvalid, e.to_string()),
        PushError::Store(e) => proxy_error(e, Resource::Manifest, crate::store::LOCAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_with_a_clear_message() {
        let full = crate::store::StoreError::Io {
            path: "blobs/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        let e = store_error(&full);
        assert_eq!(e.code, ErrorCode::StorageFull);
        assert_eq!(e.into_response().status(), 507);
        let other = crate::store::StoreError::Io {
            path: "blobs/x".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        assert_eq!(store_error(&other).code, ErrorCode::Unknown);
        let outage = crate::store::StoreError::Backend(crate::store::BackendError::Unavailable {
            op: "put",
            bucket: "b".into(),
            key: "k".into(),
            message: "connection refused".into(),
        });
        let e = store_error(&outage);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(!e.message.contains("connection refused"), "{}", e.message);
        assert_eq!(e.into_response().status(), 503);
        let upload = upload_error(crate::store::UploadError::Store(full));
        assert_eq!(upload.code, ErrorCode::StorageFull);
    }

    #[test]
    fn store_failures_under_a_fill_do_not_show_local_paths() {
        let failed = crate::store::StoreError::Io {
            path: "/var/lib/regmirror/tmp/spool-1".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        let e = proxy_error(
            ProxyError::Fill(FillError::Store(std::sync::Arc::new(failed))),
            Resource::Blob,
            "docker.io",
        );
        assert_eq!(e.code, ErrorCode::Unknown);
        let body = format!("{e:?}");
        assert!(!body.contains("/var/lib"), "{body}");
    }
}

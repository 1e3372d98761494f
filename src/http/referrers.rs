//! `GET /v2/<name>/referrers/<digest>`: an OCI index of the manifests whose `subject` is the
//! digest, optionally filtered by `artifactType`.

use http::{HeaderValue, Response, header};

use super::body::full;
use super::errors::{Resource, proxy_error};
use super::{Answer, Ctx};
use crate::oci::{Digest, media};
use crate::proxy::Target;
use crate::store::LOCAL;

/// Answers a referrers listing of `target` (always 200: an empty index when there are none).
pub async fn list(ctx: &Ctx<'_>, target: &Target, digest: &Digest) -> Answer {
    let filter = ctx.query.artifact_type.as_deref();
    let referrers = match ctx.mirror.referrers(target, digest, filter).await {
        Ok(referrers) => referrers,
        Err(e) => return proxy_error(e, Resource::Manifest, LOCAL).into(),
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": referrers,
    });
    let bytes = serde_json::to_vec(&index).unwrap_or_default();
    let len = bytes.len();
    let mut response = Response::new(full(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media::OCI_INDEX),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if filter.is_some() {
        headers.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Answer::plain(response)
}

//! Pushes of blobs: `POST /v2/<name>/blobs/uploads/` (monolithic with `?digest=`, a session, or
//! a cross-repository mount), then `PATCH` chunks, `PUT ?digest=` to finish, `GET` for the
//! status and `DELETE` to cancel. Bodies stream to disk.

use http::{HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;

use super::body::empty;
use super::errors::{ApiError, upload_error};
use super::{Answer, Ctx};
use crate::oci::{ContentRange, Digest, ErrorCode, RepoName};
use crate::proxy::Target;
use crate::store::UploadId;

/// Signs upload sessions with the cluster's upload key: the `_state` parameter of a session's
/// `Location` proves that a replica of this cluster opened the session for this repository,
/// so any replica continues it, and a guessed or forged id is refused before the store is
/// asked about it.
pub struct UploadSigner {
    key: Vec<u8>,
}

impl UploadSigner {
    /// A signer with `key` (derived from the cluster secret).
    pub fn new(key: Vec<u8>) -> UploadSigner {
        UploadSigner { key }
    }

    fn mac(&self, name: &RepoName, id: &UploadId) -> crate::signing::Mac {
        crate::signing::mac(
            &self.key,
            &[id.as_str().as_bytes(), b"\0", name.as_str().as_bytes()],
        )
    }

    /// The `_state` of session `id` of `name`.
    pub fn sign(&self, name: &RepoName, id: &UploadId) -> String {
        use hmac::Mac;
        hex::encode(&self.mac(name, id).finalize().into_bytes()[..STATE_BYTES])
    }

    /// Whether `state` is the `_state` of session `id` of `name` (compared in constant time).
    pub fn verify(&self, name: &RepoName, id: &UploadId, state: Option<&str>) -> bool {
        use hmac::Mac;
        let Some(Ok(state)) = state.map(hex::decode) else {
            return false;
        };
        state.len() == STATE_BYTES && self.mac(name, id).verify_truncated_left(&state).is_ok()
    }
}

/// Bytes of HMAC in a `_state`: 128 bits cannot be guessed.
const STATE_BYTES: usize = 16;

/// The request body as a stream of bytes that gives up on a client sending nothing.
fn body_stream(
    ctx: &Ctx<'_>,
    body: Incoming,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, super::request_body::BodyError>> + Unpin
{
    super::request_body::data_stream(body, ctx.app.body_idle_timeout)
}

/// Refuses a body whose declared length is over the limit before reading any of it.
fn check_declared_length(ctx: &Ctx<'_>) -> Result<(), ApiError> {
    let declared = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > ctx.app.uploads.max_blob => Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "body of {len} bytes exceeds max_upload_size ({} bytes)",
                ctx.app.uploads.max_blob
            ),
        )),
        _ => Ok(()),
    }
}

fn digest_param(ctx: &Ctx<'_>) -> Result<Option<Digest>, ApiError> {
    ctx.query
        .digest
        .as_deref()
        .map(|d| d.parse::<Digest>())
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// `&ns=<ns>` when the client sent containerd's `ns`: the URLs we hand back resolve to the
/// same repository.
fn ns_param(ctx: &Ctx<'_>) -> String {
    ctx.query.ns.as_deref().map_or_else(String::new, |ns| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::from("&"));
        pairs.append_pair("ns", ns);
        pairs.finish()
    })
}

/// `201 Created` for a blob now in the store.
fn created(ctx: &Ctx<'_>, target: &Target, digest: &Digest) -> Answer {
    let name = target.sent();
    let query = ns_param(ctx).replacen('&', "?", 1);
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::CREATED;
    let headers = response.headers_mut();
    for (key, value) in [
        (
            header::LOCATION,
            format!("/v2/{name}/blobs/{digest}{query}"),
        ),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.to_string(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Answer::plain(response)
}

/// `202`/`204` describing a session: where to send the next chunk and what is there.
fn session_status(
    ctx: &Ctx<'_>,
    target: &Target,
    id: &UploadId,
    len: u64,
    status: StatusCode,
) -> Answer {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // An empty session is reported as "0-0", as Distribution does and clients expect.
    let range = format!("0-{}", len.saturating_sub(1));
    for (key, value) in [
        (
            header::LOCATION,
            format!(
                "/v2/{}/blobs/uploads/{}?_state={}{}",
                target.sent(),
                id.as_str(),
                ctx.app.upload_signer.sign(target.canonical(), id),
                ns_param(ctx),
            ),
        ),
        (header::RANGE, range),
        (
            header::HeaderName::from_static("docker-upload-uuid"),
            id.as_str().to_owned(),
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Answer::plain(response)
}

/// `POST /v2/<name>/blobs/uploads/`.
pub async fn start(ctx: &Ctx<'_>, target: &Target, body: Incoming) -> Answer {
    let mirror = ctx.mirror;
    let owner = ctx.owner();
    let limits = &ctx.app.uploads;
    // Cross-repository mount (the client was checked for pull on `from`).
    if let Some(mount) = ctx
        .query
        .mount
        .as_deref()
        .and_then(|m| m.parse::<Digest>().ok())
    {
        match mirror.mount_blob(target, &mount).await {
            Ok(true) => return created(ctx, target, &mount),
            Ok(false) => {} // Fall back to a session, as the spec says.
            Err(e) => return upload_error(e).into(),
        }
    }
    let digest = match digest_param(ctx) {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    if let Err(e) = check_declared_length(ctx) {
        return e.into();
    }
    let id = match mirror.start_upload(target, &owner, limits).await {
        Ok(id) => id,
        Err(e) => return upload_error(e).into(),
    };
    let Some(digest) = digest else {
        return session_status(ctx, target, &id, 0, StatusCode::ACCEPTED);
    };
    // Monolithic: the whole blob in this request.
    let result = async {
        mirror
            .append_upload(target, &owner, &id, None, body_stream(ctx, body), limits)
            .await?;
        mirror.complete_upload(target, &owner, &id, &digest).await
    }
    .await;
    match result {
        Ok(_) => created(ctx, target, &digest),
        Err(e) => {
            let _ = mirror.cancel_upload(target, &owner, &id).await;
            upload_error(e).into()
        }
    }
}

/// The start of an upload chunk's `Content-Range`, when the client sent one.
fn chunk_start(ctx: &Ctx<'_>) -> Result<Option<u64>, ApiError> {
    let Some(value) = ctx.headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| ContentRange::parse(text).ok())
        .map(|range| Some(range.start))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::BlobUploadInvalid, "malformed Content-Range")
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        })
}

/// Requests on an existing session.
pub async fn session(
    ctx: &Ctx<'_>,
    target: &Target,
    id: &str,
    method: Method,
    body: Incoming,
) -> Answer {
    let Some(id) = UploadId::parse(id).filter(|id| {
        ctx.app
            .upload_signer
            .verify(target.canonical(), id, ctx.query.state.as_deref())
    }) else {
        return ApiError::new(ErrorCode::BlobUploadUnknown, "no such upload session").into();
    };
    let mirror = ctx.mirror;
    let owner = ctx.owner();
    let limits = &ctx.app.uploads;
    match method {
        Method::GET | Method::HEAD => match mirror.upload_status(target, &owner, &id).await {
            Ok(len) => session_status(ctx, target, &id, len, StatusCode::NO_CONTENT),
            Err(e) => upload_error(e).into(),
        },
        Method::PATCH => {
            let start = match chunk_start(ctx).and_then(|s| check_declared_length(ctx).map(|()| s))
            {
                Ok(start) => start,
                Err(e) => return e.into(),
            };
            match mirror
                .append_upload(target, &owner, &id, start, body_stream(ctx, body), limits)
                .await
            {
                Ok(len) => session_status(ctx, target, &id, len, StatusCode::ACCEPTED),
                Err(e) => upload_error(e).into(),
            }
        }
        Method::PUT => {
            let digest = match digest_param(ctx) {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return ApiError::new(ErrorCode::DigestInvalid, "digest parameter missing")
                        .into();
                }
                Err(e) => return e.into(),
            };
            if let Err(e) = check_declared_length(ctx) {
                return e.into();
            }
            let start = match chunk_start(ctx) {
                Ok(start) => start,
                Err(e) => return e.into(),
            };
            let result = async {
                mirror
                    .append_upload(target, &owner, &id, start, body_stream(ctx, body), limits)
                    .await?;
                mirror.complete_upload(target, &owner, &id, &digest).await
            }
            .await;
            match result {
                Ok(_) => created(ctx, target, &digest),
                Err(e) => upload_error(e).into(),
            }
        }
        Method::DELETE => match mirror.cancel_upload(target, &owner, &id).await {
            Ok(()) => {
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Answer::plain(response)
            }
            Err(e) => upload_error(e).into(),
        },
        other => ApiError::new(
            ErrorCode::Unsupported,
            format!("{other} on an upload session"),
        )
        .into(),
    }
}

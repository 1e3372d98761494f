//! `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single `Range` requests.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{empty, file_range, holding_permit, streamed};
use super::errors::{ApiError, Resource, proxy_error};
use super::{Answer, Ctx, echo_namespace};
use crate::oci::{ByteRange, Digest, ErrorCode};
use crate::proxy::Target;
use crate::proxy::{BlobAnswer, BlobBody};
use crate::proxy::{CacheResult, Source};

/// The request's `Range`, if any.
fn requested_range(ctx: &Ctx<'_>) -> Result<Option<ByteRange>, ApiError> {
    match ctx.headers.get(header::RANGE).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(value)) => ByteRange::parse_header(value).map_err(|_| {
            ApiError::new(
                ErrorCode::RangeInvalid,
                format!("malformed Range {value:?}"),
            )
        }),
        Some(Err(_)) => Err(ApiError::new(ErrorCode::RangeInvalid, "malformed Range")),
    }
}

/// A slot of `[server] max_blob_readers` for a GET (a HEAD sends no body), waited for at
/// most `send_timeout`.
async fn reader_permit(
    ctx: &Ctx<'_>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    if ctx.head {
        return Ok(None);
    }
    let readers = std::sync::Arc::clone(&ctx.app.blob_readers);
    match tokio::time::timeout(ctx.app.blob_reader_wait, readers.acquire_owned()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        _ => {
            ctx.mirror.metrics.blob_readers_refused.inc();
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many blob downloads in progress ([server] max_blob_readers); try again",
            )
            .with_header(header::RETRY_AFTER, "5".into()))
        }
    }
}

/// Answers a blob request.
pub async fn get(ctx: &Ctx<'_>, target: &Target, digest: &Digest) -> Answer {
    let range = match requested_range(ctx) {
        Ok(range) => range,
        Err(e) => return e.into(),
    };
    let permit = match reader_permit(ctx).await {
        Ok(permit) => permit,
        Err(e) => return e.into(),
    };
    let upstream = target.label().to_owned();
    let answer = match ctx.mirror.blob(target, digest, ctx.head, range).await {
        Ok(answer) => answer,
        Err(e) => {
            let error = proxy_error(e, Resource::Blob, &upstream);
            return Answer::failed(error, upstream);
        }
    };
    respond(ctx, digest, answer, upstream, permit)
}

/// `GET /_cluster/blobs/<digest>`: another replica of the cluster reads a blob whose fetch
/// this one leads (from the running fill, or the store once committed). Only for requests
/// signed with the cluster's peer key; never from the upstream.
pub async fn peer_get(ctx: &Ctx<'_>, digest: &Digest) -> Answer {
    let signature = ctx
        .headers
        .get(crate::cluster::PEER_HEADER)
        .and_then(|v| v.to_str().ok());
    let signed = ctx
        .mirror
        .peers()
        .is_some_and(|peers| peers.verify("GET", digest, signature));
    if !signed {
        return ApiError::new(ErrorCode::Denied, "not a replica of this cluster").into();
    }
    let range = match requested_range(ctx) {
        Ok(range) => range,
        Err(e) => return e.into(),
    };
    let permit = match reader_permit(ctx).await {
        Ok(permit) => permit,
        Err(e) => return e.into(),
    };
    let upstream = "peer".to_owned();
    match ctx.mirror.peer_blob(digest, range).await {
        Ok(answer) => respond(ctx, digest, answer, upstream, permit),
        Err(e) => Answer::failed(proxy_error(e, Resource::Blob, &upstream), upstream),
    }
}

/// Renders a blob answer: headers, status, and the body from wherever it comes (holding
/// `permit` while it is sent).
fn respond(
    ctx: &Ctx<'_>,
    digest: &Digest,
    answer: BlobAnswer,
    upstream: String,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Answer {
    let (body, source) = match answer.body {
        BlobBody::Empty => (empty(), None),
        BlobBody::Redirect(url) => return redirect(ctx, &url, answer.cache, upstream),
        BlobBody::File {
            reader,
            start,
            end,
            guard,
        } => (file_range(reader, start, end, guard), Some(Source::Cache)),
        BlobBody::Fill { fill, start, end } => {
            // A hit on a fill means its bytes were all in and verified: no upstream wait.
            let source = match answer.cache {
                CacheResult::Hit => Source::Cache,
                _ => Source::Upstream,
            };
            (streamed(fill.read(start, end)), Some(source))
        }
    };
    let body = match permit {
        Some(permit) => holding_permit(body, permit),
        None => body,
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value.clone());
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{digest}\"")) {
            headers.insert(header::ETAG, etag);
        }
    }
    match (answer.range, answer.size) {
        (Some((start, end)), Some(size)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(size)) => {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        // Size unknown (upstream sent no length): the body is chunked.
        (_, None) => {}
    }
    echo_namespace(ctx, &mut response);
    let source = source.or(match answer.cache {
        CacheResult::Hit => Some(Source::Cache),
        _ => None,
    });
    Answer {
        response,
        cache: Some(answer.cache),
        source,
        upstream: Some(upstream),
    }
}

/// `307` to where the client fetches the blob itself (a presigned bucket URL).
fn redirect(ctx: &Ctx<'_>, url: &url::Url, cache: CacheResult, upstream: String) -> Answer {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    echo_namespace(ctx, &mut response);
    Answer {
        response,
        cache: Some(cache),
        source: None,
        upstream: Some(upstream),
    }
}

/// `DELETE /v2/<name>/blobs/<digest>`: through `target` only (another repository that holds
/// the blob keeps it).
pub async fn delete(ctx: &Ctx<'_>, target: &Target, digest: &Digest) -> Answer {
    if !ctx.app.delete_enabled {
        return ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled ([storage] delete = false)",
        )
        .into();
    }
    match ctx.mirror.delete_blob(target, digest).await {
        Ok(true) => {
            tracing::info!(
                user = %ctx.actor(),
                client = %ctx.client,
                repo = %target.canonical(),
                %digest,
                "blob deleted"
            );
            super::manifests::accepted()
        }
        Ok(false) => ApiError::new(ErrorCode::BlobUnknown, format!("{digest} not found")).into(),
        Err(e) => proxy_error(e, Resource::Blob, crate::store::LOCAL).into(),
    }
}

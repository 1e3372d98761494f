//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.

use http::{HeaderValue, Response, header};

use super::body::{empty, full};
use super::errors::{ApiError, Resource, proxy_error, push_error};
use super::{Answer, Ctx, echo_namespace};
use crate::oci::{ErrorCode, Reference};
use crate::proxy::{Source, Target};

/// Answers a manifest request.
pub async fn get(ctx: &Ctx<'_>, target: &Target, reference: &Reference) -> Answer {
    let upstream = target.label().to_owned();
    let answer = match ctx.mirror.manifest(target, reference, ctx.head).await {
        Ok(answer) => answer,
        Err(e) => {
            let negative = matches!(e, crate::proxy::ProxyError::RememberedNotFound);
            let error = proxy_error(e, Resource::Manifest, &upstream);
            let mut answer = Answer::failed(error, upstream);
            if negative {
                answer.cache = Some(crate::proxy::CacheResult::Negative);
            }
            return answer;
        }
    };
    let mut response = Response::new(match &answer.body {
        Some(bytes) => full(bytes.clone()),
        None => empty(),
    });
    let headers = response.headers_mut();
    let digest = answer.digest.to_string();
    // Owned strings become header values without another copy.
    for (name, value) in [
        (header::ETAG, format!("\"{digest}\"")),
        (header::CONTENT_TYPE, answer.media_type),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest,
        ),
    ] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(answer.size));
    echo_namespace(ctx, &mut response);
    let source = match answer.cache {
        crate::proxy::CacheResult::Miss => Source::Upstream,
        _ => Source::Cache,
    };
    Answer {
        response,
        cache: Some(answer.cache),
        source: Some(source),
        upstream: Some(upstream),
    }
}

/// The largest manifest accepted on push.
pub const MAX_PUSHED_MANIFEST: usize = 4 * 1024 * 1024;

/// `PUT /v2/<name>/manifests/<reference>`.
pub async fn put(
    ctx: &Ctx<'_>,
    target: &Target,
    reference: &Reference,
    body: hyper::body::Incoming,
) -> Answer {
    let too_large = || {
        ApiError::new(
            ErrorCode::ManifestInvalid,
            format!("manifest larger than {MAX_PUSHED_MANIFEST} bytes"),
        )
        .with_status(http::StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = ctx
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_PUSHED_MANIFEST) {
        return too_large().into();
    }
    use super::request_body::{CollectError, collect};
    let bytes = match collect(body, ctx.app.body_idle_timeout, MAX_PUSHED_MANIFEST).await {
        Ok(bytes) => bytes,
        Err(CollectError::TooLarge(_)) => return too_large().into(),
        Err(CollectError::Body(e)) => {
            return ApiError::new(ErrorCode::ManifestInvalid, format!("reading body: {e}")).into();
        }
    };
    let content_type = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pushed = match ctx
        .mirror
        .push_manifest(target, reference, content_type, bytes)
        .await
    {
        Ok(pushed) => pushed,
        Err(e) => return push_error(e).into(),
    };
    tracing::info!(
        user = %ctx.actor(),
        client = %ctx.client,
        repo = %target.canonical(),
        %reference,
        digest = %pushed.digest,
        "manifest pushed"
    );
    let mut response = Response::new(empty());
    *response.status_mut() = http::StatusCode::CREATED;
    let headers = response.headers_mut();
    let digest = pushed.digest.to_string();
    let mut set = |key: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(key, value);
        }
    };
    set(
        "location",
        format!("/v2/{}/manifests/{digest}", target.sent()),
    );
    set("docker-content-digest", digest);
    if let Some(subject) = pushed.subject {
        set("oci-subject", subject.to_string());
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Answer::plain(response)
}

/// `DELETE /v2/<name>/manifests/<reference>`.
pub async fn delete(ctx: &Ctx<'_>, target: &Target, reference: &Reference) -> Answer {
    if !ctx.app.delete_enabled {
        return ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled ([storage] delete = false)",
        )
        .into();
    }
    match ctx.mirror.delete_manifest(target, reference).await {
        Ok(true) => {
            tracing::info!(
                user = %ctx.actor(),
                client = %ctx.client,
                repo = %target.canonical(),
                %reference,
                "manifest deleted"
            );
            accepted()
        }
        Ok(false) => {
            ApiError::new(ErrorCode::ManifestUnknown, format!("{reference} not found")).into()
        }
        Err(e) => proxy_error(e, Resource::Manifest, crate::store::LOCAL).into(),
    }
}

/// `202 Accepted` with no body.
pub fn accepted() -> Answer {
    let mut response = Response::new(empty());
    *response.status_mut() = http::StatusCode::ACCEPTED;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Answer::plain(response)
}

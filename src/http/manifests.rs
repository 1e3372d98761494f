//! `GET`/`HEAD /v2/<name>/manifests/<reference>`.

use http::{HeaderValue, Response, header};

use super::body::{empty, full};
use super::errors::{Resource, proxy_error};
use super::{Answer, Ctx, echo_namespace};
use crate::metrics::Source;
use crate::oci::{Reference, RepoName};
use crate::proxy::ProxyError;

/// Answers a manifest request.
pub async fn get(ctx: &Ctx<'_>, name: &RepoName, reference: &Reference) -> Answer {
    let route = match ctx.mirror.upstreams.resolve(ctx.query.ns.as_deref(), name) {
        Ok(route) => route,
        Err(e) => return proxy_error(ProxyError::Route(e), Resource::Manifest, "").into(),
    };
    let answer = match ctx.mirror.manifest(&route, reference, ctx.head).await {
        Ok(answer) => answer,
        Err(e) => return proxy_error(e, Resource::Manifest, route.upstream.name()).into(),
    };
    let mut response = Response::new(match &answer.body {
        Some(bytes) => full(bytes.clone()),
        None => empty(),
    });
    let headers = response.headers_mut();
    let digest = answer.digest.to_string();
    for (name, value) in [
        (header::CONTENT_TYPE, answer.media_type.as_str()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.as_str(),
        ),
        (header::ETAG, &format!("\"{digest}\"")),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(answer.size));
    echo_namespace(ctx, &mut response);
    let source = match answer.cache {
        crate::metrics::CacheResult::Miss => Source::Upstream,
        _ => Source::Cache,
    };
    Answer {
        response,
        cache: Some(answer.cache),
        source: Some(source),
        upstream: Some(route.upstream.name().to_owned()),
    }
}

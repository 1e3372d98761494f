//! `GET /v2/<name>/tags/list`: passed on to the upstream with `n` and `last`.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::full;
use super::errors::{ApiError, Resource, proxy_error, upstream_error};
use super::{Answer, Ctx, echo_namespace};
use crate::oci::{ErrorCode, RepoName};
use crate::proxy::ProxyError;

/// The tag list document.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagList {
    name: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Answers a tag listing from the upstream.
pub async fn list(ctx: &Ctx<'_>, name: &RepoName) -> Answer {
    let n = match ctx.query.n.as_deref().map(str::parse::<u32>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
            .into();
        }
    };
    let route = match ctx.mirror.upstreams.resolve(ctx.query.ns.as_deref(), name) {
        Ok(route) => route,
        Err(e) => return proxy_error(ProxyError::Route(e), Resource::Repository, "").into(),
    };
    let upstream = route.upstream.name();
    let response = match route
        .upstream
        .tags_list(&route.repo, n, ctx.query.last.as_deref())
        .await
    {
        Ok(response) => response,
        Err(e) => return upstream_error(&e, Resource::Repository, upstream).into(),
    };
    let has_next = response.headers().contains_key(header::LINK);
    let list: TagList = match response.json().await {
        Ok(list) => list,
        Err(e) => {
            return ApiError::new(
                ErrorCode::Unavailable,
                format!("upstream {upstream} sent an invalid tag list: {e}"),
            )
            .into();
        }
    };
    let tags = list.tags.unwrap_or_default();
    let next_last = tags.last().cloned();
    let body = match serde_json::to_vec(&TagList {
        name: name.to_string(),
        tags: Some(tags),
    }) {
        Ok(body) => body,
        Err(e) => return ApiError::new(ErrorCode::Unknown, e.to_string()).into(),
    };
    let mut response = Response::new(full(body.clone()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    // The upstream's Link names its own repository path; point the client at ours.
    if let (true, Some(last)) = (has_next, next_last) {
        let mut link = format!("</v2/{name}/tags/list?");
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            query.append_pair("n", &n.to_string());
        }
        query.append_pair("last", &last);
        if let Some(ns) = &ctx.query.ns {
            query.append_pair("ns", ns);
        }
        link.push_str(&query.finish());
        link.push_str(">; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    echo_namespace(ctx, &mut response);
    Answer::plain(response)
}

//! `GET /v2/<name>/tags/list`: pushed tags merged with the upstream's, sorted, paged.

use super::errors::{ApiError, Resource, proxy_error};
use super::paging::{Page, json_page};
use super::{Answer, Ctx, echo_namespace};
use crate::oci::ErrorCode;
use crate::proxy::Target;

/// Answers a tag listing.
pub async fn list(ctx: &Ctx<'_>, target: &Target) -> Answer {
    let name = target.sent();
    let page = match Page::parse(ctx.query.n.as_deref(), ctx.query.last.as_deref()) {
        Ok(page) => page,
        Err(e) => return e.into(),
    };
    let upstream = target.label().to_owned();
    let listed = ctx
        .mirror
        .list_tags(target, page.n, page.last.as_deref())
        .await;
    let (tags, more) = match listed {
        Ok(Some(listed)) => listed,
        Ok(None) => {
            return ApiError::new(
                ErrorCode::NameUnknown,
                format!("repository {name} not known"),
            )
            .into();
        }
        Err(e) => {
            let error = proxy_error(e, Resource::Repository, &upstream);
            return Answer::failed(error, upstream);
        }
    };
    let body = serde_json::json!({"name": name.as_str(), "tags": tags});
    let mut next = format!("/v2/{name}/tags/list?");
    if let Some(ns) = &ctx.query.ns {
        next.push_str(
            &url::form_urlencoded::Serializer::new(String::new())
                .append_pair("ns", ns)
                .finish(),
        );
        next.push('&');
    }
    let mut response = json_page(&body, &page, &tags, more, &next);
    echo_namespace(ctx, &mut response);
    let mut answer = Answer::plain(response);
    answer.upstream = Some(upstream);
    answer
}

//! `GET /v2/_catalog`: the repositories the mirror holds, pushed and cached, paged.

use super::errors::{Resource, proxy_error};
use super::paging::{Page, json_page};
use super::{Answer, Ctx};
use crate::store::LOCAL;

/// Answers a catalog listing.
pub async fn list(ctx: &Ctx<'_>) -> Answer {
    let page = match Page::parse(ctx.query.n.as_deref(), ctx.query.last.as_deref()) {
        Ok(page) => page,
        Err(e) => return e.into(),
    };
    let repos = match ctx.mirror.catalog().await {
        Ok(repos) => repos,
        Err(e) => return proxy_error(e, Resource::Repository, LOCAL).into(),
    };
    let (repos, more) = page.apply(repos);
    let body = serde_json::json!({"repositories": repos});
    Answer::plain(json_page(&body, &page, &repos, more, "/v2/_catalog?"))
}

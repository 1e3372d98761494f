//! `GET /v1/search?q=&n=&page=`: `docker search HOST/term`, in the format the Docker CLI reads.

use super::body::text_response;
use super::context::{Answer, Ctx};
use super::errors::{ApiError, Resource, proxy_error};
use crate::oci::ErrorCode;
use crate::store::LOCAL;

/// Results per page unless the client asks (`n`), and the most it may ask for.
const DEFAULT_PAGE: usize = 25;
const MAX_PAGE: usize = 100;

/// Answers a search.
pub async fn search(ctx: &Ctx<'_>) -> Answer {
    let number = |value: Option<&str>, default: usize, max: usize| match value {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::PaginationNumberInvalid,
                    format!("{v:?} must be a number from 1 to {max}"),
                )
            }),
    };
    let (page_size, page) = match (
        number(ctx.query.n.as_deref(), DEFAULT_PAGE, MAX_PAGE),
        number(ctx.query.page.as_deref(), 1, usize::MAX),
    ) {
        (Ok(n), Ok(page)) => (n, page),
        (Err(e), _) | (_, Err(e)) => return e.into(),
    };
    let query = ctx.query.q.as_deref().unwrap_or("");
    if query.len() > crate::proxy::search::MAX_QUERY {
        return ApiError::new(ErrorCode::Unsupported, "search term too long")
            .with_status(http::StatusCode::BAD_REQUEST)
            .into();
    }
    let hits = match ctx.mirror.search(query).await {
        Ok(hits) => hits,
        Err(e) => return proxy_error(e, Resource::Repository, LOCAL).into(),
    };
    let total = hits.len();
    let results: Vec<_> = hits
        .into_iter()
        .skip((page - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    let body = serde_json::json!({
        "query": query,
        "num_results": total,
        "num_pages": total.div_ceil(page_size).max(1),
        "page": page,
        "page_size": page_size,
        "results": results,
    });
    Answer::plain(text_response(body.to_string(), "application/json"))
}

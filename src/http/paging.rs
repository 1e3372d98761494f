//! `n`/`last` pagination of sorted listings, with the `Link` header for the next page.

use http::{HeaderValue, Response, header};

use super::body::{Body, full};
use super::errors::ApiError;
use crate::oci::ErrorCode;

/// A page request.
pub struct Page {
    /// At most this many items (`None`: all).
    pub n: Option<usize>,
    /// Only items after this one.
    pub last: Option<String>,
}

impl Page {
    /// From the raw `n` and `last` query values.
    pub fn parse(n: Option<&str>, last: Option<&str>) -> Result<Page, ApiError> {
        let n = n.map(|n| n.parse::<usize>()).transpose().map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
        })?;
        Ok(Page {
            n,
            last: last.map(str::to_owned),
        })
    }

    /// Cuts a sorted list; returns the page and whether more items follow.
    pub fn apply(&self, sorted: Vec<String>) -> (Vec<String>, bool) {
        let mut items: Vec<String> = match &self.last {
            Some(last) => sorted.into_iter().filter(|item| item > last).collect(),
            None => sorted,
        };
        let more = self.n.is_some_and(|n| items.len() > n);
        if let Some(n) = self.n {
            items.truncate(n);
        }
        (items, more)
    }
}

/// A JSON response for a page; with `next_path` (the path and query prefix for the next page,
/// such as `/v2/_catalog?`) and more items, a `Link: <...>; rel="next"` header.
pub fn json_page(
    body: &serde_json::Value,
    page: &Page,
    items: &[String],
    more: bool,
    next_path: &str,
) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let len = bytes.len();
    let mut response = Response::new(full(bytes));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let (true, Some(last)) = (more, items.last()) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(n) = page.n {
            query.append_pair("n", &n.to_string());
        }
        query.append_pair("last", last);
        let link = format!("<{next_path}{}>; rel=\"next\"", query.finish());
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let page = Page::parse(Some("2"), None).unwrap();
        assert_eq!(
            page.apply(all.clone()),
            (vec!["a".into(), "b".into()], true)
        );
        let page = Page::parse(Some("2"), Some("b")).unwrap();
        assert_eq!(
            page.apply(all.clone()),
            (vec!["c".into(), "d".into()], false)
        );
        let page = Page::parse(None, Some("c")).unwrap();
        assert_eq!(page.apply(all.clone()), (vec!["d".into()], false));
        assert!(Page::parse(Some("x"), None).is_err());
        let page = Page::parse(Some("0"), None).unwrap();
        assert_eq!(page.apply(all), (vec![], true));
    }
}

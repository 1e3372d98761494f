//! `docker search`: the repositories the mirror holds whose names match, and the results of
//! upstreams that offer a search (`search_url`), merged; an upstream's results are kept for a
//! minute, and an upstream that fails only leaves its results out.

use std::sync::Arc;
use std::time::Duration;

use super::{Mirror, ProxyError};
use crate::store::LOCAL;
use crate::upstream::SearchHit;

/// The longest search term accepted (repository names are at most 255 characters): a term
/// becomes an upstream request and a cache key.
pub const MAX_QUERY: usize = 255;

/// How long an upstream's answer to a query is reused.
pub const SEARCH_TTL: Duration = Duration::from_secs(60);

/// The most results taken from an upstream per query.
const UPSTREAM_RESULTS: u32 = 100;

/// Upstream search answers by (upstream, query).
pub type SearchCache = moka::sync::Cache<(String, String), Arc<Vec<SearchHit>>>;

/// A cache of upstream search answers.
pub fn search_cache() -> SearchCache {
    moka::sync::Cache::builder()
        .max_capacity(1_000)
        .time_to_live(SEARCH_TTL)
        .build()
}

impl Mirror {
    /// Every result for `query` (a case-insensitive substring of the name): the mirror's own
    /// repositories first, then upstream results it does not hold.
    pub async fn search(&self, query: &str) -> Result<Vec<SearchHit>, ProxyError> {
        let query = query.trim().to_ascii_lowercase();
        let mut hits = self.search_local(&query).await?;
        for upstream in self.upstreams.all() {
            let key = (upstream.name().to_owned(), query.clone());
            let found = match self.search_cache.get(&key) {
                Some(found) => found,
                None => match upstream.search(&query, UPSTREAM_RESULTS).await {
                    Ok(Some(found)) => {
                        let found = Arc::new(found);
                        self.search_cache.insert(key, Arc::clone(&found));
                        found
                    }
                    Ok(None) => continue,
                    // Never an error for the client: the mirror's own results still answer.
                    Err(e) => {
                        tracing::debug!(upstream = upstream.name(), error = %e, "upstream search failed");
                        continue;
                    }
                },
            };
            for hit in found.iter() {
                if !hits.iter().any(|h| h.name == hit.name) {
                    hits.push(hit.clone());
                }
            }
        }
        Ok(hits)
    }

    /// The repositories the mirror holds whose names contain `query`, named as clients pull
    /// them, described by where they came from.
    async fn search_local(&self, query: &str) -> Result<Vec<SearchHit>, ProxyError> {
        let mut hits: Vec<SearchHit> = Vec::new();
        for repo in self.repositories_view(query).await? {
            let description = if repo.origin == LOCAL {
                "pushed to this mirror".to_owned()
            } else {
                format!("cached from {}", repo.origin)
            };
            match hits.iter_mut().find(|h| h.name == repo.display) {
                // Pushed and cached under one name: say both.
                Some(hit) => hit.description = format!("{}, {description}", hit.description),
                None => hits.push(SearchHit {
                    is_official: repo.display.starts_with("library/"),
                    name: repo.display,
                    description,
                    star_count: 0,
                    is_automated: false,
                }),
            }
        }
        Ok(hits)
    }
}

//! `docker search`: the repositories the mirror holds whose names match, and the results of
//! upstreams that offer a search (`search_url`), merged; an upstream's results are kept for a
//! minute, and an upstream that fails only leaves its results out.
//!
//! Searches are anonymous and each new term is an upstream request: identical searches in
//! flight share one upstream request, and upstream searches are rate-limited
//! ([`UPSTREAM_SEARCH_BURST`], then [`UPSTREAM_SEARCHES_PER_SECOND`]); beyond that a search
//! answers with the mirror's own results only.

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

/// Upstream searches in flight, by (upstream, query).
pub type SearchFlights = super::Singleflight<(String, String), Option<Arc<Vec<SearchHit>>>>;

/// Upstream searches the mirror may make at once after a quiet spell.
pub const UPSTREAM_SEARCH_BURST: f64 = 10.0;

/// Upstream searches per second the mirror makes at most, over time.
pub const UPSTREAM_SEARCHES_PER_SECOND: f64 = 2.0;

/// A token bucket for upstream searches.
pub struct SearchBudget {
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Default for SearchBudget {
    fn default() -> Self {
        SearchBudget {
            state: std::sync::Mutex::new((UPSTREAM_SEARCH_BURST, std::time::Instant::now())),
        }
    }
}

impl SearchBudget {
    /// Takes one upstream search from the budget; whether there was one.
    pub fn take(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = *state;
        let now = std::time::Instant::now();
        let refilled = (tokens + at.elapsed().as_secs_f64() * UPSTREAM_SEARCHES_PER_SECOND)
            .min(UPSTREAM_SEARCH_BURST);
        if refilled < 1.0 {
            *state = (refilled, now);
            return false;
        }
        *state = (refilled - 1.0, now);
        true
    }
}

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
                None => {
                    let (upstream, cache, budget) = (
                        Arc::clone(upstream),
                        self.search_cache.clone(),
                        Arc::clone(&self.search_budget),
                    );
                    let (query, cache_key) = (query.clone(), key.clone());
                    let call = async move {
                        if !budget.take() {
                            tracing::debug!(
                                upstream = upstream.name(),
                                "upstream search rate limit reached; local results only"
                            );
                            return None;
                        }
                        match upstream.search(&query, UPSTREAM_RESULTS).await {
                            Ok(Some(found)) => {
                                let found = Arc::new(found);
                                cache.insert(cache_key, Arc::clone(&found));
                                Some(found)
                            }
                            Ok(None) => None,
                            // Never an error for the client: the mirror's own results answer.
                            Err(e) => {
                                tracing::debug!(upstream = upstream.name(), error = %e, "upstream search failed");
                                None
                            }
                        }
                    };
                    match self.search_flights.run(key, call).await {
                        (Some(Some(found)), _) => found,
                        _ => continue,
                    }
                }
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

//! The operational endpoints: `/v2/` (the API version check), `/readyz` and `/metrics`.

use std::time::Instant;

use http::{HeaderValue, Response, StatusCode};

use super::body::{Body, text_response};
use crate::proxy::Mirror;

/// `GET /readyz`: 200 when the store is writable, else 503.
pub(super) async fn ready(readiness: &Readiness, mirror: &Mirror) -> Response<Body> {
    match readiness
        .check(&mirror.store, &mirror.metrics.readiness_probes)
        .await
    {
        Ok(()) => text_response("ready\n", "text/plain"),
        Err(e) => {
            let mut response = text_response(format!("not ready: {e}\n"), "text/plain");
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}

/// How long a readiness probe's answer is reused: `/readyz` is anonymous, and each probe
/// writes, reads and deletes an object in the store.
pub const READINESS_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The last readiness probe of the store, shared by every `/readyz` within
/// [`READINESS_PROBE_EVERY`]; one probe at a time.
/// A server that is shutting down is not ready whatever the store says.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    draining: std::sync::atomic::AtomicBool,
}

impl Readiness {
    /// From now on `/readyz` answers 503: the server is about to stop.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the store is writable, probed at most every [`READINESS_PROBE_EVERY`].
    pub async fn check(
        &self,
        store: &crate::store::Store,
        probes: &prometheus::IntCounter,
    ) -> Result<(), String> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < READINESS_PROBE_EVERY
        {
            return result.clone();
        }
        probes.inc();
        let result = store.check_writable().await.map_err(|e| e.to_string());
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// `GET /metrics`, with the store gauges read at scrape time.
pub(super) fn metrics_response(mirror: &Mirror) -> Response<Body> {
    let (bytes, blobs) = mirror.store.usage();
    let m = &mirror.metrics;
    m.store_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    m.store_blobs.set(i64::try_from(blobs).unwrap_or(i64::MAX));
    m.uploads_bytes
        .set(i64::try_from(mirror.store.uploads_bytes()).unwrap_or(i64::MAX));
    if let Some(hot) = mirror.store.hot_cache_stats() {
        // The cache counts; the counters catch up at each scrape.
        m.hot_cache_hits
            .inc_by(hot.hits.saturating_sub(m.hot_cache_hits.get()));
        m.hot_cache_misses
            .inc_by(hot.misses.saturating_sub(m.hot_cache_misses.get()));
        m.hot_cache_bytes
            .set(i64::try_from(hot.bytes).unwrap_or(i64::MAX));
        m.hot_cache_max_bytes
            .set(i64::try_from(hot.capacity).unwrap_or(i64::MAX));
    }
    text_response(m.render(), "text/plain; version=0.0.4")
}

/// `GET /v2/`: 200 with the API version header, so clients know this is a registry.
pub(super) fn base_response() -> Response<Body> {
    let mut response = text_response("{}", "application/json");
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

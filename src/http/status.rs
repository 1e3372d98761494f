//! The operational endpoints: `/v2/` (the API version check), `/readyz` and `/metrics`.

use std::time::Instant;

use http::{HeaderValue, Response, StatusCode};

use super::body::{Body, text_response};
use crate::proxy::Mirror;

/// `GET /readyz`: 200 `ready`; 200 `degraded: <why>` while the object store is out but the
/// replica serves (cached content, pulls passed through), so load balancers keep sending it
/// pulls; 503 `not ready: <why>` when it cannot serve (shutting down, the store not answered
/// since start, a local store failing).
pub(super) async fn ready(readiness: &Readiness, mirror: &Mirror) -> Response<Body> {
    let (status, text) = match readiness.check(mirror).await {
        ReadyState::Ready => (StatusCode::OK, "ready\n".to_owned()),
        ReadyState::Degraded(why) => (StatusCode::OK, format!("degraded: {why}\n")),
        ReadyState::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    };
    let mut response = text_response(text, "text/plain");
    *response.status_mut() = status;
    response
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// Serving, the store taking writes.
    Ready,
    /// Serving without the object store: cached content, and pulls passed through.
    Degraded(String),
    /// Not serving.
    NotReady(String),
}

/// How long a readiness probe's answer is reused: `/readyz` is anonymous, and each probe
/// writes, reads and deletes an object in the store.
pub const READINESS_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The last readiness probe of the store, shared by every `/readyz` within
/// [`READINESS_PROBE_EVERY`]; one probe at a time. A server that is shutting down is not
/// ready whatever the store says.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, ReadyState)>>,
    draining: std::sync::atomic::AtomicBool,
}

impl Readiness {
    /// From now on `/readyz` answers 503: the server is about to stop.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The replica's state, the store probed at most every [`READINESS_PROBE_EVERY`].
    pub async fn check(&self, mirror: &Mirror) -> ReadyState {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return ReadyState::NotReady("shutting down".to_owned());
        }
        let mut last = self.last.lock().await;
        if let Some((at, state)) = last.as_ref()
            && at.elapsed() < READINESS_PROBE_EVERY
        {
            return state.clone();
        }
        mirror.metrics.readiness_probes.inc();
        let state = probe(mirror).await;
        *last = Some((Instant::now(), state.clone()));
        state
    }
}

/// How long a probe waits for the store: a Kubernetes probe times out after a few seconds,
/// and a store that slow counts as out.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One probe: a write, read and delete in the store.
async fn probe(mirror: &Mirror) -> ReadyState {
    let store = &mirror.store;
    let checked = match tokio::time::timeout(PROBE_TIMEOUT, store.check_writable()).await {
        Ok(checked) => checked,
        Err(_) => Err(crate::store::StoreError::Backend(
            crate::store::BackendError::Unavailable {
                op: "probe",
                bucket: String::new(),
                key: String::new(),
                message: format!("no answer within {PROBE_TIMEOUT:?}"),
            },
        )),
    };
    match checked {
        Ok(()) if store.is_loaded() => {
            crate::proxy::store_answered(store, &mirror.metrics);
            ReadyState::Ready
        }
        // Answering again, but the index is not loaded yet (within a second or so).
        Ok(()) => ReadyState::NotReady("loading the object store's index".to_owned()),
        Err(e) if e.is_unavailable() && store.is_loaded() => {
            if store.note_outage(&e) {
                tracing::warn!(error = %e, "the object store cannot take content: serving degraded until it recovers");
            }
            mirror.metrics.store_available.set(0);
            ReadyState::Degraded(format!("the object store is unavailable: {e}"))
        }
        Err(e) if e.is_unavailable() => {
            mirror.metrics.store_available.set(0);
            ReadyState::NotReady(format!(
                "the object store has not answered since start: {e}"
            ))
        }
        Err(e) => ReadyState::NotReady(format!("store not writable: {e}")),
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

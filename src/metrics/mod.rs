//! Every Prometheus metric the mirror exports, in one place.

use std::sync::atomic::{AtomicU64, Ordering};

mod outcome;

pub use outcome::{CacheResult, Kind, Source};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// What the status page shows of the traffic: lookups, how many the cache answered, and body
/// bytes by source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Manifest and blob lookups.
    pub lookups: u64,
    /// Of those, answered from the cache (hit, revalidated, coalesced, stale).
    pub hits: u64,
    /// Body bytes sent from the cache.
    pub cache_bytes: u64,
    /// Body bytes sent as they came from an upstream.
    pub upstream_bytes: u64,
}

#[derive(Default)]
struct AtomicTally {
    lookups: AtomicU64,
    hits: AtomicU64,
    cache_bytes: AtomicU64,
    upstream_bytes: AtomicU64,
}

impl AtomicTally {
    fn read(&self) -> Tally {
        Tally {
            lookups: self.lookups.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
            upstream_bytes: self.upstream_bytes.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for counter in [
            &self.lookups,
            &self.hits,
            &self.cache_bytes,
            &self.upstream_bytes,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Traffic totals since start and since midnight (UTC), kept beside the Prometheus counters
/// (which only know "since start").
#[derive(Default)]
pub struct Totals {
    day: AtomicU64,
    today: AtomicTally,
    since_start: AtomicTally,
}

impl Totals {
    fn today_number() -> u64 {
        crate::clock::now_secs() / 86_400
    }

    /// Today's tally, started afresh at midnight.
    fn today(&self) -> &AtomicTally {
        let day = Self::today_number();
        // Read first: a write on every request would pull this line from the other cores.
        if self.day.load(Ordering::Relaxed) != day && self.day.swap(day, Ordering::Relaxed) != day {
            self.today.reset();
        }
        &self.today
    }

    fn add(&self, f: impl Fn(&AtomicTally)) {
        f(self.today());
        f(&self.since_start);
    }

    /// (today, since start).
    pub fn read(&self) -> (Tally, Tally) {
        (self.today().read(), self.since_start.read())
    }
}

/// The registry and handles to each metric.
pub struct Metrics {
    registry: Registry,
    /// Totals for the status page.
    pub totals: Totals,
    /// `regmirror_cache_lookups_total{kind,result,upstream}`.
    pub cache_lookups: IntCounterVec,
    /// `regmirror_served_bytes_total{source,upstream}`.
    pub served_bytes: IntCounterVec,
    /// `regmirror_upstream_requests_total{upstream,method,status}`.
    pub upstream_requests: IntCounterVec,
    /// `regmirror_upstream_request_duration_seconds{upstream,method}` (time to response headers).
    pub upstream_duration: HistogramVec,
    /// `regmirror_upstream_fetched_bytes_total{upstream}`.
    pub upstream_bytes: IntCounterVec,
    /// `regmirror_fills_in_flight`.
    pub fills_in_flight: IntGauge,
    /// `regmirror_fill_followers_total`: requests that joined a fill already running.
    pub fill_followers: IntCounter,
    /// `regmirror_digest_mismatches_total{upstream}`.
    pub digest_mismatches: IntCounterVec,
    /// `regmirror_fills_aborted_total{upstream,reason}`.
    pub fills_aborted: IntCounterVec,
    /// `regmirror_http_requests_total{method,status}`.
    pub http_requests: IntCounterVec,
    /// `regmirror_http_request_duration_seconds{route,method,status_class}`: from the request's
    /// arrival to its last body byte sent.
    pub http_duration: HistogramVec,
    /// `regmirror_connections_open`.
    pub connections_open: IntGauge,
    /// `regmirror_connections_closed_total{reason}`: closed by the mirror for a timeout.
    pub connections_closed: IntCounterVec,
    /// `regmirror_maintenance_failures_total{task}`: eviction or GC runs aborted by an error.
    pub maintenance_failures: IntCounterVec,
    /// `regmirror_store_available`: 1 while the object store takes writes, 0 during an
    /// outage (the replica then serves degraded: cached content, and pulls passed through).
    pub store_available: IntGauge,
    /// `regmirror_passthrough_requests_total{kind}`: pulls answered from the upstream
    /// without being kept, because the store could not take them.
    pub passthrough_requests: IntCounterVec,
    /// `regmirror_passthrough_bytes_total`: blob bytes passed through without being kept.
    pub passthrough_bytes: IntCounter,
    /// `regmirror_signature_verdicts_total{result}`: signature verdicts worked out (not the
    /// remembered ones): verified, admitted_by_index, unsigned, invalid, unchecked.
    pub signature_verdicts: IntCounterVec,
    /// `regmirror_signature_decisions_total{decision}`: manifest requests under a signature
    /// policy: served, refused (enforce), warned (served in warn mode).
    pub signature_decisions: IntCounterVec,
    /// `regmirror_readiness_probes_total`: probes of the store made for `/readyz` (at most
    /// one every few seconds, however many ask).
    pub readiness_probes: IntCounter,
    /// `regmirror_blob_readers_refused_total`: blob GETs refused (503) because every
    /// `max_blob_readers` slot stayed taken for `send_timeout`.
    pub blob_readers_refused: IntCounter,
    /// `regmirror_uploads_bytes`: bytes held by unfinished uploads.
    pub uploads_bytes: IntGauge,
    /// `regmirror_store_max_bytes`: `max_size` (0: no cap).
    pub store_max_bytes: IntGauge,
    /// `regmirror_store_bytes`.
    pub store_bytes: IntGauge,
    /// `regmirror_store_blobs`.
    pub store_blobs: IntGauge,
    /// `regmirror_evicted_blobs_total`.
    pub evicted_blobs: IntCounter,
    /// `regmirror_evicted_bytes_total`.
    pub evicted_bytes: IntCounter,
    /// `regmirror_gc_removed_blobs_total`.
    pub gc_removed_blobs: IntCounter,
    /// `regmirror_upstream_ratelimit_limit{upstream}`.
    pub ratelimit_limit: IntGaugeVec,
    /// `regmirror_upstream_ratelimit_remaining{upstream}`.
    pub ratelimit_remaining: IntGaugeVec,
    /// `regmirror_backend_requests_total{backend,op,outcome}` and
    /// `regmirror_backend_request_duration_seconds{backend,op}`.
    pub backend: crate::store::backend::BackendMetrics,
    /// `regmirror_backend_read_bytes_total`: blob bytes read from a remote backend into the
    /// hot cache.
    pub backend_read_bytes: IntCounter,
    /// `regmirror_backend_read_checks_total{by}`: blobs read from a remote backend and found
    /// intact, by their seal (`seal`) or by hashing them with their digest's algorithm
    /// (`digest`: no seal, another key's, or one that did not match).
    pub backend_read_checks: IntCounterVec,
    /// `regmirror_cluster_peer_read_bytes_total`: blob bytes read from the replica leading a
    /// cluster-wide fill.
    pub peer_read_bytes: IntCounter,
    /// `regmirror_cluster_fills_total{role}`: cold blob fetches this replica led for the
    /// cluster (`leader`) or read from the replica leading them (`follower`).
    pub cluster_fills: IntCounterVec,
    /// `regmirror_cluster_redis_up`: 1 while Redis answers, 0 while it does not (absent
    /// without `[cluster] redis_url`).
    pub redis_up: IntGauge,
    /// `regmirror_hot_cache_hits_total`.
    pub hot_cache_hits: IntCounter,
    /// `regmirror_hot_cache_misses_total`.
    pub hot_cache_misses: IntCounter,
    /// `regmirror_hot_cache_bytes`.
    pub hot_cache_bytes: IntGauge,
    /// `regmirror_hot_cache_max_bytes`.
    pub hot_cache_max_bytes: IntGauge,
}

impl Metrics {
    /// Registers `regmirror_cluster_redis_up` (only a server with Redis has it).
    pub fn register_redis_up(&self) {
        let _ = self.registry.register(Box::new(self.redis_up.clone()));
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        // Registration only fails for duplicate or malformed names, which are fixed here at
        // compile time; panicking at start-up on such a programming error is intended.
        let cache_lookups = counter_vec(
            "regmirror_cache_lookups_total",
            "Cache lookups by kind (manifest, blob), result (hit, revalidated, miss, coalesced, stale, negative) and upstream.",
            &["kind", "result", "upstream"],
        );
        let served_bytes = counter_vec(
            "regmirror_served_bytes_total",
            "Body bytes sent to clients, by source (cache, upstream) and the upstream the request routed to.",
            &["source", "upstream"],
        );
        let upstream_requests = counter_vec(
            "regmirror_upstream_requests_total",
            "Requests sent to upstreams, by upstream, method and status (or 'error').",
            &["upstream", "method", "status"],
        );
        let upstream_bytes = counter_vec(
            "regmirror_upstream_fetched_bytes_total",
            "Blob bytes fetched from upstreams.",
            &["upstream"],
        );
        let digest_mismatches = counter_vec(
            "regmirror_digest_mismatches_total",
            "Upstream content whose sha256 did not match its digest (discarded).",
            &["upstream"],
        );
        let fills_aborted = counter_vec(
            "regmirror_fills_aborted_total",
            "Blob fills that failed and were discarded, by reason.",
            &["upstream", "reason"],
        );
        let http_requests = counter_vec(
            "regmirror_http_requests_total",
            "Requests answered, by method and status.",
            &["method", "status"],
        );
        let ratelimit_limit = gauge_vec(
            "regmirror_upstream_ratelimit_limit",
            "The upstream's last ratelimit-limit header (requests per window).",
            &["upstream"],
        );
        let ratelimit_remaining = gauge_vec(
            "regmirror_upstream_ratelimit_remaining",
            "The upstream's last ratelimit-remaining header.",
            &["upstream"],
        );
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "regmirror_upstream_request_duration_seconds",
                "Time from sending an upstream request to its response headers.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["upstream", "method"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(upstream_duration.clone()))
            .unwrap_or_else(|e| panic!("histogram: {e}"));
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "regmirror_http_request_duration_seconds",
                "Client requests, from arrival to the last body byte sent, by route kind (manifest, blob, upload, token, ui, search, other), method and status class.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ]),
            &["route", "method", "status_class"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(http_duration.clone()))
            .unwrap_or_else(|e| panic!("histogram: {e}"));
        let build_info = IntGaugeVec::new(
            Opts::new(
                "regmirror_build_info",
                "Always 1; its labels say which regmirror this is.",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("metric regmirror_build_info: {e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .unwrap_or_else(|e| panic!("metric regmirror_build_info: {e}"));
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let backend_requests = counter_vec(
            "regmirror_backend_requests_total",
            "Requests to the storage backend, by backend (fs, s3), operation and outcome (ok, not_found, error).",
            &["backend", "op", "outcome"],
        );
        let backend_duration = HistogramVec::new(
            HistogramOpts::new(
                "regmirror_backend_request_duration_seconds",
                "Time a storage backend request took (for reads: to the first byte).",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["backend", "op"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(backend_duration.clone()))
            .unwrap_or_else(|e| panic!("histogram: {e}"));
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            c
        };
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let backend_read_bytes = plain_counter(
            "regmirror_backend_read_bytes_total",
            "Blob bytes read from a remote storage backend (to fill the hot cache).",
        );
        let backend_read_checks = counter_vec(
            "regmirror_backend_read_checks_total",
            "Blobs read from a remote storage backend and found intact, by their seal (seal) or by their digest (digest).",
            &["by"],
        );
        for by in ["seal", "digest"] {
            backend_read_checks.with_label_values(&[by]);
        }
        let peer_read_bytes = plain_counter(
            "regmirror_cluster_peer_read_bytes_total",
            "Blob bytes read from the replica leading a cluster-wide fill.",
        );
        let cluster_fills = counter_vec(
            "regmirror_cluster_fills_total",
            "Cold blob fetches claimed for the cluster (leader) or read from the replica that claimed them (follower).",
            &["role"],
        );
        let redis_up = IntGauge::new(
            "regmirror_cluster_redis_up",
            "1 while the cluster's Redis answers, 0 while it does not.",
        )
        .unwrap_or_else(|e| panic!("metric regmirror_cluster_redis_up: {e}"));
        let hot_cache_hits = plain_counter(
            "regmirror_hot_cache_hits_total",
            "Blob reads answered from the local hot cache of a remote backend.",
        );
        let hot_cache_misses = plain_counter(
            "regmirror_hot_cache_misses_total",
            "Blob reads that found no local copy in the hot cache.",
        );
        let hot_cache_bytes = plain_gauge(
            "regmirror_hot_cache_bytes",
            "Bytes held by the local hot cache of a remote backend.",
        );
        let hot_cache_max_bytes = plain_gauge(
            "regmirror_hot_cache_max_bytes",
            "The hot cache's cap ([storage] cache_size; 0 with the filesystem backend).",
        );
        let fills_in_flight = IntGauge::new(
            "regmirror_fills_in_flight",
            "Blob fills from upstreams currently running.",
        )
        .unwrap_or_else(|e| panic!("gauge: {e}"));
        registry
            .register(Box::new(fills_in_flight.clone()))
            .unwrap_or_else(|e| panic!("gauge: {e}"));
        let fill_followers = IntCounter::new(
            "regmirror_fill_followers_total",
            "Requests that joined a blob fill already running instead of fetching again.",
        )
        .unwrap_or_else(|e| panic!("counter: {e}"));
        registry
            .register(Box::new(fill_followers.clone()))
            .unwrap_or_else(|e| panic!("counter: {e}"));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("gauge {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("gauge {name}: {e}"));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("counter {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("counter {name}: {e}"));
            c
        };
        let store_bytes = gauge("regmirror_store_bytes", "Bytes of blobs in the store.");
        let store_max_bytes = gauge(
            "regmirror_store_max_bytes",
            "The store's size cap, max_size (0: no cap).",
        );
        let connections_open = gauge(
            "regmirror_connections_open",
            "Client connections being served.",
        );
        let uploads_bytes = gauge(
            "regmirror_uploads_bytes",
            "Bytes held by unfinished uploads (counted against max_uploads_size and max_size).",
        );
        let connections_closed = counter_vec(
            "regmirror_connections_closed_total",
            "Client connections closed by the mirror, by reason (idle_timeout, header_timeout, send_timeout, tls_handshake_timeout).",
            &["reason"],
        );
        let maintenance_failures = counter_vec(
            "regmirror_maintenance_failures_total",
            "Eviction and GC runs aborted by an error (nothing was removed after it), by task.",
            &["task"],
        );
        let store_blobs = gauge(
            "regmirror_store_blobs",
            "Blobs (layers, configs, manifests) in the store.",
        );
        let evicted_blobs = counter(
            "regmirror_evicted_blobs_total",
            "Cached blobs evicted to stay under max_size.",
        );
        let evicted_bytes = counter(
            "regmirror_evicted_bytes_total",
            "Bytes evicted to stay under max_size.",
        );
        let gc_removed_blobs = counter(
            "regmirror_gc_removed_blobs_total",
            "Unreachable blobs removed by GC.",
        );
        // Closed label sets start at zero, so rates and alerts see them before the first event.
        let store_available = plain_gauge(
            "regmirror_store_available",
            "1 while the object store takes writes, 0 during an outage (cached content is served and pulls pass through).",
        );
        store_available.set(1);
        let passthrough_requests = counter_vec(
            "regmirror_passthrough_requests_total",
            "Pulls answered from the upstream without being kept because the store could not take them, by kind (manifest, blob).",
            &["kind"],
        );
        let passthrough_bytes = plain_counter(
            "regmirror_passthrough_bytes_total",
            "Blob bytes passed through to clients without being kept because the store could not take them.",
        );
        let signature_verdicts = counter_vec(
            "regmirror_signature_verdicts_total",
            "Signature verdicts worked out for manifests under a [[signatures]] policy, by result (verified, admitted_by_index, unsigned, invalid, unchecked).",
            &["result"],
        );
        let signature_decisions = counter_vec(
            "regmirror_signature_decisions_total",
            "Manifest requests under a [[signatures]] policy, by decision (served, refused, warned).",
            &["decision"],
        );
        for result in [
            "verified",
            "admitted_by_index",
            "unsigned",
            "invalid",
            "unchecked",
        ] {
            signature_verdicts.with_label_values(&[result]);
        }
        for decision in ["served", "refused", "warned"] {
            signature_decisions.with_label_values(&[decision]);
        }
        let readiness_probes = counter(
            "regmirror_readiness_probes_total",
            "Probes of the store (a write, a read and a delete) made for /readyz; at most one every few seconds.",
        );
        let blob_readers_refused = counter(
            "regmirror_blob_readers_refused_total",
            "Blob GETs refused (503) because every max_blob_readers slot stayed taken for send_timeout.",
        );
        for reason in [
            "idle_timeout",
            "header_timeout",
            "send_timeout",
            "tls_handshake_timeout",
        ] {
            connections_closed.with_label_values(&[reason]);
        }
        for task in ["eviction", "gc"] {
            maintenance_failures.with_label_values(&[task]);
        }
        Metrics {
            registry,
            totals: Totals::default(),
            connections_open,
            connections_closed,
            maintenance_failures,
            blob_readers_refused,
            store_available,
            passthrough_requests,
            passthrough_bytes,
            signature_verdicts,
            signature_decisions,
            readiness_probes,
            uploads_bytes,
            store_max_bytes,
            store_bytes,
            store_blobs,
            evicted_blobs,
            evicted_bytes,
            gc_removed_blobs,
            cache_lookups,
            served_bytes,
            upstream_requests,
            upstream_duration,
            upstream_bytes,
            fills_in_flight,
            fill_followers,
            digest_mismatches,
            fills_aborted,
            http_requests,
            http_duration,
            ratelimit_limit,
            ratelimit_remaining,
            backend: crate::store::backend::BackendMetrics {
                requests: backend_requests,
                duration: backend_duration,
            },
            backend_read_bytes,
            backend_read_checks,
            peer_read_bytes,
            cluster_fills,
            redis_up,
            hot_cache_hits,
            hot_cache_misses,
            hot_cache_bytes,
            hot_cache_max_bytes,
        }
    }

    /// Creates the series of an upstream at zero, so that rates and alerts see them before the
    /// first event (a digest mismatch may never happen, and that is worth a flat line).
    pub fn init_upstream(&self, upstream: &str) {
        for kind in [Kind::Manifest, Kind::Blob] {
            for result in [
                CacheResult::Hit,
                CacheResult::Revalidated,
                CacheResult::Miss,
                CacheResult::Coalesced,
                CacheResult::Stale,
                CacheResult::Negative,
            ] {
                self.cache_lookups
                    .with_label_values(&[kind.as_str(), result.as_str(), upstream]);
            }
        }
        for source in [Source::Cache, Source::Upstream] {
            self.served_bytes
                .with_label_values(&[source.as_str(), upstream]);
        }
        self.digest_mismatches.with_label_values(&[upstream]);
        self.upstream_bytes.with_label_values(&[upstream]);
        for reason in [
            "upstream",
            "truncated",
            "stalled",
            "digest_mismatch",
            "too_large",
            "store",
            "aborted",
        ] {
            self.fills_aborted.with_label_values(&[upstream, reason]);
        }
    }

    /// Counts one cache lookup.
    pub fn lookup(&self, kind: Kind, result: CacheResult, upstream: &str) {
        self.cache_lookups
            .with_label_values(&[kind.as_str(), result.as_str(), upstream])
            .inc();
        let hit = matches!(
            result,
            CacheResult::Hit
                | CacheResult::Revalidated
                | CacheResult::Coalesced
                | CacheResult::Stale
        );
        self.totals.add(|t| {
            t.lookups.fetch_add(1, Ordering::Relaxed);
            if hit {
                t.hits.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Counts body bytes sent to a client from `source`, for a request routed to `upstream`.
    pub fn served(&self, source: Source, upstream: &str, bytes: u64) {
        self.served_bytes
            .with_label_values(&[source.as_str(), upstream])
            .inc_by(bytes);
        self.totals.add(|t| {
            let counter = match source {
                Source::Cache => &t.cache_bytes,
                Source::Upstream => &t.upstream_bytes,
            };
            counter.fetch_add(bytes, Ordering::Relaxed);
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

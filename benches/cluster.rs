//! Three replicas behind nginx against one replica behind the same nginx, all real
//! processes on one Garage bucket with Redis, on this machine:
//! - cached manifest requests per second (32 concurrent clients for 3 s);
//! - warm blob throughput (8 concurrent GETs of a 50 MiB blob, in MiB/s);
//! - 16 concurrent cold GETs of a 200 MiB blob spread over the replicas: upstream fetches and
//!   time to first byte (median and worst).
//!
//! Run: `cargo bench --bench cluster` (needs garage, redis-server and nginx). Ratios come from
//! one run; nothing here is asserted. On a machine whose cores the load generator, nginx,
//! Garage and every replica share, three replicas cannot serve more than one: the ratios show
//! what coordination costs, not what scaling out gains.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{Nginx, Redis, Replicas};
use common::fake_upstream::{Auth, FakeUpstream};
use common::garage::Garage;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Requests per second of `clients` concurrent loops GETting `url` for `secs`.
async fn requests_per_second(url: &str, clients: usize, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let loops = (0..clients).map(|_| {
        let url = url.to_owned();
        async move {
            let client = reqwest::Client::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let r = client
                    .get(&url)
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                n += 1;
            }
            n
        }
    });
    let total: usize = futures_util::future::join_all(loops).await.iter().sum();
    total as f64 / secs as f64
}

/// MiB/s of `clients` concurrent GETs of `url` (`size` bytes each).
async fn parallel_throughput(url: &str, clients: usize, size: usize) -> f64 {
    let started = Instant::now();
    let gets = (0..clients).map(|_| async {
        let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), size);
    });
    futures_util::future::join_all(gets).await;
    (clients * size) as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

/// 16 concurrent cold GETs of `digest` through `lb`: time to first byte of each, sorted.
async fn cold_first_bytes(lb: &Nginx, digest: &str, size: usize) -> Vec<f64> {
    let url = lb.url(&format!("/v2/library/bench/blobs/{digest}"));
    let gets = (0..16).map(|_| {
        let url = url.clone();
        async move {
            let started = Instant::now();
            let mut response = reqwest::get(&url).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut first = None;
            let mut n = 0;
            while let Some(chunk) = response.chunk().await.unwrap() {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                n += chunk.len();
            }
            assert_eq!(n, size);
            first.unwrap_or_default()
        }
    });
    let mut firsts = futures_util::future::join_all(gets).await;
    firsts.sort_by(f64::total_cmp);
    firsts
}

struct Measured {
    manifests_per_s: f64,
    warm_mib_s: f64,
    cold_fetches: usize,
    first_byte_median_ms: f64,
    first_byte_worst_ms: f64,
}

async fn measure(garage: &Garage, redis: &Redis, upstream: &FakeUpstream, n: usize) -> Measured {
    let work = tempfile::tempdir().unwrap();
    let cluster = format!(
        "secret = \"9c4e1f7a2b8d3e6f0a5c9b1d7e2f4a8c6b0d3e9f1a7c5b2e8d4f0a6c3b9e1d7f\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let rest = format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        upstream.url()
    );
    let prefix = format!("bench-{n}");
    let replicas = Replicas::start(garage, &prefix, n, &cluster, &rest).await;
    let lb = Nginx::start("bench cluster", &replicas.addrs())
        .await
        .expect("nginx");
    drop(work);

    // A cached manifest: fetched once, then served from every replica's store.
    let manifest_url = lb.url("/v2/library/bench/manifests/v1");
    requests_per_second(&manifest_url, 4, 1).await;
    let manifests_per_s = requests_per_second(&manifest_url, 32, 3).await;

    // A warm 50 MiB blob: pushed, then read once through each replica (hot caches filled).
    let warm = Bytes::from(common::random_bytes(50 * MIB));
    let warm_digest = common::fake_upstream::sha256(&warm);
    let r = reqwest::Client::new()
        .post(lb.url(&format!(
            "/v2/library/bench/blobs/uploads/?digest={warm_digest}"
        )))
        .body(warm.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let warm_url = lb.url(&format!("/v2/library/bench/blobs/{warm_digest}"));
    parallel_throughput(&warm_url, n, warm.len()).await;
    let warm_mib_s = parallel_throughput(&warm_url, 8, warm.len()).await;

    // A cold 200 MiB blob, 16 clients at once.
    let cold = Bytes::from(common::random_bytes(200 * MIB));
    let cold_digest = upstream.put_blob(cold.clone());
    let firsts = cold_first_bytes(&lb, &cold_digest, cold.len()).await;
    let cold_fetches = upstream.count("GET", &cold_digest);
    Measured {
        manifests_per_s,
        warm_mib_s,
        cold_fetches,
        first_byte_median_ms: firsts[firsts.len() / 2] * 1000.0,
        first_byte_worst_ms: firsts[firsts.len() - 1] * 1000.0,
    }
}

#[tokio::main]
async fn main() {
    // The bench's HTTP clients take the process's TLS provider: ring, as regmirror's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(garage) = Garage::start("bench cluster").await else {
        return;
    };
    let Some(redis) = Redis::start("bench cluster").await else {
        return;
    };
    let upstream = FakeUpstream::start(Auth::None).await;
    common::images::put_config_only_image(&upstream, "library/bench", "v1");

    let one = measure(&garage, &redis, &upstream, 1).await;
    let three = measure(&garage, &redis, &upstream, 3).await;
    let report = format!(
        "| behind nginx, one machine (2 cores) | 1 replica | 3 replicas | 3 / 1 |\n|---|---|---|---|\n\
         | cached manifest, 32 clients (req/s) | {:.0} | {:.0} | {:.2}x |\n\
         | warm 50 MiB blob, 8 clients (MiB/s) | {:.0} | {:.0} | {:.2}x |\n\
         | 16 cold GETs of 200 MiB: upstream fetches | {} | {} | |\n\
         | 16 cold GETs: first byte, median (ms) | {:.1} | {:.1} | {:.2}x |\n\
         | 16 cold GETs: first byte, worst (ms) | {:.1} | {:.1} | {:.2}x |\n",
        one.manifests_per_s,
        three.manifests_per_s,
        three.manifests_per_s / one.manifests_per_s,
        one.warm_mib_s,
        three.warm_mib_s,
        three.warm_mib_s / one.warm_mib_s,
        one.cold_fetches,
        three.cold_fetches,
        one.first_byte_median_ms,
        three.first_byte_median_ms,
        three.first_byte_median_ms / one.first_byte_median_ms,
        one.first_byte_worst_ms,
        three.first_byte_worst_ms,
        three.first_byte_worst_ms / one.first_byte_worst_ms,
    );
    println!("{report}");
    std::fs::write("bench-cluster-results.md", &report).unwrap();
}

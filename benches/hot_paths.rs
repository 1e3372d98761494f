//! Criterion benchmarks of the hot paths: route parsing, digest hashing (as fills hash, in
//! chunks, against raw sha2 on the same bytes), and a cached manifest served through the whole
//! service in process. Run: `cargo bench --bench hot_paths`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use regmirror::http::routes;
use regmirror::oci::Digest;
use sha2::Digest as _;

fn route_parsing(c: &mut Criterion) {
    let paths = [
        "/v2/library/alpine/manifests/3.20",
        "/v2/ghcr.io/org/team/app/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "/v2/library/alpine/tags/list",
    ];
    c.bench_function("route_parse", |b| {
        b.iter(|| {
            for p in &paths {
                let _ = black_box(routes::parse(black_box(p)));
            }
        })
    });
}

fn hashing(c: &mut Criterion) {
    let mut data = vec![0u8; 16 * 1024 * 1024];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let mut group = c.benchmark_group("sha256_16MiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(20);
    group.bench_function("raw_sha2", |b| {
        b.iter(|| black_box(sha2::Sha256::digest(black_box(&data))))
    });
    group.bench_function("regmirror_digest", |b| {
        b.iter(|| black_box(Digest::of_bytes(black_box(&data))))
    });
    // As a fill hashes: chunk by chunk as they arrive from the network.
    group.bench_function("regmirror_chunked_64KiB", |b| {
        b.iter(|| {
            let mut hasher = sha2::Sha256::new();
            for chunk in data.chunks(64 * 1024) {
                hasher.update(chunk);
            }
            black_box(Digest::from_hasher(hasher))
        })
    });
    group.finish();
}

fn cached_manifest(c: &mut Criterion) {
    // The bench's HTTP client takes the process's TLS provider: ring, as regmirror's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Offline with a pushed image (pushed anonymously: the bench's explicit choice): the
    // cached path, no upstream involved.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\noffline = true\n[storage]\npath = \"{}\"\n[auth]\nanonymous_push = true\n",
        dir.path().display()
    );
    let config = regmirror::config::Config::parse(&text, "bench").unwrap();
    let (server, client) = runtime.block_on(async {
        let server = regmirror::start(&config).await.unwrap();
        let client = reqwest::Client::new();
        let base = format!("http://{}", server.addr);
        let config_blob = b"{}".to_vec();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config_blob)));
        client
            .post(format!("{base}/v2/bench/app/blobs/uploads/?digest={digest}"))
            .body(config_blob)
            .send()
            .await
            .unwrap();
        let manifest = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
            "layers": []});
        let r = client
            .put(format!("{base}/v2/bench/app/manifests/v1"))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        (server, client)
    });
    let url = format!("http://{}/v2/bench/app/manifests/v1", server.addr);
    c.bench_function("cached_manifest_by_tag_http", |b| {
        b.to_async(&runtime).iter(|| async {
            let r = client.get(&url).send().await.unwrap();
            black_box(r.bytes().await.unwrap())
        })
    });
    runtime.block_on(server.stop());
}

criterion_group!(benches, route_parsing, hashing, cached_manifest);
criterion_main!(benches);

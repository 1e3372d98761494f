//! The S3 backend against the filesystem backend and Garage itself, on this machine:
//! - a warm 200 MiB blob from the hot cache against the same blob on the filesystem backend;
//! - the same blob with an empty hot cache (read from the bucket) against a direct GET of the
//!   object from Garage and through nginx in front of Garage, taking turns, medians of 9;
//! - a cold pull: bytes fetched from the upstream and objects written to the bucket against the
//!   image;
//! - start-up with an index of 100,000 blobs against one of 1,000;
//! - the same blob read by Distribution 2.8 (Debian's `docker-registry`) from the same Garage
//!   with its s3 driver, redirects disabled, in the same alternation: the peer a replica
//!   reading from the bucket is measured against, with its CPU per GiB;
//! - a column per other object store, on its emulator when installed (GCS on fake-gcs-server,
//!   Azure on Azurite): the warm blob against the filesystem backend, and the blob with an
//!   empty hot cache against a direct GET of the object (its signed URL) from the same
//!   emulator, taking turns, medians.
//!
//! Run: `cargo bench --bench s3` (needs `garage`: `cargo install garage --locked`; the other
//! columns need `fake-gcs-server` and `azurite-blob`). Ratios come from one run; nothing here
//! is asserted.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_upstream::{Auth, FakeUpstream, sha256};
use common::garage::Garage;
use regmirror::store::Backend;

const MIB: usize = 1024 * 1024;

/// Rounds of the bucket-read comparison (each one GET of each kind).
const ROUNDS: usize = 9;

async fn start(storage: &str, rest: &str) -> (regmirror::Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\nmax_upload_size = \"1GiB\"\n{storage}\n[auth]\nanonymous_push = true\n{rest}",
        dir.path().join("store").display()
    );
    let config = regmirror::config::Config::parse(&text, "bench").unwrap();
    (regmirror::start(&config).await.unwrap(), dir)
}

/// MiB/s of `rounds` GETs of `url`, each read to the end.
async fn throughput(client: &reqwest::Client, url: &str, size: usize, rounds: usize) -> f64 {
    throughput_as(client, url, None, size, rounds).await
}

/// Like [`throughput`], with the `Host` header `host` (a presigned URL reached through a
/// proxy still names the store it was signed for).
async fn throughput_as(
    client: &reqwest::Client,
    url: &str,
    host: Option<&str>,
    size: usize,
    rounds: usize,
) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        let mut request = client.get(url);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let mut response = request.send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let mut n = 0;
        while let Some(chunk) = response.chunk().await.unwrap() {
            n += chunk.len();
        }
        assert_eq!(n, size);
    }
    (size * rounds) as f64 / MIB as f64 / started.elapsed().as_secs_f64()
}

async fn push(client: &reqwest::Client, server: &regmirror::Server, blob: &Bytes) -> String {
    let digest = sha256(blob);
    let url = format!(
        "http://{}/v2/bench/blobs/uploads/?digest={digest}",
        server.addr
    );
    let r = client.post(url).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    digest
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Seconds to open a mirror whose bucket index lists `blobs` blobs.
async fn startup_with_index(garage: &Garage, blobs: usize) -> f64 {
    let prefix = format!("startup-{blobs}");
    let mut state = serde_json::Map::new();
    for i in 0..blobs {
        let digest = sha256(&(i as u64).to_le_bytes());
        state.insert(
            digest,
            serde_json::json!({"size": 1000, "written": 0, "manifest": false}),
        );
    }
    let snapshot = serde_json::json!({
        "state": {"blobs": state, "tags": [], "tombstoned": []},
        "folded": []
    });
    garage
        .backend(&prefix)
        .put(
            "_index/snapshot.json",
            Bytes::from(serde_json::to_vec(&snapshot).unwrap()),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (server, _dir) = start(&garage.storage_keys(&prefix, ""), "").await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(server.mirror.store.usage().1, blobs as u64);
    server.stop().await;
    elapsed
}

/// Distribution (Debian's `docker-registry`, 2.8) serving from the same Garage bucket with its
/// s3 driver, redirects disabled, with `blob` pushed to it; the process and the blob's URL.
async fn distribution_on_garage(
    garage: &Garage,
    dir: &std::path::Path,
    blob: &Bytes,
) -> Option<(std::process::Child, String)> {
    let binary = common::require_tool("docker-registry", "bench s3 (Distribution)")?;
    let port = common::cluster::free_port();
    let config = dir.join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  s3:\n    accesskey: {}\n    secretkey: {}\n    region: garage\n    regionendpoint: {}\n    bucket: {}\n    rootdirectory: /distribution\n    secure: false\n    v4auth: true\n  redirect:\n    disable: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            garage.key_id, garage.secret, garage.endpoint, garage.bucket
        ),
    )
    .unwrap();
    let child = std::process::Command::new(binary)
        .arg("serve")
        .arg(&config)
        // Distribution's AWS SDK cannot load a custom CA bundle into its own transport and
        // panics at start when AWS_CA_BUNDLE is set; Garage here is plain HTTP anyway.
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    common::eventually_async(30, "Distribution to answer", || {
        let url = format!("{base}/v2/");
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    let digest = sha256(blob);
    let started = client
        .post(format!("{base}/v2/bench/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = client
        .put(format!("{location}{sep}digest={digest}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "push to Distribution on Garage");
    Some((child, format!("{base}/v2/bench/blobs/{digest}")))
}

/// A regmirror to measure: this checkout's build, or another named by `REGMIRROR_BEFORE` (the
/// "before" of a change, measured in the same run), with its `[storage]` settings.
struct MirrorBuild {
    name: String,
    binary: std::path::PathBuf,
    /// `[storage]` keys beside the bucket's.
    storage: &'static str,
    /// Its `[cluster]` section: replicas sharing the secret of the process that pushed the
    /// blob share its seal key too, and check what they read back by the blob's seal.
    cluster: &'static str,
}

/// The `[cluster]` section of the replicas of the bench's bucket.
const SHARED_SECRET: &str =
    "[cluster]\nsecret = \"5c1e9a7f3b2d80e6a4f1c7b9d3e5a2f60b8c4d1e7a9f2b5c3d6e8a0f4b1c7d92\"\n";

/// What to measure: this checkout's build as configured by default (`verify_reads = true`:
/// no response completes before this machine verified the blob) on a replica sharing the
/// cluster secret (the blob's seal checked), the same without the secret (its bytes hashed
/// with SHA-256), the same trusting the bucket's bytes (`verify_reads = false`), and
/// `REGMIRROR_BEFORE`'s build when set.
fn mirror_builds() -> Vec<MirrorBuild> {
    let this: std::path::PathBuf = env!("CARGO_BIN_EXE_regmirror").into();
    let mut builds = vec![
        MirrorBuild {
            name: "regmirror".into(),
            binary: this.clone(),
            storage: "",
            cluster: SHARED_SECRET,
        },
        MirrorBuild {
            name: "regmirror (no shared secret: SHA-256)".into(),
            binary: this.clone(),
            storage: "",
            cluster: "",
        },
        MirrorBuild {
            name: "regmirror (verify_reads = false)".into(),
            binary: this,
            storage: "verify_reads = false\n",
            cluster: SHARED_SECRET,
        },
    ];
    if let Some(before) = std::env::var_os("REGMIRROR_BEFORE") {
        builds.push(MirrorBuild {
            name: "regmirror (before)".into(),
            binary: before.into(),
            storage: "",
            cluster: SHARED_SECRET,
        });
    }
    builds
}

/// One GET of the blob `digest` from a regmirror process started on the bucket with an empty
/// hot cache (a new local directory), as a replica that has not seen the blob reads it: MiB/s,
/// and the CPU seconds the process spent on the GET. Like Distribution, it runs as a process
/// of its own and logs every request (to a file), so the two compare alike.
async fn cold_read_by_process(
    build: &MirrorBuild,
    storage: &str,
    digest: &str,
    size: usize,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::cluster::free_port();
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = \"{}\"\n{}{storage}{}",
            dir.path().join("store").display(),
            build.storage,
            build.cluster,
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("regmirror.log")).unwrap();
    let mut child = std::process::Command::new(&build.binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env("REGMIRROR_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    common::eventually_async(30, "regmirror to answer", || {
        let url = format!("{base}/v2/");
        let client = client.clone();
        async move { client.get(url).send().await.is_ok() }
    })
    .await;
    same_memory_state();
    let before = common::cpu_seconds(child.id());
    let mbs = throughput(&client, &format!("{base}/v2/bench/blobs/{digest}"), size, 1).await;
    // The CPU of the whole read: the local copy is kept (hashed, adopted) once the fill ends,
    // which may be after the client has its last byte.
    common::eventually_async(30, "the local copy to be kept", || {
        let url = format!("{base}/metrics");
        let client = client.clone();
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            metric(&text, "regmirror_hot_cache_bytes") >= size as f64
                && metric(&text, "regmirror_fills_in_flight") == 0.0
        }
    })
    .await;
    let cpu = common::cpu_seconds(child.id()) - before;
    let _ = child.kill();
    let _ = child.wait();
    (mbs, cpu)
}

/// With `COMPARE_DROP_CACHES=1` (as root, as for `benches/compare.rs`): writes dirty pages
/// back and drops the page cache before each cold read, so that every reader finds Garage's
/// blocks on disk and none pays for writing back what the one before it kept (each regmirror
/// replica writes the blob to its hot cache, Distribution does not).
fn same_memory_state() {
    if std::env::var_os("COMPARE_DROP_CACHES").is_some_and(|v| v == "1") {
        let _ = std::process::Command::new("sync").status();
        if std::fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
            eprintln!("bench s3: cannot drop the page cache (not root?)");
        }
    }
}

/// The median of `v`.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One object store's row: the warm blob (hot cache) against the filesystem backend's
/// `fs_warm`, and the blob with an empty hot cache against a direct GET of its object.
async fn other_store(
    name: &str,
    storage: &str,
    bucket: &dyn Backend,
    blob: &Bytes,
    fs_warm: f64,
) -> String {
    let client = reqwest::Client::new();
    let size = blob.len();
    let (mirror, _dir) = start(storage, "").await;
    let digest = push(&client, &mirror, blob).await;
    let url = format!("http://{}/v2/bench/blobs/{digest}", mirror.addr);
    throughput(&client, &url, size, 1).await;
    let warm = throughput(&client, &url, size, 5).await;
    mirror.stop().await;
    let key = format!("blobs/sha256/{}/{}", &digest[7..9], &digest[7..]);
    let Some(signed) = bucket
        .presigned_get(&key, Duration::from_secs(600))
        .await
        .unwrap()
    else {
        return format!("| {name} | {:.2}x | (no signed URL) |\n", warm / fs_warm);
    };
    let (mut cold, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (mirror, _dir) = start(storage, "").await;
        let url = format!("http://{}/v2/bench/blobs/{digest}", mirror.addr);
        cold.push(throughput(&client, &url, size, 1).await);
        mirror.stop().await;
        direct.push(throughput(&client, signed.as_str(), size, 1).await);
    }
    format!(
        "| {name} | {:.2}x ({warm:.0} vs {fs_warm:.0} MiB/s) | {:.2}x ({:.0} vs {:.0} MiB/s) |\n",
        warm / fs_warm,
        median(&cold) / median(&direct),
        median(&cold),
        median(&direct)
    )
}

#[tokio::main]
async fn main() {
    // The bench's HTTP clients take the process's TLS provider: ring, as regmirror's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(garage) = Garage::start("bench s3").await else {
        return;
    };
    let client = reqwest::Client::new();
    let size = 200 * MIB;
    let blob = Bytes::from(common::random_bytes(size));

    // Warm: the filesystem backend, and the hot cache of the S3 backend.
    let (fs, _fs_dir) = start("", "").await;
    let digest = push(&client, &fs, &blob).await;
    let fs_url = format!("http://{}/v2/bench/blobs/{digest}", fs.addr);
    throughput(&client, &fs_url, size, 1).await;
    let fs_warm = throughput(&client, &fs_url, size, 5).await;
    let s3_keys = garage.storage_keys("bench", "");
    let (s3, _s3_dir) = start(&s3_keys, SHARED_SECRET).await;
    push(&client, &s3, &blob).await;
    let s3_url = format!("http://{}/v2/bench/blobs/{digest}", s3.addr);
    throughput(&client, &s3_url, size, 1).await;
    let s3_warm = throughput(&client, &s3_url, size, 5).await;
    s3.stop().await;

    // Cold hot cache (a new local directory, the blob read from the bucket) against a direct
    // GET of the object from Garage, and against the same GET through nginx in front of
    // Garage (what any proxy costs here: no copy kept, no hashing), when nginx is installed.
    // The three take turns, so that whatever else the machine does weighs on each alike.
    let bucket = garage.backend("bench");
    let key = format!("blobs/sha256/{}/{}", &digest[7..9], &digest[7..]);
    let presigned = bucket
        .presigned_get(&key, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    let garage_addr: std::net::SocketAddr = presigned
        .socket_addrs(|| None)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let nginx = common::cluster::Nginx::start("bench s3", &[garage_addr]).await;
    let dist_dir = tempfile::tempdir().unwrap();
    let mut distribution = distribution_on_garage(&garage, dist_dir.path(), &blob).await;
    let dist_cpu_before = distribution
        .as_ref()
        .map_or(0.0, |(child, _)| common::cpu_seconds(child.id()));
    let (mut cold, mut direct, mut proxied, mut dist) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let builds = mirror_builds();
    let mut cold_cpu = vec![0.0; builds.len()];
    cold.resize(builds.len(), Vec::new());
    for _ in 0..ROUNDS {
        for (i, build) in builds.iter().enumerate() {
            let (mbs, cpu) = cold_read_by_process(build, &s3_keys, &digest, size).await;
            cold[i].push(mbs);
            cold_cpu[i] += cpu;
        }
        same_memory_state();
        direct.push(throughput(&client, presigned.as_str(), size, 1).await);
        if let Some((_, url)) = &distribution {
            same_memory_state();
            dist.push(throughput(&client, url, size, 1).await);
        }
        if let Some(nginx) = &nginx {
            let mut through = presigned.clone();
            through.set_port(Some(nginx.addr.port())).unwrap();
            let host = garage_addr.to_string();
            same_memory_state();
            proxied.push(throughput_as(&client, through.as_str(), Some(&host), size, 1).await);
        }
    }
    drop(nginx);
    let dist_cpu_per_gib = distribution.as_ref().map_or(0.0, |(child, _)| {
        (common::cpu_seconds(child.id()) - dist_cpu_before) / (ROUNDS * size) as f64
            * (1024 * MIB) as f64
    });
    if let Some((child, _)) = distribution.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }

    // Cold pull through the S3 backend: upstream bytes and bucket objects against the image.
    let fake = FakeUpstream::start(Auth::None).await;
    let layers: Vec<Bytes> = [30 * MIB, 5 * MIB, 100_000]
        .iter()
        .map(|n| Bytes::from(common::random_bytes(*n)))
        .collect();
    let image_bytes: usize = layers.iter().map(|l| l.len()).sum();
    let digests: Vec<String> = layers.iter().map(|l| fake.put_blob(l.clone())).collect();
    let upstream = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    );
    let (s3, _dir) = start(&garage.storage_keys("cold", ""), &upstream).await;
    let gets = digests.iter().flat_map(|d| {
        let url = format!("http://{}/v2/app/blobs/{d}", s3.addr);
        let client = client.clone();
        (0..4).map(move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
        })
    });
    futures_util::future::join_all(gets).await;
    s3.mirror.fills.wait_idle().await;
    let metrics = String::from_utf8(s3.mirror.metrics.render()).unwrap();
    let upstream_bytes = metric(
        &metrics,
        "regmirror_upstream_fetched_bytes_total{upstream=\"docker.io\"}",
    );
    let bucket_objects = garage.backend("cold").list("blobs/").await.unwrap();
    let bucket_bytes: u64 = bucket_objects.iter().map(|o| o.size).sum();
    s3.stop().await;

    let mut others = String::new();
    if let Some(gcs) = common::emulators::FakeGcs::start("bench s3 (gcs)").await {
        let keys = gcs.storage_keys("bench", "");
        let row = other_store(
            "GCS (fake-gcs-server)",
            &keys,
            &gcs.backend("bench"),
            &blob,
            fs_warm,
        )
        .await;
        others.push_str(&row);
    }
    if let Some(azurite) = common::emulators::Azurite::start("bench s3 (azure)").await {
        let keys = azurite.storage_keys("bench", "");
        let row = other_store(
            "Azure (Azurite)",
            &keys,
            &azurite.backend("bench"),
            &blob,
            fs_warm,
        )
        .await;
        others.push_str(&row);
    }

    let small = startup_with_index(&garage, 1_000).await;
    let large = startup_with_index(&garage, 100_000).await;

    let per_gib = |cpu: f64| cpu / (ROUNDS * size) as f64 * (1024 * MIB) as f64;
    let mut bucket_rows = String::new();
    for (i, build) in builds.iter().enumerate() {
        let name = &build.name;
        bucket_rows.push_str(&format!(
            "| {name}: 200 MiB blob, empty hot cache vs direct GET from Garage | {:.2}x ({:.0} vs {:.0} MiB/s, medians of {ROUNDS}; {:.2} CPU s/GiB) |\n\
             | {name}: the same vs Distribution 2.8's s3 driver (redirect off), same Garage | {:.2}x ({:.0} vs {:.0} MiB/s; Distribution {:.2} CPU s/GiB) |\n",
            median(&cold[i]) / median(&direct),
            median(&cold[i]),
            median(&direct),
            per_gib(cold_cpu[i]),
            median(&cold[i]) / median(&dist),
            median(&cold[i]),
            median(&dist),
            dist_cpu_per_gib,
        ));
    }
    let report = format!(
        "| S3 backend (Garage, one node, this machine) | result |\n|---|---|\n\
         | warm 200 MiB blob, hot cache vs filesystem backend | {:.2}x ({s3_warm:.0} vs {fs_warm:.0} MiB/s) |\n\
         {bucket_rows}\
         | the same GET through nginx in front of Garage vs direct | {:.2}x ({:.0} MiB/s) |\n\
         | cold pull (4 clients per layer): upstream bytes / image | {:.2}x |\n\
         | cold pull: bucket bytes written / image ({} objects for {} blobs) | {:.2}x |\n\
         | start-up, index of 100,000 blobs vs 1,000 | {:.2}x ({:.2} s vs {:.2} s) |\n",
        s3_warm / fs_warm,
        median(&proxied) / median(&direct),
        median(&proxied),
        upstream_bytes / image_bytes as f64,
        bucket_objects.len(),
        layers.len(),
        bucket_bytes as f64 / image_bytes as f64,
        large / small,
        large,
        small,
    );
    let report = format!(
        "{report}\n| other object stores (emulators, this machine) | warm vs filesystem | empty hot cache vs direct GET (medians of {ROUNDS}) |\n|---|---|---|\n{others}"
    );
    println!("{report}");
    std::fs::write("bench-s3-results.md", &report).unwrap();
    fs.stop().await;
}

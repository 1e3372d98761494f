//! The guarantees of the S3 backend (tests/s3.rs, on Garage) on the other object stores, each
//! on its own emulator: Google Cloud Storage on fake-gcs-server, Azure Blob Storage on
//! Azurite. Pull-through and pushes survive a wiped local directory with the upstream down
//! (every object in the bucket verified, one bucket read for concurrent cold clients, the hot
//! cache after it); deletes and GC; redirects to the store's own signed URLs; what a `kill -9`
//! mid-commit leaves is cleared by GC and never visible; eviction under `max_size` removes the
//! least recently read blob from the bucket; two replicas with Redis on one bucket; `--offline`,
//! export and import; metrics and `/readyz`. Skipped (with a message) when an emulator is not
//! installed, unless REGMIRROR_REQUIRE_E2E=1.

mod common;

use common::binary::Regmirror;
use common::emulators::{Azurite, FakeGcs};
use common::fake_upstream::{Auth, FakeUpstream, sha256};
use common::{TestMirror, random_bytes};
use regmirror::store::Backend;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A cluster secret as an operator makes one (`openssl rand -hex 32`).
const SECRET: &str = "5f1c2e9a7b3d4c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

/// One of the emulated object stores.
enum Bucket {
    Gcs(FakeGcs),
    Azure(Azurite),
}

impl Bucket {
    async fn start(kind: &str, test: &str) -> Option<Bucket> {
        match kind {
            "gcs" => FakeGcs::start(test).await.map(Bucket::Gcs),
            _ => Azurite::start(test).await.map(Bucket::Azure),
        }
    }

    fn storage_keys(&self, prefix: &str, extra: &str) -> String {
        match self {
            Bucket::Gcs(g) => g.storage_keys(prefix, extra),
            Bucket::Azure(a) => a.storage_keys(prefix, extra),
        }
    }

    fn backend(&self, prefix: &str) -> Box<dyn Backend> {
        match self {
            Bucket::Gcs(g) => Box::new(g.backend(prefix)),
            Bucket::Azure(a) => Box::new(a.backend(prefix)),
        }
    }

    /// Where signed URLs point, and the query parameter that carries their signature.
    fn signed_url_marks(&self) -> (String, &'static str) {
        match self {
            Bucket::Gcs(g) => (g.url.clone(), "X-Goog-Signature="),
            Bucket::Azure(a) => (a.endpoint.clone(), "sig="),
        }
    }
}

fn upstream(fake: &FakeUpstream) -> String {
    format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\ntag_ttl = \"1s\"\n",
        fake.url()
    )
}

fn image_manifest(config: &str, layers: &[&str]) -> String {
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": layers.iter().map(|d| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1
        })).collect::<Vec<_>>()})
    .to_string()
}

async fn get_bytes(m: &TestMirror, path: &str) -> Vec<u8> {
    let r = m.get(path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.bytes().await.unwrap().to_vec()
}

async fn push_blob(m: &TestMirror, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest
}

async fn put_manifest(m: &TestMirror, repo: &str, tag: &str, manifest: &str) {
    let r = m
        .client
        .put(m.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// Every blob object in the bucket hashes to its key; how many there are.
async fn bucket_blobs_verify(bucket: &Bucket, prefix: &str) -> usize {
    let backend = bucket.backend(prefix);
    let objects = backend.list("blobs/").await.unwrap();
    for object in &objects {
        let hex = object.key.rsplit('/').next().unwrap();
        let bytes = backend.get(&object.key).await.unwrap().unwrap();
        assert_eq!(sha256(&bytes), format!("sha256:{hex}"), "{}", object.key);
    }
    objects.len()
}

async fn survives_a_wiped_local_directory(kind: &str, test: &str) {
    let Some(bucket) = Bucket::start(kind, test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    // 12 MiB: more than one part or chunk, so the commit is a multipart (resumable) upload.
    let layer = random_bytes(12 * 1024 * 1024);
    let config = random_bytes(2_000);
    let (dl, dc) = (fake.put_blob(layer.clone()), fake.put_blob(config.clone()));
    let manifest = image_manifest(&dc, &[&dl]);
    fake.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);
    let keys = bucket.storage_keys("wipe", "");
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    assert_eq!(
        get_bytes(&m, "/v2/app/manifests/v1").await,
        manifest.as_bytes()
    );
    assert_eq!(get_bytes(&m, &format!("/v2/app/blobs/{dl}")).await, layer);
    assert_eq!(get_bytes(&m, &format!("/v2/app/blobs/{dc}")).await, config);
    let (pushed_layer, pushed_config) = (random_bytes(3_000_000), random_bytes(500));
    let pl = push_blob(&m, "team/app", &pushed_layer).await;
    let pc = push_blob(&m, "team/app", &pushed_config).await;
    let pushed_manifest = image_manifest(&pc, &[&pl]);
    put_manifest(&m, "team/app", "v1", &pushed_manifest).await;
    m.fills_settled().await;
    // Seen by operators: the backend's requests, and ready.
    let ok_puts = format!(
        "regmirror_backend_requests_total{{backend=\"{kind}\",op=\"commit\",outcome=\"ok\"}}"
    );
    assert!(m.metric(&ok_puts).await >= 1.0, "{ok_puts}");
    let ready = m.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    m.stop().await;
    assert_eq!(bucket_blobs_verify(&bucket, "wipe").await, 6, "{kind}");

    // The local directory is new, the upstream is down: everything comes from the bucket.
    fake.set_down(true);
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    assert_eq!(
        get_bytes(&m, "/v2/app/manifests/v1").await,
        manifest.as_bytes()
    );
    assert_eq!(
        get_bytes(&m, "/v2/team/app/manifests/v1").await,
        pushed_manifest.as_bytes()
    );
    let path = format!("/v2/app/blobs/{dl}");
    let reads = (0..4).map(|_| get_bytes(&m, &path));
    for body in futures_util::future::join_all(reads).await {
        assert_eq!(body, layer);
    }
    m.fills_settled().await;
    assert_eq!(
        m.metric("regmirror_backend_read_bytes_total").await,
        layer.len() as f64,
        "{kind}: the bucket was read once for four clients"
    );
    let r = m
        .client
        .get(m.url(&path))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &layer[100..200]);
    assert!(m.metric("regmirror_hot_cache_hits_total").await >= 1.0);
    assert_eq!(
        get_bytes(&m, &format!("/v2/team/app/blobs/{pl}")).await,
        pushed_layer
    );
    let tags: serde_json::Value = m.get("/v2/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_eq!(
        fake.count("GET", "/blobs/"),
        2,
        "only the first mirror's two fills"
    );

    // `--offline` on the bucket alone: the same answers, no upstream asked.
    m.stop().await;
    let m = TestMirror::start_config(
        tempfile::tempdir().unwrap(),
        "offline = true",
        &keys,
        &upstream(&fake),
    )
    .await;
    assert_eq!(
        get_bytes(&m, "/v2/app/manifests/v1").await,
        manifest.as_bytes()
    );
    assert_eq!(get_bytes(&m, &format!("/v2/app/blobs/{dc}")).await, config);

    // Export from the bucket, import into a mirror on another prefix.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    let image: regmirror::oci::image_ref::ImageRef = "team/app:v1".parse().unwrap();
    regmirror::images::export(&m.server.mirror, &[image], &bundle)
        .await
        .unwrap();
    m.stop().await;
    let keys = bucket.storage_keys("imported", "");
    let other =
        TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    let imported = regmirror::images::import(&other.server.mirror, &bundle)
        .await
        .unwrap();
    assert_eq!(imported.blobs, 3);
    assert_eq!(
        get_bytes(&other, "/v2/team/app/manifests/v1").await,
        pushed_manifest.as_bytes()
    );
    other.stop().await;
    assert_eq!(bucket_blobs_verify(&bucket, "imported").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_survives_a_wiped_local_directory_with_the_upstream_down() {
    survives_a_wiped_local_directory(
        "gcs",
        "gcs_survives_a_wiped_local_directory_with_the_upstream_down",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_survives_a_wiped_local_directory_with_the_upstream_down() {
    survives_a_wiped_local_directory(
        "azure",
        "azure_survives_a_wiped_local_directory_with_the_upstream_down",
    )
    .await;
}

async fn deletes_gc_and_redirects(kind: &str, test: &str) {
    let Some(bucket) = Bucket::start(kind, test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let keys = format!(
        "delete = true\n{}",
        bucket.storage_keys("del", "redirect = true")
    );
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    let blob = random_bytes(200_000);
    let digest = push_blob(&m, "team/app", &blob).await;

    // Redirect mode: the client is sent to the store's own signed URL.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(m.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307, "{kind}");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let (endpoint, signature) = bucket.signed_url_marks();
    assert!(location.starts_with(&endpoint), "{location}");
    assert!(location.contains(signature), "{location}");
    let from_bucket = client.get(&location).send().await.unwrap();
    assert_eq!(from_bucket.status(), 200, "{location}");
    assert_eq!(from_bucket.bytes().await.unwrap().as_ref(), &blob[..]);

    // Deletes reach the bucket.
    let r = m
        .client
        .delete(m.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        m.get(&format!("/v2/team/app/blobs/{digest}"))
            .await
            .status(),
        404
    );
    let backend = bucket.backend("del");
    assert!(backend.list("blobs/").await.unwrap().is_empty());
    // An unreferenced cached blob, old enough: GC removes it from the bucket.
    let orphan = fake.put_blob(random_bytes(10_000));
    let r = client
        .get(m.url(&format!("/v2/app/blobs/{orphan}")))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 307, "{}", r.status());
    m.fills_settled().await;
    assert_eq!(backend.list("blobs/").await.unwrap().len(), 1);
    let store = &m.server.mirror.store;
    let hour = std::time::Duration::from_secs(3600);
    let report = store
        .gc(std::time::Duration::ZERO, hour, false, |_| false)
        .await
        .unwrap();
    assert_eq!(report.blobs, 1);
    assert!(backend.list("blobs/").await.unwrap().is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_deletes_gc_and_v4_signed_redirects() {
    deletes_gc_and_redirects("gcs", "gcs_deletes_gc_and_v4_signed_redirects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deletes_gc_and_sas_redirects() {
    deletes_gc_and_redirects("azure", "azure_deletes_gc_and_sas_redirects").await;
}

/// A mirror killed (`kill -9`) while it commits a large blob leaves an unfinished upload (a
/// GCS resumable session, Azure uncommitted blocks) and its record; the object never appears,
/// and GC clears the record (GCS: and cancels the session).
async fn kill_9_mid_commit(kind: &str, test: &str) {
    let Some(bucket) = Bucket::start(kind, test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n{}\n{}",
            dir.path().join("store").display(),
            bucket.storage_keys("stray", ""),
            upstream(&fake)
        ),
    )
    .unwrap();
    let backend = bucket.backend("stray");
    let mut recorded = false;
    for _attempt in 0..3 {
        let blob = random_bytes(64 * 1024 * 1024);
        let digest = fake.put_blob(blob.clone());
        let mut mirror = Regmirror::start(&config).await;
        let url = mirror.url(&format!("/v2/app/blobs/{digest}"));
        let download = tokio::spawn(async move { reqwest::get(url).await?.bytes().await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let found = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no upload record nor blob"
            );
            if !backend.list("_multipart/").await.unwrap().is_empty() {
                break true;
            }
            if download.is_finished() && !backend.list("blobs/").await.unwrap().is_empty() {
                break false;
            }
        };
        mirror.kill9();
        let _ = download.await;
        if found && backend.list("blobs/").await.unwrap().is_empty() {
            recorded = true;
            break;
        }
        for object in backend.list("").await.unwrap() {
            backend.delete(&object.key).await.unwrap();
        }
    }
    assert!(
        recorded,
        "{kind}: no kill landed within an upload in 3 attempts"
    );
    let keys = bucket.storage_keys("stray", "");
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    let store = &m.server.mirror.store;
    let hour = std::time::Duration::from_secs(3600);
    let report = store
        .gc(std::time::Duration::ZERO, hour, false, |_| false)
        .await
        .unwrap();
    assert_eq!(report.stray_uploads, 1, "{kind}: {report}");
    assert!(backend.list("_multipart/").await.unwrap().is_empty());
    assert!(
        backend.list("blobs/").await.unwrap().is_empty(),
        "{kind}: no partial object"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_gc_clears_what_a_kill_9_mid_commit_leaves() {
    kill_9_mid_commit("gcs", "gcs_gc_clears_what_a_kill_9_mid_commit_leaves").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_gc_clears_what_a_kill_9_mid_commit_leaves() {
    kill_9_mid_commit("azure", "azure_gc_clears_what_a_kill_9_mid_commit_leaves").await;
}

/// Two replicas on one bucket with Redis: a push through one is pulled through the other.
async fn replicas_share_the_bucket(kind: &str, test: &str) {
    let Some(bucket) = Bucket::start(kind, test).await else {
        return;
    };
    let Some(redis) = common::cluster::Redis::start(test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let rest = format!(
        "{}[cluster]\nsecret = \"{SECRET}\"\nredis_url = \"{}\"\n",
        upstream(&fake),
        redis.url()
    );
    let keys = bucket.storage_keys("replicas", "");
    let a = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &rest).await;
    let b = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &rest).await;
    let layer = random_bytes(1_000_000);
    let config = random_bytes(300);
    let dl = push_blob(&a, "team/app", &layer).await;
    let dc = push_blob(&a, "team/app", &config).await;
    let manifest = image_manifest(&dc, &[&dl]);
    put_manifest(&a, "team/app", "v1", &manifest).await;
    assert_eq!(
        get_bytes(&b, "/v2/team/app/manifests/v1").await,
        manifest.as_bytes(),
        "{kind}"
    );
    assert_eq!(
        get_bytes(&b, &format!("/v2/team/app/blobs/{dl}")).await,
        layer
    );
    let tags: serde_json::Value = b.get("/v2/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    // A pull-through on b is one upstream fetch for both.
    let cached = fake.put_blob(random_bytes(500_000));
    assert_eq!(
        get_bytes(&b, &format!("/v2/app/blobs/{cached}"))
            .await
            .len(),
        500_000
    );
    b.fills_settled().await;
    assert_eq!(
        get_bytes(&a, &format!("/v2/app/blobs/{cached}"))
            .await
            .len(),
        500_000
    );
    assert_eq!(fake.count("GET", &format!("/blobs/{cached}")), 1, "{kind}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_replicas_with_redis_share_one_bucket() {
    replicas_share_the_bucket("gcs", "gcs_replicas_with_redis_share_one_bucket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_replicas_with_redis_share_one_bucket() {
    replicas_share_the_bucket("azure", "azure_replicas_with_redis_share_one_bucket").await;
}

/// Eviction under `max_size` removes the least recently read cached blob from the bucket and
/// keeps what was pushed.
async fn eviction(kind: &str, test: &str) {
    let Some(bucket) = Bucket::start(kind, test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let keys = format!(
        "max_size = \"350KiB\"\nlow_water = 0.9\n{}",
        bucket.storage_keys("evict", "")
    );
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    let pushed = push_blob(&m, "team/app", &random_bytes(100_000)).await;
    let tick = || tokio::time::sleep(std::time::Duration::from_millis(20));
    let (da, db, dc) = (
        fake.put_blob(random_bytes(100_000)),
        fake.put_blob(random_bytes(100_000)),
        fake.put_blob(random_bytes(100_000)),
    );
    for digest in [&da, &db, &da] {
        tick().await;
        get_bytes(&m, &format!("/v2/app/blobs/{digest}")).await;
        m.fills_settled().await;
    }
    tick().await;
    get_bytes(&m, &format!("/v2/app/blobs/{dc}")).await; // 400 KB > 350 KiB
    common::eventually_async(10, "the eviction to finish", || async {
        m.metric("regmirror_evicted_blobs_total").await >= 1.0
    })
    .await;
    let backend = bucket.backend("evict");
    let key = |d: &str| format!("blobs/sha256/{}/{}", &d[7..9], &d[7..]);
    assert!(
        backend.stat(&key(&db)).await.unwrap().is_none(),
        "{kind}: B, least recently read, kept"
    );
    for digest in [&da, &dc, &pushed] {
        assert!(
            backend.stat(&key(digest)).await.unwrap().is_some(),
            "{kind}: {digest} evicted"
        );
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_eviction_removes_the_least_recently_read_blob() {
    eviction("gcs", "gcs_eviction_removes_the_least_recently_read_blob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_eviction_removes_the_least_recently_read_blob() {
    eviction(
        "azure",
        "azure_eviction_removes_the_least_recently_read_blob",
    )
    .await;
}

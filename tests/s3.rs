//! The S3 backend on a real Garage: pull-through, pushes, a restart from the bucket alone (the
//! local directory wiped, the upstream down), the hot cache and its one bucket read per blob,
//! redirects to presigned URLs, `kill -9` mid-fill, and clear start-up errors. Skipped (with a
//! message) when `garage` is not installed, unless REGMIRROR_REQUIRE_E2E=1.

mod common;

use common::binary::Regmirror;
use common::fake_upstream::{Auth, FakeUpstream, Fault, sha256};
use common::garage::Garage;
use common::{TestMirror, random_bytes};
use regmirror::store::Backend;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

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

async fn start(garage: &Garage, dir: tempfile::TempDir, prefix: &str, rest: &str) -> TestMirror {
    TestMirror::start_storage(dir, &garage.storage_keys(prefix, ""), rest).await
}

async fn get_bytes(m: &TestMirror, path: &str) -> Vec<u8> {
    let r = m.get(path).await;
    assert_eq!(r.status(), 200, "GET {path}");
    r.bytes().await.unwrap().to_vec()
}

/// A push of one blob: chunked (POST, PATCH, PUT) when `chunked`, else monolithic.
async fn push_blob(m: &TestMirror, repo: &str, bytes: &[u8], chunked: bool) -> String {
    let digest = sha256(bytes);
    if !chunked {
        let r = m
            .client
            .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        return digest;
    }
    let mut location = m.open_upload(repo).await;
    let half = bytes.len() / 2;
    for (i, part) in [&bytes[..half], &bytes[half..]].into_iter().enumerate() {
        let start = if i == 0 { 0 } else { half };
        let r = m
            .client
            .patch(m.url(&location))
            .header(
                "content-range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .header("content-type", "application/octet-stream")
            .body(part.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        location = r.headers()["location"].to_str().unwrap().to_owned();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = m
        .client
        .put(m.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest
}

/// The config file of a real regmirror process on the bucket under `prefix`, with its store
/// in `dir`.
fn binary_config(
    dir: &tempfile::TempDir,
    garage: &Garage,
    prefix: &str,
    fake: &FakeUpstream,
) -> std::path::PathBuf {
    let config = dir.path().join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\n{}\n{}",
            dir.path().join("store").display(),
            garage.storage_keys(prefix, ""),
            upstream(fake)
        ),
    )
    .unwrap();
    config
}

/// Garage and a fake upstream for `test`, or `None` when the test is skipped.
async fn garage_and_upstream(test: &str) -> Option<(Garage, FakeUpstream)> {
    let garage = Garage::start(test).await?;
    Some((garage, FakeUpstream::start(Auth::None).await))
}

/// A GC run on `m` now, sparing what was written or read within `grace`.
async fn gc_now(m: &TestMirror, grace: std::time::Duration) -> regmirror::store::GcReport {
    let upload_ttl = std::time::Duration::from_secs(3600);
    let store = &m.server.mirror.store;
    store.gc(grace, upload_ttl, false, |_| false).await.unwrap()
}

/// Every blob object in the bucket hashes to its key.
async fn assert_bucket_blobs_verify(garage: &Garage, prefix: &str) -> usize {
    let bucket = garage.backend(prefix);
    let objects = bucket.list("blobs/").await.unwrap();
    for object in &objects {
        let hex = object.key.rsplit('/').next().unwrap();
        let bytes = bucket.get(&object.key).await.unwrap().unwrap();
        assert_eq!(sha256(&bytes), format!("sha256:{hex}"), "{}", object.key);
    }
    objects.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_and_pushed_images_survive_a_wiped_local_directory_with_the_upstream_down() {
    let Some((garage, fake)) = garage_and_upstream(
        "cached_and_pushed_images_survive_a_wiped_local_directory_with_the_upstream_down",
    )
    .await
    else {
        return;
    };
    // 12 MiB: more than one part, so the commit is a multipart upload.
    let layer = random_bytes(12 * 1024 * 1024);
    let config = random_bytes(2_000);
    let (dl, dc) = (fake.put_blob(layer.clone()), fake.put_blob(config.clone()));
    let manifest = image_manifest(&dc, &[&dl]);
    fake.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);

    let m = start(
        &garage,
        tempfile::tempdir().unwrap(),
        "wipe",
        &upstream(&fake),
    )
    .await;
    assert_eq!(
        get_bytes(&m, "/v2/app/manifests/v1").await,
        manifest.as_bytes()
    );
    assert_eq!(get_bytes(&m, &format!("/v2/app/blobs/{dl}")).await, layer);
    assert_eq!(get_bytes(&m, &format!("/v2/app/blobs/{dc}")).await, config);
    // Pushes: one blob monolithic, one chunked, and a manifest tagging them.
    let (pushed_layer, pushed_config) = (random_bytes(3_000_000), random_bytes(500));
    let pl = push_blob(&m, "team/app", &pushed_layer, true).await;
    let pc = push_blob(&m, "team/app", &pushed_config, false).await;
    let pushed_manifest = image_manifest(&pc, &[&pl]);
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(pushed_manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    m.fills_settled().await;
    let dir = m.stop().await;
    // Cached: layer, config, manifest; pushed: two blobs and a manifest.
    assert_eq!(assert_bucket_blobs_verify(&garage, "wipe").await, 6);

    // The local directory goes, the upstream is down: everything comes from the bucket.
    drop(dir);
    fake.set_down(true);
    let m = start(
        &garage,
        tempfile::tempdir().unwrap(),
        "wipe",
        &upstream(&fake),
    )
    .await;
    // A start reads the index (snapshot and journal), never lists the blobs.
    assert_eq!(
        m.metric("regmirror_backend_requests_total{backend=\"s3\",op=\"list\",outcome=\"ok\"}")
            .await,
        1.0,
        "a start lists only the index journal"
    );
    assert_eq!(
        get_bytes(&m, "/v2/app/manifests/v1").await,
        manifest.as_bytes()
    );
    assert_eq!(
        get_bytes(&m, "/v2/team/app/manifests/v1").await,
        pushed_manifest.as_bytes()
    );
    // Four concurrent cold reads of the big layer: one read of the bucket.
    let path = format!("/v2/app/blobs/{dl}");
    let reads = (0..4).map(|_| get_bytes(&m, &path));
    for body in futures_util::future::join_all(reads).await {
        assert_eq!(body, layer);
    }
    m.fills_settled().await;
    assert_eq!(
        m.metric("regmirror_backend_read_bytes_total").await,
        layer.len() as f64,
        "the bucket was read once for four clients"
    );
    // Warm now: from the hot cache, a range too.
    let r = m
        .client
        .get(m.url(&format!("/v2/app/blobs/{dl}")))
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
    assert_eq!(
        get_bytes(&m, &format!("/v2/team/app/blobs/{pc}")).await,
        pushed_config
    );
    let tags: serde_json::Value = m.get("/v2/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    let catalog: serde_json::Value = m.get("/v2/_catalog").await.json().await.unwrap();
    assert!(
        catalog["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "team/app"),
        "{catalog}"
    );
    // Nothing came from the upstream.
    assert_eq!(
        fake.count("GET", "/blobs/"),
        2,
        "only the first mirror's two fills"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_gc_work_on_the_bucket() {
    let Some((garage, fake)) = garage_and_upstream("deletes_and_gc_work_on_the_bucket").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = format!("delete = true\n{}", garage.storage_keys("del", ""));
    let m = TestMirror::start_storage(dir, &keys, &upstream(&fake)).await;
    let blob = random_bytes(100_000);
    let digest = push_blob(&m, "team/app", &blob, false).await;
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
    let bucket = garage.backend("del");
    assert!(bucket.list("blobs/").await.unwrap().is_empty());
    assert!(bucket.list("pins/").await.unwrap().is_empty());
    // An unreferenced cached blob, old enough: GC removes it from the bucket.
    let orphan = fake.put_blob(random_bytes(10_000));
    assert_eq!(
        m.get(&format!("/v2/app/blobs/{orphan}")).await.status(),
        200
    );
    m.fills_settled().await;
    assert_eq!(bucket.list("blobs/").await.unwrap().len(), 1);
    let report = gc_now(&m, std::time::Duration::ZERO).await;
    assert_eq!(report.blobs, 1);
    assert!(bucket.list("blobs/").await.unwrap().is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_mode_sends_clients_to_presigned_bucket_urls() {
    let Some((garage, fake)) =
        garage_and_upstream("redirect_mode_sends_clients_to_presigned_bucket_urls").await
    else {
        return;
    };
    let keys = garage.storage_keys("redirect", "redirect = true");
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), &keys, &upstream(&fake)).await;
    let blob = random_bytes(200_000);
    let digest = push_blob(&m, "team/app", &blob, false).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(m.url(&format!("/v2/team/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&garage.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature"), "{location}");
    // The client fetches the bytes from the bucket itself.
    let from_bucket = client.get(&location).send().await.unwrap();
    assert_eq!(from_bucket.status(), 200);
    assert_eq!(from_bucket.bytes().await.unwrap().as_ref(), &blob[..]);
    // HEAD is still answered here, with the size.
    let head = m.head(&format!("/v2/team/app/blobs/{digest}")).await;
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_or_a_missing_bucket_fail_at_start_with_a_clear_error() {
    let test = "bad_credentials_or_a_missing_bucket_fail_at_start_with_a_clear_error";
    let Some(garage) = Garage::start(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let try_start = |storage: String| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n{storage}",
            dir.path().join("store").display()
        );
        async move {
            let config = regmirror::config::Config::parse(&text, "test").unwrap();
            match regmirror::start(&config).await {
                Ok(_) => panic!("started against an unusable bucket"),
                Err(e) => e.to_string(),
            }
        }
    };
    let wrong_secret = garage
        .storage_keys("x", "")
        .replace(&garage.secret, &"0".repeat(64));
    let error = try_start(wrong_secret).await;
    assert!(error.contains("bucket regmirror"), "{error}");
    assert!(error.contains(&garage.key_id), "{error}");
    let missing = garage
        .storage_keys("x", "")
        .replace("bucket = \"regmirror\"", "bucket = \"no-such-bucket\"");
    let error = try_start(missing).await;
    assert!(error.contains("no-such-bucket"), "{error}");
}

/// `kill -9` in the middle of a fill leaves no object in the bucket; the next start fetches
/// the blob again and commits it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_leaves_no_object_in_the_bucket() {
    let Some((garage, fake)) =
        garage_and_upstream("kill_9_mid_fill_leaves_no_object_in_the_bucket").await
    else {
        return;
    };
    let blob = random_bytes(4 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 256 * 1024,
            delay_ms: 50,
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&dir, &garage, "kill", &fake);
    let mut mirror = Regmirror::start(&config).await;
    let mut response = reqwest::get(mirror.url(&format!("/v2/app/blobs/{digest}")))
        .await
        .unwrap();
    let mut received = 0;
    while received < 1024 * 1024 {
        received += response.chunk().await.unwrap().unwrap().len();
    }
    mirror.kill9();
    let bucket = garage.backend("kill");
    assert!(
        bucket.list("blobs/").await.unwrap().is_empty(),
        "a partial blob reached the bucket"
    );
    fake.set_fault(&digest, None);
    let mirror = Regmirror::start(&config).await;
    let body = reqwest::get(mirror.url(&format!("/v2/app/blobs/{digest}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), &blob[..]);
    common::eventually_async(10, "the blob to be committed to the bucket", || async {
        !garage
            .backend("kill")
            .list("blobs/")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert_eq!(assert_bucket_blobs_verify(&garage, "kill").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_upload_session_refuses_chunks_past_its_limit() {
    let Some((garage, fake)) =
        garage_and_upstream("a_shared_upload_session_refuses_chunks_past_its_limit").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = format!(
        "max_upload_chunks = 3\n{}",
        garage.storage_keys("chunks", "")
    );
    let m = TestMirror::start_storage(dir, &keys, &upstream(&fake)).await;
    let mut location = m.open_upload("team/app").await;
    let mut sent = Vec::new();
    for i in 0..4u8 {
        let part = vec![i; 1000];
        let r = m
            .client
            .patch(m.url(&location))
            .header("content-type", "application/octet-stream")
            .body(part.clone())
            .send()
            .await
            .unwrap();
        if i < 3 {
            assert_eq!(r.status(), 202, "chunk {i}");
            location = r.headers()["location"].to_str().unwrap().to_owned();
            sent.extend_from_slice(&part);
            continue;
        }
        // The fourth chunk: refused with the OCI error, and the session is as it was.
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_INVALID", "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("3 chunks"),
            "{body}"
        );
    }
    let bucket = garage.backend("chunks");
    assert_eq!(bucket.list("_uploads/").await.unwrap().len(), 4); // session.json + 3 chunks
    let r = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-2999");
    // What was accepted completes into the blob.
    let digest = sha256(&sent);
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = m
        .client
        .put(m.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        get_bytes(&m, &format!("/v2/team/app/blobs/{digest}")).await,
        sent
    );
    assert!(bucket.list("_uploads/").await.unwrap().is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_object_that_does_not_match_its_digest_is_not_kept_locally() {
    let Some((garage, fake)) =
        garage_and_upstream("a_bucket_object_that_does_not_match_its_digest_is_not_kept_locally")
            .await
    else {
        return;
    };
    // A small blob (one GET of the bucket) and a large one (ranged GETs side by side, the
    // rotten byte in a late range).
    rotten_object_is_never_served_whole_or_kept(&garage, &fake, "rot", 1_000_000).await;
    rotten_object_is_never_served_whole_or_kept(&garage, &fake, "rot-large", (40 << 20) + 4321)
        .await;
}

async fn rotten_object_is_never_served_whole_or_kept(
    garage: &Garage,
    fake: &FakeUpstream,
    prefix: &str,
    len: usize,
) {
    let m = start(
        garage,
        tempfile::tempdir().unwrap(),
        prefix,
        &upstream(fake),
    )
    .await;
    let blob = random_bytes(len);
    let digest = push_blob(&m, "team/app", &blob, false).await;
    m.stop().await;
    // Intact, a replica without a local copy reads it whole, keeps it, and reads the bucket
    // once.
    let m = start(
        garage,
        tempfile::tempdir().unwrap(),
        prefix,
        &upstream(fake),
    )
    .await;
    let path = format!("/v2/team/app/blobs/{digest}");
    assert!(
        get_bytes(&m, &path).await == blob,
        "read back from the bucket"
    );
    m.fills_settled().await;
    assert!(
        get_bytes(&m, &path).await == blob,
        "served from the local copy"
    );
    assert_eq!(
        m.metric("regmirror_backend_read_bytes_total").await,
        blob.len() as f64
    );
    m.stop().await;
    // Something rots the object in the bucket (same size, one byte changed).
    let bucket = garage.backend(prefix);
    let key = format!("blobs/sha256/{}/{}", &digest[7..9], &digest[7..]);
    let mut rotten = blob.clone();
    rotten[len * 5 / 6] ^= 0xff;
    bucket.put(&key, rotten.clone().into()).await.unwrap();

    // A replica without a local copy reads the bucket and, by default (`verify_reads`),
    // completes no response before its own hash agrees: the client sees a failure, never a
    // complete 200 of wrong bytes, and nothing is kept.
    let m = start(
        garage,
        tempfile::tempdir().unwrap(),
        prefix,
        &upstream(fake),
    )
    .await;
    let r = m.get(&path).await;
    let complete = r.status() == 200 && r.bytes().await.is_ok_and(|b| b.len() == blob.len());
    assert!(
        !complete,
        "a rotten bucket object was served as a complete 200"
    );
    m.fills_settled().await;
    assert_eq!(
        m.metric("regmirror_digest_mismatches_total{upstream=\"backend\"}")
            .await,
        1.0
    );
    m.stop().await;

    // With `verify_reads = false` the operator trusts the bucket's bytes as a presigned URL
    // would hand them out: streamed whole, but the hash still keeps them out of the hot cache.
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        &format!("verify_reads = false\n{}", garage.storage_keys(prefix, "")),
        &upstream(fake),
    )
    .await;
    assert_eq!(get_bytes(&m, &path).await.len(), blob.len());
    m.fills_settled().await;
    assert_eq!(
        m.metric("regmirror_digest_mismatches_total{upstream=\"backend\"}")
            .await,
        1.0
    );
    get_bytes(&m, &path).await;
    m.fills_settled().await;
    assert_eq!(
        m.metric("regmirror_backend_read_bytes_total").await,
        2.0 * blob.len() as f64,
        "nothing was kept, so the bucket is read again"
    );
    m.stop().await;
}

/// The `[cluster]` section of replicas that share a secret (and so a seal key).
const SHARED_SECRET: &str =
    "[cluster]\nsecret = \"8f3a61c2d94e07b5a1c8e2f6039d4b7c5e1a9f2d6b8c0e4a7f3d5b9c1e6a2d40\"\n";

/// The metric of reads from the bucket found intact `by` their seal or their digest.
fn read_checks(by: &str) -> String {
    format!("regmirror_backend_read_checks_total{{by=\"{by}\"}}")
}

/// Starts a replica with an empty local directory on `prefix` (`rest`: its further config),
/// reads each `(path, bytes)` back from the bucket, checks the bytes, and says how it found
/// them intact: (by seal, by digest).
async fn fresh_replica_reads(
    garage: &Garage,
    prefix: &str,
    rest: &str,
    blobs: &[(&str, &[u8])],
) -> (f64, f64) {
    let m = start(garage, tempfile::tempdir().unwrap(), prefix, rest).await;
    for (path, bytes) in blobs {
        assert!(get_bytes(&m, path).await == *bytes, "{path}");
    }
    m.fills_settled().await;
    let checks = (
        m.metric(&read_checks("seal")).await,
        m.metric(&read_checks("digest")).await,
    );
    m.stop().await;
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_secret_check_bucket_reads_by_seal_and_rotten_bytes_still_fail() {
    let Some((garage, fake)) = garage_and_upstream(
        "replicas_sharing_a_secret_check_bucket_reads_by_seal_and_rotten_bytes_still_fail",
    )
    .await
    else {
        return;
    };
    let shared = format!("{}{SHARED_SECRET}", upstream(&fake));
    // A pushed blob (sealed as the push completes) and one filled from the upstream (sealed
    // as the fill writes it), large enough to be read back in ranged GETs side by side.
    let pushed = random_bytes(1_000_000);
    let pulled = random_bytes((25 << 20) + 77);
    let pulled_digest = fake.put_blob(pulled.clone());
    let m = start(&garage, tempfile::tempdir().unwrap(), "seal", &shared).await;
    let pushed_digest = push_blob(&m, "team/app", &pushed, false).await;
    let pushed_path = format!("/v2/team/app/blobs/{pushed_digest}");
    let pulled_path = format!("/v2/library/app/blobs/{pulled_digest}");
    assert!(get_bytes(&m, &pulled_path).await == pulled);
    m.fills_settled().await;
    m.stop().await;

    // Another replica with the same secret and an empty local directory: both blobs are read
    // back from the bucket, checked by their seals, and kept.
    let m = start(&garage, tempfile::tempdir().unwrap(), "seal", &shared).await;
    assert!(get_bytes(&m, &pushed_path).await == pushed);
    assert!(get_bytes(&m, &pulled_path).await == pulled);
    m.fills_settled().await;
    assert_eq!(m.metric(&read_checks("seal")).await, 2.0);
    assert_eq!(m.metric(&read_checks("digest")).await, 0.0);
    assert!(
        get_bytes(&m, &pulled_path).await == pulled,
        "from the local copy"
    );
    assert_eq!(
        m.metric("regmirror_backend_read_bytes_total").await,
        (pushed.len() + pulled.len()) as f64
    );
    m.stop().await;

    // A replica without the secret has a key of its own: the seals are not its, and it
    // checks what it reads against the digests.
    let own_key = upstream(&fake);
    let blobs: &[(&str, &[u8])] = &[(&pushed_path, &pushed)];
    assert_eq!(
        fresh_replica_reads(&garage, "seal", &own_key, blobs).await,
        (0.0, 1.0)
    );

    // The large blob rots in the bucket (its seal still recorded): a replica with the secret
    // finds the seal does not match, hashes the bytes, completes no response and keeps
    // nothing — and a later read checks the bucket again.
    let bucket = garage.backend("seal");
    let key = format!(
        "blobs/sha256/{}/{}",
        &pulled_digest[7..9],
        &pulled_digest[7..]
    );
    let mut rotten = pulled.clone();
    rotten[pulled.len() * 5 / 6] ^= 0xff;
    bucket.put(&key, rotten.into()).await.unwrap();
    let m = start(&garage, tempfile::tempdir().unwrap(), "seal", &shared).await;
    for _ in 0..2 {
        let r = m.get(&pulled_path).await;
        let complete = r.status() == 200 && r.bytes().await.is_ok_and(|b| b.len() == pulled.len());
        assert!(!complete, "rotten bytes were served as a complete 200");
        m.fills_settled().await;
    }
    assert_eq!(
        m.metric("regmirror_digest_mismatches_total{upstream=\"backend\"}")
            .await,
        2.0
    );
    assert_eq!(m.metric(&read_checks("seal")).await, 0.0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_committed_without_a_seal_is_sealed_by_its_first_verified_read() {
    let Some((garage, fake)) =
        garage_and_upstream("a_blob_committed_without_a_seal_is_sealed_by_its_first_verified_read")
            .await
    else {
        return;
    };
    let shared = format!("{}{SHARED_SECRET}", upstream(&fake));
    let own_key = upstream(&fake);
    // A replica that has no seal key (no cluster secret, and its key file cannot be read: as
    // a version before seals, it commits blobs unsealed).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store/seal.key")).unwrap();
    let m = start(&garage, dir, "backfill", &own_key).await;
    let blob = random_bytes(3_000_000);
    let digest = push_blob(&m, "team/app", &blob, false).await;
    m.stop().await;
    let path = format!("/v2/team/app/blobs/{digest}");
    let blobs: &[(&str, &[u8])] = &[(&path, &blob)];
    // The first replica to read it hashes it and records its seal; the next checks the seal.
    let reads = |rest| fresh_replica_reads(&garage, "backfill", rest, blobs);
    assert_eq!(reads(&shared).await, (0.0, 1.0), "the first read");
    assert_eq!(reads(&shared).await, (1.0, 0.0), "the next read");
    // A replica with a key of its own leaves that seal alone (it hashes what it reads), so the
    // replicas sharing the secret keep checking it.
    assert_eq!(reads(&own_key).await, (0.0, 1.0), "another key");
    assert_eq!(reads(&shared).await, (1.0, 0.0), "the seal kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_aborts_the_multipart_upload_a_kill_9_mid_commit_leaves() {
    use object_store::multipart::MultipartStore;
    let Some((garage, fake)) =
        garage_and_upstream("gc_aborts_the_multipart_upload_a_kill_9_mid_commit_leaves").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(&dir, &garage, "stray", &fake);
    let bucket = garage.backend("stray");

    // A fill is committed after its client has every byte; a blob of 96 MiB goes up in
    // 8 MiB parts. Kill the mirror the moment its upload is recorded; should the commit win
    // the race, try again with another blob.
    let mut record = None;
    for _attempt in 0..3 {
        let blob = random_bytes(96 * 1024 * 1024);
        let digest = fake.put_blob(blob.clone());
        let mut mirror = Regmirror::start(&config).await;
        let url = mirror.url(&format!("/v2/app/blobs/{digest}"));
        let download = tokio::spawn(async move { reqwest::get(url).await?.bytes().await });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let found = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "neither an upload record nor the blob appeared in the bucket"
            );
            if let Some(r) = bucket.list("_multipart/").await.unwrap().into_iter().next() {
                break Some(r.key);
            }
            if download.is_finished() && !bucket.list("blobs/").await.unwrap().is_empty() {
                break None;
            }
        };
        mirror.kill9();
        // The client was released every byte once the blob was verified, before the commit
        // began; whether it had read them all when the kill came is a race with the socket.
        // Either it has the whole blob or its download failed: never a short success.
        match download.await.unwrap() {
            Ok(bytes) => assert_eq!(bytes.len(), blob.len()),
            Err(e) => assert!(e.is_body() || e.is_decode(), "{e}"),
        }
        if found.is_some() && bucket.list("blobs/").await.unwrap().is_empty() {
            record = found;
            break;
        }
        // Committed before the kill: start over on an empty prefix.
        for object in bucket.list("").await.unwrap() {
            bucket.delete(&object.key).await.unwrap();
        }
    }
    let record = record.expect("no kill landed within a multipart upload in 3 attempts");
    let record: serde_json::Value =
        serde_json::from_slice(&bucket.get(&record).await.unwrap().unwrap()).unwrap();
    let path = object_store::path::Path::from(format!("stray/{}", record["key"].as_str().unwrap()));
    let upload_id = record["upload_id"].as_str().unwrap().to_owned();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&garage.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&garage.bucket)
        .with_region("garage")
        .with_access_key_id(&garage.key_id)
        .with_secret_access_key(&garage.secret)
        .build()
        .unwrap();
    let part = || object_store::PutPayload::from(vec![0u8; 16]);
    // The dead mirror's upload is still open in Garage: parts can be added to it.
    s3.put_part(&path, &upload_id, 90, part()).await.unwrap();

    let m = start(
        &garage,
        tempfile::tempdir().unwrap(),
        "stray",
        &upstream(&fake),
    )
    .await;
    let report = gc_now(&m, std::time::Duration::ZERO).await;
    assert_eq!(report.stray_uploads, 1, "{report}");
    assert!(bucket.list("_multipart/").await.unwrap().is_empty());
    assert!(
        s3.put_part(&path, &upload_id, 91, part()).await.is_err(),
        "the upload was aborted"
    );
    assert!(bucket.list("blobs/").await.unwrap().is_empty());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_spares_an_unreferenced_blob_another_replica_read_within_the_grace_period() {
    let Some((garage, fake)) = garage_and_upstream(
        "gc_spares_an_unreferenced_blob_another_replica_read_within_the_grace_period",
    )
    .await
    else {
        return;
    };
    let orphan = fake.put_blob(random_bytes(50_000));
    let path = format!("/v2/app/blobs/{orphan}");
    let a = start(
        &garage,
        tempfile::tempdir().unwrap(),
        "spare",
        &upstream(&fake),
    )
    .await;
    let b = start(
        &garage,
        tempfile::tempdir().unwrap(),
        "spare",
        &upstream(&fake),
    )
    .await;
    get_bytes(&a, &path).await;
    a.fills_settled().await;
    let grace = std::time::Duration::from_secs(2);
    // Written, and read on replica a, longer ago than the grace period...
    tokio::time::sleep(grace + std::time::Duration::from_millis(200)).await;
    // ...but read on replica b just now (from the bucket: nothing was written again), which
    // saves its access times as it does every minute.
    get_bytes(&b, &path).await;
    b.fills_settled().await;
    assert_eq!(fake.count("GET", "/blobs/"), 1, "b read the bucket");
    assert_eq!(
        b.metric("regmirror_backend_read_bytes_total").await,
        50_000.0
    );
    b.server.mirror.store.save_access().await.unwrap();
    assert_eq!(gc_now(&a, grace).await.blobs, 0, "spared: b read it");
    let bucket = garage.backend("spare");
    assert_eq!(bucket.list("blobs/").await.unwrap().len(), 1);
    assert_eq!(gc_now(&a, std::time::Duration::ZERO).await.blobs, 1);
    assert!(bucket.list("blobs/").await.unwrap().is_empty());
    a.stop().await;
    b.stop().await;
}

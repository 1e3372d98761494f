//! Issue 3: one upstream fetch per blob streamed to every client, and an upstream that fails
//! never breaks or poisons the cache. Against the in-process fake upstream.

mod common;

use std::sync::Arc;

use common::fake_upstream::{Auth, FakeUpstream, Fault, sha256};
use common::{TestMirror, eventually, random_bytes};
use futures_util::StreamExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn upstream_toml(url: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n{extra}\n")
}

fn manifest(marker: &str) -> Vec<u8> {
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [], "annotations": {"m": marker}})
        .to_string()
        .into_bytes()
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

fn tmp_files(mirror: &TestMirror) -> usize {
    std::fs::read_dir(mirror.store().join("tmp"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_gets_cost_one_upstream_fetch() {
    let fake = Arc::new(FakeUpstream::start(Auth::None).await);
    let blob = random_bytes(50 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    // Paced: 1 MiB every 10 ms, so the fill is still running while all clients join.
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 1024 * 1024,
            delay_ms: 10,
        }),
    );
    let mirror = Arc::new(TestMirror::start(&upstream_toml(&fake.url(), "")).await);
    let path = format!("/v2/app/blobs/{digest}");

    // The first client sees its first byte before the upstream has sent the whole blob.
    let mut first = mirror.get(&path).await;
    assert_eq!(first.status(), 200);
    let first_chunk = first.chunk().await.unwrap().unwrap();
    assert!(!first_chunk.is_empty());
    assert!(
        !fake.finished_sending(&digest),
        "first byte only after the whole upstream body"
    );

    let mut clients = Vec::new();
    for _ in 0..15 {
        let (mirror, path) = (mirror.clone(), path.clone());
        clients.push(tokio::spawn(async move {
            let r = mirror.get(&path).await;
            assert_eq!(r.status(), 200);
            let mut stream = r.bytes_stream();
            let mut hasher = sha2::Sha256::default();
            let mut len = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                len += chunk.len();
                sha2::Digest::update(&mut hasher, &chunk);
            }
            (
                len,
                format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
            )
        }));
    }
    let mut rest = first_chunk.to_vec();
    while let Some(chunk) = first.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(sha256(&rest), digest);
    for client in clients {
        assert_eq!(client.await.unwrap(), (blob.len(), digest.clone()));
    }
    assert_eq!(fake.count("GET", "/blobs/"), 1, "exactly one upstream GET");
    let followers = mirror.metric("regmirror_fill_followers_total").await;
    assert!(followers >= 1.0, "followers joined the fill: {followers}");
    mirror.fills_settled().await;
    assert!(mirror.blob_path(&digest).exists());
}

#[tokio::test]
async fn a_client_hanging_up_does_not_stop_the_fill() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(4 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 256 * 1024,
            delay_ms: 5,
        }),
    );
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    let path = format!("/v2/app/blobs/{digest}");

    let mut r = mirror.get(&path).await;
    r.chunk().await.unwrap().unwrap();
    drop(r);
    let blob_path = mirror.blob_path(&digest);
    eventually(30, "the detached fill to commit", || blob_path.exists()).await;

    let r = mirror.get(&path).await;
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert_eq!(fake.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn a_range_on_a_blob_being_filled_is_served_from_the_spool() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(4 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 256 * 1024,
            delay_ms: 20,
        }),
    );
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    let path = format!("/v2/app/blobs/{digest}");

    let mut leader = mirror.get(&path).await;
    leader.chunk().await.unwrap().unwrap();
    let r = mirror
        .client
        .get(mirror.url(&path))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-regmirror-cache"], "coalesced");
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", blob.len()).as_str()
    );
    assert!(
        !fake.finished_sending(&digest),
        "the 206 started before the fill completed"
    );
    // Its last byte waits until the whole blob is verified: a range is never completed with
    // bytes that might still turn out wrong.
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[100..200]);
    let received = mirror
        .metric("regmirror_upstream_fetched_bytes_total{upstream=\"docker.io\"}")
        .await;
    assert_eq!(received, blob.len() as f64, "the whole blob was in first");
    leader.bytes().await.unwrap();
    assert_eq!(fake.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn a_range_joining_a_fill_of_wrong_bytes_is_never_completed() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(2 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(
        &digest,
        Some(Fault::PacedCorrupt {
            chunk: 256 * 1024,
            delay_ms: 20,
        }),
    );
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    let path = format!("/v2/app/blobs/{digest}");
    let mut leader = mirror.get(&path).await;
    leader.chunk().await.unwrap().unwrap();
    let r = mirror
        .client
        .get(mirror.url(&path))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-regmirror-cache"], "coalesced");
    assert!(
        r.bytes().await.is_err(),
        "a range of a blob that failed verification must be aborted"
    );
    assert!(leader.bytes().await.is_err());
    mirror.fills_settled().await;
    assert!(!mirror.blob_path(&digest).exists());
}

#[tokio::test]
async fn a_cut_off_body_is_resumed_with_range() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(&digest, Some(Fault::CutOnceAt(300_000)));
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;

    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    assert_eq!(body.as_ref(), blob.as_slice());
    let gets: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=300000-"));
    mirror.fills_settled().await;
    assert!(mirror.blob_path(&digest).exists());
}

#[tokio::test]
async fn a_cut_off_body_without_range_support_aborts_and_keeps_nothing() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(&digest, Some(Fault::CutOffAt(300_000)));
    fake.set_no_ranges(true);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;

    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    let ok = r.status() == 200 && r.bytes().await.is_ok();
    assert!(!ok, "the client must see a failure");
    assert!(!mirror.blob_path(&digest).exists());
    // Counted once the fill has ended, after its spool went.
    common::eventually_async(10, "the aborted fill to be counted", || async {
        mirror
            .metric("regmirror_fills_aborted_total{reason=\"truncated\",upstream=\"docker.io\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(tmp_files(&mirror), 0);
}

#[tokio::test]
async fn wrong_bytes_abort_a_response_already_streaming() {
    wrong_bytes_abort_the_response(2 * 1024 * 1024).await;
}

/// Large enough that the fill copies the body into its own reused segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_abort_a_large_response_already_streaming() {
    wrong_bytes_abort_the_response(40 * 1024 * 1024 + 12_345).await;
}

async fn wrong_bytes_abort_the_response(size: usize) {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(size);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(&digest, Some(Fault::Corrupt));
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    // Whatever the timing, the client never gets a complete-looking body.
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    let ok = r.status() == 200 && r.bytes().await.is_ok();
    assert!(!ok);
    assert!(!mirror.blob_path(&digest).exists());
    // Counted once the fill has ended, which may be just after the client saw it fail.
    common::eventually_async(10, "the mismatch to be counted", || async {
        mirror
            .metric("regmirror_digest_mismatches_total{upstream=\"docker.io\"}")
            .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_stalled_body_times_out_and_is_resumed() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(512 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(&digest, Some(Fault::StallOnceAfter(100_000)));
    let mirror =
        TestMirror::start(&upstream_toml(&fake.url(), "fill_idle_timeout = \"300ms\"")).await;
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    let gets: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=100000-"));
}

#[tokio::test]
async fn upstream_down_serves_cached_tags_stale_and_errors_for_the_rest() {
    let fake = FakeUpstream::start(Auth::None).await;
    let cached = manifest("cached");
    fake.put_manifest("library/app", "v1", cached.clone(), OCI_MANIFEST);
    let blob = random_bytes(10_000);
    let digest = fake.put_blob(blob.clone());
    // TTL zero: every pull of the tag would revalidate.
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "tag_ttl = \"0s\"")).await;
    mirror
        .get("/v2/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap();
    mirror
        .get(&format!("/v2/app/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();

    for failure in ["down", "503", "500"] {
        match failure {
            "down" => fake.set_down(true),
            status => fake.set_failure(Some(status.parse().unwrap())),
        }
        let r = mirror.get("/v2/app/manifests/v1").await;
        assert_eq!(r.status(), 200, "{failure}");
        assert_eq!(r.headers()["x-regmirror-cache"], "stale", "{failure}");
        assert!(r.headers()["warning"].to_str().unwrap().starts_with("110"));
        assert_eq!(r.bytes().await.unwrap().as_ref(), cached.as_slice());
        let head = mirror.head("/v2/app/manifests/v1").await;
        assert_eq!(head.headers()["x-regmirror-cache"], "stale");

        let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
        assert_eq!(r.headers()["x-regmirror-cache"], "hit");

        // Not cached: a clear error whose status lets clients fall back.
        let r = mirror.get("/v2/app/manifests/other").await;
        assert_eq!(code(r).await, (503, "UNAVAILABLE".to_owned()), "{failure}");
        let r = mirror
            .get(&format!("/v2/app/blobs/{}", sha256(b"nope")))
            .await;
        assert_eq!(code(r).await, (503, "UNAVAILABLE".to_owned()), "{failure}");
        fake.set_down(false);
        fake.set_failure(None);
    }
    let stale = mirror
        .metric("regmirror_cache_lookups_total{kind=\"manifest\",result=\"stale\",upstream=\"docker.io\"}")
        .await;
    assert_eq!(stale, 6.0);
}

#[tokio::test]
async fn rate_limits_are_passed_on_served_stale_and_exported() {
    let fake = FakeUpstream::start(Auth::None).await;
    let cached = manifest("c");
    fake.put_manifest("library/app", "v1", cached.clone(), OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "tag_ttl = \"0s\"")).await;
    mirror
        .get("/v2/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        mirror
            .metric("regmirror_upstream_ratelimit_remaining{upstream=\"docker.io\"}")
            .await,
        42.0
    );
    assert_eq!(
        mirror
            .metric("regmirror_upstream_ratelimit_limit{upstream=\"docker.io\"}")
            .await,
        100.0
    );

    fake.set_failure(Some(429));
    let r = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "stale");
    assert_eq!(r.bytes().await.unwrap().as_ref(), cached.as_slice());
    let r = mirror.get("/v2/app/manifests/uncached").await;
    assert_eq!(code(r).await, (429, "TOOMANYREQUESTS".to_owned()));
    assert_eq!(
        mirror
            .metric("regmirror_upstream_ratelimit_remaining{upstream=\"docker.io\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn offline_never_contacts_the_upstream() {
    let fake = FakeUpstream::start(Auth::None).await;
    let cached = manifest("c");
    let manifest_digest = fake.put_manifest("library/app", "v1", cached.clone(), OCI_MANIFEST);
    let blob = random_bytes(10_000);
    let digest = fake.put_blob(blob.clone());
    let config = upstream_toml(&fake.url(), "tag_ttl = \"0s\"");
    let mirror = TestMirror::start(&config).await;
    mirror
        .get("/v2/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap();
    mirror
        .get(&format!("/v2/app/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    let dir = mirror.stop().await;

    fake.clear_seen();
    let mirror = TestMirror::start_with(dir, "offline = true", &config).await;
    let r = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), cached.as_slice());
    let r = mirror
        .get(&format!("/v2/app/manifests/{manifest_digest}"))
        .await;
    assert_eq!(r.status(), 200);
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    // What is not cached is unknown: offline, the mirror is the whole registry.
    let r = mirror.get("/v2/app/manifests/v2").await;
    assert_eq!(code(r).await, (404, "MANIFEST_UNKNOWN".to_owned()));
    let r = mirror.get(&format!("/v2/app/blobs/{}", sha256(b"x"))).await;
    assert_eq!(code(r).await, (404, "BLOB_UNKNOWN".to_owned()));
    let r = mirror.get("/v2/app/tags/list").await;
    assert_eq!(code(r).await, (404, "NAME_UNKNOWN".to_owned()));
    assert!(
        fake.seen().is_empty(),
        "offline mirror contacted the upstream: {:?}",
        fake.seen()
    );
}

#[tokio::test]
async fn upstream_404s_are_remembered_for_negative_ttl() {
    let fake = FakeUpstream::start(Auth::None).await;
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    for _ in 0..3 {
        let r = mirror.get("/v2/app/manifests/typo").await;
        assert_eq!(code(r).await, (404, "MANIFEST_UNKNOWN".to_owned()));
    }
    assert_eq!(fake.count("GET", "/manifests/typo"), 1);
    let negative = mirror
        .metric("regmirror_cache_lookups_total{kind=\"manifest\",result=\"negative\",upstream=\"docker.io\"}")
        .await;
    assert_eq!(negative, 2.0);

    // Turned off, every request asks again.
    let fake = FakeUpstream::start(Auth::None).await;
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "negative_ttl = \"0s\"")).await;
    for _ in 0..2 {
        assert_eq!(mirror.get("/v2/app/manifests/typo").await.status(), 404);
    }
    assert_eq!(fake.count("GET", "/manifests/typo"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_pulls_are_coalesced() {
    let fake = Arc::new(FakeUpstream::start(Auth::None).await);
    let m = manifest("m");
    fake.put_manifest("library/app", "v1", m.clone(), OCI_MANIFEST);
    let mirror = Arc::new(TestMirror::start(&upstream_toml(&fake.url(), "")).await);
    let mut pulls = Vec::new();
    for _ in 0..16 {
        let mirror = mirror.clone();
        pulls.push(tokio::spawn(async move {
            mirror
                .get("/v2/app/manifests/v1")
                .await
                .bytes()
                .await
                .unwrap()
        }));
    }
    for p in pulls {
        assert_eq!(p.await.unwrap().as_ref(), m.as_slice());
    }
    assert_eq!(fake.count("GET", "/manifests/"), 1);
}

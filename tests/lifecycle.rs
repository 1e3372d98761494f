//! Issue 5: eviction under a size cap and GC, against the in-process fake upstream.

mod common;

use common::fake_upstream::{Auth, FakeUpstream, Fault, sha256};
use common::{TestMirror, eventually, random_bytes};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn upstream(fake: &FakeUpstream) -> String {
    format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\ntag_ttl = \"1h\"\n",
        fake.url()
    )
}

async fn pull(m: &TestMirror, digest: &str) -> Vec<u8> {
    let r = m.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap().to_vec();
    // A miss is committed (and counted against max_size) just after its last byte is sent.
    m.fills_settled().await;
    body
}

async fn push(m: &TestMirror, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = m
        .client
        .post(m.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest
}

/// Access times have millisecond resolution: keep successive accesses apart.
async fn tick() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

#[tokio::test]
async fn eviction_removes_the_least_recently_read_and_keeps_pushed_content() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"digest": sha256(b"c"), "size": 1}, "layers": []})
    .to_string();
    fake.put_manifest("library/app", "old", manifest.clone(), OCI_MANIFEST);
    let (a, b, c) = (
        random_bytes(100_000),
        random_bytes(100_000),
        random_bytes(100_000),
    );
    let (da, db, dc) = (
        fake.put_blob(a.clone()),
        fake.put_blob(b.clone()),
        fake.put_blob(c.clone()),
    );
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        "max_size = \"350KiB\"\nlow_water = 0.9",
        &upstream(&fake),
    )
    .await;

    let pushed = push(&m, &random_bytes(100_000)).await;
    tick().await;
    m.get("/v2/app/manifests/old").await.bytes().await.unwrap(); // read first, then never
    tick().await;
    pull(&m, &da).await;
    tick().await;
    pull(&m, &db).await;
    tick().await;
    pull(&m, &da).await; // A is read again: B is now the least recently read blob
    tick().await;
    assert!(m.blob_path(&db).exists());
    pull(&m, &dc).await; // 400 KB > 350 KiB: evict down to 0.9 × 350 KiB
    // The metric moves once the whole eviction (tag records included) is done.
    common::eventually_async(10, "the eviction to finish", || async {
        m.metric("regmirror_evicted_blobs_total").await == 2.0
    })
    .await;
    assert!(
        !m.blob_path(&db).exists(),
        "B, the least recently read, was kept"
    );

    for (what, digest) in [
        ("A (read recently)", &da),
        ("C (newest)", &dc),
        ("pushed", &pushed),
    ] {
        assert!(m.blob_path(digest).exists(), "{what} was evicted");
    }
    assert!(
        !m.blob_path(&sha256(manifest.as_bytes())).exists(),
        "the oldest manifest goes first"
    );
    let tag = m.store().join("tags/docker.io/library/app/_tags/old.json");
    assert!(
        !tag.exists(),
        "the tag record of an evicted manifest is dropped"
    );
    assert_eq!(m.metric("regmirror_evicted_blobs_total").await, 2.0);
    let bytes = m.metric("regmirror_store_bytes").await;
    assert!(bytes <= 0.9 * 350.0 * 1024.0, "store holds {bytes} bytes");
    assert_eq!(m.metric("regmirror_store_blobs").await, 3.0);

    // Evicted content is fetched again on demand.
    assert_eq!(pull(&m, &db).await, b);
    let r = m.get("/v2/app/manifests/old").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "miss");
}

#[tokio::test]
async fn eviction_order_survives_a_restart() {
    let fake = FakeUpstream::start(Auth::None).await;
    let (a, b) = (random_bytes(150_000), random_bytes(150_000));
    let (da, db) = (fake.put_blob(a), fake.put_blob(b));
    let config = upstream(&fake);
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), "", &config).await;
    pull(&m, &da).await;
    tick().await;
    pull(&m, &db).await;
    tick().await;
    pull(&m, &da).await; // A is the most recent
    let dir = m.stop().await; // graceful stop saves access times

    let m = TestMirror::start_storage(dir, "max_size = \"400KiB\"", &config).await;
    assert_eq!(
        m.metric("regmirror_store_bytes").await,
        300_000.0,
        "size recomputed from disk"
    );
    let c = fake.put_blob(random_bytes(150_000));
    pull(&m, &c).await;
    let b_path = m.blob_path(&db);
    eventually(10, "eviction of B", || !b_path.exists()).await;
    assert!(m.blob_path(&da).exists());
}

#[tokio::test]
async fn gc_keeps_what_manifests_reach_and_removes_the_rest() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        "gc_grace = \"0s\"",
        &upstream(&fake),
    )
    .await;
    // A pushed image: config + layer + manifest.
    let config = push(&m, b"{}").await;
    let layer = push(&m, &random_bytes(5000)).await;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"digest": config, "size": 2}, "layers": [{"digest": layer, "size": 5000}]})
    .to_string();
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // An orphan: pushed, never referenced.
    let orphan = push(&m, &random_bytes(3000)).await;
    // A cached blob no manifest references.
    let lone = fake.put_blob(random_bytes(2000));
    pull(&m, &lone).await;
    // A fill in flight during GC.
    let slow = random_bytes(2 * 1024 * 1024);
    let slow_digest = fake.put_blob(slow.clone());
    fake.set_fault(
        &slow_digest,
        Some(Fault::Paced {
            chunk: 128 * 1024,
            delay_ms: 10,
        }),
    );
    let mut filling = m.get(&format!("/v2/app/blobs/{slow_digest}")).await;
    let mut body = filling.chunk().await.unwrap().unwrap().to_vec();

    let storage = regmirror::config::Config::parse(
        &format!(
            "[storage]\npath = \"{}\"\ngc_grace = \"0s\"\n",
            m.store().display()
        ),
        "t",
    )
    .unwrap()
    .storage;
    let report = regmirror::maintenance::gc_now(&m.server.mirror, &storage)
        .await
        .unwrap();
    assert_eq!(report.blobs, 2, "{report}");
    assert!(!m.blob_path(&orphan).exists());
    assert!(!m.blob_path(&lone).exists());
    for kept in [&config, &layer, &sha256(manifest.as_bytes())] {
        assert!(m.blob_path(kept).exists(), "{kept} removed");
    }
    // The fill was not disturbed: its body completes and is kept whole.
    while let Some(chunk) = filling.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(sha256(&body[..]), slow_digest);
    let slow_path = m.blob_path(&slow_digest);
    eventually(10, "the fill to commit", || slow_path.exists()).await;
    assert_eq!(std::fs::read(&slow_path).unwrap(), slow);
    // Still served after GC.
    assert_eq!(m.get("/v2/team/app/manifests/v1").await.status(), 200);
}

#[tokio::test]
async fn gc_command_dry_run_reports_and_then_removes() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), "", &upstream(&fake)).await;
    let orphan = push(&m, &random_bytes(3000)).await;
    let dir = m.stop().await;
    let config = dir.path().join("gc.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = \"{}\"\ngc_grace = \"0s\"\n",
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["gc", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hex = orphan.strip_prefix("sha256:").unwrap();
    let path = dir
        .path()
        .join("store/blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let dry = run(&["--dry-run"]);
    assert!(
        dry.contains("would remove: 1 unreachable blobs (2.9 KiB)"),
        "{dry}"
    );
    assert!(path.exists());
    let wet = run(&[]);
    assert!(
        wet.contains("removed: 1 unreachable blobs (2.9 KiB)"),
        "{wet}"
    );
    assert!(!path.exists());
}

fn image_manifest(config: &str, layers: &[&str]) -> String {
    serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": layers.iter().map(|d| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1
        })).collect::<Vec<_>>()})
    .to_string()
}

/// A push whose layers were already cached only HEADs them; the push still pins them, so
/// eviction under `max_size` never takes a pushed image's layers away.
#[tokio::test]
async fn eviction_keeps_the_cached_layers_of_a_pushed_image() {
    let fake = FakeUpstream::start(Auth::None).await;
    let (layer, config) = (random_bytes(150_000), random_bytes(1_000));
    let (dl, dc) = (fake.put_blob(layer.clone()), fake.put_blob(config.clone()));
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        "max_size = \"300KiB\"\nlow_water = 0.5",
        &upstream(&fake),
    )
    .await;
    pull(&m, &dl).await;
    pull(&m, &dc).await;
    // The client HEADs the blobs (present), then puts the manifest.
    for d in [&dl, &dc] {
        assert_eq!(
            m.head(&format!("/v2/team/app/blobs/{d}")).await.status(),
            200
        );
    }
    let manifest = image_manifest(&dc, &[&dl]);
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Cached content beyond the cap: eviction runs, and must leave the pushed image whole.
    let filler = fake.put_blob(random_bytes(200_000));
    pull(&m, &filler).await;
    common::eventually_async(10, "an eviction", || async {
        m.metric("regmirror_evicted_blobs_total").await >= 1.0
    })
    .await;
    assert!(!m.blob_path(&filler).exists(), "the unpinned filler went");
    fake.set_down(true);
    for d in [&dl, &dc] {
        let r = m.get(&format!("/v2/team/app/blobs/{d}")).await;
        assert_eq!(r.status(), 200, "{d} of the pushed image was evicted");
    }
    assert_eq!(m.get("/v2/team/app/manifests/v1").await.status(), 200);
}

/// Eviction fails closed: when the pins cannot be read, nothing is removed, and the failure
/// is logged and counted.
#[tokio::test]
async fn eviction_removes_nothing_when_pins_cannot_be_read() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        "max_size = \"200KiB\"",
        &upstream(&fake),
    )
    .await;
    let first = fake.put_blob(random_bytes(150_000));
    pull(&m, &first).await;
    // A file where a directory of pins should be: reading the pins fails (as root, too).
    std::fs::create_dir_all(m.store().join("pins/sha256")).unwrap();
    std::fs::write(m.store().join("pins/sha256/zz"), b"").unwrap();
    let second = fake.put_blob(random_bytes(150_000));
    pull(&m, &second).await;
    common::eventually_async(10, "the failed eviction to be counted", || async {
        m.metric("regmirror_maintenance_failures_total{task=\"eviction\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(m.blob_path(&first).exists() && m.blob_path(&second).exists());
    assert_eq!(m.metric("regmirror_evicted_blobs_total").await, 0.0);
}

/// GC reads every manifest without counting it as an access: the LRU order it leaves is the
/// clients' order.
#[tokio::test]
async fn gc_does_not_touch_access_times() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = image_manifest(&sha256(b"c"), &[]);
    fake.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);
    let m = TestMirror::start_storage(tempfile::tempdir().unwrap(), "", &upstream(&fake)).await;
    assert_eq!(m.get("/v2/app/manifests/v1").await.status(), 200);
    let digest: regmirror::oci::Digest = sha256(manifest.as_bytes()).parse().unwrap();
    let store = &m.server.mirror.store;
    let before = store.last_access(&digest).unwrap();
    tick().await;
    let storage = regmirror::config::Config::parse("", "t").unwrap().storage;
    regmirror::maintenance::gc_now(&m.server.mirror, &storage)
        .await
        .unwrap();
    assert_eq!(
        store.last_access(&digest),
        Some(before),
        "GC counted as an access"
    );
}

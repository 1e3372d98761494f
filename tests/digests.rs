//! sha512 content everywhere a digest appears (pull-through verified with sha512, pushes,
//! the store layout, GC, export and import), and non-distributable ("foreign") layers, which
//! a registry need not hold and a mirror never fetches unasked.

mod common;

use common::TestMirror;
use common::error_code as code;
use common::fake_upstream::{Auth, FakeUpstream, Fault};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const FOREIGN: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

fn sha512(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

fn upstream_toml(url: &str) -> String {
    format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n"
    )
}

/// The store's path of a blob, whatever its algorithm.
fn blob_path(m: &TestMirror, digest: &str) -> std::path::PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    m.store()
        .join("blobs")
        .join(algorithm)
        .join(&hex[..2])
        .join(hex)
}

#[tokio::test]
async fn sha512_blobs_are_pulled_through_verified_with_sha512() {
    let fake = FakeUpstream::start(Auth::None).await;
    let good = common::random_bytes(300_000);
    let digest = fake.put_blob_sha512(good.clone());
    let bad = common::random_bytes(50_000);
    let bad_digest = fake.put_blob_sha512(bad);
    fake.set_fault(&bad_digest, Some(Fault::Corrupt));
    let m = TestMirror::start(&upstream_toml(&fake.url())).await;

    let r = m.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), good.as_slice());
    m.fills_settled().await;
    assert_eq!(std::fs::read(blob_path(&m, &digest)).unwrap(), good);
    // Cached: the second pull never reaches the upstream.
    fake.clear_seen();
    let r = m.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(fake.count("GET", "/blobs/"), 0);

    // Wrong bytes under a sha512 digest are caught and kept nowhere.
    let r = m.get(&format!("/v2/app/blobs/{bad_digest}")).await;
    assert!(r.status() != 200 || r.bytes().await.is_err());
    m.fills_settled().await;
    assert!(!blob_path(&m, &bad_digest).exists());
    assert_eq!(
        m.metric("regmirror_digest_mismatches_total{upstream=\"docker.io\"}")
            .await,
        1.0
    );
    // Other algorithms stay invalid.
    let r = m.get("/v2/app/blobs/sha384:abcd").await;
    assert_eq!(code(r).await, (400, "DIGEST_INVALID".into()));
}

#[tokio::test]
async fn a_sha512_manifest_is_pulled_through_by_digest() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha512(b"{}"), "size": 2}, "layers": []})
    .to_string();
    let digest = sha512(manifest.as_bytes());
    fake.put_manifest("library/app", &digest, manifest.clone(), OCI_MANIFEST);
    let m = TestMirror::start(&upstream_toml(&fake.url())).await;
    let r = m.get(&format!("/v2/app/manifests/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_bytes());
    assert!(blob_path(&m, &digest).exists());
}

/// Push, pull, GC, export and import with sha512: the layout is `blobs/sha512/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha512_pushes_survive_gc_and_an_export_import_round_trip() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let m = TestMirror::start_storage(dir, "gc_grace = \"0s\"", &upstream_toml(&fake.url())).await;
    let push = |bytes: Vec<u8>| {
        let digest = sha512(&bytes);
        let url = m.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}"));
        let client = m.client.clone();
        async move {
            let r = client.post(url).body(bytes).send().await.unwrap();
            assert_eq!(r.status(), 201);
            digest
        }
    };
    let layer = push(common::random_bytes(20_000)).await;
    let config = push(b"{}".to_vec()).await;
    let orphan = push(common::random_bytes(1_000)).await;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 20_000}]})
    .to_string();
    let manifest_digest = sha512(manifest.as_bytes());
    let r = m
        .client
        .put(m.url(&format!("/v2/team/app/manifests/{manifest_digest}")))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    // Tag it too, so export can name it.
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for d in [&layer, &config, &manifest_digest] {
        assert!(blob_path(&m, d).exists(), "{d}");
    }

    let storage = regmirror::config::Config::parse("[storage]\ngc_grace = \"0s\"", "t")
        .unwrap()
        .storage;
    let report = regmirror::maintenance::gc_now(&m.server.mirror, &storage)
        .await
        .unwrap();
    assert_eq!(report.blobs, 1, "{report}");
    assert!(!blob_path(&m, &orphan).exists());
    assert!(blob_path(&m, &layer).exists() && blob_path(&m, &config).exists());

    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.tar");
    let image: regmirror::oci::image_ref::ImageRef = "team/app:v1".parse().unwrap();
    regmirror::images::export(&m.server.mirror, &[image], &bundle)
        .await
        .unwrap();
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&bundle).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    let hex = layer.strip_prefix("sha512:").unwrap();
    assert!(names.contains(&format!("blobs/sha512/{hex}")), "{names:?}");

    let other = TestMirror::start_with(tempfile::tempdir().unwrap(), "offline = true", "").await;
    let imported = regmirror::images::import(&other.server.mirror, &bundle)
        .await
        .unwrap();
    assert_eq!(imported.blobs, 3);
    // A tag push names the manifest by the canonical sha256; its sha512 layers came along.
    let r = other.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_bytes());
    let r = other.get(&format!("/v2/team/app/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    let r = m
        .get(&format!("/v2/team/app/manifests/{manifest_digest}"))
        .await;
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
}

/// A manifest may name non-distributable layers the registry does not have (Windows base
/// layers); through the pull-through path such a manifest is served unchanged and the
/// foreign layer is fetched only when a client asks for it.
#[tokio::test]
async fn foreign_layers_need_not_be_present_and_are_fetched_only_on_request() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start(&upstream_toml(&fake.url())).await;
    let config = b"{}".to_vec();
    let config_digest = common::fake_upstream::sha256(&config);
    let r = m
        .client
        .post(m.url(&format!(
            "/v2/win/app/blobs/uploads/?digest={config_digest}"
        )))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let foreign = common::fake_upstream::sha256(b"a Windows base layer");
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": FOREIGN, "digest": foreign, "size": 20,
            "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"]}]})
    .to_string();
    let r = m
        .client
        .put(m.url("/v2/win/app/manifests/ltsc2022"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // A non-foreign layer that is missing is still refused.
    let missing = manifest.replace(FOREIGN, "application/vnd.oci.image.layer.v1.tar+gzip");
    let r = m
        .client
        .put(m.url("/v2/win/app/manifests/broken"))
        .header("content-type", OCI_MANIFEST)
        .body(missing)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "MANIFEST_BLOB_UNKNOWN".into()));

    // Pull-through: the manifest is served as the upstream has it; prefetching the image
    // fetches its config but never the foreign layer.
    let foreign_bytes = b"a Windows base layer".to_vec();
    fake.put_blob(foreign_bytes.clone());
    fake.put_blob(config.clone());
    fake.put_manifest("library/nano", "v1", manifest.clone(), OCI_MANIFEST);
    let r = m.get("/v2/nano/manifests/v1").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_bytes());
    let image: regmirror::oci::image_ref::ImageRef = "nano:v1".parse().unwrap();
    regmirror::images::walk(&m.server.mirror, &image, None, &|_, _, _| {})
        .await
        .unwrap();
    assert_eq!(fake.count("GET", &format!("/blobs/{foreign}")), 0);
    // Asked for, it is fetched like any blob.
    let r = m.get(&format!("/v2/nano/blobs/{foreign}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), foreign_bytes.as_slice());
}

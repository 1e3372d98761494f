//! End to end with real parts: CNCF Distribution (Debian's `docker-registry`) as the upstream,
//! skopeo as the client, images built by the test. Skipped (with a message) when the tools are
//! missing, unless REGMIRROR_REQUIRE_E2E=1.

mod common;

use std::path::Path;

use common::TestMirror;
use common::images::{Layout, layout_ref, push_http, skopeo};
use common::registry::Registry;

struct Pushed {
    big: String,
    multi: String,
    multi_arm64: String,
    dlist: String,
}

/// Builds the test images and pushes them into the registry with skopeo.
fn build_and_push(skopeo_bin: &Path, registry: &Registry, dir: &Path) -> Pushed {
    let mut layout = Layout::new(&dir.join("src"));
    // A single image with three layers, one of them 20 MiB.
    let big = layout.add_image("amd64", &[20 * 1024 * 1024, 300 * 1024, 10 * 1024], false);
    layout.tag("big", &big);
    // A multi-arch OCI index.
    let amd64 = layout.add_image("amd64", &[64 * 1024], false);
    let arm64 = layout.add_image("arm64", &[64 * 1024], false);
    let multi = layout.add_index(&[("amd64", &amd64), ("arm64", &arm64)], false);
    layout.tag("multi", &multi);
    // A Docker manifest list.
    let d_amd64 = layout.add_image("amd64", &[32 * 1024], true);
    let d_arm64 = layout.add_image("arm64", &[32 * 1024], true);
    let dlist = layout.add_index(&[("amd64", &d_amd64), ("arm64", &d_arm64)], true);

    let src = layout.dir.display().to_string();
    let host = registry.host();
    for (name, repo) in [("big", "library/big"), ("multi", "library/multi")] {
        skopeo(
            skopeo_bin,
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{src}:{name}"),
                &format!("docker://{host}/{repo}:v1"),
            ],
        );
    }
    // skopeo's oci: transport cannot read a Docker manifest list from a layout: push it over HTTP.
    let registry_url = registry.url();
    tokio::runtime::Handle::current().block_on(push_http(
        &registry_url,
        "team/dlist",
        "v1",
        &layout.dir,
        &dlist,
    ));
    Pushed {
        big: big.digest,
        multi: multi.digest,
        multi_arm64: arm64.digest,
        dlist: dlist.digest,
    }
}

/// Copies `image` from the mirror into a fresh OCI layout; returns the manifest digest stored.
fn pull(skopeo_bin: &Path, mirror: &TestMirror, image: &str, extra: &[&str], out: &Path) -> String {
    let dest = out.display().to_string();
    let _ = std::fs::remove_dir_all(out);
    let src = format!("docker://{}/{image}", mirror.server.addr);
    let mut args = vec!["copy", "--src-tls-verify=false", "--preserve-digests"];
    args.extend_from_slice(extra);
    let dest_ref = format!("oci:{dest}:pulled");
    args.push(&src);
    args.push(&dest_ref);
    skopeo(skopeo_bin, &args);
    layout_ref(out, "pulled")
}

/// Like [`pull`], into a `dir:` destination, which keeps a Docker manifest list as it is (an
/// OCI layout would need it converted).
fn pull_dir(
    skopeo_bin: &Path,
    mirror: &TestMirror,
    image: &str,
    extra: &[&str],
    out: &Path,
) -> String {
    let _ = std::fs::remove_dir_all(out);
    let src = format!("docker://{}/{image}", mirror.server.addr);
    let dest = format!("dir:{}", out.display());
    let mut args = vec!["copy", "--src-tls-verify=false", "--preserve-digests"];
    args.extend_from_slice(extra);
    args.push(&src);
    args.push(&dest);
    skopeo(skopeo_bin, &args);
    common::fake_upstream::sha256(&std::fs::read(out.join("manifest.json")).unwrap())
}

fn mirror_config(registry: &Registry) -> String {
    // The registry stands in for Docker Hub (so one-word names get `library/`), and is also
    // reachable under a second name as a path prefix.
    format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\ntag_ttl = \"1h\"\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\n",
        url = registry.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_through_regmirror_from_distribution() {
    let test = "skopeo_pulls_through_regmirror_from_distribution";
    let (Some(skopeo_bin), Some(registry_bin)) = (
        common::require_tool("skopeo", test),
        common::require_tool("docker-registry", test),
    ) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(&registry_bin).await;
    let pushed = {
        let (skopeo_bin, work) = (skopeo_bin.clone(), work.path().to_owned());
        let registry = &registry;
        tokio::task::block_in_place(|| build_and_push(&skopeo_bin, registry, &work))
    };
    let out = work.path().join("out");
    let mirror = TestMirror::start(&mirror_config(&registry)).await;
    let blocking = |f: &dyn Fn() -> String| tokio::task::block_in_place(f);

    // First pulls: by tag (one-word name → library/), multi-arch with --all, a Docker manifest
    // list, by digest, and a non-default architecture. Digests are preserved end to end.
    let before = registry.blob_gets().await;
    let round = |mirror: &TestMirror| {
        assert_eq!(
            blocking(&|| pull(&skopeo_bin, mirror, "big:v1", &[], &out)),
            pushed.big
        );
        assert_eq!(
            blocking(&|| pull(&skopeo_bin, mirror, "library/multi:v1", &["--all"], &out)),
            pushed.multi
        );
        assert_eq!(
            blocking(&|| pull_dir(&skopeo_bin, mirror, "team/dlist:v1", &["--all"], &out)),
            pushed.dlist
        );
        assert_eq!(
            blocking(&|| pull(
                &skopeo_bin,
                mirror,
                &format!("big@{}", pushed.big),
                &[],
                &out
            )),
            pushed.big
        );
        assert_eq!(
            blocking(&|| pull(
                &skopeo_bin,
                mirror,
                "multi:v1",
                &["--override-arch", "arm64"],
                &out
            )),
            pushed.multi_arm64
        );
    };
    round(&mirror);
    let first_round = registry.blob_gets().await - before;
    // big: 3 layers + config; multi: 2×(layer+config); dlist: 2×(layer+config).
    assert_eq!(
        first_round, 12,
        "each blob fetched from the upstream exactly once"
    );
    // The 20 MiB layer is in the store, verified.
    let stored: u64 = walk_sizes(&mirror.store().join("blobs"));
    assert!(stored > 20 * 1024 * 1024, "store holds {stored} bytes");

    // Second round: everything from the cache.
    round(&mirror);
    assert_eq!(
        registry.blob_gets().await - before,
        first_round,
        "a second pull fetched blobs upstream"
    );

    // After a restart, still from the cache.
    let dir = mirror.stop().await;
    let mirror = TestMirror::start_in(dir, &mirror_config(&registry)).await;
    round(&mirror);
    assert_eq!(
        registry.blob_gets().await - before,
        first_round,
        "a pull after restart fetched blobs upstream"
    );

    // Path prefix: /v2/registry.test/library/big/... goes to the upstream named registry.test.
    assert_eq!(
        blocking(&|| pull(
            &skopeo_bin,
            &mirror,
            "registry.test/library/big:v1",
            &[],
            &out
        )),
        pushed.big
    );
    // containerd's ?ns=docker.io.
    let r = mirror
        .get("/v2/library/big/manifests/v1?ns=docker.io")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], pushed.big.as_str());
    assert_eq!(r.headers()["oci-namespace"], "docker.io");
    // Blobs are digest-global: the prefixed pull fetched manifests only.
    assert_eq!(registry.blob_gets().await - before, first_round);
}

fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_sizes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_into_regmirror_and_pulls_back_offline() {
    let test = "skopeo_pushes_into_regmirror_and_pulls_back_offline";
    let Some(skopeo_bin) = common::require_tool("skopeo", test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("src"));
    let amd64 = layout.add_image("amd64", &[512 * 1024, 4096], false);
    let arm64 = layout.add_image("arm64", &[256 * 1024], false);
    let index = layout.add_index(&[("amd64", &amd64), ("arm64", &arm64)], false);
    layout.tag("app", &index);
    let src = format!("oci:{}:app", layout.dir.display());

    // The upstream is unreachable throughout: pushed content needs none.
    let upstream =
        common::fake_upstream::FakeUpstream::start(common::fake_upstream::Auth::None).await;
    upstream.set_down(true);
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    let config = format!(
        "[auth]\nhtpasswd = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        htpasswd.display(),
        upstream.url()
    );
    let mirror = TestMirror::start(&config).await;
    let dest = format!("docker://{}/team/app:v1", mirror.server.addr);

    // Without credentials the push is refused.
    let refused = tokio::task::block_in_place(|| {
        std::process::Command::new(&skopeo_bin)
            .args([
                "--insecure-policy",
                "copy",
                "--all",
                "--dest-tls-verify=false",
                &src,
                &dest,
            ])
            .output()
            .unwrap()
    });
    assert!(
        !refused.status.success(),
        "push without credentials succeeded"
    );
    // With them it lands, digests preserved.
    tokio::task::block_in_place(|| {
        skopeo(
            &skopeo_bin,
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                "ci:pushme",
                &src,
                &dest,
            ],
        )
    });
    let out = work.path().join("out");
    let pulled =
        tokio::task::block_in_place(|| pull(&skopeo_bin, &mirror, "team/app:v1", &["--all"], &out));
    assert_eq!(pulled, index.digest);
    let pulled = tokio::task::block_in_place(|| {
        pull(
            &skopeo_bin,
            &mirror,
            "team/app:v1",
            &["--override-arch", "arm64"],
            &out,
        )
    });
    assert_eq!(pulled, arm64.digest);

    // And after a restart in offline mode.
    let dir = mirror.stop().await;
    let mirror = TestMirror::start_with(dir, "offline = true", &config).await;
    let pulled =
        tokio::task::block_in_place(|| pull(&skopeo_bin, &mirror, "team/app:v1", &["--all"], &out));
    assert_eq!(pulled, index.digest);
}

/// Runs the regmirror binary with `args`, panicking with its output on failure.
fn regmirror(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "regmirror {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_carry_import_and_serve_offline() {
    let test = "export_carry_import_and_serve_offline";
    let Some(skopeo_bin) = common::require_tool("skopeo", test) else {
        return;
    };
    use common::fake_upstream::{Auth, FakeUpstream};
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("src"));
    let amd64 = layout.add_image("amd64", &[300 * 1024, 2048], false);
    let arm64 = layout.add_image("arm64", &[200 * 1024], false);
    let multi = layout.add_index(&[("amd64", &amd64), ("arm64", &arm64)], false);
    let single = layout.add_image("amd64", &[100 * 1024], false);
    // A Docker-format image: carried by the bundle and read back by `regmirror import`.
    let legacy = layout.add_image("amd64", &[50 * 1024], true);
    let upstream = FakeUpstream::start(Auth::None).await;
    upstream.put_layout_image(
        &layout.dir,
        "library/multi",
        "v1",
        &multi.digest,
        &multi.media_type,
    );
    upstream.put_layout_image(
        &layout.dir,
        "team/single",
        "v2",
        &single.digest,
        &single.media_type,
    );
    upstream.put_layout_image(
        &layout.dir,
        "team/legacy",
        "v3",
        &legacy.digest,
        &legacy.media_type,
    );

    // Site A: connected. Export two images (one multi-arch), fetched through the mirror.
    let site_a = work.path().join("a");
    let config_a = work.path().join("a.toml");
    common::write_config(&config_a, &site_a, &upstream.url(), "");
    let bundle = work.path().join("bundle.tar");
    let bundle_s = bundle.display().to_string();
    let config_a_s = config_a.display().to_string();
    let out = tokio::task::block_in_place(|| {
        regmirror(&[
            "export",
            "--config",
            &config_a_s,
            "-o",
            &bundle_s,
            "multi:v1",
            "docker.io/team/single:v2",
            "team/legacy:v3",
        ])
    });
    assert!(out.contains("3 images"), "{out}");
    // skopeo reads the bundle.
    let inspected = tokio::task::block_in_place(|| {
        skopeo(
            &skopeo_bin,
            &[
                "inspect",
                "--raw",
                &format!("oci-archive:{bundle_s}:docker.io/library/multi:v1"),
            ],
        )
    });
    assert_eq!(
        common::fake_upstream::sha256(inspected.trim_end().as_bytes()),
        multi.digest
    );

    // Site B: air-gapped, empty. Import, then serve offline.
    let site_b = work.path().join("b");
    let config_b = work.path().join("b.toml");
    std::fs::write(
        &config_b,
        format!(
            "[server]\noffline = true\n[storage]\npath = \"{}\"\n",
            site_b.display()
        ),
    )
    .unwrap();
    let config_b_s = config_b.display().to_string();
    let out =
        tokio::task::block_in_place(|| regmirror(&["import", "--config", &config_b_s, &bundle_s]));
    assert!(out.contains("digests verified"), "{out}");
    upstream.set_down(true);
    let store_b = tempfile::tempdir().unwrap();
    std::fs::rename(&site_b, store_b.path().join("store")).unwrap();
    let mirror = TestMirror::start_with(store_b, "offline = true", "").await;
    let out_dir = work.path().join("out");
    let pulled = tokio::task::block_in_place(|| {
        pull(&skopeo_bin, &mirror, "multi:v1", &["--all"], &out_dir)
    });
    assert_eq!(pulled, multi.digest);
    let pulled = tokio::task::block_in_place(|| {
        pull(
            &skopeo_bin,
            &mirror,
            "multi:v1",
            &["--override-arch", "arm64"],
            &out_dir,
        )
    });
    assert_eq!(pulled, arm64.digest);
    let pulled =
        tokio::task::block_in_place(|| pull(&skopeo_bin, &mirror, "team/single:v2", &[], &out_dir));
    assert_eq!(pulled, single.digest);
    // The Docker-format image, as the upstream made it (docs/operations.md: skopeo reads a
    // bundle's OCI-format images; regmirror import reads every image).
    let pulled =
        tokio::task::block_in_place(|| pull(&skopeo_bin, &mirror, "team/legacy:v3", &[], &out_dir));
    assert_eq!(pulled, legacy.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_over_tls_with_a_test_certificate() {
    let test = "skopeo_over_tls_with_a_test_certificate";
    let Some(skopeo_bin) = common::require_tool("skopeo", test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // skopeo trusts the CA certificates (*.crt) in --*-cert-dir; a self-signed one is its own CA.
    std::fs::write(certs.join("ca.crt"), cert.cert.pem()).unwrap();
    std::fs::write(work.path().join("tls.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        work.path().join("tls.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let server = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        work.path().join("tls.crt").display(),
        work.path().join("tls.key").display()
    );
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    let auth = format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display());
    let mirror = TestMirror::start_with(tempfile::tempdir().unwrap(), &server, &auth).await;

    // The challenge sends clients to the token endpoint over HTTPS (Basic credentials never
    // cross the network in clear text), also over HTTP/2, where the host is `:authority`.
    let tls_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let ping = tls_client
        .get(format!("https://{}/v2/", mirror.server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 401);
    assert_eq!(ping.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        ping.headers()["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer realm=\"https://{}/token\",service=\"regmirror\"",
            mirror.server.addr
        )
    );

    let mut layout = Layout::new(&work.path().join("src"));
    let image = layout.add_image("amd64", &[64 * 1024], false);
    layout.tag("app", &image);
    let src = format!("oci:{}:app", layout.dir.display());
    let dest = format!("docker://{}/team/app:v1", mirror.server.addr);
    let certs_s = certs.display().to_string();
    tokio::task::block_in_place(|| {
        skopeo(
            &skopeo_bin,
            &[
                "copy",
                "--preserve-digests",
                "--dest-cert-dir",
                &certs_s,
                "--dest-creds",
                "ci:pushme",
                &src,
                &dest,
            ],
        )
    });
    let out = work.path().join("out");
    let out_ref = format!("oci:{}:pulled", out.display());
    tokio::task::block_in_place(|| {
        skopeo(
            &skopeo_bin,
            &[
                "copy",
                "--preserve-digests",
                "--src-cert-dir",
                &certs_s,
                &dest,
                &out_ref,
            ],
        )
    });
    assert_eq!(layout_ref(&out, "pulled"), image.digest);
    // Plain HTTP on the TLS port is refused.
    let plain = reqwest::get(mirror.url("/v2/")).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_warms_the_cache_for_one_platform() {
    use common::fake_upstream::{Auth, FakeUpstream};
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("src"));
    let amd64 = layout.add_image("amd64", &[300 * 1024], false);
    let arm64 = layout.add_image("arm64", &[200 * 1024], false);
    let multi = layout.add_index(&[("amd64", &amd64), ("arm64", &arm64)], false);
    let upstream = FakeUpstream::start(Auth::None).await;
    upstream.put_layout_image(
        &layout.dir,
        "library/multi",
        "v1",
        &multi.digest,
        &multi.media_type,
    );
    let store = work.path().join("store");
    let config = work.path().join("m.toml");
    common::write_config(&config, &store, &upstream.url(), "");
    let list = work.path().join("images.txt");
    std::fs::write(&list, "# images for the rollout\nmulti:v1\n").unwrap();
    let config_s = config.display().to_string();
    let list_s = list.display().to_string();
    let run = || {
        regmirror(&[
            "prefetch",
            "--config",
            &config_s,
            "--platform",
            "linux/arm64",
            "--file",
            &list_s,
        ])
    };
    let first = tokio::task::block_in_place(run);
    let arm_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("blobs/sha256").join(&arm64.digest[7..])).unwrap(),
    )
    .unwrap();
    let arm_layer = arm_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let amd_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.dir.join("blobs/sha256").join(&amd64.digest[7..])).unwrap(),
    )
    .unwrap();
    let amd_layer = amd_manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let in_store = |d: &str| {
        store
            .join("blobs/sha256")
            .join(&d[7..9])
            .join(&d[7..])
            .exists()
    };
    assert!(in_store(&arm_layer), "arm64 layer not cached:\n{first}");
    assert!(
        !in_store(&amd_layer),
        "amd64 layer fetched despite --platform"
    );
    assert!(
        first.contains("prefetched 1 of 1 images: 2 blobs"),
        "{first}"
    );
    assert!(
        first.contains("already cached") && !first.contains(", 0 B fetched"),
        "{first}"
    );
    // Not a terminal: plain lines, one per fetched blob, naming the image and the layer.
    assert!(first.contains(&format!(": {arm_layer} ")), "{first}");
    let second = tokio::task::block_in_place(run);
    assert!(second.contains(", 0 B fetched"), "{second}");
}

/// The same real parts on the S3 backend (a Garage bucket): skopeo pulls through from
/// Distribution and pushes with credentials; then the local directory is wiped and, offline,
/// every image is pulled again from the bucket alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_and_pushes_through_regmirror_on_s3() {
    let test = "skopeo_pulls_and_pushes_through_regmirror_on_s3";
    let (Some(skopeo_bin), Some(registry_bin)) = (
        common::require_tool("skopeo", test),
        common::require_tool("docker-registry", test),
    ) else {
        return;
    };
    let Some(garage) = common::garage::Garage::start(test).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(&registry_bin).await;
    let pushed = {
        let (skopeo_bin, work) = (skopeo_bin.clone(), work.path().to_owned());
        let registry = &registry;
        tokio::task::block_in_place(|| build_and_push(&skopeo_bin, registry, &work))
    };
    let mut layout = Layout::new(&work.path().join("own"));
    let own = layout.add_image("amd64", &[9 * 1024 * 1024, 4096], false);
    layout.tag("own", &own);
    let config = format!(
        "[auth]\nanonymous_push = true\n{}",
        mirror_config(&registry)
    );
    let storage = garage.storage_keys("skopeo", "");
    let mirror = TestMirror::start_storage(tempfile::tempdir().unwrap(), &storage, &config).await;
    let out = work.path().join("out");
    let blocking = |f: &dyn Fn() -> String| tokio::task::block_in_place(f);
    let round = |mirror: &TestMirror| {
        assert_eq!(
            blocking(&|| pull(&skopeo_bin, mirror, "big:v1", &[], &out)),
            pushed.big
        );
        assert_eq!(
            blocking(&|| pull(&skopeo_bin, mirror, "library/multi:v1", &["--all"], &out)),
            pushed.multi
        );
        assert_eq!(
            blocking(&|| pull_dir(&skopeo_bin, mirror, "team/dlist:v1", &["--all"], &out)),
            pushed.dlist
        );
    };
    let before = registry.blob_gets().await;
    round(&mirror);
    assert_eq!(
        registry.blob_gets().await - before,
        12,
        "each blob fetched once"
    );
    let dest = format!("docker://{}/team/own:v1", mirror.server.addr);
    let src = format!("oci:{}:own", layout.dir.display());
    blocking(&|| {
        skopeo(
            &skopeo_bin,
            &[
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &src,
                &dest,
            ],
        );
        String::new()
    });
    mirror.fills_settled().await;
    drop(mirror.stop().await);

    // A new local directory, offline: the bucket alone serves everything.
    let mirror = TestMirror::start_config(
        tempfile::tempdir().unwrap(),
        "offline = true",
        &storage,
        &config,
    )
    .await;
    round(&mirror);
    assert_eq!(
        blocking(&|| pull(&skopeo_bin, &mirror, "team/own:v1", &[], &out)),
        own.digest
    );
    assert_eq!(
        registry.blob_gets().await - before,
        12,
        "the second mirror fetched from the upstream"
    );
}

//! The CLI and the server agree: `prefetch`, `export`, `import` and `gc` run beside a server on
//! the same directory show up in its `_catalog` and store totals within seconds, without a
//! restart; the commands' own output names what failed.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream};
use common::images::put_runnable_image;

fn run(args: &[&str], config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn catalog(m: &TestMirror) -> Vec<String> {
    let body: serde_json::Value = m.get("/v2/_catalog").await.json().await.unwrap();
    body["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// A server on `fake`, and a config file for commands on the same store.
async fn server_and_config(fake: &FakeUpstream) -> (TestMirror, std::path::PathBuf) {
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    ))
    .await;
    let config = m.dir.path().join("command.toml");
    common::write_config(&config, &m.store(), &fake.url(), "");
    (m, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_and_import_beside_a_server_show_up_in_its_catalog_and_totals() {
    let fake = FakeUpstream::start(Auth::None).await;
    put_runnable_image(&fake, "library/hello", "1.0");
    let (a, config_a) = server_and_config(&fake).await;
    assert!(catalog(&a).await.is_empty());
    assert_eq!(a.metric("regmirror_store_blobs").await, 0.0);

    let (ok, out, err) = run(&["prefetch", "hello:1.0"], &config_a);
    assert!(ok, "prefetch: {out}{err}");
    // A manifest, a config and a layer. The server may have taken in the manifest and its tag
    // while the command was still fetching the layers: the totals follow within a second.
    common::eventually_async(
        5,
        "the prefetched image in A's catalog and totals",
        || async {
            catalog(&a).await == ["library/hello"] && a.metric("regmirror_store_blobs").await == 3.0
        },
    )
    .await;
    assert!(a.metric("regmirror_store_bytes").await > 0.0);

    // A bundle written beside A, imported beside B (which never saw the upstream).
    let bundle = a.dir.path().join("bundle.tar");
    let (ok, out, err) = run(
        &["export", "-o", bundle.to_str().unwrap(), "hello:1.0"],
        &config_a,
    );
    assert!(ok, "export: {out}{err}");
    let empty = FakeUpstream::start(Auth::None).await;
    let (b, config_b) = server_and_config(&empty).await;
    let (ok, out, err) = run(&["import", bundle.to_str().unwrap()], &config_b);
    assert!(ok, "import: {out}{err}");
    common::eventually_async(
        5,
        "the imported image in B's catalog and totals",
        || async {
            catalog(&b).await == ["library/hello"] && b.metric("regmirror_store_blobs").await == 3.0
        },
    )
    .await;
    let tags: serde_json::Value = b
        .get("/v2/library/hello/tags/list")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["1.0"]));
    let manifest = b.get("/v2/library/hello/manifests/1.0").await;
    assert_eq!(manifest.status(), 200);
    assert_eq!(
        empty.count("GET", "/manifests/"),
        0,
        "B served the import, not its upstream"
    );
}

/// `prefetch` with an image the upstream does not have: the others are fetched, the summary
/// names the one that failed and why, sizes read as people read them, and the exit status
/// says it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_names_every_failed_image_in_its_summary() {
    let fake = FakeUpstream::start(Auth::None).await;
    put_runnable_image(&fake, "library/hello", "1.0");
    let (m, config) = server_and_config(&fake).await;
    let (ok, out, err) = run(&["prefetch", "hello:1.0", "nothere:9"], &config);
    assert!(!ok, "a failed image fails the command");
    assert!(out.contains("prefetched 1 of 2 images"), "{out}");
    assert!(
        out.contains(" B fetched") || out.contains("iB fetched"),
        "{out}"
    );
    let summary = err
        .split("failed (1):")
        .nth(1)
        .expect("a summary of failures");
    assert!(summary.contains("nothere:9"), "{err}");
    assert!(!summary.contains("hello:1.0"), "{err}");
    drop(m);
}

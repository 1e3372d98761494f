//! Crash safety with the real binary: `kill -9` in the middle of a fill, then a restart; SIGTERM
//! in the middle of one.

mod common;

use std::path::Path;
use std::process::Command;

use common::binary::Regmirror;
use common::fake_upstream::{Auth, FakeUpstream, Fault};
use common::random_bytes;

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_leaves_no_partial_blob_and_a_restart_refetches() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(8 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    // Slow enough that the fill is surely running when the process dies.
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 64 * 1024,
            delay_ms: 20,
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &store, &fake.url(), "");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob_path = store.join("blobs/sha256").join(&hex[..2]).join(hex);
    let path = format!("/v2/app/blobs/{digest}");

    let mut mirror = Regmirror::start(&config).await;
    let mut response = reqwest::get(mirror.url(&path)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.chunk().await.unwrap().unwrap();
    assert_eq!(
        count_files(&store.join("tmp")),
        1,
        "a spool file while filling"
    );
    mirror.kill9();
    assert!(
        response.bytes().await.is_err(),
        "the client sees the failure"
    );
    assert!(!blob_path.exists(), "no partial blob in the store");

    fake.set_fault(&digest, None);
    let mirror = Regmirror::start(&config).await;
    assert_eq!(
        count_files(&store.join("tmp")),
        0,
        "leftover spool removed at start"
    );
    let response = reqwest::get(mirror.url(&path)).await.unwrap();
    assert_eq!(response.headers()["x-regmirror-cache"], "miss");
    assert_eq!(response.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert_eq!(
        fake.count("GET", "/blobs/"),
        2,
        "fetched afresh after the restart"
    );
    // The last byte goes out once the digest is verified; the rename into the store follows.
    common::eventually(30, "the fill to commit", || blob_path.exists()).await;
    assert_eq!(std::fs::read(&blob_path).unwrap(), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_fill_finishes_the_download_and_leaves_no_temp_files() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(4 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(
        &digest,
        Some(Fault::Paced {
            chunk: 128 * 1024,
            delay_ms: 20,
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &store, &fake.url(), "shutdown_timeout = \"60s\"");
    let mut mirror = Regmirror::start(&config).await;
    let mut response = reqwest::get(mirror.url(&format!("/v2/app/blobs/{digest}")))
        .await
        .unwrap();
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();
    assert!(!fake.finished_sending(&digest), "the fill is still running");

    let pid = mirror.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    // New connections are refused once the listener is closed.
    let addr = mirror.addr;
    common::eventually_async(10, "the listener to close", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // The response in flight completes.
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body, blob);
    let exit = tokio::task::block_in_place(|| mirror.child.wait().unwrap());
    assert!(exit.success(), "exit status {exit:?}");
    assert_eq!(count_files(&store.join("tmp")), 0, "temp files left behind");
    let hex = digest.strip_prefix("sha256:").unwrap();
    let kept = std::fs::read(store.join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    assert_eq!(kept, blob, "the blob is whole");
}

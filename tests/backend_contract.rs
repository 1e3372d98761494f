//! One contract for every storage backend: what the store above relies on, checked the same way
//! against each backend. The filesystem backend always; S3 on Garage, GCS on fake-gcs-server and
//! Azure on Azurite when they are installed
//! (required under `REGMIRROR_REQUIRE_E2E=1`). A new backend is one more `#[tokio::test]` that
//! hands its backend to [`contract`].

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use regmirror::store::backend::{Backend, Committed};

/// Reads an object from `from` on, whole.
async fn read_from(backend: &dyn Backend, key: &str, from: u64) -> Option<(u64, Vec<u8>)> {
    let stream = backend.read(key, from).await.unwrap()?;
    assert_eq!(stream.start, Some(from), "a read says where it starts");
    let size = stream.total()?;
    let chunks: Vec<Bytes> = stream.chunks.try_collect().await.unwrap();
    Some((size, chunks.concat()))
}

/// Reads an object the caller knows the size of from `from` on, whole (a bucket may split it
/// into ranged GETs side by side).
async fn read_sized_from(
    backend: &dyn Backend,
    key: &str,
    from: u64,
    size: u64,
) -> Option<(u64, Vec<u8>)> {
    let stream = backend.read_sized(key, from, size).await.unwrap()?;
    assert_eq!(
        stream.start,
        Some(from),
        "a sized read says where it starts"
    );
    let total = stream.total()?;
    let chunks: Vec<Bytes> = stream.chunks.try_collect().await.unwrap();
    Some((total, chunks.concat()))
}

async fn sorted_keys(backend: &dyn Backend, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = backend
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

/// The contract. `scratch` is a local directory for files to commit.
async fn contract(backend: &dyn Backend, scratch: &Path) {
    // Nothing there: every read says so, none fails.
    assert_eq!(backend.get("c/none").await.unwrap(), None);
    assert_eq!(backend.stat("c/none").await.unwrap(), None);
    assert!(backend.read("c/none", 0).await.unwrap().is_none());
    assert!(
        backend
            .read_sized("c/none", 0, 100 << 20)
            .await
            .unwrap()
            .is_none()
    );
    assert!(backend.list("c/").await.unwrap().is_empty());

    // Small objects: whole, overwritten whole, stat'ed.
    backend
        .put("c/a/one", Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(backend.get("c/a/one").await.unwrap().unwrap(), "first");
    backend
        .put("c/a/one", Bytes::from_static(b"second!"))
        .await
        .unwrap();
    assert_eq!(backend.get("c/a/one").await.unwrap().unwrap(), "second!");
    let info = backend.stat("c/a/one").await.unwrap().unwrap();
    assert_eq!((info.key.as_str(), info.size), ("c/a/one", 7));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        info.modified_ms.abs_diff(now_ms) < 3_600_000,
        "modified_ms {} is not about now",
        info.modified_ms
    );
    backend.put("c/a/b/two", Bytes::new()).await.unwrap();
    assert_eq!(backend.stat("c/a/b/two").await.unwrap().unwrap().size, 0);
    backend
        .put("c/ab/three", Bytes::from_static(b"3"))
        .await
        .unwrap();

    // Listing: every depth under the prefix, nothing beside it.
    assert_eq!(sorted_keys(backend, "c/a/").await, ["c/a/b/two", "c/a/one"]);
    assert_eq!(
        sorted_keys(backend, "c/").await,
        ["c/a/b/two", "c/a/one", "c/ab/three"]
    );
    assert!(
        sorted_keys(backend, "")
            .await
            .contains(&"c/ab/three".to_owned())
    );

    // Ranged reads: from any offset to the end, the whole size told.
    assert_eq!(
        read_from(backend, "c/a/one", 0).await,
        Some((7, b"second!".to_vec()))
    );
    assert_eq!(
        read_from(backend, "c/a/one", 3).await,
        Some((7, b"ond!".to_vec()))
    );

    // Deletes: one object, then a prefix, and nothing beside them.
    assert!(backend.delete("c/a/one").await.unwrap());
    assert_eq!(backend.get("c/a/one").await.unwrap(), None);
    backend.delete("c/a/one").await.unwrap();
    backend.delete_prefix("c/a/").await.unwrap();
    assert!(backend.list("c/a/").await.unwrap().is_empty());
    assert_eq!(sorted_keys(backend, "c/").await, ["c/ab/three"]);

    // Committing a verified local file: the object appears whole (large ones too, which a
    // bucket takes in parts and reads back in ranges), and the file is moved or copied as the
    // backend says.
    for (key, len) in [
        ("c/blobs/small", 1000),
        ("c/blobs/large", 20 << 20),
        ("c/blobs/larger", (40 << 20) + 12_345),
    ] {
        let bytes = common::random_bytes(len);
        let file = scratch.join(key.replace('/', "_"));
        std::fs::write(&file, &bytes).unwrap();
        let committed = backend.commit_file(key, &file).await.unwrap();
        match committed {
            Committed::Moved => assert!(!file.exists(), "{key}: moved, yet still there"),
            Committed::Copied => assert!(file.exists(), "{key}: copied, yet gone"),
        }
        assert_eq!(backend.stat(key).await.unwrap().unwrap().size, len as u64);
        let (size, read) = read_from(backend, key, 0).await.unwrap();
        assert_eq!(size, len as u64);
        assert!(read == bytes, "{key}: the object is not the file");
        // Read knowing its size (as blobs in the index are): the same bytes, from the start
        // and from the middle of a range.
        let (size, read) = read_sized_from(backend, key, 0, len as u64).await.unwrap();
        assert!(
            size == len as u64 && read == bytes,
            "{key}: a sized read is not the file"
        );
        let mid = (len as u64 * 3 / 7).max(1);
        let (size, read) = read_sized_from(backend, key, mid, len as u64)
            .await
            .unwrap();
        assert!(
            size == len as u64 && read[..] == bytes[mid as usize..],
            "{key}: a sized read from {mid} is not the file's tail"
        );
        // The page-cache fast path, where the backend has one, reads the same bytes.
        if let Some((mut local, size)) = backend.open_local(key).await.unwrap() {
            use std::io::Read;
            let mut all = Vec::new();
            local.read_to_end(&mut all).unwrap();
            assert_eq!(
                (size, all == bytes),
                (len as u64, true),
                "{key}: open_local"
            );
        }
        // A presigned URL, where the backend gives them, serves the same bytes.
        if let Some(url) = backend
            .presigned_get(key, Duration::from_secs(60))
            .await
            .unwrap()
        {
            let got = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            assert!(got == bytes, "{key}: the presigned URL");
        }
    }
    backend.delete_prefix("c/").await.unwrap();
    assert!(backend.list("c/").await.unwrap().is_empty());

    // Readiness and housekeeping answer on a healthy backend; nothing was left half-done.
    backend.check().await.unwrap();
    assert_eq!(
        backend.abort_stray_uploads(Duration::ZERO).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn the_filesystem_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let backend = regmirror::store::FsBackend::new(dir.path(), &tmp);
    contract(&backend, &tmp).await;
    assert!(
        !dir.path().join("c").exists(),
        "empty directories go with their last object"
    );

    // A backend whose storage is unusable says so: its root is a file.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let broken = regmirror::store::FsBackend::new(&file, &tmp);
    assert!(broken.check().await.is_err());
    assert!(broken.put("k", Bytes::from_static(b"v")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_keeps_the_contract() {
    let Some(garage) = common::garage::Garage::start("the_s3_backend_keeps_the_contract").await
    else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    contract(&garage.backend("contract"), scratch.path()).await;

    // A backend whose storage is unusable says so: a bucket that does not exist.
    let broken = regmirror::store::S3Backend::s3(regmirror::store::S3Settings {
        bucket: "no-such-bucket".into(),
        endpoint: Some(garage.endpoint.clone()),
        region: "garage".into(),
        prefix: String::new(),
        access_key_id: garage.key_id.clone(),
        secret_access_key: garage.secret.clone(),
    })
    .unwrap();
    let error = broken.check().await.unwrap_err().to_string();
    assert!(error.contains("no-such-bucket"), "{error}");
    assert!(broken.put("k", Bytes::from_static(b"v")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gcs_backend_keeps_the_contract() {
    let test = "the_gcs_backend_keeps_the_contract";
    let Some(gcs) = common::emulators::FakeGcs::start(test).await else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    contract(&gcs.backend("contract"), scratch.path()).await;

    // A bucket that does not exist.
    let broken =
        regmirror::store::backend::GcsBackend::gcs(regmirror::store::backend::GcsSettings {
            bucket: "no-such-bucket".into(),
            prefix: String::new(),
            credentials_file: Some(gcs.credentials.clone()),
        })
        .unwrap();
    let error = broken.check().await.unwrap_err().to_string();
    assert!(error.contains("no-such-bucket"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_backend_keeps_the_contract() {
    let test = "the_azure_backend_keeps_the_contract";
    let Some(azurite) = common::emulators::Azurite::start(test).await else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    contract(&azurite.backend("contract"), scratch.path()).await;

    // A container that does not exist.
    let broken =
        regmirror::store::backend::AzureBackend::azure(regmirror::store::backend::AzureSettings {
            account: common::emulators::AZURITE_ACCOUNT.into(),
            container: "no-such-container".into(),
            prefix: String::new(),
            access_key: Some(common::emulators::AZURITE_KEY.into()),
            endpoint: Some(azurite.endpoint.clone()),
        })
        .unwrap();
    let error = broken.check().await.unwrap_err().to_string();
    assert!(error.contains("no-such-container"), "{error}");
}

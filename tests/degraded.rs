//! When the object store degrades, the mirror keeps serving: on a Garage node killed and
//! started again, a replica serves what its hot cache holds, passes cold pulls through from
//! the upstream (verified, not kept), refuses pushes with 503 `UNAVAILABLE`, says `degraded`
//! on `/readyz` and 0 on `regmirror_store_available`; a replica started during the outage
//! starts (not ready); when the store is back both become ready by themselves, and new pulls
//! are kept and pushes land again.

mod common;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream};
use common::garage::Garage;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn readyz(m: &TestMirror) -> (u16, String) {
    let r = m.get("/readyz").await;
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn push_blob(m: &TestMirror, bytes: &[u8]) -> reqwest::Response {
    m.client
        .post(m.url(&format!(
            "/v2/team/app/blobs/uploads/?digest={}",
            common::fake_upstream::sha256(bytes)
        )))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_degrades_to_a_proxy_and_recovers_by_itself() {
    let test = "an_object_store_outage_degrades_to_a_proxy_and_recovers_by_itself";
    let Some(mut garage) = Garage::start(test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let warm = common::random_bytes(200 * 1024);
    let dwarm = fake.put_blob(warm.clone());
    let cold = common::random_bytes(300 * 1024);
    let dcold = fake.put_blob(cold.clone());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dwarm, "size": warm.len()},
        "layers": []})
    .to_string();
    fake.put_manifest("library/app", "v1", manifest, OCI_MANIFEST);
    let storage = garage.storage_keys("degraded", "");
    let rest = format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    );
    let a = TestMirror::start_storage(tempfile::tempdir().unwrap(), &storage, &rest).await;
    assert_eq!(a.get("/v2/app/manifests/v1").await.status(), 200);
    let r = a.get(&format!("/v2/app/blobs/{dwarm}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), warm.as_slice());
    a.fills_settled().await;
    assert_eq!(readyz(&a).await.0, 200);
    assert_eq!(a.metric("regmirror_store_available").await, 1.0);

    // The store goes away.
    garage.stop();
    let r = a.get(&format!("/v2/app/blobs/{dwarm}")).await;
    assert_eq!(r.status(), 200, "the hot cache still serves");
    assert_eq!(r.bytes().await.unwrap().as_ref(), warm.as_slice());
    assert_eq!(a.get("/v2/app/manifests/v1").await.status(), 200);
    let r = a.get(&format!("/v2/app/blobs/{dcold}")).await;
    assert_eq!(r.status(), 200, "a cold pull passes through");
    assert_eq!(r.bytes().await.unwrap().as_ref(), cold.as_slice());
    common::eventually_async(20, "the pass-through counted", || async {
        a.metric("regmirror_passthrough_requests_total{kind=\"blob\"}")
            .await
            >= 1.0
    })
    .await;
    common::eventually_async(20, "/readyz to say degraded", || async {
        let (status, text) = readyz(&a).await;
        status == 200 && text.starts_with("degraded")
    })
    .await;
    assert_eq!(a.metric("regmirror_store_available").await, 0.0);
    let pushed = push_blob(&a, b"pushed during the outage").await;
    assert_eq!(pushed.status(), 503);
    let (_, code) = common::error_code(pushed).await;
    assert_eq!(code, "UNAVAILABLE");
    let status = a.get("/ui/status").await.text().await.unwrap();
    assert!(status.contains("object store is unavailable"), "{status}");

    // A replica started now starts, and says it is not ready.
    let b = TestMirror::start_storage(tempfile::tempdir().unwrap(), &storage, &rest).await;
    let (status, text) = readyz(&b).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not ready"), "{text}");
    let r = b.get(&format!("/v2/app/blobs/{dcold}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), cold.as_slice());

    // The store is back: both become ready by themselves; new pulls are kept, pushes land.
    garage.resume().await;
    for (name, m) in [("a", &a), ("b", &b)] {
        common::eventually_async(30, &format!("replica {name} ready"), || async {
            readyz(m).await == (200, "ready\n".to_owned())
        })
        .await;
        assert_eq!(m.metric("regmirror_store_available").await, 1.0);
    }
    let r = a.get(&format!("/v2/app/blobs/{dcold}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), cold.as_slice());
    a.fills_settled().await;
    let hex = dcold.strip_prefix("sha256:").unwrap();
    let key = format!("degraded/blobs/sha256/{}/{hex}", &hex[..2]);
    let bucket = garage.backend("");
    use regmirror::store::Backend;
    common::eventually_async(10, "the cold blob kept in the bucket", || async {
        bucket.stat(&key).await.ok().flatten().is_some()
    })
    .await;
    assert_eq!(
        push_blob(&a, b"pushed after the outage").await.status(),
        201
    );
}

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
    let cold_manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dcold, "size": cold.len()},
        "layers": []})
    .to_string();
    fake.put_manifest("library/app", "v2", cold_manifest.clone(), OCI_MANIFEST);
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
    let r = a.get("/v2/app/manifests/v2").await;
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(
        status, 200,
        "a manifest never cached passes through: {body}"
    );
    assert_eq!(body, cold_manifest);
    let r = a.get(&format!("/v2/app/blobs/{dcold}")).await;
    assert_eq!(r.status(), 200, "a cold pull passes through");
    assert_eq!(r.bytes().await.unwrap().as_ref(), cold.as_slice());
    assert!(
        a.metric("regmirror_passthrough_requests_total{kind=\"manifest\"}")
            .await
            >= 1.0
    );
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

/// On a real distributed store: three Garage nodes (replication factor 3, one per zone)
/// behind nginx. One node down changes nothing; two down (no quorum) and the mirror serves
/// degraded; a replica started then starts; with the nodes back both are ready within 30
/// seconds, without a restart, and keep what they pull again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_quorum_degrades_and_recovers_on_a_three_node_garage() {
    use common::garage_cluster::GarageCluster;
    let test = "a_lost_quorum_degrades_and_recovers_on_a_three_node_garage";
    let Some(mut garage) = GarageCluster::start(test).await else {
        return;
    };
    let Some(redis) = common::cluster::Redis::start(test).await else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let blobs: Vec<(Vec<u8>, String)> = (0..5)
        .map(|_| {
            let bytes = common::random_bytes(150 * 1024);
            let digest = fake.put_blob(bytes.clone());
            (bytes, digest)
        })
        .collect();
    let storage = garage.storage_keys("quorum");
    // Two replicas of one cluster: Redis shares their fetches.
    let secret: String = common::random_bytes(32)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let rest = format!(
        "[cluster]\nsecret = \"{secret}\"\nredis_url = \"{}\"\n[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        redis.url(),
        fake.url()
    );
    let a = TestMirror::start_storage(tempfile::tempdir().unwrap(), &storage, &rest).await;
    let pull = |m: &TestMirror, i: usize| {
        let (bytes, digest) = blobs[i].clone();
        let url = m.url(&format!("/v2/app/blobs/{digest}"));
        let client = m.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap().as_ref(), bytes.as_slice());
        }
    };
    pull(&a, 0).await;
    a.fills_settled().await;

    // One node down: quorum holds, nothing visible.
    garage.kill(2);
    pull(&a, 1).await;
    a.fills_settled().await;
    assert_eq!(push_blob(&a, b"one node down").await.status(), 201);
    assert_eq!(
        a.metric("regmirror_passthrough_requests_total{kind=\"blob\"}")
            .await,
        0.0
    );
    common::eventually_async(10, "ready with one node down", || async {
        readyz(&a).await == (200, "ready\n".to_owned())
    })
    .await;

    // Two down: no quorum.
    garage.kill(1);
    pull(&a, 0).await; // the hot cache
    pull(&a, 2).await; // passed through
    common::eventually_async(30, "the pass-through counted", || async {
        a.metric("regmirror_passthrough_requests_total{kind=\"blob\"}")
            .await
            >= 1.0
    })
    .await;
    let pushed = push_blob(&a, b"no quorum").await;
    assert_eq!(pushed.status(), 503);
    common::eventually_async(30, "/readyz to say degraded", || async {
        let (status, text) = readyz(&a).await;
        status == 200 && text.starts_with("degraded")
    })
    .await;

    // A replica started now starts, not ready.
    let b = TestMirror::start_storage(tempfile::tempdir().unwrap(), &storage, &rest).await;
    assert_eq!(readyz(&b).await.0, 503);
    // A cold blob asked of both at once: whichever leads the fetch for the cluster cannot
    // keep it, and neither client waits on the other's claim.
    tokio::join!(pull(&a, 4), pull(&b, 4));

    // The nodes come back: ready within 30 seconds, without a restart.
    garage.restart(1);
    garage.restart(2);
    for (name, m) in [("a", &a), ("b", &b)] {
        common::eventually_async(30, &format!("replica {name} ready"), || async {
            readyz(m).await == (200, "ready\n".to_owned())
        })
        .await;
    }
    pull(&a, 3).await;
    a.fills_settled().await;
    let hex = blobs[3].1.strip_prefix("sha256:").unwrap();
    let key = format!("quorum/blobs/sha256/{}/{hex}", &hex[..2]);
    let bucket = garage.backend("");
    use regmirror::store::Backend;
    common::eventually_async(20, "the new pull kept in the bucket", || async {
        bucket.stat(&key).await.ok().flatten().is_some()
    })
    .await;
    common::eventually_async(20, "pushes land again", || async {
        push_blob(&a, b"quorum is back").await.status() == 201
    })
    .await;
}

//! A broken or hostile upstream: one that hangs before its headers, redirects blobs to a host
//! that asks for our credentials, claims absurd token lifetimes, or sends endless bodies. The
//! mirror must bound what it waits for and holds, keep its credentials home, serve what it has
//! cached, and recover when the upstream does.

mod common;

use std::time::{Duration, Instant};

use common::TestMirror;
use common::error_code as code;
use common::fake_upstream::{Auth, FakeUpstream, Fault};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn upstream_toml(url: &str, extra: &str) -> String {
    format!("[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n{extra}\n")
}

fn manifest(marker: &str) -> Vec<u8> {
    let layer = common::fake_upstream::sha256(marker.as_bytes());
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer, "size": 1},
        "layers": [],
        "annotations": {"marker": marker}
    })
    .to_string()
    .into_bytes()
}

/// The upstream accepts connections and requests, and never sends headers: token fetches,
/// HEAD revalidations, manifests, tag lists and blob fills all give up after
/// `response_timeout`. A cached tag is served stale, the rest gets 503, and once the upstream
/// recovers the next requests start fresh fetches instead of joining dead ones.
#[tokio::test]
async fn a_hung_upstream_is_given_up_on_and_recovery_starts_afresh() {
    // Tokens that live one second are never cached, so every request asks the (hanging)
    // token endpoint first.
    let fake = FakeUpstream::start(Auth::Bearer {
        expires_in: 1,
        credentials: None,
    })
    .await;
    fake.put_manifest("library/app", "v1", manifest("v1"), OCI_MANIFEST);
    let blob = common::random_bytes(10_000);
    let digest = fake.put_blob(blob.clone());
    let mirror = TestMirror::start(&upstream_toml(
        &fake.url(),
        "tag_ttl = \"0s\"\nresponse_timeout = \"300ms\"",
    ))
    .await;
    assert_eq!(mirror.get("/v2/app/manifests/v1").await.status(), 200);

    fake.set_hang(true);
    let started = Instant::now();
    let stale = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-regmirror-cache"], "stale");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The upstream just failed to answer: the next pulls of cached tags do not wait for it
    // again (no request reaches it) but are served stale at once.
    let asked = fake.seen().len();
    for _ in 0..3 {
        let again = mirror.get("/v2/app/manifests/v1").await;
        assert_eq!(again.headers()["x-regmirror-cache"], "stale");
    }
    assert_eq!(
        fake.seen().len(),
        asked,
        "the hung upstream was asked again"
    );
    for path in [
        "/v2/app/manifests/v2".to_owned(),
        format!("/v2/app/blobs/{digest}"),
        "/v2/app/tags/list".to_owned(),
    ] {
        let started = Instant::now();
        let r = mirror.get(&path).await;
        assert_eq!(code(r).await, (503, "UNAVAILABLE".into()), "{path}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    let head = mirror.head(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(head.status(), 404, "a blob HEAD answers unknown");
    assert!(
        fake.count("GET", "/token") >= 4,
        "the token endpoint was asked"
    );
    assert!(
        mirror
            .metric("regmirror_upstream_requests_total{method=\"GET\",status=\"timeout\",upstream=\"docker.io\"}")
            .await
            >= 4.0
    );

    fake.set_hang(false);
    fake.put_manifest("library/app", "v2", manifest("v2"), OCI_MANIFEST);
    let fresh = mirror.get("/v2/app/manifests/v2").await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["x-regmirror-cache"], "miss");
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    let revalidated = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(revalidated.headers()["x-regmirror-cache"], "revalidated");
}

/// A blob redirect to a host whose 401 names its own token realm: the mirror sends that host
/// none of the upstream's credentials, does not ask its realm for a token, and keeps using
/// the upstream's own challenge afterwards.
#[tokio::test]
async fn a_redirect_targets_challenge_gets_no_credentials_and_does_not_stick() {
    let registry = FakeUpstream::start(Auth::Basic {
        user: "mirror".into(),
        password: "s3cret".into(),
    })
    .await;
    let cdn = FakeUpstream::start(Auth::Bearer {
        expires_in: 300,
        credentials: Some(("mirror".into(), "s3cret".into())),
    })
    .await;
    let blob = common::random_bytes(5_000);
    let digest = registry.put_blob(blob.clone());
    registry.set_fault(&digest, Some(Fault::Redirect));
    registry.set_redirect(&format!("{}/v2/cdn/blobs", cdn.url()));
    registry.put_manifest("library/app", "v1", manifest("v1"), OCI_MANIFEST);
    let cdn_host = cdn.url().trim_start_matches("http://").to_owned();
    let mirror = TestMirror::start(&upstream_toml(
        &registry.url(),
        &format!(
            "tag_ttl = \"0s\"\nusername = \"mirror\"\npassword = \"s3cret\"\nredirect_allow = [\"{cdn_host}\"]"
        ),
    ))
    .await;
    assert_eq!(mirror.get("/v2/app/manifests/v1").await.status(), 200);

    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(code(r).await, (503, "UNAVAILABLE".into()));
    let seen = cdn.seen();
    assert!(!seen.is_empty(), "the redirect was followed");
    assert!(
        seen.iter().all(|s| s.authorization.is_none()),
        "credentials reached the redirect target: {seen:?}"
    );
    assert_eq!(cdn.count("GET", "/token"), 0, "the foreign realm was asked");

    // The upstream's own challenge still holds: revalidation and new pulls work with Basic.
    registry.clear_seen();
    let r = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-regmirror-cache"], "revalidated");
    assert!(
        registry.seen().iter().any(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "the upstream still gets its credentials"
    );
}

/// `expires_in: 18446744073709551615` neither panics a task nor poisons the repository.
#[tokio::test]
async fn an_absurd_token_lifetime_is_harmless() {
    let fake = FakeUpstream::start(Auth::Bearer {
        expires_in: u64::MAX,
        credentials: None,
    })
    .await;
    fake.put_manifest("library/app", "v1", manifest("v1"), OCI_MANIFEST);
    let blob = common::random_bytes(1_000);
    let digest = fake.put_blob(blob.clone());
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "tag_ttl = \"0s\"")).await;
    for _ in 0..2 {
        assert_eq!(mirror.get("/v2/app/manifests/v1").await.status(), 200);
    }
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
}

/// An endless tag list is cut off at the cap instead of being held in memory.
#[tokio::test]
async fn an_endless_upstream_tag_list_is_refused() {
    let fake = FakeUpstream::start(Auth::None).await;
    fake.set_endless_tag_list(true);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "")).await;
    let started = Instant::now();
    let r = mirror.get("/v2/app/tags/list").await;
    assert_eq!(code(r).await, (503, "UNAVAILABLE".into()));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A blob body with no length that never ends is aborted once it passes `max_upload_size`,
/// and nothing is kept.
#[tokio::test]
async fn an_endless_blob_body_is_aborted_at_the_cap() {
    let fake = FakeUpstream::start(Auth::None).await;
    let digest = fake.put_blob(common::random_bytes(1_000));
    fake.set_fault(&digest, Some(Fault::Endless));
    let dir = tempfile::tempdir().unwrap();
    let mirror = TestMirror::start_storage(
        dir,
        "max_upload_size = \"4MiB\"",
        &upstream_toml(&fake.url(), ""),
    )
    .await;
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert!(
        r.status() != 200 || r.bytes().await.is_err(),
        "an endless body never ends in success"
    );
    mirror.fills_settled().await;
    assert!(!mirror.blob_path(&digest).exists());
    assert_eq!(
        mirror
            .metric("regmirror_fills_aborted_total{reason=\"too_large\",upstream=\"docker.io\"}")
            .await,
        1.0
    );
    let tmp = std::fs::read_dir(mirror.store().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "the spool is gone");
}

/// An upstream whose certificate comes from a private CA is mirrored once `ca_file` names that
/// CA, and refused without it. The upstream here is a second regmirror serving TLS.
#[tokio::test]
async fn an_upstream_behind_a_private_ca_needs_its_ca_file() {
    let fake = FakeUpstream::start(Auth::None).await;
    fake.put_manifest("library/app", "v1", manifest("v1"), OCI_MANIFEST);
    let work = tempfile::tempdir().unwrap();
    let (crt, tls) = common::test_certificate(work.path());
    let inner = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        &tls,
        &upstream_toml(&fake.url(), ""),
    )
    .await;
    let inner_url = format!("https://127.0.0.1:{}", inner.server.addr.port());

    let untrusting = TestMirror::start(&upstream_toml(&inner_url, "")).await;
    let r = untrusting.get("/v2/app/manifests/v1").await;
    assert_eq!(code(r).await, (503, "UNAVAILABLE".into()));

    let ca = format!("ca_file = \"{}\"", crt.display());
    let trusting = TestMirror::start(&upstream_toml(&inner_url, &ca)).await;
    let r = trusting.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest("v1").as_slice());
}

/// A hostile (or intercepted) upstream redirects a blob GET to an internal address: a cloud
/// metadata service, another loopback port (an admin API), a name that resolves to loopback.
/// The mirror follows none of them, answers 502 naming `redirect_allow`, and the internal
/// service never sees a request. Listed in `redirect_allow`, the same redirect is followed.
#[tokio::test]
async fn redirects_to_internal_addresses_are_refused_unless_allowed() {
    let registry = FakeUpstream::start(Auth::None).await;
    let internal = FakeUpstream::start(Auth::None).await;
    let blob = common::random_bytes(5_000);
    let digest = registry.put_blob(blob.clone());
    internal.put_blob(blob.clone());
    registry.set_fault(&digest, Some(Fault::Redirect));
    let internal_host = internal.url().trim_start_matches("http://").to_owned();
    let port = internal_host.rsplit_once(':').unwrap().1.to_owned();
    let mirror = TestMirror::start(&upstream_toml(&registry.url(), "")).await;
    for target in [
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("{}/v2/cdn/blobs", internal.url()),
        format!("http://localhost:{port}/v2/cdn/blobs"),
        format!("http://[::ffff:127.0.0.1]:{port}/v2/cdn/blobs"),
    ] {
        registry.set_redirect(&target);
        let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.contains("redirect_allow"), "{target}: {body}");
    }
    assert_eq!(internal.seen().len(), 0, "the internal service was reached");
    assert!(!mirror.blob_path(&digest).exists());

    // The operator allows the registry's own object store: followed, verified, kept.
    let allowed = TestMirror::start(&upstream_toml(
        &registry.url(),
        &format!("redirect_allow = [\"{internal_host}\"]"),
    ))
    .await;
    registry.set_redirect(&format!("{}/v2/cdn/blobs", internal.url()));
    let r = allowed.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
}

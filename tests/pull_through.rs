//! The pull-through core against an in-process fake upstream: caching, tag TTLs, HEADs,
//! verification, auth, redirects, routing, errors.

mod common;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream, Fault, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn upstream_toml(url: &str, ttl: &str) -> String {
    format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\ntag_ttl = \"{ttl}\"\n"
    )
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
}

/// A manifest referring to one layer (the mirror does not need the blobs to exist to serve it).
fn manifest_for(layer: &str, marker: &str) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": layer, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 1}],
        "annotations": {"marker": marker}
    })
    .to_string()
    .into_bytes()
}

/// A GET written by hand, so the path reaches the server exactly as given.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn base_endpoint_and_bad_input() {
    let fake = FakeUpstream::start(Auth::None).await;
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;

    let base = mirror.get("/v2/").await;
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    let d = sha256(b"x");
    let cases = [
        ("/v2/Alpine/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/a/manifests/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/.bad", 404, "MANIFEST_UNKNOWN"),
        ("/v2/a/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("/v2/a/blobs/latest", 400, "DIGEST_INVALID"),
        ("/v2/nothing-here", 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        assert_eq!(
            error_code(mirror.get(path).await).await,
            (status, code.to_owned()),
            "{path}"
        );
    }
    // Sent raw: an HTTP client would normalise the `..` away.
    for path in [
        "/v2/a/../b/manifests/latest",
        "/v2/../../etc/blobs/x",
        "/v2/a/%2e%2e/b/manifests/latest",
    ] {
        let (status, body) = raw_get(mirror.server.addr, path).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(body.contains("\"errors\""), "{path}: {body}");
    }
    let put = mirror
        .client
        .put(mirror.url(&format!("/v2/a/blobs/{d}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(put).await, (405, "UNSUPPORTED".to_owned()));
    let bad_range = mirror
        .client
        .get(mirror.url(&format!("/v2/a/blobs/{d}")))
        .header("range", "bytes=9-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(bad_range).await,
        (416, "RANGE_INVALID".to_owned())
    );
    // None of that reached the upstream or left anything in the store.
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
    // The store creates its directories as objects arrive: none, or an empty one.
    let blobs = std::fs::read_dir(mirror.store().join("blobs/sha256")).map_or(0, |d| d.count());
    assert_eq!(blobs, 0);
}

#[tokio::test]
async fn unknown_namespace_never_contacts_anything() {
    let fake = FakeUpstream::start(Auth::None).await;
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let response = mirror
        .get("/v2/library/alpine/manifests/latest?ns=evil.example.com")
        .await;
    assert_eq!(error_code(response).await, (404, "NAME_UNKNOWN".to_owned()));
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn manifest_by_tag_is_served_from_cache_within_ttl() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = manifest_for(&sha256(b"layer"), "one");
    let digest = fake.put_manifest("library/alpine", "3.20", manifest.clone(), OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;

    for expected_cache in ["miss", "hit", "hit"] {
        let response = mirror.get("/v2/alpine/manifests/3.20").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(
            response.headers()["content-length"],
            manifest.len().to_string().as_str()
        );
        assert_eq!(response.headers()["x-regmirror-cache"], expected_cache);
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            manifest.as_slice()
        );
    }
    // By digest: stored when the tag was fetched, so no upstream request either.
    let by_digest = mirror.get(&format!("/v2/alpine/manifests/{digest}")).await;
    assert_eq!(by_digest.status(), 200);
    assert_eq!(
        by_digest.bytes().await.unwrap().as_ref(),
        manifest.as_slice()
    );

    assert_eq!(fake.count("GET", "/manifests/"), 1);
    assert_eq!(fake.count("HEAD", "/manifests/"), 0);
    // One-word names become library/<name> for docker.io, and the upstream request asks for
    // every manifest type, so the bytes kept are the upstream's own.
    let request = &fake.seen()[0];
    assert_eq!(request.path, "/v2/library/alpine/manifests/3.20");
    let accept = request.accept.clone().unwrap_or_default();
    for media_type in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(
            accept.contains(media_type),
            "Accept lacks {media_type}: {accept}"
        );
    }
    let hits = mirror
        .metric("regmirror_cache_lookups_total{kind=\"manifest\",result=\"hit\",upstream=\"docker.io\"}")
        .await;
    assert_eq!(hits, 3.0);
}

#[tokio::test]
async fn stale_tag_is_revalidated_with_head_and_refetched_only_when_changed() {
    let fake = FakeUpstream::start(Auth::None).await;
    let first = manifest_for(&sha256(b"layer"), "first");
    fake.put_manifest("library/app", "latest", first.clone(), OCI_MANIFEST);
    // TTL zero: every tag pull revalidates.
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "0s")).await;

    let r = mirror.get("/v2/app/manifests/latest").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "miss");
    let r = mirror.get("/v2/app/manifests/latest").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "revalidated");
    assert_eq!(r.bytes().await.unwrap().as_ref(), first.as_slice());
    assert_eq!(fake.count("GET", "/manifests/"), 1);
    assert_eq!(fake.count("HEAD", "/manifests/"), 1);

    // The tag moves upstream: HEAD sees a new digest, then one GET fetches it.
    let second = manifest_for(&sha256(b"layer"), "second");
    let second_digest = fake.put_manifest("library/app", "latest", second.clone(), OCI_MANIFEST);
    let r = mirror.get("/v2/app/manifests/latest").await;
    assert_eq!(r.headers()["docker-content-digest"], second_digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), second.as_slice());
    assert_eq!(fake.count("GET", "/manifests/"), 2);
    assert_eq!(fake.count("HEAD", "/manifests/"), 2);

    // A digest reference never contacts the upstream once cached, whatever the TTL.
    fake.clear_seen();
    let r = mirror
        .get(&format!("/v2/app/manifests/{second_digest}"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(fake.seen().is_empty());
}

#[tokio::test]
async fn client_head_never_becomes_upstream_get() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = manifest_for(&sha256(b"layer"), "h");
    let digest = fake.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);
    let blob = random_bytes(1000);
    let blob_digest = fake.put_blob(blob.clone());
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "0s")).await;

    let r = mirror.head("/v2/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        manifest.len().to_string().as_str()
    );
    let r = mirror.head(&format!("/v2/app/blobs/{blob_digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    let missing = mirror
        .head(&format!("/v2/app/blobs/{}", sha256(b"missing")))
        .await;
    assert_eq!(missing.status(), 404);

    // Cached then moved upstream: a HEAD reports the new digest without fetching it.
    mirror
        .get("/v2/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap();
    let moved = fake.put_manifest(
        "library/app",
        "v1",
        manifest_for(&sha256(b"x"), "moved"),
        OCI_MANIFEST,
    );
    let r = mirror.head("/v2/app/manifests/v1").await;
    assert_eq!(r.headers()["docker-content-digest"], moved.as_str());

    assert_eq!(fake.count("GET", "/blobs/"), 0);
    assert_eq!(
        fake.count("GET", "/manifests/"),
        1,
        "only the explicit client GET"
    );
    assert!(!mirror.blob_path(&blob_digest).exists());
}

#[tokio::test]
async fn blobs_are_verified_kept_and_served_with_ranges() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(3 * 1024 * 1024 + 17);
    let digest = fake.put_blob(blob.clone());
    let manifest = manifest_for(&digest, "b");
    fake.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let path = format!("/v2/app/blobs/{digest}");

    let r = mirror.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-regmirror-cache"], "miss");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    mirror.fills_settled().await;
    assert_eq!(std::fs::read(mirror.blob_path(&digest)).unwrap(), blob);

    let r = mirror.get(&path).await;
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());

    let ranged = |range: &'static str| {
        let req = mirror.client.get(mirror.url(&path)).header("range", range);
        async move { req.send().await.unwrap() }
    };
    let r = ranged("bytes=10-19").await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 10-19/{}", blob.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[10..20]);
    let r = ranged("bytes=-5").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &blob[blob.len() - 5..]);
    let r = ranged("bytes=3145745-").await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", blob.len()).as_str()
    );

    // Cross-repository: the store is digest-global.
    let r = mirror.get(&format!("/v2/other/repo/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(fake.count("GET", "/blobs/"), 1);

    // A restart keeps blobs and tag records: nothing goes upstream.
    mirror
        .get("/v2/app/manifests/v1")
        .await
        .bytes()
        .await
        .unwrap();
    let dir = mirror.stop().await;
    fake.clear_seen();
    let mirror = TestMirror::start_in(dir, &upstream_toml(&fake.url(), "1h")).await;
    let r = mirror.get("/v2/app/manifests/v1").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    let r = mirror.get(&path).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
}

/// Whether the client saw a success: a 200 whose whole body arrived. A fill that fails before
/// the response starts gives an error status; one that fails after gives an aborted body.
async fn client_saw_success(response: reqwest::Response) -> bool {
    response.status() == 200 && response.bytes().await.is_ok()
}

fn tmp_is_empty(mirror: &TestMirror) -> bool {
    std::fs::read_dir(mirror.store().join("tmp"))
        .unwrap()
        .count()
        == 0
}

#[tokio::test]
async fn wrong_bytes_abort_the_response_and_nothing_is_kept() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(2 * 1024 * 1024);
    let digest = fake.put_blob(blob.clone());
    fake.set_fault(&digest, Some(Fault::Corrupt));
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let path = format!("/v2/app/blobs/{digest}");

    let r = mirror.get(&path).await;
    assert!(
        !client_saw_success(r).await,
        "the client must see a failure"
    );
    assert!(!mirror.blob_path(&digest).exists());
    // Counted once the fill has ended, which may be just after the client saw it fail.
    common::eventually_async(10, "the mismatch to be counted", || async {
        mirror
            .metric("regmirror_digest_mismatches_total{upstream=\"docker.io\"}")
            .await
            == 1.0
    })
    .await;

    // The upstream heals: the next request fetches again and succeeds.
    fake.set_fault(&digest, None);
    let r = mirror.get(&path).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    assert_eq!(fake.count("GET", "/blobs/"), 2);
    mirror.fills_settled().await;
    assert!(mirror.blob_path(&digest).exists());
    assert!(tmp_is_empty(&mirror));
}

#[tokio::test]
async fn wrong_manifest_bytes_are_refused() {
    let fake = FakeUpstream::start(Auth::None).await;
    let real = manifest_for(&sha256(b"l"), "real");
    // Stored under a digest that is not its own: as if the upstream served other bytes.
    let wrong_digest = sha256(b"something else");
    fake.put_manifest("library/app", &wrong_digest, real, OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let r = mirror
        .get(&format!("/v2/app/manifests/{wrong_digest}"))
        .await;
    assert_eq!(r.status(), 503);
    let hex = wrong_digest.strip_prefix("sha256:").unwrap();
    assert!(
        !mirror
            .store()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .exists()
    );
}

#[tokio::test]
async fn bearer_token_flow_reuses_tokens_until_expiry() {
    let fake = FakeUpstream::start(Auth::Bearer {
        expires_in: 300,
        credentials: None,
    })
    .await;
    let a = fake.put_blob(random_bytes(100));
    let b = fake.put_blob(random_bytes(100));
    fake.put_manifest("library/app", "v1", manifest_for(&a, "t"), OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;

    assert_eq!(mirror.get("/v2/app/manifests/v1").await.status(), 200);
    assert_eq!(fake.tokens_issued(), 1);
    let token_request = fake
        .seen()
        .into_iter()
        .find(|s| s.path == "/token")
        .unwrap();
    let query = token_request.query.unwrap();
    assert!(query.contains("service=fake-registry"), "{query}");
    assert!(
        query.contains("scope=repository%3Alibrary%2Fapp%3Apull"),
        "{query}"
    );

    // Same scope: the cached token is sent up front, no new 401, no new token.
    fake.clear_seen();
    for d in [&a, &b] {
        let r = mirror.get(&format!("/v2/app/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(fake.tokens_issued(), 1);
    assert!(
        fake.seen()
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer token-1"))
    );
}

#[tokio::test]
async fn bearer_tokens_are_renewed_after_expiry() {
    // A one-second token is inside the safety margin: never reused.
    let fake = FakeUpstream::start(Auth::Bearer {
        expires_in: 1,
        credentials: None,
    })
    .await;
    let a = fake.put_blob(random_bytes(100));
    let b = fake.put_blob(random_bytes(100));
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    for d in [&a, &b] {
        let r = mirror.get(&format!("/v2/app/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(fake.tokens_issued(), 2);
}

#[tokio::test]
async fn bearer_with_credentials_and_without() {
    let creds = Some(("robot".to_owned(), "s3cret".to_owned()));
    let fake = FakeUpstream::start(Auth::Bearer {
        expires_in: 300,
        credentials: creds,
    })
    .await;
    let manifest = manifest_for(&sha256(b"x"), "c");
    fake.put_manifest("org/private", "v1", manifest.clone(), OCI_MANIFEST);

    let anonymous = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let r = anonymous.get("/v2/org/private/manifests/v1").await;
    assert_eq!(error_code(r).await, (401, "UNAUTHORIZED".to_owned()));

    // SAFETY: tests in this binary that read this variable name it uniquely.
    unsafe { std::env::set_var("REGMIRROR_TEST_BEARER_PASSWORD", "s3cret") };
    let toml = format!(
        "{}username = \"robot\"\npassword_env = \"REGMIRROR_TEST_BEARER_PASSWORD\"\n",
        upstream_toml(&fake.url(), "1h")
    );
    let authed = TestMirror::start(&toml).await;
    let r = authed.get("/v2/org/private/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
}

#[tokio::test]
async fn basic_credentials() {
    let fake = FakeUpstream::start(Auth::Basic {
        user: "u".into(),
        password: "p".into(),
    })
    .await;
    let blob = random_bytes(5000);
    let digest = fake.put_blob(blob.clone());
    let toml = format!(
        "{}username = \"u\"\npassword = \"p\"\n",
        upstream_toml(&fake.url(), "1h")
    );
    let mirror = TestMirror::start(&toml).await;
    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());

    let wrong = format!(
        "{}username = \"u\"\npassword = \"nope\"\n",
        upstream_toml(&fake.url(), "1h")
    );
    let mirror = TestMirror::start(&wrong).await;
    let r = mirror
        .get(&format!(
            "/v2/app/blobs/{}",
            fake.put_blob(random_bytes(10))
        ))
        .await;
    assert_eq!(error_code(r).await, (401, "UNAUTHORIZED".to_owned()));
}

#[tokio::test]
async fn blob_redirects_are_followed_without_our_credentials() {
    let registry = FakeUpstream::start(Auth::Bearer {
        expires_in: 300,
        credentials: None,
    })
    .await;
    let cdn = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(100_000);
    let digest = registry.put_blob(blob.clone());
    cdn.put_blob(blob.clone());
    registry.set_fault(&digest, Some(Fault::Redirect));
    // The CDN serves blobs at /v2/cdn/blobs/<digest>.
    registry.set_redirect(&format!("{}/v2/cdn/blobs", cdn.url()));
    // The CDN is on loopback here, as a private registry's object store would be: allowed.
    let cdn_host = cdn.url().trim_start_matches("http://").to_owned();
    let mirror = TestMirror::start(&format!(
        "{}redirect_allow = [\"{cdn_host}\"]\n",
        upstream_toml(&registry.url(), "1h")
    ))
    .await;

    let r = mirror.get(&format!("/v2/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    let cdn_requests = cdn.seen();
    assert_eq!(cdn_requests.len(), 1);
    assert_eq!(
        cdn_requests[0].authorization, None,
        "credentials leaked to the CDN"
    );
}

#[tokio::test]
async fn routes_by_ns_and_path_prefix() {
    let hub = FakeUpstream::start(Auth::None).await;
    let other = FakeUpstream::start(Auth::None).await;
    let hub_manifest = manifest_for(&sha256(b"1"), "hub");
    let other_manifest = manifest_for(&sha256(b"2"), "other");
    hub.put_manifest("library/alpine", "v1", hub_manifest.clone(), OCI_MANIFEST);
    other.put_manifest("org/app", "v1", other_manifest.clone(), OCI_MANIFEST);
    let toml = format!(
        "{}[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n",
        upstream_toml(&hub.url(), "1h"),
        other.url()
    );
    let mirror = TestMirror::start(&toml).await;

    let r = mirror
        .get("/v2/library/alpine/manifests/v1?ns=docker.io")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-namespace"], "docker.io");
    assert_eq!(r.bytes().await.unwrap().as_ref(), hub_manifest.as_slice());

    let r = mirror.get("/v2/org/app/manifests/v1?ns=ghcr.io").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), other_manifest.as_slice());

    let r = mirror.get("/v2/ghcr.io/org/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("oci-namespace").is_none());
    assert_eq!(r.bytes().await.unwrap().as_ref(), other_manifest.as_slice());

    assert_eq!(hub.count("GET", "/v2/library/alpine/manifests/v1"), 1);
    assert_eq!(
        other.count("GET", "/v2/org/app/manifests/v1"),
        1,
        "cached per upstream, one fetch"
    );
}

#[tokio::test]
async fn tags_list_is_passed_on() {
    let fake = FakeUpstream::start(Auth::None).await;
    for tag in ["b", "a", "c"] {
        fake.put_manifest(
            "library/app",
            tag,
            manifest_for(&sha256(tag.as_bytes()), tag),
            OCI_MANIFEST,
        );
    }
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let r = mirror.get("/v2/app/tags/list?n=2&last=a").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["name"], "app");
    assert_eq!(body["tags"], serde_json::json!(["a", "b", "c"]));
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v2/library/app/tags/list");
    assert_eq!(seen[0].query.as_deref(), Some("n=2&last=a"));

    let bad = mirror.get("/v2/app/tags/list?n=many").await;
    assert_eq!(
        error_code(bad).await,
        (400, "PAGINATION_NUMBER_INVALID".to_owned())
    );
}

#[tokio::test]
async fn metrics_are_exposed() {
    let fake = FakeUpstream::start(Auth::None).await;
    let digest = fake.put_blob(random_bytes(4096));
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    for _ in 0..2 {
        mirror
            .get(&format!("/v2/app/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap();
    }
    let miss =
        "regmirror_cache_lookups_total{kind=\"blob\",result=\"miss\",upstream=\"docker.io\"}";
    let hit = "regmirror_cache_lookups_total{kind=\"blob\",result=\"hit\",upstream=\"docker.io\"}";
    assert_eq!(mirror.metric(miss).await, 1.0);
    assert_eq!(mirror.metric(hit).await, 1.0);
    assert_eq!(
        mirror
            .metric("regmirror_served_bytes_total{source=\"cache\",upstream=\"docker.io\"}")
            .await,
        4096.0
    );
    assert_eq!(
        mirror
            .metric("regmirror_served_bytes_total{source=\"upstream\",upstream=\"docker.io\"}")
            .await,
        4096.0
    );
    assert_eq!(
        mirror
            .metric("regmirror_upstream_requests_total{method=\"GET\",status=\"200\",upstream=\"docker.io\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn containerd_resolve_by_head_then_get_by_digest_is_cached() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = manifest_for(&sha256(b"l"), "ctr");
    let digest = fake.put_manifest("library/alpine", "3.20", manifest.clone(), OCI_MANIFEST);
    let mirror = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;

    // containerd: HEAD by tag to resolve, then GET by digest, every request with ?ns=.
    let r = mirror
        .head("/v2/library/alpine/manifests/3.20?ns=docker.io")
        .await;
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let r = mirror
        .get(&format!(
            "/v2/library/alpine/manifests/{digest}?ns=docker.io"
        ))
        .await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    assert_eq!(
        fake.count("GET", "/manifests/3.20"),
        0,
        "a client HEAD never becomes a GET"
    );

    // The next pull resolves the tag from the cache without asking the upstream.
    fake.clear_seen();
    let r = mirror
        .head("/v2/library/alpine/manifests/3.20?ns=docker.io")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let r = mirror.get("/v2/library/alpine/manifests/3.20").await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    assert!(fake.seen().is_empty());
}

/// A cached tag that matches `immutable_tags` is never revalidated: after its first fill the
/// upstream sees no request for it, however old the record, while other tags still are.
#[tokio::test]
async fn immutable_tags_are_never_revalidated() {
    let fake = FakeUpstream::start(Auth::None).await;
    let layer = sha256(b"layer");
    fake.put_manifest(
        "library/app",
        "v1.2.3",
        manifest_for(&layer, "a"),
        OCI_MANIFEST,
    );
    fake.put_manifest(
        "library/app",
        "latest",
        manifest_for(&layer, "b"),
        OCI_MANIFEST,
    );
    let toml = format!(
        "{}immutable_tags = ['v?\\d+\\.\\d+\\.\\d+', 'release-.*']\n",
        upstream_toml(&fake.url(), "0s")
    );
    let mirror = TestMirror::start(&toml).await;
    for tag in ["v1.2.3", "latest"] {
        assert_eq!(
            mirror
                .get(&format!("/v2/app/manifests/{tag}"))
                .await
                .status(),
            200
        );
    }
    fake.clear_seen();
    for _ in 0..3 {
        let r = mirror.get("/v2/app/manifests/v1.2.3").await;
        assert_eq!(r.headers()["x-regmirror-cache"], "hit");
        let r = mirror.head("/v2/app/manifests/v1.2.3").await;
        assert_eq!(r.headers()["x-regmirror-cache"], "hit");
    }
    assert_eq!(fake.count("HEAD", "/manifests/v1.2.3"), 0);
    assert_eq!(fake.count("GET", "/manifests/v1.2.3"), 0);
    // The pattern matches the whole tag: "v1.2.3-rc1" is not immutable, nor is "latest".
    let r = mirror.get("/v2/app/manifests/latest").await;
    assert_eq!(r.headers()["x-regmirror-cache"], "revalidated");
    assert_eq!(fake.count("HEAD", "/manifests/latest"), 1);
}

/// `/readyz` is anonymous and each probe writes, reads and deletes an object in the store: a
/// flood of them makes one probe, its answer shared.
#[tokio::test]
async fn readiness_probes_are_shared() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start(&upstream_toml(&fake.url(), "1h")).await;
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let url = m.url("/readyz");
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 200);
    }
    assert_eq!(m.metric("regmirror_readiness_probes_total").await, 1.0);
}

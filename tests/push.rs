//! Issue 4: the push API and local content, from the distribution spec's conformance
//! categories (pull, push, content discovery, content management), plus htpasswd auth.

mod common;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream, sha256};
use common::random_bytes;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

async fn mirror_with(fake: &FakeUpstream, storage: &str, auth: &str) -> TestMirror {
    // Without users, the tests push anonymously: the operator's explicit choice.
    let auth = if auth.is_empty() {
        "[auth]\nanonymous_push = true\n"
    } else {
        auth
    };
    let toml = format!(
        "{auth}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    );
    // [storage] keys go through start_with's own [storage] table: append them there.
    TestMirror::start_storage(tempfile::tempdir().unwrap(), storage, &toml).await
}

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Monolithic upload; returns the digest.
async fn push_blob(m: &TestMirror, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = m
        .client
        .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    digest
}

fn image_manifest(
    config: &str,
    config_len: usize,
    layers: &[(&str, usize)],
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config, "size": config_len},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s
        })).collect::<Vec<_>>(),
    });
    if let Some((d, s)) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s});
        m["artifactType"] = serde_json::json!("application/vnd.example.sbom");
    }
    m.to_string().into_bytes()
}

async fn put_manifest(
    m: &TestMirror,
    repo: &str,
    reference: &str,
    bytes: &[u8],
) -> reqwest::Response {
    m.client
        .put(m.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
}

/// Pushes a config, a layer and a manifest tagged `tag`; returns the manifest digest and bytes.
async fn push_image(m: &TestMirror, repo: &str, tag: &str) -> (String, Vec<u8>) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(5000);
    let config_digest = push_blob(m, repo, &config).await;
    let layer_digest = push_blob(m, repo, &layer).await;
    let manifest = image_manifest(
        &config_digest,
        config.len(),
        &[(&layer_digest, layer.len())],
        None,
    );
    let r = put_manifest(m, repo, tag, &manifest).await;
    assert_eq!(r.status(), 201);
    let digest = sha256(&manifest);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        r.headers()["location"],
        format!("/v2/{repo}/manifests/{digest}").as_str()
    );
    (digest, manifest)
}

#[tokio::test]
async fn push_then_pull_without_the_upstream() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let (digest, manifest) = push_image(&m, "team/app", "v1").await;
    fake.set_down(true);

    let r = m.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        manifest.as_slice(),
        "bytes exactly as pushed"
    );
    let r = m.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(r.status(), 200);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layer = parsed["layers"][0]["digest"].as_str().unwrap();
    let r = m.get(&format!("/v2/team/app/blobs/{layer}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), layer);
}

#[tokio::test]
async fn pushed_tags_win_over_the_upstream() {
    let fake = FakeUpstream::start(Auth::None).await;
    let upstream_manifest = image_manifest(&sha256(b"c"), 1, &[], None);
    fake.put_manifest("library/app", "v1", upstream_manifest, OCI_MANIFEST);
    let m = mirror_with(&fake, "", "").await;
    let (digest, _) = push_image(&m, "app", "v1").await;
    let r = m.get("/v2/app/manifests/v1").await;
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        fake.count("GET", "/manifests/"),
        0,
        "local tags never go upstream"
    );
}

#[tokio::test]
async fn chunked_upload_status_out_of_order_and_cancel() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let blob = random_bytes(300_000);
    let digest = sha256(&blob);

    let r = m
        .client
        .post(m.url("/v2/team/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(r.headers().contains_key("docker-upload-uuid"));

    let patch = |range: &str, bytes: &[u8]| {
        m.client
            .patch(m.url(&location))
            .header("content-range", range)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
    };
    let r = patch("0-99999", &blob[..100_000]).await.unwrap();
    assert_eq!(r.status(), 202, "{location}: {}", r.text().await.unwrap());
    assert_eq!(r.headers()["range"], "0-99999");
    // Out of order: starts past the end.
    let r = patch("200000-299999", &blob[200_000..]).await.unwrap();
    assert_eq!(r.status(), 416);
    let r = patch("100000-199999", &blob[100_000..200_000])
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let status = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(status.headers()["range"], "0-199999");

    // Final chunk with the PUT; a wrong digest first: refused, nothing kept.
    let wrong = sha256(b"wrong");
    let r = m
        .client
        .put(m.url(&format!("{location}&digest={wrong}")))
        .body(blob[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "DIGEST_INVALID".to_owned()));
    assert!(!m.blob_path(&wrong).exists());
    assert!(!m.blob_path(&digest).exists());
    // The failed completion ended the session.
    let r = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(code(r).await, (404, "BLOB_UPLOAD_UNKNOWN".to_owned()));

    // Again, right this time, in two chunks and a PUT.
    let location = m.open_upload("team/app").await;
    m.client
        .patch(m.url(&location))
        .body(blob[..150_000].to_vec())
        .send()
        .await
        .unwrap();
    let r = m
        .client
        .put(m.url(&format!("{location}&digest={digest}")))
        .body(blob[150_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(std::fs::read(m.blob_path(&digest)).unwrap(), blob);

    // Cancel.
    let location = m.open_upload("team/app").await;
    let r = m.client.delete(m.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Garbage ids are unknown sessions, not paths.
    let r = m
        .client
        .get(m.url("/v2/team/app/blobs/uploads/..%2f..%2fetc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        std::fs::read_dir(m.store().join("uploads"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn mount_and_limits() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "max_upload_size = \"64KiB\"", "").await;
    let blob = random_bytes(1000);
    let digest = push_blob(&m, "a/one", &blob).await;

    let r = m
        .client
        .post(m.url(&format!(
            "/v2/b/two/blobs/uploads/?mount={digest}&from=a/one"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/v2/b/two/blobs/{digest}").as_str()
    );
    // Mount of an unknown blob falls back to a session.
    let unknown = sha256(b"unknown");
    let r = m
        .client
        .post(m.url(&format!(
            "/v2/b/two/blobs/uploads/?mount={unknown}&from=a/one"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Too large: refused, nothing kept.
    let big = random_bytes(100 * 1024);
    let big_digest = sha256(&big);
    let r = m
        .client
        .post(m.url(&format!("/v2/a/one/blobs/uploads/?digest={big_digest}")))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (413, "SIZE_INVALID".to_owned()));
    assert!(!m.blob_path(&big_digest).exists());

    // A wrong monolithic digest.
    let r = m
        .client
        .post(m.url(&format!("/v2/a/one/blobs/uploads/?digest={unknown}")))
        .body(b"not that".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "DIGEST_INVALID".to_owned()));
    assert!(!m.blob_path(&unknown).exists());
    let r = m
        .client
        .post(m.url("/v2/a/one/blobs/uploads/?digest=sha256:nothex"))
        .body(b"x".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "DIGEST_INVALID".to_owned()));
}

#[tokio::test]
async fn manifest_push_is_checked() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let config = push_blob(&m, "r", b"{}").await;
    let missing = sha256(b"missing layer");

    let refs = image_manifest(&config, 2, &[(&missing, 13)], None);
    let r = put_manifest(&m, "r", "v1", &refs).await;
    assert_eq!(code(r).await, (400, "MANIFEST_BLOB_UNKNOWN".to_owned()));
    let r = put_manifest(&m, "r", "v1", b"{not json").await;
    assert_eq!(code(r).await, (400, "MANIFEST_INVALID".to_owned()));
    let r = m
        .client
        .put(m.url("/v2/r/manifests/v1"))
        .header("content-type", "text/plain")
        .body(image_manifest(&config, 2, &[], None))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (400, "MANIFEST_INVALID".to_owned()));
    let good = image_manifest(&config, 2, &[], None);
    let r = put_manifest(&m, "r", &sha256(b"other"), &good).await;
    assert_eq!(code(r).await, (400, "DIGEST_INVALID".to_owned()));
    let huge = vec![b' '; 5 * 1024 * 1024];
    let r = put_manifest(&m, "r", "v1", &huge).await;
    assert_eq!(code(r).await.0, 413);
    let r = put_manifest(&m, "Bad/Name", "v1", &good).await;
    assert_eq!(code(r).await, (400, "NAME_INVALID".to_owned()));
    // None of those left a tag or a manifest.
    assert_eq!(m.get("/v2/r/manifests/v1").await.status(), 404);
    assert!(!m.blob_path(&sha256(&refs)).exists());

    // By digest, then an index referencing it.
    let digest = sha256(&good);
    let r = put_manifest(&m, "r", &digest, &good).await;
    assert_eq!(r.status(), 201);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": good.len()}],
    })
    .to_string();
    let r = m
        .client
        .put(m.url("/v2/r/manifests/multi"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = m.get("/v2/r/manifests/multi").await;
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(r.text().await.unwrap(), index);
}

#[tokio::test]
async fn tag_listing_catalog_and_referrers() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    for tag in ["c", "a", "b", "d"] {
        push_image(&m, "team/app", tag).await;
    }
    push_image(&m, "team/other", "v1").await;

    let r = m.get("/v2/team/app/tags/list?n=2").await;
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    assert_eq!(link, "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\"");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["a", "b"]));
    let r = m.get("/v2/team/app/tags/list?n=2&last=b").await;
    assert!(r.headers().get("link").is_none());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["c", "d"]));

    let r = m.get("/v2/_catalog").await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["repositories"],
        serde_json::json!(["team/app", "team/other"])
    );
    let r = m.get("/v2/_catalog?n=1").await;
    assert!(
        r.headers()["link"]
            .to_str()
            .unwrap()
            .contains("last=team%2Fapp")
    );

    // Referrers: two artifacts refer to one image, one of them with another type.
    let (subject, subject_bytes) = push_image(&m, "team/app", "signed").await;
    let config = push_blob(&m, "team/app", b"{}").await;
    let sbom = image_manifest(&config, 2, &[], Some((&subject, subject_bytes.len())));
    let r = put_manifest(&m, "team/app", &sha256(&sbom), &sbom).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["oci-subject"], subject.as_str());
    let mut sig: serde_json::Value = serde_json::from_slice(&sbom).unwrap();
    sig["artifactType"] = serde_json::json!("application/vnd.example.signature");
    let sig = sig.to_string().into_bytes();
    put_manifest(&m, "team/app", &sha256(&sig), &sig).await;

    let r = m.get(&format!("/v2/team/app/referrers/{subject}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["manifests"].as_array().unwrap().len(), 2);
    let r = m
        .get(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let body: serde_json::Value = r.json().await.unwrap();
    let manifests = body["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], sha256(&sbom).as_str());
    assert_eq!(manifests[0]["artifactType"], "application/vnd.example.sbom");
    let r = m
        .get(&format!("/v2/team/app/referrers/{}", sha256(b"none")))
        .await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["manifests"], serde_json::json!([]));
}

#[tokio::test]
async fn deletes_only_when_enabled() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let (digest, _) = push_image(&m, "r", "v1").await;
    let r = m
        .client
        .delete(m.url("/v2/r/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (405, "UNSUPPORTED".to_owned()));
    assert_eq!(m.get("/v2/r/manifests/v1").await.status(), 200);

    let m = mirror_with(&fake, "delete = true", "").await;
    let (digest2, manifest) = push_image(&m, "r", "v1").await;
    assert_ne!(digest, digest2, "a new random layer, a new image");
    let layer =
        serde_json::from_slice::<serde_json::Value>(&manifest).unwrap()["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
    m.client
        .put(m.url("/v2/r/manifests/v2"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();

    // Tag.
    let r = m
        .client
        .delete(m.url("/v2/r/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(m.get("/v2/r/manifests/v2").await.status(), 404);
    assert_eq!(m.get("/v2/r/manifests/v1").await.status(), 200);
    // Manifest by digest: its tags go with it.
    let r = m
        .client
        .delete(m.url(&format!("/v2/r/manifests/{digest2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        m.get(&format!("/v2/r/manifests/{digest2}")).await.status(),
        404
    );
    assert_eq!(m.get("/v2/r/manifests/v1").await.status(), 404);
    let r = m
        .client
        .delete(m.url(&format!("/v2/r/manifests/{digest2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (404, "MANIFEST_UNKNOWN".to_owned()));
    // Blob.
    let r = m
        .client
        .delete(m.url(&format!("/v2/r/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = m.get(&format!("/v2/r/blobs/{layer}")).await;
    assert_eq!(code(r).await.0, 404);
}

#[tokio::test]
async fn htpasswd_guards_pushes_and_optionally_pulls() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    let auth = format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display());
    let m = mirror_with(&fake, "", &auth).await;

    let blob = b"content".to_vec();
    let digest = sha256(&blob);
    let url = m.url(&format!("/v2/r/blobs/uploads/?digest={digest}"));
    let r = m.client.post(&url).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:"),
        "{challenge}"
    );
    assert!(
        challenge.ends_with("/token\",service=\"regmirror\",scope=\"repository:r:pull,push\""),
        "{challenge}"
    );
    assert_eq!(code(r).await.1, "UNAUTHORIZED");
    let r = m
        .client
        .post(&url)
        .basic_auth("ci", Some("wrong"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!m.blob_path(&digest).exists());
    // Basic credentials on the request itself.
    let r = m
        .client
        .post(&url)
        .basic_auth("ci", Some("pushme"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The token flow, as docker and skopeo use it: ping, token with credentials, push.
    let ping = m.get("/v2/").await;
    assert_eq!(
        ping.status(),
        401,
        "a ping without credentials is challenged"
    );
    let token = |user: Option<(&str, &str)>| {
        let mut req = m
            .client
            .get(m.url("/token?service=regmirror&scope=repository:r:pull,push"));
        if let Some((u, p)) = user {
            req = req.basic_auth(u, Some(p));
        }
        async move { req.send().await.unwrap() }
    };
    let t: serde_json::Value = token(Some(("ci", "pushme"))).await.json().await.unwrap();
    let pusher = t["token"].as_str().unwrap().to_owned();
    assert_eq!(
        token(Some(("ci", "bad"))).await.status(),
        401,
        "docker login with a wrong password fails"
    );
    let other = b"other".to_vec();
    let other_digest = sha256(&other);
    let r = m
        .client
        .post(m.url(&format!("/v2/r/blobs/uploads/?digest={other_digest}")))
        .bearer_auth(&pusher)
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Anonymous: a token that pulls but does not push; plain anonymous pulls work too.
    let t: serde_json::Value = token(None).await.json().await.unwrap();
    let anonymous = t["token"].as_str().unwrap().to_owned();
    let r = m
        .client
        .get(m.url("/v2/"))
        .bearer_auth(&anonymous)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = m
        .client
        .post(&url)
        .bearer_auth(&anonymous)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(m.get(&format!("/v2/r/blobs/{digest}")).await.status(), 200);
    let r = m
        .client
        .get(m.url(&format!("/v2/r/blobs/{digest}")))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let closed = format!("{auth}anonymous_pull = false\n");
    let m = mirror_with(&fake, "", &closed).await;
    assert_eq!(m.get(&format!("/v2/r/blobs/{digest}")).await.status(), 401);
    let r = m.client.get(m.url("/token")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = m
        .client
        .get(m.url("/v2/"))
        .basic_auth("ci", Some("pushme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        m.get("/metrics").await.status(),
        200,
        "metrics stay open for scrapers"
    );
}

#[tokio::test]
async fn idle_upload_sessions_expire() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "upload_ttl = \"1s\"", "").await;
    let location = m.open_upload("r").await;
    m.client
        .patch(m.url(&location))
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    let uploads = m.store().join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1);
    common::eventually(20, "the idle session to expire", || {
        std::fs::read_dir(&uploads).unwrap().count() == 0
    })
    .await;
    let r = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(code(r).await, (404, "BLOB_UPLOAD_UNKNOWN".to_owned()));
}

#[tokio::test]
async fn a_pushed_repository_answers_to_every_spelling_of_its_name() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let (digest, _) = push_image(&m, "alpine", "3.20").await;
    for path in [
        "/v2/alpine/manifests/3.20",
        "/v2/library/alpine/manifests/3.20",
        "/v2/library/alpine/manifests/3.20?ns=docker.io",
        "/v2/docker.io/library/alpine/manifests/3.20",
    ] {
        let r = m.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"],
            digest.as_str(),
            "{path}"
        );
    }
    assert_eq!(fake.count("GET", "/manifests/"), 0);
    let body: serde_json::Value = m.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(body["repositories"], serde_json::json!(["library/alpine"]));
}

fn htpasswd_file(dir: &std::path::Path, users: &[(&str, &str, u32)]) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, p, cost)| format!("{u}:{}\n", bcrypt::hash(p, *cost).unwrap()))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// With the shipped default config nobody can push: an anonymous push of `library/alpine`
/// is refused with a clear error, and nothing is stored or served.
#[tokio::test]
async fn the_default_config_refuses_anonymous_pushes() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    ))
    .await;
    let layer = random_bytes(1000);
    let digest = sha256(&layer);
    let r = m
        .client
        .post(m.url(&format!(
            "/v2/library/alpine/blobs/uploads/?digest={digest}"
        )))
        .body(layer)
        .send()
        .await
        .unwrap();
    let (status, code_) = code(r).await;
    assert_eq!((status, code_.as_str()), (403, "DENIED"));
    assert!(!m.blob_path(&digest).exists());
    let r = put_manifest(
        &m,
        "library/alpine",
        "3.20",
        &image_manifest(&digest, 1000, &[], None),
    )
    .await;
    assert_eq!(code(r).await, (403, "DENIED".into()));
    // Deletes are off by default: refused before credentials even matter.
    let r = m
        .client
        .delete(m.url(&format!("/v2/library/alpine/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (405, "UNSUPPORTED".into()));
    assert_eq!(
        m.get("/v2/library/alpine/manifests/3.20").await.status(),
        404,
        "nothing was pushed (the upstream does not have it either)"
    );
}

/// Access rules keep upstream names to the users they name; tokens carry their scope, are
/// signed, and a flood of anonymous tokens changes nothing for real ones.
#[tokio::test]
async fn access_rules_and_scoped_tokens() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_file(dir.path(), &[("ci", "ci-pw", 4), ("dev", "dev-pw", 4)]);
    let auth = format!(
        "[auth]\nhtpasswd = \"{}\"\n[[auth.access]]\nusers = [\"ci\"]\nrepositories = [\"library/*\"]\nactions = [\"push\"]\n[[auth.access]]\nusers = [\"*\"]\nrepositories = [\"team/*\"]\nactions = [\"push\", \"delete\"]\n",
        htpasswd.display()
    );
    let m = mirror_with(&fake, "", &auth).await;
    let blob = random_bytes(500);
    let digest = sha256(&blob);
    let push_as = |repo: &str, user: &str, pw: &str| {
        m.client
            .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .basic_auth(user, Some(pw))
            .body(blob.clone())
            .send()
    };
    assert_eq!(
        code(push_as("alpine", "dev", "dev-pw").await.unwrap()).await,
        (403, "DENIED".into())
    );
    assert_eq!(
        push_as("alpine", "ci", "ci-pw").await.unwrap().status(),
        201
    );
    assert_eq!(
        push_as("team/app", "dev", "dev-pw").await.unwrap().status(),
        201
    );

    // A token asked for pull,push on team/a pushes there and nowhere else.
    let token = |user: &str, pw: &str, scope: &str| {
        m.client
            .get(m.url(&format!("/token?service=regmirror&scope={scope}")))
            .basic_auth(user, Some(pw))
            .send()
    };
    let t: serde_json::Value = token("dev", "dev-pw", "repository:team/a:pull,push")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let team_a = t["token"].as_str().unwrap().to_owned();
    // Anonymous tokens by the thousand: nothing is stored per token, nothing is pushed out.
    for _ in 0..2000 {
        assert_eq!(
            m.get("/token?scope=repository:team/a:pull").await.status(),
            200
        );
    }
    let with_token = |repo: &str, token: &str| {
        m.client
            .post(m.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .bearer_auth(token)
            .body(blob.clone())
            .send()
    };
    assert_eq!(with_token("team/a", &team_a).await.unwrap().status(), 201);
    let r = with_token("team/b", &team_a).await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "a token for team/a does not push to team/b"
    );
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"repository:team/b:pull,push\"")
    );
    // dev asks for push on library/alpine: the token only grants pull.
    let t: serde_json::Value = token("dev", "dev-pw", "repository:library/alpine:pull,push")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = with_token("library/alpine", t["token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A tampered token is refused.
    let mut forged = team_a.clone();
    forged.insert(3, 'x');
    assert_eq!(with_token("team/a", &forged).await.unwrap().status(), 401);
}

/// The challenge's realm: `public_url` when set; `X-Forwarded-*` only from trusted proxies;
/// a `Host` that is not a host is never copied into the header.
#[tokio::test]
async fn the_challenge_realm_is_built_safely() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_file(dir.path(), &[("ci", "pw", 4)]);
    let upstream = format!(
        "[auth]\nhtpasswd = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        htpasswd.display(),
        fake.url()
    );
    let realm = |r: &reqwest::Response| {
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .split('"')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let public = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        "public_url = \"https://registry.example\"",
        &upstream,
    )
    .await;
    assert_eq!(
        realm(&public.get("/v2/").await),
        "https://registry.example/token"
    );

    let proxied = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &upstream,
    )
    .await;
    let r = proxied
        .client
        .get(proxied.url("/v2/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "mirror.example")
        .send()
        .await
        .unwrap();
    assert_eq!(realm(&r), "https://mirror.example/token");

    let direct = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &upstream,
    )
    .await;
    let r = direct
        .client
        .get(direct.url("/v2/"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        realm(&r),
        format!("http://{}/token", direct.server.addr),
        "an untrusted peer's forwarded headers are ignored"
    );
    // A Host header that tries to add parameters to the challenge.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(direct.server.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: a\",x=\"y\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let challenge = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate"))
        .unwrap_or_default()
        .to_owned();
    assert!(!challenge.contains("x=\"y\""), "{challenge}");
    assert!(
        challenge.contains(&format!("realm=\"http://{}/token\"", direct.server.addr)),
        "{challenge}"
    );
}

/// Upload sessions belong to whoever opened them; a client may hold only so many; all of
/// them together only so many bytes; and one request at a time writes to a session.
#[tokio::test]
async fn upload_sessions_are_owned_and_bounded() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_file(dir.path(), &[("a", "pw-a", 4), ("b", "pw-b", 4)]);
    let auth = format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display());
    let m = mirror_with(
        &fake,
        "max_uploads_size = \"1MiB\"\nmax_upload_sessions_per_client = 2",
        &auth,
    )
    .await;
    let open = |user: &'static str, pw: &'static str| {
        m.client
            .post(m.url("/v2/team/app/blobs/uploads/"))
            .basic_auth(user, Some(pw))
            .send()
    };
    let r = open("a", "pw-a").await.unwrap();
    assert_eq!(r.status(), 202);
    let location = m.url(r.headers()["location"].to_str().unwrap());
    // b cannot see, extend, finish or cancel a's session.
    for method in ["GET", "PATCH", "PUT", "DELETE"] {
        let r = m
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{location}&digest={}", sha256(b"x")),
            )
            .basic_auth("b", Some("pw-b"))
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(r).await,
            (404, "BLOB_UPLOAD_UNKNOWN".into()),
            "{method}"
        );
    }
    // A second session for a, then no third.
    assert_eq!(open("a", "pw-a").await.unwrap().status(), 202);
    assert_eq!(
        code(open("a", "pw-a").await.unwrap()).await,
        (429, "TOOMANYREQUESTS".into())
    );
    assert_eq!(
        open("b", "pw-b").await.unwrap().status(),
        202,
        "b has its own allowance"
    );

    // One writer at a time: a PATCH still streaming holds the session.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let slow = {
        let (client, location) = (m.client.clone(), location.clone());
        tokio::spawn(async move {
            client
                .patch(location)
                .basic_auth("a", Some("pw-a"))
                .body(reqwest::Body::wrap_stream(tokio_stream_from(rx)))
                .send()
                .await
                .unwrap()
        })
    };
    tx.send(Ok(vec![1u8; 1000])).await.unwrap();
    common::eventually_async(10, "the slow PATCH to start writing", || async {
        m.metric("regmirror_uploads_bytes").await >= 1000.0
    })
    .await;
    let r = m
        .client
        .patch(&location)
        .basic_auth("a", Some("pw-a"))
        .body(vec![2u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a second writer is refused");
    // The upload space is bounded in all: the slow PATCH passes 1 MiB and fails.
    tx.send(Ok(vec![3u8; 1024 * 1024])).await.unwrap();
    drop(tx);
    let r = slow.await.unwrap();
    assert_eq!(code(r).await, (507, "STORAGE_FULL".into()));
    assert_eq!(
        m.metric("regmirror_uploads_bytes").await,
        0.0,
        "the failed chunk was given back"
    );
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// bcrypt never runs on the async workers: while clients send wrong passwords for a slow
/// hash, cached pulls stay fast; unknown users cost a hash too; a flood is throttled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_floods_do_not_stall_pulls() {
    let fake = FakeUpstream::start(Auth::None).await;
    fake.put_manifest(
        "library/app",
        "v1",
        image_manifest(&sha256(b"c"), 1, &[], None),
        OCI_MANIFEST,
    );
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = htpasswd_file(dir.path(), &[("slow", "right", 12)]);
    let auth = format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display());
    let m = mirror_with(&fake, "", &auth).await;
    assert_eq!(m.get("/v2/app/manifests/v1").await.status(), 200);

    let (client, url) = (m.client.clone(), m.url("/v2/app/manifests/v1"));
    let attempt = move |user: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let started = std::time::Instant::now();
            let r = client
                .get(url)
                .basic_auth(user, Some("wrong"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), started.elapsed())
        }
    };
    let (status, known) = attempt("slow").await;
    assert_eq!(status, 401);
    let (status, unknown) = attempt("nobody").await;
    assert_eq!(status, 401);
    assert!(
        unknown * 2 > known,
        "an unknown user ({unknown:?}) costs about what a known one does ({known:?})"
    );

    let flood = tokio::spawn({
        async move {
            let mut statuses = Vec::new();
            for _ in 0..6 {
                let (a, b) = tokio::join!(attempt("slow"), attempt("slow"));
                statuses.extend([a.0, b.0]);
            }
            statuses
        }
    });
    let mut slowest = std::time::Duration::ZERO;
    while !flood.is_finished() {
        let started = std::time::Instant::now();
        assert_eq!(m.get("/v2/app/manifests/v1").await.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let statuses = flood.await.unwrap();
    assert!(
        slowest < known,
        "a cached pull took {slowest:?} during the flood, as long as a bcrypt run ({known:?})"
    );
    assert!(
        statuses.contains(&429),
        "the flood was throttled: {statuses:?}"
    );
}

/// Deletes are per repository: a blob or manifest deleted through one repository stays for
/// every other repository that holds it, and goes when the last one lets go.
#[tokio::test]
async fn deletes_through_one_repository_leave_the_others_alone() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "delete = true", "").await;
    let layer = random_bytes(4000);
    let config = b"{}".to_vec();
    let dl = push_blob(&m, "team-a/app", &layer).await;
    let dc = push_blob(&m, "team-a/app", &config).await;
    let manifest = image_manifest(&dc, config.len(), &[(&dl, layer.len())], None);
    assert_eq!(
        put_manifest(&m, "team-a/app", "v1", &manifest)
            .await
            .status(),
        201
    );
    let dm = sha256(&manifest);

    let delete = |path: String| m.client.delete(m.url(&path)).send();
    // team-b never had the layer: nothing to delete there, and team-a keeps it.
    let r = delete(format!("/v2/team-b/x/blobs/{dl}")).await.unwrap();
    assert_eq!(code(r).await, (404, "BLOB_UNKNOWN".into()));
    // team-b pushes the same layer, then deletes it: team-a still has it.
    push_blob(&m, "team-b/x", &layer).await;
    assert_eq!(
        delete(format!("/v2/team-b/x/blobs/{dl}"))
            .await
            .unwrap()
            .status(),
        202
    );
    assert!(m.blob_path(&dl).exists());
    let r = m.get(&format!("/v2/team-a/app/blobs/{dl}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), layer.as_slice());
    // team-b puts a manifest with the same bytes and deletes it: team-a's tag still answers.
    assert_eq!(
        put_manifest(&m, "team-b/x", "copy", &manifest)
            .await
            .status(),
        201
    );
    assert_eq!(
        delete(format!("/v2/team-b/x/manifests/{dm}"))
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(m.get("/v2/team-a/app/manifests/v1").await.status(), 200);
    assert_eq!(m.get("/v2/team-b/x/manifests/copy").await.status(), 404);
    // When team-a lets go of everything, the bytes go.
    assert_eq!(
        delete(format!("/v2/team-a/app/manifests/{dm}"))
            .await
            .unwrap()
            .status(),
        202
    );
    for d in [&dl, &dc] {
        assert_eq!(
            delete(format!("/v2/team-a/app/blobs/{d}"))
                .await
                .unwrap()
                .status(),
            202
        );
        assert!(!m.blob_path(d).exists(), "{d}");
    }
    assert!(!m.blob_path(&dm).exists());
}

/// A session's `Location` carries its signature (`_state`): without it, with another
/// session's, or with a forged one, the session is unknown, and it is left as it was.
#[tokio::test]
async fn upload_sessions_need_their_signed_state() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with(&fake, "", "").await;
    let first = m.open_upload("team/app").await;
    let second = m.open_upload("team/app").await;
    let (path, state) = first.split_once("?_state=").expect("a signed location");
    assert_eq!(state.len(), 32, "{first}");
    let other_state = second.split_once("?_state=").unwrap().1;
    let forged = format!(
        "{}{}",
        &state[..31],
        if state.ends_with('0') { '1' } else { '0' }
    );
    for url in [
        path.to_owned(),
        format!("{path}?_state={other_state}"),
        format!("{path}?_state={forged}"),
        format!("{path}?_state=zz"),
        // The same session under another repository's name.
        format!("{}?_state={state}", path.replace("team/app", "team/other")),
    ] {
        let r = m
            .client
            .patch(m.url(&url))
            .body(b"abc".to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            code(r).await,
            (404, "BLOB_UPLOAD_UNKNOWN".to_owned()),
            "{url}"
        );
    }
    let status = m.client.get(m.url(&first)).send().await.unwrap();
    assert_eq!(status.status(), 204);
    assert_eq!(status.headers()["range"], "0-0", "nothing was appended");
}

/// `/_cluster/blobs/<digest>` is for replicas of one cluster only: an unsigned or wrongly
/// signed request is refused before anything is looked up, and never reaches the upstream.
#[tokio::test]
async fn the_peer_route_refuses_requests_not_signed_by_the_cluster() {
    let fake = FakeUpstream::start(Auth::None).await;
    let digest = fake.put_blob(random_bytes(1000));
    let m = mirror_with(&fake, "", "").await;
    for signature in [None, Some("00"), Some("zz")] {
        let mut request = m.client.get(m.url(&format!("/_cluster/blobs/{digest}")));
        if let Some(signature) = signature {
            request = request.header("x-regmirror-peer", signature);
        }
        let r = request.send().await.unwrap();
        assert_eq!(code(r).await, (403, "DENIED".to_owned()), "{signature:?}");
    }
    assert_eq!(fake.count("GET", &digest), 0, "the upstream was not asked");
}

/// A push whose body stops arriving is refused after `body_idle_timeout` (a request in flight
/// is exempt from the connection timeouts), and its session is free again, as it was.
#[tokio::test]
async fn a_pushed_body_that_stops_arriving_is_refused_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeUpstream::start(Auth::None).await;
    let m = TestMirror::start_config(
        tempfile::tempdir().unwrap(),
        "body_idle_timeout = \"1s\"",
        "",
        &format!(
            "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            fake.url()
        ),
    )
    .await;
    let location = m.open_upload("team/app").await;
    // Both a chunk and a manifest: 10 of 1000 declared bytes, then nothing.
    for (method, path, code) in [
        ("PATCH", location.as_str(), "BLOB_UPLOAD_INVALID"),
        ("PUT", "/v2/team/app/manifests/v1", "MANIFEST_INVALID"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(m.server.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n0123456789"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer comes after the idle timeout, well before the test gives up.
        while !String::from_utf8_lossy(&answer).contains(code) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .unwrap();
            assert!(
                n > 0,
                "closed without an answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{method}: {answer}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    }
    // The session took nothing from the stalled chunk and is not held by it.
    let r = m.client.get(m.url(&location)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-0");
    let r = m
        .client
        .patch(m.url(&location))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-99");
}

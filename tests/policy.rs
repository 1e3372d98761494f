//! The policy gate's lists: per upstream, `allow` and `deny` repository patterns (deny wins,
//! no `allow` means everything) decide what may be pulled through. A refused pull answers 403
//! `DENIED` naming the rule, whatever spelling reaches the repository (`ns=`, a prefix, the
//! default), and nothing is asked of the upstream for it: not the manifest, not a blob, not
//! a tag list. Pushed repositories are unaffected; other upstreams keep their own lists.

mod common;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image `repo:v1` on `fake`: its manifest's bytes and the digest of its config blob.
fn image(fake: &FakeUpstream, repo: &str) -> (String, String) {
    let config = format!("{{\"repo\":\"{repo}\"}}").into_bytes();
    let digest = fake.put_blob(config.clone());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len()},
        "layers": []})
    .to_string();
    fake.put_manifest(repo, "v1", manifest.clone(), OCI_MANIFEST);
    (manifest, digest)
}

#[tokio::test]
async fn allow_and_deny_lists_refuse_before_the_upstream_is_asked() {
    let hub = FakeUpstream::start(Auth::None).await;
    let quay = FakeUpstream::start(Auth::None).await;
    image(&hub, "library/alpine");
    let (_, evil_blob) = image(&hub, "library/evil-app");
    let (_, other_blob) = image(&hub, "other/thing");
    image(&hub, "myorg/app");
    image(&quay, "other/thing");
    let m = TestMirror::start(&format!(
        "[auth]\nanonymous_push = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n\
         allow = [\"library/*\", \"myorg/*\"]\ndeny = [\"library/evil*\"]\n\
         [[upstream]]\nname = \"quay.io\"\nurl = \"{}\"\n",
        hub.url(),
        quay.url()
    ))
    .await;
    for allowed in [
        "/v2/alpine/manifests/v1",
        "/v2/library/alpine/manifests/v1",
        "/v2/myorg/app/manifests/v1",
        "/v2/quay.io/other/thing/manifests/v1",
        "/v2/other/thing/manifests/v1?ns=quay.io",
    ] {
        assert_eq!(m.get(allowed).await.status(), 200, "{allowed}");
    }
    let asked_before = hub.count("GET", "/") + hub.count("HEAD", "/");
    for (path, rule) in [
        (
            "/v2/library/evil-app/manifests/v1",
            "deny = \"library/evil*\"",
        ),
        ("/v2/evil-app/manifests/v1", "deny = \"library/evil*\""),
        ("/v2/docker.io/library/evil-app/manifests/v1", "deny"),
        ("/v2/library/evil-app/manifests/v1?ns=docker.io", "deny"),
        (&format!("/v2/library/evil-app/blobs/{evil_blob}"), "deny"),
        ("/v2/library/evil-app/tags/list", "deny"),
        ("/v2/other/thing/manifests/v1", "allow"),
        (&format!("/v2/other/thing/blobs/{other_blob}"), "allow"),
        ("/v2/other/thing/tags/list", "allow"),
    ] {
        let r = m.get(path).await;
        let (status, code) = common::error_code(r).await;
        assert_eq!((status, code.as_str()), (403, "DENIED"), "{path}");
        let body: serde_json::Value = m.get(path).await.json().await.unwrap();
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{path}: {message}");
    }
    assert_eq!(
        hub.count("GET", "/") + hub.count("HEAD", "/"),
        asked_before,
        "nothing was asked of the upstream for a refused repository"
    );

    // A pushed repository is the operator's own: its lists do not apply.
    let config = b"{}".to_vec();
    let digest = sha256(&config);
    let r = m
        .client
        .post(m.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
        "layers": []})
    .to_string();
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(m.get("/v2/team/app/manifests/v1").await.status(), 200);
    assert_eq!(
        m.get(&format!("/v2/team/app/blobs/{digest}"))
            .await
            .status(),
        200
    );
    let tags: serde_json::Value = m.get("/v2/team/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
}

#[test]
fn bad_patterns_are_refused_naming_the_key() {
    for (list, pattern) in [("allow", "Library/*"), ("deny", ""), ("allow", "/abs")] {
        let text = format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\n{list} = [\"{pattern}\"]\n"
        );
        let e = regmirror::config::Config::parse(&text, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("upstream[0].{list}[0]")), "{e}");
    }
}

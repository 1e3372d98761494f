//! One name for every decision: a request's repository is resolved once (`ns=`, prefixes,
//! Docker Hub's `library/`), and access rules, pushes, pulls, tag lists, referrers, mounts and
//! deletes all act on that one name. A right in one namespace gives nothing in another.

mod common;

use common::fake_upstream::{Auth, FakeUpstream, sha256};
use common::images::put_config_only_image;
use common::{TestMirror, error_code, random_bytes};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Two upstreams (docker.io, the default, and quay.io), deletes on, and two users: `quay` may
/// push and delete in `quay.io/*` only, `team` may push and delete in `team/*` (Docker Hub's).
struct Setup {
    hub: FakeUpstream,
    quay: FakeUpstream,
    m: TestMirror,
}

async fn setup() -> Setup {
    let hub = FakeUpstream::start(Auth::None).await;
    let quay = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let line = |u: &str| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 4).unwrap());
    std::fs::write(&htpasswd, line("quay") + &line("team")).unwrap();
    let rest = format!(
        r#"[auth]
htpasswd = "{}"
[[auth.access]]
users = ["quay"]
repositories = ["quay.io/*"]
actions = ["push", "delete"]
[[auth.access]]
users = ["team"]
repositories = ["team/*"]
actions = ["push", "delete"]
[[upstream]]
name = "docker.io"
url = "{}"
default = true
[[upstream]]
name = "quay.io"
url = "{}"
"#,
        htpasswd.display(),
        hub.url(),
        quay.url()
    );
    let m = TestMirror::start_storage(dir, "delete = true", &rest).await;
    Setup { hub, quay, m }
}

impl Setup {
    fn put_manifest(&self, user: &str, path: &str, bytes: &[u8]) -> reqwest::RequestBuilder {
        self.m
            .client
            .put(self.m.url(path))
            .basic_auth(user, Some(format!("{user}-pw")))
            .header("content-type", OCI_MANIFEST)
            .body(bytes.to_vec())
    }

    fn push_blob(&self, user: &str, path: &str, bytes: &[u8]) -> reqwest::RequestBuilder {
        self.m
            .client
            .post(self.m.url(path))
            .basic_auth(user, Some(format!("{user}-pw")))
            .body(bytes.to_vec())
    }

    fn delete(&self, user: &str, path: &str) -> reqwest::RequestBuilder {
        self.m
            .client
            .delete(self.m.url(path))
            .basic_auth(user, Some(format!("{user}-pw")))
    }

    /// Pushes `bytes` as a manifest of `repo` by its digest as `user`; its digest.
    async fn put_by_digest(&self, user: &str, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let path = format!("/v2/{repo}/manifests/{digest}");
        let r = self.put_manifest(user, &path, bytes).send().await.unwrap();
        assert_eq!(r.status(), 201, "{path}");
        digest
    }

    /// Pushes a config blob through `blobs_path` (`/v2/<name>/blobs/uploads/?...`) as `user`
    /// and returns an image manifest of it.
    async fn pushed_image(&self, user: &str, repo: &str, query: &str) -> Vec<u8> {
        let config = random_bytes(200);
        let digest = sha256(&config);
        let r = self
            .push_blob(
                user,
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}{query}"),
                &config,
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        image_of(&digest, None)
    }
}

fn image_of(config: &str, subject: Option<&str>) -> Vec<u8> {
    let mut m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 200},
        "layers": []});
    if let Some(subject) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": subject, "size": 1});
        m["artifactType"] = serde_json::json!("application/vnd.example.sig");
    }
    m.to_string().into_bytes()
}

/// The hole: a user allowed only `quay.io/*` pushed `library/alpine:3.19?ns=quay.io`, the
/// mirror stored it as Docker Hub's alpine, and every anonymous pull of `alpine:3.19` got it.
#[tokio::test]
async fn a_push_right_in_one_namespace_gives_nothing_in_another() {
    let s = setup().await;
    let real = put_config_only_image(&s.hub, "library/alpine", "3.19");
    let real_digest = sha256(real.as_bytes());

    // In quay.io's namespace, with `ns=` or the prefix: allowed, and stored there.
    let forged = s
        .pushed_image("quay", "library/alpine", "&ns=quay.io")
        .await;
    let forged_digest = sha256(&forged);
    for path in [
        "/v2/library/alpine/manifests/3.19?ns=quay.io",
        "/v2/quay.io/library/alpine/manifests/3.20",
    ] {
        let r = s.put_manifest("quay", path, &forged).send().await.unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
    // Docker Hub's alpine is untouched: every spelling of it answers the upstream's image.
    for path in [
        "/v2/alpine/manifests/3.19",
        "/v2/library/alpine/manifests/3.19",
        "/v2/library/alpine/manifests/3.19?ns=docker.io",
        "/v2/docker.io/library/alpine/manifests/3.19",
    ] {
        let r = s.m.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["docker-content-digest"],
            real_digest.as_str(),
            "{path}"
        );
    }
    // quay.io's name answers what was pushed there, without asking quay.io.
    let r =
        s.m.get("/v2/library/alpine/manifests/3.19?ns=quay.io")
            .await;
    assert_eq!(r.headers()["docker-content-digest"], forged_digest.as_str());
    assert_eq!(s.quay.count("GET", "/manifests/"), 0);

    // Outside quay.io: refused, with or without `ns=`, for manifests and blobs alike.
    for path in [
        "/v2/library/alpine/manifests/3.19",
        "/v2/library/alpine/manifests/3.19?ns=docker.io",
        "/v2/alpine/manifests/evil",
        "/v2/docker.io/library/alpine/manifests/3.19",
    ] {
        let r = s.put_manifest("quay", path, &forged).send().await.unwrap();
        assert_eq!(error_code(r).await, (403, "DENIED".into()), "{path}");
    }
    let blob = random_bytes(100);
    let digest = sha256(&blob);
    for query in ["", "&ns=docker.io"] {
        let path = format!("/v2/library/alpine/blobs/uploads/?digest={digest}{query}");
        let r = s.push_blob("quay", &path, &blob).send().await.unwrap();
        assert_eq!(error_code(r).await, (403, "DENIED".into()), "{path}");
    }
    // Mounts and sessions: what the quay user may not push to, it may not mount into or
    // finish a session in either; a session opened in quay.io's namespace stays there.
    let r = s
        .push_blob(
            "quay",
            &format!(
                "/v2/library/alpine/blobs/uploads/?mount={digest}&from=quay.io/library/alpine"
            ),
            b"",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "DENIED".into()), "mount");
    let r = s
        .push_blob("quay", "/v2/library/alpine/blobs/uploads/?ns=quay.io", b"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("ns=quay.io"), "{location}");
    let elsewhere = location.replace("&ns=quay.io", "");
    let finish = |at: String| {
        s.m.client
            .put(s.m.url(&format!("{at}&digest={digest}")))
            .basic_auth("quay", Some("quay-pw"))
            .body(blob.clone())
            .send()
    };
    let r = finish(elsewhere).await.unwrap();
    assert_eq!(
        error_code(r).await,
        (403, "DENIED".into()),
        "session moved to docker.io"
    );
    let r = finish(location).await.unwrap();
    assert_eq!(r.status(), 201, "finished where it was opened");
    // The team user's `team/*` is Docker Hub's team/*, not quay.io's.
    let team = s.pushed_image("team", "team/app", "").await;
    let r = s
        .put_manifest("team", "/v2/team/app/manifests/v1?ns=quay.io", &team)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (403, "DENIED".into()));
    let r = s
        .put_manifest("team", "/v2/team/app/manifests/v1", &team)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Tag lists are per namespace too.
    let r = s.m.get("/v2/team/app/tags/list").await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tags"], serde_json::json!(["v1"]));
    let r = s.m.get("/v2/team/app/tags/list?ns=quay.io").await;
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert!(
        !body["tags"].to_string().contains("v1"),
        "nothing was pushed to quay.io's team/app: {body}"
    );
    // An `ns` that names no configured upstream resolves to nothing, on every route.
    for path in [
        "/v2/library/alpine/manifests/3.19?ns=evil.example".to_owned(),
        format!("/v2/library/alpine/blobs/{digest}?ns=evil.example"),
        "/v2/library/alpine/tags/list?ns=evil.example".to_owned(),
        format!("/v2/library/alpine/referrers/{digest}?ns=evil.example"),
    ] {
        let r = s.m.get(&path).await;
        assert_eq!(error_code(r).await, (404, "NAME_UNKNOWN".into()), "{path}");
    }
    let r = s
        .put_manifest(
            "quay",
            "/v2/library/alpine/manifests/x?ns=evil.example",
            &forged,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (404, "NAME_UNKNOWN".into()));
}

/// Tokens hold the name their scope resolves to: a token for `quay.io/library/alpine` pushes
/// there (with `ns=` or the prefix) and not to Docker Hub's `library/alpine`; one for
/// Docker Hub's `library/alpine` is not granted push at all.
#[tokio::test]
async fn token_grants_are_for_one_namespace() {
    let s = setup().await;
    let token = |scope: &str| {
        let url = s.m.url(&format!("/token?service=regmirror&scope={scope}"));
        let client = s.m.client.clone();
        async move {
            let t: serde_json::Value = client
                .get(url)
                .basic_auth("quay", Some("quay-pw"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let blob = random_bytes(100);
    let digest = sha256(&blob);
    let push = |token: String, path: String| {
        s.m.client
            .post(s.m.url(&path))
            .bearer_auth(token)
            .body(blob.clone())
            .send()
    };
    let quay_token = token("repository:quay.io/library/alpine:pull,push").await;
    for path in [
        format!("/v2/library/alpine/blobs/uploads/?digest={digest}&ns=quay.io"),
        format!("/v2/quay.io/library/alpine/blobs/uploads/?digest={digest}"),
    ] {
        let r = push(quay_token.clone(), path.clone()).await.unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
    for path in [
        format!("/v2/library/alpine/blobs/uploads/?digest={digest}"),
        format!("/v2/library/alpine/blobs/uploads/?digest={digest}&ns=docker.io"),
    ] {
        let r = push(quay_token.clone(), path.clone()).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let hub_token = token("repository:library/alpine:pull,push").await;
    let path = format!("/v2/library/alpine/blobs/uploads/?digest={digest}");
    assert_eq!(push(hub_token, path).await.unwrap().status(), 401);
}

/// A delete right on `quay.io/*` deletes nothing cached from, or pushed to, Docker Hub's
/// names: on an offline day `alpine` is still there.
#[tokio::test]
async fn deletes_stay_in_their_namespace() {
    let s = setup().await;
    let real = put_config_only_image(&s.hub, "library/alpine", "3.19");
    let real_digest = sha256(real.as_bytes());
    let config: serde_json::Value = serde_json::from_str(&real).unwrap();
    let config_digest = config["config"]["digest"].as_str().unwrap().to_owned();
    // Pulled through (cached, held by no repository).
    assert_eq!(s.m.get("/v2/alpine/manifests/3.19").await.status(), 200);
    let r = s.m.get(&format!("/v2/alpine/blobs/{config_digest}")).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    s.m.fills_settled().await;
    // Pushed to Docker Hub's team/app.
    let team = s.pushed_image("team", "team/app", "").await;
    let team_digest = sha256(&team);
    let r = s
        .put_manifest("team", "/v2/team/app/manifests/v1", &team)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    for path in [
        format!("/v2/library/alpine/manifests/{real_digest}?ns=quay.io"),
        format!("/v2/library/alpine/blobs/{config_digest}?ns=quay.io"),
        format!("/v2/quay.io/library/alpine/manifests/{real_digest}"),
        format!("/v2/team/app/manifests/{team_digest}?ns=quay.io"),
        format!("/v2/quay.io/team/app/manifests/{team_digest}"),
    ] {
        let r = s.delete("quay", &path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}: not quay.io's to delete");
    }
    for path in [
        format!("/v2/library/alpine/manifests/{real_digest}"),
        format!("/v2/team/app/manifests/{team_digest}"),
        "/v2/team/app/manifests/v1".to_owned(),
    ] {
        let r = s.delete("quay", &path).send().await.unwrap();
        assert_eq!(error_code(r).await, (403, "DENIED".into()), "{path}");
    }
    // Docker Hub's alpine is still served with the upstream gone, and team/app too.
    s.hub.set_down(true);
    for path in [
        "/v2/alpine/manifests/3.19".to_owned(),
        format!("/v2/alpine/blobs/{config_digest}"),
        "/v2/team/app/manifests/v1".to_owned(),
    ] {
        assert_eq!(s.m.get(&path).await.status(), 200, "{path}");
    }
    assert!(s.m.blob_path(&config_digest).exists());
}

/// An artifact pushed to `team/x` about alpine's digest is listed under `team/x` only, and a
/// manifest pushed to `team/x` is not served as `library/alpine@<digest>`.
#[tokio::test]
async fn pushed_manifests_and_referrers_stay_in_their_repository() {
    let s = setup().await;
    let real = put_config_only_image(&s.hub, "library/alpine", "3.19");
    let real_digest = sha256(real.as_bytes());
    assert_eq!(s.m.get("/v2/alpine/manifests/3.19").await.status(), 200);

    let image = s.pushed_image("team", "team/x", "").await;
    let image_digest = s.put_by_digest("team", "team/x", &image).await;
    let config: serde_json::Value = serde_json::from_slice(&image).unwrap();
    let signature = image_of(
        config["config"]["digest"].as_str().unwrap(),
        Some(&real_digest),
    );
    let signature_digest = s.put_by_digest("team", "team/x", &signature).await;

    // Pushed to team/x: served there, not through alpine's name (the upstream has no such
    // manifest), nor through quay.io's team/x.
    let own =
        s.m.get(&format!("/v2/team/x/manifests/{image_digest}"))
            .await;
    assert_eq!(own.status(), 200);
    for path in [
        format!("/v2/library/alpine/manifests/{image_digest}"),
        format!("/v2/alpine/manifests/{signature_digest}"),
        format!("/v2/team/x/manifests/{image_digest}?ns=quay.io"),
    ] {
        let r = s.m.get(&path).await;
        assert_eq!(
            error_code(r).await,
            (404, "MANIFEST_UNKNOWN".into()),
            "{path}"
        );
    }

    let listed = |path: String| {
        let m = &s.m;
        async move {
            let body: serde_json::Value = m.get(&path).await.json().await.unwrap();
            body["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["digest"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(format!("/v2/team/x/referrers/{real_digest}")).await,
        vec![signature_digest.clone()]
    );
    assert!(
        listed(format!("/v2/library/alpine/referrers/{real_digest}"))
            .await
            .is_empty()
    );
    assert!(
        listed(format!("/v2/team/x/referrers/{real_digest}?ns=quay.io"))
            .await
            .is_empty()
    );
    // The UI says where the referrer was pushed.
    let page =
        s.m.get(&format!("/ui/manifest?digest={real_digest}"))
            .await
            .text()
            .await
            .unwrap();
    assert!(page.contains("docker.io/team/x"), "{page}");
}

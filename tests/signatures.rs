//! The signature gate: under a `[[signatures]]` policy a manifest is served only when a cosign
//! signature by one of the policy's keys verifies and names exactly that manifest. The
//! signatures here are made by sigstore-rs (not by regmirror's code) and put where cosign puts
//! them: the `sha256-<hex>.sig` tag, or an OCI 1.1 referrer. Refusals answer 403 DENIED naming
//! the keys; `warn` mode serves with a WARN; verdicts survive `--offline` and a dead upstream.

mod common;
#[path = "common/cosign.rs"]
mod cosign;

use common::fake_upstream::{Auth, FakeUpstream, sha256};
use common::{TestMirror, error_code, eventually_async};
use cosign::{CosignKey, Signed, publish_as_referrer, publish_at_tag, signature_tag};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image manifest (config only) at `repo:tag` on `fake`; its digest and size.
fn image(fake: &FakeUpstream, repo: &str, tag: &str) -> (String, u64) {
    let manifest = common::images::put_config_only_image(fake, repo, tag);
    (sha256(manifest.as_bytes()), manifest.len() as u64)
}

/// An image at `repo:tag` on `fake`, signed by `key` as `cosign sign` signs
/// `docker.io/<repo>@<digest>`, the signature at its `.sig` tag; its digest and size.
fn signed_image(fake: &FakeUpstream, key: &CosignKey, repo: &str, tag: &str) -> (String, u64) {
    let (digest, size) = image(fake, repo, tag);
    let signature = key.sign(&format!("docker.io/{repo}"), &digest);
    publish_at_tag(fake, repo, &digest, &[signature.into()]);
    (digest, size)
}

/// The `[[upstream]]` of `fake` as Docker Hub, and a policy over `myorg/*` with `keys`.
fn config(fake: &FakeUpstream, keys: &[std::path::PathBuf], policy_extra: &str) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{:?}", k.display().to_string()))
        .collect();
    format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\nnegative_ttl = \"1s\"\n\
         [[signatures]]\nupstream = \"docker.io\"\nrepositories = [\"myorg/*\"]\nkeys = [{}]\n{policy_extra}\n",
        fake.url(),
        keys.join(", ")
    )
}

async fn status(m: &TestMirror, path: &str) -> u16 {
    m.get(path).await.status().as_u16()
}

#[tokio::test]
async fn signed_manifests_are_served_and_the_rest_refused_naming_the_keys() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let stranger = CosignKey::generate();
    let (signed, _) = signed_image(&hub, &release, "myorg/signed", "v1");
    image(&hub, "myorg/unsigned", "v1");
    let (other_key, _) = image(&hub, "myorg/other-key", "v1");
    publish_at_tag(
        &hub,
        "myorg/other-key",
        &other_key,
        &[stranger
            .sign("docker.io/myorg/other-key", &other_key)
            .into()],
    );
    // A valid signature, for another manifest, put beside this one.
    let (wrong_digest, _) = image(&hub, "myorg/wrong-digest", "v1");
    publish_at_tag(
        &hub,
        "myorg/wrong-digest",
        &wrong_digest,
        &[release.sign("docker.io/myorg/signed", &signed).into()],
    );
    // A signature whose payload was changed after signing.
    let (tampered, _) = image(&hub, "myorg/tampered", "v1");
    let mut changed: Signed = release.sign("docker.io/myorg/tampered", &tampered).into();
    let mut payload: serde_json::Value = serde_json::from_slice(&changed.payload).unwrap();
    payload["optional"] = serde_json::json!({"approved": "yes"});
    changed.payload = serde_json::to_vec(&payload).unwrap();
    publish_at_tag(&hub, "myorg/tampered", &tampered, &[changed]);
    image(&hub, "library/alpine", "v1");

    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "")).await;

    // Signed: by tag, by digest, HEAD, every spelling of the name.
    for path in [
        "/v2/myorg/signed/manifests/v1".to_owned(),
        format!("/v2/myorg/signed/manifests/{signed}"),
        "/v2/myorg/signed/manifests/v1?ns=docker.io".to_owned(),
        "/v2/docker.io/myorg/signed/manifests/v1".to_owned(),
    ] {
        assert_eq!(status(&m, &path).await, 200, "{path}");
        assert_eq!(m.head(&path).await.status(), 200, "HEAD {path}");
    }
    // The signature manifest itself is no image: clients that verify fetch it.
    let sig_path = format!("/v2/myorg/signed/manifests/{}", signature_tag(&signed));
    assert_eq!(status(&m, &sig_path).await, 200);
    // Repositories outside the policy are not gated.
    assert_eq!(status(&m, "/v2/alpine/manifests/v1").await, 200);

    let refused = [
        ("myorg/unsigned", "unsigned"),
        ("myorg/other-key", "does not verify against any of the keys"),
        (
            "myorg/wrong-digest",
            &format!("the signature is for {signed}") as &str,
        ),
        ("myorg/tampered", "does not verify against any of the keys"),
    ];
    for (repo, why) in refused {
        for path in [
            format!("/v2/{repo}/manifests/v1"),
            format!("/v2/{repo}/manifests/v1?ns=docker.io"),
            format!("/v2/docker.io/{repo}/manifests/v1"),
        ] {
            let response = m.get(&path).await;
            let body = response.text().await.unwrap();
            assert!(body.contains("\"DENIED\""), "{path}: {body}");
            assert!(
                body.contains(&format!(
                    "no valid signature from release.pub ({})",
                    release.fingerprint
                )),
                "{path}: {body}"
            );
            assert!(body.contains(why), "{path}: {body}");
            assert!(
                body.contains(&format!("docker.io/{repo}@sha256:")),
                "{path}: {body}"
            );
        }
        let head = m.head(&format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(head.status(), 403, "HEAD {repo}");
    }
    let (code, name) = error_code(m.get("/v2/myorg/unsigned/manifests/v1").await).await;
    assert_eq!((code, name.as_str()), (403, "DENIED"));
    // By digest too.
    let unsigned =
        sha256(common::images::put_config_only_image(&hub, "myorg/unsigned", "v2").as_bytes());
    assert_eq!(
        status(&m, &format!("/v2/myorg/unsigned/manifests/{unsigned}")).await,
        403
    );

    assert!(
        m.metric("regmirror_signature_verdicts_total{result=\"verified\"}")
            .await
            >= 1.0
    );
    assert!(
        m.metric("regmirror_signature_verdicts_total{result=\"unsigned\"}")
            .await
            >= 1.0
    );
    assert!(
        m.metric("regmirror_signature_verdicts_total{result=\"invalid\"}")
            .await
            >= 3.0
    );
    assert!(
        m.metric("regmirror_signature_decisions_total{decision=\"refused\"}")
            .await
            >= 12.0
    );
    // Remembered: a second round of refusals works nothing out again.
    let worked_out = m
        .metric("regmirror_signature_verdicts_total{result=\"invalid\"}")
        .await;
    assert_eq!(status(&m, "/v2/myorg/tampered/manifests/v1").await, 403);
    assert_eq!(
        m.metric("regmirror_signature_verdicts_total{result=\"invalid\"}")
            .await,
        worked_out
    );
}

#[tokio::test]
async fn a_signed_index_admits_its_children() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (amd64, amd64_size) = image(&hub, "myorg/multi", "amd64-only");
    let (arm64, arm64_size) = image(&hub, "myorg/multi", "arm64-only");
    let (stray, _) = image(&hub, "myorg/multi", "stray");
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd64, "size": amd64_size, "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": arm64, "size": arm64_size, "platform": {"architecture": "arm64", "os": "linux"}}]})
    .to_string();
    let index_digest = hub.put_manifest("myorg/multi", "v1", index, OCI_INDEX);
    publish_at_tag(
        &hub,
        "myorg/multi",
        &index_digest,
        &[release.sign("docker.io/myorg/multi", &index_digest).into()],
    );
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "")).await;

    // Before the index: a child alone has no signature.
    assert_eq!(
        status(&m, &format!("/v2/myorg/multi/manifests/{amd64}")).await,
        403
    );
    assert_eq!(status(&m, "/v2/myorg/multi/manifests/v1").await, 200);
    for child in [&amd64, &arm64] {
        assert_eq!(
            status(&m, &format!("/v2/myorg/multi/manifests/{child}")).await,
            200,
            "{child}"
        );
    }
    // A manifest the index does not list stays out.
    assert_eq!(
        status(&m, &format!("/v2/myorg/multi/manifests/{stray}")).await,
        403
    );
    assert!(
        m.metric("regmirror_signature_verdicts_total{result=\"verified\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_signature_that_appears_later_is_picked_up() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (digest, _) = image(&hub, "myorg/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "")).await;
    assert_eq!(status(&m, "/v2/myorg/app/manifests/v1").await, 403);

    publish_at_tag(
        &hub,
        "myorg/app",
        &digest,
        &[release.sign("docker.io/myorg/app", &digest).into()],
    );
    // The refusal is remembered at most negative_ttl (1s here).
    eventually_async(15, "the new signature is seen", || async {
        status(&m, "/v2/myorg/app/manifests/v1").await == 200
    })
    .await;
}

#[tokio::test]
async fn warn_mode_serves_unsigned_manifests_and_counts_them() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    image(&hub, "myorg/app", "v1");
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "mode = \"warn\"")).await;
    assert_eq!(status(&m, "/v2/myorg/app/manifests/v1").await, 200);
    assert_eq!(
        m.metric("regmirror_signature_decisions_total{decision=\"warned\"}")
            .await,
        1.0
    );
    assert_eq!(
        m.metric("regmirror_signature_decisions_total{decision=\"refused\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn the_identity_check_refuses_a_signature_made_for_another_repository() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (app, _) = image(&hub, "myorg/app", "v1");
    publish_at_tag(
        &hub,
        "myorg/app",
        &app,
        &[release.sign("docker.io/myorg/elsewhere", &app).into()],
    );
    let (tool, _) = image(&hub, "myorg/tool", "v1");
    publish_at_tag(
        &hub,
        "myorg/tool",
        &tool,
        &[release.sign("index.docker.io/myorg/tool", &tool).into()],
    );
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "check_identity = true")).await;
    let body = m
        .get("/v2/myorg/app/manifests/v1")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("DENIED") && body.contains("myorg/elsewhere"),
        "{body}"
    );
    assert_eq!(status(&m, "/v2/myorg/tool/manifests/v1").await, 200);
}

#[tokio::test]
async fn referrer_signatures_count_and_are_kept_for_offline_pulls() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (digest, size) = image(&hub, "myorg/app", "v1");
    publish_as_referrer(
        &hub,
        "myorg/app",
        &digest,
        size,
        &[release.sign("docker.io/myorg/app", &digest).into()],
    );
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let policy = config(&hub, &[key], "");
    let m = TestMirror::start(&policy).await;
    assert_eq!(status(&m, "/v2/myorg/app/manifests/v1").await, 200);
    assert!(
        hub.count("GET", "/referrers/") >= 1,
        "the upstream's referrers were asked"
    );
    let store = m.stop().await;

    let m = TestMirror::start_with(store, "offline = true", &policy).await;
    assert_eq!(status(&m, "/v2/myorg/app/manifests/v1").await, 200);
    assert_eq!(
        m.metric("regmirror_signature_verdicts_total{result=\"verified\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn offline_and_a_dead_upstream_keep_enforcing_with_what_is_stored() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (signed, _) = signed_image(&hub, &release, "myorg/signed", "v1");
    image(&hub, "myorg/unsigned", "v1");
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    // First in warn mode, so that both are cached.
    let m = TestMirror::start(&config(&hub, std::slice::from_ref(&key), "mode = \"warn\"")).await;
    for repo in ["signed", "unsigned"] {
        assert_eq!(
            status(&m, &format!("/v2/myorg/{repo}/manifests/v1")).await,
            200
        );
    }
    m.fills_settled().await;
    let store = m.stop().await;

    let enforcing = config(&hub, &[key], "");
    let m = TestMirror::start_with(store, "offline = true", &enforcing).await;
    assert_eq!(status(&m, "/v2/myorg/signed/manifests/v1").await, 200);
    assert_eq!(
        status(&m, &format!("/v2/myorg/signed/manifests/{signed}")).await,
        200
    );
    let body = m
        .get("/v2/myorg/unsigned/manifests/v1")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("DENIED") && body.contains("no valid signature"),
        "{body}"
    );
    let store = m.stop().await;

    hub.set_down(true);
    let m = TestMirror::start_in(store, &enforcing).await;
    assert_eq!(status(&m, "/v2/myorg/signed/manifests/v1").await, 200);
    assert_eq!(status(&m, "/v2/myorg/unsigned/manifests/v1").await, 403);
}

/// Pushes `bytes` as a blob of `repo` (monolithic); its digest.
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

/// Pushes an image manifest to `repo:reference`; its digest.
async fn push_manifest(m: &TestMirror, repo: &str, reference: &str, json: &str) -> String {
    let r = m
        .client
        .put(m.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("content-type", OCI_MANIFEST)
        .body(json.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    sha256(json.as_bytes())
}

/// Pushes a config-only image to `repo:tag`; its digest and size.
async fn push_image(m: &TestMirror, repo: &str, tag: &str) -> (String, u64) {
    let config = common::random_bytes(200);
    let config_digest = push_blob(m, repo, &config).await;
    let json = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 200},
        "layers": []})
    .to_string();
    (push_manifest(m, repo, tag, &json).await, json.len() as u64)
}

/// Pushes `signatures` of `digest` to `repo` as cosign does: at the `.sig` tag, or (with
/// `subject`) as a referrer.
async fn push_signature(
    m: &TestMirror,
    repo: &str,
    digest: &str,
    signatures: &[Signed],
    subject: Option<u64>,
) {
    let built = cosign::build_signature_manifest(signatures, subject.map(|size| (digest, size)));
    for blob in &built.blobs {
        push_blob(m, repo, blob).await;
    }
    let reference = match subject {
        Some(_) => sha256(built.json.as_bytes()),
        None => signature_tag(digest),
    };
    push_manifest(m, repo, &reference, &built.json).await;
}

#[tokio::test]
async fn pushed_content_under_a_local_policy_is_served_once_its_signature_verifies() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&format!(
        "[auth]\nanonymous_push = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n\
         [[signatures]]\nrepositories = [\"team/*\"]\nkeys = [{:?}]\nlocal = true\n",
        hub.url(),
        key.display().to_string()
    ))
    .await;
    let (at_tag, _) = push_image(&m, "team/app", "v1").await;
    let (as_referrer, size) = push_image(&m, "team/tool", "v1").await;
    push_image(&m, "other/app", "v1").await;
    for path in [
        "/v2/team/app/manifests/v1".to_owned(),
        format!("/v2/team/app/manifests/{at_tag}"),
        "/v2/team/tool/manifests/v1".to_owned(),
    ] {
        let body = m.get(&path).await.text().await.unwrap();
        assert!(
            body.contains("DENIED") && body.contains("unsigned"),
            "{path}: {body}"
        );
    }
    // Outside the patterns, pushed content is served as ever.
    assert_eq!(status(&m, "/v2/other/app/manifests/v1").await, 200);
    let ui = m
        .get("/ui/repo?origin=_local&name=docker.io/team/app")
        .await
        .text()
        .await
        .unwrap();
    assert!(ui.contains("refused: unsigned"), "{ui}");

    push_signature(
        &m,
        "team/app",
        &at_tag,
        &[release.sign("docker.io/team/app", &at_tag).into()],
        None,
    )
    .await;
    push_signature(
        &m,
        "team/tool",
        &as_referrer,
        &[release.sign("docker.io/team/tool", &as_referrer).into()],
        Some(size),
    )
    .await;
    for path in [
        "/v2/team/app/manifests/v1".to_owned(),
        format!("/v2/team/app/manifests/{at_tag}"),
        "/v2/team/tool/manifests/v1".to_owned(),
    ] {
        assert_eq!(status(&m, &path).await, 200, "{path}");
    }
    let ui = m
        .get("/ui/repo?origin=_local&name=docker.io/team/app")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        ui.contains(&format!(
            "signed: verified: signed by release.pub ({})",
            release.fingerprint
        )),
        "{ui}"
    );
}

#[tokio::test]
async fn the_ui_shows_each_tags_signature_standing() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    signed_image(&hub, &release, "myorg/app", "signed");
    image(&hub, "myorg/app", "unsigned");
    image(&hub, "myorg/app", "later");
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    let m = TestMirror::start(&config(&hub, &[key], "")).await;
    assert_eq!(status(&m, "/v2/myorg/app/manifests/signed").await, 200);
    assert_eq!(status(&m, "/v2/myorg/app/manifests/unsigned").await, 403);
    let page = m
        .get("/ui/repo?origin=docker.io&name=myorg/app")
        .await
        .text()
        .await
        .unwrap();
    let row = |tag: &str| {
        let start = page
            .find(&format!("<code>{tag}</code>"))
            .unwrap_or_else(|| panic!("{tag} listed: {page}"));
        page[start..].split("</tr>").next().unwrap().to_owned()
    };
    assert!(
        row("signed").contains(&format!(
            "signed: verified: signed by release.pub ({})",
            release.fingerprint
        )),
        "{}",
        row("signed")
    );
    assert!(
        row("unsigned").contains("refused: unsigned"),
        "{}",
        row("unsigned")
    );
}

#[tokio::test]
async fn export_bundles_carry_signatures_and_import_keeps_enforcing_offline() {
    let hub = FakeUpstream::start(Auth::None).await;
    let release = CosignKey::generate();
    let (tagged, _) = signed_image(&hub, &release, "myorg/app", "v1");
    let (referred, size) = image(&hub, "myorg/tool", "v1");
    publish_as_referrer(
        &hub,
        "myorg/tool",
        &referred,
        size,
        &[release.sign("docker.io/myorg/tool", &referred).into()],
    );
    image(&hub, "myorg/unsigned", "v1");
    let dir = tempfile::tempdir().unwrap();
    let key = release.write_public(dir.path(), "release.pub");
    // The exporting mirror has no policy: signatures travel anyway.
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        hub.url()
    ))
    .await;
    let bundle = dir.path().join("bundle.tar");
    let images: Vec<regmirror::oci::image_ref::ImageRef> =
        ["myorg/app:v1", "myorg/tool:v1", "myorg/unsigned:v1"]
            .iter()
            .map(|i| i.parse().unwrap())
            .collect();
    regmirror::images::export(&m.server.mirror, &images, &bundle)
        .await
        .unwrap();
    let index: serde_json::Value = {
        let mut archive = tar::Archive::new(std::fs::File::open(&bundle).unwrap());
        let entry = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().to_str() == Some("index.json"))
            .unwrap();
        serde_json::from_reader(entry).unwrap()
    };
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(
        names.contains(&format!("docker.io/myorg/app:{}", signature_tag(&tagged)).as_str()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("docker.io/myorg/tool@sha256:")),
        "{names:?}"
    );
    assert_eq!(names.len(), 5, "three images and two signatures: {names:?}");

    // An air-gapped mirror that enforces the policy, fed only by the bundle.
    let other = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        "offline = true",
        &config(&hub, &[key], ""),
    )
    .await;
    regmirror::images::import(&other.server.mirror, &bundle)
        .await
        .unwrap();
    assert_eq!(status(&other, "/v2/myorg/app/manifests/v1").await, 200);
    assert_eq!(status(&other, "/v2/myorg/tool/manifests/v1").await, 200);
    let body = other
        .get("/v2/myorg/unsigned/manifests/v1")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("DENIED") && body.contains("no valid signature"),
        "{body}"
    );
    assert_eq!(
        other
            .metric("regmirror_signature_verdicts_total{result=\"verified\"}")
            .await,
        2.0
    );
}

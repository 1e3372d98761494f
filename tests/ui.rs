//! The web UI at `/ui/`: what the mirror holds (pushed and cached), a repository's tags, a
//! manifest's parts and referrers, and the status page; everything escaped, nothing changed,
//! auth respected; rendered by a real browser (headless Chromium).

mod common;

use std::path::Path;
use std::process::Command;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const HOSTILE: &str = "<script>alert(1)</script>";

/// A mirror holding a pushed `team/app:v1` (with a referrer whose artifact type is hostile
/// markup) and a cached two-platform `library/alpine:3.20`, its tag immutable.
async fn mirror(fake: &FakeUpstream, auth: &str) -> (TestMirror, String) {
    let config = b"{}".to_vec();
    let layer = common::random_bytes(3000);
    let (dc, dl) = (fake.put_blob(config.clone()), fake.put_blob(layer.clone()));
    let image = |arch: &str| {
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dl, "size": 3000}],
            "annotations": {"arch": arch}})
        .to_string()
    };
    let (amd, arm) = (image("amd64"), image("arm64"));
    let (damd, darm) = (sha256(amd.as_bytes()), sha256(arm.as_bytes()));
    fake.put_manifest("library/alpine", &damd, amd.clone(), OCI_MANIFEST);
    fake.put_manifest("library/alpine", &darm, arm.clone(), OCI_MANIFEST);
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": damd, "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": darm, "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]})
    .to_string();
    fake.put_manifest("library/alpine", "3.20", index, OCI_INDEX);
    let m = TestMirror::start(&format!(
        "[auth]\nanonymous_push = true\n{auth}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\nimmutable_tags = ['\\d+\\.\\d+']\n",
        fake.url()
    ))
    .await;
    let login = |r: reqwest::RequestBuilder| r.basic_auth("admin", Some("pw"));
    for path in [
        "/v2/alpine/manifests/3.20".to_owned(),
        format!("/v2/alpine/manifests/{damd}"),
        format!("/v2/alpine/manifests/{darm}"),
    ] {
        assert_eq!(
            login(m.client.get(m.url(&path)))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    for bytes in [&config, &layer] {
        let r = login(m.client.post(m.url(&format!(
            "/v2/team/app/blobs/uploads/?digest={}",
            sha256(bytes)
        ))))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 201);
    }
    let put = |reference: &str, body: String| {
        login(
            m.client
                .put(m.url(&format!("/v2/team/app/manifests/{reference}"))),
        )
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
    };
    assert_eq!(put("v1", amd.clone()).await.unwrap().status(), 201);
    let referrer = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": HOSTILE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": dc, "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": damd, "size": amd.len()}})
    .to_string();
    assert_eq!(put("sig", referrer).await.unwrap().status(), 201);
    (m, damd)
}

async fn page(m: &TestMirror, path: &str) -> String {
    let r = m.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.headers().contains_key("content-security-policy"));
    r.text().await.unwrap()
}

#[tokio::test]
async fn the_ui_shows_what_the_mirror_holds_escaped_and_read_only() {
    let fake = FakeUpstream::start(Auth::None).await;
    let (m, damd) = mirror(&fake, "").await;

    let home = page(&m, "/ui/").await;
    for text in [
        "team/app",
        "library/alpine",
        "pushed",
        "cached",
        "docker.io",
    ] {
        assert!(home.contains(text), "{text} missing:\n{home}");
    }
    let found = page(&m, "/ui/?q=TEAM").await;
    assert!(found.contains("team/app") && !found.contains("library/alpine"));

    let alpine = page(&m, "/ui/repo?origin=docker.io&name=library/alpine").await;
    for text in [
        "3.20",
        "linux/amd64",
        "linux/arm64/v8",
        "immutable",
        OCI_INDEX,
        "5.9 KiB",
    ] {
        assert!(alpine.contains(text), "{text} missing:\n{alpine}");
    }
    let app = page(&m, "/ui/repo?origin=_local&name=docker.io/team/app").await;
    assert!(app.contains("v1") && app.contains("sig"), "{app}");

    let manifest = page(&m, &format!("/ui/manifest?digest={damd}")).await;
    assert!(
        manifest.contains("Layers") && manifest.contains("2.9 KiB"),
        "{manifest}"
    );
    assert!(manifest.contains("Referrers"));
    assert!(!manifest.contains(HOSTILE), "unescaped markup:\n{manifest}");
    assert!(
        manifest.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{manifest}"
    );

    let status = page(&m, "/ui/status").await;
    for text in [
        "hit ratio",
        "Today (UTC)",
        "Since start",
        "docker.io",
        "Rate limit remaining",
        "fills in flight",
        "no cap",
    ] {
        assert!(status.contains(text), "{text} missing:\n{status}");
    }
    // Read-only: nothing but GET and HEAD.
    let r = m.client.post(m.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = m.get("/ui/manifest?digest=sha256:nope").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn the_ui_needs_a_login_when_pulls_do() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("admin:{}\n", bcrypt::hash("pw", 4).unwrap()),
    )
    .unwrap();
    let auth = format!(
        "htpasswd = \"{}\"\nanonymous_pull = false",
        htpasswd.display()
    );
    let (m, _) = mirror(&fake, &auth).await;
    let r = m.get("/ui/").await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let r = m
        .client
        .get(m.url("/ui/"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = m
        .client
        .get(m.url("/ui/status"))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn chromium(binary: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_renders_the_ui() {
    let test = "a_real_browser_renders_the_ui";
    let Some(binary) = common::require_tool("chromium", test) else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let (m, damd) = mirror(&fake, "").await;
    let dom = tokio::task::block_in_place(|| chromium(&binary, &["--dump-dom", &m.url("/ui/")]));
    assert!(
        dom.contains("team/app") && dom.contains("library/alpine"),
        "{dom}"
    );
    let dom = tokio::task::block_in_place(|| {
        chromium(
            &binary,
            &["--dump-dom", &m.url(&format!("/ui/manifest?digest={damd}"))],
        )
    });
    assert!(dom.contains("Referrers"), "{dom}");
    assert!(
        !dom.contains("<script>alert"),
        "a script element made it into the page:\n{dom}"
    );
    // Some cached traffic for the status page to show.
    for _ in 0..3 {
        assert_eq!(
            m.get("/v2/alpine/manifests/3.20").await.headers()["x-regmirror-cache"],
            "hit"
        );
    }
    let shot = tempfile::tempdir().unwrap();
    let png = shot.path().join("status.png");
    tokio::task::block_in_place(|| {
        chromium(
            &binary,
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1280,900",
                &m.url("/ui/status"),
            ],
        )
    });
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
        "a real screenshot"
    );
    // Where the README's screenshot comes from: REGMIRROR_UI_SCREENSHOT=path keeps a copy.
    if let Ok(keep) = std::env::var("REGMIRROR_UI_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}

/// An anonymous UI page costs a bounded amount however big the content: 60 tags of indexes
/// with 3,000 children each, pulled through once. A repository page lists a page of tags
/// with a link to the next, each index summarized from a few children; a manifest page lists
/// a bounded number of children and cuts the document; `/v2/` keeps answering while a dozen
/// such pages are asked for at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_bounded_however_big_the_content() {
    let fake = FakeUpstream::start(Auth::None).await;
    let mut big = String::new();
    for t in 0..60 {
        let children: Vec<serde_json::Value> = (0..3000)
            .map(|i| {
                serde_json::json!({"mediaType": OCI_MANIFEST,
                    "digest": sha256(format!("{t}-{i}").as_bytes()), "size": 500,
                    "platform": {"os": "linux", "architecture": format!("arch{i}")}})
            })
            .collect();
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
                .to_string();
        fake.put_manifest("library/big", &format!("t{t:02}"), index.clone(), OCI_INDEX);
        big = index;
    }
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    ))
    .await;
    for t in 0..60 {
        let r = m.get(&format!("/v2/big/manifests/t{t:02}")).await;
        assert_eq!(r.status(), 200);
    }

    let first = page(&m, "/ui/repo?origin=docker.io&name=library/big").await;
    assert!(
        first.len() < 200_000,
        "a repository page of {} bytes",
        first.len()
    );
    assert!(first.contains("t00") && first.contains("t49") && !first.contains("t50"));
    assert!(
        first.contains("and 2968 more"),
        "the summary says what it left out"
    );
    assert!(first.contains("last=t49"), "a link to the next page");
    let second = page(&m, "/ui/repo?origin=docker.io&name=library/big&last=t49").await;
    assert!(second.contains("t50") && second.contains("t59") && !second.contains("t49<"));

    let digest = sha256(big.as_bytes());
    let manifest = page(&m, &format!("/ui/manifest?digest={digest}")).await;
    assert!(
        manifest.len() < 400_000,
        "a manifest page of {} bytes",
        manifest.len()
    );
    assert!(
        manifest.contains("2800 more"),
        "the page says what it left out"
    );
    assert!(manifest.contains("The first"), "the document is cut");

    // A dozen big pages at once (summaries of new digests every time: the cache is cold for
    // the second page) while a client pulls.
    let pages: Vec<_> = (0..12)
        .map(|i| {
            let url = m.url(if i % 2 == 0 {
                "/ui/repo?origin=docker.io&name=library/big&last=t09"
            } else {
                "/ui/repo?origin=docker.io&name=library/big"
            });
            tokio::spawn(async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() })
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(m.get("/v2/").await.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "/v2/ waited {:?} behind UI pages",
        started.elapsed()
    );
    for p in pages {
        assert!(p.await.unwrap().len() < 200_000);
    }
}

/// What an operator sees is true: a pulled-through multi-arch image with an attestation
/// labels the attestation as one; configs and layers open their own blob page; a pushed
/// repository is titled as clients pull it; "last pulled" is per tag; a repository of 300
/// tags pages with next and previous links and a copyable pull command; unknown things are
/// HTML 404s and bad parameters HTML 400s in the UI's style; `/` leads to the UI. A real
/// browser renders each kind of page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_say_what_is_true() {
    let fake = FakeUpstream::start(Auth::None).await;
    let (m, damd) = mirror(&fake, "").await;
    // A multi-arch image with a BuildKit attestation, pulled through.
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = common::random_bytes(2000);
    let (dc, dl) = (fake.put_blob(config.clone()), fake.put_blob(layer.clone()));
    let image = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dl, "size": layer.len()}]})
    .to_string();
    let attestation = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": []})
    .to_string();
    let (dimage, datt) = (sha256(image.as_bytes()), sha256(attestation.as_bytes()));
    fake.put_manifest("library/web", &dimage, image.clone(), OCI_MANIFEST);
    fake.put_manifest("library/web", &datt, attestation.clone(), OCI_MANIFEST);
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": dimage, "size": image.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": datt, "size": attestation.len(),
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": dimage}}]})
    .to_string();
    fake.put_manifest("library/web", "1.0", index.clone(), OCI_INDEX);
    fake.put_manifest("library/web", "stable", index, OCI_INDEX);
    for path in [
        "/v2/web/manifests/1.0".to_owned(),
        "/v2/web/manifests/stable".to_owned(),
        format!("/v2/web/manifests/{dimage}"),
        format!("/v2/web/manifests/{datt}"),
    ] {
        assert_eq!(m.get(&path).await.status(), 200, "{path}");
    }
    // A pushed repository of 300 tags, one image.
    let pushed = m.get(&format!("/v2/team/app/manifests/{damd}")).await;
    let pushed = pushed.text().await.unwrap();
    for i in 0..300 {
        let r = m
            .client
            .put(m.url(&format!("/v2/team/many/manifests/t{i:03}")))
            .header("content-type", OCI_MANIFEST)
            .body(pushed.clone());
        // The image's blobs are in team/app; mount them once.
        if i == 0 {
            for digest in serde_json::from_str::<serde_json::Value>(&pushed).unwrap()["layers"]
                .as_array()
                .unwrap()
                .iter()
                .chain(std::iter::once(
                    &serde_json::from_str::<serde_json::Value>(&pushed).unwrap()["config"],
                ))
                .map(|d| d["digest"].as_str().unwrap().to_owned())
            {
                let mount = m
                    .client
                    .post(m.url(&format!(
                        "/v2/team/many/blobs/uploads/?mount={digest}&from=team/app"
                    )))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(mount.status(), 201);
            }
        }
        assert_eq!(r.send().await.unwrap().status(), 201, "t{i:03}");
    }
    let host = m.server.addr.to_string();

    // `/` leads to the UI; unknown things are HTML pages with the right status.
    let root = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(m.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), 302);
    assert_eq!(root.headers()["location"], "/ui/");
    for (path, status) in [
        ("/ui/nonexistent", 404),
        ("/ui/repo", 400),
        ("/ui/repo?origin=bogus&name=web", 404),
        ("/ui/repo?origin=docker.io&name=library/nothere", 404),
        ("/ui/manifest?digest=sha256:nothex", 400),
        (
            "/ui/blob?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000&manifest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
            404,
        ),
    ] {
        let r = m.get(path).await;
        assert_eq!(r.status(), status, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let body = r.text().await.unwrap();
        assert!(
            body.contains("/ui/style.css") && body.contains("<h1>"),
            "{path}: {body}"
        );
    }

    // The list: tag counts, sizes, last pulls.
    let list = page(&m, "/ui/").await;
    assert!(
        list.contains("team/many") && list.contains("<td>300</td>"),
        "{list}"
    );
    // The pushed repository, titled as clients pull it, paged.
    let first = page(&m, "/ui/repo?origin=_local&name=docker.io/team/many").await;
    assert!(first.contains("<h1>team/many</h1>"), "{first}");
    assert_eq!(first.matches("<tr>").count(), 51, "a header and 50 tags");
    assert!(
        first.contains(&format!("docker pull {host}/team/many:t000")),
        "{first}"
    );
    assert!(first.contains("Next page") && !first.contains("Previous page"));
    let second = page(
        &m,
        "/ui/repo?origin=_local&name=docker.io/team/many&last=t049",
    )
    .await;
    assert!(
        second.contains("t050") && !second.contains(">t049<"),
        "{second}"
    );
    assert!(second.contains("Previous page") && second.contains("Next page"));
    let last = page(
        &m,
        "/ui/repo?origin=_local&name=docker.io/team/many&last=t249",
    )
    .await;
    assert!(
        last.contains("t299") && !last.contains("Next page"),
        "{last}"
    );
    // Last pulled is per tag: `stable` was pulled, `1.0` too; the pushed tags never.
    let web = page(&m, "/ui/repo?origin=docker.io&name=library/web").await;
    assert!(web.contains("<h1>library/web</h1>"), "{web}");
    assert!(first.contains(">never<"), "{first}");
    assert!(
        !web.contains(">never<"),
        "both tags of web were pulled: {web}"
    );
    // The index: the attestation is labelled, not a platform.
    let index_digest = {
        let r = m.get("/v2/web/manifests/1.0").await;
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let index_page = page(&m, &format!("/ui/manifest?digest={index_digest}")).await;
    assert!(index_page.contains("attestation"), "{index_page}");
    assert!(!index_page.contains("unknown/unknown"), "{index_page}");
    // The image: config and layer open blob pages, not manifest pages.
    let image_page = page(&m, &format!("/ui/manifest?digest={dimage}")).await;
    let blob_link = format!("/ui/blob?digest={}", dl.replace(':', "%3A"));
    assert!(image_page.contains(&blob_link), "{image_page}");
    let blob = page(&m, &format!("/ui/blob?digest={dl}&manifest={dimage}")).await;
    assert!(blob.contains("<h1>Layer</h1>"), "{blob}");
    assert!(
        blob.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
        "{blob}"
    );
    assert!(
        blob.contains("2000 B") || blob.contains("2.0 KiB"),
        "{blob}"
    );
    let config_page = page(&m, &format!("/ui/blob?digest={dc}&manifest={dimage}")).await;
    assert!(config_page.contains("<h1>Config</h1>"), "{config_page}");

    // A real browser renders every kind of page.
    let test = "pages_say_what_is_true";
    let Some(binary) = common::require_tool("chromium", test) else {
        return;
    };
    let shots = tempfile::tempdir().unwrap();
    for (kind, path) in [
        ("list", "/ui/".to_owned()),
        (
            "repository",
            "/ui/repo?origin=_local&name=docker.io/team/many".to_owned(),
        ),
        ("index", format!("/ui/manifest?digest={index_digest}")),
        ("blob", format!("/ui/blob?digest={dl}&manifest={dimage}")),
        ("status", "/ui/status".to_owned()),
        ("not-found", "/ui/nonexistent".to_owned()),
    ] {
        let dom = tokio::task::block_in_place(|| chromium(&binary, &["--dump-dom", &m.url(&path)]));
        assert!(
            dom.contains("regmirror") && dom.contains("<h1>"),
            "{kind}: {dom}"
        );
        let png = shots.path().join(format!("{kind}.png"));
        tokio::task::block_in_place(|| {
            chromium(
                &binary,
                &[
                    &format!("--screenshot={}", png.display()),
                    "--window-size=1280,900",
                    &m.url(&path),
                ],
            )
        });
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{kind}"
        );
    }
}

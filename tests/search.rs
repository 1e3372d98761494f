//! `docker search` against the mirror: what it holds (pushed and cached) merged with the
//! results of an upstream that offers a search, in the Docker CLI's format, paged, cached
//! briefly, never an error when the upstream is down; and with a real dockerd.

mod common;

use common::TestMirror;
use common::dockerd::Dockerd;
use common::fake_upstream::{Auth, FakeUpstream, sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A mirror of `fake` (with its search) holding a pushed `team/app` and a cached `library/alpine`.
async fn mirror_with_content(fake: &FakeUpstream) -> TestMirror {
    let config = b"{}".to_vec();
    let digest = fake.put_blob(config.clone());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
        "layers": []})
    .to_string();
    fake.put_manifest("library/alpine", "3.20", manifest.clone(), OCI_MANIFEST);
    fake.add_search_result("library/alpine", "A minimal image");
    fake.add_search_result("someone/alpine-tools", "Tools on alpine");
    let m = TestMirror::start(&format!(
        "[auth]\nanonymous_push = true\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\nsearch_url = \"{}\"\n",
        fake.url(),
        fake.url()
    ))
    .await;
    let r = m
        .client
        .post(m.url(&format!(
            "/v2/team/app/blobs/uploads/?digest={}",
            sha256(&config)
        )))
        .body(config)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = m
        .client
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(m.get("/v2/alpine/manifests/3.20").await.status(), 200);
    m
}

async fn search(m: &TestMirror, query: &str) -> serde_json::Value {
    let r = m.get(&format!("/v1/search?{query}")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn names(answer: &serde_json::Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_merges_the_mirror_and_its_upstream_and_survives_the_upstream() {
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with_content(&fake).await;

    let all = search(&m, "q=alpine&n=25").await;
    assert_eq!(names(&all), ["library/alpine", "someone/alpine-tools"]);
    assert_eq!(all["num_results"], 2);
    assert_eq!(all["query"], "alpine");
    let mine = &all["results"][0];
    assert_eq!(mine["description"], "cached from docker.io");
    assert_eq!(mine["is_official"], true);
    assert_eq!(
        all["results"][1]["star_count"], 7,
        "the upstream's own result"
    );

    let team = search(&m, "q=TEAM").await;
    assert_eq!(names(&team), ["team/app"]);
    assert_eq!(team["results"][0]["description"], "pushed to this mirror");

    // Paging.
    let first = search(&m, "q=alpine&n=1&page=1").await;
    let second = search(&m, "q=alpine&n=1&page=2").await;
    assert_eq!(
        (names(&first), names(&second)),
        (
            vec!["library/alpine".to_owned()],
            vec!["someone/alpine-tools".to_owned()]
        )
    );
    assert_eq!(first["num_pages"], 2);
    let r = m.get("/v1/search?q=alpine&n=0").await;
    assert_eq!(r.status(), 400);
    let asked = fake.count("GET", "/v1/search");
    let r = m.get(&format!("/v1/search?q={}", "a".repeat(300))).await;
    assert_eq!(r.status(), 400, "an overlong term is refused");
    assert_eq!(
        fake.count("GET", "/v1/search"),
        asked,
        "and never sent upstream"
    );

    // The upstream's answer is reused for a while; when it is down, the mirror still answers.
    let asked = fake.count("GET", "/v1/search");
    search(&m, "q=alpine").await;
    assert_eq!(fake.count("GET", "/v1/search"), asked, "cached");
    fake.set_down(true);
    let down = search(&m, "q=app").await;
    assert_eq!(names(&down), ["team/app"]);
}

/// Searches are anonymous and each new term is an upstream request: 50 identical searches at
/// once cost one upstream request, and 50 different ones at most the burst of the rate limit;
/// the rest answer with the mirror's own results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_searches_are_coalesced_and_rate_limited() {
    let fake = FakeUpstream::start(Auth::None).await;
    fake.set_latency(200);
    let m = mirror_with_content(&fake).await;
    let asked = fake.count("GET", "/v1/search");
    let same: Vec<_> = (0..50)
        .map(|_| {
            let url = m.url("/v1/search?q=tools");
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for s in same {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(fake.count("GET", "/v1/search") - asked, 1, "coalesced");
    let asked = fake.count("GET", "/v1/search");
    let different: Vec<_> = (0..50)
        .map(|i| {
            let url = m.url(&format!("/v1/search?q=term{i}"));
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for s in different {
        assert_eq!(
            s.await.unwrap(),
            200,
            "answered, from the mirror alone if need be"
        );
    }
    let sent = fake.count("GET", "/v1/search") - asked;
    assert!(sent <= 12, "{sent} upstream searches for 50 terms at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_search_through_a_real_dockerd() {
    let test = "docker_search_through_a_real_dockerd";
    let (Some(dockerd), Some(docker)) = (
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    let m = mirror_with_content(&fake).await;
    let host = m.server.addr.to_string();
    let daemon = Dockerd::start(&dockerd, &docker, &["--insecure-registry", &host]).await;
    let run = |term: &str| {
        let (ok, out) = daemon.docker(&docker, None, &["search", &format!("{host}/{term}")], None);
        assert!(ok, "docker search {term}: {out}");
        out
    };
    let out = tokio::task::block_in_place(|| run("alpine"));
    assert!(
        out.contains("library/alpine") && out.contains("cached from docker.io"),
        "{out}"
    );
    assert!(out.contains("someone/alpine-tools"), "{out}");
    let out = tokio::task::block_in_place(|| run("app"));
    assert!(
        out.contains("team/app") && out.contains("pushed to this mirror"),
        "{out}"
    );
    fake.set_down(true);
    let out = tokio::task::block_in_place(|| run("team"));
    assert!(
        out.contains("team/app"),
        "the upstream being down is no error: {out}"
    );
}

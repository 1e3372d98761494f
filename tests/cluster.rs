//! Several replicas on one bucket act as one registry: three real `regmirror` processes on one
//! Garage bucket, Redis for coordination, nginx balancing round-robin without stickiness in
//! front, skopeo pushing and pulling through it. Skipped (with a message) when a tool is
//! missing, unless REGMIRROR_REQUIRE_E2E=1.

mod common;

use std::path::Path;

use common::binary::Regmirror;
use common::cluster::{Nginx, Redis, Replicas};
use common::fake_upstream::{Auth, FakeUpstream};
use common::garage::Garage;
use common::images::{Layout, OCI_MANIFEST, layout_ref, skopeo};
use regmirror::store::Backend;

/// A cluster secret as an operator makes one (`openssl rand -hex 32`).
const SECRET: &str = "5f1c2e9a7b3d4c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

/// One cluster at a time: each is a dozen processes, and timing checks (first bytes during a
/// fill, Redis answering in time) mean little when five clusters share two cores.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// htpasswd with `ci:pushme`, anonymous pulls allowed, and `upstream` as the default.
fn auth_and_upstream(dir: &Path, upstream: &str) -> String {
    auth_and_upstream_with(dir, upstream, "")
}

/// Like [`auth_and_upstream`], with more `[[upstream]]` keys.
fn auth_and_upstream_with(dir: &Path, upstream: &str, keys: &str) -> String {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    format!(
        "[auth]\nhtpasswd = \"{}\"\nanonymous_pull = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{upstream}\"\ndefault = true\n{keys}\n",
        htpasswd.display()
    )
}

async fn metric(node: &Regmirror, series: &str) -> f64 {
    node.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The digest a replica serves for `reference` of `repo` (anonymous GET), or its status.
async fn served(node: &Regmirror, repo: &str, reference: &str) -> Result<String, u16> {
    let r = reqwest::Client::new()
        .get(node.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    if !r.status().is_success() {
        return Err(r.status().as_u16());
    }
    Ok(r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned())
}

async fn json(node: &Regmirror, path: &str) -> serde_json::Value {
    reqwest::get(node.url(path))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_round_robin_act_as_one_registry() {
    let test = "three_replicas_behind_round_robin_act_as_one_registry";
    let Some(skopeo_bin) = common::require_tool("skopeo", test) else {
        return;
    };
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    let cluster = format!("secret = \"{SECRET}\"\nredis_url = \"{}\"\n", redis.url());
    let replicas = Replicas::start(
        &garage,
        "one",
        3,
        &cluster,
        &auth_and_upstream(work.path(), &upstream.url()),
    )
    .await;
    let Some(lb) = Nginx::start(test, &replicas.addrs()).await else {
        return;
    };
    let mut layout = Layout::new(&work.path().join("src"));
    let v1 = layout.add_image("amd64", &[3 * 1024 * 1024, 100 * 1024, 10 * 1024], false);
    layout.tag("v1", &v1);
    let v2 = layout.add_image("amd64", &[2 * 1024 * 1024, 20 * 1024], false);
    layout.tag("v2", &v2);
    let src = layout.dir.display().to_string();
    let lb_host = lb.addr.to_string();
    let push = |name: &str, tag: &str| {
        let (from, to) = (
            format!("oci:{src}:{name}"),
            format!("docker://{lb_host}/team/app:{tag}"),
        );
        tokio::task::block_in_place(|| {
            skopeo(
                &skopeo_bin,
                &[
                    "copy",
                    "--dest-tls-verify=false",
                    "--dest-creds",
                    "ci:pushme",
                    "--preserve-digests",
                    &from,
                    &to,
                ],
            )
        });
    };

    // A push with credentials through the balancer: its token comes from one replica, its
    // POSTs, PATCHes and PUTs land on all three in turn.
    push("v1", "v1");
    let mut completing = 0;
    for node in &replicas.nodes {
        let puts = metric(
            node,
            "regmirror_http_requests_total{method=\"PUT\",status=\"201\"}",
        )
        .await;
        let patches = metric(
            node,
            "regmirror_http_requests_total{method=\"PATCH\",status=\"202\"}",
        )
        .await;
        if puts + patches > 0.0 {
            completing += 1;
        }
    }
    assert_eq!(completing, 3, "every replica took part in the push");

    // Every replica serves it, and skopeo pulls it whole through the balancer.
    for node in &replicas.nodes {
        assert_eq!(served(node, "team/app", "v1").await, Ok(v1.digest.clone()));
    }
    let out = work.path().join("pulled");
    let from = format!("docker://{lb_host}/team/app:v1");
    let to = format!("oci:{}:pulled", out.display());
    tokio::task::block_in_place(|| {
        skopeo(
            &skopeo_bin,
            &[
                "copy",
                "--src-tls-verify=false",
                "--preserve-digests",
                &from,
                &to,
            ],
        )
    });
    assert_eq!(layout_ref(&out, "pulled"), v1.digest);

    // A token issued by one replica is accepted by the others.
    let client = reqwest::Client::new();
    let token: serde_json::Value = client
        .get(replicas.nodes[0].url("/token?service=regmirror&scope=repository:team/app:push,pull"))
        .basic_auth("ci", Some("pushme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().expect("a token").to_owned();
    for node in &replicas.nodes[1..] {
        let r = client
            .post(node.url("/v2/team/app/blobs/uploads/"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}: token from another replica", node.addr);
        let r = client
            .post(node.url("/v2/team/app/blobs/uploads/"))
            .bearer_auth(format!("{token}x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "a forged token");
    }

    // An artifact referring to v1, pushed through replica 0: every replica lists it.
    let empty = b"{}".to_vec();
    let empty_digest = common::fake_upstream::sha256(&empty);
    let r = client
        .post(replicas.nodes[0].url(&format!(
            "/v2/team/app/blobs/uploads/?digest={empty_digest}"
        )))
        .basic_auth("ci", Some("pushme"))
        .body(empty)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sbom = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": v1.digest, "size": v1.size}})
    .to_string();
    let sbom_digest = common::fake_upstream::sha256(sbom.as_bytes());
    let r = client
        .put(replicas.nodes[0].url(&format!("/v2/team/app/manifests/{sbom_digest}")))
        .basic_auth("ci", Some("pushme"))
        .header("content-type", OCI_MANIFEST)
        .body(sbom)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for node in &replicas.nodes {
        let index = json(node, &format!("/v2/team/app/referrers/{}", v1.digest)).await;
        let listed: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["digest"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [sbom_digest.as_str()], "{}", node.addr);
    }

    // A re-pushed tag is what every replica serves on its very next request.
    push("v2", "v1");
    for node in &replicas.nodes {
        assert_eq!(served(node, "team/app", "v1").await, Ok(v2.digest.clone()));
    }

    // A delete through one replica is seen by all at once; listings agree.
    push("v1", "old");
    for node in &replicas.nodes {
        assert_eq!(served(node, "team/app", "old").await, Ok(v1.digest.clone()));
    }
    let r = client
        .delete(replicas.nodes[1].url(&format!("/v2/team/app/manifests/{}", v1.digest)))
        .basic_auth("ci", Some("pushme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    for node in &replicas.nodes {
        assert_eq!(served(node, "team/app", &v1.digest).await, Err(404));
        assert_eq!(served(node, "team/app", "old").await, Err(404));
        assert_eq!(served(node, "team/app", "v1").await, Ok(v2.digest.clone()));
        let tags = json(node, "/v2/team/app/tags/list").await;
        assert_eq!(tags["tags"], serde_json::json!(["v1"]), "{}", node.addr);
        let catalog = json(node, "/v2/_catalog").await;
        assert_eq!(
            catalog["repositories"],
            serde_json::json!(["team/app"]),
            "{}",
            node.addr
        );
    }
}

/// What every cluster test starts with: Garage, Redis, a working directory and a fake
/// upstream (which has nothing until the test puts something there).
struct Parts {
    /// Held for the test: one cluster at a time.
    _one: tokio::sync::MutexGuard<'static, ()>,
    garage: Garage,
    redis: Redis,
    work: tempfile::TempDir,
    upstream: FakeUpstream,
}

impl Parts {
    /// `None` (skipped) when Garage or redis-server is missing.
    async fn start(test: &str) -> Option<Parts> {
        Some(Parts {
            _one: ONE_CLUSTER.lock().await,
            garage: Garage::start(test).await?,
            redis: Redis::start(test).await?,
            work: tempfile::tempdir().unwrap(),
            upstream: FakeUpstream::start(Auth::None).await,
        })
    }
}

/// A random blob of `size` bytes the upstream sends `chunk` bytes every `delay_ms`: slowly
/// enough that concurrent requests arrive while it is being fetched. Its bytes and digest.
fn paced_blob(
    upstream: &FakeUpstream,
    size: usize,
    chunk: usize,
    delay_ms: u64,
) -> (Vec<u8>, String) {
    let blob = common::random_bytes(size);
    let digest = upstream.put_blob(blob.clone());
    upstream.set_fault(
        &digest,
        Some(common::fake_upstream::Fault::Paced { chunk, delay_ms }),
    );
    (blob, digest)
}

/// Three replicas with Redis, on a fresh prefix, with `upstream` as the default upstream.
async fn replicas_with_redis(
    garage: &Garage,
    redis: &Redis,
    prefix: &str,
    upstream: &FakeUpstream,
    work: &Path,
) -> Replicas {
    let cluster = format!("secret = \"{SECRET}\"\nredis_url = \"{}\"\n", redis.url());
    Replicas::start(
        garage,
        prefix,
        3,
        &cluster,
        &auth_and_upstream(work, &upstream.url()),
    )
    .await
}

/// Reads `url` to the end; whether the upstream was still sending when the first byte came.
async fn fetch(url: String, upstream: &FakeUpstream, digest: &str) -> (Vec<u8>, bool) {
    let mut response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let mut body = Vec::new();
    let mut early = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        early.get_or_insert_with(|| !upstream.finished_sending(digest));
        body.extend_from_slice(&chunk);
    }
    (body, early.unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_over_all_replicas_cost_one_upstream_fetch() {
    let test = "concurrent_cold_requests_over_all_replicas_cost_one_upstream_fetch";
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    // 8 MiB, sent slowly enough (about 1.3 s) that every request arrives during the fill.
    let (blob, digest) = paced_blob(&upstream, 8 * 1024 * 1024, 256 * 1024, 40);
    let replicas = replicas_with_redis(&garage, &redis, "cold", &upstream, work.path()).await;

    let gets = (0..12).map(|i| {
        let url = replicas.nodes[i % 3].url(&format!("/v2/library/app/blobs/{digest}"));
        fetch(url, &upstream, &digest)
    });
    let results = futures_util::future::join_all(gets).await;
    for (i, (body, early)) in results.iter().enumerate() {
        assert!(body == &blob, "client {i} got other bytes");
        assert!(
            early,
            "client {i} waited for the whole blob before its first byte"
        );
    }
    assert_eq!(
        upstream.count("GET", &digest),
        1,
        "one upstream fetch for the cluster; the replicas said:\n{}",
        replicas.cluster_log()
    );
    let mut leaders = 0.0;
    let mut followers = 0.0;
    for node in &replicas.nodes {
        leaders += metric(node, "regmirror_cluster_fills_total{role=\"leader\"}").await;
        followers += metric(node, "regmirror_cluster_fills_total{role=\"follower\"}").await;
    }
    assert_eq!((leaders, followers), (1.0, 2.0));

    // The dashboard on three replicas: each reports the whole bucket (what `max` shows; a
    // `sum` would triple it), and every regmirror series its queries use is scraped. A
    // manifest pull first, whose answer carries the upstream's rate-limit headers.
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": blob.len()},
        "layers": []})
    .to_string();
    upstream.put_manifest(
        "library/app",
        "v1",
        manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    );
    let r = reqwest::get(replicas.nodes[0].url("/v2/library/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored = (blob.len() + manifest.len()) as f64;
    let mut scraped = String::new();
    for node in &replicas.nodes {
        common::eventually_async(10, "the bucket's size on every replica", || async {
            metric(node, "regmirror_store_bytes").await == stored
        })
        .await;
        scraped.push_str(&node.metrics().await);
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/regmirror.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let exprs = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    for name in series_names(&exprs) {
        assert!(
            scraped.contains(&name),
            "{name} is on the dashboard but no replica exports it"
        );
    }
}

/// The metric families a PromQL text names (`regmirror_*` and `process_*`; histogram series
/// by their family).
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("regmirror_") || word.starts_with("process_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            names.insert(family.to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_fill_or_mid_push_loses_nothing() {
    let test = "a_replica_killed_mid_fill_or_mid_push_loses_nothing";
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    let (blob, digest) = paced_blob(&upstream, 6 * 1024 * 1024, 128 * 1024, 50);
    let mut replicas = replicas_with_redis(&garage, &redis, "kill", &upstream, work.path()).await;
    let bucket = garage.backend("kill");
    let hex = &digest["sha256:".len()..];
    let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);

    // Replica 0 leads the fill; it dies once the first bytes are out.
    let mut response =
        reqwest::get(replicas.nodes[0].url(&format!("/v2/library/app/blobs/{digest}")))
            .await
            .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    // A push in flight on it too: a monolithic upload whose body never finishes.
    let pushed = common::random_bytes(1024 * 1024);
    let pushed_digest = common::fake_upstream::sha256(&pushed);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(pushed[..512 * 1024].to_vec())).await.unwrap();
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let body = reqwest::Body::wrap_stream(chunks);
    let push = tokio::spawn(
        reqwest::Client::new()
            .post(replicas.nodes[0].url(&format!(
                "/v2/team/app/blobs/uploads/?digest={pushed_digest}"
            )))
            .basic_auth("ci", Some("pushme"))
            .body(body)
            .send(),
    );
    let sessions = replicas.dir.path().join("r0/uploads");
    common::eventually(10, "the push to reach replica 0", || {
        std::fs::read_dir(&sessions).is_ok_and(|dirs| {
            dirs.flatten()
                .any(|d| std::fs::metadata(d.path().join("data")).is_ok_and(|m| m.len() > 0))
        })
    })
    .await;
    replicas.nodes[0].kill9();
    drop(tx);

    // The client of the dead replica does not get a whole, silently wrong blob.
    let mut got = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        got += chunk.len();
    }
    assert!(got < blob.len(), "the dead replica cannot have sent it all");
    assert!(
        push.await.unwrap().is_err(),
        "the push to the dead replica failed"
    );
    // Nothing partial in the bucket.
    assert!(
        bucket.stat(&key).await.unwrap().is_none(),
        "a partial blob in the bucket"
    );

    // Another replica serves the blob at once (the dead leader's claim does not stop it).
    let started = std::time::Instant::now();
    let (body, _) = fetch(
        replicas.nodes[1].url(&format!("/v2/library/app/blobs/{digest}")),
        &upstream,
        &digest,
    )
    .await;
    assert!(body == blob);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    common::eventually_async(10, "the blob to be committed", || async {
        bucket.stat(&key).await.unwrap().is_some()
    })
    .await;
    let stored = bucket.get(&key).await.unwrap().unwrap();
    assert_eq!(common::fake_upstream::sha256(&stored), digest);
    // The push that died with replica 0 left nothing visible.
    let r = reqwest::get(replicas.nodes[2].url(&format!("/v2/team/app/blobs/{pushed_digest}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_fetches_and_revalidations_are_coalesced_over_the_cluster() {
    let test = "manifest_fetches_and_revalidations_are_coalesced_over_the_cluster";
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    let manifest = common::images::put_config_only_image(&upstream, "library/app", "v1");
    let cluster = format!("secret = \"{SECRET}\"\nredis_url = \"{}\"\n", redis.url());
    let replicas = Replicas::start(
        &garage,
        "manifests",
        3,
        &cluster,
        &auth_and_upstream_with(work.path(), &upstream.url(), "tag_ttl = \"2s\""),
    )
    .await;
    // Slow enough that every request arrives while the first lookup is still out.
    upstream.set_latency(400);
    let expected = common::fake_upstream::sha256(manifest.as_bytes());
    let all = |round: &'static str| {
        let nodes = &replicas.nodes;
        futures_util::future::join_all((0..9).map(move |i| async move {
            let got = served(&nodes[i % 3], "library/app", "v1").await;
            (round, got)
        }))
    };
    for (round, got) in all("cold").await {
        assert_eq!(got, Ok(expected.clone()), "{round}");
    }
    assert_eq!(
        upstream.count("GET", "/manifests/v1"),
        1,
        "one manifest fetch for the cluster"
    );
    // Only one replica heard the upstream's rate limit; every replica shows it.
    for node in &replicas.nodes {
        common::eventually_async(10, "the rate limit on every replica", || async {
            metric(
                node,
                "regmirror_upstream_ratelimit_remaining{upstream=\"docker.io\"}",
            )
            .await
                == 42.0
        })
        .await;
    }
    // Past the TTL: one revalidation (a HEAD) for the cluster.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    for (round, got) in all("revalidated").await {
        assert_eq!(got, Ok(expected.clone()), "{round}");
    }
    assert_eq!(
        upstream.count("HEAD", "/manifests/v1"),
        1,
        "one revalidation for the cluster"
    );
    assert_eq!(upstream.count("GET", "/manifests/v1"), 1);
}

/// 9 concurrent GETs of a new, slowly sent blob of `size` bytes over the replicas; how many
/// upstream GETs they cost.
async fn cold_round(replicas: &Replicas, upstream: &FakeUpstream, size: usize) -> usize {
    let (blob, digest) = paced_blob(upstream, size, 256 * 1024, 30);
    let gets = (0..9).map(|i| {
        let url = replicas.nodes[i % 3].url(&format!("/v2/library/app/blobs/{digest}"));
        let digest = digest.clone();
        async move { fetch(url, upstream, &digest).await.0 }
    });
    for body in futures_util::future::join_all(gets).await {
        assert!(body == blob, "a client got other bytes");
    }
    upstream.count("GET", &digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_degrades_to_one_fetch_per_replica_never_to_errors() {
    let test = "redis_going_away_degrades_to_one_fetch_per_replica_never_to_errors";
    let Some(Parts {
        _one,
        garage,
        mut redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    let replicas = replicas_with_redis(&garage, &redis, "noredis", &upstream, work.path()).await;
    redis.stop();
    // Without Redis: every request still answered, at most one fetch per replica.
    let fetches = cold_round(&replicas, &upstream, 4 * 1024 * 1024).await;
    assert!((1..=3).contains(&fetches), "{fetches} upstream fetches");
    // A push through one replica reaches the others by the journal, within seconds.
    let layer = common::random_bytes(1000);
    let layer_digest = common::fake_upstream::sha256(&layer);
    let r = reqwest::Client::new()
        .post(replicas.nodes[0].url(&format!(
            "/v2/team/app/blobs/uploads/?digest={layer_digest}"
        )))
        .basic_auth("ci", Some("pushme"))
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for node in &replicas.nodes {
        let url = node.url(&format!("/v2/team/app/blobs/{layer_digest}"));
        common::eventually_async(5, "the pushed blob on every replica", || {
            let url = url.clone();
            async move { reqwest::get(url).await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
    }

    // Redis is back: one fetch for the cluster again.
    redis.resume().await;
    common::eventually_async(10, "coordination to resume", || async {
        let leaders = {
            let mut n = 0.0;
            for node in &replicas.nodes {
                n += metric(node, "regmirror_cluster_redis_up").await;
            }
            n
        };
        leaders == 3.0
    })
    .await;
    assert_eq!(
        cold_round(&replicas, &upstream, 4 * 1024 * 1024).await,
        1,
        "one fetch once Redis is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_steady_pulls_loses_no_request() {
    let test = "a_rolling_restart_under_steady_pulls_loses_no_request";
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    let layer = common::random_bytes(512 * 1024);
    let layer_digest = upstream.put_blob(layer.clone());
    let config = common::random_bytes(300);
    let config_digest = upstream.put_blob(config);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 300},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]})
    .to_string();
    upstream.put_manifest("library/app", "v1", manifest.clone(), OCI_MANIFEST);
    let mut replicas =
        replicas_with_redis(&garage, &redis, "rolling", &upstream, work.path()).await;
    let Some(lb) = Nginx::start(test, &replicas.addrs()).await else {
        return;
    };

    // Steady pulls through the balancer: the manifest and the layer, four clients in a loop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            let (manifest_url, layer_url) = (
                lb.url("/v2/library/app/manifests/v1"),
                lb.url(&format!("/v2/library/app/blobs/{layer_digest}")),
            );
            let layer = layer.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = client
                        .get(&manifest_url)
                        .header("accept", OCI_MANIFEST)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(format!("manifest: {}", r.status())),
                        Err(e) => failed.push(format!("manifest: {e}")),
                    }
                    let r = client.get(&layer_url).send().await;
                    match r {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(b) if b == layer => ok += 1,
                            Ok(_) => failed.push("layer: other bytes".into()),
                            Err(e) => failed.push(format!("layer body: {e}")),
                        },
                        Ok(r) => failed.push(format!("layer: {}", r.status())),
                        Err(e) => failed.push(format!("layer: {e}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Each replica in turn: stopped gracefully, started again, while the pulls go on.
    for i in 0..3 {
        common::eventually_async(10, "pulls to be flowing", || async {
            metric(
                &replicas.nodes[(i + 1) % 3],
                "regmirror_http_requests_total{method=\"GET\",status=\"200\"}",
            )
            .await
                > 0.0
        })
        .await;
        replicas.restart_in_place(i).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests lost during the rolling restart: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 20, "only {total} pulls during the restart");
    assert_eq!(
        upstream.count("GET", &layer_digest),
        1,
        "the layer was fetched once"
    );
}

/// dockerd with the balancer as its `registry-mirrors` entry pulls an image whose requests
/// spread over the three replicas; each blob comes from the upstream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_three_replicas() {
    let test = "dockerd_pulls_through_three_replicas";
    let (Some(dockerd), Some(docker)) = (
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    let Some(Parts {
        _one,
        garage,
        redis,
        work,
        upstream,
    }) = Parts::start(test).await
    else {
        return;
    };
    common::images::put_runnable_image(&upstream, "library/hello", "1.0");
    let replicas = replicas_with_redis(&garage, &redis, "dockerd", &upstream, work.path()).await;
    let Some(lb) = Nginx::start(test, &replicas.addrs()).await else {
        return;
    };
    let mirror = format!("http://{}", lb.addr);
    let host = lb.addr.to_string();
    let daemon = common::dockerd::Dockerd::start(
        &dockerd,
        &docker,
        &["--registry-mirror", &mirror, "--insecure-registry", &host],
    )
    .await;
    let docker_cmd = |args: &[&str]| daemon.docker(&docker, None, args, None);
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["pull", "hello:1.0"]));
    assert!(ok, "docker pull through the replicas: {out}");
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        2,
        "config and layer, once each"
    );
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["rmi", "hello:1.0"]));
    assert!(ok, "{out}");
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["pull", "hello:1.0"]));
    assert!(ok, "a second pull: {out}");
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        2,
        "the second pull came from the cache"
    );
}

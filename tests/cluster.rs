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
use common::images::{Layout, layout_ref, skopeo};

const SECRET: &str = "a cluster secret for the tests, long enough";

/// htpasswd with `ci:pushme`, anonymous pulls allowed, and `upstream` as the default.
fn auth_and_upstream(dir: &Path, upstream: &str) -> String {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    format!(
        "[auth]\nhtpasswd = \"{}\"\nanonymous_pull = true\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{upstream}\"\ndefault = true\n",
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
    let Some(garage) = Garage::start(test).await else {
        return;
    };
    let Some(redis) = Redis::start(test).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    // An upstream that has nothing: what is not pushed is a 404.
    let upstream = FakeUpstream::start(Auth::None).await;
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

    // Every replica serves it, and skopeo pulls it whole from any of them.
    for node in &replicas.nodes {
        assert_eq!(served(node, "team/app", "v1").await, Ok(v1.digest.clone()));
    }
    let out = work.path().join("pulled");
    let from = format!("docker://{}/team/app:v1", replicas.nodes[2].addr);
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

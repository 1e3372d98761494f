//! dockerd as a real client: pulling Docker Hub images through regmirror as its
//! `registry-mirrors` entry, also while the upstream hangs (the cached tag is served stale).
//! With no network here, dockerd's fallback to Docker Hub cannot succeed: a pull that works
//! came through the mirror.

mod common;

use common::TestMirror;
use common::dockerd::Dockerd;
use common::fake_upstream::{Auth, FakeUpstream};
use common::images::put_runnable_image as put_image;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_the_mirror_also_while_the_upstream_hangs() {
    let test = "dockerd_pulls_through_the_mirror_also_while_the_upstream_hangs";
    let (Some(dockerd), Some(docker)) = (
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    put_image(&fake, "library/hello", "1.0");
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\ntag_ttl = \"0s\"\nresponse_timeout = \"2s\"\n",
        fake.url()
    ))
    .await;
    let mirror_url = format!("http://{}", m.server.addr);
    let host = m.server.addr.to_string();
    let daemon = Dockerd::start(
        &dockerd,
        &docker,
        &[
            "--registry-mirror",
            &mirror_url,
            "--insecure-registry",
            &host,
        ],
    )
    .await;
    let docker_cmd = |args: &[&str]| daemon.docker(&docker, None, args, None);
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["pull", "hello:1.0"]));
    assert!(ok, "docker pull through the mirror: {out}");
    assert!(
        fake.count("GET", "/blobs/") >= 2,
        "the blobs came through the mirror"
    );

    // The upstream hangs before its headers: the pull still works, from the cache, stale.
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["rmi", "hello:1.0"]));
    assert!(ok, "{out}");
    fake.set_hang(true);
    let started = std::time::Instant::now();
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["pull", "hello:1.0"]));
    assert!(ok, "docker pull while the upstream hangs: {out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        m.metric("regmirror_cache_lookups_total{kind=\"manifest\",result=\"stale\",upstream=\"docker.io\"}")
            .await
            >= 1.0
    );
    let (ok, out) = tokio::task::block_in_place(|| docker_cmd(&["image", "inspect", "hello:1.0"]));
    assert!(ok, "{out}");
}

/// `docker login` and `docker push` to regmirror over TLS with htpasswd users: the challenge
/// sends dockerd to an https:// token endpoint, the push lands, and a wrong password fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_and_push_over_tls() {
    let test = "docker_login_and_push_over_tls";
    let (Some(dockerd), Some(docker)) = (
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    // An image to push: pulled through a plain mirror first.
    let fake = FakeUpstream::start(Auth::None).await;
    put_image(&fake, "library/hello", "1.0");
    let source = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        fake.url()
    ))
    .await;
    let work = tempfile::tempdir().unwrap();
    let (crt, tls) = common::test_certificate(work.path());
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("ci:{}\n", bcrypt::hash("pushme", 4).unwrap()),
    )
    .unwrap();
    let target = TestMirror::start_with(
        tempfile::tempdir().unwrap(),
        &tls,
        &format!("[auth]\nhtpasswd = \"{}\"\n", htpasswd.display()),
    )
    .await;
    let target_host = target.server.addr.to_string();
    // dockerd trusts a registry's CA from /etc/docker/certs.d/<host:port>/ca.crt.
    let certs = std::path::Path::new("/etc/docker/certs.d").join(&target_host);
    if std::fs::create_dir_all(&certs).is_err()
        || std::fs::copy(&crt, certs.join("ca.crt")).is_err()
    {
        if common::e2e_required() {
            panic!("{test}: cannot write {} (not root?)", certs.display());
        }
        eprintln!("SKIPPED {test}: cannot write {}", certs.display());
        return;
    }
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _certs = RemoveOnDrop(certs);
    let mirror_url = format!("http://{}", source.server.addr);
    let source_host = source.server.addr.to_string();
    let daemon = Dockerd::start(
        &dockerd,
        &docker,
        &[
            "--registry-mirror",
            &mirror_url,
            "--insecure-registry",
            &source_host,
        ],
    )
    .await;
    let config = tempfile::tempdir().unwrap();
    let docker_cmd = |args: &[&str], stdin: Option<&str>| {
        daemon.docker(&docker, Some(config.path()), args, stdin)
    };
    let run = |args: &[&str], stdin: Option<&str>| {
        tokio::task::block_in_place(|| docker_cmd(args, stdin))
    };
    let (ok, out) = run(&["pull", "hello:1.0"], None);
    assert!(ok, "{out}");
    let pushed = format!("{target_host}/team/hello:1.0");
    let (ok, out) = run(&["tag", "hello:1.0", &pushed], None);
    assert!(ok, "{out}");
    // (A push without login is refused: tests/push.rs shows it; dockerd would retry it for a
    // minute.)
    let (ok, out) = run(
        &["login", "-u", "ci", "--password-stdin", &target_host],
        Some("wrong\n"),
    );
    assert!(!ok, "a wrong password must fail: {out}");
    let (ok, out) = run(
        &["login", "-u", "ci", "--password-stdin", &target_host],
        Some("pushme\n"),
    );
    assert!(ok, "docker login over TLS: {out}");
    let (ok, out) = run(&["push", &pushed], None);
    assert!(ok, "docker push over TLS: {out}");
    let mirror = &target.server.mirror;
    let repo = mirror.target(None, &"team/hello".parse().unwrap()).unwrap();
    let tags = mirror.list_tags(&repo, None, None).await.unwrap();
    assert_eq!(tags.map(|(t, _)| t), Some(vec!["1.0".to_owned()]));
}

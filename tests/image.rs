//! The container image users run, built here the way the README says (`deploy/image/build`)
//! by a real dockerd, offline (a static binary on `scratch`), then run as a user would: as a
//! non-root user with its cache on the `/data` volume, healthy by its own HEALTHCHECK, stopped
//! gracefully, and pulled through by dockerd itself. A second container on the same volume,
//! offline, still serves what the first cached.

mod common;

use std::path::Path;
use std::process::Command;

use common::dockerd::Dockerd;
use common::fake_upstream::{Auth, FakeUpstream};
use common::images::put_runnable_image;

const TAG: &str = "regmirror:image-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_offline_runs_as_non_root_and_serves_pulls() {
    let test = "the_image_builds_offline_runs_as_non_root_and_serves_pulls";
    let (Some(dockerd), Some(docker)) = (
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    let fake = FakeUpstream::start(Auth::None).await;
    put_runnable_image(&fake, "library/hello", "1.0");
    let port = common::cluster::free_port();
    let mirror = format!("127.0.0.1:{port}");
    let daemon = Dockerd::start(&dockerd, &docker, &["--insecure-registry", &mirror]).await;
    let run =
        |args: &[&str]| tokio::task::block_in_place(|| daemon.docker(&docker, None, args, None));

    // What the README tells users to run.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = tokio::task::block_in_place(|| {
        Command::new(root.join("deploy/image/build"))
            .arg(TAG)
            .env("DOCKER", &docker)
            .env("DOCKER_HOST", daemon.host())
            .output()
            .unwrap()
    });
    assert!(
        built.status.success(),
        "deploy/image/build:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let (ok, user) = run(&["image", "inspect", "-f", "{{.Config.User}}", TAG]);
    assert!(ok, "{user}");
    assert_eq!(
        user.trim(),
        "10001:10001",
        "the image runs as a non-root user"
    );
    let (ok, volumes) = run(&["image", "inspect", "-f", "{{json .Config.Volumes}}", TAG]);
    assert!(ok && volumes.contains("/data"), "{volumes}");

    // The operator's config replaces the shipped one; the HEALTHCHECK reads the same file.
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        config_dir.path().join("mirror.toml"),
        format!(
            "[server]\nlisten = \"{mirror}\"\n[storage]\npath = \"/data\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            fake.url()
        ),
    )
    .unwrap();
    set_mode(config_dir.path(), 0o755);
    set_mode(&config_dir.path().join("mirror.toml"), 0o644);
    let config_mount = format!("{}:/etc/regmirror:ro", config_dir.path().display());
    let start = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            "--health-interval",
            "1s",
            "--health-start-period",
            "1s",
            "-v",
            "regmirror-data:/data",
            "-v",
            &config_mount,
            TAG,
        ];
        args.extend_from_slice(extra);
        let (ok, out) = run(&args);
        assert!(ok, "docker run: {out}");
    };
    start("mirror-1", &[]);
    await_healthy(&daemon, &docker, "mirror-1").await;

    let image = format!("{mirror}/library/hello:1.0");
    let (ok, out) = run(&["pull", &image]);
    assert!(ok, "docker pull through the container: {out}");
    assert!(
        fake.count("GET", "/blobs/") >= 2,
        "the blobs came from the upstream"
    );

    // SIGTERM: a graceful stop, exit code 0.
    let (ok, out) = run(&["stop", "-t", "20", "mirror-1"]);
    assert!(ok, "{out}");
    let (_, code) = run(&["inspect", "-f", "{{.State.ExitCode}}", "mirror-1"]);
    assert_eq!(code.trim(), "0", "exit code after docker stop");

    // A new container on the same volume, never asking the upstream: the cache survived.
    let fetched = fake.count("GET", "/blobs/");
    start(
        "mirror-2",
        &[
            "serve",
            "--offline",
            "--config",
            "/etc/regmirror/mirror.toml",
        ],
    );
    await_healthy(&daemon, &docker, "mirror-2").await;
    let (ok, out) = run(&["rmi", &image]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["pull", &image]);
    assert!(ok, "docker pull from the volume's cache: {out}");
    assert_eq!(fake.count("GET", "/blobs/"), fetched, "served from /data");
    let (ok, out) = run(&["rm", "-f", "mirror-2"]);
    assert!(ok, "{out}");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Waits until dockerd reports the container healthy by the image's own HEALTHCHECK; shows
/// its logs and health probes when it never is.
async fn await_healthy(daemon: &Dockerd, docker: &Path, name: &str) {
    let inspect = |format: &str| {
        let args = ["inspect", "-f", format, name];
        tokio::task::block_in_place(|| daemon.docker(docker, None, &args, None)).1
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if inspect("{{.State.Health.Status}}").trim() == "healthy" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let logs = tokio::task::block_in_place(|| daemon.docker(docker, None, &["logs", name], None));
    panic!(
        "{name} never became healthy: {}\nlogs:\n{}",
        inspect("{{json .State.Health}}"),
        logs.1
    );
}

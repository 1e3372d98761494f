//! End to end with containerd as the client: `ctr content fetch` with a `hosts.toml` that
//! makes regmirror the mirror of docker.io, the way a Kubernetes node is set up. containerd
//! adds `?ns=docker.io` to every request it sends a mirror; regmirror's upstream here is only
//! reachable by that `ns` (it is not the default), so a successful fetch shows the whole path.
//! Skipped (with a message) when the tools are missing, unless REGMIRROR_REQUIRE_E2E=1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::TestMirror;
use common::images::{Layout, push_http};
use common::registry::Registry;

/// A containerd daemon of the test's own: state, content and socket in a temp dir.
struct Containerd {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Containerd {
    async fn start(binary: &Path) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = socket.display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let containerd = Containerd { child, socket, dir };
        let log_path = containerd.dir.path().join("containerd.log");
        common::eventually(20, "containerd to serve its socket", || {
            containerd.ctr(&["version"]).status.success()
        })
        .await;
        assert!(log_path.exists());
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// A hosts directory that sends docker.io pulls to `mirror` (plain HTTP) first. Docker
    /// Hub itself stays the fallback server, unreachable from here.
    fn hosts_dir(&self, mirror: &str) -> PathBuf {
        let hosts = self.dir.path().join("certs.d");
        std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
        std::fs::write(
            hosts.join("docker.io/hosts.toml"),
            format!(
                "server = \"https://registry-1.docker.io\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
        hosts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_regmirror_as_its_docker_io_mirror() {
    let test = "containerd_pulls_through_regmirror_as_its_docker_io_mirror";
    let Some(tools) = tools(test) else { return };
    pull_as_docker_io_mirror(tools, None).await;
}

/// The same with the mirror storing in a bucket (Garage): every blob containerd fetched is an
/// object in the bucket afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_regmirror_on_s3() {
    let test = "containerd_pulls_through_regmirror_on_s3";
    let Some(tools) = tools(test) else { return };
    let Some(garage) = common::garage::Garage::start(test).await else {
        return;
    };
    pull_as_docker_io_mirror(tools, Some(&garage)).await;
}

/// containerd, ctr and docker-registry, or `None` (skipped) when one is missing.
fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    let containerd = common::require_tool("containerd", test)?;
    common::require_tool("ctr", test)?;
    let registry = common::require_tool("docker-registry", test)?;
    Some((containerd, registry))
}

async fn pull_as_docker_io_mirror(
    (containerd_bin, registry_bin): (PathBuf, PathBuf),
    garage: Option<&common::garage::Garage>,
) {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(&registry_bin).await;
    let mut layout = Layout::new(&work.path().join("src"));
    let amd64 = layout.add_image("amd64", &[2 * 1024 * 1024, 64 * 1024], false);
    let arm64 = layout.add_image("arm64", &[96 * 1024], false);
    let index = layout.add_index(&[("amd64", &amd64), ("arm64", &arm64)], false);
    push_http(&registry.url(), "library/app", "v1", &layout.dir, &index).await;

    // docker.io is reachable only by `ns=docker.io`: no default upstream (a lone upstream
    // would be the default, so there is a second one, never asked).
    let upstream = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n\
         [[upstream]]\nname = \"quay.io\"\nurl = \"http://127.0.0.1:9\"\n",
        registry.url()
    );
    let storage = garage.map(|g| g.storage_keys("containerd", ""));
    let dir = tempfile::tempdir().unwrap();
    let mirror = TestMirror::start_storage(dir, storage.as_deref().unwrap_or(""), &upstream).await;
    let plain = mirror.get("/v2/library/app/manifests/v1").await;
    assert_eq!(plain.status(), 404, "without ns the name routes nowhere");

    let containerd = Containerd::start(&containerd_bin).await;
    let hosts = containerd.hosts_dir(&mirror.server.addr.to_string());
    let hosts = hosts.display().to_string();
    let fetch = |image: &str| {
        let out = containerd.ctr(&[
            "content",
            "fetch",
            "--hosts-dir",
            &hosts,
            "--all-platforms",
            image,
        ]);
        assert!(
            out.status.success(),
            "ctr content fetch {image}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let before = registry.blob_gets().await;
    tokio::task::block_in_place(|| fetch("docker.io/library/app:v1"));
    // Two images: a config and their layers each.
    assert_eq!(registry.blob_gets().await - before, 5);

    // containerd holds exactly the bytes pushed, under their digests.
    let listed = tokio::task::block_in_place(|| containerd.ctr(&["content", "ls", "-q"]));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    for digest in [&index.digest, &amd64.digest, &arm64.digest] {
        assert!(
            listed.contains(digest.as_str()),
            "{digest} not in containerd"
        );
    }
    assert!(
        mirror
            .metric("regmirror_cache_lookups_total{kind=\"blob\",result=\"miss\",upstream=\"docker.io\"}")
            .await
            >= 5.0
    );

    // By digest, after containerd forgets the content: from the mirror's cache only.
    tokio::task::block_in_place(|| {
        let digests: Vec<&str> = listed.lines().collect();
        let mut args = vec!["content", "rm"];
        args.extend(digests);
        assert!(containerd.ctr(&args).status.success());
        fetch(&format!("docker.io/library/app@{}", index.digest));
    });
    assert_eq!(
        registry.blob_gets().await - before,
        5,
        "the second fetch reached the upstream"
    );

    // On S3 the bucket holds every blob containerd fetched, whole.
    if let Some(garage) = garage {
        use regmirror::store::Backend;
        let bucket = garage.backend("containerd");
        let fetched: Vec<&str> = listed
            .lines()
            .filter(|l| l.starts_with("sha256:"))
            .collect();
        assert!(fetched.len() >= 8, "containerd listed {fetched:?}");
        for digest in fetched {
            let hex = &digest["sha256:".len()..];
            let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
            let object = bucket.stat(&key).await.unwrap();
            assert!(object.is_some(), "{key} is not in the bucket");
        }
    }
}

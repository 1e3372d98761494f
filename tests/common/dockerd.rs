//! A dockerd of the test's own: private data and exec roots, vfs, no iptables, no bridge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A dockerd of the test's own (private data root, vfs, no iptables).
pub struct Dockerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd with `extra` flags and waits until `docker version` answers.
    pub async fn start(dockerd: &Path, docker: &Path, extra: &[&str]) -> Dockerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .args(extra)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let daemon = Dockerd {
            child,
            socket,
            _dir: dir,
        };
        let ready = || {
            Command::new(docker)
                .args(["-H", &daemon.host(), "version"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        super::eventually(60, "dockerd to answer", ready).await;
        daemon
    }

    /// Runs `docker <args>` against this daemon (with `DOCKER_CONFIG`, and `stdin`, when
    /// given): whether it succeeded, and what it printed.
    pub fn docker(
        &self,
        docker: &Path,
        config: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String) {
        use std::io::Write;
        let mut command = Command::new(docker);
        if let Some(config) = config {
            command.env("DOCKER_CONFIG", config);
        }
        let mut child = command
            .args(["-H", &self.host()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `-H` for the docker CLI.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets it clean up its mounts; then make sure it is gone.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The real `regmirror` binary as a child process, for what only a whole process shows:
//! signals, `kill -9`, its log output.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `regmirror serve`, killed when dropped.
pub struct Regmirror {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl Regmirror {
    /// Starts `regmirror serve --config <config>` on a free port, output discarded, and waits
    /// until it answers.
    pub async fn start(config: &Path) -> Regmirror {
        Self::spawn(config, Stdio::null()).await
    }

    /// Like [`Regmirror::start`], with its log (stderr) written to `log`.
    pub async fn start_logging_to(config: &Path, log: &Path) -> Regmirror {
        let file = std::fs::File::create(log).unwrap();
        Self::spawn(config, Stdio::from(file)).await
    }

    async fn spawn(config: &Path, stderr: Stdio) -> Regmirror {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::spawn_at(config, ([127, 0, 0, 1], port).into(), stderr).await
    }

    /// Like [`Regmirror::start_logging_to`], on a given address (a restart in place).
    pub async fn start_at(config: &Path, addr: std::net::SocketAddr, log: &Path) -> Regmirror {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Self::spawn_at(config, addr, Stdio::from(file)).await
    }

    async fn spawn_at(config: &Path, addr: std::net::SocketAddr, stderr: Stdio) -> Regmirror {
        let child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Regmirror { child, addr };
        let client = reqwest::Client::new();
        super::eventually_async(30, "regmirror to listen", || {
            let url = format!("http://{addr}/healthz");
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        server
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM (a graceful stop) and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Regmirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

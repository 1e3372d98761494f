//! CNCF Distribution (Debian's `docker-registry`) as a real upstream, on 127.0.0.1 and a free
//! port, with a config written by the test. Its access log tells which requests reached it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

pub struct Registry {
    child: Child,
    pub addr: std::net::SocketAddr,
    log: PathBuf,
    _dir: TempDir,
    markers: std::sync::atomic::AtomicUsize,
}

impl Registry {
    pub async fn start(binary: &Path) -> Registry {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        // Ask the OS for a free port, then hand it to the registry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let registry = Registry {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            log,
            _dir: dir,
            markers: Default::default(),
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..400 {
            let response = client.get(format!("{}/v2/", self.url())).send().await;
            if response.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "docker-registry did not come up: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The access log lines so far, complete up to a marker request sent now (the registry
    /// logs each request after answering it, so we wait for the marker's line).
    pub async fn access_log(&self) -> Vec<String> {
        let n = self
            .markers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker = format!("/v2/?marker={n}");
        reqwest::get(format!("{}{marker}", self.url()))
            .await
            .unwrap();
        for _ in 0..200 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(&marker) {
                return text
                    .lines()
                    .filter(|l| l.contains("\"GET ") || l.contains("\"HEAD "))
                    .map(str::to_owned)
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("marker request never appeared in the registry log");
    }

    /// How many blob GETs the registry has answered so far.
    pub async fn blob_gets(&self) -> usize {
        self.access_log()
            .await
            .iter()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

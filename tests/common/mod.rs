//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod binary;
pub mod cluster;
pub mod dockerd;
pub mod emulators;
pub mod fake_upstream;
pub mod garage;
pub mod garage_cluster;
pub mod images;
pub mod registry;

use std::path::PathBuf;

use regmirror::config::Config;
use tempfile::TempDir;

/// A process's CPU time (user + system) so far, in seconds, from `/proc/<pid>/stat`; 0 when
/// it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as f64
    } else {
        100.0
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / per_second
}

/// Installs the process's TLS provider (ring, as regmirror's) for the tests' own HTTP clients;
/// every harness entry point calls it.
pub fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A mirror running in-process with its own store.
pub struct TestMirror {
    pub server: regmirror::Server,
    pub dir: TempDir,
    pub client: reqwest::Client,
}

impl TestMirror {
    /// Starts a mirror whose config is `upstreams_toml` (the `[[upstream]]` tables and any
    /// other sections), with the store in a fresh temp dir and a free port.
    pub async fn start(upstreams_toml: &str) -> TestMirror {
        let dir = tempfile::tempdir().unwrap();
        TestMirror::start_in(dir, upstreams_toml).await
    }

    /// Like [`TestMirror::start`], reusing an existing store directory (a "restart").
    pub async fn start_in(dir: TempDir, upstreams_toml: &str) -> TestMirror {
        TestMirror::start_with(dir, "", upstreams_toml).await
    }

    /// Like [`TestMirror::start_in`], with extra `[server]` keys (e.g. `offline = true`).
    pub async fn start_with(dir: TempDir, server_keys: &str, upstreams_toml: &str) -> TestMirror {
        TestMirror::start_config(dir, server_keys, "", upstreams_toml).await
    }

    /// Like [`TestMirror::start_in`], with extra `[storage]` keys (e.g. `delete = true`).
    pub async fn start_storage(dir: TempDir, storage_keys: &str, rest: &str) -> TestMirror {
        TestMirror::start_config(dir, "", storage_keys, rest).await
    }

    /// A mirror with extra `[server]` and `[storage]` keys and further tables.
    pub async fn start_config(
        dir: TempDir,
        server_keys: &str,
        storage_keys: &str,
        rest: &str,
    ) -> TestMirror {
        tls();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_keys}\n[storage]\npath = \"{}\"\n{storage_keys}\n{rest}",
            dir.path().join("store").display()
        );
        let config = Config::parse(&text, "test").unwrap();
        let server = regmirror::start(&config).await.unwrap();
        TestMirror {
            server,
            dir,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Path of a blob in the store.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.store().join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// Waits until every blob fill has ended, committed or not. A client gets a blob's last
    /// byte once it is verified, a moment before the blob is synced and renamed into place.
    pub async fn fills_settled(&self) {
        self.server.mirror.fills.wait_idle().await;
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Opens an anonymous upload session in `repo`; its `Location`.
    pub async fn open_upload(&self, repo: &str) -> String {
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "POST /v2/{repo}/blobs/uploads/");
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.client.head(self.url(path)).send().await.unwrap()
    }

    /// The value of one metric sample (exact label set as rendered), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    /// Stops the server and hands back its store directory.
    pub async fn stop(self) -> TempDir {
        self.server.stop().await;
        self.dir
    }
}

/// Writes a config file for the real binary: the store at `store`, `upstream_url` as the
/// default `docker.io` upstream, plus `server_keys` in `[server]`.
pub fn write_config(
    path: &std::path::Path,
    store: &std::path::Path,
    upstream_url: &str,
    server_keys: &str,
) {
    let text = format!(
        "[server]\n{server_keys}\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{upstream_url}\"\ndefault = true\n",
        store.display()
    );
    std::fs::write(path, text).unwrap();
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::fill(&mut bytes[..]);
    bytes
}

/// Polls `condition` every 10 ms until it holds; panics after `secs` seconds. For events the
/// test cannot be told about directly (a detached fill finishing).
pub async fn eventually(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Like [`eventually`], for an async condition.
pub async fn eventually_async<F, Fut>(secs: u64, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether end-to-end tests must run (CI) rather than skip when a tool is missing.
pub fn e2e_required() -> bool {
    std::env::var("REGMIRROR_REQUIRE_E2E").is_ok_and(|v| v == "1")
}

/// Finds `tool` on PATH; when missing, panics under `REGMIRROR_REQUIRE_E2E=1`, else prints
/// that the test is skipped and returns `None`.
pub fn require_tool(tool: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if e2e_required() {
            panic!("{test}: `{tool}` is not installed and REGMIRROR_REQUIRE_E2E=1");
        }
        eprintln!(
            "SKIPPED {test}: `{tool}` is not installed (set REGMIRROR_REQUIRE_E2E=1 to fail instead)"
        );
    }
    found
}

/// The status and OCI error code (`""` when none) of a response.
pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// Writes a self-signed certificate for 127.0.0.1 into `dir`; returns its path (also the CA
/// to trust) and the `[server]` keys that serve TLS with it.
pub fn test_certificate(dir: &std::path::Path) -> (PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let keys = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        crt.display(),
        key.display()
    );
    (crt, keys)
}

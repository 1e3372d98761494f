//! Garage, an S3-compatible distributed object store, as the bucket behind regmirror's S3
//! backend: a single node on 127.0.0.1 and free ports, its own config and data directory, one
//! bucket and one key, set up with Garage's CLI as an operator would (`layout assign`, `layout
//! apply`, `bucket create`, `key create`, `bucket allow`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// A running single-node Garage with a bucket and a key that may use it.
pub struct Garage {
    child: Child,
    binary: PathBuf,
    config: PathBuf,
    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The key's id.
    pub key_id: String,
    /// The key's secret.
    pub secret: String,
    dir: TempDir,
}

use super::cluster::free_port;

/// Garage's CLI against the node `config` describes: its stdout, or its stderr if it failed.
pub(super) fn garage_cli(binary: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary)
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Runs the CLI until it succeeds: right after start, and after a layout change, Garage
/// refuses some commands for a moment.
pub(super) async fn garage_must(binary: &Path, config: &Path, args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        match garage_cli(binary, config, args) {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("garage {args:?} failed: {last}")
}

/// Creates `bucket` and a key that may read, write and own it, as an operator would: the
/// key's id and secret.
pub(super) async fn bucket_and_key(binary: &Path, config: &Path, bucket: &str) -> (String, String) {
    garage_must(binary, config, &["bucket", "create", bucket]).await;
    let key = garage_must(binary, config, &["key", "create", "regmirror-test"]).await;
    let field = |name: &str| {
        key.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in:\n{key}"))
    };
    let (id, secret) = (field("Key ID:"), field("Secret key:"));
    let allow = [
        "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &id,
    ];
    garage_must(binary, config, &allow).await;
    (id, secret)
}

impl Garage {
    /// Starts Garage, or returns `None` (the test is skipped) when it is not installed and
    /// REGMIRROR_REQUIRE_E2E is not set.
    pub async fn start(test: &str) -> Option<Garage> {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = super::require_tool("garage", test)?;
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3) = (free_port(), free_port());
        let secret: String = super::random_bytes(32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("garage.log")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut garage = Garage {
            child,
            binary,
            config,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "regmirror".into(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        };
        garage.set_up().await;
        Some(garage)
    }

    /// Kills the node (`kill -9`): the object store is gone, connections are refused.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the node again on the same data and configuration, and waits until its S3 API
    /// answers.
    pub async fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .unwrap();
        self.child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let backend = self.backend("");
        let answers = || async {
            use regmirror::store::Backend;
            backend.list("_nothing/").await.is_ok()
        };
        super::eventually_async(30, "garage to answer again", answers).await;
    }

    /// Runs the CLI; its stdout, or `None` if it failed.
    fn cli(&self, args: &[&str]) -> Option<String> {
        garage_cli(&self.binary, &self.config, args).ok()
    }

    async fn must(&self, args: &[&str]) -> String {
        garage_must(&self.binary, &self.config, args).await
    }

    async fn set_up(&mut self) {
        // The node answers its CLI once its RPC is up.
        let mut node = None;
        for _ in 0..200 {
            node = self.cli(&["node", "id", "-q"]);
            if node.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let node = node.expect("garage did not come up");
        let id = node.trim().split('@').next().unwrap().to_owned();
        self.must(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])
            .await;
        self.must(&["layout", "apply", "--version", "1"]).await;
        (self.key_id, self.secret) = bucket_and_key(&self.binary, &self.config, &self.bucket).await;
    }

    /// The `[storage]` keys and `[storage.s3]` table of a mirror on this bucket, every key
    /// under `prefix` (tests sharing a Garage keep apart by prefix).
    pub fn storage_keys(&self, prefix: &str, extra_s3: &str) -> String {
        format!(
            "backend = \"s3\"\ncache_size = \"1GiB\"\n[storage.s3]\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"garage\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n{extra_s3}\n",
            self.bucket, self.endpoint, self.key_id, self.secret
        )
    }

    /// A client of the bucket (regmirror's own backend), to look at what it holds.
    pub fn backend(&self, prefix: &str) -> regmirror::store::S3Backend {
        regmirror::store::S3Backend::s3(regmirror::store::S3Settings {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint.clone()),
            region: "garage".into(),
            prefix: prefix.into(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
        })
        .unwrap()
    }

    /// Where Garage keeps its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

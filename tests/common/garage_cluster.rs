//! Three Garage nodes, one per zone, replication factor 3, behind nginx: a real distributed
//! object store whose nodes a test can kill and start again (one down: quorum holds; two
//! down: no quorum, every request fails).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use super::cluster::{Nginx, free_port};
use super::garage::{bucket_and_key, garage_must};

/// One node: its process (while running) and configuration.
struct Node {
    child: Option<Child>,
    config: PathBuf,
    s3: SocketAddr,
}

/// A three-node Garage cluster with a bucket and a key, behind nginx.
pub struct GarageCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    nginx: Nginx,
    bucket: String,
    key_id: String,
    secret: String,
    dir: TempDir,
}

impl GarageCluster {
    /// Starts the cluster, or `None` (skipped) when Garage or nginx is missing.
    pub async fn start(test: &str) -> Option<GarageCluster> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = super::require_tool("garage", test)?;
        let dir = tempfile::tempdir().unwrap();
        let secret: String = super::random_bytes(32)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (rpc, s3) = (free_port(), free_port());
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let config = node_dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )
            .unwrap();
            nodes.push(Node {
                child: None,
                config,
                s3: ([127, 0, 0, 1], s3).into(),
            });
        }
        let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.s3).collect();
        let nginx = Nginx::start(test, &backends).await?;
        let mut cluster = GarageCluster {
            binary,
            nodes,
            nginx,
            bucket: "regmirror".into(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.set_up().await;
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{i}.log")))
            .unwrap();
        let node = &mut self.nodes[i];
        node.child = Some(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&node.config)
                .arg("server")
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
    }

    async fn must(&self, i: usize, args: &[&str]) -> String {
        garage_must(&self.binary, &self.nodes[i].config, args).await
    }

    async fn set_up(&mut self) {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(self.must(i, &["node", "id", "-q"]).await.trim().to_owned());
        }
        for peer in &ids[1..] {
            self.must(0, &["node", "connect", peer]).await;
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("dc{i}");
            self.must(0, &["layout", "assign", "-z", &zone, "-c", "1G", short])
                .await;
        }
        self.must(0, &["layout", "apply", "--version", "1"]).await;
        (self.key_id, self.secret) =
            bucket_and_key(&self.binary, &self.nodes[0].config, &self.bucket).await;
        // Every node serves the bucket before a test uses it.
        let backend = self.backend("");
        super::eventually_async(30, "the bucket on the cluster", || async {
            use regmirror::store::Backend;
            backend.list("_nothing/").await.is_ok()
        })
        .await;
    }

    /// Kills node `i` (`kill -9`).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].child.is_none() {
            self.spawn(i);
        }
    }

    /// The `[storage]` keys of a mirror on this cluster's bucket (through nginx).
    pub fn storage_keys(&self, prefix: &str) -> String {
        format!(
            "backend = \"s3\"\ncache_size = \"1GiB\"\n[storage.s3]\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"garage\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            self.bucket,
            self.nginx.url(""),
            self.key_id,
            self.secret
        )
    }

    /// A client of the bucket (regmirror's own backend), through nginx.
    pub fn backend(&self, prefix: &str) -> regmirror::store::S3Backend {
        regmirror::store::S3Backend::s3(regmirror::store::S3Settings {
            bucket: self.bucket.clone(),
            endpoint: Some(self.nginx.url("")),
            region: "garage".into(),
            prefix: prefix.into(),
            access_key_id: self.key_id.clone(),
            secret_access_key: self.secret.clone(),
        })
        .unwrap()
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

//! The parts of a cluster test: Redis (`redis-server` from Debian) and nginx (Debian) as a
//! round-robin balancer, each on a free 127.0.0.1 port with its own config and directory, and
//! several real `regmirror` processes on one Garage bucket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::binary::Regmirror;
use super::garage::Garage;

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_port(port: u16, what: &str) {
    super::eventually_async(20, what, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// A `redis-server` of the test's own, without persistence.
pub struct Redis {
    child: Option<Child>,
    binary: PathBuf,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or `None` (skipped, or a failure under `REGMIRROR_REQUIRE_E2E=1`).
    pub async fn start(test: &str) -> Option<Redis> {
        // The tests' HTTP clients take the process's TLS provider: ring, as regmirror's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let binary = super::require_tool("redis-server", test)?;
        let mut redis = Redis {
            child: None,
            binary,
            port: free_port(),
            _dir: tempfile::tempdir().unwrap(),
        };
        redis.resume().await;
        Some(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (Redis going away).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn resume(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "redis-server to listen").await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// nginx balancing round-robin over some backends, configured as the issue asks: no buffering
/// either way, no body size limit, no stickiness.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts one in front of `backends`, or `None` (skipped).
    pub async fn start(test: &str, backends: &[SocketAddr]) -> Option<Nginx> {
        let binary = super::require_tool("nginx", test)
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b} max_fails=0;\n"))
            .collect();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream regmirror {{\n{servers}    keepalive 16;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
             proxy_buffering off;\n    proxy_request_buffering off;\n\
             location / {{\n      proxy_pass http://regmirror;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
             proxy_next_upstream error timeout;\n      proxy_read_timeout 120s;\n    }}\n  }}\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "nginx to listen").await;
        Some(Nginx {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        })
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Several `regmirror serve` processes on one bucket and prefix, sharing a cluster secret.
pub struct Replicas {
    /// The processes.
    pub nodes: Vec<Regmirror>,
    configs: Vec<PathBuf>,
    /// Their working directory (configs, logs, local directories).
    pub dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts `n` replicas storing in `garage` under `prefix`, with `rest` (further tables:
    /// `[auth]`, `[[upstream]]`) and `[cluster]` keys `cluster`.
    pub async fn start(
        garage: &Garage,
        prefix: &str,
        n: usize,
        cluster: &str,
        rest: &str,
    ) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let mut configs = Vec::new();
        for i in 0..n {
            let text = format!(
                "[storage]\npath = \"{}\"\ndelete = true\n{}\n[cluster]\n{cluster}\n{rest}",
                dir.path().join(format!("r{i}")).display(),
                garage.storage_keys(prefix, ""),
            );
            let path = dir.path().join(format!("r{i}.toml"));
            std::fs::write(&path, text).unwrap();
            configs.push(path);
        }
        let mut nodes = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            nodes.push(Regmirror::start_logging_to(config, &log_path(dir.path(), i)).await);
        }
        Replicas {
            nodes,
            configs,
            dir,
        }
    }

    /// The replicas' addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Stops replica `i` gracefully (SIGTERM) and starts it again on the same address, as a
    /// rolling restart does.
    pub async fn restart_in_place(&mut self, i: usize) {
        let addr = self.nodes[i].addr;
        let status = self.nodes[i].terminate();
        assert!(status.success(), "replica {i} stopped with {status}");
        self.nodes[i] =
            Regmirror::start_at(&self.configs[i], addr, &log_path(self.dir.path(), i)).await;
    }

    /// What the replicas logged about the cluster (warnings, peer reads, Redis), for failure
    /// messages.
    pub fn cluster_log(&self) -> String {
        (0..self.nodes.len())
            .flat_map(|i| {
                self.log(i)
                    .lines()
                    .filter(|l| {
                        l.contains("WARN") || l.contains("leading its fetch") || l.contains("redis")
                    })
                    .map(|l| format!("r{i}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Replica `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(log_path(self.dir.path(), i)).unwrap_or_default()
    }
}

fn log_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("r{i}.log"))
}

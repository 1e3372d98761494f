//! Side-by-side comparison on this machine: regmirror, CNCF Distribution in proxy mode (Debian's
//! `docker-registry`), and nginx serving the same files statically (the machine's limit), all
//! in front of one Distribution upstream seeded with generated images.
//!
//! Run: `cargo bench --bench compare` (needs `docker-registry`, `nginx` and `wrk`:
//! `apt-get install docker-registry nginx wrk`). Prints a table with ratios and writes it to
//! `bench-results.md`. Ratios come from one run; nothing here is asserted.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::{Descriptor, Layout, push_http};

const MIB: usize = 1024 * 1024;

/// A server process and where it answers.
struct Proc {
    name: &'static str,
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if client.get(format!("{url}/v2/")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not come up");
}

/// Distribution, as an upstream (`proxy = None`) or as a pull-through cache of `proxy`.
async fn distribution(dir: &Path, name: &'static str, proxy: Option<&str>) -> Proc {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let proxy = proxy.map_or(String::new(), |u| format!("proxy:\n  remoteurl: {u}\n"));
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{proxy}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("access.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await;
    Proc { name, child, url }
}

async fn regmirror(dir: &Path, upstream: &str) -> Proc {
    let port = free_port();
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{upstream}\"\ndefault = true\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("REGMIRROR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await;
    Proc {
        name: "regmirror",
        child,
        url,
    }
}

/// nginx serving `root` (laid out as the registry's URL paths) with sendfile.
async fn nginx(dir: &Path, root: &Path) -> Proc {
    let port = free_port();
    let conf = format!(
        "user root;\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\ndaemon off;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
           client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;\n\
           uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
             location /v2/ {{ default_type application/octet-stream; }}\n\
             location ~ /manifests/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}\n  }}\n}}\n",
        dir = dir.display(),
        root = root.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&url).await;
    Proc {
        name: "nginx",
        child,
        url,
    }
}

/// Bytes the upstream sent for blob and manifest GETs, from its access log.
fn upstream_bytes(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && !l.contains("\"GET /v2/ "))
        .filter_map(|l| {
            let after = l.split("HTTP/1.1\" ").nth(1)?;
            let mut parts = after.split_whitespace();
            parts.next()?;
            parts.next()?.parse::<u64>().ok()
        })
        .sum()
}

/// wrk at concurrency 32 for 3 s: (req/s, p50 ms, p99 ms).
fn wrk(url: &str) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", "-d3s", "--latency", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let percentile = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(to_ms)
            .unwrap_or(f64::NAN)
    };
    (rps, percentile("50%"), percentile("99%"))
}

fn to_ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => n,
    }
}

/// GETs `url` from `clients` concurrent clients: (first byte, total).
async fn download(url: &str, clients: usize) -> (Duration, Duration) {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut r = client.get(&url).send().await.unwrap();
            assert!(r.status().is_success(), "{url}: {}", r.status());
            let mut first = None;
            while let Some(chunk) = r.chunk().await.unwrap() {
                first.get_or_insert_with(|| start.elapsed());
                black_hole(chunk.len());
            }
            (first.unwrap_or_default(), start.elapsed())
        }));
    }
    let mut result = (Duration::MAX, Duration::ZERO);
    for t in tasks {
        let (first, total) = t.await.unwrap();
        result.0 = result.0.min(first);
        result.1 = result.1.max(total);
    }
    result
}

fn black_hole(n: usize) {
    std::hint::black_box(n);
}

/// A docker-like pull: manifest, then blobs three at a time.
async fn pull_image(base: &str, repo: &str, manifest: &Descriptor, layout: &Path) -> Duration {
    let start = Instant::now();
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/v2/{repo}/manifests/v1"))
        .header("accept", &manifest.media_type)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    r.bytes().await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest.digest[7..])).unwrap(),
    )
    .unwrap();
    let mut digests = vec![doc["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(
        doc["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for batch in digests.chunks(3) {
        let mut tasks = Vec::new();
        for d in batch {
            let url = format!("{base}/v2/{repo}/blobs/{d}");
            tasks.push(tokio::spawn(download_one(url)));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    start.elapsed()
}

async fn download_one(url: String) {
    download(&url, 1).await;
}

fn layer_digest(layout: &Path, manifest: &Descriptor) -> String {
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest.digest[7..])).unwrap(),
    )
    .unwrap();
    doc["layers"][0]["digest"].as_str().unwrap().to_owned()
}

/// Lays out files for nginx at the URL paths clients use.
fn static_tree(root: &Path, layout: &Path, repo: &str, manifest: &Descriptor) {
    let base = root.join("v2").join(repo);
    std::fs::create_dir_all(base.join("manifests")).unwrap();
    std::fs::create_dir_all(base.join("blobs")).unwrap();
    let src = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    std::fs::copy(src(&manifest.digest), base.join("manifests/v1")).unwrap();
    std::fs::copy(
        src(&manifest.digest),
        base.join("manifests").join(&manifest.digest),
    )
    .unwrap();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = format!("sha256:{}", entry.file_name().to_string_lossy());
        let _ = std::fs::hard_link(entry.path(), base.join("blobs").join(name));
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for tool in ["docker-registry", "nginx", "wrk"] {
        if which(tool).is_none() {
            eprintln!(
                "compare: `{tool}` is not installed (apt-get install docker-registry nginx wrk)"
            );
            std::process::exit(1);
        }
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    println!("building and seeding images...");
    let mut layout = Layout::new(&w.join("layout"));
    let big = layout.add_image("amd64", &[200 * MIB], false);
    let multi = layout.add_image(
        "amd64",
        &[20 * MIB, 10 * MIB, 5 * MIB, MIB, 100 * 1024],
        false,
    );
    let hundred = layout.add_image("amd64", &[100 * MIB], false);
    let upstream = distribution(&w.join("upstream"), "upstream", None).await;
    for (repo, m) in [
        ("bench/big", &big),
        ("bench/multi", &multi),
        ("bench/hundred", &hundred),
    ] {
        push_http(&upstream.url, repo, "v1", &layout.dir, m).await;
    }
    let static_root = w.join("static");
    for (repo, m) in [
        ("bench/big", &big),
        ("bench/multi", &multi),
        ("bench/hundred", &hundred),
    ] {
        static_tree(&static_root, &layout.dir, repo, m);
    }
    let upstream_log = w.join("upstream/access.log");

    let rm = regmirror(&w.join("regmirror"), &upstream.url).await;
    let dist = distribution(&w.join("proxy"), "distribution", Some(&upstream.url)).await;
    let ngx = nginx(&w.join("nginx"), &static_root).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle: Vec<u64> = [&rm, &dist, &ngx]
        .iter()
        .map(|p| p.rss_kib("VmRSS:"))
        .collect();

    let mut report = String::new();
    let mut line = |s: String| {
        println!("{s}");
        report.push_str(&s);
        report.push('\n');
    };

    // (c) cold pull of a multi-layer image, and the direct pull it is compared with.
    let multi_size: u64 = (20 + 10 + 5 + 1) * MIB as u64 + 100 * 1024;
    let before = upstream_bytes(&upstream_log);
    let direct_pull = pull_image(&upstream.url, "bench/multi", &multi, &layout.dir).await;
    let direct_bytes = upstream_bytes(&upstream_log) - before;
    let mut cold = Vec::new();
    for p in [&rm, &dist] {
        let before = upstream_bytes(&upstream_log);
        let t = pull_image(&p.url, "bench/multi", &multi, &layout.dir).await;
        // Distribution writes its copy in the background after answering: let it finish.
        tokio::time::sleep(Duration::from_secs(2)).await;
        cold.push((t, upstream_bytes(&upstream_log) - before));
    }
    line(format!(
        "\n## Cold pull of a 5-layer image (~{} MiB)\n",
        multi_size / MIB as u64
    ));
    line("| | time | upstream bytes | × image | time vs direct |".into());
    line("|---|---|---|---|---|".into());
    line(format!(
        "| direct from upstream | {:.0} ms | {direct_bytes} | 1.00× | 1.00× |",
        direct_pull.as_secs_f64() * 1000.0
    ));
    for (p, (t, bytes)) in [&rm, &dist].iter().zip(&cold) {
        line(format!(
            "| {} | {:.0} ms | {bytes} | {} | {} |",
            p.name,
            t.as_secs_f64() * 1000.0,
            ratio(*bytes as f64, direct_bytes as f64),
            ratio(t.as_secs_f64(), direct_pull.as_secs_f64())
        ));
    }

    // (d) 16 concurrent cold GETs of one 100 MiB blob.
    let hundred_layer = layer_digest(&layout.dir, &hundred);
    line("\n## 16 concurrent cold GETs of one 100 MiB blob\n".into());
    line("| | first byte | total | upstream bytes | × blob |".into());
    line("|---|---|---|---|---|".into());
    for p in [&rm, &dist] {
        let before = upstream_bytes(&upstream_log);
        let (first, total) = download(
            &format!("{}/v2/bench/hundred/blobs/{hundred_layer}", p.url),
            16,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bytes = upstream_bytes(&upstream_log) - before;
        line(format!(
            "| {} | {:.1} ms | {:.0} ms | {bytes} | {} |",
            p.name,
            first.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0,
            ratio(bytes as f64, (100 * MIB) as f64)
        ));
    }

    // Warm everything for (a) and (b).
    let big_layer = layer_digest(&layout.dir, &big);
    for p in [&rm, &dist] {
        download(&format!("{}/v2/bench/big/blobs/{big_layer}", p.url), 1).await;
        download(&format!("{}/v2/bench/multi/manifests/v1", p.url), 1).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // (a) cached manifests, alternating servers, best of two rounds.
    let mut manifests = [[(0.0, 0.0, 0.0); 2]; 3];
    for _round in 0..2 {
        for (i, p) in [&rm, &dist, &ngx].iter().enumerate() {
            for (j, reference) in ["v1", multi.digest.as_str()].iter().enumerate() {
                let r = tokio::task::block_in_place(|| {
                    wrk(&format!("{}/v2/bench/multi/manifests/{reference}", p.url))
                });
                if r.0 > manifests[i][j].0 {
                    manifests[i][j] = r;
                }
            }
        }
    }
    line("\n## Cached manifest GET, concurrency 32 (wrk, best of 2 alternating rounds)\n".into());
    line("| | by tag req/s | p50 | p99 | by digest req/s | p50 | p99 |".into());
    line("|---|---|---|---|---|---|---|".into());
    for (i, name) in ["regmirror", "distribution", "nginx"].iter().enumerate() {
        let [(t, t50, t99), (d, d50, d99)] = manifests[i];
        line(format!(
            "| {name} | {t:.0} | {t50:.2} ms | {t99:.2} ms | {d:.0} | {d50:.2} ms | {d99:.2} ms |"
        ));
    }
    line(format!(
        "| regmirror / distribution | {} | | | {} | | |",
        ratio(manifests[0][0].0, manifests[1][0].0),
        ratio(manifests[0][1].0, manifests[1][1].0)
    ));
    line(format!(
        "| regmirror / nginx | {} | | | {} | | |",
        ratio(manifests[0][0].0, manifests[2][0].0),
        ratio(manifests[0][1].0, manifests[2][1].0)
    ));

    // (b) warm 200 MiB blob throughput.
    let mut blobs = [[0.0f64; 2]; 3];
    for _round in 0..2 {
        for (i, p) in [&rm, &dist, &ngx].iter().enumerate() {
            for (j, clients) in [1usize, 4].iter().enumerate() {
                let url = format!("{}/v2/bench/big/blobs/{big_layer}", p.url);
                let (_, total) = download(&url, *clients).await;
                let mibps = (*clients * 200) as f64 / total.as_secs_f64();
                blobs[i][j] = blobs[i][j].max(mibps);
            }
        }
    }
    line("\n## Warm 200 MiB blob GET throughput (MiB/s, best of 2 alternating rounds)\n".into());
    line("| | concurrency 1 | concurrency 4 |".into());
    line("|---|---|---|".into());
    for (i, name) in ["regmirror", "distribution", "nginx"].iter().enumerate() {
        line(format!(
            "| {name} | {:.0} | {:.0} |",
            blobs[i][0], blobs[i][1]
        ));
    }
    line(format!(
        "| regmirror / distribution | {} | {} |",
        ratio(blobs[0][0], blobs[1][0]),
        ratio(blobs[0][1], blobs[1][1])
    ));
    line(format!(
        "| regmirror / nginx | {} | {} |",
        ratio(blobs[0][0], blobs[2][0]),
        ratio(blobs[0][1], blobs[2][1])
    ));

    // (e) memory.
    let peak: Vec<u64> = [&rm, &dist, &ngx]
        .iter()
        .map(|p| p.rss_kib("VmHWM:"))
        .collect();
    line("\n## Resident memory (MiB; nginx: master process only)\n".into());
    line("| | idle | peak |".into());
    line("|---|---|---|".into());
    for (i, name) in ["regmirror", "distribution", "nginx"].iter().enumerate() {
        line(format!(
            "| {name} | {:.1} | {:.1} |",
            idle[i] as f64 / 1024.0,
            peak[i] as f64 / 1024.0
        ));
    }
    line(format!(
        "| regmirror / distribution | {} | {} |",
        ratio(idle[0] as f64, idle[1] as f64),
        ratio(peak[0] as f64, peak[1] as f64)
    ));

    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown CPU")
            .trim()
    );
    let header = format!(
        "# regmirror vs Distribution proxy vs nginx\n\nMachine: {machine}. Command: `cargo bench --bench compare`.\n"
    );
    std::fs::write("bench-results.md", format!("{header}{report}")).unwrap();
    println!("\nwritten to bench-results.md");
}

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

/// What a registry client asks for: Distribution's proxy answers 404 to a manifest GET that
/// does not accept the manifest's media type.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

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
        .env(
            "REGMIRROR_LOG",
            std::env::var("REGMIRROR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        // Its log (warnings only, unless REGMIRROR_LOG says otherwise) goes to the terminal.
        .stderr(Stdio::inherit())
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
        .args(["-t2", "-c32", "-d3s", "--latency", "-H"])
        .arg(format!("Accept: {ACCEPT_MANIFESTS}"))
        .arg(url)
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
            let mut r = client
                .get(&url)
                .header("accept", ACCEPT_MANIFESTS)
                .send()
                .await
                .unwrap();
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

/// Cold pulls of each image in `images`, from each of `bases` (direct, regmirror,
/// Distribution), alternating who goes first: the median (time, upstream bytes) of each.
async fn cold_pulls(
    bases: [&str; 3],
    images: &[Descriptor],
    layout: &Path,
    upstream_log: &Path,
) -> Vec<(Duration, u64)> {
    let mut rows: Vec<Vec<(Duration, u64)>> = vec![Vec::new(); 3];
    for (round, image) in images.iter().enumerate() {
        let repo = format!("bench/multi{round}");
        let mut order: Vec<usize> = vec![0, 1, 2];
        order.rotate_left(round % 3);
        for who in order {
            let before = upstream_bytes(upstream_log);
            let t = pull_image(bases[who], &repo, image, layout).await;
            if who == 2 {
                // Distribution writes its copy in the background after answering: let it
                // finish before counting, and before the next pull competes with it.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            rows[who].push((t, upstream_bytes(upstream_log) - before));
        }
    }
    rows.into_iter().map(median).collect()
}

/// The speed of the paced link in the second cold-pull table: a fast internet link.
const LINK_MIB_PER_S: f64 = 100.0;

/// A TCP relay to `upstream` (an `http://host:port` URL) whose downstream direction is one
/// link of `bytes_per_sec`, shared by all connections, like the network between a mirror and
/// a remote registry. Returns the relay's URL.
async fn paced_relay(upstream: &str, bytes_per_sec: f64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target: std::net::SocketAddr = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // When the link is next free.
    let link = std::sync::Arc::new(tokio::sync::Mutex::new(Instant::now()));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let link = link.clone();
            tokio::spawn(async move {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_upstream, mut to_upstream) = outbound.into_split();
                let requests = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_upstream).await;
                    let _ = to_upstream.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = from_upstream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let due = {
                        let mut free_at = link.lock().await;
                        let start = (*free_at).max(Instant::now());
                        *free_at = start + Duration::from_secs_f64(n as f64 / bytes_per_sec);
                        *free_at
                    };
                    // The timer ticks in milliseconds: sleep only when well ahead of the link
                    // (the schedule above keeps the long-run rate exact).
                    if due > Instant::now() + Duration::from_millis(2) {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown().await;
                requests.abort();
            });
        }
    });
    format!("http://{addr}")
}

/// How many alternating rounds the warm measurements take the best of.
const ROUNDS: usize = 3;

/// How many times each warm blob sample downloads the 200 MiB blob.
const BLOB_REPEATS: usize = 4;

/// How many images the cold pull is measured on: the paced link makes single pulls vary by
/// ±10%, so the median needs more than a handful.
const COLD_ROUNDS: usize = 9;

/// Whether a section was asked for: `cargo bench --bench compare -- cold manifests` runs only
/// those (cold, concurrent, manifests, blobs); no names runs them all.
fn wanted(section: &str) -> bool {
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    asked.is_empty() || asked.iter().any(|a| a == section)
}

/// The median by time.
fn median(mut samples: Vec<(Duration, u64)>) -> (Duration, u64) {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The bench's HTTP clients take the process's TLS provider: ring, as regmirror's.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    // Cold pulls can be measured once per image and server: COLD_ROUNDS images, median reported.
    let multi_layers = [20 * MIB, 10 * MIB, 5 * MIB, MIB, 100 * 1024];
    let multis: Vec<Descriptor> = (0..COLD_ROUNDS)
        .map(|_| layout.add_image("amd64", &multi_layers, false))
        .collect();
    let hundred = layout.add_image("amd64", &[100 * MIB], false);
    let mut images = vec![
        ("bench/big".to_owned(), big.clone()),
        ("bench/hundred".to_owned(), hundred.clone()),
    ];
    for (i, m) in multis.iter().enumerate() {
        images.push((format!("bench/multi{i}"), m.clone()));
    }
    let upstream = distribution(&w.join("upstream"), "upstream", None).await;
    let static_root = w.join("static");
    for (repo, m) in &images {
        push_http(&upstream.url, repo, "v1", &layout.dir, m).await;
        static_tree(&static_root, &layout.dir, repo, m);
    }
    let upstream_log = w.join("upstream/access.log");
    // Seeding leaves over a gigabyte of dirty pages: write them back now, not during the runs.
    std::process::Command::new("sync").status().unwrap();

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

    // (c) cold pulls of a multi-layer image, alternating who goes first, and direct pulls of
    // the same image from the upstream to compare with.
    if wanted("cold") {
        let multi_size: u64 = multi_layers.iter().sum::<usize>() as u64;
        let loopback = cold_pulls(
            [&upstream.url, &rm.url, &dist.url],
            &multis,
            &layout.dir,
            &upstream_log,
        )
        .await;
        // The same through a link of a real network's speed: fresh caches in front of a relay
        // that paces what the upstream sends.
        let link = paced_relay(&upstream.url, LINK_MIB_PER_S * MIB as f64).await;
        let rm_paced = regmirror(&w.join("regmirror-paced"), &link).await;
        let dist_paced = distribution(&w.join("proxy-paced"), "distribution", Some(&link)).await;
        let paced = cold_pulls(
            [&link, &rm_paced.url, &dist_paced.url],
            &multis,
            &layout.dir,
            &upstream_log,
        )
        .await;
        for (title, medians) in [
            (
                "over loopback (CPU-bound: all three processes share the cores)",
                loopback,
            ),
            (
                &*format!("with the upstream behind a {LINK_MIB_PER_S} MiB/s link"),
                paced,
            ),
        ] {
            let (direct_time, direct_bytes) = medians[0];
            line(format!(
                "\n## Cold pull of a 5-layer image (~{} MiB) {title}, median of {COLD_ROUNDS} images\n",
                multi_size / MIB as u64
            ));
            line("| | time | upstream bytes | × image | time vs direct |".into());
            line("|---|---|---|---|---|".into());
            for (name, (t, bytes)) in ["direct from upstream", "regmirror", "distribution"]
                .iter()
                .zip(&medians)
            {
                line(format!(
                    "| {name} | {:.0} ms | {bytes} | {} | {} |",
                    t.as_secs_f64() * 1000.0,
                    ratio(*bytes as f64, direct_bytes as f64),
                    ratio(t.as_secs_f64(), direct_time.as_secs_f64())
                ));
            }
        }
    }

    // (d) 16 concurrent cold GETs of one 100 MiB blob.
    if wanted("concurrent") {
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
    }

    // Warm everything for (a) and (b).
    let big_layer = layer_digest(&layout.dir, &big);
    if wanted("manifests") || wanted("blobs") {
        for p in [&rm, &dist] {
            download(&format!("{}/v2/bench/big/blobs/{big_layer}", p.url), 1).await;
            download(&format!("{}/v2/bench/multi0/manifests/v1", p.url), 1).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // (a) cached manifests, alternating servers, best of two rounds.
    if wanted("manifests") {
        let mut manifests = [[(0.0, 0.0, 0.0); 2]; 3];
        for _round in 0..ROUNDS {
            for (i, p) in [&rm, &dist, &ngx].iter().enumerate() {
                for (j, reference) in ["v1", multis[0].digest.as_str()].iter().enumerate() {
                    let r = tokio::task::block_in_place(|| {
                        wrk(&format!("{}/v2/bench/multi0/manifests/{reference}", p.url))
                    });
                    if r.0 > manifests[i][j].0 {
                        manifests[i][j] = r;
                    }
                }
            }
        }
        line(format!(
            "\n## Cached manifest GET, concurrency 32 (wrk, best of {ROUNDS} alternating rounds)\n"
        ));
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
    }

    // (b) warm 200 MiB blob throughput.
    if wanted("blobs") {
        let mut blobs = [[0.0f64; 2]; 3];
        for _round in 0..ROUNDS {
            for (i, p) in [&rm, &dist, &ngx].iter().enumerate() {
                for (j, clients) in [1usize, 4].iter().enumerate() {
                    let url = format!("{}/v2/bench/big/blobs/{big_layer}", p.url);
                    // Several downloads per sample: one takes well under 100 ms here.
                    let start = Instant::now();
                    for _ in 0..BLOB_REPEATS {
                        download(&url, *clients).await;
                    }
                    let mibps =
                        (BLOB_REPEATS * clients * 200) as f64 / start.elapsed().as_secs_f64();
                    blobs[i][j] = blobs[i][j].max(mibps);
                }
            }
        }
        line(format!(
            "\n## Warm 200 MiB blob GET throughput (MiB/s, best of {ROUNDS} alternating rounds)\n"
        ));
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
    }

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

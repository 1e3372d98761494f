//! The fill path: N concurrent clients on one cold blob through regmirror, against the same
//! download straight from the (local, in-process) upstream. Prints time to first byte and
//! total time, and their ratios. Run: `cargo bench --bench fill` (REGMIRROR_BENCH_MB and
//! REGMIRROR_BENCH_CLIENTS change the blob size and client count).

#[path = "../tests/common/fake_upstream.rs"]
#[allow(dead_code)]
mod fake_upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_upstream::{Auth, FakeUpstream};
use regmirror::config::Config;

#[derive(Debug, Clone, Copy)]
struct Timing {
    first_byte: Duration,
    total: Duration,
}

/// GETs `url` from `clients` concurrent clients; returns the earliest first byte and the
/// latest completion, after checking every body's length.
async fn download(url: &str, clients: usize, expected_len: usize) -> Timing {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut first = None;
            let mut len = 0;
            while let Some(chunk) = response.chunk().await.unwrap() {
                first.get_or_insert_with(|| start.elapsed());
                len += chunk.len();
            }
            (first.unwrap_or_default(), start.elapsed(), len)
        }));
    }
    let mut timing = Timing {
        first_byte: Duration::MAX,
        total: Duration::ZERO,
    };
    for task in tasks {
        let (first, total, len) = task.await.unwrap();
        assert_eq!(len, expected_len);
        timing.first_byte = timing.first_byte.min(first);
        timing.total = timing.total.max(total);
    }
    timing
}

async fn cold_through_mirror(
    fake: &FakeUpstream,
    digest: &str,
    clients: usize,
    len: usize,
) -> Timing {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\npath = \"{}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
        dir.path().display(),
        fake.url()
    );
    let server = regmirror::start(&Config::parse(&text, "bench").unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v2/bench/blobs/{digest}", server.addr);
    let timing = download(&url, clients, len).await;
    let warm = download(&url, clients, len).await;
    println!(
        "  (warm, same {clients} clients: total {:>8.1} ms)",
        warm.total.as_secs_f64() * 1000.0
    );
    server.stop().await;
    timing
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // The bench's HTTP clients take the process's TLS provider: ring, as regmirror's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mb = env_usize("REGMIRROR_BENCH_MB", 200);
        let clients = env_usize("REGMIRROR_BENCH_CLIENTS", 16);
        let fake = Arc::new(FakeUpstream::start(Auth::None).await);
        let mut blob = vec![0u8; mb * 1024 * 1024];
        rand::fill(&mut blob[..]);
        let len = blob.len();
        let digest = fake.put_blob(blob);
        let direct_url = format!("{}/v2/bench/blobs/{digest}", fake.url());

        println!("fill path: one cold {mb} MiB blob, local upstream");
        println!("{:<34} {:>12} {:>12}", "", "first byte", "total");
        for n in [1, clients] {
            let direct = download(&direct_url, n, len).await;
            let fetches_before = fake.count("GET", "/blobs/");
            let mirror = cold_through_mirror(&fake, &digest, n, len).await;
            let upstream_fetches = fake.count("GET", "/blobs/") - fetches_before;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<34} {:>9.1} ms {:>9.1} ms",
                format!("direct, {n} client(s)"),
                ms(direct.first_byte),
                ms(direct.total)
            );
            println!(
                "{:<34} {:>9.1} ms {:>9.1} ms   upstream GETs: {upstream_fetches}",
                format!("regmirror cold, {n} client(s)"),
                ms(mirror.first_byte),
                ms(mirror.total)
            );
            println!(
                "{:<34} {:>12.2} {:>12.2}",
                "ratio regmirror / direct",
                mirror.first_byte.as_secs_f64() / direct.first_byte.as_secs_f64(),
                mirror.total.as_secs_f64() / direct.total.as_secs_f64()
            );
        }
    });
}

//! What a client connection may cost, on the real binary: a header dripped byte by byte and
//! an idle connection are closed within their timeouts; a flood of idle connections fills the
//! connection cap without stopping clients already connected, and new clients get in once the
//! flood times out; a request in flight is never cut by these timeouts.

mod common;

use std::time::{Duration, Instant};

use common::binary::Regmirror;
use common::fake_upstream::{Auth, FakeUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn start(fake: &FakeUpstream, dir: &tempfile::TempDir, server_keys: &str) -> Regmirror {
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), server_keys);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("response_timeout = \"3s\"\n");
    std::fs::write(&config, text).unwrap();
    Regmirror::start(&config).await
}

/// One HTTP/1.1 connection, kept open across requests.
struct KeptAlive(tokio::io::BufReader<TcpStream>);

impl KeptAlive {
    async fn connect(addr: std::net::SocketAddr) -> KeptAlive {
        KeptAlive(tokio::io::BufReader::new(
            TcpStream::connect(addr).await.unwrap(),
        ))
    }

    /// GETs `path` and reads the whole answer (its body by `Content-Length`); the status.
    async fn get(&mut self, path: &str) -> u16 {
        use tokio::io::AsyncBufReadExt;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nAccept: {OCI_MANIFEST}\r\n\r\n");
        self.0
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).await.unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.0.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await.unwrap();
        status
    }
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server never closed the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed_in_time() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = start(
        &fake,
        &dir,
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"",
    )
    .await;

    // Slowloris: a header dripped a byte at a time.
    let mut slow = TcpStream::connect(mirror.addr).await.unwrap();
    let drip = async {
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".iter() {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let started = Instant::now();
    drip.await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the slow header got an answer");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        started.elapsed()
    );

    // An idle connection that never sends anything.
    let mut idle = TcpStream::connect(mirror.addr).await.unwrap();
    let took = closed_after(&mut idle).await;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "idle connection closed after {took:?}"
    );

    // A request in flight longer than both timeouts is not cut: the hanging upstream makes
    // it wait for its response timeout (3s), and the client still gets its answer.
    fake.set_hang(true);
    let r = reqwest::get(mirror.url("/v2/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    let metrics = mirror.metrics().await;
    for reason in ["header_timeout", "idle_timeout"] {
        assert!(
            metrics.contains(&format!(
                "regmirror_connections_closed_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_stop_real_clients() {
    let fake = FakeUpstream::start(Auth::None).await;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"digest": common::fake_upstream::sha256(b"c"), "size": 1}, "layers": []})
    .to_string();
    fake.put_manifest("library/app", "v1", manifest, OCI_MANIFEST);
    let dir = tempfile::tempdir().unwrap();
    let mirror = start(
        &fake,
        &dir,
        "max_connections = 16\nheader_read_timeout = \"2s\"\nidle_timeout = \"2s\"",
    )
    .await;
    // A real client, already connected (keep-alive), on one connection it keeps: a pooled
    // client may open a new connection when its last one is not back in its pool yet, and a
    // new connection waits behind the flood (which is the point of the test, below).
    let mut client = KeptAlive::connect(mirror.addr).await;
    let mut pull = async || client.get("/v2/app/manifests/v1").await;
    assert_eq!(pull().await, 200);

    // Far more idle connections than the cap; each sends half a header and stops.
    let mut flood = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(mirror.addr).await.unwrap();
        let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\n").await;
        flood.push(s);
    }
    // The connected client keeps working while the cap is full.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(pull().await, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // A new client gets in once the flood has timed out, and no more than the cap were open.
    let fresh = reqwest::Client::new();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        fresh.get(mirror.url("/v2/app/manifests/v1")).send(),
    )
    .await
    .expect("a new client got in")
    .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = fresh
        .get(mirror.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("regmirror_connections_open "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open <= 16.0, "{open} connections open");
    drop(flood);
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_given_up() {
    let work = tempfile::tempdir().unwrap();
    let (_, tls) = common::test_certificate(work.path());
    let server = format!("{tls}\ntls_handshake_timeout = \"500ms\"");
    let mirror = common::TestMirror::start_with(tempfile::tempdir().unwrap(), &server, "").await;
    let mut silent = TcpStream::connect(mirror.server.addr).await.unwrap();
    let took = closed_after(&mut silent).await;
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert_eq!(
        mirror
            .server
            .mirror
            .metrics
            .connections_closed
            .with_label_values(&["tls_handshake_timeout"])
            .get(),
        1
    );
}

/// How many of `pid`'s open files are the blob `hex`.
fn open_blob_files(pid: u32, hex: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.to_string_lossy().contains(hex))
                .count()
        })
        .unwrap_or(0)
}

/// Caches a blob of `len` bytes in the mirror; its digest.
async fn cached_blob(fake: &FakeUpstream, mirror: &Regmirror, len: usize) -> String {
    let digest = fake.put_blob(common::random_bytes(len));
    let r = reqwest::get(mirror.url(&format!("/v2/library/big/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), len);
    digest
}

fn closed_for_send_timeout(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("regmirror_connections_closed_total{reason=\"send_timeout\"} ")
        })
        .map_or(0.0, |v| v.parse().unwrap())
}

/// HTTP/2 (h2c): clients that never open their flow-control window get at most
/// `http2_max_streams` streams each, their responses are cut after `send_timeout` and their
/// files closed, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_that_are_never_read_are_capped_and_cut() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = start(&fake, &dir, "send_timeout = \"2s\"\nhttp2_max_streams = 8").await;
    let len = 4 << 20;
    let digest = cached_blob(&fake, &mirror, len).await;
    let hex = digest.strip_prefix("sha256:").unwrap().to_owned();
    let pid = mirror.child.id();
    let path = format!("/v2/library/big/blobs/{digest}");

    let mut drivers = Vec::new();
    let mut held = Vec::new();
    let started = Instant::now();
    for _ in 0..3 {
        let tcp = TcpStream::connect(mirror.addr).await.unwrap();
        let (mut client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        drivers.push(tokio::spawn(connection));
        let request = || {
            http::Request::get(format!("http://{}{path}", mirror.addr))
                .body(())
                .unwrap()
        };
        // The first answer brings the server's settings, its stream cap among them.
        let (first, _) = client.send_request(request(), true).unwrap();
        let first = first.await.unwrap();
        assert_eq!(first.status(), 200);
        // Ask for 19 more: the client queues what the server's cap does not let through.
        let mut pending = Vec::new();
        for _ in 0..19 {
            let mut ready = client.clone().ready().await.unwrap();
            let (response, _) = ready.send_request(request(), true).unwrap();
            pending.push(tokio::spawn(response));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let opened = 1 + pending.iter().filter(|p| p.is_finished()).count();
        held.push((first, pending));
        assert_eq!(opened, 8, "the server caps streams per connection");
    }
    let open = open_blob_files(pid, &hex);
    assert!(
        (1..=24).contains(&open),
        "{open} blob files open for 24 stalled streams"
    );
    // Another client is served in full meanwhile.
    let r = reqwest::get(mirror.url(&path)).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), len);
    // Each stalled connection is closed once its responses waited send_timeout.
    for driver in drivers {
        tokio::time::timeout(Duration::from_secs(20), driver)
            .await
            .expect("the server closed the stalled connection")
            .unwrap()
            .ok();
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    drop(held);
    common::eventually(10, "the blob files to be closed", || {
        open_blob_files(pid, &hex) == 0
    })
    .await;
    assert!(closed_for_send_timeout(&mirror.metrics().await) >= 3.0);
}

/// HTTP/1.1: clients that send a blob GET and read nothing are cut after `send_timeout`,
/// their files closed; a client that reads gets its blob meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_that_stop_reading_are_cut() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mirror = start(&fake, &dir, "send_timeout = \"2s\"").await;
    // Larger than what the loopback socket buffers hold.
    let len = 24 << 20;
    let digest = cached_blob(&fake, &mirror, len).await;
    let hex = digest.strip_prefix("sha256:").unwrap().to_owned();
    let pid = mirror.child.id();
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(mirror.addr).await.unwrap();
        let request = format!("GET /v2/library/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stalled.push(stream);
    }
    common::eventually(10, "the stalled responses to open their files", || {
        open_blob_files(pid, &hex) > 0
    })
    .await;
    let r = reqwest::get(mirror.url(&format!("/v2/library/big/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), len);
    common::eventually(20, "the stalled responses to be cut", || {
        open_blob_files(pid, &hex) == 0
    })
    .await;
    assert!(closed_for_send_timeout(&mirror.metrics().await) >= 10.0);
    // What they were sent stops short of the blob: the server closed the connection.
    for mut stream in stalled {
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
        {
            got += n;
        }
        assert!(got < len, "a cut response is short ({got} bytes)");
    }
}

/// `[server] shutdown_delay`: on SIGTERM the server goes on serving while `/readyz` answers
/// 503 (a Service takes it out of rotation), then stops gracefully and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_first_drains_with_readyz_503_then_exits_cleanly() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = start(&fake, &dir, "shutdown_delay = \"4s\"\n").await;
    let client = reqwest::Client::new();
    let status = |path: &str| {
        let request = client.get(mirror.url(path)).send();
        async move { request.await.map(|r| r.status().as_u16()).ok() }
    };
    assert_eq!(status("/readyz").await, Some(200));
    let pid = mirror.child.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut draining = false;
    for _ in 0..100 {
        if status("/readyz").await == Some(503) {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(draining, "/readyz answers 503 once SIGTERM arrived");
    assert_eq!(
        status("/healthz").await,
        Some(200),
        "still serving while draining"
    );
    assert_eq!(
        status("/v2/").await,
        Some(200),
        "still serving while draining"
    );
    assert!(
        mirror.child.try_wait().unwrap().is_none(),
        "the process waits out the delay"
    );
    let exit = tokio::task::block_in_place(|| mirror.child.wait().unwrap());
    assert!(exit.success(), "exit after draining: {exit:?}");
}

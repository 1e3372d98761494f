//! What the request log tells an operator, read from the real binary's JSON log lines.

mod common;

use std::path::Path;

use common::binary::Regmirror;
use common::fake_upstream::{Auth, FakeUpstream};
use common::random_bytes;

/// The `fields` of every `request` line of a JSON log.
fn request_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|entry| entry["fields"].clone())
        .filter(|fields| fields["message"] == "request")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_logs_one_json_line_with_its_upstream_cache_result_and_size() {
    let fake = FakeUpstream::start(Auth::None).await;
    let blob = random_bytes(300 * 1024);
    let digest = fake.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[log]\nformat = \"json\"\n");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("regmirror.log");
    let mirror = Regmirror::start_logging_to(&config, &log).await;

    let blob_path = format!("/v2/app/blobs/{digest}");
    for expected in ["miss", "hit"] {
        let r = reqwest::get(mirror.url(&blob_path)).await.unwrap();
        assert_eq!(r.headers()["x-regmirror-cache"], expected);
        assert_eq!(r.bytes().await.unwrap().as_ref(), blob.as_slice());
    }
    // An upstream that cannot be reached: the line still says which one it was.
    fake.set_down(true);
    let r = reqwest::get(mirror.url("/v2/app/manifests/v1"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    let asked = |lines: &[serde_json::Value], path: &str| {
        lines.iter().filter(|l| l["path"] == path).count()
    };
    // A line is written when its body is done, a moment after the client has all of it.
    common::eventually(10, "the request lines", || {
        let lines = request_lines(&log);
        asked(&lines, &blob_path) == 2 && asked(&lines, "/v2/app/manifests/v1") == 1
    })
    .await;
    let lines = request_lines(&log);
    let blob_lines: Vec<_> = lines.iter().filter(|l| l["path"] == *blob_path).collect();
    for (line, cache) in blob_lines.iter().zip(["miss", "hit"]) {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["status"], 200);
        assert_eq!(line["cache"], cache, "{line}");
        assert_eq!(line["upstream"], "docker.io", "{line}");
        assert_eq!(line["bytes"], blob.len() as u64, "{line}");
        assert_eq!(line["complete"], true, "{line}");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    }
    let failed = lines
        .iter()
        .find(|l| l["path"] == "/v2/app/manifests/v1")
        .unwrap();
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["upstream"], "docker.io", "{failed}");
}

/// A request whose client gives up while the upstream hangs still gets its line (status 499,
/// `cancelled`), and so does one that the upstream's response timeout ends. A method no
/// registry knows does not become a metric label of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_timed_out_requests_are_logged() {
    let fake = FakeUpstream::start(Auth::None).await;
    fake.set_hang(true);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("response_timeout = \"2s\"\n[log]\nformat = \"json\"\n");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("regmirror.log");
    let mirror = Regmirror::start_logging_to(&config, &log).await;

    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .get(mirror.url("/v2/app/manifests/cancelled"))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    let r = reqwest::get(mirror.url("/v2/app/manifests/timed-out"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let weird = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            mirror.url("/v2/"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(weird.status(), 405);

    common::eventually(10, "the request lines", || {
        let lines = request_lines(&log);
        ["/v2/app/manifests/cancelled", "/v2/app/manifests/timed-out"]
            .iter()
            .all(|p| lines.iter().any(|l| l["path"] == *p))
    })
    .await;
    let lines = request_lines(&log);
    let cancelled = lines
        .iter()
        .find(|l| l["path"] == "/v2/app/manifests/cancelled")
        .unwrap();
    assert_eq!(cancelled["status"], 499, "{cancelled}");
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    let timed_out = lines
        .iter()
        .find(|l| l["path"] == "/v2/app/manifests/timed-out")
        .unwrap();
    assert_eq!(timed_out["status"], 503, "{timed_out}");

    let metrics = mirror.metrics().await;
    assert!(!metrics.contains("BREW"), "client-chosen label");
    assert!(metrics.contains("method=\"other\""));
}

/// All lines of a JSON log.
fn all_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .collect()
}

/// The request line names who asked (client address, user, user agent) and the request's id
/// (the client's `X-Request-Id` kept, else a new one, echoed either way), its route kind and a
/// duration in ms with two decimals; a remembered 404 says `negative`; a push names its user;
/// a failing upstream is a WARN with its cause; a log that is not a terminal has no colour
/// codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_name_the_client_user_agent_and_request_id() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        regmirror::http::htpasswd::with_user("", "alice", "secret", 4).unwrap(),
    )
    .unwrap();
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), "");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[log]\nformat = \"json\"\n[auth]\nhtpasswd = \"{}\"\n",
        htpasswd.display()
    ));
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("regmirror.log");
    let mirror = Regmirror::start_logging_to(&config, &log).await;
    let client = reqwest::Client::new();

    // A tag the upstream does not have, twice: the second answer is remembered.
    for _ in 0..2 {
        let r = client
            .get(mirror.url("/v2/app/manifests/missing"))
            .header("x-request-id", "ci-job-42.step:7")
            .header(
                "user-agent",
                reqwest::header::HeaderValue::from_bytes(b"containerd/2.0 \xff").unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-request-id"], "ci-job-42.step:7");
    }
    // A hostile id is replaced, and the replacement echoed.
    let r = client
        .get(mirror.url("/v2/"))
        .header("x-request-id", "a\"b c")
        .send()
        .await
        .unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "{made}");
    // A push by alice.
    let config_json = b"{}".to_vec();
    let config_digest = common::fake_upstream::sha256(&config_json);
    let r = client
        .post(mirror.url(&format!(
            "/v2/team/app/blobs/uploads/?digest={config_digest}"
        )))
        .basic_auth("alice", Some("secret"))
        .body(config_json.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest, "size": config_json.len()}, "layers": []})
    .to_string();
    let r = client
        .put(mirror.url("/v2/team/app/manifests/v1"))
        .basic_auth("alice", Some("secret"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The upstream goes away: one WARN with the cause.
    fake.set_down(true);
    let r = client
        .get(mirror.url("/v2/app/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    common::eventually(10, "the request lines", || {
        request_lines(&log)
            .iter()
            .filter(|l| l["path"] == "/v2/app/manifests/v2")
            .count()
            == 1
    })
    .await;
    let lines = request_lines(&log);
    let missing: Vec<_> = lines
        .iter()
        .filter(|l| l["path"] == "/v2/app/manifests/missing")
        .collect();
    assert_eq!(missing.len(), 2);
    for line in &missing {
        assert_eq!(line["request_id"], "ci-job-42.step:7", "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
        assert_eq!(line["user"], "-", "{line}");
        assert_eq!(line["route"], "manifest", "{line}");
        assert_eq!(line["user_agent"], "containerd/2.0 ?", "{line}");
        let ms = line["duration_ms"].as_f64().unwrap();
        assert_eq!((ms * 100.0).round() / 100.0, ms, "two decimals: {line}");
    }
    assert_eq!(missing[1]["cache"], "negative", "{}", missing[1]);
    let pushed = lines
        .iter()
        .find(|l| l["path"] == "/v2/team/app/manifests/v1")
        .unwrap();
    assert_eq!(pushed["user"], "alice", "{pushed}");
    let entries = all_lines(&log);
    let push_event = entries
        .iter()
        .find(|e| e["fields"]["message"] == "manifest pushed")
        .expect("a manifest pushed line");
    assert_eq!(push_event["fields"]["user"], "alice", "{push_event}");
    let warned = entries
        .iter()
        .find(|e| e["level"] == "WARN" && e["fields"]["message"] == "upstream failing")
        .expect("a WARN for the failing upstream");
    assert_eq!(warned["fields"]["upstream"], "docker.io", "{warned}");
    assert!(
        warned["fields"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{warned}"
    );
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains('\u{1b}'), "no colour codes in a log file");
}

/// Text logs written to a file (not a terminal) carry no colour codes either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), "");
    let log = dir.path().join("regmirror.log");
    let mirror = Regmirror::start_logging_to(&config, &log).await;
    let r = reqwest::get(mirror.url("/v2/")).await.unwrap();
    assert_eq!(r.status(), 200);
    common::eventually(10, "a request line", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("request"))
    })
    .await;
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(raw.contains("INFO"), "{raw}");
    assert!(!raw.contains('\u{1b}'), "{raw:?}");
}

/// The log is written by a thread a burst at a time: a burst of requests gets every line,
/// once and whole, and what is still waiting when the server stops is written before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_gets_every_line_and_a_stop_writes_what_is_waiting() {
    let fake = FakeUpstream::start(Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mirror.toml");
    common::write_config(&config, &dir.path().join("store"), &fake.url(), "");
    let log = dir.path().join("regmirror.log");
    let mut mirror = Regmirror::start_logging_to(&config, &log).await;
    let client = reqwest::Client::new();
    let requests = (0..500).map(|n| {
        let request = client
            .get(mirror.url("/v2/"))
            .header("x-request-id", format!("burst-{n}"))
            .send();
        async move { request.await.unwrap().status() }
    });
    for status in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200);
    }
    let exit = tokio::task::block_in_place(|| mirror.terminate());
    assert!(exit.success(), "{exit:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for n in 0..500 {
        let id = format!("request_id=burst-{n} ");
        let lines = text.lines().filter(|line| line.contains(&id)).count();
        assert_eq!(lines, 1, "request {n}: {lines} lines");
    }
    for line in text
        .lines()
        .filter(|line| line.contains("request_id=burst-"))
    {
        assert!(
            line.ends_with("complete=true"),
            "a line cut or mixed: {line}"
        );
    }
    let last = text.lines().last().unwrap_or_default();
    assert!(last.contains("stopped"), "the last line: {last}");
}

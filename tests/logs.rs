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

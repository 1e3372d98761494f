//! What ships in `deploy/` for operators: the Prometheus alert rules pass `promtool` (syntax
//! and their unit tests), and every `regmirror_*` series the alerts and the Grafana dashboard
//! use exists in `/metrics` once the mirror has seen some traffic. The Kubernetes manifests
//! have their own tests (`tests/kubernetes.rs`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::TestMirror;
use common::fake_upstream::{Auth, FakeUpstream};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

#[test]
fn the_alert_rules_pass_promtool() {
    let Some(promtool) = common::require_tool("promtool", "the_alert_rules_pass_promtool") else {
        return;
    };
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["test", "rules", "deploy/prometheus/alerts_test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `regmirror_*` metric names in `text` (histogram series named by their family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("regmirror_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .map_or(name.clone(), str::to_owned);
        names.insert(family);
    }
    names
}

#[tokio::test]
async fn every_series_the_dashboard_and_alerts_use_exists() {
    let dashboard = std::fs::read_to_string(deploy("grafana/regmirror.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&exprs.join("\n"))
        .into_iter()
        .chain(metric_names(&alerts))
        .collect();
    for wanted in [
        "regmirror_cache_lookups_total",
        "regmirror_served_bytes_total",
        "regmirror_upstream_request_duration_seconds",
        "regmirror_fills_in_flight",
        "regmirror_store_bytes",
        "regmirror_evicted_bytes_total",
        "regmirror_upstream_ratelimit_remaining",
        "regmirror_digest_mismatches_total",
        "regmirror_cluster_redis_up",
        "regmirror_signature_decisions_total",
    ] {
        assert!(
            used.contains(wanted),
            "{wanted} is not on the dashboard or in the alerts"
        );
    }

    // Some traffic: a manifest (the fake sends rate-limit headers) and a blob.
    let fake = FakeUpstream::start(Auth::None).await;
    let digest = fake.put_blob(common::random_bytes(1000));
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"digest": digest, "size": 1000}, "layers": []})
    .to_string();
    fake.put_manifest("library/app", "v1", manifest, OCI_MANIFEST);
    // The cluster's series exist only with Redis configured.
    let redis =
        common::cluster::Redis::start("every_series_the_dashboard_and_alerts_use_exists").await;
    let cluster = match &redis {
        Some(redis) => format!("[cluster]\nredis_url = \"{}\"\n", redis.url()),
        None => String::new(),
    };
    let m = TestMirror::start_storage(
        tempfile::tempdir().unwrap(),
        "max_size = \"1GiB\"",
        &format!(
            "{cluster}[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            fake.url()
        ),
    )
    .await;
    assert_eq!(m.get("/v2/app/manifests/v1").await.status(), 200);
    let r = m.get(&format!("/v2/app/blobs/{digest}")).await;
    r.bytes().await.unwrap();
    m.fills_settled().await;
    let text = m.get("/metrics").await.text().await.unwrap();
    let exposed: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(metric_names)
        .collect();
    let missing: Vec<&String> = used
        .difference(&exposed)
        .filter(|name| redis.is_some() || !name.starts_with("regmirror_cluster_"))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not in /metrics: {missing:?}\n{text}"
    );
    // Which build, the process's own series, and request latency by route kind.
    let version = format!(
        "regmirror_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    assert!(text.contains("process_open_fds "), "{text}");
    assert!(
        text.contains(
            "regmirror_http_request_duration_seconds_count{method=\"GET\",route=\"manifest\",status_class=\"2xx\"}"
        ),
        "{text}"
    );
}

/// Every alert links its runbook entry (an anchor that exists in `docs/runbook.md`) and has a
/// promtool unit test of its own.
#[test]
fn every_alert_has_a_runbook_entry_and_a_unit_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let alerts: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap())
            .unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let rules = alerts["groups"][0]["rules"].as_sequence().unwrap();
    assert!(rules.len() >= 10, "{} alerts", rules.len());
    for rule in rules {
        let name = rule["alert"].as_str().unwrap();
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = url.rsplit_once("docs/runbook.md#").map(|(_, a)| a);
        assert_eq!(anchor, Some(name.to_lowercase().as_str()), "{name}: {url}");
        assert!(
            anchors.contains(&name.to_lowercase()),
            "docs/runbook.md has no {name}"
        );
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no promtool unit test"
        );
    }
    for wanted in [
        "RegmirrorDown",
        "RegmirrorClientErrors",
        "RegmirrorObjectStoreErrors",
        "RegmirrorStoreNearCap",
        "RegmirrorUpstreamFailing",
        "RegmirrorRedisDown",
        "RegmirrorRateLimitNearZero",
    ] {
        assert!(
            rules.iter().any(|r| r["alert"].as_str() == Some(wanted)),
            "no {wanted}"
        );
    }
}

/// The dashboard is right on one node and on ten: the gauges every replica reports for the
/// whole bucket are aggregated with `max`, never summed; it selects instances; it has the
/// panels an operator looks for.
#[test]
fn the_dashboard_aggregates_bucket_wide_gauges_with_max() {
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/regmirror.json")).unwrap())
            .unwrap();
    let panels = parsed["panels"].as_array().unwrap();
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for bucket_wide in [
        "regmirror_store_bytes",
        "regmirror_store_blobs",
        "regmirror_store_max_bytes",
        "regmirror_upstream_ratelimit_remaining",
    ] {
        let uses: Vec<&String> = exprs.iter().filter(|e| e.contains(bucket_wide)).collect();
        assert!(!uses.is_empty(), "{bucket_wide} is not on the dashboard");
        for expr in uses {
            let at = expr.find(bucket_wide).unwrap();
            assert!(
                expr[..at].trim_end().ends_with("max(") || expr[..at].contains("max by"),
                "{bucket_wide} not under max(): {expr}"
            );
        }
    }
    for expr in &exprs {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "no instance selector: {expr}"
        );
    }
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Request latency (p50, p99)",
        "Client error ratio (5xx)",
        "Object store requests",
        "Hot cache",
        "Redis",
        "Fetches across replicas",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted}: {titles:?}");
    }
    let variables = parsed["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["name"] == "instance"));
}

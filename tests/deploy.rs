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
}

//! What ships in `deploy/` for operators: the Prometheus alert rules pass `promtool` (syntax
//! and their unit tests), and every `regmirror_*` series the alerts and the Grafana dashboard
//! use exists in `/metrics` once the mirror has seen some traffic.

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

/// The YAML documents of `deploy/kubernetes/<file>`.
fn kubernetes(file: &str) -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(deploy(&format!("kubernetes/{file}"))).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_norway::Value::deserialize(doc).unwrap())
        .collect()
}

fn of_kind(file: &str, kind: &str) -> serde_norway::Value {
    kubernetes(file)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {file}"))
}

/// `deploy/kubernetes/`: three replicas probed on `/readyz` and `/healthz`, secrets from the
/// Secret, a PDB and a Service over the same pods, a mirror.toml that regmirror accepts and
/// that makes the replicas one cluster, and a DaemonSet writing a containerd `hosts.toml` that
/// points at the Service's node port.
#[test]
fn the_kubernetes_manifests_describe_one_cluster_of_three_replicas() {
    let kustomization = &kubernetes("kustomization.yaml")[0];
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name != "kustomization.yaml" && name.ends_with(".yaml") {
            assert!(
                listed.contains(&name.as_str()),
                "{name} not in kustomization.yaml"
            );
        }
    }

    let deployment = of_kind("deployment.yaml", "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    let labels = &spec["selector"]["matchLabels"];
    assert_eq!(&spec["template"]["metadata"]["labels"], labels);
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env: Vec<&serde_norway::Value> = container["env"].as_sequence().unwrap().iter().collect();
    let env_named = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in the Deployment"))
    };
    // No secret value ships: the operator creates the Secret (SECRET.md names every key the
    // manifests read), and `kubectl apply -k` never overwrites it.
    let secret_doc = std::fs::read_to_string(deploy("kubernetes").join("SECRET.md")).unwrap();
    for name in [
        "REGMIRROR_CLUSTER_SECRET",
        "REDIS_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        let from = &env_named(name)["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"].as_str(), Some("regmirror"), "{name}");
        let key = from["key"].as_str().unwrap();
        assert!(
            secret_doc.contains(&format!("--from-literal={key}=")),
            "{name}: SECRET.md does not say how to create {key}"
        );
    }
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in kubernetes(path.file_name().unwrap().to_str().unwrap()) {
                assert_ne!(
                    doc["kind"].as_str(),
                    Some("Secret"),
                    "{path:?} ships a Secret"
                );
            }
        }
    }
    assert_eq!(
        env_named("REGMIRROR_REDIS_URL")["value"].as_str(),
        Some("redis://:$(REDIS_PASSWORD)@regmirror-redis:6379")
    );
    assert_eq!(
        env_named("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP")
    );

    let pdb = of_kind("pdb.yaml", "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() >= 2);
    let service = of_kind("service.yaml", "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let node_port = service["spec"]["ports"][0]["nodePort"].as_u64().unwrap();

    // The mirror.toml regmirror reads: valid, on a bucket, one cluster through Redis.
    let configmap = of_kind("configmap.yaml", "ConfigMap");
    let text = configmap["data"]["mirror.toml"].as_str().unwrap();
    let config = regmirror::config::Config::parse(text, "configmap.yaml").unwrap();
    assert_eq!(config.storage.backend, regmirror::config::BackendKind::S3);
    assert_eq!(
        config.cluster.secret_env.as_deref(),
        Some("REGMIRROR_CLUSTER_SECRET")
    );
    assert_eq!(
        config.cluster.redis_url_env.as_deref(),
        Some("REGMIRROR_REDIS_URL")
    );
    let redis_url = env_named("REGMIRROR_REDIS_URL")["value"].as_str().unwrap();
    let redis = kubernetes("redis.yaml");
    // Redis wants the password, and only regmirror's pods may reach it.
    let redis_deployment = redis
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let args = redis_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap();
    assert!(args.iter().any(|a| a.as_str() == Some("--requirepass")));
    let policy = redis
        .iter()
        .find(|d| d["kind"].as_str() == Some("NetworkPolicy"))
        .expect("a NetworkPolicy in front of Redis");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("regmirror-redis")
    );
    assert_eq!(
        &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        labels
    );
    let redis_service = redis
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let redis_host = redis_service["metadata"]["name"].as_str().unwrap();
    assert!(
        redis_url.contains(redis_host),
        "{redis_url} is not the Redis Service"
    );
    let mounted = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"].as_str() == Some(config.storage.path.to_str().unwrap()));
    assert!(mounted, "[storage] path is not on a volume");

    // containerd on every node: docker.io through the Service's node port.
    let hosts = of_kind("containerd-hosts.yaml", "ConfigMap");
    let hosts: toml::Value = toml::from_str(hosts["data"]["hosts.toml"].as_str().unwrap()).unwrap();
    let mirror = &hosts["host"][&format!("http://127.0.0.1:{node_port}")];
    let capabilities = mirror["capabilities"].as_array().unwrap();
    for capability in ["pull", "resolve"] {
        assert!(capabilities.iter().any(|c| c.as_str() == Some(capability)));
    }
    assert_eq!(
        hosts["server"].as_str(),
        Some("https://registry-1.docker.io")
    );
    let daemonset = of_kind("containerd-hosts.yaml", "DaemonSet");
    let volumes = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["hostPath"]["path"].as_str() == Some("/etc/containerd/certs.d"))
    );
}

//! `deploy/kubernetes`, as `kubectl apply -k` would take it: rendered by `kubectl kustomize`,
//! every object valid against the Kubernetes schema (`kubernetes-validate`, 1.27 and the
//! newest it knows), no failed `checkov` check but those the manifests justify and
//! `docs/kubernetes.md` lists; then, without tools, what the manifests promise: Pod Security
//! "restricted" for the mirror's pods, storage sized for the configured caches, a graceful
//! shutdown without `preStop.sleep`, pushes wired to the htpasswd Secret, Redis behind a
//! password and a NetworkPolicy, no Secret shipped, and a node script that points containerd
//! at the Service's ClusterIP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every object the kustomization lists (its directories' too), read from the files.
fn objects() -> Vec<Value> {
    fn listed(dir: &Path) -> Vec<Value> {
        let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        let kustomization = &documents(&text)[0];
        let mut found = Vec::new();
        for resource in kustomization["resources"].as_sequence().unwrap() {
            let path = dir.join(resource.as_str().unwrap());
            if path.is_dir() {
                found.extend(listed(&path));
            } else {
                found.extend(documents(&std::fs::read_to_string(&path).unwrap()));
            }
        }
        found
    }
    listed(&kubernetes_dir())
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn run(tool: &Path, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{} {args:?}:\n{text}", tool.display());
    text
}

#[test]
fn the_manifests_render_validate_and_pass_checkov() {
    let test = "the_manifests_render_validate_and_pass_checkov";
    let (Some(kubectl), Some(validate), Some(checkov)) = (
        common::require_tool("kubectl", test),
        common::require_tool("kubernetes-validate", test),
        common::require_tool("checkov", test),
    ) else {
        return;
    };
    let dir = kubernetes_dir();
    let rendered = Command::new(&kubectl)
        .args(["kustomize", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    let objects = documents(&rendered);
    assert!(objects.len() >= 10, "{rendered}");
    // The image name is kustomize's to set.
    let deployment = find(&objects, "Deployment", "regmirror");
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert_eq!(image, "regmirror:0.1.0", "kustomize images applies");
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        "0.1.0",
        "the manifests name this version's image: update newTag with the version"
    );

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let file = file.to_str().unwrap();
    for version in ["1.27.0", "1.33.0"] {
        let out = run(&validate, &["--strict", "-k", version, file]);
        assert!(
            !out.contains("failed"),
            "kubernetes-validate {version}:\n{out}"
        );
    }

    let out = Command::new(&checkov)
        .args([
            "--framework",
            "kubernetes",
            "--compact",
            "--quiet",
            "-o",
            "json",
            "-f",
            file,
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov's report ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let results = &report["results"];
    let failed: Vec<String> = results["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {}", c["check_id"], c["resource"]))
        .collect();
    assert!(failed.is_empty(), "checkov failed: {failed:#?}");
    assert!(
        report["summary"]["passed"].as_u64().unwrap_or(0) > 100,
        "checkov ran its checks: {}",
        report["summary"]
    );
    // Every skipped check is justified where operators read it.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kubernetes.md"))
            .unwrap();
    for skipped in results["skipped_checks"].as_array().into_iter().flatten() {
        let id = skipped["check_id"].as_str().unwrap();
        assert!(doc.contains(id), "docs/kubernetes.md does not justify {id}");
    }
}

fn quantity(value: &Value) -> u64 {
    let text = value.as_str().unwrap();
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    text.parse().unwrap()
}

fn env_named<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in the container"))
}

/// Pod Security "restricted": what it asks of a pod and each of its containers.
fn assert_restricted(name: &str, pod: &Value) {
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true), "{name}");
    assert_eq!(
        pod_security["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault"),
        "{name}"
    );
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{name}"
    );
    for volume in pod["volumes"].as_sequence().into_iter().flatten() {
        assert!(volume["hostPath"].is_null(), "{name}: hostPath");
    }
    for container in pod["containers"].as_sequence().unwrap() {
        let security = &container["securityContext"];
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            security["capabilities"]["drop"][0].as_str(),
            Some("ALL"),
            "{name}"
        );
        assert!(security["capabilities"]["add"].is_null(), "{name}");
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{name}"
        );
        assert!(
            container["lifecycle"]["preStop"]["sleep"].is_null(),
            "{name}: needs 1.30"
        );
    }
}

#[test]
fn the_manifests_deploy_one_restricted_cluster_sized_for_its_caches() {
    let objects = objects();
    assert!(
        objects.iter().all(|o| o["kind"].as_str() != Some("Secret")),
        "no Secret ships: apply -k would overwrite the operator's"
    );
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        if kind != "Namespace" {
            let namespace = object["metadata"]["namespace"].as_str();
            assert!(
                matches!(namespace, Some("regmirror" | "regmirror-node")),
                "{kind} {:?} has no namespace",
                object["metadata"]["name"]
            );
        }
    }
    let namespace = find(&objects, "Namespace", "regmirror");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted")
    );

    let deployment = find(&objects, "Deployment", "regmirror");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    let labels = &spec["selector"]["matchLabels"];
    assert_eq!(&spec["template"]["metadata"]["labels"], labels);
    let pod = &spec["template"]["spec"];
    assert_restricted("regmirror", pod);
    assert_restricted(
        "regmirror-redis",
        &find(&objects, "Deployment", "regmirror-redis")["spec"]["template"]["spec"],
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"].as_str(), Some("regmirror"));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );

    // The mirror.toml regmirror reads: valid, on a bucket, one cluster through Redis.
    let configmap = find(&objects, "ConfigMap", "regmirror");
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

    // The emptyDir holds the hot cache, the upload sessions and a fill in flight; the pod's
    // ephemeral storage holds the emptyDir.
    let volumes = pod["volumes"].as_sequence().unwrap();
    let data_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(config.storage.path.to_str().unwrap()))
        .expect("[storage] path is on a volume");
    let data = volumes
        .iter()
        .find(|v| v["name"] == data_mount["name"])
        .unwrap();
    let size_limit = quantity(&data["emptyDir"]["sizeLimit"]);
    let storage = &config.storage;
    let needed = storage.cache_size.0 + storage.max_uploads_size.0 + storage.max_upload_size.0;
    assert!(size_limit >= needed, "sizeLimit {size_limit} < {needed}");
    let resources = &container["resources"];
    assert!(quantity(&resources["requests"]["ephemeral-storage"]) >= size_limit);
    assert!(quantity(&resources["limits"]["ephemeral-storage"]) > size_limit);

    // Out of the Service before the listener closes, and killed only after the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let server = &config.server;
    assert!(
        !server.shutdown_delay.is_zero(),
        "shutdown_delay replaces preStop"
    );
    assert!(grace > (server.shutdown_delay + server.shutdown_timeout).as_secs());

    // Pushes: the htpasswd file the config names comes from the Secret.
    let htpasswd = config.auth.htpasswd.as_ref().expect("[auth] htpasswd");
    let (dir, file) = (htpasswd.parent().unwrap(), htpasswd.file_name().unwrap());
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == dir.to_str())
        .expect("the htpasswd directory is mounted");
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
    let from_secret = volume["projected"]["sources"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|s| {
            s["secret"]["name"].as_str() == Some("regmirror")
                && s["secret"]["items"][0]["path"].as_str() == file.to_str()
        });
    assert!(from_secret, "htpasswd comes from the Secret");

    // Every Secret key the manifests read, SECRET.md says how to create.
    let secret_doc = std::fs::read_to_string(kubernetes_dir().join("SECRET.md")).unwrap();
    let mut keys: Vec<String> = ["htpasswd".to_owned()].into();
    for name in [
        "REGMIRROR_CLUSTER_SECRET",
        "REDIS_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        let from = &env_named(container, name)["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"].as_str(), Some("regmirror"), "{name}");
        keys.push(from["key"].as_str().unwrap().to_owned());
    }
    for key in keys {
        assert!(
            secret_doc.contains(&format!("--from-literal={key}="))
                || secret_doc.contains(&format!("--from-file={key}=")),
            "SECRET.md does not say how to create {key}"
        );
    }

    // Redis wants the password, and only regmirror's pods reach it.
    let redis = find(&objects, "Deployment", "regmirror-redis");
    let args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap();
    assert!(args.iter().any(|a| a.as_str() == Some("--requirepass")));
    let policy = find(&objects, "NetworkPolicy", "regmirror-redis");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("regmirror-redis")
    );
    assert_eq!(
        &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        labels
    );
    let redis_url = env_named(container, "REGMIRROR_REDIS_URL")["value"]
        .as_str()
        .unwrap();
    assert_eq!(redis_url, "redis://:$(REDIS_PASSWORD)@regmirror-redis:6379");
    find(&objects, "Service", "regmirror-redis");

    let pdb = find(&objects, "PodDisruptionBudget", "regmirror");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    let service = find(&objects, "Service", "regmirror");
    assert_eq!(&service["spec"]["selector"], labels);
    assert!(service["spec"]["ports"][0]["nodePort"].is_null());

    // The node configuration: its own namespace, a hostPath on certs.d, the Service's name.
    let daemonset = find(&objects, "DaemonSet", "regmirror-containerd-hosts");
    assert_eq!(
        daemonset["metadata"]["namespace"].as_str(),
        Some("regmirror-node")
    );
    let node_pod = &daemonset["spec"]["template"]["spec"];
    assert!(
        node_pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| v["hostPath"]["path"].as_str() == Some("/etc/containerd/certs.d"))
    );
    let service_name = env_named(&node_pod["containers"][0], "SERVICE")["value"]
        .as_str()
        .unwrap();
    assert!(
        service_name.starts_with("regmirror.regmirror.svc."),
        "{service_name}"
    );
}

/// The node script, run as the DaemonSet runs it (once), against a stand-in for busybox's
/// `nslookup`: the hosts.toml it writes sends docker.io to the Service's ClusterIP.
#[test]
fn the_node_script_points_containerd_at_the_service() {
    let objects = objects();
    let configmap = find(&objects, "ConfigMap", "regmirror-containerd-hosts");
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir(&config).unwrap();
    for key in ["hosts.toml", "update.sh"] {
        std::fs::write(config.join(key), configmap["data"][key].as_str().unwrap()).unwrap();
    }
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for (address, expected) in [
        ("10.96.7.7", "http://10.96.7.7:5000"),
        ("fd00:10:96::7", "http://[fd00:10:96::7]:5000"),
    ] {
        // What busybox 1.36's nslookup prints.
        let nslookup = bin.join("nslookup");
        std::fs::write(
            &nslookup,
            format!(
                "#!/bin/sh\necho 'Server:\t\t10.96.0.10'\necho 'Address:\t10.96.0.10:53'\necho\n\
                 echo \"Name:\t$1\"\necho 'Address: {address}'\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&nslookup, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = work.path().join(format!("host-{address}"));
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .arg(config.join("update.sh"))
            .env("PATH", path)
            .env("ONCE", "1")
            .env("HOST_DIR", &host)
            .env("CONFIG_DIR", &config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = std::fs::read_to_string(host.join("docker.io/hosts.toml")).unwrap();
        let hosts: toml::Value = toml::from_str(&written).unwrap();
        assert_eq!(
            hosts["server"].as_str(),
            Some("https://registry-1.docker.io")
        );
        let capabilities = hosts["host"][expected]["capabilities"].as_array().unwrap();
        for capability in ["pull", "resolve"] {
            assert!(
                capabilities.iter().any(|c| c.as_str() == Some(capability)),
                "{written}"
            );
        }
    }
}

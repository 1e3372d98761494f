//! The OCI distribution-spec conformance suites (`../shared/conformance/`), run against the
//! real binary: v1.1.1 and the 2026 suite as a registry (deletes enabled, anonymous pushes
//! allowed for the run), and the 2026 suite's read-only mode through the pull-through path,
//! with content pushed into a real upstream (Debian's `docker-registry`). Any failure fails
//! the test and prints the failing tests' names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::binary::Regmirror;
use common::garage::Garage;
use common::images::{Descriptor, Layout, OCI_INDEX, OCI_MANIFEST, push_http};
use common::registry::Registry;

/// A suite binary, or `None` (skipped, or a failure under `REGMIRROR_REQUIRE_E2E=1`).
fn suite(file: &str, test: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance")
        .join(file);
    if path.is_file() {
        return Some(path);
    }
    if common::e2e_required() {
        panic!(
            "{test}: {} is missing and REGMIRROR_REQUIRE_E2E=1",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED {test}: {} is missing (set REGMIRROR_REQUIRE_E2E=1 to fail instead)",
        path.display()
    );
    None
}

/// Starts regmirror with `config` (the `[storage] path` and `delete` are added, then the
/// `storage` keys: a bucket's, or none for the filesystem) and its log in `dir`; also makes
/// the suite's results directory, `dir/results`.
async fn start(dir: &Path, config: &str, delete: bool, storage: &str) -> (Regmirror, PathBuf) {
    let text = format!(
        "{config}\n[storage]\npath = \"{}\"\ndelete = {delete}\n{storage}\n",
        dir.join("store").display()
    );
    let path = dir.join("mirror.toml");
    std::fs::write(&path, text).unwrap();
    let results = dir.join("results");
    std::fs::create_dir_all(&results).unwrap();
    (
        Regmirror::start_logging_to(&path, &dir.join("regmirror.log")).await,
        results,
    )
}

/// Runs a suite binary with `args` and `env` in `dir`; its whole output.
fn run(binary: &Path, args: &[&str], dir: &Path, env: &[(&str, String)]) -> String {
    let output = Command::new(binary)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The number after `label` on the summary line that has it (`FAIL....: 3`, `74 Passed`).
fn count(output: &str, label: &str, before: bool) -> Option<usize> {
    output.lines().find_map(|line| {
        if before {
            let i = line.find(label)?;
            line[..i].split_whitespace().last()?.parse().ok()
        } else {
            let rest = line.trim_start().strip_prefix(label)?;
            rest.trim_start_matches(['.', ':', ' ']).trim().parse().ok()
        }
    })
}

/// Checks a 2026-suite run: nothing failed and something passed; else panics with the
/// failing tests and their reasons.
fn check_head(output: &str, what: &str) -> usize {
    let passed = count(output, "Pass", false);
    let failed = count(output, "FAIL", false);
    if failed != Some(0) || passed.unwrap_or(0) == 0 {
        let failing: Vec<&str> = output
            .lines()
            .filter(|l| l.ends_with(": FAIL") || l.trim_start().starts_with("- "))
            .collect();
        panic!(
            "{what}: {passed:?} passed, {failed:?} failed:\n{}\n\n(whole output:)\n{output}",
            failing.join("\n")
        );
    }
    let skipped = count(output, "Skip", false).unwrap_or(0);
    let skips: Vec<&str> = output
        .lines()
        .filter(|l| l.trim_end().ends_with(": Skip"))
        .collect();
    eprintln!(
        "{what}: {} passed, 0 failed, {skipped} skipped\n{}",
        passed.unwrap_or(0),
        skips.join("\n")
    );
    passed.unwrap_or(0)
}

/// The backend a `[storage]` text names, for messages.
fn storage_name(storage: &str) -> &'static str {
    ["s3", "gcs", "azure"]
        .into_iter()
        .find(|b| storage.contains(&format!("backend = \"{b}\"")))
        .unwrap_or("fs")
}

fn registry_config() -> &'static str {
    // No upstream is reachable: the mirror is the whole registry, as an air-gapped one is.
    "[server]\noffline = true\n[auth]\nanonymous_push = true\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_1_1_suite_passes_completely() {
    let test = "the_v1_1_1_suite_passes_completely";
    if let Some(binary) = suite("conformance.test", test) {
        run_v1_1_1(&binary, "").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_1_1_suite_passes_completely_on_s3() {
    let test = "the_v1_1_1_suite_passes_completely_on_s3";
    let Some(binary) = suite("conformance.test", test) else {
        return;
    };
    if let Some(garage) = Garage::start(test).await {
        run_v1_1_1(&binary, &garage.storage_keys("", "")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_1_1_suite_passes_completely_on_gcs() {
    let test = "the_v1_1_1_suite_passes_completely_on_gcs";
    let Some(binary) = suite("conformance.test", test) else {
        return;
    };
    if let Some(gcs) = common::emulators::FakeGcs::start(test).await {
        run_v1_1_1(&binary, &gcs.storage_keys("", "")).await;
    }
}

async fn run_v1_1_1(binary: &Path, storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mirror, results) = start(dir.path(), registry_config(), true, storage).await;
    let env = [
        ("OCI_ROOT_URL", mirror.url("")),
        ("OCI_NAMESPACE", "conformance/repo1".into()),
        ("OCI_CROSSMOUNT_NAMESPACE", "conformance/repo2".into()),
        ("OCI_TEST_PULL", "1".into()),
        ("OCI_TEST_PUSH", "1".into()),
        ("OCI_TEST_CONTENT_DISCOVERY", "1".into()),
        ("OCI_TEST_CONTENT_MANAGEMENT", "1".into()),
        ("OCI_HIDE_SKIPPED_WORKFLOWS", "0".into()),
        ("OCI_REPORT_DIR", results.display().to_string()),
    ];
    let output =
        tokio::task::block_in_place(|| run(binary, &["-ginkgo.no-color"], dir.path(), &env));
    let passed = count(&output, "Passed", true);
    let failed = count(&output, "Failed", true);
    if failed != Some(0) || passed.unwrap_or(0) < 74 {
        let failing: Vec<&str> = output
            .lines()
            .filter(|l| l.trim_start().starts_with("[FAIL]"))
            .collect();
        panic!(
            "v1.1.1 ({}): {passed:?} passed, {failed:?} failed:\n{}\n\n(whole output:)\n{output}",
            storage_name(storage),
            failing.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_suite_passes_completely_sha512_included() {
    let test = "the_2026_suite_passes_completely_sha512_included";
    if let Some(binary) = suite("conformance-head.test", test) {
        run_2026(&binary, "").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_suite_passes_completely_on_s3() {
    let test = "the_2026_suite_passes_completely_on_s3";
    let Some(binary) = suite("conformance-head.test", test) else {
        return;
    };
    if let Some(garage) = Garage::start(test).await {
        run_2026(&binary, &garage.storage_keys("", "")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_suite_passes_completely_on_azure() {
    let test = "the_2026_suite_passes_completely_on_azure";
    let Some(binary) = suite("conformance-head.test", test) else {
        return;
    };
    if let Some(azurite) = common::emulators::Azurite::start(test).await {
        run_2026(&binary, &azurite.storage_keys("", "")).await;
    }
}

async fn run_2026(binary: &Path, storage: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mirror, results) = start(dir.path(), registry_config(), true, storage).await;
    let env = [
        ("OCI_REGISTRY", mirror.addr.to_string()),
        ("OCI_TLS", "disabled".into()),
        ("OCI_REPO1", "conformance/repo1".into()),
        ("OCI_REPO2", "conformance/repo2".into()),
        ("OCI_RESULTS_DIR", results.display().to_string()),
    ];
    let output = tokio::task::block_in_place(|| run(binary, &[], &results, &env));
    let what = format!("2026 suite on {}", storage_name(storage));
    let passed = check_head(&output, &what);
    assert!(passed >= 800, "only {passed} tests ran:\n{output}");
    assert!(
        output.contains("sha512"),
        "the run covered no sha512 content:\n{output}"
    );
}

/// An image as a pull-through mirror meets it: an OCI index of two platforms plus an
/// attestation manifest (as BuildKit writes them). Returns the index and every manifest and
/// blob digest in it.
fn attested_image(layout: &mut Layout) -> (Descriptor, Vec<String>, Vec<String>) {
    let amd64 = layout.add_image("amd64", &[40 * 1024], false);
    let arm64 = layout.add_image("arm64", &[30 * 1024], false);
    let statement = layout.add_blob(
        br#"{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2"}"#,
        "application/vnd.in-toto+json",
    );
    let config = layout.add_blob(
        br#"{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}"#,
        "application/vnd.oci.image.config.v1+json",
    );
    let attestation_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": statement.media_type, "digest": statement.digest,
            "size": statement.size,
            "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    })
    .to_string();
    let attestation = layout.add_blob(attestation_bytes.as_bytes(), OCI_MANIFEST);
    let manifests: Vec<serde_json::Value> = [(&amd64, "amd64"), (&arm64, "arm64")]
        .iter()
        .map(|(d, arch)| {
            serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                "platform": {"architecture": arch, "os": "linux"}})
        })
        .chain(std::iter::once(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": attestation.digest, "size": attestation.size,
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": amd64.digest}
        })))
        .collect();
    let index_bytes = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    })
    .to_string();
    let index = layout.add_blob(index_bytes.as_bytes(), OCI_INDEX);
    layout.tag("ro", &index);
    let manifest_digests = vec![
        index.digest.clone(),
        amd64.digest.clone(),
        arm64.digest.clone(),
        attestation.digest.clone(),
    ];
    let mut blobs = vec![statement.digest, config.digest];
    for image in [&amd64, &arm64] {
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                layout
                    .dir
                    .join("blobs/sha256")
                    .join(image.digest.strip_prefix("sha256:").unwrap()),
            )
            .unwrap(),
        )
        .unwrap();
        blobs.push(doc["config"]["digest"].as_str().unwrap().to_owned());
        for layer in doc["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
    }
    (index, manifest_digests, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_suite_passes_through_the_pull_through_path() {
    let test = "the_read_only_suite_passes_through_the_pull_through_path";
    let (Some(binary), Some(registry_bin)) = (
        suite("conformance-head.test", test),
        common::require_tool("docker-registry", test),
    ) else {
        return;
    };
    let registry = Registry::start(&registry_bin).await;
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&dir.path().join("layout"));
    let (index, manifests, blobs) = attested_image(&mut layout);
    push_http(
        &registry.url(),
        "conformance/repo1",
        "ro",
        &layout.dir,
        &index,
    )
    .await;
    let (mirror, results) = start(
        dir.path(),
        &format!(
            "[[upstream]]\nname = \"registry.test\"\nurl = \"{}\"\ndefault = true\n",
            registry.url()
        ),
        false,
        "",
    )
    .await;
    let env = [
        ("OCI_REGISTRY", mirror.addr.to_string()),
        ("OCI_TLS", "disabled".into()),
        ("OCI_REPO1", "conformance/repo1".into()),
        ("OCI_REPO2", "conformance/repo2".into()),
        ("OCI_RESULTS_DIR", results.display().to_string()),
        ("OCI_API_PUSH", "false".into()),
        ("OCI_API_BLOB_DELETE", "false".into()),
        ("OCI_API_MANIFEST_DELETE", "false".into()),
        ("OCI_API_TAG_DELETE", "false".into()),
        ("OCI_RO_DATA_TAGS", "ro".into()),
        ("OCI_RO_DATA_MANIFESTS", manifests.join(" ")),
        ("OCI_RO_DATA_BLOBS", blobs.join(" ")),
    ];
    let output = tokio::task::block_in_place(|| run(&binary, &[], &results, &env));
    let passed = check_head(&output, "read-only suite through the pull-through path");
    assert!(passed >= 20, "only {passed} tests ran:\n{output}");
}

//! The signature gate with real parts: CNCF Distribution as the upstream, the signature pushed
//! to it by sigstore-rs's own cosign client (where `cosign sign` puts it), and real clients:
//! skopeo and dockerd pull the signed image through the mirror, and are refused the unsigned
//! one with the mirror's message. Skipped (with a message) when the tools are missing, unless
//! REGMIRROR_REQUIRE_E2E=1.

mod common;
#[path = "common/cosign.rs"]
mod cosign;

use std::io::Write;

use common::TestMirror;
use common::dockerd::Dockerd;
use common::fake_upstream::sha256;
use common::images::{Descriptor, Layout, push_http};
use common::registry::Registry;
use cosign::CosignKey;
use sigstore::cosign::CosignCapabilities;

/// A one-layer image dockerd can unpack (a real tar, gzipped), different each time.
fn runnable_image(layout: &mut Layout, text: &str) -> Descriptor {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", text.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = layout.add_blob(
        &gz.finish().unwrap(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
    );
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]}});
    let config = layout.add_blob(
        config.to_string().as_bytes(),
        "application/vnd.oci.image.config.v1+json",
    );
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.json(), "layers": [layer.json()]});
    layout.add_blob(
        manifest.to_string().as_bytes(),
        "application/vnd.oci.image.manifest.v1+json",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_pull_signed_images_and_are_refused_unsigned_ones() {
    let test = "real_clients_pull_signed_images_and_are_refused_unsigned_ones";
    let (Some(registry_bin), Some(skopeo), Some(dockerd), Some(docker)) = (
        common::require_tool("docker-registry", test),
        common::require_tool("skopeo", test),
        common::require_tool("dockerd", test),
        common::require_tool("docker", test),
    ) else {
        return;
    };
    let registry = Registry::start(&registry_bin).await;
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout"));
    let signed = runnable_image(&mut layout, "signed\n");
    let unsigned = runnable_image(&mut layout, "unsigned\n");
    push_http(&registry.url(), "myorg/signed", "v1", &layout.dir, &signed).await;
    push_http(
        &registry.url(),
        "myorg/unsigned",
        "v1",
        &layout.dir,
        &unsigned,
    )
    .await;

    // Signed as `cosign sign --key cosign.key <registry>/myorg/signed@<digest>` does, and pushed
    // by sigstore-rs's own registry client to the .sig tag on Distribution.
    let key = CosignKey::generate();
    let host = registry.host();
    let layer = key.sign(&format!("{host}/myorg/signed"), &signed.digest);
    let mut client = sigstore::cosign::ClientBuilder::default()
        .with_oci_client_config(sigstore::registry::ClientConfig {
            protocol: sigstore::registry::ClientProtocol::Http,
            ..Default::default()
        })
        .build()
        .unwrap();
    let signature_ref: sigstore::registry::OciReference = format!(
        "{host}/myorg/signed:{}",
        cosign::signature_tag(&signed.digest)
    )
    .parse()
    .unwrap();
    client
        .push_signature(
            None,
            &sigstore::registry::Auth::Anonymous,
            &signature_ref,
            vec![layer],
        )
        .await
        .unwrap();

    let public = key.write_public(work.path(), "release.pub");
    let m = TestMirror::start(&format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n\
         [[signatures]]\nupstream = \"docker.io\"\nrepositories = [\"myorg/*\"]\nkeys = [{:?}]\ncheck_identity = true\n",
        registry.url(),
        public.display().to_string()
    ))
    .await;
    let mirror = m.server.addr.to_string();

    // skopeo: the signed image copies whole; the unsigned one fails with the mirror's words.
    let skopeo_copy = |image: &str, out: &str| {
        std::process::Command::new(&skopeo)
            .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .arg(format!("docker://{mirror}/{image}"))
            .arg(format!("oci:{}:x", work.path().join(out).display()))
            .output()
            .unwrap()
    };
    let copied = tokio::task::block_in_place(|| skopeo_copy("myorg/signed:v1", "signed-copy"));
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let refused = tokio::task::block_in_place(|| skopeo_copy("myorg/unsigned:v1", "unsigned-copy"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("no valid signature from release.pub") && stderr.contains(&key.fingerprint),
        "{stderr}"
    );

    // dockerd: the same.
    let daemon = Dockerd::start(&dockerd, &docker, &["--insecure-registry", &mirror]).await;
    let pull =
        |image: &str| daemon.docker(&docker, None, &["pull", &format!("{mirror}/{image}")], None);
    let (ok, out) = tokio::task::block_in_place(|| pull("myorg/signed:v1"));
    assert!(ok, "docker pull of the signed image: {out}");
    let (ok, out) = tokio::task::block_in_place(|| pull("myorg/unsigned:v1"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("no valid signature from release.pub"),
        "docker pull: {out}"
    );
    assert!(
        m.metric("regmirror_signature_decisions_total{decision=\"refused\"}")
            .await
            >= 2.0
    );
}

//! Test images built from random layers in an OCI image layout, for skopeo to push.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::fake_upstream::sha256;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Descriptor {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout being written.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<serde_json::Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_owned(),
            refs: Vec::new(),
        }
    }

    pub fn add_blob(&mut self, bytes: &[u8], media_type: &str) -> Descriptor {
        let digest = sha256(bytes);
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).unwrap();
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len(),
        }
    }

    /// A gzip layer of `size` random bytes (stored blocks: quick to make, valid gzip).
    pub fn add_layer(&mut self, size: usize, docker: bool) -> (Descriptor, String) {
        let mut raw = vec![0u8; size];
        rand::fill(&mut raw[..]);
        let diff_id = sha256(&raw);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let media_type = if docker {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        };
        (self.add_blob(&gz, media_type), diff_id)
    }

    /// A single-platform image; returns its manifest's descriptor.
    pub fn add_image(&mut self, arch: &str, layer_sizes: &[usize], docker: bool) -> Descriptor {
        let layers: Vec<(Descriptor, String)> = layer_sizes
            .iter()
            .map(|&s| self.add_layer(s, docker))
            .collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()},
        });
        let config_type = if docker {
            "application/vnd.docker.container.image.v1+json"
        } else {
            "application/vnd.oci.image.config.v1+json"
        };
        let config = self.add_blob(config.to_string().as_bytes(), config_type);
        let manifest_type = if docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.json(),
            "layers": layers.iter().map(|(d, _)| d.json()).collect::<Vec<_>>(),
        });
        self.add_blob(manifest.to_string().as_bytes(), manifest_type)
    }

    /// A multi-platform index (OCI) or manifest list (Docker) of `(arch, manifest)` pairs.
    pub fn add_index(&mut self, children: &[(&str, &Descriptor)], docker: bool) -> Descriptor {
        let media_type = if docker { DOCKER_LIST } else { OCI_INDEX };
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(arch, d)| {
                let mut v = d.json();
                v["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
                v
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
        self.add_blob(index.to_string().as_bytes(), media_type)
    }

    /// Names `descriptor` `name` in index.json (rewritten each time).
    pub fn tag(&mut self, name: &str, descriptor: &Descriptor) {
        let mut entry = descriptor.json();
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": name});
        self.refs.push(entry);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// Runs skopeo with `args` (policy checks off), panicking with its output on failure.
pub fn skopeo(skopeo: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(skopeo)
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "skopeo {args:?} failed:\n{text}");
    text
}

/// The digest of the manifest `name` in an OCI layout's index.json.
pub fn layout_ref(dir: &Path, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Pushes `root` (a manifest or index with everything it references) from a layout to a
/// registry over HTTP, for what skopeo's `oci:` transport cannot read (Docker manifest lists).
pub async fn push_http(registry: &str, repo: &str, tag: &str, layout: &Path, root: &Descriptor) {
    let client = reqwest::Client::new();
    let read = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let put_manifest = |reference: String, d: &Descriptor| {
        let client = client.clone();
        let body = read(&d.digest);
        let url = format!("{registry}/v2/{repo}/manifests/{reference}");
        let media_type = d.media_type.clone();
        async move {
            let r = client
                .put(url)
                .header("content-type", media_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "manifest push: {}",
                r.text().await.unwrap()
            );
        }
    };
    let bytes = read(&root.digest);
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    if let Some(children) = doc["manifests"].as_array() {
        for child in children {
            let d = Descriptor {
                media_type: child["mediaType"].as_str().unwrap().to_owned(),
                digest: child["digest"].as_str().unwrap().to_owned(),
                size: child["size"].as_u64().unwrap() as usize,
            };
            Box::pin(push_http(registry, repo, &d.digest.clone(), layout, &d)).await;
        }
    } else {
        let mut blobs = vec![doc["config"]["digest"].as_str().unwrap().to_owned()];
        for layer in doc["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
        for digest in blobs {
            let start = client
                .post(format!("{registry}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), 202);
            let location = start.headers()["location"].to_str().unwrap().to_owned();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("{registry}{location}")
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let r = client
                .put(format!("{location}{sep}digest={digest}"))
                .body(read(&digest))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "blob push: {}", r.text().await.unwrap());
        }
    }
    put_manifest(tag.to_owned(), root).await;
}

/// An image with a 300-byte config and no layers under `repo:tag` of `fake`; its manifest.
pub fn put_config_only_image(
    fake: &super::fake_upstream::FakeUpstream,
    repo: &str,
    tag: &str,
) -> String {
    let config_digest = fake.put_blob(super::random_bytes(300));
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 300},
        "layers": []})
    .to_string();
    fake.put_manifest(repo, tag, manifest.clone(), OCI_MANIFEST);
    manifest
}

/// A one-layer image dockerd can unpack: a real tar.gz layer and its config.
pub fn put_runnable_image(fake: &super::fake_upstream::FakeUpstream, repo: &str, tag: &str) {
    let mut tar = tar::Builder::new(Vec::new());
    let content = b"hello from the mirror\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", &content[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": fake.put_blob(config.clone()), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": fake.put_blob(layer.clone()), "size": layer.len()}],
    })
    .to_string();
    fake.put_manifest(repo, tag, manifest, DOCKER_MANIFEST);
}

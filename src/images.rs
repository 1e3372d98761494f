//! Whole images through the mirror: walking an image's manifests and blobs (every platform,
//! or one), warming the cache (`prefetch`), writing OCI image-layout tars (`export`) and
//! loading them as pushed content (`import`).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::oci::image_ref::{ImageRef, ImageRefError};
use crate::oci::manifest::Manifest;
use crate::oci::{Digest, DigestError, Reference, media};
use crate::proxy::CacheResult;
use crate::proxy::{BlobBody, Mirror, ProxyError, Target};
use crate::store::{IMPORT_HOLDER, Referrer, Store, StoreError, StoredManifest, TagRecord};

/// Errors of whole-image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Fetching through the mirror failed.
    #[error("{image}: {source}")]
    Pull {
        /// The image.
        image: String,
        /// Why.
        source: ProxyError,
    },
    /// A stored manifest could not be read.
    #[error("{image}: invalid manifest {digest}: {message}")]
    Manifest {
        /// The image.
        image: String,
        /// The manifest.
        digest: Digest,
        /// Why.
        message: String,
    },
    /// Reading or writing the bundle failed.
    #[error("bundle {path}: {source}")]
    Bundle {
        /// The tar file.
        path: String,
        /// Why.
        source: BundleError,
    },
}

/// Why an OCI image-layout tar could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing the tar file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Fetching or recording content through the mirror.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A `blobs/<algorithm>/<hex>` entry does not name a valid digest.
    #[error("{entry}: {source}")]
    BlobEntry {
        /// The tar entry.
        entry: String,
        /// Why.
        source: DigestError,
    },
    /// The tar has no `index.json`.
    #[error("no index.json in the bundle")]
    NoIndex,
    /// `index.json` is not JSON.
    #[error("index.json: {0}")]
    Index(serde_json::Error),
    /// An `index.json` entry has no valid digest.
    #[error("index.json entry without a valid digest")]
    IndexEntry,
    /// A `ref.name` annotation is not `[host/]repo:tag`.
    #[error("ref.name {name:?} is not [host/]repo:tag: {source}")]
    RefName {
        /// The annotation.
        name: String,
        /// Why.
        source: ImageRefError,
    },
    /// `index.json` names a manifest the bundle does not hold.
    #[error("{0} named in index.json is not in the bundle")]
    Missing(Digest),
    /// The blocking task writing or reading the tar panicked.
    #[error("the bundle task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A platform filter, `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let mut parts = s.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform {
                    os: os.to_owned(),
                    arch: arch.to_owned(),
                    variant: variant.map(str::to_owned),
                })
            }
            _ => Err(format!(
                "{s:?} is not a platform such as linux/amd64 or linux/arm/v7"
            )),
        }
    }
}

impl Platform {
    fn matches(&self, platform: &serde_json::Value) -> bool {
        platform["os"] == self.os.as_str()
            && platform["architecture"] == self.arch.as_str()
            && self
                .variant
                .as_ref()
                .is_none_or(|v| platform["variant"] == v.as_str())
    }
}

/// One blob of an image and how the walk found it.
#[derive(Debug, Clone)]
pub struct WalkedBlob {
    /// Its digest.
    pub digest: Digest,
    /// Bytes.
    pub size: u64,
    /// Whether it had to be fetched from the upstream.
    pub fetched: bool,
}

/// Everything an image consists of.
#[derive(Debug, Default)]
pub struct WalkedImage {
    /// The top manifest (index or image manifest).
    pub root: Option<Arc<StoredManifest>>,
    /// Every manifest, top one included.
    pub manifests: Vec<Arc<StoredManifest>>,
    /// Configs and layers.
    pub blobs: Vec<WalkedBlob>,
}

/// Called for each blob as it is fetched: (digest, bytes so far, total if known).
pub type Progress<'a> = &'a (dyn Fn(&Digest, u64, Option<u64>) + Sync);

/// Walks `image` through the mirror (fetching what is missing), every platform or only
/// `platform`. Every blob is in the store when this returns.
pub async fn walk(
    mirror: &Arc<Mirror>,
    image: &ImageRef,
    platform: Option<&Platform>,
    progress: Progress<'_>,
) -> Result<WalkedImage, ImageError> {
    let shown = image.to_string();
    let pull_err = |source| ImageError::Pull {
        image: shown.clone(),
        source,
    };
    let mut walked = WalkedImage::default();
    let mut seen = HashSet::new();
    let target = mirror
        .target(None, &image.name)
        .map_err(|e| pull_err(e.into()))?;
    let mut pending = vec![image.reference.clone()];
    while let Some(reference) = pending.pop() {
        let answer = mirror
            .manifest(&target, &reference, false)
            .await
            .map_err(pull_err)?;
        if !seen.insert(answer.digest.clone()) {
            continue;
        }
        let stored = Arc::new(StoredManifest {
            digest: answer.digest.clone(),
            bytes: answer.body.clone().unwrap_or_default(),
            media_type: answer.media_type.clone(),
        });
        let parsed = Manifest::parse(Some(&stored.media_type), &stored.bytes).map_err(|e| {
            ImageError::Manifest {
                image: shown.clone(),
                digest: stored.digest.clone(),
                message: e.to_string(),
            }
        })?;
        if parsed.children.is_empty() {
            for digest in &parsed.blobs {
                let blob = fetch_blob(mirror, &target, digest, progress)
                    .await
                    .map_err(pull_err)?;
                walked.blobs.push(blob);
            }
        } else {
            let doc: serde_json::Value = serde_json::from_slice(&stored.bytes).unwrap_or_default();
            let children = doc["manifests"].as_array().cloned().unwrap_or_default();
            for child in children {
                let wanted = platform.is_none_or(|p| p.matches(&child["platform"]));
                if let (true, Some(Ok(d))) =
                    (wanted, child["digest"].as_str().map(str::parse::<Digest>))
                {
                    pending.push(Reference::Digest(d));
                }
            }
        }
        if walked.root.is_none() {
            walked.root = Some(Arc::clone(&stored));
        }
        walked.manifests.push(stored);
    }
    Ok(walked)
}

/// Makes sure a blob is in the store, reporting progress while it is fetched.
async fn fetch_blob(
    mirror: &Arc<Mirror>,
    target: &Target,
    digest: &Digest,
    progress: Progress<'_>,
) -> Result<WalkedBlob, ProxyError> {
    use futures_util::StreamExt;
    let answer = mirror.blob(target, digest, false, None).await?;
    let fetched = !matches!(answer.cache, CacheResult::Hit);
    let size = match answer.body {
        BlobBody::Fill { fill, .. } => {
            let mut stream = std::pin::pin!(fill.read(0, None));
            let mut seen = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk =
                    chunk.map_err(|e| ProxyError::Internal(format!("fetching {digest}: {e}")))?;
                seen += chunk.len() as u64;
                progress(digest, seen, answer.size);
            }
            fill.wait_done().await?
        }
        _ => {
            let size = answer.size.unwrap_or(0);
            progress(digest, size, Some(size));
            size
        }
    };
    Ok(WalkedBlob {
        digest: digest.clone(),
        size,
        fetched,
    })
}

/// The canonical name of an image for `ref.name` annotations: `<upstream>/<repo>:<tag>` (or
/// `@<digest>`), as routing resolves it.
pub fn canonical_name(mirror: &Mirror, image: &ImageRef) -> String {
    let name = mirror.canonical_name(&image.name);
    match &image.reference {
        Reference::Tag(t) => format!("{name}:{t}"),
        Reference::Digest(d) => format!("{name}@{d}"),
    }
}

/// Writes an OCI image-layout tar of `images` (all platforms), fetching what the store lacks.
pub async fn export(
    mirror: &Arc<Mirror>,
    images: &[ImageRef],
    out: &Path,
) -> Result<usize, ImageError> {
    let mut index_entries = Vec::new();
    let mut blobs = BTreeMap::new();
    for image in images {
        let walked = walk(mirror, image, None, &|_, _, _| {}).await?;
        let Some(root) = &walked.root else { continue };
        index_entries.push(serde_json::json!({
            "mediaType": root.media_type,
            "digest": root.digest.to_string(),
            "size": root.bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": canonical_name(mirror, image)},
        }));
        for m in &walked.manifests {
            blobs.insert(layout_path(&m.digest), m.digest.clone());
        }
        for b in &walked.blobs {
            blobs.insert(layout_path(&b.digest), b.digest.clone());
        }
        let signatures = signatures_of(mirror, image, &walked).await?;
        for (entry, signature) in signatures {
            index_entries.push(entry);
            for m in &signature.manifests {
                blobs.insert(layout_path(&m.digest), m.digest.clone());
            }
            for b in &signature.blobs {
                blobs.insert(layout_path(&b.digest), b.digest.clone());
            }
        }
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": index_entries});
    let out = out.to_owned();
    let count = blobs.len();
    let shown = out.display().to_string();
    let (store, runtime) = (Arc::clone(&mirror.store), tokio::runtime::Handle::current());
    let written = tokio::task::spawn_blocking(move || {
        write_layout_tar(&store, &runtime, &out, &index, &blobs)
    })
    .await;
    written
        .map_err(BundleError::from)
        .and_then(|r| r.map_err(BundleError::from))
        .map_err(|source| ImageError::Bundle {
            path: shown,
            source,
        })?;
    Ok(count)
}

/// The cosign signatures of every manifest of a walked image (at `.sig` tags, and referrers),
/// walked too, each with its `index.json` entry: a `.sig` tag is named
/// `<repository>:<sha256-hex.sig>` so that import tags it again, a referrer
/// `<repository>@<digest>`.
async fn signatures_of(
    mirror: &Arc<Mirror>,
    image: &ImageRef,
    walked: &WalkedImage,
) -> Result<Vec<(serde_json::Value, WalkedImage)>, ImageError> {
    let target = mirror
        .target(None, &image.name)
        .map_err(|e| ImageError::Pull {
            image: image.to_string(),
            source: e.into(),
        })?;
    let mut out = Vec::new();
    for manifest in &walked.manifests {
        for (tag, digest) in mirror.signatures_of(&target, &manifest.digest).await {
            let signature = ImageRef {
                name: image.name.clone(),
                reference: Reference::Digest(digest.clone()),
            };
            let walked_signature = walk(mirror, &signature, None, &|_, _, _| {}).await?;
            let Some(root) = &walked_signature.root else {
                continue;
            };
            let named = ImageRef {
                name: image.name.clone(),
                reference: tag.map_or(Reference::Digest(digest), Reference::Tag),
            };
            let entry = serde_json::json!({
                "mediaType": root.media_type,
                "digest": root.digest.to_string(),
                "size": root.bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": canonical_name(mirror, &named)},
            });
            out.push((entry, walked_signature));
        }
    }
    Ok(out)
}

/// Writes the tar on a blocking thread, reading each blob from the store as a stream (from
/// local files or the bucket alike) through `runtime`.
fn write_layout_tar(
    store: &Store,
    runtime: &tokio::runtime::Handle,
    out: &Path,
    index: &serde_json::Value,
    blobs: &BTreeMap<String, Digest>,
) -> std::io::Result<()> {
    let tmp = out.with_extension("tar.partial");
    let file = std::fs::File::create(&tmp)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add_bytes = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    add_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes("index.json", index.to_string().as_bytes())?;
    for (name, digest) in blobs {
        let object = runtime
            .block_on(store.read_blob(digest))
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other(format!("{digest} is not in the store")))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(object.total().unwrap_or(0));
        header.set_mode(0o644);
        header.set_cksum();
        let reader = tokio_util::io::StreamReader::new(object.chunks);
        let reader = tokio_util::io::SyncIoBridge::new_with_handle(reader, runtime.clone());
        tar.append_data(&mut header, name, reader)?;
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(tmp, out)
}

/// What an import loaded.
#[derive(Debug, Default)]
pub struct Imported {
    /// Blobs verified and stored.
    pub blobs: usize,
    /// Image names tagged.
    pub images: Vec<String>,
}

/// Loads an OCI image-layout tar as pushed (pinned) content: every blob's digest verified,
/// each `ref.name` annotation (`[host/]repo:tag`) becoming a tag.
pub async fn import(mirror: &Arc<Mirror>, bundle: &Path) -> Result<Imported, ImageError> {
    import_bundle(mirror, bundle)
        .await
        .map_err(|source| ImageError::Bundle {
            path: bundle.display().to_string(),
            source,
        })
}

async fn import_bundle(mirror: &Arc<Mirror>, bundle: &Path) -> Result<Imported, BundleError> {
    let store = Arc::clone(&mirror.store);
    let path = bundle.to_owned();
    let runtime = tokio::runtime::Handle::current();
    let (blobs, index) =
        tokio::task::spawn_blocking(move || read_layout_tar(&store, &runtime, &path)).await??;
    let index: serde_json::Value = serde_json::from_slice(&index).map_err(BundleError::Index)?;
    let mut imported = Imported {
        blobs,
        images: Vec::new(),
    };
    for entry in index["manifests"].as_array().cloned().unwrap_or_default() {
        let digest: Digest = entry["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or(BundleError::IndexEntry)?;
        record_manifests(mirror, &digest, entry["mediaType"].as_str()).await?;
        let Some(name) = entry["annotations"]["org.opencontainers.image.ref.name"].as_str() else {
            continue;
        };
        let image: ImageRef = name.parse().map_err(|source| BundleError::RefName {
            name: name.to_owned(),
            source,
        })?;
        let Reference::Tag(tag) = &image.reference else {
            continue;
        };
        let local = mirror.canonical_name(&image.name);
        let m = mirror
            .store
            .read_manifest(&digest)
            .await?
            .ok_or_else(|| BundleError::Missing(digest.clone()))?;
        let record = TagRecord::new(&digest, &m.media_type, m.bytes.len() as u64);
        mirror
            .store
            .put_tag(&Store::local_tag_key(&local, tag), &record)
            .await?;
        imported.images.push(image.to_string());
    }
    Ok(imported)
}

/// Records a manifest (and, for an index, its children) as a pinned manifest with its media
/// type, so it is served as pushed content.
async fn record_manifests(
    mirror: &Mirror,
    root: &Digest,
    media_type: Option<&str>,
) -> Result<(), ProxyError> {
    let mut pending = vec![(root.clone(), media_type.map(str::to_owned))];
    while let Some((digest, declared)) = pending.pop() {
        let bytes = mirror
            .store
            .read_small_blob(&digest)
            .await?
            .ok_or_else(|| ProxyError::Internal(format!("{digest} is not in the bundle")))?;
        let media_type = media::manifest_media_type(declared.as_deref(), &bytes);
        if let Ok(parsed) = Manifest::parse(Some(&media_type), &bytes) {
            let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            for (child, d) in parsed
                .children
                .iter()
                .zip(doc["manifests"].as_array().cloned().unwrap_or_default())
            {
                pending.push((child.clone(), d["mediaType"].as_str().map(str::to_owned)));
            }
        }
        mirror.store.pin(&digest, IMPORT_HOLDER).await?;
        let subject = Manifest::parse(Some(&media_type), &bytes)
            .ok()
            .and_then(|parsed| Some((parsed.subject.clone()?, parsed)));
        let size = bytes.len() as u64;
        mirror
            .store
            .put_manifest(Arc::new(StoredManifest {
                digest: digest.clone(),
                bytes,
                media_type: media_type.clone(),
            }))
            .await?;
        // Imported referrers (signatures, SBOMs) are found through their subject again.
        if let Some((subject, parsed)) = subject {
            let referrer = Referrer {
                media_type,
                digest: digest.to_string(),
                size,
                artifact_type: parsed.artifact_type,
                annotations: parsed.annotations,
            };
            mirror.store.add_referrer(&subject, &referrer).await?;
        }
    }
    Ok(())
}

/// Where a blob lives in an OCI image layout: `blobs/<algorithm>/<hex>`.
fn layout_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

/// Streams each `blobs/<algorithm>/<hex>` entry into the store (verified, pinned); returns the
/// number of blobs and the bytes of `index.json`.
fn read_layout_tar(
    store: &Store,
    runtime: &tokio::runtime::Handle,
    path: &Path,
) -> Result<(usize, Vec<u8>), BundleError> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut index = None;
    let mut blobs = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if name == "index.json" {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            index = Some(bytes);
            continue;
        }
        let Some((algorithm, hex)) = name
            .strip_prefix("blobs/")
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        if hex.is_empty() {
            continue;
        }
        let digest =
            Digest::from_parts(algorithm, hex).map_err(|source| BundleError::BlobEntry {
                entry: name.clone(),
                source,
            })?;
        // Pinned before it appears, so eviction never sees it unpinned.
        runtime.block_on(store.pin(&digest, IMPORT_HOLDER))?;
        let mut spool = store.create_spool(&digest)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            spool.append(&buf[..n])?;
        }
        runtime.block_on(store.commit_spool(spool, &digest))?;
        blobs += 1;
    }
    Ok((blobs, index.ok_or(BundleError::NoIndex)?))
}

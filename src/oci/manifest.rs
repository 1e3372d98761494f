//! Reading the parts of a manifest the registry must check: what it references, its subject.

use serde::Deserialize;

use super::digest::Digest;
use super::media;

/// A descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest (as written; parsed by [`Manifest::parse`]).
    pub digest: String,
    /// Its size.
    #[serde(default)]
    pub size: u64,
    /// Artifact type (OCI 1.1), for referrers.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why bytes are not a manifest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the shape of a manifest.
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// A media type that is not an image manifest or index.
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    /// `schemaVersion` is not 2.
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    /// The `mediaType` field disagrees with the declared type.
    #[error("mediaType field {field:?} disagrees with Content-Type {declared:?}")]
    MediaTypeMismatch {
        /// In the document.
        field: String,
        /// In the header.
        declared: String,
    },
    /// A descriptor with a malformed digest.
    #[error("invalid digest in a descriptor: {0:?}")]
    Digest(String),
    /// An image manifest without a config.
    #[error("image manifest has no config")]
    NoConfig,
}

/// A parsed manifest: its type and the content it references.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type.
    pub media_type: String,
    /// Blobs it needs (config and layers) — empty for an index.
    pub blobs: Vec<Digest>,
    /// Non-distributable ("foreign") layers: named, but not expected in the registry (Windows
    /// base layers). A push need not include them and a mirror never fetches them unasked.
    pub foreign: Vec<Digest>,
    /// Child manifests (index / manifest list).
    pub children: Vec<Digest>,
    /// The manifest this one refers to (OCI 1.1 `subject`).
    pub subject: Option<Digest>,
    /// `artifactType`, or the config's media type for image manifests (referrers API).
    pub artifact_type: Option<String>,
    /// Annotations, for referrer descriptors.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether `t` is a manifest type the registry accepts on push.
pub fn is_pushable(t: &str) -> bool {
    matches!(
        t,
        media::OCI_INDEX
            | media::OCI_MANIFEST
            | media::DOCKER_MANIFEST_LIST
            | media::DOCKER_MANIFEST_V2
    )
}

fn parse_digest(d: &Descriptor) -> Result<Digest, ManifestError> {
    d.digest
        .parse()
        .map_err(|_| ManifestError::Digest(d.digest.clone()))
}

impl Manifest {
    /// Parses `bytes` pushed with `Content-Type: declared` (which may be absent or generic, in
    /// which case the document's `mediaType` decides).
    pub fn parse(declared: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let raw: Raw =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion);
        }
        let declared = declared
            .map(|d| d.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|d| {
                !d.is_empty() && d != "application/json" && d != "application/octet-stream"
            });
        let media_type = match (&declared, &raw.media_type) {
            (Some(d), Some(f)) if d != f => {
                return Err(ManifestError::MediaTypeMismatch {
                    field: f.clone(),
                    declared: d.clone(),
                });
            }
            (Some(d), _) => d.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
            (None, None) => media::OCI_MANIFEST.to_owned(),
        };
        if !is_pushable(&media_type) {
            return Err(ManifestError::MediaType(media_type));
        }
        let is_index = media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST;
        let (blobs, foreign, children) = if is_index {
            let children = raw
                .manifests
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(parse_digest)
                .collect::<Result<Vec<_>, _>>()?;
            (Vec::new(), Vec::new(), children)
        } else {
            let config = raw.config.as_ref().ok_or(ManifestError::NoConfig)?;
            let mut blobs = vec![parse_digest(config)?];
            let mut foreign = Vec::new();
            for layer in &raw.layers {
                if media::is_non_distributable(&layer.media_type) {
                    foreign.push(parse_digest(layer)?);
                } else {
                    blobs.push(parse_digest(layer)?);
                }
            }
            (blobs, foreign, Vec::new())
        };
        let subject = raw.subject.as_ref().map(parse_digest).transpose()?;
        let artifact_type = raw
            .artifact_type
            .clone()
            .or_else(|| raw.config.as_ref().map(|c| c.media_type.clone()));
        Ok(Manifest {
            media_type,
            blobs,
            foreign,
            children,
            subject,
            artifact_type,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_image_manifest() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"x","digest":"{D}","size":1}},"layers":[{{"digest":"{D}","size":2}}],"subject":{{"digest":"{D}","size":3}}}}"#,
            media::OCI_MANIFEST
        );
        let m = Manifest::parse(Some(media::OCI_MANIFEST), json.as_bytes()).unwrap();
        assert_eq!(m.blobs.len(), 2);
        assert!(m.children.is_empty());
        assert!(m.subject.is_some());
        assert_eq!(m.artifact_type.as_deref(), Some("x"));
    }

    #[test]
    fn parses_index() {
        let json = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1}}]}}"#);
        let m = Manifest::parse(Some(media::OCI_INDEX), json.as_bytes()).unwrap();
        assert_eq!(m.children.len(), 1);
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(matches!(
            Manifest::parse(None, b"not json"),
            Err(ManifestError::Json(_))
        ));
        assert_eq!(
            Manifest::parse(None, br#"{"schemaVersion":1}"#).unwrap_err(),
            ManifestError::SchemaVersion
        );
        assert!(matches!(
            Manifest::parse(Some("text/plain"), br#"{"schemaVersion":2}"#),
            Err(ManifestError::MediaType(_))
        ));
        assert_eq!(
            Manifest::parse(
                Some(media::OCI_MANIFEST),
                br#"{"schemaVersion":2,"layers":[]}"#
            )
            .unwrap_err(),
            ManifestError::NoConfig
        );
        let bad_digest = r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz"},"layers":[]}"#;
        assert!(matches!(
            Manifest::parse(Some(media::OCI_MANIFEST), bad_digest.as_bytes()),
            Err(ManifestError::Digest(_))
        ));
        let mismatch = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#,
            media::OCI_INDEX
        );
        assert!(matches!(
            Manifest::parse(Some(media::OCI_MANIFEST), mismatch.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
    }
}

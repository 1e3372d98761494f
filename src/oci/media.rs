//! Manifest media types and what little the mirror needs to read from a manifest.

/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 (signed), still served by some old registries.
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Every manifest type, in the order sent upstream in `Accept`, so that the upstream returns its
/// own bytes instead of converting (a conversion would change the digest).
pub const MANIFEST_TYPES: [&str; 5] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    DOCKER_MANIFEST_V1_SIGNED,
];

/// The `Accept` header value asking for every manifest type.
pub fn manifest_accept_header() -> String {
    MANIFEST_TYPES.join(", ")
}

/// The media type of a manifest: the `Content-Type` the upstream declared when it is a manifest
/// type, else the document's own `mediaType` field, else a guess from its shape.
pub fn manifest_media_type(declared: Option<&str>, body: &[u8]) -> String {
    if let Some(declared) = declared {
        let essence = declared.split(';').next().unwrap_or("").trim();
        if MANIFEST_TYPES.contains(&essence) {
            return essence.to_owned();
        }
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Shape>(body) {
        Ok(Shape {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Shape {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        Ok(Shape {
            schema_version: Some(1),
            ..
        }) => DOCKER_MANIFEST_V1_SIGNED.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

/// Whether a layer media type is non-distributable: a "foreign" layer (Windows base layers)
/// that registries need not hold and clients fetch from elsewhere.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_type_wins_when_it_is_a_manifest_type() {
        assert_eq!(
            manifest_media_type(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            ),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            DOCKER_MANIFEST_V2
        );
    }

    #[test]
    fn shape_guesses() {
        assert_eq!(manifest_media_type(None, br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(manifest_media_type(None, br#"{"layers":[]}"#), OCI_MANIFEST);
        assert_eq!(
            manifest_media_type(None, br#"{"schemaVersion":1}"#),
            DOCKER_MANIFEST_V1_SIGNED
        );
    }
}

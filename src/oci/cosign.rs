//! cosign signatures, as `cosign sign --key` stores them: a signature manifest (at the
//! `sha256-<hex>.sig` tag of the signed image's repository, or an OCI 1.1 referrer of the
//! image) whose layers are simple-signing payloads, each with its ECDSA signature in an
//! annotation. Pure: the keys are parsed from PEM text, the payload and the signature are
//! bytes the caller fetched. The crypto is RustCrypto's `p256`; nothing here is hand-rolled
//! but the payload's reading.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::Deserialize;
use sha2::Digest as _;

use super::digest::Digest;
use super::name::Tag;

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 signature of the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `artifactType` of a signature manifest stored as an OCI 1.1 referrer.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The `critical.type` every cosign image signature payload carries.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Payloads are a few hundred bytes; a larger "payload" is not one.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// At most this many signatures are read from one signature manifest.
pub const MAX_SIGNATURES_PER_MANIFEST: usize = 16;

/// The tag cosign stores the signatures of `digest` under (`sha256-<hex>.sig`).
pub fn signature_tag(digest: &Digest) -> Option<Tag> {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
        .parse()
        .ok()
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM `PUBLIC KEY` of an ECDSA P-256 key.
    #[error(
        "not a PEM public key of an ECDSA P-256 key (as `cosign generate-key-pair` writes to cosign.pub): {0}"
    )]
    Unsupported(String),
}

/// A public key signatures may verify against.
#[derive(Debug, Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    /// `sha256:` and the first 16 hex digits of the SHA-256 of the key's DER encoding.
    fingerprint: String,
    /// Where it came from (the file name), for messages.
    name: String,
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo); `name` says where it came from.
    pub fn from_pem(pem: &str, name: &str) -> Result<PublicKey, KeyError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| KeyError::Unsupported(e.to_string()))?;
        let der = key
            .to_public_key_der()
            .map_err(|e| KeyError::Unsupported(e.to_string()))?;
        let hash = sha2::Sha256::digest(der.as_bytes());
        Ok(PublicKey {
            key,
            fingerprint: format!("sha256:{}", &hex::encode(hash)[..16]),
            name: name.to_owned(),
        })
    }

    /// The key's fingerprint (`sha256:` and 16 hex digits).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The key as messages name it: its file and fingerprint.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.fingerprint)
    }

    /// Whether `signature` (ASN.1 DER, as cosign writes it, or the fixed 64-byte form) is this
    /// key's signature of `message` (ECDSA P-256 over SHA-256).
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        if let Ok(der) = DerSignature::from_bytes(signature) {
            return self.key.verify(message, &der).is_ok();
        }
        Signature::from_slice(signature).is_ok_and(|sig| self.key.verify(message, &sig).is_ok())
    }
}

/// One signature read from a signature manifest: the payload blob it signs, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The digest of the simple-signing payload (a blob of the signature manifest).
    pub payload: Digest,
    /// The payload's declared size.
    pub size: u64,
    /// The raw signature (decoded from the annotation's base64).
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default)]
    layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
struct RawLayer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Whether `manifest` is a cosign signature manifest: an image manifest whose layers (one or
/// more) are all simple-signing payloads. Such a manifest is no runnable image, so it passes
/// a signature gate without a signature of its own (clients verifying signatures fetch it).
pub fn is_signature_manifest(manifest: &[u8]) -> bool {
    serde_json::from_slice::<RawManifest>(manifest).is_ok_and(|m| {
        !m.layers.is_empty()
            && m.layers
                .iter()
                .all(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
    })
}

/// The signatures of a signature manifest (at most [`MAX_SIGNATURES_PER_MANIFEST`]): its
/// simple-signing layers that carry a signature annotation and fit [`MAX_PAYLOAD_BYTES`].
pub fn signature_layers(manifest: &[u8]) -> Vec<SignatureLayer> {
    use base64::Engine as _;
    let Ok(raw) = serde_json::from_slice::<RawManifest>(manifest) else {
        return Vec::new();
    };
    raw.layers
        .into_iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE && l.size <= MAX_PAYLOAD_BYTES)
        .filter_map(|l| {
            let signature = base64::engine::general_purpose::STANDARD
                .decode(l.annotations.get(SIGNATURE_ANNOTATION)?.trim())
                .ok()?;
            Some(SignatureLayer {
                payload: l.digest.parse().ok()?,
                size: l.size,
                signature,
            })
        })
        .take(MAX_SIGNATURES_PER_MANIFEST)
        .collect()
}

/// What a signature must say besides being valid.
#[derive(Debug, Clone, Copy)]
pub struct Expectation<'a> {
    /// The digest of the manifest the payload must name.
    pub digest: &'a Digest,
    /// When set, the repository the payload's `docker-reference` must name (its path, after
    /// any registry host; Docker Hub's `library/` may be left out on either side).
    pub repository: Option<&'a str>,
}

/// Why one signature does not admit the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No configured key made this signature of this payload.
    #[error("the signature does not verify against any of the keys")]
    BadSignature,
    /// The payload is not a cosign simple-signing payload.
    #[error("the payload is not a cosign signature payload: {0}")]
    Payload(String),
    /// The payload signs another manifest.
    #[error("the signature is for {0}, not this manifest")]
    OtherDigest(String),
    /// The payload names another repository.
    #[error("the signature is for the repository {0:?}, not this one")]
    OtherRepository(String),
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference", default)]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks one signature: made by one of `keys` over exactly `payload`, whose content names
/// what `expected` says. Returns the key that made it.
pub fn verify<'k>(
    keys: &'k [PublicKey],
    payload: &[u8],
    signature: &[u8],
    expected: Expectation<'_>,
) -> Result<&'k PublicKey, Rejection> {
    let key = keys
        .iter()
        .find(|k| k.verifies(payload, signature))
        .ok_or(Rejection::BadSignature)?;
    let payload: Payload =
        serde_json::from_slice(payload).map_err(|e| Rejection::Payload(e.to_string()))?;
    let critical = payload.critical;
    if critical.kind != PAYLOAD_TYPE {
        return Err(Rejection::Payload(format!("type {:?}", critical.kind)));
    }
    if critical.image.docker_manifest_digest != expected.digest.to_string() {
        return Err(Rejection::OtherDigest(
            critical.image.docker_manifest_digest,
        ));
    }
    if let Some(repository) = expected.repository {
        let named = reference_repository(&critical.identity.docker_reference);
        if !same_repository(&named, repository) {
            return Err(Rejection::OtherRepository(
                critical.identity.docker_reference,
            ));
        }
    }
    Ok(key)
}

/// The repository path of a `docker-reference` (`host[:port]/path[:tag]` or `path`): the path,
/// without a tag or digest.
fn reference_repository(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or_default();
    let (first, rest) = without_digest
        .split_once('/')
        .unwrap_or(("", without_digest));
    // The first component is a registry host when it looks like one (as Docker decides).
    let path = if first.contains('.') || first.contains(':') || first == "localhost" {
        rest
    } else {
        without_digest
    };
    match path.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name.to_owned(),
        _ => path.to_owned(),
    }
}

fn same_repository(a: &str, b: &str) -> bool {
    let short = |s: &str| s.strip_prefix("library/").map(str::to_owned);
    a == b
        || short(a).as_deref() == Some(b)
        || short(b).as_deref() == Some(a)
        || short(a).is_some_and(|x| short(b).as_deref() == Some(x.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_tags_are_cosigns() {
        let d = Digest::of_bytes(b"x");
        assert_eq!(
            signature_tag(&d).unwrap().as_str(),
            format!("sha256-{}.sig", d.hex())
        );
    }

    #[test]
    fn docker_references_name_their_repository() {
        for (reference, repo) in [
            ("docker.io/myorg/app", "myorg/app"),
            ("index.docker.io/library/alpine", "library/alpine"),
            ("localhost:5000/team/app:v1", "team/app"),
            ("ghcr.io/org/app@sha256:abc", "org/app"),
            ("myorg/app", "myorg/app"),
        ] {
            assert_eq!(reference_repository(reference), repo, "{reference}");
        }
        assert!(same_repository("library/alpine", "alpine"));
        assert!(same_repository("alpine", "library/alpine"));
        assert!(!same_repository("myorg/app", "myorg/other"));
    }

    #[test]
    fn only_simple_signing_manifests_are_signature_manifests() {
        let sig = br#"{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":10,"annotations":{"dev.cosignproject.cosign/signature":"AAAA"}}]}"#;
        assert!(is_signature_manifest(sig));
        assert_eq!(signature_layers(sig).len(), 1);
        let image = br#"{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":10}]}"#;
        assert!(!is_signature_manifest(image));
        assert!(!is_signature_manifest(
            br#"{"schemaVersion":2,"layers":[]}"#
        ));
    }

    /// A signature `cosign sign` made (not this code, not the tests' signer): the test vector
    /// sigstore-rs verifies in `src/crypto/verification_key.rs` (payload, signature, key).
    const COSIGN_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAENptdY/l3nB0yqkXLBWkZWQwo6+cu
OSWS1X9vPavpiQOoTTGC0xX57OojUadxF1cdQmrsiReWg2Wn4FneJfa8xw==
-----END PUBLIC KEY-----";
    const COSIGN_SIGNATURE: &str = "MEUCIQD6q/COgzOyW0YH1Dk+CCYSt4uAhm3FDHUwvPI55zwnlwIgE0ZK58ZOWpZw8YVmBapJhBqCfdPekIknimuO0xH8Jh8=";
    const COSIGN_PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"registry-testing.svc.lan/busybox"},"image":{"docker-manifest-digest":"sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"},"type":"cosign container image signature"},"optional":null}"#;
    const OTHER_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAETJP9cqpUQsn2ggmJniWGjHdlsHzD
JsB89BPhZYch0U0hKANx5TY+ncrm0s8bfJxxHoenAEFhwhuXeb4PqIrtoQ==
-----END PUBLIC KEY-----";

    #[test]
    fn a_signature_made_by_cosign_verifies() {
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(COSIGN_SIGNATURE)
            .unwrap();
        let digest: Digest =
            "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"
                .parse()
                .unwrap();
        let keys = [
            PublicKey::from_pem(OTHER_KEY, "other.pub").unwrap(),
            PublicKey::from_pem(COSIGN_KEY, "cosign.pub").unwrap(),
        ];
        let expected = Expectation {
            digest: &digest,
            repository: Some("busybox"),
        };
        let key = verify(&keys, COSIGN_PAYLOAD.as_bytes(), &signature, expected).unwrap();
        assert_eq!(key.name, "cosign.pub");
        // The other key alone, another digest, another repository, a changed payload: refused.
        assert_eq!(
            verify(&keys[..1], COSIGN_PAYLOAD.as_bytes(), &signature, expected).unwrap_err(),
            Rejection::BadSignature
        );
        let other = Digest::of_bytes(b"another manifest");
        let for_other = Expectation {
            digest: &other,
            repository: None,
        };
        assert!(matches!(
            verify(&keys, COSIGN_PAYLOAD.as_bytes(), &signature, for_other),
            Err(Rejection::OtherDigest(_))
        ));
        let elsewhere = Expectation {
            digest: &digest,
            repository: Some("library/alpine"),
        };
        assert!(matches!(
            verify(&keys, COSIGN_PAYLOAD.as_bytes(), &signature, elsewhere),
            Err(Rejection::OtherRepository(_))
        ));
        let changed = COSIGN_PAYLOAD.replace("null", "{}");
        assert_eq!(
            verify(&keys, changed.as_bytes(), &signature, expected).unwrap_err(),
            Rejection::BadSignature
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(PublicKey::from_pem("not a key", "x.pub").is_err());
    }
}

//! cosign signatures made by an implementation that is not regmirror's: sigstore-rs, the
//! Sigstore project's crate. It generates key pairs as `cosign generate-key-pair` does (ECDSA
//! P-256, the private key in cosign's encrypted PEM), builds the simple-signing payload and
//! signs it; these helpers only put the result where cosign puts it (the payload as a blob, the
//! signature manifest at the `sha256-<hex>.sig` tag, or as an OCI 1.1 referrer).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sha2::Digest as _;
use sigstore::cosign::SignatureLayer;
use sigstore::cosign::constraint::{Constraint, PrivateKeySigner};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use sigstore::crypto::signing_key::ecdsa::{ECDSAKeys, EllipticCurve};

use crate::common::fake_upstream::{FakeUpstream, sha256};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A cosign key pair.
pub struct CosignKey {
    /// cosign's encrypted private key PEM (as in cosign.key).
    private_pem: String,
    password: Vec<u8>,
    /// The public key PEM (as in cosign.pub).
    pub public_pem: String,
    /// `sha256:` and the first 16 hex digits of the SHA-256 of the public key's DER.
    pub fingerprint: String,
}

impl CosignKey {
    /// A fresh key pair, as `cosign generate-key-pair` makes it.
    pub fn generate() -> CosignKey {
        let pair = SigStoreKeyPair::ECDSA(ECDSAKeys::new(EllipticCurve::P256).unwrap());
        let password = b"test password".to_vec();
        let private_pem = pair
            .private_key_to_encrypted_pem(&password)
            .unwrap()
            .to_string();
        let der = pair.public_key_to_der().unwrap();
        CosignKey {
            private_pem,
            password,
            public_pem: pair.public_key_to_pem().unwrap(),
            fingerprint: format!("sha256:{}", &hex::encode(sha2::Sha256::digest(&der))[..16]),
        }
    }

    /// Writes the public key to `dir/name` (as cosign.pub); its path.
    pub fn write_public(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.public_pem).unwrap();
        path
    }

    /// Signs the manifest `digest` of the image `reference` (`docker.io/myorg/app`) as
    /// `cosign sign --key cosign.key` does, reading the private key back from its PEM.
    pub fn sign(&self, reference: &str, digest: &str) -> SignatureLayer {
        let image: sigstore::registry::OciReference = reference.parse().unwrap();
        let mut layer = SignatureLayer::new_unsigned(&image, digest).unwrap();
        let signer =
            SigStoreKeyPair::from_encrypted_pem(self.private_pem.as_bytes(), &self.password)
                .unwrap()
                .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
                .unwrap();
        assert!(
            PrivateKeySigner::new_with_signer(signer)
                .add_constraint(&mut layer)
                .unwrap()
        );
        layer
    }
}

/// A signed payload and its signature (base64), as they travel.
#[derive(Clone)]
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: String,
}

impl From<SignatureLayer> for Signed {
    fn from(layer: SignatureLayer) -> Signed {
        Signed {
            payload: layer.raw_data,
            signature: layer.signature.unwrap(),
        }
    }
}

/// A signature manifest in cosign's layout and the blobs it needs (its config and payloads).
pub struct SignatureManifest {
    pub json: String,
    pub blobs: Vec<Vec<u8>>,
}

/// The signature manifest of `signatures` (cosign's layout); `subject` (digest, size) makes it
/// an OCI 1.1 referrer of that manifest.
pub fn build_signature_manifest(
    signatures: &[Signed],
    subject: Option<(&str, u64)>,
) -> SignatureManifest {
    let config = b"{\"architecture\":\"\",\"config\":{},\"created\":\"0001-01-01T00:00:00Z\",\"history\":[{\"created\":\"0001-01-01T00:00:00Z\"}],\"os\":\"\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}".to_vec();
    let layers: Vec<serde_json::Value> = signatures
        .iter()
        .map(|s| {
            serde_json::json!({"mediaType": SIMPLE_SIGNING, "size": s.payload.len(),
                "digest": sha256(&s.payload), "annotations": {SIGNATURE_ANNOTATION: s.signature}})
        })
        .collect();
    let mut manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(), "digest": sha256(&config)},
        "layers": layers});
    if let Some((digest, size)) = subject {
        manifest["artifactType"] = SIGNATURE_ARTIFACT_TYPE.into();
        manifest["subject"] =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size});
    }
    let mut blobs = vec![config];
    blobs.extend(signatures.iter().map(|s| s.payload.clone()));
    SignatureManifest {
        json: manifest.to_string(),
        blobs,
    }
}

/// The signature manifest of `signatures`, its blobs put on `fake`.
pub fn signature_manifest(
    fake: &FakeUpstream,
    signatures: &[Signed],
    subject: Option<(&str, u64)>,
) -> String {
    let built = build_signature_manifest(signatures, subject);
    for blob in built.blobs {
        fake.put_blob(blob);
    }
    built.json
}

/// The tag cosign keeps the signatures of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// Publishes `signatures` of the manifest `digest` in `repo` on `fake` where `cosign sign`
/// puts them: the payloads as blobs, the manifest at the `.sig` tag.
pub fn publish_at_tag(fake: &FakeUpstream, repo: &str, digest: &str, signatures: &[Signed]) {
    let manifest = signature_manifest(fake, signatures, None);
    fake.put_manifest(repo, &signature_tag(digest), manifest, OCI_MANIFEST);
}

/// Publishes `signatures` of the manifest `digest` (of `size` bytes) as an OCI 1.1 referrer.
pub fn publish_as_referrer(
    fake: &FakeUpstream,
    repo: &str,
    digest: &str,
    size: u64,
    signatures: &[Signed],
) -> String {
    let manifest = signature_manifest(fake, signatures, Some((digest, size)));
    fake.put_referrer(repo, digest, &manifest, SIGNATURE_ARTIFACT_TYPE)
}

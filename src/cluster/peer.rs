//! Replica to replica: a replica that lost the race for a cold blob (another holds the fill
//! claim) reads the blob from the leader while the leader still fetches it from the upstream,
//! instead of fetching it a second time. The leader answers `GET /_cluster/blobs/<digest>`
//! from its running fill (or its store), for requests signed with the cluster's peer key.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::oci::{ContentRange, Digest};

/// The header carrying a peer request's signature.
pub const PEER_HEADER: &str = "x-regmirror-peer";

/// How long a follower waits for the leader to start answering.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a read from the leading replica failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The leader could not be reached (it died, or it is being restarted).
    #[error("replica {url} unreachable: {message}")]
    Unreachable {
        /// The leader.
        url: String,
        /// What the connection said.
        message: String,
    },
    /// The leader answered, but not with the blob.
    #[error("replica {url} answered {status}")]
    Refused {
        /// The leader.
        url: String,
        /// Its status.
        status: u16,
    },
}

/// A blob body from the leader.
pub struct PeerBody {
    /// Its length, when declared.
    pub length: Option<u64>,
    /// For a ranged request, the first byte the leader sends.
    pub range_start: Option<u64>,
    /// The bytes.
    pub chunks: Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
}

/// Signs and makes peer requests.
pub struct Peers {
    key: Vec<u8>,
    client: reqwest::Client,
}

impl Peers {
    /// Peers signing with `key` (derived from the cluster secret).
    pub fn new(key: Vec<u8>) -> Peers {
        let client = reqwest::Client::builder()
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .build()
            .unwrap_or_default();
        Peers { key, client }
    }

    fn mac(&self, digest: &Digest) -> Hmac<Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(digest.to_string().as_bytes());
        mac
    }

    /// The signature of a peer request for `digest`.
    pub fn sign(&self, digest: &Digest) -> String {
        hex::encode(self.mac(digest).finalize().into_bytes())
    }

    /// Whether `signature` is that of a replica of this cluster for `digest`.
    pub fn verify(&self, digest: &Digest, signature: Option<&str>) -> bool {
        let Some(Ok(bytes)) = signature.map(hex::decode) else {
            return false;
        };
        self.mac(digest).verify_slice(&bytes).is_ok()
    }

    /// Reads `digest` from the replica at `leader`, from byte `from` on.
    pub async fn get_blob(
        &self,
        leader: &str,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<PeerBody, PeerError> {
        let url = format!("{leader}/_cluster/blobs/{digest}");
        let mut request = self.client.get(&url).header(PEER_HEADER, self.sign(digest));
        if let Some(from) = from {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = tokio::time::timeout(PEER_CONNECT_TIMEOUT, request.send())
            .await
            .map_err(|_| PeerError::Unreachable {
                url: leader.to_owned(),
                message: "no answer in time".into(),
            })?
            .map_err(|e| PeerError::Unreachable {
                url: leader.to_owned(),
                message: e.to_string(),
            })?;
        if !response.status().is_success() {
            return Err(PeerError::Refused {
                url: leader.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let range_start = (response.status() == reqwest::StatusCode::PARTIAL_CONTENT)
            .then(|| response.headers().get(reqwest::header::CONTENT_RANGE))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ContentRange::parse(v).ok())
            .map(|r| r.start);
        Ok(PeerBody {
            length: response.content_length(),
            range_start,
            chunks: Box::pin(response.bytes_stream().map_err(|e| e.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_key_and_the_digest() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let other: Digest =
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap();
        let peers = Peers::new(b"k".to_vec());
        let signature = peers.sign(&d);
        assert!(peers.verify(&d, Some(&signature)));
        assert!(!peers.verify(&other, Some(&signature)));
        assert!(!Peers::new(b"other".to_vec()).verify(&d, Some(&signature)));
        assert!(!peers.verify(&d, None));
        assert!(!peers.verify(&d, Some("zz")));
    }
}

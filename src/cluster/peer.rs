//! Replica to replica: a replica that lost the race for a cold blob (another holds the fill
//! claim) reads the blob from the leader while the leader still fetches it from the upstream,
//! instead of fetching it a second time. The leader answers `GET /_cluster/blobs/<digest>`
//! from its running fill (or its store), for requests signed with the cluster's peer key. A
//! signature covers the method, the digest and the time it was made, and is good for
//! [`PEER_SIGNATURE_LIFETIME`]: one captured on the wire reads nothing a minute later. Peer
//! requests never follow redirects.

use std::time::Duration;

use hmac::Mac;

use crate::byte_stream::ByteStream;
use crate::oci::Digest;

/// The header carrying a peer request's signature.
pub const PEER_HEADER: &str = "x-regmirror-peer";

/// How long a peer signature is accepted after it was made (and before: clock skew).
pub const PEER_SIGNATURE_LIFETIME: Duration = Duration::from_secs(60);

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

/// Signs and makes peer requests.
pub struct Peers {
    key: Vec<u8>,
    client: reqwest::Client,
}

impl Peers {
    /// Peers signing with `key` (derived from the cluster secret).
    pub fn new(key: Vec<u8>) -> Peers {
        // A peer answers with the blob or not at all: a redirect is never a replica's.
        crate::signing::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Peers { key, client }
    }

    fn mac(&self, method: &str, digest: &Digest, at_ms: u64) -> crate::signing::Mac {
        let signed = format!("{method}\0{digest}\0{at_ms}");
        crate::signing::mac(&self.key, &[signed.as_bytes()])
    }

    /// The signature of a peer request (`method` on `digest`) made at `at_ms` (milliseconds
    /// since the epoch): `<at_ms>.<hex HMAC>`.
    pub fn sign_at(&self, method: &str, digest: &Digest, at_ms: u64) -> String {
        let mac = self.mac(method, digest, at_ms).finalize().into_bytes();
        format!("{at_ms}.{}", hex::encode(mac))
    }

    /// The signature of a peer request made now.
    pub fn sign(&self, method: &str, digest: &Digest) -> String {
        self.sign_at(method, digest, now_ms())
    }

    /// Whether `signature` is that of a replica of this cluster for `method` on `digest`,
    /// made within [`PEER_SIGNATURE_LIFETIME`] of `now_ms`.
    pub fn verify_at(
        &self,
        method: &str,
        digest: &Digest,
        signature: Option<&str>,
        now_ms: u64,
    ) -> bool {
        let Some((at, mac)) = signature.and_then(|s| s.split_once('.')) else {
            return false;
        };
        let (Ok(at_ms), Ok(bytes)) = (at.parse::<u64>(), hex::decode(mac)) else {
            return false;
        };
        let lifetime = PEER_SIGNATURE_LIFETIME.as_millis() as u64;
        if at_ms.abs_diff(now_ms) > lifetime {
            return false;
        }
        self.mac(method, digest, at_ms).verify_slice(&bytes).is_ok()
    }

    /// [`Peers::verify_at`] now.
    pub fn verify(&self, method: &str, digest: &Digest, signature: Option<&str>) -> bool {
        self.verify_at(method, digest, signature, now_ms())
    }

    /// Reads `digest` from the replica at `leader`, from byte `from` on.
    pub async fn get_blob(
        &self,
        leader: &str,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<ByteStream, PeerError> {
        let url = format!("{leader}/_cluster/blobs/{digest}");
        let mut request = self
            .client
            .get(&url)
            .header(PEER_HEADER, self.sign("GET", digest));
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
        Ok(ByteStream::from_response(response))
    }
}

use crate::clock::now_ms;

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
        let signature = peers.sign("GET", &d);
        assert!(peers.verify("GET", &d, Some(&signature)));
        assert!(!peers.verify("GET", &other, Some(&signature)));
        assert!(!peers.verify("HEAD", &d, Some(&signature)));
        assert!(!Peers::new(b"other".to_vec()).verify("GET", &d, Some(&signature)));
        assert!(!peers.verify("GET", &d, None));
        assert!(!peers.verify("GET", &d, Some("zz")));
        // A signature expires: replayed after a minute it reads nothing.
        let at = 1_000_000_000;
        let old = peers.sign_at("GET", &d, at);
        assert!(peers.verify_at("GET", &d, Some(&old), at + 59_000));
        assert!(!peers.verify_at("GET", &d, Some(&old), at + 61_000));
        assert!(!peers.verify_at("GET", &d, Some(&old), at - 61_000));
        // The time is signed too.
        let (_, mac) = old.split_once('.').unwrap();
        let moved = format!("{}.{mac}", at + 60_000);
        assert!(!peers.verify_at("GET", &d, Some(&moved), at + 61_000));
    }
}

//! What replicas on one bucket share besides it: the secret that signs tokens and upload
//! sessions, so any replica accepts what another issued, and optionally Redis
//! ([`Coordinator`]) to coordinate fetches and announce changes.

mod coordinator;
mod peer;

pub use coordinator::{Coordinator, FillClaim, REDIS_TIMEOUT, RateLimit};
pub use peer::{PEER_HEADER, PEER_SIGNATURE_LIFETIME, PeerError, Peers};

use crate::config::{ClusterConfig, ConfigError};

/// Keys derived from the cluster secret, one per purpose, so that a token can never pass for
/// an upload signature or the other way round.
#[derive(Clone)]
pub struct ClusterKeys {
    secret: Vec<u8>,
    shared: bool,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl ClusterKeys {
    /// The keys of `[cluster] secret` (or `secret_env`); a random secret of this process's
    /// own when neither is set.
    pub fn from_config(config: &ClusterConfig) -> Result<ClusterKeys, ConfigError> {
        Ok(match config.secret()? {
            Some(secret) => ClusterKeys {
                secret,
                shared: true,
            },
            None => ClusterKeys::random(),
        })
    }

    /// A random secret: what this process signs, no other accepts.
    pub fn random() -> ClusterKeys {
        let mut secret = Vec::with_capacity(32);
        secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        ClusterKeys {
            secret,
            shared: false,
        }
    }

    /// Whether the secret came from the configuration (shared with other replicas).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The key for `purpose` (`"token"`, `"upload"`): HMAC-SHA256 of the purpose under the
    /// secret.
    pub fn derive(&self, purpose: &str) -> Vec<u8> {
        use hmac::Mac;
        crate::signing::mac(&self.secret, &[b"regmirror/", purpose.as_bytes()])
            .finalize()
            .into_bytes()
            .to_vec()
    }
}

#[async_trait::async_trait]
impl crate::store::ClusterLink for Coordinator {
    async fn announce_change(&self) {
        Coordinator::announce_change(self).await;
    }

    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Option<bool> {
        Coordinator::lease(self, name, ttl).await
    }

    async fn open_session(&self, owner: &str, id: &str, ttl: std::time::Duration) -> Option<usize> {
        Coordinator::open_session(self, owner, id, ttl).await
    }

    async fn close_session(&self, owner: &str, id: &str) {
        Coordinator::close_session(self, owner, id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_purpose_and_agree_across_replicas() {
        let config = ClusterConfig {
            secret: Some("5f1c2e9a7b3d4c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a".into()),
            ..ClusterConfig::default()
        };
        let (a, b) = (
            ClusterKeys::from_config(&config).unwrap(),
            ClusterKeys::from_config(&config).unwrap(),
        );
        assert!(a.is_shared());
        assert_eq!(a.derive("token"), b.derive("token"));
        assert_ne!(a.derive("token"), a.derive("upload"));
        assert_ne!(
            ClusterKeys::random().derive("token"),
            ClusterKeys::random().derive("token")
        );
    }
}

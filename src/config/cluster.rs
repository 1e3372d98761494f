//! `[cluster]`: what replicas sharing one bucket share besides it, and the cluster secret's
//! strength.

use super::*;

/// `[cluster]`: several replicas on one bucket acting as one registry. Its `Debug` hides the
/// secret.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The secret every replica shares: it signs tokens and upload sessions, so that any
    /// replica accepts what another issued. Never written back out. Without it (and without
    /// `secret_env`) each process makes a random one, which suits a single replica only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub secret: Option<String>,
    /// An environment variable holding the secret (e.g. from a Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Redis for cluster-wide coordination: one upstream fetch per blob for the whole
    /// cluster, and changes (tags, deletes) announced to every replica at once. A password in
    /// it is never shown (`check-config`, logs, pages).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_url"
    )]
    pub redis_url: Option<String>,
    /// An environment variable holding the Redis URL, so that its password stays out of the
    /// config file (e.g. from a Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// How the other replicas reach this one (`http://<pod-ip>:5000`), to read a fill it leads.
    /// Default: `http://` + the listen address, or `http://$POD_IP:<port>` when the listen
    /// address is unspecified and `POD_IP` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<Url>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("secret", &self.secret.as_ref().map(|_| HIDDEN))
            .field("secret_env", &self.secret_env)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_url_env", &self.redis_url_env)
            .field("advertise_url", &self.advertise_url)
            .finish()
    }
}

/// The fewest random bytes a cluster secret must hold: it signs tokens any replica accepts.
pub const MIN_CLUSTER_SECRET: usize = 32;

/// How an operator makes a cluster secret.
pub const SECRET_COMMAND: &str = "openssl rand -hex 32";

/// The bytes of a cluster secret written as hex or base64 of at least [`MIN_CLUSTER_SECRET`]
/// random bytes; why not, otherwise. Placeholders, words, repeated characters and other values
/// with too few distinct bytes are refused: whoever knows the secret can mint any token.
pub fn parse_cluster_secret(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = text.trim();
    let is_hex = !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit());
    let bytes = if is_hex {
        hex::decode(text).ok()
    } else {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines.iter().find_map(|e| e.decode(text).ok())
    };
    let hint = format!("generate one with `{SECRET_COMMAND}`");
    let Some(bytes) = bytes else {
        return Err(format!(
            "must be at least {MIN_CLUSTER_SECRET} random bytes written as hex or base64 ({hint})"
        ));
    };
    if bytes.len() < MIN_CLUSTER_SECRET {
        return Err(format!(
            "holds {} bytes; it must hold at least {MIN_CLUSTER_SECRET} random bytes ({hint})",
            bytes.len()
        ));
    }
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 16 {
        return Err(format!(
            "is not random: {distinct} distinct byte values in {} bytes ({hint})",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl ClusterConfig {
    /// The shared secret from the config or the environment; `None` when neither is set.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let key = if self.secret.is_some() {
            "cluster.secret"
        } else {
            "cluster.secret_env"
        };
        let Some(secret) = resolve_secret(
            "cluster.secret",
            self.secret.as_ref(),
            self.secret_env.as_ref(),
        )?
        else {
            return Ok(None);
        };
        parse_cluster_secret(&secret)
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                key: key.into(),
                message,
            })
    }

    /// The Redis URL from the config or the environment; `None` when neither is set.
    pub fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(url) = resolve_secret(
            "cluster.redis_url",
            self.redis_url.as_ref(),
            self.redis_url_env.as_ref(),
        )?
        else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            let key = if self.redis_url.is_some() {
                "cluster.redis_url"
            } else {
                "cluster.redis_url_env"
            };
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: "must be a redis:// or rediss:// URL".into(),
            });
        }
        Ok(Some(url))
    }

    /// Checks what serde cannot, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.secret.is_some() && self.secret_env.is_some() {
            return Err(invalid(
                "cluster.secret_env".into(),
                "set secret or secret_env, not both",
            ));
        }
        if let Some(secret) = &self.secret
            && let Err(message) = parse_cluster_secret(secret)
        {
            return Err(invalid("cluster.secret".into(), &message));
        }
        if self.redis_url.is_some() && self.redis_url_env.is_some() {
            return Err(invalid(
                "cluster.redis_url_env".into(),
                "set redis_url or redis_url_env, not both",
            ));
        }
        if self.redis_url.is_some() {
            self.redis_url()?;
        }
        Ok(())
    }
}

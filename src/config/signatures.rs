//! `[[signatures]]`: which repositories may only be pulled when a cosign signature by one of
//! the operator's keys verifies.

use super::*;

/// One `[[signatures]]` policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturePolicy {
    /// The upstream whose repositories it covers; absent: every upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Repository patterns on that upstream (the syntax of `allow`/`deny`: `"myorg/*"`).
    pub repositories: Vec<String>,
    /// PEM public keys (ECDSA P-256, as `cosign generate-key-pair` writes `cosign.pub`); a
    /// signature by any one of them admits a manifest.
    pub keys: Vec<PathBuf>,
    /// `enforce`: unsigned or wrongly signed manifests are refused (403 DENIED); `warn`: they
    /// are served, with a WARN line.
    #[serde(default)]
    pub mode: SignatureMode,
    /// Whether the signature must also name this repository (the payload's
    /// `docker-reference`), so that a signature made for another repository does not count.
    #[serde(default)]
    pub check_identity: bool,
    /// Whether the policy also covers pushed (local) repositories matching it; pushed content
    /// is served once a signature pushed beside it (`.sig` tag or referrer) verifies.
    #[serde(default)]
    pub local: bool,
    /// How long a verdict is kept per manifest digest; a refusal is kept at most the upstream's
    /// `negative_ttl`, so a signature that appears later is seen soon.
    #[serde(default = "default_verdict_ttl", with = "humantime_serde")]
    pub verdict_ttl: Duration,
}

/// What a signature policy does with a manifest that has no valid signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMode {
    /// Refuse it: 403 DENIED naming the keys.
    #[default]
    Enforce,
    /// Serve it, with a WARN line.
    Warn,
}

fn default_verdict_ttl() -> Duration {
    Duration::from_secs(600)
}

/// Checks what serde cannot: patterns, a known upstream, at least one key. (That the key files
/// hold usable keys is checked where they are read: `check-config` and `serve`.)
pub(super) fn validate(
    policies: &[SignaturePolicy],
    upstreams: &[UpstreamConfig],
) -> Result<(), ConfigError> {
    for (i, policy) in policies.iter().enumerate() {
        let key = |field: &str| format!("signatures[{i}].{field}");
        if let Some(name) = &policy.upstream
            && !upstreams.iter().any(|u| &u.name == name)
        {
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err(ConfigError::Invalid {
                key: key("upstream"),
                message: format!("no [[upstream]] is named {name:?} (configured: {names:?})"),
            });
        }
        if policy.repositories.is_empty() {
            return Err(ConfigError::Invalid {
                key: key("repositories"),
                message: "name at least one repository pattern, such as \"myorg/*\"".into(),
            });
        }
        for (j, pattern) in policy.repositories.iter().enumerate() {
            if !values::is_repository_pattern(pattern) {
                return Err(ConfigError::Invalid {
                    key: key(&format!("repositories[{j}]")),
                    message: values::REPOSITORY_PATTERN_HINT.into(),
                });
            }
        }
        if policy.keys.is_empty() {
            return Err(ConfigError::Invalid {
                key: key("keys"),
                message: "name at least one PEM public key file (cosign.pub)".into(),
            });
        }
        if policy.verdict_ttl.is_zero() {
            return Err(ConfigError::Invalid {
                key: key("verdict_ttl"),
                message: "must be greater than zero".into(),
            });
        }
    }
    Ok(())
}

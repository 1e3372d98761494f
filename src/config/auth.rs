//! `[auth]`: who may pull, push and delete.

use super::*;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries (`htpasswd -B`). With it, pushes and deletes need
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Whether pulls work without credentials when `htpasswd` is set.
    #[serde(default = "default_true")]
    pub anonymous_pull: bool,
    /// Whether clients without credentials may push, mount and delete. Off by default: with it,
    /// anyone who reaches the mirror can replace what everybody pulls.
    #[serde(default)]
    pub anonymous_push: bool,
    /// `[[auth.access]]`: who may push and delete where. With none, every htpasswd user may
    /// push and delete everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
}

/// One `[[auth.access]]` rule: `users` may do `actions` on `repositories`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// htpasswd users (`"*"`: every user).
    pub users: Vec<String>,
    /// Glob patterns of repository names (`"team/*"`; `*` matches any run of characters,
    /// `/` included), matched against the one name a request's repository resolves to
    /// (`docker.io/library/alpine`): a pattern whose first component is an upstream's name, or
    /// that starts with `*`, as it is; any other as a name on the default upstream.
    pub repositories: Vec<String>,
    /// Any of `"push"`, `"delete"` (every authenticated user may pull).
    pub actions: Vec<Action>,
}

/// What a client may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs and tags.
    Pull,
    /// Upload blobs, mount them, put manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// The name used in token scopes (`repository:team/app:pull,push`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            anonymous_pull: true,
            anonymous_push: false,
            access: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Checks what serde cannot, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        for (i, rule) in self.access.iter().enumerate() {
            if rule.users.is_empty() || rule.repositories.is_empty() || rule.actions.is_empty() {
                return Err(invalid(
                    format!("auth.access[{i}]"),
                    "needs users, repositories and actions, each non-empty",
                ));
            }
        }
        if !self.access.is_empty() && self.htpasswd.is_none() {
            return Err(invalid(
                "auth.access".into(),
                "access rules name htpasswd users: set auth.htpasswd too",
            ));
        }
        Ok(())
    }
}

//! Client authentication against an htpasswd file (bcrypt).
//!
//! Clients prove who they are with Basic credentials, either on each request or once at the
//! token endpoint (`/token`), which hands out short-lived Bearer tokens, anonymous ones too.
//! The challenge is Bearer, as Docker Hub's is, because that is the one flow every client
//! handles for both cases: dockerd refuses to pull anonymously from a registry whose challenge
//! is Basic, and neither dockerd nor skopeo sends credentials to a registry that does not
//! challenge `GET /v2/`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest as _, Sha256};

/// Why the htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// Unreadable.
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line that is not `user:$2y$...`.
    #[error("htpasswd file {path}, line {line}: only bcrypt entries (htpasswd -B) are supported")]
    Entry {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

/// Users and their bcrypt hashes, with a short-lived cache of verified credentials (bcrypt is
/// deliberately slow, and a push is dozens of requests).
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: moka::sync::Cache<[u8; 32], String>,
}

impl Htpasswd {
    /// Loads an htpasswd file.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: shown.clone(),
            source,
        })?;
        Htpasswd::parse(&text, &shown)
    }

    /// Parses htpasswd text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = line
                .split_once(':')
                .filter(|(_, hash)| hash.starts_with("$2"))
                .ok_or(HtpasswdError::Entry {
                    path: origin.to_owned(),
                    line: i + 1,
                })?;
            users.insert(entry.0.to_owned(), entry.1.to_owned());
        }
        Ok(Htpasswd {
            users,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        })
    }

    /// The user an `Authorization: Basic ...` header proves, if it does.
    pub fn check(&self, authorization: Option<&str>) -> Option<String> {
        let encoded = authorization?.trim().strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let key: [u8; 32] = Sha256::digest(&decoded).into();
        if let Some(user) = self.verified.get(&key) {
            return Some(user);
        }
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let hash = self.users.get(user)?;
        if bcrypt::verify(password, hash).unwrap_or(false) {
            self.verified.insert(key, user.to_owned());
            Some(user.to_owned())
        } else {
            None
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials (or an anonymous token).
    Anonymous,
    /// A user from the htpasswd file.
    User(String),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials or a token were sent and are not valid.
    Invalid,
    /// The request needs an authenticated user.
    Required,
}

/// How long issued tokens live.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The authentication policy and the tokens issued.
pub struct Authenticator {
    htpasswd: Htpasswd,
    anonymous_pull: bool,
    tokens: moka::sync::Cache<String, Identity>,
}

impl Authenticator {
    /// A policy: `htpasswd` users may push; anyone may pull when `anonymous_pull`.
    pub fn new(htpasswd: Htpasswd, anonymous_pull: bool) -> Authenticator {
        Authenticator {
            htpasswd,
            anonymous_pull,
            tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TOKEN_LIFETIME)
                .build(),
        }
    }

    /// Who an `Authorization` header says the client is.
    fn identify(&self, authorization: Option<&str>) -> Result<Identity, Refusal> {
        let Some(value) = authorization else {
            return Ok(Identity::Anonymous);
        };
        if let Some(token) = value.trim().strip_prefix("Bearer ") {
            return self.tokens.get(token.trim()).ok_or(Refusal::Invalid);
        }
        self.htpasswd
            .check(Some(value))
            .map(Identity::User)
            .ok_or(Refusal::Invalid)
    }

    /// Whether a request may proceed. `read` for GET/HEAD; `ping` for `GET /v2/`, which always
    /// challenges a client that sent nothing, so that it learns where to get a token.
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        read: bool,
        ping: bool,
    ) -> Result<Identity, Refusal> {
        let identity = self.identify(authorization)?;
        let allowed = match (&identity, read) {
            (Identity::User(_), _) => true,
            (Identity::Anonymous, true) => {
                self.anonymous_pull && !(ping && authorization.is_none())
            }
            (Identity::Anonymous, false) => false,
        };
        if allowed {
            Ok(identity)
        } else {
            Err(Refusal::Required)
        }
    }

    /// A token for whoever the Basic credentials (if any) prove; refused for wrong credentials,
    /// and for anonymous clients when pulls need credentials.
    pub fn issue_token(&self, authorization: Option<&str>) -> Result<String, Refusal> {
        let identity = match authorization {
            Some(value) if value.trim().starts_with("Basic ") => self.identify(Some(value))?,
            _ if self.anonymous_pull => Identity::Anonymous,
            _ => return Err(Refusal::Required),
        };
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        self.tokens.insert(token.clone(), identity);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn verifies_bcrypt_entries() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let file = Htpasswd::parse(&format!("# users\nalice:{hash}\n"), "test").unwrap();
        assert_eq!(
            file.check(Some(&basic("alice", "s3cret"))).as_deref(),
            Some("alice")
        );
        // Cached the second time, same answer.
        assert_eq!(
            file.check(Some(&basic("alice", "s3cret"))).as_deref(),
            Some("alice")
        );
        assert_eq!(file.check(Some(&basic("alice", "wrong"))), None);
        assert_eq!(file.check(Some(&basic("bob", "s3cret"))), None);
        assert_eq!(file.check(Some("Bearer xyz")), None);
        assert_eq!(file.check(Some("Basic !!!")), None);
        assert_eq!(file.check(None), None);
    }

    #[test]
    fn policy() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let open = Authenticator::new(Htpasswd::parse(&format!("u:{hash}"), "t").unwrap(), true);
        let good = basic("u", "pw");
        let bad = basic("u", "nope");
        assert_eq!(open.authorize(None, true, false), Ok(Identity::Anonymous));
        assert_eq!(
            open.authorize(None, true, true),
            Err(Refusal::Required),
            "pings challenge"
        );
        assert_eq!(open.authorize(None, false, false), Err(Refusal::Required));
        assert_eq!(
            open.authorize(Some(&good), false, false),
            Ok(Identity::User("u".into()))
        );
        assert_eq!(
            open.authorize(Some(&bad), true, false),
            Err(Refusal::Invalid)
        );
        let anonymous = open.issue_token(None).unwrap();
        let bearer = format!("Bearer {anonymous}");
        assert_eq!(
            open.authorize(Some(&bearer), true, true),
            Ok(Identity::Anonymous)
        );
        assert_eq!(
            open.authorize(Some(&bearer), false, false),
            Err(Refusal::Required)
        );
        let pusher = format!("Bearer {}", open.issue_token(Some(&good)).unwrap());
        assert_eq!(
            open.authorize(Some(&pusher), false, false),
            Ok(Identity::User("u".into()))
        );
        assert_eq!(open.issue_token(Some(&bad)), Err(Refusal::Invalid));
        assert_eq!(
            open.authorize(Some("Bearer forged"), true, false),
            Err(Refusal::Invalid)
        );

        let closed = Authenticator::new(Htpasswd::parse(&format!("u:{hash}"), "t").unwrap(), false);
        assert_eq!(closed.authorize(None, true, false), Err(Refusal::Required));
        assert_eq!(closed.issue_token(None), Err(Refusal::Required));
        assert!(closed.issue_token(Some(&good)).is_ok());
    }

    #[test]
    fn rejects_non_bcrypt_entries() {
        assert!(Htpasswd::parse("bob:{SHA}abc\n", "test").is_err());
        assert!(Htpasswd::parse("no-colon\n", "test").is_err());
    }
}

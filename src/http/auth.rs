//! Client authentication: Basic credentials checked against an htpasswd file (bcrypt).

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
    fn rejects_non_bcrypt_entries() {
        assert!(Htpasswd::parse("bob:{SHA}abc\n", "test").is_err());
        assert!(Htpasswd::parse("no-colon\n", "test").is_err());
    }
}

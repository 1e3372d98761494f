//! The htpasswd file: users and their bcrypt hashes.

use std::collections::HashMap;
use std::path::Path;

/// Why the htpasswd file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// Unreadable.
    #[error("[auth] htpasswd = \"{path}\": {source}")]
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

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A hash of the file's highest cost, checked for unknown users so that they cost as much
    /// as a wrong password.
    decoy: String,
}

impl Htpasswd {
    /// Loads an htpasswd file. Blocking (it hashes once, for the decoy).
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: shown.clone(),
            source,
        })?;
        Htpasswd::parse(&text, &shown)
    }

    /// Parses htpasswd text; `origin` names it in errors. Blocking (see [`Htpasswd::load`]).
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
        let cost = users
            .values()
            .filter_map(|hash| hash.get(4..6)?.parse::<u32>().ok())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash_with_salt("decoy", cost, [7; 16])
            .map(|h| h.to_string())
            .unwrap_or_default();
        Ok(Htpasswd { users, decoy })
    }

    /// Whether `password` is `user`'s. Blocking and deliberately slow (bcrypt), for unknown
    /// users too.
    pub(super) fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, &self.decoy);
                false
            }
        }
    }
}

/// Why a user cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    /// A name the file format cannot hold.
    #[error("user names cannot be empty or contain ':' or line breaks")]
    BadName,
    /// Hashing failed (a cost out of range).
    #[error("bcrypt: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

/// The htpasswd text `existing` with `user`'s password set to `password` (bcrypt, `cost`):
/// their line replaced where it was, or appended. Other lines are kept as they are.
pub fn with_user(
    existing: &str,
    user: &str,
    password: &str,
    cost: u32,
) -> Result<String, AddUserError> {
    if user.is_empty() || user.contains([':', '\n', '\r']) {
        return Err(AddUserError::BadName);
    }
    let line = format!("{user}:{}", bcrypt::hash(password, cost)?);
    let mut replaced = false;
    let mut lines: Vec<String> = existing
        .lines()
        .map(|l| {
            if l.split_once(':').is_some_and(|(name, _)| name == user) {
                replaced = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !replaced {
        lines.push(line);
    }
    Ok(lines.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_added_or_replaced_and_verifies() {
        let one = with_user("# users\n", "alice", "first", 4).unwrap();
        let two = with_user(&one, "bob", "second", 4).unwrap();
        let three = with_user(&two, "alice", "changed", 4).unwrap();
        assert!(three.starts_with("# users\nalice:$2"), "{three}");
        assert_eq!(three.lines().count(), 3);
        let file = Htpasswd::parse(&three, "t").unwrap();
        assert!(file.verify("alice", "changed"));
        assert!(!file.verify("alice", "first"));
        assert!(file.verify("bob", "second"));
        assert!(matches!(
            with_user("", "a:b", "x", 4),
            Err(AddUserError::BadName)
        ));
    }
}

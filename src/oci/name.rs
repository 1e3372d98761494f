//! Repository names and tags, checked against the distribution spec's grammar.

use std::fmt;
use std::str::FromStr;

/// The longest repository name the spec allows clients to rely on.
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a string is not a valid repository name or tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or not matching the grammar; the string says which part.
    #[error("invalid repository name: {0}")]
    InvalidName(&'static str),
    /// Not matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("invalid tag")]
    InvalidTag,
}

/// A repository name such as `library/alpine` or `ghcr.io/org/app`.
///
/// Matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, so no
/// component is empty, `.` or `..`, and the name can be used as a relative path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Number of components (`library/alpine` has 2).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// Splits off the first component: `ghcr.io/org/app` -> (`ghcr.io`, `org/app`).
    /// `None` when the name has a single component.
    pub fn split_first(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        Some((first, RepoName(rest.to_owned())))
    }

    /// `<first>/<name>`: the name under one or more leading components. Only `first` and the
    /// length are checked: the rest is a valid name already (same result as parsing the
    /// joined string, without going over the name twice).
    pub fn under(&self, first: &str) -> Result<RepoName, NameError> {
        let len = first.len() + 1 + self.0.len();
        check_length(len)?;
        check_components(first)?;
        let mut joined = String::with_capacity(len);
        joined.push_str(first);
        joined.push('/');
        joined.push_str(&self.0);
        Ok(RepoName(joined))
    }

    /// `library/<name>` for a one-component name (Docker Hub's official images); any other
    /// name as it is.
    pub fn with_library_prefix(self) -> RepoName {
        if self.depth() == 1 {
            RepoName(format!("library/{}", self.0))
        } else {
            self
        }
    }
}

/// A name of `len` bytes is not too long.
fn check_length(len: usize) -> Result<(), NameError> {
    if len > MAX_NAME_LEN {
        return Err(NameError::InvalidName("longer than 255 characters"));
    }
    Ok(())
}

/// Every `/`-separated component of `s` is valid.
fn check_components(s: &str) -> Result<(), NameError> {
    if !s.split('/').all(valid_component) {
        return Err(NameError::InvalidName(
            "components must be lower-case letters and digits separated by '.', '_', '__' or '-'",
        ));
    }
    Ok(())
}

/// Whether `c` matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or one or more `-`, followed by an alphanumeric.
        let start = i;
        let sep = bytes[i];
        while i < bytes.len() && bytes[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::InvalidName("empty"));
        }
        check_length(s.len())?;
        check_components(s)?;
        Ok(RepoName(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// A tag such as `latest` or `1.2.3-alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || s.len() > MAX_TAG_LEN {
            return Err(NameError::InvalidTag);
        }
        Ok(Tag(s.to_owned()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "alpine",
            "library/alpine",
            "ghcr.io/org/app",
            "a/b/c/d",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "a.b",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "Alpine",
            "..",
            "a/../b",
            "../etc",
            "a/./b",
            "/a",
            "a/",
            "a//b",
            "a___b",
            "a..b",
            "-a",
            "a-",
            "a.",
            "_a",
            "a:b",
            "a b",
            long.as_str(),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn splits_and_prefixes() {
        let name: RepoName = "ghcr.io/org/app".parse().unwrap();
        let (first, rest) = name.split_first().unwrap();
        assert_eq!(first, "ghcr.io");
        assert_eq!(rest.as_str(), "org/app");
        let one: RepoName = "alpine".parse().unwrap();
        assert!(one.split_first().is_none());
        assert_eq!(one.clone().with_library_prefix().as_str(), "library/alpine");
        assert_eq!(rest.clone().with_library_prefix().as_str(), "org/app");
    }

    #[test]
    fn a_name_under_a_prefix_is_what_parsing_the_joined_string_gives() {
        let long = "a".repeat(250);
        for first in ["docker.io", "ghcr.io/org", "", "UPPER", "a..b", "-x", &long] {
            for rest in ["library/alpine", "app", "x/y/z"] {
                let rest: RepoName = rest.parse().unwrap();
                let parsed: Result<RepoName, _> = format!("{first}/{rest}").parse();
                assert_eq!(
                    rest.under(first).ok(),
                    parsed.ok(),
                    "{first:?} over {rest:?}"
                );
            }
        }
    }

    #[test]
    fn tags() {
        for ok in ["latest", "1.2.3", "_x", "A-b.c_d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }
}

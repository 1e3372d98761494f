//! Image references as people write them on a command line: `[host/]repo[:tag|@digest]`.

use std::fmt;
use std::str::FromStr;

use super::{Reference, RepoName};

/// A parsed image reference. The repository keeps the host as its first component (routing
/// strips it, as for `/v2/ghcr.io/org/app/...` requests); without a host it goes to the
/// default upstream, where Docker Hub names get `library/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository as the mirror's routing sees it (`docker.io/library/alpine`, `alpine`).
    pub name: RepoName,
    /// Tag (default `latest`) or digest.
    pub reference: Reference,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ImageRefError {
    input: String,
    reason: String,
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<ImageRef, ImageRefError> {
        let err = |reason: String| ImageRefError {
            input: s.to_owned(),
            reason,
        };
        let (rest, reference) = match s.split_once('@') {
            Some((rest, digest)) => (rest, digest.to_owned()),
            None => {
                // A ':' after the last '/' separates the tag.
                let last_slash = s.rfind('/').map_or(0, |i| i + 1);
                match s[last_slash..].rfind(':') {
                    Some(i) => (&s[..last_slash + i], s[last_slash + i + 1..].to_owned()),
                    None => (s, "latest".to_owned()),
                }
            }
        };
        let name: RepoName = rest.parse().map_err(|e| err(format!("{e}")))?;
        let reference: Reference = reference.parse().map_err(|e| err(format!("{e}")))?;
        Ok(ImageRef { name, reference })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r: ImageRef = "alpine".parse().unwrap();
        assert_eq!(r.to_string(), "alpine:latest");
        let r: ImageRef = "docker.io/library/alpine:3.20".parse().unwrap();
        assert_eq!(r.name.as_str(), "docker.io/library/alpine");
        assert_eq!(r.reference.to_string(), "3.20");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r: ImageRef = format!("ghcr.io/org/app@{d}").parse().unwrap();
        assert_eq!(r.reference.to_string(), d);
        assert!("Alpine".parse::<ImageRef>().is_err());
        assert!("alpine:".parse::<ImageRef>().is_err());
        assert!("alpine@sha256:nope".parse::<ImageRef>().is_err());
        assert!(
            "localhost:5000/app".parse::<ImageRef>().is_err(),
            "ports are not upstream names"
        );
    }
}

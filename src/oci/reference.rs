//! The `<reference>` of a manifest URL: a tag or a digest.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};
use super::name::{NameError, Tag};

/// A manifest reference: tags can move, digests cannot.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// A mutable name for a manifest.
    Tag(Tag),
    /// The manifest's own content address.
    Digest(Digest),
}

/// Why a string is not a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// It contains `:` but is not a valid digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// It is not a valid tag.
    #[error(transparent)]
    Tag(#[from] NameError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Tags cannot contain ':', digests always do.
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_or_digest() {
        assert!(matches!("latest".parse(), Ok(Reference::Tag(_))));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(d.parse(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:xyz".parse::<Reference>(),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            "../x".parse::<Reference>(),
            Err(ReferenceError::Tag(_))
        ));
        assert_eq!(d.parse::<Reference>().unwrap().to_string(), d);
    }
}

//! Content digests (`sha256:<64 hex>`), the addresses of everything in the store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest has no algorithm prefix")]
    MissingAlgorithm,
    /// An algorithm other than sha256 (the only one the store addresses by).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The encoded part is not 64 lower-case hex characters.
    #[error("digest hex must be 64 lower-case hex characters")]
    BadHex,
}

/// A valid sha256 digest. Only constructible from a well-formed string or by hashing bytes,
/// so a `Digest` can be used as a path component without further checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes a running sha256 into a digest.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// The 64 hex characters, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name (always `sha256`).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        let well_formed = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::BadHex);
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_bytes() {
        assert_eq!(Digest::of_bytes(b"").to_string(), EMPTY);
    }

    #[test]
    fn parses_and_displays_round_trip() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn rejects_malformed() {
        let long = format!("{EMPTY}0");
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let cases = [
            ("", DigestError::MissingAlgorithm),
            ("e3b0c442", DigestError::MissingAlgorithm),
            ("sha256:", DigestError::BadHex),
            ("sha256:abc", DigestError::BadHex),
            (&long, DigestError::BadHex),
            (&upper, DigestError::BadHex),
            ("sha256:../../../../etc/passwd", DigestError::BadHex),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                DigestError::BadHex,
            ),
            ("md5:abc", DigestError::UnsupportedAlgorithm("md5".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Digest>(), Err(expected), "{input:?}");
        }
    }
}

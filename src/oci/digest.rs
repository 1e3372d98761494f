//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`), the addresses of everything in the
//! store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// Content that was offered as one digest and hashes to another: the one shape of this error,
/// which every layer wraps (an upstream's wrong bytes, a push, a rotten object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {actual}")]
pub struct DigestMismatch {
    /// The digest the content was offered as.
    pub expected: Digest,
    /// The digest of the bytes.
    pub actual: Digest,
}

impl Digest {
    /// `Ok` when `actual` is this digest, else the mismatch.
    pub fn check(&self, actual: Digest) -> Result<(), DigestMismatch> {
        if &actual == self {
            Ok(())
        } else {
            Err(DigestMismatch {
                expected: self.clone(),
                actual,
            })
        }
    }
}

/// Why a string is not a digest we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest has no algorithm prefix")]
    MissingAlgorithm,
    /// An algorithm other than sha256 and sha512 (the ones the store addresses by).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The encoded part is not lower-case hex of the algorithm's length.
    #[error("digest hex must be lower-case hex characters of the algorithm's length")]
    BadHex,
}

/// A digest algorithm the registry supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the canonical one.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name in digests and store paths (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The length of the hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// The algorithm called `name`.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// A new running hash.
    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A running hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512 (boxed: it is large).
    Sha512(Box<Sha512>),
}

impl Hasher {
    /// Hashes more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything hashed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: Algorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A valid digest. Only constructible from a well-formed string or by hashing bytes, so a
/// `Digest` can be used as a path component without further checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::of_bytes_with(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of_bytes_with(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = algorithm.hasher();
        hasher.update(bytes);
        hasher.finish()
    }

    /// Finishes a running sha256 into a digest.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Hasher::Sha256(hasher).finish()
    }

    /// A digest from its parts as the store lays them out (`blobs/<algorithm>/../<hex>`).
    pub fn from_parts(algorithm: &str, hex: &str) -> Result<Digest, DigestError> {
        format!("{algorithm}:{hex}").parse()
    }

    /// The hex characters, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A new running hash of this digest's algorithm, to check content against it.
    pub fn hasher(&self) -> Hasher {
        self.algorithm.hasher()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, hex) = s.split_once(':').ok_or(DigestError::MissingAlgorithm)?;
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| DigestError::UnsupportedAlgorithm(name.to_owned()))?;
        let well_formed = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(DigestError::BadHex);
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
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
    const EMPTY_512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    #[test]
    fn hashes_bytes() {
        assert_eq!(Digest::of_bytes(b"").to_string(), EMPTY);
        assert_eq!(
            Digest::of_bytes_with(Algorithm::Sha512, b"").to_string(),
            EMPTY_512
        );
        let d: Digest = EMPTY_512.parse().unwrap();
        let mut h = d.hasher();
        h.update(b"");
        assert_eq!(h.finish(), d);
    }

    #[test]
    fn parses_and_displays_round_trip() {
        for text in [EMPTY, EMPTY_512] {
            let d: Digest = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
            assert_eq!(d.hex().len(), d.algorithm().hex_len());
            assert_eq!(
                Digest::from_parts(d.algorithm().name(), d.hex()).unwrap(),
                d
            );
        }
    }

    #[test]
    fn rejects_malformed() {
        let long = format!("{EMPTY}0");
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        let short_512 = EMPTY.replace("sha256", "sha512");
        let cases = [
            ("", DigestError::MissingAlgorithm),
            ("e3b0c442", DigestError::MissingAlgorithm),
            ("sha256:", DigestError::BadHex),
            ("sha256:abc", DigestError::BadHex),
            (&long, DigestError::BadHex),
            (&upper, DigestError::BadHex),
            (&short_512, DigestError::BadHex),
            ("sha256:../../../../etc/passwd", DigestError::BadHex),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                DigestError::BadHex,
            ),
            ("md5:abc", DigestError::UnsupportedAlgorithm("md5".into())),
            (
                "sha384:abc",
                DigestError::UnsupportedAlgorithm("sha384".into()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Digest>(), Err(expected), "{input:?}");
        }
    }
}

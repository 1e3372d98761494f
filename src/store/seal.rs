//! Blob seals: a replica that reads a blob back from the bucket checks a MAC instead of its
//! SHA-256, at about a quarter of the CPU.
//!
//! When a blob is committed to a remote backend its bytes have just been verified against its
//! digest. The replica committing it also computes a keyed BLAKE3 over the digest, the bytes
//! and their length — the blob's *seal* — and records it in the index entry of the blob
//! (which lives in the bucket, next to the blob). The key is derived from the cluster secret
//! (`[cluster] secret`), or, without one, kept in `seal.key` in the local directory; it is
//! never written to the bucket. Whoever can write to the bucket but does not know the key can
//! change the bytes, the seal or both, but cannot make a seal that matches bytes other than
//! the ones that were verified: a read that matches its seal is as good as one that matches
//! its digest.
//!
//! A read whose seal does not match (rotten bytes, a seal made under another key, a forged
//! seal) is not failed on that alone: its bytes are hashed with the digest's own algorithm,
//! as a read of an unsealed blob always is, and only that decides. The seal only ever saves
//! work; it never lets through what the digest would refuse.

use std::io;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oci::Digest;

/// What the MAC's input starts with: names the scheme, so that no other use of the key can
/// produce a seal.
const DOMAIN: &[u8] = b"regmirror blob seal v1\0";

/// A key that seals blobs, and its id (recorded with each seal, so a reader knows at once
/// whether a seal was made with its key).
#[derive(Clone)]
pub struct SealKey {
    key: [u8; 32],
    id: u64,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("id", &format_args!("{:016x}", self.id))
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// The seal key derived from `secret` (the cluster secret's key for this purpose, or the
    /// bytes of a local key file).
    pub fn derive(secret: &[u8]) -> SealKey {
        let key = blake3::derive_key("regmirror 2026-12 blob seal key", secret);
        let id_bytes = blake3::derive_key("regmirror 2026-12 blob seal key id", &key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&id_bytes[..8]);
        SealKey {
            key,
            id: u64::from_be_bytes(id),
        }
    }

    /// The key kept in the file `path`, made (32 random bytes, hex, readable by this user only)
    /// if there is none: a single replica without a cluster secret keeps its seals valid across
    /// restarts. Atomic: two processes starting at once on one directory end up with one key.
    pub fn load_or_create(path: &Path) -> io::Result<SealKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse_file(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut secret = Vec::with_capacity(32);
        secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        let temp = path.with_extension(format!("new-{}", uuid::Uuid::new_v4()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(hex::encode(&secret).as_bytes())?;
            file.sync_all()?;
        }
        // A hard link appears whole or not at all, and fails if another process made the
        // key first: then that one is the key.
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(SealKey::derive(&secret)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Self::parse_file(&std::fs::read_to_string(path)?, path)
            }
            Err(e) => Err(e),
        }
    }

    fn parse_file(text: &str, path: &Path) -> io::Result<SealKey> {
        match hex::decode(text.trim()) {
            Ok(secret) if secret.len() >= 32 => Ok(SealKey::derive(&secret)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a seal key (64 hex digits)", path.display()),
            )),
        }
    }

    /// Starts the seal of a blob of `digest`.
    pub(crate) fn sealer(&self, digest: &Digest) -> Sealer {
        let mut mac = blake3::Hasher::new_keyed(&self.key);
        mac.update(DOMAIN);
        mac.update(digest.to_string().as_bytes());
        mac.update(b"\0");
        Sealer {
            mac,
            key_id: self.id,
            len: 0,
        }
    }

    /// Starts checking a blob of `digest` read back against `seal`; `None` when the seal was
    /// made with another key (the read is then checked against the digest only).
    pub(crate) fn check(&self, digest: &Digest, seal: Seal) -> Option<SealCheck> {
        (seal.key_id == self.id).then(|| SealCheck {
            sealer: self.sealer(digest),
            expected: seal,
        })
    }
}

/// A blob's seal as recorded in the index: the id of the key that made it, and the MAC.
/// Written as `v1:<key id>:<mac>` in hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    key_id: u64,
    mac: [u8; 32],
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v1:{:016x}:{}", self.key_id, hex::encode(self.mac))
    }
}

impl std::str::FromStr for Seal {
    type Err = ();

    fn from_str(text: &str) -> Result<Seal, ()> {
        let mut parts = text.split(':');
        let (Some("v1"), Some(id), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        if id.len() != 16 {
            return Err(());
        }
        let key_id = u64::from_str_radix(id, 16).map_err(|_| ())?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(mac, &mut bytes).map_err(|_| ())?;
        Ok(Seal { key_id, mac: bytes })
    }
}

impl Serialize for Seal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Reads an index entry's seal leniently: the index lives in the bucket, and a seal that does
/// not parse (written by a later version, or by whoever else writes there) is no seal, never a
/// reason to refuse the whole index.
pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Seal>, D::Error> {
    /// Whatever the entry holds: a seal's text, or anything else, skipped.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(text) => text.parse().ok(),
        Raw::Other(_) => None,
    })
}

/// A seal being computed over a blob's bytes as they are written.
pub(crate) struct Sealer {
    mac: blake3::Hasher,
    key_id: u64,
    len: u64,
}

impl Sealer {
    /// Adds the next bytes of the blob.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.mac.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// The seal of the bytes given (their length is part of it).
    pub(crate) fn finish(mut self) -> Seal {
        self.mac.update(&self.len.to_le_bytes());
        Seal {
            key_id: self.key_id,
            mac: *self.mac.finalize().as_bytes(),
        }
    }
}

/// A blob read back from the bucket, checked against the seal recorded for it as it arrives.
pub(crate) struct SealCheck {
    sealer: Sealer,
    expected: Seal,
}

impl SealCheck {
    /// Adds the next bytes read.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sealer.update(bytes);
    }

    /// Whether the bytes read are the ones sealed (compared in constant time).
    pub(crate) fn matches(self) -> bool {
        let expected = self.expected;
        let actual = self.sealer.finish();
        actual.key_id == expected.key_id
            && blake3::Hash::from(actual.mac) == blake3::Hash::from(expected.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> Digest {
        Digest::of_bytes_with(crate::oci::digest::Algorithm::Sha256, bytes)
    }

    fn seal(key: &SealKey, digest: &Digest, chunks: &[&[u8]]) -> Seal {
        let mut sealer = key.sealer(digest);
        for chunk in chunks {
            sealer.update(chunk);
        }
        sealer.finish()
    }

    fn checks(key: &SealKey, digest: &Digest, seal: Seal, chunks: &[&[u8]]) -> bool {
        let Some(mut check) = key.check(digest, seal) else {
            return false;
        };
        for chunk in chunks {
            check.update(chunk);
        }
        check.matches()
    }

    #[test]
    fn a_seal_matches_the_same_bytes_however_they_are_split() {
        let key = SealKey::derive(&[7u8; 32]);
        let d = digest(b"hello world");
        let s = seal(&key, &d, &[b"hello", b" world"]);
        assert!(checks(&key, &d, s, &[b"hello world"]));
        assert!(checks(&key, &d, s, &[b"he", b"llo wor", b"ld"]));
    }

    #[test]
    fn a_seal_matches_nothing_else() {
        let key = SealKey::derive(&[7u8; 32]);
        let d = digest(b"hello world");
        let s = seal(&key, &d, &[b"hello world"]);
        assert!(!checks(&key, &d, s, &[b"hello worle"]), "other bytes");
        assert!(!checks(&key, &d, s, &[b"hello worl"]), "fewer bytes");
        assert!(!checks(&key, &d, s, &[b"hello world!"]), "more bytes");
        assert!(
            !checks(&key, &digest(b"x"), s, &[b"hello world"]),
            "the same bytes under another digest"
        );
        let other = SealKey::derive(&[8u8; 32]);
        assert!(other.check(&d, s).is_none(), "another key's seal");
        let mut forged = s;
        forged.mac[0] ^= 1;
        assert!(!checks(&key, &d, forged, &[b"hello world"]));
        let mut relabelled = seal(&other, &d, &[b"hello world"]);
        relabelled.key_id = s.key_id;
        assert!(
            !checks(&key, &d, relabelled, &[b"hello world"]),
            "another key's MAC under this key's id"
        );
    }

    #[test]
    fn seals_are_written_and_read_as_text_and_junk_is_no_seal() {
        let key = SealKey::derive(&[7u8; 32]);
        let s = seal(&key, &digest(b"a"), &[b"a"]);
        let text = s.to_string();
        assert!(text.starts_with("v1:") && text.len() == 3 + 16 + 1 + 64);
        assert_eq!(text.parse::<Seal>(), Ok(s));
        for junk in [
            "",
            "v1",
            "v2:0000000000000000:00",
            "v1:zz:00",
            &text[..text.len() - 2],
        ] {
            assert!(junk.parse::<Seal>().is_err(), "{junk:?}");
        }
        #[derive(Deserialize)]
        struct Entry {
            #[serde(default, deserialize_with = "lenient")]
            seal: Option<Seal>,
        }
        let read = |json: &str| serde_json::from_str::<Entry>(json).unwrap().seal;
        assert_eq!(read(&format!("{{\"seal\":\"{text}\"}}")), Some(s));
        assert_eq!(read("{\"seal\":\"v1:nonsense\"}"), None);
        assert_eq!(read("{\"seal\":42}"), None);
        assert_eq!(read("{\"seal\":{\"mac\":[1,2]}}"), None);
        assert_eq!(read("{\"seal\":null}"), None);
        assert_eq!(read("{}"), None);
    }

    #[test]
    fn a_local_key_file_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let first = SealKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = SealKey::load_or_create(&path).unwrap();
        assert_eq!(first.id, again.id);
        assert_eq!(first.key, again.key);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        let other =
            SealKey::load_or_create(&tempfile::tempdir().unwrap().path().join("k")).unwrap();
        assert_ne!(first.id, other.id, "each new key file is a new key");
        std::fs::write(&path, "not hex").unwrap();
        assert!(SealKey::load_or_create(&path).is_err());
    }
}

//! Where the store keeps things in its backend: the key layout documented in `store` (`mod.rs`),
//! coded here and nowhere else.

use super::{Store, TagKey};
use crate::oci::Digest;

/// A tag record's place, as its key spells it: upstream (or `_local`), repository, tag.
pub type TagPlace = (String, String, String);

impl Store {
    /// The key under which `area` (`blobs`, `meta`, `pins`, `referrers`, `deleted`) keeps what
    /// belongs to `digest`: `<area>/<algorithm>/<first 2 hex>/<hex>`.
    pub(super) fn digest_key(area: &str, digest: &Digest) -> String {
        let hex = digest.hex();
        format!("{area}/{}/{}/{hex}", digest.algorithm().name(), &hex[..2])
    }

    /// Parses `<area>/<algorithm>/<2 hex>/<hex><rest>` back into the digest and `<rest>`;
    /// `None` for keys of another shape.
    pub(super) fn parse_digest_key<'k>(area: &str, key: &'k str) -> Option<(Digest, &'k str)> {
        let rest = key.strip_prefix(area)?.strip_prefix('/')?;
        let (algorithm, rest) = rest.split_once('/')?;
        let (prefix, rest) = rest.split_once('/')?;
        let end = rest.find(['/', '.']).unwrap_or(rest.len());
        let digest = Digest::from_parts(algorithm, &rest[..end]).ok()?;
        (digest.hex().starts_with(prefix)).then_some((digest, &rest[end..]))
    }

    /// `blobs/<algorithm>/<2 hex>/<hex>`: a committed, verified blob.
    pub(super) fn blob_key(digest: &Digest) -> String {
        Store::digest_key("blobs", digest)
    }

    /// `meta/<algorithm>/<2 hex>/<hex>.json`: a manifest blob's media type.
    pub(super) fn meta_key(digest: &Digest) -> String {
        format!("{}.json", Store::digest_key("meta", digest))
    }

    /// `tags/<upstream>/<repo>/_tags/<tag>.json`. Valid repository components and tags never
    /// start with '_' or '.', so `_tags` cannot collide with a repository component and no part
    /// can climb out of the store.
    pub(super) fn tag_key(key: &TagKey) -> String {
        format!("tags/{}/{}/_tags/{}.json", key.upstream, key.repo, key.tag)
    }

    pub(super) fn tag_place(key: &TagKey) -> TagPlace {
        (
            key.upstream.clone(),
            key.repo.as_str().to_owned(),
            key.tag.to_string(),
        )
    }
}

/// The key of a tag place, `None` if it holds no valid name or tag.
pub(super) fn tag_key_of((upstream, repo, tag): &TagPlace) -> Option<TagKey> {
    Some(TagKey {
        upstream: upstream.clone(),
        repo: repo.parse().ok()?,
        tag: tag.parse().ok()?,
    })
}

/// The place of a tag record's key, `None` for keys of another shape.
pub(super) fn parse_tag_key(key: &str) -> Option<TagPlace> {
    let rest = key.strip_prefix("tags/")?.strip_suffix(".json")?;
    let (upstream, rest) = rest.split_once('/')?;
    let (repo, tag) = rest.rsplit_once("/_tags/")?;
    Some((upstream.to_owned(), repo.to_owned(), tag.to_owned()))
}

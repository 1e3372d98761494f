//! What the mirror holds and how it is doing, as plain views for the web UI: repositories,
//! their tags, a manifest's parts, and the status of traffic, upstreams and the store. Reading
//! them never counts as an access (the LRU order stays the clients').

use std::time::SystemTime;

use super::{Mirror, ProxyError};
use crate::metrics::Tally;
use crate::oci::{Digest, RepoName, Tag};
use crate::store::{LOCAL, Referrer, TagKey, TagRecord};

/// A repository the mirror holds.
#[derive(Debug, Clone)]
pub struct RepoView {
    /// Where its tags came from: an upstream's name, or [`LOCAL`] for pushed ones.
    pub origin: String,
    /// Its name there (the key for [`Mirror::repository_view`]).
    pub name: String,
    /// How clients pull it.
    pub display: String,
}

/// A tag of a repository.
#[derive(Debug, Clone)]
pub struct TagView {
    /// The tag.
    pub tag: String,
    /// What it points to.
    pub record: TagRecord,
    /// The platforms of an index (`linux/amd64`), empty for an image.
    pub platforms: Vec<String>,
    /// Config and layers (of every stored child, for an index), in bytes.
    pub total_size: u64,
    /// When a client last pulled the manifest, milliseconds since the epoch.
    pub last_pulled_ms: Option<u64>,
    /// Matches the upstream's `immutable_tags`.
    pub immutable: bool,
}

/// One part of a manifest: a layer, the config, or a child manifest.
#[derive(Debug, Clone)]
pub struct PartView {
    /// Its media type.
    pub media_type: String,
    /// Its digest, as written.
    pub digest: String,
    /// Its size, as declared.
    pub size: u64,
    /// For a child of an index: its platform.
    pub platform: Option<String>,
}

/// A manifest, taken apart.
#[derive(Debug, Clone)]
pub struct ManifestView {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// The config, for an image.
    pub config: Option<PartView>,
    /// Its layers, for an image.
    pub layers: Vec<PartView>,
    /// Its children, for an index.
    pub children: Vec<PartView>,
    /// Manifests that refer to it (signatures, SBOMs, attestations).
    pub referrers: Vec<ReferrerView>,
    /// The document, pretty-printed.
    pub pretty: String,
}

/// A referrer and the repositories it was pushed to: a referrer belongs to its repository,
/// not to every repository that has its subject.
#[derive(Debug, Clone)]
pub struct ReferrerView {
    /// The referrer.
    pub referrer: Referrer,
    /// The repositories (canonical names) that pushed it.
    pub repositories: Vec<String>,
}

/// An upstream's health.
#[derive(Debug, Clone)]
pub struct UpstreamView {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The last failure and when.
    pub last_error: Option<(SystemTime, String)>,
    /// Its rate limit: remaining of limit, when it sends them.
    pub ratelimit: Option<(i64, i64)>,
    /// Cached tags served stale because it could not be asked.
    pub stale_serves: u64,
    /// Its `immutable_tags`.
    pub immutable_tags: Vec<String>,
}

/// How the mirror is doing.
#[derive(Debug, Clone)]
pub struct StatusView {
    /// Traffic since midnight (UTC).
    pub today: Tally,
    /// Traffic since start.
    pub since_start: Tally,
    /// Blob fills running.
    pub fills_in_flight: i64,
    /// The upstreams.
    pub upstreams: Vec<UpstreamView>,
    /// Bytes and blobs in the store.
    pub store_bytes: u64,
    /// Blobs in the store.
    pub store_blobs: u64,
    /// Bytes held by unfinished uploads.
    pub uploads_bytes: u64,
    /// `max_size` (0: no cap).
    pub max_size: u64,
    /// Whether the mirror runs offline.
    pub offline: bool,
}

impl Mirror {
    /// How clients name a repository recorded under `origin`.
    fn display_name(&self, origin: &str, name: &str) -> String {
        let default = self.upstreams.default_name();
        if origin == LOCAL {
            default
                .and_then(|d| name.strip_prefix(&format!("{d}/")))
                .unwrap_or(name)
                .to_owned()
        } else if Some(origin) == default {
            name.to_owned()
        } else {
            format!("{origin}/{name}")
        }
    }

    /// The repositories whose client-facing name contains `query` (case-insensitive).
    pub async fn repositories_view(&self, query: &str) -> Result<Vec<RepoView>, ProxyError> {
        let query = query.trim().to_ascii_lowercase();
        Ok(self
            .store
            .repositories()
            .await?
            .into_iter()
            .map(|(origin, name)| RepoView {
                display: self.display_name(&origin, &name),
                origin,
                name,
            })
            .filter(|r| r.display.to_ascii_lowercase().contains(&query))
            .collect())
    }

    /// The tags of a repository, with what each points to.
    pub async fn repository_view(
        &self,
        origin: &str,
        name: &RepoName,
    ) -> Result<Vec<TagView>, ProxyError> {
        let upstream = self.upstreams.by_name(origin);
        let mut out = Vec::new();
        for tag in self.store.list_tags(origin, name).await? {
            let Ok(tag) = tag.parse::<Tag>() else {
                continue;
            };
            let key = TagKey {
                upstream: origin.to_owned(),
                repo: name.clone(),
                tag: tag.clone(),
            };
            let Some(record) = self.store.get_tag(&key).await? else {
                continue;
            };
            let (platforms, total_size, last_pulled_ms) = match record.digest() {
                Some(digest) => {
                    let (platforms, size) = self.image_summary(&digest).await?;
                    (platforms, size, self.store.last_access(&digest))
                }
                None => (Vec::new(), 0, None),
            };
            out.push(TagView {
                immutable: upstream.is_some_and(|u| u.is_immutable(tag.as_str())),
                tag: tag.to_string(),
                record,
                platforms,
                total_size,
                last_pulled_ms,
            });
        }
        Ok(out)
    }

    /// The platforms of an index and the bytes an image (or every stored child) needs.
    async fn image_summary(&self, digest: &Digest) -> Result<(Vec<String>, u64), ProxyError> {
        let Some(view) = self.manifest_parts(digest).await? else {
            return Ok((Vec::new(), 0));
        };
        let own = |v: &ManifestView| {
            v.config.as_ref().map_or(0, |c| c.size) + v.layers.iter().map(|l| l.size).sum::<u64>()
        };
        if view.children.is_empty() {
            return Ok((Vec::new(), own(&view)));
        }
        let mut total = 0;
        for child in &view.children {
            if let Ok(d) = child.digest.parse::<Digest>()
                && let Some(child_view) = self.manifest_parts(&d).await?
            {
                total += own(&child_view);
            }
        }
        let platforms = view
            .children
            .iter()
            .filter_map(|c| c.platform.clone())
            .collect();
        Ok((platforms, total))
    }

    /// A stored manifest taken apart, with its referrers; `None` if it is not stored.
    pub async fn manifest_view(&self, digest: &Digest) -> Result<Option<ManifestView>, ProxyError> {
        let Some(mut view) = self.manifest_parts(digest).await? else {
            return Ok(None);
        };
        for referrer in self.store.referrers(digest).await? {
            let Ok(manifest) = referrer.digest.parse::<Digest>() else {
                continue;
            };
            let mut repositories: Vec<String> = self
                .store
                .holders_cached(&manifest)
                .await?
                .iter()
                .map(|h| h.split('@').next().unwrap_or(h).to_owned())
                .collect();
            repositories.dedup();
            view.referrers.push(ReferrerView {
                referrer,
                repositories,
            });
        }
        Ok(Some(view))
    }

    async fn manifest_parts(&self, digest: &Digest) -> Result<Option<ManifestView>, ProxyError> {
        let Some(stored) = self.store.peek_manifest(digest).await? else {
            return Ok(None);
        };
        let doc: serde_json::Value = serde_json::from_slice(&stored.bytes).unwrap_or_default();
        let part = |v: &serde_json::Value| PartView {
            media_type: v["mediaType"].as_str().unwrap_or("").to_owned(),
            digest: v["digest"].as_str().unwrap_or("").to_owned(),
            size: v["size"].as_u64().unwrap_or(0),
            platform: v.get("platform").map(|p| {
                let mut platform = format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or("?"),
                    p["architecture"].as_str().unwrap_or("?")
                );
                if let Some(variant) = p["variant"].as_str() {
                    platform.push('/');
                    platform.push_str(variant);
                }
                platform
            }),
        };
        let list = |key: &str| {
            doc[key]
                .as_array()
                .map(|items| items.iter().map(part).collect())
                .unwrap_or_default()
        };
        Ok(Some(ManifestView {
            digest: digest.clone(),
            media_type: stored.media_type.clone(),
            size: stored.bytes.len() as u64,
            config: doc.get("config").map(part),
            layers: list("layers"),
            children: list("manifests"),
            referrers: Vec::new(),
            pretty: serde_json::to_string_pretty(&doc).unwrap_or_default(),
        }))
    }

    /// How the mirror is doing; `max_size` and `offline` come from the config.
    pub fn status_view(&self) -> StatusView {
        let (today, since_start) = self.metrics.totals.read();
        let (store_bytes, store_blobs) = self.store.usage();
        let m = &self.metrics;
        let upstreams = self
            .upstreams
            .all()
            .iter()
            .map(|u| {
                let name = u.name();
                let limit = m.ratelimit_limit.with_label_values(&[name]).get();
                let remaining = m.ratelimit_remaining.with_label_values(&[name]).get();
                let stale = ["manifest", "blob"]
                    .iter()
                    .map(|kind| {
                        m.cache_lookups
                            .with_label_values(&[kind, "stale", name])
                            .get()
                    })
                    .sum();
                UpstreamView {
                    name: name.to_owned(),
                    url: u.config().url.to_string(),
                    last_error: u.last_error(),
                    ratelimit: (limit > 0).then_some((remaining, limit)),
                    stale_serves: stale,
                    immutable_tags: u.config().immutable_tags.clone(),
                }
            })
            .collect();
        StatusView {
            today,
            since_start,
            fills_in_flight: m.fills_in_flight.get(),
            upstreams,
            store_bytes,
            store_blobs,
            uploads_bytes: self.store.uploads_bytes(),
            max_size: u64::try_from(m.store_max_bytes.get()).unwrap_or(0),
            offline: self.upstreams.offline(),
        }
    }
}

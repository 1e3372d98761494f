//! What the mirror holds and how it is doing, as plain views for the web UI: repositories,
//! their tags, a manifest's parts, and the status of traffic, upstreams and the store. Reading
//! them never counts as an access (the LRU order stays the clients').
//!
//! The pages are anonymous, so each view is bounded however large the content: a page of
//! tags at a time, the summary of an index from at most [`SUMMARY_CHILDREN`] children and
//! remembered per digest (content never changes), big manifests parsed on the blocking pool a
//! few at a time, long lists and documents cut with a note.

use std::time::SystemTime;

use std::sync::Arc;

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
    /// Children of an index beyond those summarized.
    pub more_children: usize,
    /// Config and layers (of every stored child summarized, for an index), in bytes.
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
    /// Its children, for an index (at most [`PAGE_PARTS`]).
    pub children: Vec<PartView>,
    /// Layers and children beyond those listed.
    pub more_parts: usize,
    /// Manifests that refer to it (signatures, SBOMs, attestations).
    pub referrers: Vec<ReferrerView>,
    /// The document, pretty-printed (its first [`SHOWN_DOCUMENT`] bytes, for a big one).
    pub pretty: String,
    /// Whether `pretty` is cut short.
    pub cut: bool,
}

/// Tags on one page of a repository.
pub const PAGE_TAGS: usize = 50;

/// Repositories on one page of the list.
pub const PAGE_REPOSITORIES: usize = 100;

/// Layers or children listed on a manifest page.
pub const PAGE_PARTS: usize = 200;

/// Children of an index a tag's summary looks at.
pub const SUMMARY_CHILDREN: usize = 32;

/// The most of a manifest's document a page shows.
pub const SHOWN_DOCUMENT: usize = 128 * 1024;

/// Manifests larger than this are parsed on the blocking pool.
const PARSE_OFF_WORKERS: usize = 64 * 1024;

/// What a tag's summary says of an image or index: platforms, bytes, children not looked at.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    platforms: Vec<String>,
    size: u64,
    more_children: usize,
}

/// Summaries by manifest digest, and the budget for parsing big manifests.
pub struct InventoryCache {
    summaries: moka::sync::Cache<Digest, Arc<Summary>>,
    parsing: tokio::sync::Semaphore,
}

impl Default for InventoryCache {
    fn default() -> Self {
        InventoryCache {
            summaries: moka::sync::Cache::builder().max_capacity(10_000).build(),
            parsing: tokio::sync::Semaphore::new(2),
        }
    }
}

/// A page of a listing: the items, and the last one's key when more follow.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    /// The items.
    pub items: Vec<T>,
    /// Where the next page starts (after this key), when there is one.
    pub next: Option<String>,
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

    /// A page of the repositories whose name contains `query`, after `after`.
    pub async fn repositories_page(
        &self,
        query: &str,
        after: Option<&str>,
    ) -> Result<Paged<RepoView>, ProxyError> {
        let mut all = self.repositories_view(query).await?;
        all.sort_by(|a, b| a.display.cmp(&b.display));
        let key = |r: &RepoView| format!("{}\0{}", r.display, r.origin);
        if let Some(after) = after {
            all.retain(|r| key(r).as_str() > after);
        }
        let more = all.len() > PAGE_REPOSITORIES;
        all.truncate(PAGE_REPOSITORIES);
        let next = more.then(|| all.last().map(key)).flatten();
        Ok(Paged { items: all, next })
    }

    /// A page of the tags of a repository (after `after`), with what each points to.
    pub async fn repository_view(
        &self,
        origin: &str,
        name: &RepoName,
        after: Option<&str>,
    ) -> Result<Paged<TagView>, ProxyError> {
        let upstream = self.upstreams.by_name(origin);
        let mut tags = self.store.list_tags(origin, name).await?;
        if let Some(after) = after {
            tags.retain(|t| t.as_str() > after);
        }
        let more = tags.len() > PAGE_TAGS;
        tags.truncate(PAGE_TAGS);
        let next = more.then(|| tags.last().cloned()).flatten();
        let mut out = Vec::new();
        for tag in tags {
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
            let (summary, last_pulled_ms) = match record.digest() {
                Some(digest) => (
                    self.image_summary(&digest).await?,
                    self.store.last_access(&digest),
                ),
                None => (Arc::new(Summary::default()), None),
            };
            out.push(TagView {
                immutable: upstream.is_some_and(|u| u.is_immutable(tag.as_str())),
                tag: tag.to_string(),
                record,
                platforms: summary.platforms.clone(),
                more_children: summary.more_children,
                total_size: summary.size,
                last_pulled_ms,
            });
        }
        Ok(Paged { items: out, next })
    }

    /// The platforms of an index and the bytes an image (or the stored children looked at)
    /// needs; at most [`SUMMARY_CHILDREN`] children are looked at, and the answer is kept.
    async fn image_summary(&self, digest: &Digest) -> Result<Arc<Summary>, ProxyError> {
        if let Some(summary) = self.inventory.summaries.get(digest) {
            return Ok(summary);
        }
        let Some(view) = self.manifest_parts(digest).await? else {
            return Ok(Arc::new(Summary::default()));
        };
        let own = |v: &ManifestView| {
            v.config.as_ref().map_or(0, |c| c.size) + v.layers.iter().map(|l| l.size).sum::<u64>()
        };
        let mut summary = Summary {
            size: own(&view),
            ..Summary::default()
        };
        let children = view.children.len()
            + if view.layers.is_empty() {
                view.more_parts
            } else {
                0
            };
        for child in view.children.iter().take(SUMMARY_CHILDREN) {
            summary.platforms.extend(child.platform.clone());
            if let Ok(d) = child.digest.parse::<Digest>()
                && let Some(child_view) = self.manifest_parts(&d).await?
            {
                summary.size += own(&child_view);
            }
        }
        summary.more_children = children.saturating_sub(SUMMARY_CHILDREN);
        let summary = Arc::new(summary);
        self.inventory
            .summaries
            .insert(digest.clone(), Arc::clone(&summary));
        Ok(summary)
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
        let (digest, media_type) = (digest.clone(), stored.media_type.clone());
        if stored.bytes.len() <= PARSE_OFF_WORKERS {
            return Ok(Some(take_apart(digest, media_type, &stored.bytes)));
        }
        // A big document (an index of thousands of children): on the blocking pool, two at a
        // time, so that anonymous pages never hold up the async workers.
        let _turn = self
            .inventory
            .parsing
            .acquire()
            .await
            .map_err(|_| ProxyError::Internal("UI parsing closed".into()))?;
        let bytes = stored.bytes.clone();
        tokio::task::spawn_blocking(move || take_apart(digest, media_type, &bytes))
            .await
            .map(Some)
            .map_err(|e| ProxyError::Internal(format!("parsing a manifest for the UI: {e}")))
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

/// A manifest document taken apart for a page: at most [`PAGE_PARTS`] layers and children,
/// and at most [`SHOWN_DOCUMENT`] bytes of the document.
fn take_apart(digest: Digest, media_type: String, bytes: &[u8]) -> ManifestView {
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
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
    let mut more_parts = 0;
    let mut list = |key: &str| -> Vec<PartView> {
        let items = doc[key].as_array().map_or(&[][..], Vec::as_slice);
        more_parts += items.len().saturating_sub(PAGE_PARTS);
        items.iter().take(PAGE_PARTS).map(part).collect()
    };
    let (layers, children) = (list("layers"), list("manifests"));
    let (pretty, cut) = if bytes.len() > SHOWN_DOCUMENT {
        let shown = String::from_utf8_lossy(&bytes[..SHOWN_DOCUMENT]).into_owned();
        (shown, true)
    } else {
        (
            serde_json::to_string_pretty(&doc).unwrap_or_default(),
            false,
        )
    };
    ManifestView {
        digest,
        media_type,
        size: bytes.len() as u64,
        config: doc.get("config").map(part),
        layers,
        children,
        more_parts,
        referrers: Vec::new(),
        pretty,
        cut,
    }
}

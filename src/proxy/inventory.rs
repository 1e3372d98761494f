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
    /// How many tags it has.
    pub tags: usize,
    /// The bytes of the images its first [`SIZED_TAGS`] tags point to (each image once), and
    /// whether it has more tags than that.
    pub size: (u64, bool),
    /// When a client last pulled from it through this replica, milliseconds since the epoch.
    pub last_pulled_ms: Option<u64>,
}

/// Tags of a repository whose images the repository list adds up.
pub const SIZED_TAGS: usize = 10;

/// When tags and repositories were last pulled through this replica (since it started):
/// what the UI shows as "last pulled", per tag and not per digest (two tags of one image
/// were not pulled together).
///
/// On the path of every manifest pull, so it is cheap: keys are hashes (no allocation), a
/// time is written at most once a second per key (a read is cheaper than a write), and a
/// thread that wrote or read a key's time within that second does not look it up again
/// (see [`RecentPulls`]): a cache lookup was 2–3% of a cached manifest GET's CPU.
pub struct PullTimes {
    /// Tells this instance's entries in [`RecentPulls`] from another's (tests run many).
    id: u64,
    tags: PullTimeMap,
    repositories: PullTimeMap,
}

/// Last pull times (ms since the epoch) by [`pull_key`].
type PullTimeMap = moka::sync::Cache<u64, u64, ahash::RandomState>;

/// How stale a recorded pull time may get before a pull writes it again.
const PULL_TIME_RESOLUTION_MS: u64 = 1000;

/// The key of a repository, or of one of its tags: a hash of the names (a collision would
/// only show one tag's pull time for another's).
fn pull_key(origin: &str, repo: &str, tag: Option<&str>) -> u64 {
    // Keyed once per process (random keys, as std's `RandomState`): a client cannot pick a
    // tag whose key is another's. ahash rather than SipHash: this runs on every pull.
    static KEYS: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(ahash::RandomState::new)
        .hash_one((origin, repo, tag))
}

/// How many keys each thread remembers having seen fresh.
const RECENT_SLOTS: usize = 64;

/// Per thread, the keys whose stored time was fresh when this thread last looked: `(PullTimes
/// id, key, stored time)`, one slot per `key % RECENT_SLOTS` (a clash only costs a lookup).
struct RecentPulls([(u64, u64, u64); RECENT_SLOTS]);

thread_local! {
    static RECENT_PULLS: std::cell::RefCell<RecentPulls> =
        const { std::cell::RefCell::new(RecentPulls([(0, 0, 0); RECENT_SLOTS])) };
}

impl RecentPulls {
    fn slot(&mut self, key: u64) -> &mut (u64, u64, u64) {
        // Truncating the hash is the point: any of its bits pick a slot equally well.
        &mut self.0[key as usize % RECENT_SLOTS]
    }
}

impl Default for PullTimes {
    fn default() -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        PullTimes {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            tags: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .build_with_hasher(ahash::RandomState::new()),
            repositories: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .build_with_hasher(ahash::RandomState::new()),
        }
    }
}

impl PullTimes {
    /// Notes a pull of `repo` under `origin`, of `tag` when it was pulled by tag.
    pub fn record(&self, origin: &str, repo: &str, tag: Option<&str>) {
        let now = crate::clock::now_ms();
        self.touch(&self.repositories, pull_key(origin, repo, None), now);
        if tag.is_some() {
            self.touch(&self.tags, pull_key(origin, repo, tag), now);
        }
    }

    /// Makes the time stored under `key` at most a second older than `now`.
    fn touch(&self, times: &PullTimeMap, key: u64, now: u64) {
        let fresh = |at: u64| now.saturating_sub(at) < PULL_TIME_RESOLUTION_MS;
        RECENT_PULLS.with(|recent| {
            let mut recent = recent.borrow_mut();
            let slot = recent.slot(key);
            if slot.0 == self.id && slot.1 == key && fresh(slot.2) {
                return;
            }
            let at = match times.get(&key) {
                Some(at) if fresh(at) => at,
                _ => {
                    times.insert(key, now);
                    now
                }
            };
            *slot = (self.id, key, at);
        });
    }

    fn tag(&self, origin: &str, repo: &str, tag: &str) -> Option<u64> {
        self.tags.get(&pull_key(origin, repo, Some(tag)))
    }

    fn repository(&self, origin: &str, repo: &str) -> Option<u64> {
        self.repositories.get(&pull_key(origin, repo, None))
    }
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
    /// When a client last pulled this tag through this replica, milliseconds since the epoch.
    pub last_pulled_ms: Option<u64>,
    /// Matches the upstream's `immutable_tags`.
    pub immutable: bool,
    /// Its standing under a `[[signatures]]` policy, when one covers it.
    pub signature: Option<super::SignatureStatus>,
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
    /// For a child of an index: its platform (none for an attestation).
    pub platform: Option<String>,
    /// For an attestation (BuildKit's provenance and SBOMs, in an index): the digest of the
    /// manifest it attests.
    pub attests: Option<String>,
}

/// A config or layer, as a manifest that lists it describes it.
#[derive(Debug, Clone)]
pub struct BlobView {
    /// Its media type, from the manifest's descriptor.
    pub media_type: String,
    /// Its size: the stored blob's, else the descriptor's.
    pub size: u64,
    /// Whether the store holds it (a layer is fetched on its first pull).
    pub stored: bool,
    /// Whether it is the manifest's config (else a layer).
    pub is_config: bool,
    /// A repository that holds the manifest, to download the blob through.
    pub repository: Option<String>,
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
    /// Where the previous page starts: `None` on the first page, `Some(None)` when it is the
    /// first page, `Some(Some(key))` to start after `key`.
    pub previous: Option<Option<String>>,
}

/// Keyset pagination over a sorted list: the page after `after`, and the keys of the pages
/// around it.
fn paginate<T>(
    mut all: Vec<T>,
    after: Option<&str>,
    size: usize,
    key: impl Fn(&T) -> String,
) -> Paged<T> {
    let start = after.map_or(0, |after| all.partition_point(|t| key(t).as_str() <= after));
    let previous = (start > 0).then(|| (start > size).then(|| key(&all[start - size - 1])));
    let rest = all.split_off(start);
    let mut items = rest;
    let more = items.len() > size;
    items.truncate(size);
    let next = more.then(|| items.last().map(&key)).flatten();
    Paged {
        items,
        next,
        previous,
    }
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
    /// The object store's outage in progress: since when (ms) and why.
    pub store_outage: Option<(u64, String)>,
    /// Whether the store's index is loaded (no: the object store has not answered since
    /// start).
    pub store_loaded: bool,
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
                tags: 0,
                size: (0, false),
                last_pulled_ms: None,
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
        let key = |r: &RepoView| format!("{}\0{}", r.display, r.origin);
        all.sort_by_key(key);
        let mut page = paginate(all, after, PAGE_REPOSITORIES, key);
        for repo in &mut page.items {
            self.describe_repository(repo).await?;
        }
        Ok(page)
    }

    /// The name of the repository held as `name` under `origin`, as clients pull it; `None`
    /// when the mirror holds no tag of it (an unknown origin included).
    pub async fn repository_title(
        &self,
        origin: &str,
        name: &RepoName,
    ) -> Result<Option<String>, ProxyError> {
        if origin != LOCAL && self.upstreams.by_name(origin).is_none() {
            return Ok(None);
        }
        if self.store.list_tags(origin, name).await?.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.display_name(origin, name.as_str())))
    }

    /// Tag count, size and last pull of a repository on the list: the size from the images of
    /// its first [`SIZED_TAGS`] tags, so a page costs a bounded amount of work.
    async fn describe_repository(&self, repo: &mut RepoView) -> Result<(), ProxyError> {
        let Ok(name) = repo.name.parse::<RepoName>() else {
            return Ok(());
        };
        let tags = self.store.list_tags(&repo.origin, &name).await?;
        repo.tags = tags.len();
        repo.last_pulled_ms = self.pulls.repository(&repo.origin, &repo.name);
        let mut seen = std::collections::HashSet::new();
        let mut size = 0;
        for tag in tags.iter().take(SIZED_TAGS) {
            let Ok(tag) = tag.parse::<Tag>() else {
                continue;
            };
            let key = TagKey {
                upstream: repo.origin.clone(),
                repo: name.clone(),
                tag,
            };
            if let Some(digest) = self.store.get_tag(&key).await?.and_then(|r| r.digest())
                && seen.insert(digest.clone())
            {
                size += self.image_summary(&digest).await?.size;
            }
        }
        repo.size = (size, tags.len() > SIZED_TAGS);
        Ok(())
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
        tags.sort();
        let page = paginate(tags, after, PAGE_TAGS, String::clone);
        let mut out = Vec::new();
        for tag in page.items {
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
            let summary = match record.digest() {
                Some(digest) => self.image_summary(&digest).await?,
                None => Arc::new(Summary::default()),
            };
            let last_pulled_ms = self.pulls.tag(origin, name.as_str(), tag.as_str());
            let signature = record
                .digest()
                .and_then(|d| self.signatures.status(origin, name.as_str(), &d));
            out.push(TagView {
                signature,
                immutable: upstream.is_some_and(|u| u.is_immutable(tag.as_str())),
                tag: tag.to_string(),
                record: TagRecord::clone(&record),
                platforms: summary.platforms.clone(),
                more_children: summary.more_children,
                total_size: summary.size,
                last_pulled_ms,
            });
        }
        Ok(Paged {
            items: out,
            next: page.next,
            previous: page.previous,
        })
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

    /// A config or layer of `manifest`; `None` when the manifest is not stored or does not
    /// list the blob.
    pub async fn blob_view(
        &self,
        digest: &Digest,
        manifest: &Digest,
    ) -> Result<Option<BlobView>, ProxyError> {
        let Some(parts) = self.manifest_parts(manifest).await? else {
            return Ok(None);
        };
        let wanted = digest.to_string();
        let found = match &parts.config {
            Some(config) if config.digest == wanted => Some((config, true)),
            _ => parts
                .layers
                .iter()
                .find(|l| l.digest == wanted)
                .map(|l| (l, false)),
        };
        let Some((part, is_config)) = found else {
            return Ok(None);
        };
        let stored = self.store.blob_size(digest).await?;
        let repository = self
            .store
            .holders_cached(manifest)
            .await?
            .first()
            .map(|h| h.split('@').next().unwrap_or(h).to_owned());
        Ok(Some(BlobView {
            media_type: part.media_type.clone(),
            size: stored.unwrap_or(part.size),
            stored: stored.is_some(),
            is_config,
            repository,
        }))
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
            store_outage: self.store.outage(),
            store_loaded: self.store.is_loaded(),
        }
    }
}

/// The manifest an index entry attests, when it is an attestation: BuildKit marks them with
/// `vnd.docker.reference.type = attestation-manifest` (and platform `unknown/unknown`).
fn attested(entry: &serde_json::Value) -> Option<String> {
    let annotations = &entry["annotations"];
    (annotations["vnd.docker.reference.type"].as_str() == Some("attestation-manifest")).then(|| {
        annotations["vnd.docker.reference.digest"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    })
}

/// A manifest document taken apart for a page: at most [`PAGE_PARTS`] layers and children,
/// and at most [`SHOWN_DOCUMENT`] bytes of the document.
fn take_apart(digest: Digest, media_type: String, bytes: &[u8]) -> ManifestView {
    let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let part = |v: &serde_json::Value| PartView {
        media_type: v["mediaType"].as_str().unwrap_or("").to_owned(),
        digest: v["digest"].as_str().unwrap_or("").to_owned(),
        size: v["size"].as_u64().unwrap_or(0),
        attests: attested(v),
        platform: v
            .get("platform")
            .filter(|_| attested(v).is_none())
            .map(|p| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_time_is_written_at_most_once_a_second_per_key_and_instance() {
        let pulls = PullTimes::default();
        let stored = |pulls: &PullTimes| pulls.tags.get(&7);
        pulls.touch(&pulls.tags, 7, 10_000);
        assert_eq!(stored(&pulls), Some(10_000));
        pulls.touch(&pulls.tags, 7, 10_999);
        assert_eq!(stored(&pulls), Some(10_000));
        // Another mirror in this process (this thread remembers keys per instance).
        let other = PullTimes::default();
        other.touch(&other.tags, 7, 10_500);
        assert_eq!(stored(&other), Some(10_500));
        pulls.touch(&pulls.tags, 7, 11_000);
        assert_eq!(stored(&pulls), Some(11_000));
        // Another thread wrote a later time: this one keeps it rather than its own.
        pulls.tags.insert(7, 11_800);
        pulls.touch(&pulls.tags, 7, 12_100);
        assert_eq!(stored(&pulls), Some(11_800));
        pulls.touch(&pulls.tags, 7, 12_900);
        assert_eq!(stored(&pulls), Some(12_900));
    }

    #[test]
    fn a_pull_records_the_repository_and_the_tag() {
        let pulls = PullTimes::default();
        pulls.record("docker.io", "library/alpine", Some("3"));
        pulls.record("docker.io", "library/busybox", None);
        assert!(pulls.repository("docker.io", "library/alpine").is_some());
        assert!(pulls.tag("docker.io", "library/alpine", "3").is_some());
        assert!(pulls.repository("docker.io", "library/busybox").is_some());
        assert!(pulls.tag("docker.io", "library/busybox", "3").is_none());
        assert!(pulls.repository("quay.io", "library/alpine").is_none());
    }
}

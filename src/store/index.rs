//! The index: what the backend holds (blobs with their sizes, which of them are manifests, tag
//! records, tombstones), in memory, so that usage, eviction, GC and the catalog never list the
//! backend on the request path.
//!
//! A local directory is listed cheaply, so the filesystem backend rebuilds the index at every
//! start (objects changed while the server was stopped are seen). A bucket is not: there the
//! index is kept in the bucket itself, as a snapshot (`_index/snapshot.json`) and a journal of
//! changes since (`_index/journal/<ms>-<uuid>.json`, one small object per change, written as the
//! change commits). A start reads the snapshot and the journal, never the whole bucket;
//! [`Index::save`] folds the journal into a new snapshot now and then. Only the very first start
//! on a bucket without a snapshot lists it, once.
//!
//! On a local directory the journal is only a message box: a command run beside a server on the
//! same directory (`prefetch`, `import`, `gc`) writes an entry per change, and the server
//! applies and deletes them every second, so `_catalog`, the UI and the store totals show what
//! the command did without a restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::{Result, Store, StoreError};
use crate::oci::Digest;

const SNAPSHOT: &str = "_index/snapshot.json";
const JOURNAL: &str = "_index/journal/";

/// Journal entries younger than this stay in the bucket when folded into a snapshot, so that
/// other replicas, which look at the journal every second, read every entry before it goes.
const FOLD_GRACE_MS: u64 = 60_000;

/// A replica that has not looked at the journal for this long may have missed entries folded
/// and deleted meanwhile: it reloads the snapshot instead.
const RELOAD_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`Index::sync`] did.
#[derive(Debug)]
pub enum Synced {
    /// Applied these changes other replicas made.
    Changes(Vec<Change>),
    /// Reloaded everything from the snapshot and the journal: any cached record may be stale.
    Reloaded,
}

/// A blob as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedBlob {
    /// Its size.
    pub size: u64,
    /// When it was committed, in milliseconds since the epoch.
    pub written: u64,
    /// Whether it is a manifest (has a media type record).
    pub manifest: bool,
    /// Its seal, when the replica that committed it had a seal key (see `seal`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::seal::lenient"
    )]
    pub seal: Option<super::seal::Seal>,
}

pub use super::keys::TagPlace;

/// One change to what the backend holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A blob was committed.
    AddBlob {
        /// Its digest.
        digest: String,
        /// What the index knows of it.
        blob: IndexedBlob,
    },
    /// A blob was removed.
    RemoveBlob {
        /// Its digest.
        digest: String,
    },
    /// A tag record was written for the first time.
    AddTag {
        /// Where.
        place: TagPlace,
    },
    /// A tag record was removed.
    RemoveTag {
        /// Where.
        place: TagPlace,
    },
    /// Some repository deleted the blob while others hold it.
    Tombstone {
        /// Its digest.
        digest: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    blobs: HashMap<String, IndexedBlob>,
    /// The blobs' bytes together (kept, not summed on each call).
    #[serde(skip)]
    bytes: u64,
    tags: BTreeSet<TagPlace>,
    tombstoned: HashSet<String>,
}

impl State {
    fn recount(&mut self) {
        self.bytes = self.blobs.values().map(|b| b.size).sum();
    }

    fn apply(&mut self, change: &Change) {
        match change {
            // Saturating: while the index loads, changes are applied to a snapshot whose total
            // is not counted yet (`recount` follows), and a journal may hold a blob twice (a
            // commit, then its seal recorded by a reader).
            Change::AddBlob { digest, blob } => {
                let old = self.blobs.insert(digest.clone(), *blob);
                self.bytes = self.bytes.saturating_sub(old.map_or(0, |b| b.size)) + blob.size;
            }
            Change::RemoveBlob { digest } => {
                if let Some(old) = self.blobs.remove(digest) {
                    self.bytes = self.bytes.saturating_sub(old.size);
                }
                self.tombstoned.remove(digest);
            }
            Change::AddTag { place } => {
                self.tags.insert(place.clone());
            }
            Change::RemoveTag { place } => {
                self.tags.remove(place);
            }
            Change::Tombstone { digest } => {
                self.tombstoned.insert(digest.clone());
            }
        }
    }
}

/// A snapshot as stored: the state, and the journal entries already folded into it (a crash
/// between writing the snapshot and deleting them must not apply them twice).
#[derive(Default, Serialize, Deserialize)]
struct Snapshot {
    state: State,
    folded: Vec<String>,
}

/// What the journal is to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    /// A bucket: every change is journaled and kept until folded into a snapshot.
    Bucket,
    /// A local directory opened by a command: changes are journaled for the server.
    LocalWriter,
    /// A local directory opened by the server: it reads and deletes what commands journaled.
    LocalReader,
}

/// The index of one store.
pub struct Index {
    state: Mutex<State>,
    /// What the journal is to this process.
    journal: Journal,
    /// Journal entries applied to the state: the next snapshot folds them in.
    unfolded: Mutex<Vec<String>>,
    /// When the journal was last read.
    synced: Mutex<std::time::Instant>,
    /// The other replicas, told of each journaled change.
    link: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn super::ClusterLink>>>,
    /// Whether the state was loaded from the backend. A server whose bucket did not answer
    /// at start runs without it (and does no housekeeping) until a retry loads it.
    loaded: std::sync::atomic::AtomicBool,
    /// When to try loading again, and the wait after that (doubling up to a limit).
    retry: Mutex<(std::time::Instant, std::time::Duration)>,
}

/// The longest wait between two attempts to load an index the bucket did not give at start.
const LOAD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(15);

impl Index {
    /// Loads the index of `backend`: by listing it when that is cheap, else from its snapshot
    /// and journal (listing it once when there is no snapshot yet). `server` says whether this
    /// process is the server (which reads a local journal) or a command beside it (which
    /// writes one).
    pub(crate) async fn load(
        backend: &dyn Backend,
        link: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn super::ClusterLink>>>,
        server: bool,
    ) -> Result<Index> {
        let journal = match (backend.lists_cheaply(), server) {
            (false, _) => Journal::Bucket,
            (true, false) => Journal::LocalWriter,
            (true, true) => Journal::LocalReader,
        };
        let index = Index {
            state: Mutex::default(),
            journal,
            unfolded: Mutex::default(),
            synced: Mutex::new(std::time::Instant::now()),
            link,
            loaded: std::sync::atomic::AtomicBool::new(true),
            retry: Mutex::new((std::time::Instant::now(), std::time::Duration::from_secs(1))),
        };
        if journal != Journal::Bucket {
            let mut state = rebuild(backend).await?;
            state.recount();
            *index.lock() = state;
            if journal == Journal::LocalReader {
                // What commands journaled before this start is in the listing already;
                // applying it again changes nothing, and empties the box.
                index.consume_local(backend).await?;
            }
            return Ok(index);
        }
        match index.reload(backend).await {
            Ok(()) => {}
            // The bucket is there but does not answer (an outage): serve without the index
            // and load it when the bucket is back, rather than refuse to start.
            Err(StoreError::Backend(e)) if server && e.is_unavailable() => {
                tracing::warn!(error = %e, "the object store does not answer: starting without its index, retrying in the background");
                index
                    .loaded
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
        Ok(index)
    }

    /// Whether the index was loaded from the backend (always, but for a server whose bucket
    /// has not answered since it started).
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Loads the index the bucket did not give at start, when the backoff allows another
    /// try: whether it is loaded now.
    async fn try_load(&self, backend: &dyn Backend) -> Result<bool> {
        {
            let retry = self.lock_retry();
            if std::time::Instant::now() < retry.0 {
                return Ok(false);
            }
        }
        match self.reload(backend).await {
            Ok(()) => {
                self.loaded
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("the object store answers again: index loaded");
                Ok(true)
            }
            Err(e) => {
                let mut retry = self.lock_retry();
                let wait = retry.1;
                *retry = (
                    std::time::Instant::now() + wait,
                    (wait * 2).min(LOAD_RETRY_MAX),
                );
                Err(e)
            }
        }
    }

    fn lock_retry(&self) -> std::sync::MutexGuard<'_, (std::time::Instant, std::time::Duration)> {
        self.retry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the state with the snapshot and the journal.
    async fn reload(&self, backend: &dyn Backend) -> Result<()> {
        let started = std::time::Instant::now();
        let snapshot = match backend.get(SNAPSHOT).await? {
            Some(bytes) => {
                serde_json::from_slice::<Snapshot>(&bytes).map_err(|e| StoreError::Corrupt {
                    key: SNAPSHOT.into(),
                    message: e.to_string(),
                })?
            }
            None => {
                tracing::info!(backend = %backend.describe(), "no index in the backend yet: listing it once to build one");
                let snapshot = Snapshot {
                    state: rebuild(backend).await?,
                    folded: Vec::new(),
                };
                write_snapshot(backend, &snapshot).await?;
                snapshot
            }
        };
        let folded: HashSet<String> = snapshot.folded.into_iter().collect();
        let mut state = snapshot.state;
        let mut entries = backend.list(JOURNAL).await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut unfolded = Vec::new();
        for entry in entries {
            if folded.contains(&entry.key) {
                // Folded already; its deletion was cut short.
                unfolded.push(entry.key);
                continue;
            }
            let Some(bytes) = backend.get(&entry.key).await? else {
                continue;
            };
            match serde_json::from_slice::<Change>(&bytes) {
                Ok(change) => state.apply(&change),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "unreadable index journal entry skipped")
                }
            }
            unfolded.push(entry.key);
        }
        tracing::info!(
            blobs = state.blobs.len(),
            journal = unfolded.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index loaded from the backend"
        );
        state.recount();
        *self.lock() = state;
        *self.lock_unfolded() = unfolded;
        *self.lock_synced() = started;
        Ok(())
    }

    fn lock_synced(&self) -> std::sync::MutexGuard<'_, std::time::Instant> {
        self.synced.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unfolded(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.unfolded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a change that has just committed, journaling it for a remote backend.
    pub(crate) async fn record(&self, backend: &dyn Backend, change: Change) -> Result<()> {
        self.lock().apply(&change);
        if self.journal != Journal::LocalReader {
            let key = format!(
                "{JOURNAL}{:013}-{}.json",
                super::usage::now_ms(),
                uuid::Uuid::new_v4()
            );
            let bytes = serde_json::to_vec(&change).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                message: e.to_string(),
            })?;
            backend.put(&key, Bytes::from(bytes)).await?;
            if self.journal == Journal::LocalWriter {
                return Ok(());
            }
            {
                let mut unfolded = self.lock_unfolded();
                if !unfolded.contains(&key) {
                    unfolded.push(key);
                }
            }
            if let Some(link) = self.link.get() {
                link.announce_change().await;
            }
        }
        Ok(())
    }

    /// Notes a blob found in the backend that the index did not list (another process
    /// committed it), without journaling: it is in the backend already.
    pub(crate) fn learn(&self, digest: &Digest, blob: IndexedBlob) {
        self.lock().apply(&Change::AddBlob {
            digest: digest.to_string(),
            blob,
        });
    }

    /// Drops a blob the backend turned out not to have (removed behind our back).
    pub(crate) fn forget(&self, digest: &Digest) {
        self.lock().apply(&Change::RemoveBlob {
            digest: digest.to_string(),
        });
    }

    /// Folds the journal into a new snapshot (remote backends; nothing to do otherwise): one
    /// replica at a time does this (see `lease`). Entries other processes wrote are applied
    /// first, so the snapshot loses none of their changes; entries younger than
    /// [`FOLD_GRACE_MS`] stay in the journal (listed as folded) for replicas yet to read them.
    pub(crate) async fn save(&self, backend: &dyn Backend) -> Result<Synced> {
        if !self.is_loaded() {
            // A snapshot of an index never loaded would erase the bucket's.
            return self.sync(backend).await;
        }
        if self.journal != Journal::Bucket {
            return Ok(Synced::Changes(Vec::new()));
        }
        let synced = self.sync(backend).await?;
        let folded = self.lock_unfolded().clone();
        if folded.is_empty() {
            return Ok(synced);
        }
        let snapshot = {
            let state = self.lock();
            serde_json::to_vec(&SnapshotRef {
                state: &state,
                folded: &folded,
            })
        }
        .map_err(|e| StoreError::Corrupt {
            key: SNAPSHOT.into(),
            message: e.to_string(),
        })?;
        backend.put(SNAPSHOT, Bytes::from(snapshot)).await?;
        let cutoff = super::usage::now_ms().saturating_sub(FOLD_GRACE_MS);
        let old: Vec<&String> = folded
            .iter()
            .filter(|key| journal_entry_ms(key).is_some_and(|ms| ms < cutoff))
            .collect();
        for key in &old {
            backend.delete(key).await?;
        }
        self.lock_unfolded().retain(|k| !old.contains(&k));
        Ok(synced)
    }

    /// Applies the journal entries other processes (replicas, `regmirror import` or `gc`)
    /// wrote since this one last looked; after a long pause, reloads everything instead.
    pub(crate) async fn sync(&self, backend: &dyn Backend) -> Result<Synced> {
        if !self.is_loaded() {
            return match self.try_load(backend).await? {
                true => Ok(Synced::Reloaded),
                false => Ok(Synced::Changes(Vec::new())),
            };
        }
        match self.journal {
            Journal::Bucket => {}
            Journal::LocalWriter => return Ok(Synced::Changes(Vec::new())),
            Journal::LocalReader => return self.consume_local(backend).await.map(Synced::Changes),
        }
        let started = std::time::Instant::now();
        if started.duration_since(*self.lock_synced()) > RELOAD_AFTER {
            self.reload(backend).await?;
            return Ok(Synced::Reloaded);
        }
        let mut entries = backend.list(JOURNAL).await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut changes = Vec::new();
        for entry in &entries {
            if self.lock_unfolded().contains(&entry.key) {
                continue;
            }
            if let Some(bytes) = backend.get(&entry.key).await?
                && let Ok(change) = serde_json::from_slice::<Change>(&bytes)
            {
                self.lock().apply(&change);
                changes.push(change);
            }
            self.lock_unfolded().push(entry.key.clone());
        }
        // Entries another replica folded and deleted are no longer this one's to fold.
        let listed: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        self.lock_unfolded().retain(|k| listed.contains(k.as_str()));
        *self.lock_synced() = started;
        Ok(Synced::Changes(changes))
    }

    /// Applies and deletes the entries commands journaled in a local directory, oldest first.
    async fn consume_local(&self, backend: &dyn Backend) -> Result<Vec<Change>> {
        let mut entries = backend.list(JOURNAL).await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut changes = Vec::new();
        for entry in &entries {
            match backend.get(&entry.key).await? {
                Some(bytes) => match serde_json::from_slice::<Change>(&bytes) {
                    Ok(change) => {
                        self.lock().apply(&change);
                        changes.push(change);
                    }
                    Err(e) => {
                        tracing::warn!(key = %entry.key, error = %e, "unreadable index journal entry skipped")
                    }
                },
                None => continue,
            }
            backend.delete(&entry.key).await?;
        }
        if !changes.is_empty() {
            tracing::info!(
                changes = changes.len(),
                "applied what a command beside the server changed"
            );
        }
        Ok(changes)
    }

    /// The blob, if indexed.
    pub(crate) fn blob(&self, digest: &Digest) -> Option<IndexedBlob> {
        self.lock().blobs.get(&digest.to_string()).copied()
    }

    /// Every indexed blob.
    pub(crate) fn blobs(&self) -> Vec<(Digest, IndexedBlob)> {
        self.lock()
            .blobs
            .iter()
            .filter_map(|(d, b)| Some((d.parse().ok()?, *b)))
            .collect()
    }

    /// Bytes and number of blobs.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let state = self.lock();
        (state.bytes, state.blobs.len() as u64)
    }

    /// Whether the tag place is indexed.
    pub(crate) fn has_tag(&self, place: &TagPlace) -> bool {
        self.lock().tags.contains(place)
    }

    /// Every tag place, sorted.
    pub(crate) fn tags(&self) -> Vec<TagPlace> {
        self.lock().tags.iter().cloned().collect()
    }

    /// The tags of one repository under one origin, sorted.
    pub(crate) fn tags_of(&self, origin: &str, repo: &str) -> Vec<String> {
        let from = (origin.to_owned(), repo.to_owned(), String::new());
        self.lock()
            .tags
            .range(from..)
            .take_while(|(o, r, _)| o == origin && r == repo)
            .map(|(_, _, t)| t.clone())
            .collect()
    }

    /// Whether some repository deleted this blob while others hold it.
    pub(crate) fn is_tombstoned(&self, digest: &Digest) -> bool {
        let state = self.lock();
        !state.tombstoned.is_empty() && state.tombstoned.contains(&digest.to_string())
    }
}

/// The write time of a journal entry, from its key (`<ms>-<uuid>.json`).
fn journal_entry_ms(key: &str) -> Option<u64> {
    key.strip_prefix(JOURNAL)?.split('-').next()?.parse().ok()
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    state: &'a State,
    folded: &'a [String],
}

async fn write_snapshot(backend: &dyn Backend, snapshot: &Snapshot) -> Result<()> {
    let bytes = serde_json::to_vec(snapshot).map_err(|e| StoreError::Corrupt {
        key: SNAPSHOT.into(),
        message: e.to_string(),
    })?;
    Ok(backend.put(SNAPSHOT, Bytes::from(bytes)).await?)
}

/// Builds the state by listing the backend's blobs, manifest records, tags and tombstones.
async fn rebuild(backend: &dyn Backend) -> Result<State> {
    let mut state = State::default();
    let manifests: HashSet<Digest> = backend
        .list("meta/")
        .await?
        .iter()
        .filter_map(|o| Store::parse_digest_key("meta", &o.key).map(|(d, _)| d))
        .collect();
    for object in backend.list("blobs/").await? {
        if let Some((digest, "")) = Store::parse_digest_key("blobs", &object.key) {
            let blob = IndexedBlob {
                size: object.size,
                written: object.modified_ms,
                manifest: manifests.contains(&digest),
                seal: None,
            };
            state.blobs.insert(digest.to_string(), blob);
        }
    }
    for object in backend.list("tags/").await? {
        if let Some(place) = super::keys::parse_tag_key(&object.key) {
            state.tags.insert(place);
        }
    }
    for object in backend.list("deleted/").await? {
        if let Some((digest, _)) = Store::parse_digest_key("deleted", &object.key) {
            state.tombstoned.insert(digest.to_string());
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(digest: &str, size: u64) -> Change {
        Change::AddBlob {
            digest: digest.into(),
            blob: IndexedBlob {
                size,
                written: 1,
                manifest: false,
                seal: None,
            },
        }
    }

    #[test]
    fn a_journal_applied_to_an_uncounted_snapshot_adds_up_once_recounted() {
        // As at load: the snapshot's blobs are there, their total not counted yet.
        let mut state = State::default();
        state.blobs.insert(
            "sha256:a".into(),
            IndexedBlob {
                size: 10,
                written: 1,
                manifest: false,
                seal: None,
            },
        );
        state.apply(&add("sha256:a", 10)); // committed again, or its seal recorded
        state.apply(&Change::RemoveBlob {
            digest: "sha256:a".into(),
        });
        state.apply(&add("sha256:b", 7));
        state.apply(&add("sha256:b", 7));
        state.recount();
        assert_eq!(state.bytes, 7);
        assert_eq!(state.blobs.len(), 1);
        // Once counted, the total follows every change exactly.
        state.apply(&add("sha256:c", 5));
        state.apply(&add("sha256:c", 5));
        assert_eq!(state.bytes, 12);
    }
}

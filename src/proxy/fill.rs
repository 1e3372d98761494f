//! Blob fills: one upstream GET per missing digest, written to a spool file while hashed, and
//! read by every request for that digest as it grows (leader/follower).
//!
//! The fill runs in its own task, detached from the requests that asked for it: a client that
//! hangs up does not cancel it. Readers never see the blob's final byte before the digest has
//! been verified, so a wrong or short body can always be turned into an aborted response. The
//! byte is released as soon as the hash matches; making the blob durable (fsync, rename) comes
//! after, off the client's critical path.
//!
//! The newest few MiB of a fill are also kept in memory ([`Tail`]), so readers at the live edge
//! (every client keeping up with the upstream, the usual case) are handed the bytes as they
//! arrive, while the disk writer appends and hashes them on its own thread: no file read, no
//! trip to the blocking pool, no wait for the disk. The bytes are copied once, out of the HTTP
//! client's buffer into a few segments the fill reuses (`segments`), which costs less than
//! the page faults of keeping the client's buffers did.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::byte_stream::ByteStream;
use crate::cluster::Peers;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::store::{BlobReader, Spool, Store, StoreError, VerifiedSpool, reads};
use crate::upstream::{UpstreamClient, UpstreamError};

mod segments;
use segments::Segments;

/// How many times a broken-off upstream body is resumed with a Range request.
pub const MAX_RESUMES: u32 = 3;

/// How many of a fill's newest bytes are kept in memory for readers at the live edge.
const TAIL_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes the disk writer takes from the network before publishing how much is on
/// disk: one update per batch, not per network chunk.
const WRITE_BATCH: usize = 512 * 1024;

/// How many pieces of a fill may wait for its disk writer.
const WRITER_QUEUE: usize = 8;

/// Why a fill failed. Cloned to every reader.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The upstream refused or could not be reached before any byte was received.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The body ended early or broke off.
    #[error("upstream body cut off after {0} bytes")]
    Truncated(u64),
    /// No bytes arrived for the idle timeout.
    #[error("upstream stalled: no data for {0:?}")]
    Stalled(Duration),
    /// The bytes hash to another digest.
    #[error("upstream sent wrong bytes: {0}")]
    DigestMismatch(crate::oci::DigestMismatch),
    /// The body grew past the largest blob we accept (`max_upload_size`).
    #[error("upstream body larger than {0} bytes")]
    TooLarge(u64),
    /// Writing the spool or committing it failed.
    #[error("store error: {0}")]
    Store(Arc<StoreError>),
    /// The fill's task ended without saying why (it panicked).
    #[error("the download task failed unexpectedly")]
    Aborted,
    /// The replica leading the cluster's fetch could not give the blob.
    #[error(transparent)]
    Peer(crate::cluster::PeerError),
}

impl FillError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FillError::Upstream(_) => "upstream",
            FillError::Truncated(_) => "truncated",
            FillError::Stalled(_) => "stalled",
            FillError::DigestMismatch(_) => "digest_mismatch",
            FillError::TooLarge(_) => "too_large",
            FillError::Store(_) => "store",
            FillError::Aborted => "aborted",
            FillError::Peer(_) => "peer",
        }
    }
}

/// Where a fill is.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes are arriving.
    Streaming,
    /// Verified and committed to the store.
    Done,
    /// Failed; nothing was kept.
    Failed(FillError),
}

/// A snapshot of a fill's progress, published to readers.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The blob's size, when the upstream declared it.
    pub total: Option<u64>,
    /// Bytes received from the upstream so far: the newest of them are in the tail, perhaps
    /// not yet on disk.
    pub received: u64,
    /// Bytes written to the spool so far.
    pub written: u64,
    /// All bytes are in and hash to the digest. Readers may finish even if keeping the blob
    /// fails afterwards: what they were sent is complete and correct.
    pub verified: bool,
    /// The bytes were verified before they were stored where they come from (this store's
    /// own bucket), so readers need not wait for this machine's hash of them, just as a
    /// client sent to a presigned URL does not. The hash still decides whether the local copy
    /// is kept: a mismatch keeps nothing and counts in `regmirror_digest_mismatches_total`.
    pub trusted: bool,
    /// Where the fill is.
    pub phase: Phase,
}

impl Progress {
    /// How far a reader may read from the spool file: everything written, except that the
    /// blob's last byte is held back until the digest is verified.
    fn readable(&self) -> u64 {
        self.hold_back(self.written)
    }

    /// How far a reader may read from the tail: everything received, with the same hold-back.
    fn readable_in_memory(&self) -> u64 {
        self.hold_back(self.received)
    }

    /// Whether readers may have the blob's last byte as soon as it is here.
    fn released(&self) -> bool {
        self.verified || self.trusted
    }

    fn hold_back(&self, have: u64) -> u64 {
        if self.released() {
            return have;
        }
        match self.total {
            Some(total) => have.min(total.saturating_sub(1)),
            None => have.saturating_sub(1),
        }
    }
}

/// A fill's newest bytes, as slices of its segments, contiguous and in order.
#[derive(Default)]
struct Tail {
    inner: Mutex<TailChunks>,
}

#[derive(Default)]
struct TailChunks {
    /// `(offset in the blob, bytes)`.
    chunks: VecDeque<(u64, Bytes)>,
    held: usize,
}

impl Tail {
    fn lock(&self) -> std::sync::MutexGuard<'_, TailChunks> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the chunk at `offset` (just after the previous one), dropping the oldest chunks
    /// beyond [`TAIL_BYTES`].
    fn push(&self, offset: u64, chunk: Bytes) {
        let mut tail = self.lock();
        tail.held += chunk.len();
        tail.chunks.push_back((offset, chunk));
        while tail.held > TAIL_BYTES && tail.chunks.len() > 1 {
            if let Some((_, old)) = tail.chunks.pop_front() {
                tail.held -= old.len();
            }
        }
    }

    /// The bytes from `offset` up to `limit` (at most one chunk's worth), if still held.
    fn get(&self, offset: u64, limit: u64) -> Option<Bytes> {
        let tail = self.lock();
        let i = tail
            .chunks
            .partition_point(|(start, c)| start + c.len() as u64 <= offset);
        let (start, chunk) = tail.chunks.get(i)?;
        if *start > offset {
            return None;
        }
        let from = (offset - start) as usize;
        let to = (limit.saturating_sub(*start) as usize).min(chunk.len());
        (from < to).then(|| chunk.slice(from..to))
    }
}

/// Where a fill's bytes come from.
#[derive(Clone)]
pub enum FillSource {
    /// An upstream registry: the blob is not stored yet.
    Upstream {
        /// The upstream's client.
        client: Arc<UpstreamClient>,
        /// The repository there.
        repo: RepoName,
    },
    /// The store's remote backend: the blob is stored, but this machine has no local copy.
    Backend,
    /// Another replica of the cluster, which leads the cluster's fetch of the blob from the
    /// upstream: it commits the blob; this machine keeps a local copy.
    Peer {
        /// Signs and makes the requests.
        peers: Arc<Peers>,
        /// The leading replica's URL.
        leader: String,
    },
}

impl FillSource {
    /// The label of the source in logs and metrics: the upstream's name, or `backend`.
    fn label(&self) -> &str {
        match self {
            FillSource::Upstream { client, .. } => client.name(),
            FillSource::Backend => "backend",
            FillSource::Peer { .. } => "peer",
        }
    }
}

/// How long a bucket read may go without a byte before it counts as stalled.
const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or just finished) fill.
pub struct Fill {
    /// The blob being fetched.
    pub digest: Digest,
    file: BlobReader,
    tail: Arc<Tail>,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Waits for the upstream's response headers: the blob's size (if declared), or the error
    /// that ended the fill before any byte.
    pub async fn wait_started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.progress.clone();
        let progress = rx
            .wait_for(|p| !matches!(p.phase, Phase::Connecting))
            .await
            .map_err(|_| FillError::Aborted)?;
        match &progress.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(progress.total),
        }
    }

    /// Waits for the fill to finish.
    pub async fn wait_done(&self) -> Result<u64, FillError> {
        let mut rx = self.progress.clone();
        let progress = rx
            .wait_for(|p| matches!(p.phase, Phase::Done | Phase::Failed(_)))
            .await
            .map_err(|_| FillError::Aborted)?;
        match &progress.phase {
            Phase::Failed(e) => Err(e.clone()),
            _ => Ok(progress.written),
        }
    }

    /// The bytes `[start, end)` as they arrive (`end = None`: to the end of the blob). The
    /// stream ends with an error if the fill fails, so the client's response is aborted.
    pub fn read(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let fill = Arc::clone(self);
        let rx = self.progress.clone();
        futures_util::stream::unfold(
            (fill, rx, start, false),
            move |(fill, mut rx, offset, finished)| async move {
                if finished {
                    return None;
                }
                loop {
                    let progress = rx.borrow_and_update().clone();
                    let end = end.or(progress.total);
                    let at_end = match end {
                        Some(end) => offset >= end,
                        None => progress.verified && offset >= progress.written,
                    };
                    if at_end {
                        return None;
                    }
                    // A fill that failed ends its readers, unless its bytes were released to
                    // them already (verified, or trusted from this store's bucket): those are
                    // read to the end as they were promised.
                    if let (Phase::Failed(e), false) = (&progress.phase, progress.released()) {
                        let err = io::Error::other(e.to_string());
                        return Some((Err(err), (fill, rx, offset, true)));
                    }
                    match fill.next_chunk(&progress, offset, end).await {
                        Some(Ok(bytes)) => {
                            let next = offset + bytes.len() as u64;
                            return Some((Ok(bytes), (fill, rx, next, false)));
                        }
                        Some(Err(e)) => return Some((Err(e), (fill, rx, offset, true))),
                        None => {}
                    }
                    if progress.verified {
                        // Complete, yet short of the declared end: the upstream lied about
                        // the size.
                        let err = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "blob shorter than declared",
                        );
                        return Some((Err(err), (fill, rx, offset, true)));
                    }
                    if rx.changed().await.is_err() {
                        let err = io::Error::other("fill ended unexpectedly");
                        return Some((Err(err), (fill, rx, offset, true)));
                    }
                }
            },
        )
    }

    /// The next bytes at `offset` that `progress` lets a reader have, up to `end`: the live
    /// edge from the tail as soon as it arrives, what the tail no longer holds from the spool
    /// once written. `None` when there is nothing new yet.
    async fn next_chunk(
        &self,
        progress: &Progress,
        offset: u64,
        end: Option<u64>,
    ) -> Option<io::Result<Bytes>> {
        // A range that ends before the blob does still holds back its own last byte until
        // the whole blob is verified: no response completes with bytes that may be wrong.
        let clamp = |limit: u64| match end {
            Some(e) if !progress.released() && limit >= e => e.saturating_sub(1),
            Some(e) => e.min(limit),
            None => limit,
        };
        let in_memory = clamp(progress.readable_in_memory());
        if offset < in_memory
            && let Some(bytes) = self.tail.get(offset, in_memory)
        {
            return Some(Ok(bytes));
        }
        let on_disk = clamp(progress.readable());
        if offset < on_disk {
            let len = (on_disk - offset).min(reads::READ_CHUNK as u64) as usize;
            return Some(self.file.read_chunk(offset, len).await);
        }
        None
    }
}

/// What [`Fills::start_or_join`] found.
pub enum Joined {
    /// This request started the fill.
    Leader(Arc<Fill>),
    /// A fill was already running; this request reads from it.
    Follower(Arc<Fill>),
    /// A fill has all its bytes, verified, and is being made durable: this request reads
    /// them from its spool without waiting, as from the store.
    Verified(Arc<Fill>),
    /// The blob was committed meanwhile; read it from the store.
    Committed,
}

/// The fills in flight, by digest (the store is digest-global, so repositories share them).
pub struct Fills {
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Notified whenever a fill ends.
    ended: tokio::sync::Notify,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    max_blob: u64,
    /// Whether readers of a blob read from this store's own bucket get its last byte before
    /// this machine verified it (`[storage] verify_reads = false`).
    trust_backend_reads: bool,
}

/// A fill's place in [`Fills`], given up when its task ends, however it ends: an error, a
/// panic or a runtime shutdown never leaves a dead fill for later requests to join.
struct FillEntry {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
}

impl Drop for FillEntry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(digest = %self.fill.digest, "blob fill task panicked; nothing kept");
        }
        {
            // Only this fill's entry: a retry may already have replaced it.
            let mut inflight = self.fills.lock();
            if inflight
                .get(&self.fill.digest)
                .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
            {
                inflight.remove(&self.fill.digest);
            }
        }
        self.fills.metrics.fills_in_flight.dec();
        self.fills.ended.notify_waiters();
    }
}

impl Fills {
    /// An empty set of fills; a blob body may be at most `max_blob` bytes; with
    /// `trust_backend_reads`, a blob read from the bucket is released to readers as it
    /// arrives instead of after its digest is verified here.
    pub fn new(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        max_blob: u64,
        trust_backend_reads: bool,
    ) -> Arc<Fills> {
        Arc::new(Fills {
            inflight: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
            store,
            metrics,
            max_blob,
            trust_backend_reads,
        })
    }

    /// Waits until no fill is running.
    pub async fn wait_idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.lock().is_empty() {
                return;
            }
            ended.await;
        }
    }

    /// The fill for `digest` if one is running.
    pub fn running(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.lock().get(digest).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Fill>>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the fill of `digest`, starting one from `source` if none is running.
    pub fn start_or_join(
        self: &Arc<Self>,
        source: FillSource,
        digest: &Digest,
    ) -> Result<Joined, StoreError> {
        let mut inflight = self.lock();
        if let Some(fill) = inflight.get(digest) {
            // A fill that just ended is still in the map for a moment: a retry right after a
            // failure must start afresh, not be handed the old failure.
            let progress = fill.progress.borrow();
            match progress.phase {
                Phase::Failed(_) => {}
                Phase::Done => return Ok(Joined::Committed),
                _ if progress.verified => return Ok(Joined::Verified(Arc::clone(fill))),
                _ => {
                    self.metrics.fill_followers.inc();
                    return Ok(Joined::Follower(Arc::clone(fill)));
                }
            }
        }
        // A fill that just finished has committed before leaving the map.
        if !matches!(source, FillSource::Backend) && self.store.has_blob(digest) {
            return Ok(Joined::Committed);
        }
        // A blob from the upstream is committed (and sealed as it is written); a local copy
        // of one the bucket holds is checked against its seal.
        let spool = match source {
            FillSource::Upstream { .. } => self.store.create_spool(digest)?,
            FillSource::Backend | FillSource::Peer { .. } => {
                self.store.create_copy_spool(digest)?
            }
        };
        let (tx, rx) = watch::channel(Progress {
            total: None,
            received: 0,
            written: 0,
            verified: false,
            trusted: self.trust_backend_reads && matches!(source, FillSource::Backend),
            phase: Phase::Connecting,
        });
        let tail = Arc::new(Tail::default());
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            file: spool.reader(),
            tail: Arc::clone(&tail),
            progress: rx,
        });
        inflight.insert(digest.clone(), Arc::clone(&fill));
        drop(inflight);
        self.metrics.fills_in_flight.inc();
        let job = FillJob {
            max_size: self.max_blob,
            metrics: Arc::clone(&self.metrics),
            source,
            digest: digest.clone(),
            tail,
            tx,
            store: Arc::clone(&self.store),
        };
        let entry = FillEntry {
            fills: Arc::clone(self),
            fill: Arc::clone(&fill),
        };
        tokio::spawn(async move {
            let fills = Arc::clone(&entry.fills);
            let upstream_name = job.source.label().to_owned();
            let from_upstream = matches!(job.source, FillSource::Upstream { .. });
            let digest = job.digest.clone();
            let result = job.run(spool, &fills).await;
            let progress = entry.fill.progress.borrow().clone();
            // Every reader had the whole verified blob and only keeping it failed: an outage
            // of the object store, ridden out as a pass-through.
            let passed = match &result {
                Err(FillError::Store(e))
                    if from_upstream && progress.verified && e.is_unavailable() =>
                {
                    super::passed_through(
                        &fills.store,
                        &fills.metrics,
                        "blob",
                        progress.received,
                        e,
                    );
                    true
                }
                Ok(_) if from_upstream => {
                    super::store_answered(&fills.store, &fills.metrics);
                    false
                }
                _ => false,
            };
            if let Err(e) = &result
                && !passed
            {
                tracing::warn!(%digest, upstream = %upstream_name, error = %e, "blob fill failed; nothing kept");
                fills
                    .metrics
                    .fills_aborted
                    .with_label_values(&[&upstream_name, e.reason()])
                    .inc();
                if matches!(e, FillError::DigestMismatch(_)) {
                    fills
                        .metrics
                        .digest_mismatches
                        .with_label_values(&[&upstream_name])
                        .inc();
                }
            }
            drop(entry);
        });
        Ok(Joined::Leader(fill))
    }
}

/// Messages from the network side of a fill to its disk writer.
enum ToWriter {
    Data(Bytes),
    Finish,
}

/// One fill's task.
struct FillJob {
    /// The most bytes a body may have.
    max_size: u64,
    metrics: Arc<Metrics>,
    source: FillSource,
    digest: Digest,
    tail: Arc<Tail>,
    tx: watch::Sender<Progress>,
    store: Arc<Store>,
}

impl FillJob {
    /// Runs the fill and publishes its outcome.
    async fn run(self, spool: Spool, fills: &Fills) -> Result<u64, FillError> {
        let result = self.fetch(spool, fills).await;
        self.tx.send_modify(|p| {
            p.phase = match &result {
                Ok(_) => Phase::Done,
                Err(e) => Phase::Failed(e.clone()),
            }
        });
        result
    }

    async fn fetch(&self, spool: Spool, fills: &Fills) -> Result<u64, FillError> {
        let response = self.open_body(None).await?;
        let total = response.length;
        if total.is_some_and(|t| t > self.max_size) {
            return Err(FillError::TooLarge(self.max_size));
        }
        self.tx.send_modify(|p| {
            p.total = total;
            p.phase = Phase::Streaming;
        });
        // Disk writes and hashing run on a blocking thread fed by a bounded channel, so the
        // network side never blocks the runtime and a slow disk pushes back on the upstream.
        // Eight pieces (each at most a network read) are enough to ride out the writer's
        // hiccups; more only kept more segments in use (32 held ~13 MiB per fill).
        let (to_writer, from_network) = mpsc::channel::<ToWriter>(WRITER_QUEUE);
        let writer = {
            let tx = self.tx.clone();
            let digest = self.digest.clone();
            // Readers of trusted bytes do not wait for the hash: it runs after the last byte
            // is written, off their path (two cores shared with the bucket and the client
            // finish the read sooner without it).
            // So do bytes checked against their seal: the digest's hash only runs if the seal
            // does not match.
            let hash = if self.tx.borrow().trusted || spool.has_seal_check() {
                Hashing::AfterLastByte
            } else {
                Hashing::AsWritten
            };
            tokio::task::spawn_blocking(move || {
                write_spool(spool, from_network, &tx, &digest, hash)
            })
        };
        let streamed = self.stream_with_resume(response, total, &to_writer).await;
        if streamed.is_ok() {
            let _ = to_writer.send(ToWriter::Finish).await;
        }
        drop(to_writer);
        let written = writer.await;
        // The network's error first: the writer only knows that the network side gave up.
        streamed?;
        let verified = written.map_err(|_| FillError::Aborted)??;
        if matches!(self.source, FillSource::Backend) {
            let by = if verified.verified_by_seal() {
                "seal"
            } else {
                "digest"
            };
            self.metrics
                .backend_read_checks
                .with_label_values(&[by])
                .inc();
        }
        // Readers have every byte already; making the blob durable is off their path.
        let kept = match self.source {
            FillSource::Upstream { .. } => fills.store.commit_verified(verified).await,
            FillSource::Backend | FillSource::Peer { .. } => {
                fills.store.keep_local_copy(verified).await
            }
        };
        kept.map_err(|e| FillError::Store(Arc::new(e)))
    }

    /// Opens the source's body from byte `from` on (all of it for `None`).
    async fn open_body(&self, from: Option<u64>) -> Result<ByteStream, FillError> {
        match &self.source {
            FillSource::Upstream { client, repo } => {
                Ok(client.get_blob(repo, &self.digest, from).await?)
            }
            FillSource::Peer { peers, leader } => peers
                .get_blob(leader, &self.digest, from)
                .await
                .map_err(FillError::Peer),
            FillSource::Backend => {
                fills_store_read(&self.store, &self.digest, from.unwrap_or(0)).await
            }
        }
    }

    /// Streams the body to the writer; a body that breaks off or stalls is resumed with a
    /// `Range` request from where it stopped, at most [`MAX_RESUMES`] times, when the upstream
    /// supports ranges.
    async fn stream_with_resume(
        &self,
        mut response: ByteStream,
        total: Option<u64>,
        to_writer: &mpsc::Sender<ToWriter>,
    ) -> Result<(), FillError> {
        let mut received = 0u64;
        let mut resumes = 0;
        loop {
            let error = match self
                .stream_body(response, total, &mut received, to_writer)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e @ (FillError::Truncated(_) | FillError::Stalled(_))) => e,
                Err(e) => return Err(e),
            };
            if resumes >= MAX_RESUMES || total.is_none() {
                return Err(error);
            }
            resumes += 1;
            tracing::info!(digest = %self.digest, received, attempt = resumes, error = %error, "resuming blob fill");
            response = match self.resume_from(received).await {
                Some(response) => response,
                None => return Err(error),
            };
        }
    }

    /// A `Range: bytes=<from>-` request; `None` unless the upstream answers with the bytes
    /// from `from` on.
    async fn resume_from(&self, from: u64) -> Option<ByteStream> {
        let response = self.open_body(Some(from)).await.ok()?;
        if response.start == Some(from) {
            Some(response)
        } else {
            tracing::info!(digest = %self.digest, "upstream cannot resume with Range");
            None
        }
    }

    async fn stream_body(
        &self,
        response: ByteStream,
        total: Option<u64>,
        received: &mut u64,
        to_writer: &mpsc::Sender<ToWriter>,
    ) -> Result<(), FillError> {
        let idle = match &self.source {
            FillSource::Upstream { client, .. } => client.config().fill_idle_timeout,
            FillSource::Backend | FillSource::Peer { .. } => BACKEND_IDLE_TIMEOUT,
        };
        let bytes_metric = match &self.source {
            FillSource::Upstream { client, .. } => self
                .metrics
                .upstream_bytes
                .with_label_values(&[client.name()]),
            FillSource::Backend => self.metrics.backend_read_bytes.clone(),
            FillSource::Peer { .. } => self.metrics.peer_read_bytes.clone(),
        };
        let mut body = response.chunks;
        // A bucket read's chunks come from its read-ahead queue, buffers that wait there
        // anyway: copying them would only add a copy. So would copying a body too small to
        // come back round to its first segments.
        let mut segments = match (&self.source, total) {
            (FillSource::Upstream { .. } | FillSource::Peer { .. }, Some(total))
                if total.saturating_sub(*received) >= segments::WORTH_COPYING =>
            {
                Some(Segments::new())
            }
            _ => None,
        };
        let mut pieces = Vec::with_capacity(2);
        loop {
            let next = tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| FillError::Stalled(idle))?;
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    let offset = *received;
                    *received += chunk.len() as u64;
                    bytes_metric.inc_by(chunk.len() as u64);
                    if total.is_some_and(|t| *received > t) {
                        return Err(FillError::Upstream(UpstreamError::Invalid(
                            "body longer than Content-Length".into(),
                        )));
                    }
                    // Without a declared length, a body may not grow past what we would
                    // accept from a client: an endless body is not spooled forever.
                    if *received > self.max_size {
                        return Err(FillError::TooLarge(self.max_size));
                    }
                    // Readers at the live edge take it from memory now; the disk writer
                    // catches up on its own thread.
                    match &mut segments {
                        // Copied, and the client's buffer let go at once, so that it reads
                        // the next chunk into the same memory (see `segments`).
                        Some(segments) => segments.copy_in(&chunk, &mut pieces),
                        None => pieces.push(chunk),
                    }
                    let mut start = offset;
                    for piece in &pieces {
                        self.tail.push(start, piece.clone());
                        start += piece.len() as u64;
                    }
                    let now = *received;
                    self.tx.send_modify(|p| p.received = now);
                    for piece in pieces.drain(..) {
                        if to_writer.send(ToWriter::Data(piece)).await.is_err() {
                            // The writer stopped: it will report why.
                            return Ok(());
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, received = *received, "upstream body broke off");
                    return Err(FillError::Truncated(*received));
                }
            }
        }
        if total.is_some_and(|t| *received < t) {
            return Err(FillError::Truncated(*received));
        }
        Ok(())
    }
}

/// When a fill's disk writer hashes what it writes.
#[derive(Clone, Copy)]
enum Hashing {
    /// Each chunk as it is written, so the last byte can be released the moment it is.
    AsWritten,
    /// All of it once the last byte is written, reading it back: for bytes readers have
    /// before they are verified, where only keeping the copy waits for the hash; and for bytes
    /// checked against their seal as they are written, which need the hash only if the seal
    /// does not match.
    AfterLastByte,
}

/// The disk side of a fill: appends, hashes, publishes how much is on disk, and on `Finish`
/// verifies and releases the last byte to readers. Committing is the caller's.
fn write_spool(
    mut spool: Spool,
    mut from_network: mpsc::Receiver<ToWriter>,
    tx: &watch::Sender<Progress>,
    digest: &Digest,
    hashing: Hashing,
) -> Result<VerifiedSpool, FillError> {
    while let Some(first) = from_network.blocking_recv() {
        let mut next = Some(first);
        let mut batched = 0;
        let mut finished = false;
        while let Some(message) = next.take() {
            match message {
                ToWriter::Data(chunk) => {
                    let appended = match hashing {
                        Hashing::AsWritten => spool.append(&chunk),
                        Hashing::AfterLastByte => spool.append_unhashed(&chunk),
                    };
                    appended.map_err(|source| {
                        FillError::Store(Arc::new(StoreError::Io {
                            path: "spool".into(),
                            source,
                        }))
                    })?;
                    batched += chunk.len();
                    if batched < WRITE_BATCH {
                        next = from_network.try_recv().ok();
                    }
                }
                ToWriter::Finish => finished = true,
            }
        }
        let written = spool.written();
        tx.send_modify(|p| p.written = written);
        if finished {
            let verified = spool.verify(digest).map_err(|e| match e {
                StoreError::DigestMismatch(mismatch) => FillError::DigestMismatch(mismatch),
                other => FillError::Store(Arc::new(other)),
            })?;
            tx.send_modify(|p| p.verified = true);
            return Ok(verified);
        }
    }
    // The network side gave up (and reports why); dropping the spool deletes it.
    Err(FillError::Aborted)
}

/// Opens a stored blob in the remote backend for a fill.
async fn fills_store_read(
    store: &Store,
    digest: &Digest,
    from: u64,
) -> Result<ByteStream, FillError> {
    match store.read_remote(digest, from).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => Err(FillError::Upstream(UpstreamError::NotFound)),
        Err(e) => Err(FillError::Store(Arc::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn tail_hands_out_slices_of_held_chunks_up_to_the_limit() {
        let tail = Tail::default();
        tail.push(0, chunk(1, 10));
        tail.push(10, chunk(2, 10));
        assert_eq!(tail.get(0, 20).unwrap(), chunk(1, 10));
        assert_eq!(tail.get(5, 20).unwrap(), chunk(1, 5));
        assert_eq!(tail.get(12, 15).unwrap(), chunk(2, 3));
        assert!(tail.get(20, 30).is_none(), "not written yet");
        assert!(tail.get(12, 12).is_none(), "nothing below the limit");
    }

    #[test]
    fn tail_forgets_the_oldest_chunks_beyond_its_budget() {
        let tail = Tail::default();
        let size = TAIL_BYTES / 4;
        for i in 0..8u64 {
            tail.push(i * size as u64, chunk(i as u8, size));
        }
        assert!(
            tail.get(0, u64::MAX).is_none(),
            "the oldest went to disk only"
        );
        let newest = 7 * size as u64;
        assert_eq!(tail.get(newest, u64::MAX).unwrap(), chunk(7, size));
        assert!(tail.lock().held <= TAIL_BYTES);
    }

    #[test]
    fn the_last_byte_waits_for_verification() {
        let mut progress = Progress {
            total: Some(100),
            received: 100,
            written: 100,
            verified: false,
            trusted: false,
            phase: Phase::Streaming,
        };
        assert_eq!(progress.readable(), 99);
        progress.verified = true;
        assert_eq!(progress.readable(), 100);
        progress.verified = false;
        progress.trusted = true;
        assert_eq!(
            progress.readable(),
            100,
            "bytes from the bucket need not wait"
        );
        let unknown = Progress {
            total: None,
            received: 50,
            written: 50,
            verified: false,
            trusted: false,
            phase: Phase::Streaming,
        };
        assert_eq!(unknown.readable(), 49);
        let ahead_of_disk = Progress {
            total: Some(100),
            received: 100,
            written: 40,
            verified: false,
            trusted: false,
            phase: Phase::Streaming,
        };
        assert_eq!(ahead_of_disk.readable(), 40);
        assert_eq!(ahead_of_disk.readable_in_memory(), 99);
    }
}

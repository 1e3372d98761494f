//! Reading a large object from a bucket as several ranged GETs at once, handed out in order.
//!
//! One GET of an object streams at the pace of the store's per-request pipeline (a Garage node
//! reads, checks and sends one block after another), well below what the link and the CPUs
//! could carry: on a two-core machine a single GET from Garage left a third of the CPU time
//! idle. A reader that asks for the next segments while it is still receiving the current one
//! keeps the store busy: the segments ahead are fetched into memory by tasks of their own, and
//! the stream yields every byte in order, as one GET would.
//!
//! What this may hold is bounded twice: per read, the segments ahead ([`AHEAD`] of
//! [`SEGMENT`] bytes each); per backend, a budget shared by every read ([`ReadAheadBudget`]).
//! A read that finds the budget spent fetches its next segment when it gets there, as a plain
//! sequential read would.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::byte_stream::{ByteStream, Chunks};

/// Bytes per ranged GET.
const SEGMENT: u64 = 8 * 1024 * 1024;

/// Segments fetched ahead of the one being read. Measured reading a 200 MiB object from a
/// one-node Garage on two cores, page cache dropped before each read (so Garage reads its
/// disk): two ahead left a tenth of the CPU time idle; three and four took 8% and 9% less
/// time. Four, since a store farther away (more time to each range's first byte) gains more
/// from each range in flight; the budget below still bounds all reads together.
pub(super) const AHEAD: usize = 4;

/// Reads of at most this many bytes are one GET: read-ahead pays only when there is more
/// than a couple of segments to overlap.
pub(super) const MIN_READ_AHEAD: u64 = 3 * SEGMENT;

/// Segments ahead every read of one backend may hold in memory at once, together.
const BUDGET_SEGMENTS: usize = 8;

/// Opens bytes `start..end` of the object being read.
#[async_trait]
pub(super) trait RangeOpener: Send + Sync + 'static {
    async fn open(&self, start: u64, end: u64) -> io::Result<Chunks>;
}

/// The memory every read of one backend may hold ahead of its readers, together.
#[derive(Clone)]
pub(super) struct ReadAheadBudget(Arc<Semaphore>);

impl Default for ReadAheadBudget {
    fn default() -> ReadAheadBudget {
        ReadAheadBudget(Arc::new(Semaphore::new(BUDGET_SEGMENTS)))
    }
}

/// The range a read of an object from `from` on asks for itself, before reading ahead: its
/// answer also tells the object's size.
pub(super) fn first_segment(from: u64) -> std::ops::Range<u64> {
    from..from + SEGMENT
}

/// The bytes `from..size` of an object of `size` bytes as a body: `first`, the answer to
/// [`first_segment`], then the rest read ahead through `opener`.
pub(super) fn sized_read(
    first: Chunks,
    from: u64,
    size: u64,
    opener: Arc<dyn RangeOpener>,
    budget: &ReadAheadBudget,
) -> ByteStream {
    let first_end = first_segment(from).end.min(size);
    let chunks = read_ahead(first, from, first_end, size, opener, budget);
    ByteStream::from_offset(size, from, chunks)
}

/// The bytes `from..size` of an object of `size` bytes: `first`, the segment `from..first_end`
/// the caller opened already, then consecutive ranged GETs of [`SEGMENT`] bytes, up to
/// [`AHEAD`] of them running ahead of the reader.
fn read_ahead(
    first: Chunks,
    from: u64,
    first_end: u64,
    size: u64,
    opener: Arc<dyn RangeOpener>,
    budget: &ReadAheadBudget,
) -> Chunks {
    // A store that ignored the range would shift every later byte: the first segment is held
    // to its length as the others are.
    let first = Box::pin(Exactly {
        chunks: first,
        left: first_end.saturating_sub(from),
        ended: false,
    });
    let mut reader = ReadAhead {
        opener,
        budget: budget.clone(),
        next: first_end,
        size,
        current: Some(first),
        ahead: VecDeque::new(),
    };
    reader.plan();
    Box::pin(reader)
}

/// A segment asked for and not yet being read.
enum Ahead {
    /// Being fetched into memory by its own task.
    Fetching(Fetched),
    /// No budget was left when it was planned: opened when the reader gets to it.
    Later { start: u64, end: u64 },
}

struct ReadAhead {
    opener: Arc<dyn RangeOpener>,
    budget: ReadAheadBudget,
    /// Where the next segment to plan starts.
    next: u64,
    size: u64,
    /// The segment being read.
    current: Option<Chunks>,
    ahead: VecDeque<Ahead>,
}

impl ReadAhead {
    /// Plans segments until [`AHEAD`] are waiting (or the object is all planned).
    fn plan(&mut self) {
        while self.ahead.len() < AHEAD && self.next < self.size {
            let (start, end) = (self.next, (self.next + SEGMENT).min(self.size));
            self.next = end;
            let planned = match Arc::clone(&self.budget.0).try_acquire_owned() {
                Ok(permit) => {
                    Ahead::Fetching(Fetched::start(Arc::clone(&self.opener), start, end, permit))
                }
                Err(_) => Ahead::Later { start, end },
            };
            self.ahead.push_back(planned);
        }
    }

    /// The stream of the next segment in order; `None` when everything was read.
    fn next_segment(&mut self) -> Option<Chunks> {
        if self.ahead.is_empty() && self.next < self.size {
            // The first segment, or one nothing was planned for: read it in place.
            let (start, end) = (self.next, (self.next + SEGMENT).min(self.size));
            self.next = end;
            self.ahead.push_back(Ahead::Later { start, end });
        }
        let segment = match self.ahead.pop_front()? {
            Ahead::Fetching(fetched) => Box::pin(fetched) as Chunks,
            Ahead::Later { start, end } => opened(Arc::clone(&self.opener), start, end),
        };
        self.plan();
        Some(segment)
    }
}

impl Stream for ReadAhead {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.current.is_none() {
                match self.next_segment() {
                    Some(segment) => self.current = Some(segment),
                    None => return Poll::Ready(None),
                }
            }
            let Some(current) = self.current.as_mut() else {
                continue;
            };
            match current.poll_next_unpin(cx) {
                Poll::Ready(None) => self.current = None,
                Poll::Ready(Some(Err(e))) => {
                    // Nothing after a broken segment: the reader resumes from where it got.
                    self.current = None;
                    self.ahead.clear();
                    self.next = self.size;
                    return Poll::Ready(Some(Err(e)));
                }
                other => return other,
            }
        }
    }
}

/// A segment opened when the reader gets to it, checked to be exactly as long as asked.
fn opened(opener: Arc<dyn RangeOpener>, start: u64, end: u64) -> Chunks {
    let open = async move { opener.open(start, end).await };
    Box::pin(Exactly {
        chunks: Box::pin(futures_util::stream::once(open).try_flatten()),
        left: end - start,
        ended: false,
    })
}

/// A segment's chunks, failing if they are not exactly as long as asked: a short or long
/// segment would shift every byte after it.
struct Exactly {
    chunks: Chunks,
    /// Bytes still to come.
    left: u64,
    ended: bool,
}

impl Stream for Exactly {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let item = match std::task::ready!(self.chunks.poll_next_unpin(cx)) {
            Some(Ok(chunk)) if chunk.len() as u64 > self.left => Err(io::Error::other(
                "a ranged read returned more bytes than asked for",
            )),
            Some(Ok(chunk)) => {
                self.left -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            Some(Err(e)) => Err(e),
            None if self.left == 0 => Ok(Bytes::new()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a ranged read ended {} bytes short", self.left),
            )),
        };
        self.ended = true;
        match item {
            Ok(_) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// A segment fetched into memory by a task of its own; the task stops when this is dropped.
struct Fetched {
    chunks: mpsc::UnboundedReceiver<io::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    /// Its share of the backend's read-ahead budget, given back once it is read or dropped.
    _permit: OwnedSemaphorePermit,
}

impl Fetched {
    fn start(
        opener: Arc<dyn RangeOpener>,
        start: u64,
        end: u64,
        permit: OwnedSemaphorePermit,
    ) -> Fetched {
        // Unbounded in messages, bounded in bytes: the segment is at most `end - start` long
        // (checked as it arrives).
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut chunks = opened(opener, start, end);
            while let Some(chunk) = chunks.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Fetched {
            chunks: rx,
            task,
            _permit: permit,
        }
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Fetched {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An object in memory, opened in ranges of 64 KiB chunks; remembers what was asked.
    struct Object {
        bytes: Bytes,
        opened: Mutex<Vec<(u64, u64)>>,
        /// Ranges starting here answer this many bytes short.
        short_at: Option<u64>,
    }

    impl Object {
        fn new(len: usize) -> Arc<Object> {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            Arc::new(Object {
                bytes: Bytes::from(bytes),
                opened: Mutex::new(Vec::new()),
                short_at: None,
            })
        }

        fn opened(&self) -> Vec<(u64, u64)> {
            self.opened.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl RangeOpener for Object {
        async fn open(&self, start: u64, end: u64) -> io::Result<Chunks> {
            self.opened.lock().unwrap().push((start, end));
            let end = if self.short_at == Some(start) {
                end - 10
            } else {
                end
            };
            let range = self.bytes.slice(start as usize..end as usize);
            let chunks: Vec<io::Result<Bytes>> = range
                .chunks(64 * 1024)
                .map(|c| Ok(range.slice_ref(c)))
                .collect();
            Ok(Box::pin(futures_util::stream::iter(chunks)))
        }
    }

    fn reader(object: &Arc<Object>, from: u64, budget: &ReadAheadBudget) -> Chunks {
        let size = object.bytes.len() as u64;
        let first_end = (from + SEGMENT).min(size);
        let first = opened(Arc::clone(object) as Arc<dyn RangeOpener>, from, first_end);
        read_ahead(
            first,
            from,
            first_end,
            size,
            Arc::clone(object) as Arc<dyn RangeOpener>,
            budget,
        )
    }

    async fn read_all(chunks: Chunks) -> io::Result<Vec<u8>> {
        let parts: Vec<Bytes> = chunks.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn yields_every_byte_in_order_from_any_offset() {
        let len = 5 * SEGMENT as usize + 12_345;
        let object = Object::new(len);
        let all = read_all(reader(&object, 0, &ReadAheadBudget::default()))
            .await
            .unwrap();
        assert!(all == object.bytes, "the bytes differ");
        let from = SEGMENT + 777;
        let tail = read_all(reader(&object, from, &ReadAheadBudget::default()))
            .await
            .unwrap();
        assert!(tail[..] == object.bytes[from as usize..]);
    }

    #[tokio::test]
    async fn asks_for_the_segments_ahead_before_the_first_is_read() {
        let object = Object::new(6 * SEGMENT as usize);
        let mut chunks = reader(&object, 0, &ReadAheadBudget::default());
        // One chunk of the first segment: the next AHEAD segments are being fetched already.
        chunks.next().await.unwrap().unwrap();
        let want: Vec<(u64, u64)> = (1..=AHEAD as u64)
            .map(|i| (i * SEGMENT, (i + 1) * SEGMENT))
            .collect();
        for _ in 0..100 {
            if object.opened().len() > AHEAD {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut opened = object.opened();
        opened.sort();
        assert_eq!(opened[0], (0, SEGMENT));
        assert_eq!(&opened[1..], &want[..]);
    }

    #[tokio::test]
    async fn without_budget_it_reads_one_segment_after_another() {
        let budget = ReadAheadBudget(Arc::new(Semaphore::new(0)));
        let object = Object::new(3 * SEGMENT as usize + 1);
        let mut chunks = reader(&object, 0, &budget);
        chunks.next().await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(object.opened(), [(0, SEGMENT)], "nothing fetched ahead");
        let rest = read_all(chunks).await.unwrap();
        assert_eq!(rest.len(), 3 * SEGMENT as usize + 1 - 64 * 1024);
        assert_eq!(object.opened().len(), 4);
    }

    #[tokio::test]
    async fn the_budget_is_given_back_when_a_read_ends_or_is_dropped() {
        let budget = ReadAheadBudget(Arc::new(Semaphore::new(AHEAD)));
        let object = Object::new(6 * SEGMENT as usize);
        let mut dropped = reader(&object, 0, &budget);
        dropped.next().await.unwrap().unwrap();
        assert_eq!(budget.0.available_permits(), 0);
        drop(dropped);
        assert_eq!(budget.0.available_permits(), AHEAD);
        read_all(reader(&object, 0, &budget)).await.unwrap();
        assert_eq!(budget.0.available_permits(), AHEAD);
    }

    #[tokio::test]
    async fn a_store_that_ignores_the_first_range_is_caught() {
        let object = Object::new(4 * SEGMENT as usize);
        // The whole object where the first segment was asked for.
        let whole = object.open(0, object.bytes.len() as u64).await.unwrap();
        let size = object.bytes.len() as u64;
        let opener = Arc::clone(&object) as Arc<dyn RangeOpener>;
        let chunks = read_ahead(whole, 0, SEGMENT, size, opener, &ReadAheadBudget::default());
        let error = read_all(chunks)
            .await
            .expect_err("bytes past the first range");
        assert!(
            error.to_string().contains("more bytes than asked for"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_short_segment_is_an_error_and_nothing_follows_it() {
        let mut object = Object::new(4 * SEGMENT as usize);
        Arc::get_mut(&mut object).unwrap().short_at = Some(2 * SEGMENT);
        let mut chunks = reader(&object, 0, &ReadAheadBudget::default());
        let mut good = 0u64;
        let error = loop {
            match chunks.next().await {
                Some(Ok(chunk)) => good += chunk.len() as u64,
                Some(Err(e)) => break e,
                None => panic!("a short segment went unnoticed"),
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            good,
            3 * SEGMENT - 10,
            "every byte before the gap, in order"
        );
        assert!(chunks.next().await.is_none(), "nothing after the error");
    }
}

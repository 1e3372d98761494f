//! A fill's receive buffers. The upstream's body arrives in buffers its HTTP client allocates
//! for each read; a fill that handed those on to its readers kept every one alive until the
//! slowest reader let go, so the client allocated a fresh buffer for nearly every read and the
//! allocator, having given the last ones back to the kernel, faulted in new pages for each:
//! about 25,000 page faults for a 200 MiB blob. Copying each chunk into a few segments of our
//! own, reused once their readers are done, lets the client reuse its one buffer too; the copy
//! costs less than the page faults did.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Bytes per segment: big enough that a network read (at most ~400 KiB) rarely spans two.
const SEGMENT: usize = 1024 * 1024;

/// The smallest body worth copying into segments: one that comes back round to its first
/// segments, past the tail and the writer's queue that hold the newest ones (a cold pull of
/// 7 MiB layers spent 8% more CPU when each of them took fresh segments).
pub(super) const WORTH_COPYING: u64 = 32 * 1024 * 1024;

/// How many used segments wait to be reused. Segments still held by readers when their turn
/// comes are let go (freed when the last reader drops them) and a new one is allocated, so a
/// slow reader costs allocations, never unbounded memory here: at most this many plus one.
const MAX_RETIRED: usize = 8;

/// Copies a fill's incoming bytes into reusable segments and hands them out as [`Bytes`].
pub(super) struct Segments {
    current: Option<BytesMut>,
    retired: VecDeque<BytesMut>,
}

impl Segments {
    /// No segments yet: the first is allocated by the first copy.
    pub(super) fn new() -> Segments {
        Segments {
            current: None,
            retired: VecDeque::new(),
        }
    }

    /// Copies `bytes` in and appends them to `pieces`, in order: one piece per segment they
    /// fill (usually one, two when they span the end of a segment).
    pub(super) fn copy_in(&mut self, mut bytes: &[u8], pieces: &mut Vec<Bytes>) {
        while !bytes.is_empty() {
            let segment = self.writable();
            let n = (segment.capacity() - segment.len()).min(bytes.len());
            segment.extend_from_slice(&bytes[..n]);
            pieces.push(segment.split().freeze());
            bytes = &bytes[n..];
        }
    }

    /// The segment with room in it: the current one, the oldest retired one whose readers
    /// have all let go, or a new one.
    fn writable(&mut self) -> &mut BytesMut {
        let full = self
            .current
            .as_ref()
            .is_none_or(|segment| segment.capacity() == segment.len());
        if full {
            if let Some(used) = self.current.take() {
                self.retired.push_back(used);
            }
            let reclaimable = self
                .retired
                .front_mut()
                .is_some_and(|oldest| oldest.try_reclaim(SEGMENT));
            let reused = if reclaimable {
                self.retired.pop_front()
            } else {
                None
            };
            if reused.is_none() && self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
            self.current = Some(reused.unwrap_or_else(|| BytesMut::with_capacity(SEGMENT)));
        }
        self.current.get_or_insert_with(BytesMut::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_all(segments: &mut Segments, chunks: &[Vec<u8>]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for chunk in chunks {
            segments.copy_in(chunk, &mut out);
        }
        out
    }

    fn copy_one(segments: &mut Segments, chunk: &[u8]) -> Bytes {
        let mut out = Vec::new();
        segments.copy_in(chunk, &mut out);
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn pieces_are_the_bytes_in_order_and_never_span_two_segments() {
        let mut segments = Segments::new();
        let chunks: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                (0..(100_000 + i * 7_919))
                    .map(|b| (b % 251) as u8)
                    .collect()
            })
            .collect();
        let pieces = copy_all(&mut segments, &chunks);
        let sent: Vec<u8> = chunks.concat();
        let received: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(received, sent);
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= SEGMENT));
        assert!(
            pieces.len() > chunks.len(),
            "some chunks spanned two segments"
        );
    }

    #[test]
    fn a_chunk_larger_than_a_segment_comes_out_whole_in_several_pieces() {
        let mut segments = Segments::new();
        let mut pieces = Vec::new();
        segments.copy_in(&[0u8; 300_000], &mut pieces);
        let big: Vec<u8> = (0..(2 * SEGMENT + 12_345))
            .map(|b| (b % 253) as u8)
            .collect();
        segments.copy_in(&big, &mut pieces);
        assert_eq!(
            pieces.len(),
            4,
            "the rest of the first segment, two more, a part"
        );
        let received: Vec<u8> = pieces[1..].iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(received, big);
    }

    #[test]
    fn a_segment_is_reused_once_its_readers_let_go() {
        let mut segments = Segments::new();
        let first = copy_one(&mut segments, &vec![1u8; SEGMENT]);
        let at = first.as_ptr();
        drop(first);
        // The next write finds the first segment full, retires it and reclaims it.
        let second = copy_one(&mut segments, &[2u8; 10]);
        assert_eq!(second.as_ptr(), at);
    }

    #[test]
    fn a_segment_still_read_is_not_overwritten() {
        let mut segments = Segments::new();
        let mut held = Vec::new();
        for i in 0..(MAX_RETIRED as u8 + 4) {
            segments.copy_in(&vec![i; SEGMENT], &mut held);
        }
        for (i, piece) in held.iter().enumerate() {
            assert!(
                piece.iter().all(|&b| b == i as u8),
                "segment {i} overwritten"
            );
        }
        assert!(segments.retired.len() <= MAX_RETIRED + 1);
    }
}

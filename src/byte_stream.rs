//! One shape for bytes on their way, wherever they come from: an upstream's blob body, a peer
//! replica's, or an object read from the store. A fill, an export and a shared upload all
//! consume this one type.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use crate::oci::ContentRange;

/// The chunks of a body as they arrive; a broken connection or read is an error.
pub type Chunks = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A body: how long it says it is, where it starts in the whole, and its chunks.
pub struct ByteStream {
    /// How many bytes it will yield, when declared.
    pub length: Option<u64>,
    /// Where its first byte sits in the whole object: `Some(0)` for a whole body, the offset
    /// for a range the sender honoured, `None` for a partial answer that did not say where it
    /// starts.
    pub start: Option<u64>,
    /// The bytes.
    pub chunks: Chunks,
}

impl ByteStream {
    /// The bytes of an object of `size` bytes from offset `from` on.
    pub fn from_offset(size: u64, from: u64, chunks: Chunks) -> ByteStream {
        ByteStream {
            length: Some(size.saturating_sub(from)),
            start: Some(from),
            chunks,
        }
    }

    /// The size of the whole object, when known (what a `size` field said before a range).
    pub fn total(&self) -> Option<u64> {
        Some(self.start? + self.length?)
    }

    /// An HTTP response's body: a `206`'s start from its `Content-Range`, a `200`'s from 0,
    /// its length from `Content-Length`.
    pub fn from_response(response: reqwest::Response) -> ByteStream {
        let headers = response.headers();
        let start = if response.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            headers
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| ContentRange::parse(v).ok())
                .map(|range| range.start)
        } else {
            Some(0)
        };
        let length = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        ByteStream {
            length,
            start,
            chunks: Box::pin(response.bytes_stream().map_err(io::Error::other)),
        }
    }
}

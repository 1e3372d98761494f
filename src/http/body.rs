//! Response bodies: small buffered ones, streamed file and fill ranges, and a wrapper that logs
//! each request once its body has been sent (or abandoned).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::{Metrics, Source};
use crate::store::ReadGuard;

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of known bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body from a stream of chunks; an `Err` aborts the response (the connection is closed
/// before the declared length, so the client sees a failure, never a short success).
pub fn streamed(stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static) -> Body {
    StreamBody::new(stream.map_ok(Frame::data).map_err(BoxError::from)).boxed_unsync()
}

/// Bytes per read of a committed blob sent to a client: large enough that a read costs little
/// next to its copy, small enough to still be in the CPU's cache when hyper copies it to the
/// socket (measured: 256 KiB beat 1 MiB by a tenth at one connection, 128 KiB gained nothing).
const FILE_CHUNK: usize = 256 * 1024;

/// `[start, end)` of a file. `guard` marks the blob as being read until the body is done or
/// dropped.
///
/// What the page cache holds (a hot blob: the usual case) is read right where hyper asks for
/// the next chunk, so it is still in the CPU's cache when hyper copies it to the socket, with
/// no trip to another thread. Only a read that would wait for the disk goes to the blocking
/// pool, so a slow disk never stalls the runtime.
pub fn file_range(file: std::fs::File, start: u64, end: u64, guard: ReadGuard) -> Body {
    let chunks = futures_util::stream::try_unfold(
        (file, start, guard),
        move |(file, offset, guard)| async move {
            if offset >= end {
                return Ok(None);
            }
            let len = (end - offset).min(FILE_CHUNK as u64) as usize;
            let (file, bytes) = read_at(file, offset, len).await?;
            let next = offset + bytes.len() as u64;
            Ok(Some((bytes, (file, next, guard))))
        },
    );
    streamed(chunks)
}

/// Reads up to `len` bytes at `offset`: from the page cache on this thread if it holds them,
/// else on the blocking pool. Never returns an empty chunk.
async fn read_at(
    file: std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<(std::fs::File, Bytes)> {
    match read_cached(&file, offset, len)? {
        Some(bytes) => Ok((file, bytes)),
        None => read_from_disk(file, offset, len).await,
    }
}

/// Reads what the page cache holds of `len` bytes at `offset` without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`); `None` when it holds none of them or the kernel cannot say,
/// and the caller reads the usual way.
///
/// The buffer is not zeroed first: zeroing it cost a single connection about 5% of its speed.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, offset: u64, len: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` describes `len` bytes of `buf`'s spare capacity, which lives across the
    // call; the kernel writes at most that many bytes into it.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    let Ok(read) = usize::try_from(read) else {
        let error = io::Error::last_os_error();
        // Not cached (EAGAIN), or the flag or the call itself not available here: an old
        // kernel, a filesystem without it, a sandbox or seccomp profile that refuses it.
        return match error.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EPERM) => {
                Ok(None)
            }
            _ => Err(error),
        };
    };
    if read == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel initialized the first `read` bytes, and `read <= len`.
    unsafe { buf.set_len(read) };
    Ok(Some(Bytes::from(buf)))
}

/// Elsewhere every read goes to the blocking pool.
#[cfg(not(target_os = "linux"))]
fn read_cached(_: &std::fs::File, _: u64, _: usize) -> io::Result<Option<Bytes>> {
    Ok(None)
}

/// Reads `len` bytes at `offset` on the blocking pool, into a buffer that is never zeroed first
/// (`read_to_end` fills spare capacity).
async fn read_from_disk(
    file: std::fs::File,
    offset: u64,
    len: usize,
) -> io::Result<(std::fs::File, Bytes)> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = Vec::with_capacity(len);
        (&file).seek(SeekFrom::Start(offset))?;
        (&file).take(len as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than its size",
            ));
        }
        Ok((file, Bytes::from(buf)))
    })
    .await
    .map_err(io::Error::other)?
}

/// What the request log line says about a request, filled in by the handler.
pub struct LogInfo {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Cache result, when the request was a lookup.
    pub cache: Option<&'static str>,
    /// Where the body bytes come from (for the served-bytes metric).
    pub source: Option<Source>,
    /// The upstream the request was routed to.
    pub upstream: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// The response's declared `Content-Length`.
    pub length: Option<u64>,
}

/// Wraps a body, counts its bytes, and logs one line when it is finished or dropped.
pub struct Logged {
    inner: Body,
    info: LogInfo,
    /// The declared length: hyper stops polling a body once that many bytes are out.
    expected: Option<u64>,
    bytes: u64,
    failed: bool,
    ended: bool,
    metrics: Arc<Metrics>,
}

impl Logged {
    /// Wraps `inner`.
    pub fn new(inner: Body, info: LogInfo, metrics: Arc<Metrics>) -> Logged {
        Logged {
            expected: info.length.or(inner.size_hint().exact()),
            inner,
            info,
            bytes: 0,
            failed: false,
            ended: false,
            metrics,
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let info = &self.info;
        if let Some(source) = info.source {
            self.metrics
                .served_bytes
                .with_label_values(&[source.as_str(), info.upstream.as_deref().unwrap_or("")])
                .inc_by(self.bytes);
        }
        let complete = !self.failed
            && (self.ended || self.inner.is_end_stream() || self.expected == Some(self.bytes));
        tracing::info!(
            method = %info.method,
            path = %info.path,
            status = info.status,
            bytes = self.bytes,
            duration_ms = info.started.elapsed().as_secs_f64() * 1000.0,
            cache = info.cache.unwrap_or("-"),
            upstream = info.upstream.as_deref().unwrap_or("-"),
            complete,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> std::fs::File {
        use std::io::{Seek, Write};
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        file
    }

    #[tokio::test]
    async fn both_read_paths_return_the_same_bytes() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let cached = read_cached(&file_with(&data), 100, 500).unwrap();
        if let Some(bytes) = cached {
            // Freshly written, so in the page cache: the fast path answers, perhaps short.
            assert!(!bytes.is_empty());
            assert_eq!(bytes.as_ref(), &data[100..100 + bytes.len()]);
        }
        let (_, bytes) = read_from_disk(file_with(&data), 100, 500).await.unwrap();
        assert_eq!(bytes.as_ref(), &data[100..600]);
        let (_, tail) = read_from_disk(file_with(&data), 9_990, 500).await.unwrap();
        assert_eq!(tail.as_ref(), &data[9_990..]);
    }

    #[tokio::test]
    async fn reading_past_the_end_is_an_error_not_an_empty_chunk() {
        let file = file_with(b"short");
        assert!(read_cached(&file, 10, 5).unwrap().is_none());
        assert!(read_from_disk(file, 10, 5).await.is_err());
        assert!(read_at(file_with(b"short"), 10, 5).await.is_err());
    }
}

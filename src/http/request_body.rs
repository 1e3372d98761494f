//! Request bodies (pushed blobs and manifests) as streams that give up on a client that stops
//! sending: a request in flight is exempt from the connection timeouts, so without this a
//! client could hold its connection and its upload session for as long as it liked.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent nothing for the idle timeout.
    #[error("the client sent nothing for {0:?}")]
    Stalled(Duration),
    /// The connection failed.
    #[error("{0}")]
    Read(#[from] hyper::Error),
}

/// The body's data, ending with [`BodyError::Stalled`] when no byte arrives for `idle`.
pub fn data_stream(
    body: Incoming,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Unpin {
    let frames = body.into_data_stream();
    Box::pin(futures_util::stream::unfold(
        Some(frames),
        move |frames| async move {
            let mut frames = frames?;
            match tokio::time::timeout(idle, frames.next()).await {
                Err(_) => Some((Err(BodyError::Stalled(idle)), None)),
                Ok(None) => None,
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(frames))),
                Ok(Some(Err(e))) => Some((Err(BodyError::Read(e)), None)),
            }
        },
    ))
}

/// Why a small body could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// It is longer than the limit.
    #[error("longer than {0} bytes")]
    TooLarge(usize),
    /// Reading it failed.
    #[error(transparent)]
    Body(#[from] BodyError),
}

/// The whole body, at most `limit` bytes, with the idle timeout of [`data_stream`].
pub async fn collect(body: Incoming, idle: Duration, limit: usize) -> Result<Bytes, CollectError> {
    let mut stream = data_stream(body, idle);
    let mut collected = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if collected.len() + chunk.len() > limit {
            return Err(CollectError::TooLarge(limit));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected.freeze())
}

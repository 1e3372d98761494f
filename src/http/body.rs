//! Response bodies: small buffered ones, streamed file and fill ranges, and a wrapper that logs
//! each request once its body has been sent (or abandoned).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics::Metrics;
use crate::proxy::Source;
use crate::store::{BlobReader, ReadGuard, reads};

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

/// `[start, end)` of a blob file, read a chunk at a time as hyper asks for it (see
/// [`reads`] for where the bytes come from). `guard` marks the blob as being read until the
/// body is done or dropped.
pub fn file_range(reader: BlobReader, start: u64, end: u64, guard: ReadGuard) -> Body {
    let chunks = futures_util::stream::try_unfold(
        (reader, start, guard),
        move |(reader, offset, guard)| async move {
            if offset >= end {
                return Ok(None);
            }
            let len = (end - offset).min(reads::READ_CHUNK as u64) as usize;
            let bytes = reader.read_chunk(offset, len).await?;
            let next = offset + bytes.len() as u64;
            Ok(Some((bytes, (reader, next, guard))))
        },
    );
    streamed(chunks)
}

/// `body`, holding `permit` until it is done or dropped (a slot of `[server]
/// max_blob_readers`).
pub fn holding_permit(body: Body, permit: tokio::sync::OwnedSemaphorePermit) -> Body {
    body.map_frame(move |frame| {
        // The closure owns the permit: it is released with the body.
        let _held = &permit;
        frame
    })
    .boxed_unsync()
}

/// What the request log line says about a request, filled in by the handler.
pub struct LogInfo {
    /// HTTP method.
    pub method: http::Method,
    /// The method as a metric label (a closed set).
    pub method_label: &'static str,
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
    /// Who asked and what, as the request line names them.
    pub facts: RequestFacts,
}

/// Who sent a request and what it was, for its log line.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// `X-Request-Id` as sent (when usable), else one made here; echoed in the response.
    pub request_id: String,
    /// The client's address (behind trusted proxies: the forwarded one).
    pub client: Option<std::net::IpAddr>,
    /// The authenticated user.
    pub user: Option<String>,
    /// `User-Agent`, shortened.
    pub user_agent: String,
    /// The route's kind (`manifest`, `blob`, ...; `invalid` for a path that is none).
    pub route: &'static str,
}

/// A route kind as the request-duration metric labels it: the kinds an operator tells apart,
/// the rest as `other`.
fn route_label(kind: &str) -> &'static str {
    match kind {
        "manifest" => "manifest",
        "blob" | "peer_blob" => "blob",
        "upload" => "upload",
        "token" => "token",
        "ui" => "ui",
        "search" => "search",
        _ => "other",
    }
}

/// `2xx`, `4xx`, ...: a closed set.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// A value as a log line shows it, `-` when there is none; formatted into the line, with no
/// string of its own.
pub struct OrDash<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Milliseconds with two decimals, as the request line prints them.
pub fn millis(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 100_000.0).round() / 100.0
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
    /// Keeps the request counted as in flight on its connection until the body is done.
    in_flight: Option<super::limits::InFlight>,
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
            in_flight: None,
        }
    }

    /// Counts the request as in flight on its connection until this body is done; from now
    /// on the response waits on its client (see [`super::limits`]).
    pub fn holding(mut self, in_flight: super::limits::InFlight) -> Logged {
        in_flight.responded();
        self.in_flight = Some(in_flight);
        self
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
        if let Some(in_flight) = &self.in_flight {
            in_flight.asked(polled.is_pending());
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(None) => {
                self.ended = true;
                self.in_flight = None;
            }
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
                .served(source, info.upstream.as_deref().unwrap_or(""), self.bytes);
        }
        let complete = !self.failed
            && (self.ended || self.inner.is_end_stream() || self.expected == Some(self.bytes));
        let facts = &info.facts;
        let elapsed = info.started.elapsed();
        self.metrics
            .http_duration
            .with_label_values(&[
                route_label(facts.route),
                info.method_label,
                status_class(info.status),
            ])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            request_id = %facts.request_id,
            client = %OrDash(facts.client),
            user = facts.user.as_deref().unwrap_or("-"),
            method = %info.method,
            path = %info.path,
            route = facts.route,
            status = info.status,
            bytes = self.bytes,
            duration_ms = millis(elapsed),
            cache = info.cache.unwrap_or("-"),
            upstream = info.upstream.as_deref().unwrap_or("-"),
            user_agent = %facts.user_agent,
            complete,
            "request"
        );
    }
}

/// A complete response with `body`, its type and length.
pub(crate) fn text_response(
    body: impl Into<bytes::Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let body = body.into();
    let mut response = Response::new(full(body.clone()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.status_mut() = StatusCode::OK;
    response
}

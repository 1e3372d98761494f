//! The HTTP server: a hyper service that parses each request into a [`routes::Route`], hands it
//! to a thin handler, and maps errors to OCI error JSON.

mod blobs;
pub mod body;
pub mod errors;
mod manifests;
pub mod routes;
mod tags;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use body::{Body, LogInfo, Logged, full};
use errors::ApiError;
use routes::{Query, Route};

use crate::metrics::{CacheResult, Source};
use crate::oci::ErrorCode;
use crate::proxy::Mirror;

/// Header naming how a lookup was answered: `hit`, `revalidated`, `miss`, `coalesced` or
/// `stale` (a cached tag served because the upstream could not be asked; a `Warning: 110`
/// header comes with it).
pub const CACHE_HEADER: &str = "x-regmirror-cache";

/// A handler's response plus what the request log needs to know.
pub struct Answer {
    /// The response.
    pub response: Response<Body>,
    /// Cache result, for lookups.
    pub cache: Option<CacheResult>,
    /// Where body bytes come from.
    pub source: Option<Source>,
    /// The upstream the request was routed to.
    pub upstream: Option<String>,
}

impl Answer {
    /// A response that was not a cache lookup.
    pub fn plain(response: Response<Body>) -> Answer {
        Answer {
            response,
            cache: None,
            source: None,
            upstream: None,
        }
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        Answer::plain(e.into_response(false))
    }
}

/// A parsed request, as handlers see it.
pub struct Ctx<'a> {
    /// The mirror.
    pub mirror: &'a Arc<Mirror>,
    /// Whether this is a HEAD request.
    pub head: bool,
    /// Query parameters.
    pub query: Query,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

/// Answers one request.
pub async fn handle(
    mirror: Arc<Mirror>,
    request: Request<Incoming>,
) -> Result<Response<Logged>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let answer = dispatch(&mirror, &request).await;
    let mut response = answer.response;
    if method == Method::HEAD {
        // Keep the headers (Content-Length included), drop any body.
        *response.body_mut() = body::empty();
    }
    if let Some(cache) = answer.cache {
        let headers = response.headers_mut();
        headers.insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
        if cache == CacheResult::Stale {
            headers.insert(
                header::WARNING,
                HeaderValue::from_static("110 regmirror \"Response is Stale\""),
            );
        }
    }
    let status = response.status().as_u16();
    mirror
        .metrics
        .http_requests
        .with_label_values(&[method.as_str(), &status.to_string()])
        .inc();
    let info = LogInfo {
        method: method.to_string(),
        path,
        status,
        cache: answer.cache.map(CacheResult::as_str),
        source: answer.source,
        upstream: answer.upstream,
        started,
    };
    let metrics = Arc::clone(&mirror.metrics);
    Ok(response.map(|b| Logged::new(b, info, metrics)))
}

async fn dispatch(mirror: &Arc<Mirror>, request: &Request<Incoming>) -> Answer {
    let route = match routes::parse(request.uri().path()) {
        Ok(route) => route,
        Err(e) => return ApiError::from(e).into(),
    };
    let method = request.method();
    let head = method == Method::HEAD;
    if method != Method::GET && !head {
        return ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported here: this mirror serves pulls"),
        )
        .into();
    }
    let ctx = Ctx {
        mirror,
        head,
        query: Query::parse(request.uri().query()),
        headers: request.headers(),
    };
    match route {
        Route::Base => Answer::plain(base_response()),
        Route::Health => Answer::plain(text_response("ok\n", "text/plain")),
        Route::Metrics => Answer::plain(text_response(
            mirror.metrics.render(),
            "text/plain; version=0.0.4",
        )),
        Route::Manifest { name, reference } => manifests::get(&ctx, &name, &reference).await,
        Route::Blob { name, digest } => blobs::get(&ctx, &name, &digest).await,
        Route::TagsList { name } => tags::list(&ctx, &name).await,
        Route::Upload { .. } | Route::Catalog => {
            ApiError::new(ErrorCode::Unsupported, "not supported by this mirror yet").into()
        }
    }
}

/// `GET /v2/`: 200 with the API version header, so clients know this is a registry.
fn base_response() -> Response<Body> {
    let mut response = text_response("{}", "application/json");
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn text_response(body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<Body> {
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

/// Echoes containerd's `ns` in `OCI-Namespace`, as the distribution spec asks of proxies.
pub fn echo_namespace(ctx: &Ctx<'_>, response: &mut Response<Body>) {
    if let Some(value) = ctx
        .query
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        response.headers_mut().insert("oci-namespace", value);
    }
}

/// Accepts connections until `shutdown` resolves, serving each with HTTP/1.1 or HTTP/2.
pub async fn serve(listener: TcpListener, mirror: Arc<Mirror>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mirror = Arc::clone(&mirror);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&mirror), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

//! The HTTP server: a hyper service that parses each request into a [`routes::Route`], hands it
//! to a thin handler, and maps errors to OCI error JSON.

pub mod auth;
mod blobs;
pub mod body;
mod catalog;
pub mod errors;
mod manifests;
mod paging;
mod referrers;
pub mod routes;
pub mod server;
mod tags;
mod uploads;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

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

    /// An error answer for a request routed to `upstream`, which its log line names.
    pub fn failed(e: ApiError, upstream: String) -> Answer {
        Answer {
            upstream: Some(upstream),
            ..Answer::from(e)
        }
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        Answer::plain(e.into_response(false))
    }
}

/// The HTTP layer's state: the mirror and the policies that belong to the API surface.
pub struct App {
    /// The registry logic.
    pub mirror: Arc<Mirror>,
    /// Who may push (and pull), when an htpasswd file is configured.
    pub auth: Option<auth::Authenticator>,
    /// Whether DELETE is allowed.
    pub delete_enabled: bool,
    /// The largest blob a client may push.
    pub max_upload: u64,
}

/// A parsed request, as handlers see it.
pub struct Ctx<'a> {
    /// The HTTP layer's state.
    pub app: &'a App,
    /// The mirror.
    pub mirror: &'a Arc<Mirror>,
    /// Whether this is a HEAD request.
    pub head: bool,
    /// Query parameters.
    pub query: Query,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
}

impl Ctx<'_> {
    /// The name of the upstream `name` routes to, for logs and metrics.
    pub fn upstream_label(&self, name: &crate::oci::RepoName) -> String {
        self.mirror
            .upstreams
            .resolve(self.query.ns.as_deref(), name)
            .map_or_else(
                |_| crate::store::LOCAL.to_owned(),
                |r| r.upstream.name().to_owned(),
            )
    }
}

/// Answers one request.
pub async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
) -> Result<Response<Logged>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // A client that hangs up before its answer is ready drops this future: the guard still
    // writes its log line.
    let mut unanswered = Unanswered {
        method: method.clone(),
        path: path.clone(),
        started,
        armed: true,
    };
    let answer = dispatch(&app, request).await;
    unanswered.armed = false;
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
    app.mirror
        .metrics
        .http_requests
        .with_label_values(&[method_label(&method), &status.to_string()])
        .inc();
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let info = LogInfo {
        length,
        method: method.to_string(),
        path,
        status,
        cache: answer.cache.map(CacheResult::as_str),
        source: answer.source,
        upstream: answer.upstream,
        started,
    };
    let metrics = Arc::clone(&app.mirror.metrics);
    Ok(response.map(|b| Logged::new(b, info, metrics)))
}

/// A request whose handler has not answered yet; logged as cancelled if dropped so.
struct Unanswered {
    method: Method,
    path: String,
    started: Instant,
    armed: bool,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(
                method = %self.method,
                path = %self.path,
                status = 499,
                bytes = 0,
                duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                complete = false,
                cancelled = true,
                "request"
            );
        }
    }
}

/// The method as a metric label: one of a closed set, so a client cannot create series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Applies the authentication policy (when an htpasswd file is configured).
fn authorize(
    app: &App,
    route: &Route,
    method: &Method,
    headers: &http::HeaderMap,
) -> Result<(), ApiError> {
    let Some(auth) = &app.auth else {
        return Ok(());
    };
    if matches!(
        route,
        Route::Metrics | Route::Health | Route::Ready | Route::Token
    ) {
        return Ok(());
    }
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let read = *method == Method::GET || *method == Method::HEAD;
    match auth.authorize(sent, read, matches!(route, Route::Base)) {
        Ok(_) => Ok(()),
        Err(refusal) => Err(challenge(headers, refusal)),
    }
}

/// A 401 pointing the client at our token endpoint.
fn challenge(headers: &http::HeaderMap, refusal: auth::Refusal) -> ApiError {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let message = match refusal {
        auth::Refusal::Invalid => "invalid credentials",
        auth::Refusal::Required => "authentication required",
    };
    ApiError::new(ErrorCode::Unauthorized, message).with_header(
        header::WWW_AUTHENTICATE,
        format!("Bearer realm=\"http://{host}/token\",service=\"regmirror\""),
    )
}

/// `GET /token`: a Bearer token for the Basic credentials sent, or an anonymous one.
fn token(app: &App, headers: &http::HeaderMap) -> Answer {
    let Some(auth) = &app.auth else {
        return ApiError::new(ErrorCode::Unsupported, "authentication is not configured").into();
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.issue_token(sent) {
        Ok(token) => {
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": auth::TOKEN_LIFETIME.as_secs(),
            });
            Answer::plain(text_response(body.to_string(), "application/json"))
        }
        Err(refusal) => challenge(headers, refusal).into(),
    }
}

async fn dispatch(app: &App, request: Request<Incoming>) -> Answer {
    let (parts, body) = request.into_parts();
    let route = match routes::parse(parts.uri.path()) {
        Ok(route) => route,
        Err(e) => return ApiError::from(e).into(),
    };
    let method = parts.method.clone();
    if let Err(e) = authorize(app, &route, &method, &parts.headers) {
        return e.into();
    }
    let ctx = Ctx {
        app,
        mirror: &app.mirror,
        head: method == Method::HEAD,
        query: Query::parse(parts.uri.query()),
        headers: &parts.headers,
    };
    let read = method == Method::GET || method == Method::HEAD;
    match (route, method) {
        (Route::Base, _) if read => Answer::plain(base_response()),
        (Route::Token, _) if read => token(app, &parts.headers),
        (Route::Health, _) if read => Answer::plain(text_response("ok\n", "text/plain")),
        (Route::Ready, _) if read => ready(app).await,
        (Route::Metrics, _) if read => Answer::plain(metrics_response(&app.mirror)),
        (Route::Manifest { name, reference }, _) if read => {
            manifests::get(&ctx, &name, &reference).await
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            manifests::put(&ctx, &name, &reference, body).await
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(&ctx, &name, &reference).await
        }
        (Route::Blob { name, digest }, _) if read => blobs::get(&ctx, &name, &digest).await,
        (Route::Blob { digest, .. }, Method::DELETE) => blobs::delete(&ctx, &digest).await,
        (
            Route::Upload {
                name,
                session: None,
            },
            Method::POST,
        ) => uploads::start(&ctx, &name, body).await,
        (
            Route::Upload {
                name,
                session: Some(id),
            },
            m,
        ) => uploads::session(&ctx, &name, &id, m, body).await,
        (Route::TagsList { name }, _) if read => tags::list(&ctx, &name).await,
        (Route::Catalog, _) if read => catalog::list(&ctx).await,
        (Route::Referrers { name, digest }, _) if read => {
            referrers::list(&ctx, &name, &digest).await
        }
        (_, method) => ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on this path"),
        )
        .into(),
    }
}

/// `GET /readyz`: 200 when the store is writable, else 503.
async fn ready(app: &App) -> Answer {
    match app.mirror.store.check_writable().await {
        Ok(()) => Answer::plain(text_response("ready\n", "text/plain")),
        Err(e) => {
            let mut response = text_response(format!("store not writable: {e}\n"), "text/plain");
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Answer::plain(response)
        }
    }
}

/// `GET /metrics`, with the store gauges read at scrape time.
fn metrics_response(mirror: &Mirror) -> Response<Body> {
    let (bytes, blobs) = mirror.store.usage();
    let m = &mirror.metrics;
    m.store_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    m.store_blobs.set(i64::try_from(blobs).unwrap_or(i64::MAX));
    text_response(m.render(), "text/plain; version=0.0.4")
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

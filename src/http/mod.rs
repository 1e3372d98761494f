//! The HTTP server: a hyper service that parses each request into a [`routes::Route`], hands it
//! to a thin handler, and maps errors to OCI error JSON.

mod access;
pub(crate) mod auth;
mod blobs;
pub(crate) mod body;
mod catalog;
mod context;
pub(crate) mod errors;
pub mod htpasswd;
pub(crate) mod limits;
mod manifests;
mod paging;
mod referrers;
mod request_body;
pub mod routes;
mod search;
pub(crate) mod server;
mod status;
mod tags;
pub(crate) mod ui;
pub(crate) mod uploads;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use body::{LogInfo, Logged};
use errors::ApiError;
use routes::{Query, Route};

pub(crate) use body::text_response;
pub(crate) use context::{Answer, App, ConnInfo, Ctx, echo_namespace};
pub(crate) use status::Readiness;

use crate::oci::ErrorCode;
use crate::proxy::{CacheResult, Target};

/// Header naming how a lookup was answered: `hit`, `revalidated`, `miss`, `coalesced` or
/// `stale` (a cached tag served because the upstream could not be asked; a `Warning: 110`
/// header comes with it).
pub const CACHE_HEADER: &str = "x-regmirror-cache";

/// Answers one request.
pub async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    conn: ConnInfo,
    in_flight: limits::InFlight,
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
    let answer = dispatch(&app, request, &conn).await;
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
    Ok(response.map(|b| Logged::new(b, info, metrics).holding(in_flight)))
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
        if !self.armed {
            return;
        }
        // A handler that panicked is a 500 the client never saw; otherwise the client left.
        let panicked = std::thread::panicking();
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = if panicked { 500 } else { 499 },
            bytes = 0,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            complete = false,
            cancelled = !panicked,
            panicked,
            "request"
        );
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

async fn dispatch(app: &App, request: Request<Incoming>, conn: &ConnInfo) -> Answer {
    let (parts, body) = request.into_parts();
    let route = match routes::parse(parts.uri.path()) {
        Ok(route) => route,
        // A tag that cannot exist is not found (what the spec's conformance suite expects of
        // GET and HEAD); pushing to it is invalid.
        Err(routes::PathError::Reference(crate::oci::ReferenceError::Tag(_)))
            if matches!(parts.method, Method::GET | Method::HEAD) =>
        {
            return ApiError::new(ErrorCode::ManifestUnknown, "no such manifest").into();
        }
        Err(e) => return ApiError::from(e).into(),
    };
    let method = parts.method.clone();
    if method == Method::DELETE
        && !app.delete_enabled
        && matches!(route, Route::Manifest { .. } | Route::Blob { .. })
    {
        // Nobody may delete: say so whoever asks, before any credentials are checked.
        return ApiError::new(
            ErrorCode::Unsupported,
            "deletes are disabled ([storage] delete = false)",
        )
        .into();
    }
    let query = Query::parse(parts.uri.query());
    let client = app.client_addr(conn, &parts.headers);
    let target = match access::resolve_target(app, &route, &query) {
        Ok(target) => target,
        Err(e) => return e.into(),
    };
    let identity =
        match access::authorize_request(app, &route, target.as_ref(), &parts, conn, client, &query)
            .await
        {
            Ok(identity) => identity,
            Err(e) => return e.into(),
        };
    if route == Route::Token {
        return access::token(app, &parts, conn, client, &query).await;
    }
    let ctx = Ctx {
        app,
        mirror: &app.mirror,
        head: method == Method::HEAD,
        query,
        headers: &parts.headers,
        identity,
        client,
    };
    let read = method == Method::GET || method == Method::HEAD;
    if route.reads_registry_state() {
        // What another replica changed just before this request is visible to it.
        app.mirror.follow_cluster().await;
    }
    if let Some(target) = &target {
        return repository(&ctx, route, target, method, body).await;
    }
    match (route, method) {
        (Route::Base, _) if read => Answer::plain(status::base_response()),
        (Route::Health, _) if read => Answer::plain(text_response("ok\n", "text/plain")),
        (Route::Ready, _) if read => {
            Answer::plain(status::ready(&app.readiness, &app.mirror).await)
        }
        (Route::Metrics, _) if read => Answer::plain(status::metrics_response(&app.mirror)),
        (Route::PeerBlob { digest }, Method::GET) => blobs::peer_get(&ctx, &digest).await,
        (Route::Catalog, _) if read => catalog::list(&ctx).await,
        (Route::Search, _) if read => search::search(&ctx).await,
        (Route::Ui(page), _) if read => ui::page(&ctx, page).await,
        (Route::V1Ping, _) if read => Answer::plain(text_response("{}", "application/json")),
        (_, method) => unsupported(&method),
    }
}

/// The routes about one repository: each handler gets the resolved [`Target`] that was
/// authorized, never the name as sent.
async fn repository(
    ctx: &Ctx<'_>,
    route: Route,
    target: &Target,
    method: Method,
    body: Incoming,
) -> Answer {
    let read = method == Method::GET || method == Method::HEAD;
    match (route, method) {
        (Route::Manifest { reference, .. }, _) if read => {
            manifests::get(ctx, target, &reference).await
        }
        (Route::Manifest { reference, .. }, Method::PUT) => {
            manifests::put(ctx, target, &reference, body).await
        }
        (Route::Manifest { reference, .. }, Method::DELETE) => {
            manifests::delete(ctx, target, &reference).await
        }
        (Route::Blob { digest, .. }, _) if read => blobs::get(ctx, target, &digest).await,
        (Route::Blob { digest, .. }, Method::DELETE) => blobs::delete(ctx, target, &digest).await,
        (Route::Upload { session: None, .. }, Method::POST) => {
            uploads::start(ctx, target, body).await
        }
        (
            Route::Upload {
                session: Some(id), ..
            },
            m,
        ) => uploads::session(ctx, target, &id, m, body).await,
        (Route::TagsList { .. }, _) if read => tags::list(ctx, target).await,
        (Route::Referrers { digest, .. }, _) if read => referrers::list(ctx, target, &digest).await,
        (_, method) => unsupported(&method),
    }
}

fn unsupported(method: &Method) -> Answer {
    ApiError::new(
        ErrorCode::Unsupported,
        format!("{method} is not supported on this path"),
    )
    .into()
}

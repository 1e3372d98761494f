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

use http::{HeaderName, HeaderValue, Method, Request, Response, header};
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
/// (A `HeaderName` constant, not a string: every use of a string name parses it again.)
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-regmirror-cache");

/// Answers one request.
pub async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    conn: ConnInfo,
    in_flight: limits::InFlight,
) -> Result<Response<Logged>, Infallible> {
    use tracing::Instrument;
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = request_id(request.headers());
    // A client that hangs up before its answer is ready drops this future: the guard still
    // writes its log line.
    let mut unanswered = Unanswered {
        method: method.clone(),
        path,
        started,
        armed: true,
        facts: body::RequestFacts {
            user_agent: user_agent(request.headers()),
            request_id,
            route: "invalid",
            ..Default::default()
        },
    };
    // Whatever is logged while answering (an upstream's failure) names the request.
    let span = tracing::info_span!("request", request_id = %unanswered.facts.request_id);
    let answer = dispatch(&app, request, &conn, &mut unanswered.facts)
        .instrument(span)
        .await;
    // Answered: the log line is the response body's to write; its parts move there.
    unanswered.armed = false;
    let facts = std::mem::take(&mut unanswered.facts);
    let path = std::mem::take(&mut unanswered.path);
    let mut response = answer.response;
    if let Ok(value) = HeaderValue::from_str(&facts.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
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
        .with_label_values(&[method_label(&method), response.status().as_str()])
        .inc();
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let info = LogInfo {
        length,
        method_label: method_label(&method),
        method,
        path,
        status,
        cache: answer.cache.map(CacheResult::as_str),
        source: answer.source,
        upstream: answer.upstream,
        started,
        facts,
    };
    let metrics = Arc::clone(&app.mirror.metrics);
    Ok(response.map(|b| Logged::new(b, info, metrics).holding(in_flight)))
}

/// Header carrying a request's id: kept from the client (or a proxy in front) when usable,
/// else made here, and always echoed in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the `X-Request-Id` sent, when it is 1 to 128 characters of letters,
/// digits and `-_.:`, else a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map_or_else(new_request_id, str::to_owned)
}

/// A new request id: 32 hex digits, a random prefix fixed for the process and a counter
/// (unique without a random draw per request, which costs a system call).
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Into a buffer on the stack: `format!("{:016x}")` (padding through the formatter) and
    // `hex::encode` (an iterator collected char by char) were each a percent of a cached
    // manifest GET's CPU.
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&prefix.to_be_bytes());
    bytes[8..].copy_from_slice(&count.to_be_bytes());
    let mut digits = [0u8; 32];
    // Cannot fail: 32 digits for 16 bytes.
    let _ = hex::encode_to_slice(bytes, &mut digits);
    String::from_utf8_lossy(&digits).into_owned()
}

/// The `User-Agent`, at most 200 characters of printable ASCII (it goes into log lines).
fn user_agent(headers: &http::HeaderMap) -> String {
    let Some(agent) = headers.get(header::USER_AGENT) else {
        return "-".to_owned();
    };
    let bytes = agent.as_bytes();
    if bytes.len() <= 200 && bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        // The usual agent, copied as it is.
        return String::from_utf8_lossy(bytes).into_owned();
    }
    bytes
        .iter()
        .take(200)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

/// A request whose handler has not answered yet; logged as cancelled if dropped so.
struct Unanswered {
    method: Method,
    path: String,
    started: Instant,
    armed: bool,
    facts: body::RequestFacts,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // A handler that panicked is a 500 the client never saw; otherwise the client left.
        let panicked = std::thread::panicking();
        let facts = &self.facts;
        tracing::info!(
            request_id = %facts.request_id,
            client = %body::OrDash(facts.client),
            user = facts.user.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            route = facts.route,
            status = if panicked { 500 } else { 499 },
            bytes = 0,
            duration_ms = body::millis(self.started.elapsed()),
            user_agent = %facts.user_agent,
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

async fn dispatch(
    app: &App,
    request: Request<Incoming>,
    conn: &ConnInfo,
    facts: &mut body::RequestFacts,
) -> Answer {
    let (parts, body) = request.into_parts();
    let client = app.client_addr(conn, &parts.headers);
    facts.client = Some(client);
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
    facts.route = route.kind();
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
    if let auth::Identity::User(user) = &identity {
        facts.user = Some(user.clone());
    }
    if route == Route::Token {
        return Box::pin(access::token(app, &parts, conn, client, &query)).await;
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
            Answer::plain(Box::pin(status::ready(&app.readiness, &app.mirror)).await)
        }
        (Route::Metrics, _) if read => Answer::plain(status::metrics_response(&app.mirror)),
        (Route::PeerBlob { digest }, Method::GET) => Box::pin(blobs::peer_get(&ctx, &digest)).await,
        (Route::Catalog, _) if read => Box::pin(catalog::list(&ctx)).await,
        (Route::Search, _) if read => Box::pin(search::search(&ctx)).await,
        (Route::Ui(page), _) if read => Box::pin(ui::page(&ctx, page)).await,
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
    // Every handler but the manifest GET is boxed: a future is as large as its largest branch,
    // and hyper moves each request's future into place; the manifest GET, the request every
    // node of a cluster sends on every pull, stays small and allocation-free that way.
    match (route, method) {
        (Route::Manifest { reference, .. }, _) if read => {
            manifests::get(ctx, target, &reference).await
        }
        (Route::Manifest { reference, .. }, Method::PUT) => {
            Box::pin(manifests::put(ctx, target, &reference, body)).await
        }
        (Route::Manifest { reference, .. }, Method::DELETE) => {
            Box::pin(manifests::delete(ctx, target, &reference)).await
        }
        (Route::Blob { digest, .. }, _) if read => Box::pin(blobs::get(ctx, target, &digest)).await,
        (Route::Blob { digest, .. }, Method::DELETE) => {
            Box::pin(blobs::delete(ctx, target, &digest)).await
        }
        (Route::Upload { session: None, .. }, Method::POST) => {
            Box::pin(uploads::start(ctx, target, body)).await
        }
        (
            Route::Upload {
                session: Some(id), ..
            },
            m,
        ) => Box::pin(uploads::session(ctx, target, &id, m, body)).await,
        (Route::TagsList { .. }, _) if read => Box::pin(tags::list(ctx, target)).await,
        (Route::Referrers { digest, .. }, _) if read => {
            Box::pin(referrers::list(ctx, target, &digest)).await
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
        assert_eq!(a[..16], b[..16], "one prefix per process");
    }

    #[test]
    fn user_agents_are_printable_ascii_and_at_most_200_characters() {
        let agent = |value: &[u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::USER_AGENT, HeaderValue::from_bytes(value).unwrap());
            user_agent(&headers)
        };
        assert_eq!(user_agent(&http::HeaderMap::new()), "-");
        assert_eq!(agent(b"containerd/v2.0.0"), "containerd/v2.0.0");
        assert_eq!(agent(b"a\tb\x80c"), "a?b?c");
        assert_eq!(agent(&[b'x'; 300]).len(), 200);
        let long = [b"\x80".as_slice(), &[b'x'; 300]].concat();
        assert_eq!(agent(&long), format!("?{}", "x".repeat(199)));
    }
}

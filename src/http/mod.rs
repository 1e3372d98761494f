//! The HTTP server: a hyper service that parses each request into a [`routes::Route`], hands it
//! to a thin handler, and maps errors to OCI error JSON.

pub(crate) mod auth;
mod blobs;
pub(crate) mod body;
mod catalog;
pub(crate) mod errors;
pub(crate) mod limits;
mod manifests;
mod paging;
mod referrers;
mod request_body;
pub mod routes;
mod search;
pub(crate) mod server;
mod tags;
pub(crate) mod ui;
pub(crate) mod uploads;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use body::{Body, LogInfo, Logged, full};
use errors::ApiError;
use routes::{Query, Route};

use crate::oci::ErrorCode;
use crate::proxy::Mirror;
use crate::proxy::{CacheResult, Source, Target};

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
        Answer::plain(e.into_response())
    }
}

/// The HTTP layer's state: the mirror and the policies that belong to the API surface.
pub struct App {
    /// The registry logic.
    pub mirror: Arc<Mirror>,
    /// Who may pull, push and delete.
    pub auth: auth::Authenticator,
    /// Whether DELETE is allowed.
    pub delete_enabled: bool,
    /// Limits on pushes.
    pub uploads: crate::store::UploadLimits,
    /// Signs upload sessions so that every replica continues them.
    pub upload_signer: uploads::UploadSigner,
    /// Where clients reach the mirror (`[server] public_url`), for the token realm.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<crate::config::IpNet>,
    /// How long a pushed body may send nothing (`[server] body_idle_timeout`).
    pub body_idle_timeout: std::time::Duration,
    /// One permit per blob body being sent (`[server] max_blob_readers`).
    pub blob_readers: Arc<tokio::sync::Semaphore>,
    /// How long a blob GET waits for a permit (`[server] send_timeout`).
    pub blob_reader_wait: std::time::Duration,
    /// `/readyz`'s probe, shared.
    pub readiness: Readiness,
}

impl App {
    fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the peer's, or, behind a trusted proxy, the nearest address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    fn client_addr(&self, conn: &ConnInfo, headers: &http::HeaderMap) -> std::net::IpAddr {
        let mut addr = conn.peer.ip();
        if !self.is_trusted_proxy(addr) {
            return addr;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            let Ok(ip) = hop.trim().parse() else {
                break;
            };
            addr = ip;
            if !self.is_trusted_proxy(ip) {
                break;
            }
        }
        addr
    }

    /// `scheme://host[:port]` as clients reach the mirror: `public_url` when set; else the
    /// connection's scheme and the `Host` (HTTP/1) or `:authority` (HTTP/2), or what a trusted
    /// proxy forwarded. A host that is not a plain host name or address is not used.
    fn external_base(&self, conn: &ConnInfo, parts: &http::request::Parts) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let trusted = self.is_trusted_proxy(conn.peer.ip());
        let forwarded = |name: &str| {
            trusted
                .then(|| parts.headers.get(name)?.to_str().ok())
                .flatten()
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let scheme = match forwarded("x-forwarded-proto") {
            Some(p @ ("http" | "https")) => p,
            _ if conn.tls => "https",
            _ => "http",
        };
        let host = forwarded("x-forwarded-host")
            .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .filter(|h| valid_host(h))
            .map_or_else(|| conn.local.to_string(), str::to_owned);
        format!("{scheme}://{host}")
    }
}

/// Whether `host` is a host name or address with an optional port, and nothing else (it goes
/// into a header).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Facts about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: std::net::SocketAddr,
    /// The address the connection was accepted on.
    pub local: std::net::SocketAddr,
    /// Whether it is TLS.
    pub tls: bool,
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
    /// Who sent the request.
    pub identity: auth::Identity,
    /// The client's address (behind trusted proxies: the forwarded one).
    pub client: std::net::IpAddr,
}

impl Ctx<'_> {
    /// The owner of what this client creates (upload sessions).
    pub fn owner(&self) -> String {
        self.identity.owner(self.client)
    }
}

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

/// What a request needs, in the authorization policy's terms; `None` for what is always
/// allowed (metrics, health, the token endpoint).
fn need_of<'t>(
    route: &Route,
    method: &Method,
    target: Option<&'t Target>,
) -> Option<auth::Need<'t>> {
    use crate::config::Action;
    let read = *method == Method::GET || *method == Method::HEAD;
    // Only what the API offers needs a permission; anything else is answered 405 as it is.
    let action = match (route, method) {
        // Peer requests carry their own signature (checked by the handler).
        (
            Route::Metrics | Route::Health | Route::Ready | Route::Token | Route::PeerBlob { .. },
            _,
        ) => {
            return None;
        }
        (Route::Base, _) => return Some(auth::Need::Ping),
        (Route::Catalog | Route::Search | Route::Ui(_), _) => return Some(auth::Need::Read),
        (Route::V1Ping, _) => return None,
        (Route::Upload { .. }, _) => Action::Push,
        (Route::Manifest { .. }, &Method::PUT) => Action::Push,
        (Route::Manifest { .. } | Route::Blob { .. }, &Method::DELETE) => Action::Delete,
        _ if read => Action::Pull,
        _ => return None,
    };
    let target = target?;
    Some(auth::Need::Repository {
        name: target.canonical().as_str(),
        action,
    })
}

/// The repository a route is about.
fn route_name(route: &Route) -> Option<&crate::oci::RepoName> {
    match route {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. }
        | Route::TagsList { name } => Some(name),
        _ => None,
    }
}

/// Resolves the repository a route names, once: what access rules check and every handler
/// acts on.
fn resolve_target(app: &App, route: &Route, query: &Query) -> Result<Option<Target>, ApiError> {
    let Some(name) = route_name(route) else {
        return Ok(None);
    };
    Target::resolve(&app.mirror.upstreams, query.ns.as_deref(), name)
        .map(Some)
        .map_err(|e| errors::route_error(&e))
}

/// Applies the authorization policy to `target`; who the client is, or the error to answer.
async fn authorize(
    app: &App,
    route: &Route,
    target: Option<&Target>,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    client: std::net::IpAddr,
    query: &Query,
) -> Result<auth::Identity, ApiError> {
    let Some(need) = need_of(route, &parts.method, target) else {
        return Ok(auth::Identity::Anonymous);
    };
    let sent = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let identity = app
        .auth
        .authorize(sent, client, &need)
        .await
        .map_err(|refusal| match (route, refusal) {
            // Browsers answer a Basic challenge with a login dialog, not a Bearer one.
            (Route::Ui(_), auth::Refusal::Invalid | auth::Refusal::Required) => {
                ApiError::new(ErrorCode::Unauthorized, "log in to see the mirror").with_header(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"regmirror\", charset=\"UTF-8\"".into(),
                )
            }
            (_, refusal) => refused(app, conn, parts, refusal, target, &need),
        })?;
    // A mount also reads the repository it mounts from, in the same namespace.
    if let (Route::Upload { .. }, Some(from)) = (route, mount_source(app, query)?) {
        let pull = auth::Need::Repository {
            name: from.canonical().as_str(),
            action: crate::config::Action::Pull,
        };
        app.auth
            .authorize(sent, client, &pull)
            .await
            .map_err(|refusal| refused(app, conn, parts, refusal, Some(&from), &pull))?;
    }
    Ok(identity)
}

/// The repository a cross-repository mount names in `from=`, resolved as the target is.
fn mount_source(app: &App, query: &Query) -> Result<Option<Target>, ApiError> {
    let Some(from) = query.from.as_deref() else {
        return Ok(None);
    };
    let Ok(from) = from.parse::<crate::oci::RepoName>() else {
        return Ok(None);
    };
    Target::resolve(&app.mirror.upstreams, query.ns.as_deref(), &from)
        .map(Some)
        .map_err(|e| errors::route_error(&e))
}

/// The answer to a refused request: 401 with a challenge pointing at our token endpoint,
/// 403, or 429 for a throttled login.
fn refused(
    app: &App,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    refusal: auth::Refusal,
    target: Option<&Target>,
    need: &auth::Need<'_>,
) -> ApiError {
    let message = match refusal {
        auth::Refusal::Denied(message) => return ApiError::new(ErrorCode::Denied, message),
        auth::Refusal::Throttled => {
            return ApiError::new(
                ErrorCode::TooManyRequests,
                "too many failed logins; try again in a minute",
            )
            .with_header(header::RETRY_AFTER, "60".into());
        }
        auth::Refusal::Invalid => "invalid credentials",
        auth::Refusal::Required => "authentication required",
    };
    let mut challenge = format!(
        "Bearer realm=\"{}/token\",service=\"regmirror\"",
        app.external_base(conn, parts)
    );
    if let (Some(target), auth::Need::Repository { action, .. }) = (target, need) {
        let name = target.sent();
        let actions = match action {
            crate::config::Action::Pull => "pull",
            crate::config::Action::Push => "pull,push",
            crate::config::Action::Delete => "delete",
        };
        challenge.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
    }
    ApiError::new(ErrorCode::Unauthorized, message).with_header(header::WWW_AUTHENTICATE, challenge)
}

/// `GET /token`: a Bearer token for the Basic credentials sent (or an anonymous one), granting
/// what the identity may do of the requested scopes.
async fn token(
    app: &App,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    client: std::net::IpAddr,
    query: &Query,
) -> Answer {
    if !app.auth.has_users() {
        return ApiError::new(ErrorCode::Unsupported, "authentication is not configured").into();
    }
    let sent = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // A scope names a repository as a client would (no `ns`): its grant holds the one name
    // that repository resolves to, so it grants nothing in another namespace.
    let canonical = |scope_name: &str| {
        let name = scope_name.parse::<crate::oci::RepoName>().ok()?;
        let target = Target::resolve(&app.mirror.upstreams, None, &name).ok()?;
        Some(target.canonical().to_string())
    };
    match app
        .auth
        .issue_token(sent, client, &query.scope, canonical)
        .await
    {
        Ok(token) => {
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": auth::TOKEN_LIFETIME.as_secs(),
            });
            Answer::plain(text_response(body.to_string(), "application/json"))
        }
        Err(refusal) => refused(app, conn, parts, refusal, None, &auth::Need::Ping).into(),
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
    let target = match resolve_target(app, &route, &query) {
        Ok(target) => target,
        Err(e) => return e.into(),
    };
    let identity = match authorize(app, &route, target.as_ref(), &parts, conn, client, &query).await
    {
        Ok(identity) => identity,
        Err(e) => return e.into(),
    };
    if route == Route::Token {
        return token(app, &parts, conn, client, &query).await;
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
        (Route::Base, _) if read => Answer::plain(base_response()),
        (Route::Health, _) if read => Answer::plain(text_response("ok\n", "text/plain")),
        (Route::Ready, _) if read => ready(app).await,
        (Route::Metrics, _) if read => Answer::plain(metrics_response(&app.mirror)),
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

/// `GET /readyz`: 200 when the store is writable, else 503.
async fn ready(app: &App) -> Answer {
    match app
        .readiness
        .check(&app.mirror.store, &app.mirror.metrics.readiness_probes)
        .await
    {
        Ok(()) => Answer::plain(text_response("ready\n", "text/plain")),
        Err(e) => {
            let mut response = text_response(format!("store not writable: {e}\n"), "text/plain");
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Answer::plain(response)
        }
    }
}

/// How long a readiness probe's answer is reused: `/readyz` is anonymous, and each probe
/// writes, reads and deletes an object in the store.
pub const READINESS_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The last readiness probe of the store, shared by every `/readyz` within
/// [`READINESS_PROBE_EVERY`]; one probe at a time.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// Whether the store is writable, probed at most every [`READINESS_PROBE_EVERY`].
    pub async fn check(
        &self,
        store: &crate::store::Store,
        probes: &prometheus::IntCounter,
    ) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < READINESS_PROBE_EVERY
        {
            return result.clone();
        }
        probes.inc();
        let result = store.check_writable().await.map_err(|e| e.to_string());
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// `GET /metrics`, with the store gauges read at scrape time.
fn metrics_response(mirror: &Mirror) -> Response<Body> {
    let (bytes, blobs) = mirror.store.usage();
    let m = &mirror.metrics;
    m.store_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    m.store_blobs.set(i64::try_from(blobs).unwrap_or(i64::MAX));
    m.uploads_bytes
        .set(i64::try_from(mirror.store.uploads_bytes()).unwrap_or(i64::MAX));
    if let Some(hot) = mirror.store.hot_cache_stats() {
        // The cache counts; the counters catch up at each scrape.
        m.hot_cache_hits
            .inc_by(hot.hits.saturating_sub(m.hot_cache_hits.get()));
        m.hot_cache_misses
            .inc_by(hot.misses.saturating_sub(m.hot_cache_misses.get()));
        m.hot_cache_bytes
            .set(i64::try_from(hot.bytes).unwrap_or(i64::MAX));
        m.hot_cache_max_bytes
            .set(i64::try_from(hot.capacity).unwrap_or(i64::MAX));
    }
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

//! The HTTP client for one upstream registry: builds `/v2/` URLs, authenticates, bounds every
//! request in time and size, records metrics, and turns responses into typed results, so that
//! nothing above this module reads an upstream header.
//!
//! Trust: the upstream may be broken or hostile. Response headers must come within
//! `response_timeout`; manifests, tag lists and token answers must arrive whole within
//! `body_timeout` and below a size cap. Credentials go only to the upstream's own origin and
//! to the token realm a challenge *from that origin* named; a challenge from a redirect target
//! (a blob CDN) is never answered and never replaces the upstream's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::UpstreamError;
use super::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use crate::byte_stream::ByteStream;
use crate::cluster::RateLimit;
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName, media};

/// The largest manifest accepted from an upstream.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The largest tag list accepted from an upstream (tens of thousands of tags).
pub const MAX_TAG_LIST_BYTES: usize = 8 * 1024 * 1024;

/// The largest token endpoint answer accepted.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// At most this many referrers of one manifest are taken from an upstream's list.
pub const MAX_REFERRERS: usize = 16;

/// After the upstream failed to answer (a timeout, a refused or broken connection), cached
/// tags are served stale without asking it again for this long, so that every pull does not
/// wait out another timeout.
pub const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(30);

/// The longest a token is cached, whatever lifetime the token endpoint claims.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What an upstream `HEAD` of a manifest says.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when sent and valid.
    pub digest: Option<Digest>,
    /// The manifest's media type, from `Content-Type`.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest as an upstream sent it, read whole (at most [`MAX_MANIFEST_BYTES`]).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its media type: `Content-Type`, else guessed from the document.
    pub media_type: String,
    /// The digest the upstream claims for it (`Docker-Content-Digest`).
    pub declared_digest: Option<Digest>,
}

/// One page of an upstream tag list.
#[derive(Debug, Clone)]
pub struct TagPage {
    /// The tags.
    pub tags: Vec<String>,
    /// Whether the upstream said more follow (`Link`).
    pub more: bool,
}

/// One `docker search` result.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SearchHit {
    /// The repository name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Stars on the upstream.
    #[serde(default)]
    pub star_count: u64,
    /// An official image.
    #[serde(default)]
    pub is_official: bool,
    /// An automated build.
    #[serde(default)]
    pub is_automated: bool,
}

/// While an upstream keeps failing, how often a failure is logged as a WARN again.
const FAILURE_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The largest search answer accepted from an upstream.
const MAX_SEARCH_BYTES: usize = 1024 * 1024;

/// A client for one configured upstream.
pub struct UpstreamClient {
    config: UpstreamConfig,
    password: Option<String>,
    http: reqwest::Client,
    tokens: TokenCache,
    metrics: Arc<Metrics>,
    offline: bool,
    /// `immutable_tags`, each anchored to the whole tag.
    immutable: regex::RegexSet,
    /// The last failure talking to the upstream, and when (for the status page).
    last_error: std::sync::Mutex<Option<(std::time::SystemTime, String)>>,
    /// Until when the upstream counts as unreachable (see [`UNAVAILABLE_BACKOFF`]).
    unreachable_until: std::sync::Mutex<Option<Instant>>,
    /// The newest rate limit the upstream announced to this replica, or another replica did.
    rate_limit: std::sync::Mutex<Option<RateLimit>>,
}

impl UpstreamClient {
    /// Creates the client for `config`.
    /// With `offline`, every request fails with [`UpstreamError::Offline`] before any I/O.
    pub fn new(
        config: UpstreamConfig,
        offline: bool,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, UpstreamError> {
        // Redirects (blob CDNs) are followed, but never to an internal address that is not
        // the upstream's own or allowed (see `destinations`); reqwest drops Authorization when
        // the host changes, so our upstream credentials never reach the CDN.
        let destinations = Arc::new(super::destinations::Destinations::new(
            &config.name,
            &config.url,
            &config.redirect_allow,
        ));
        let checked = Arc::clone(&destinations);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match checked.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        crate::signing::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .dns_resolver(Arc::new(super::destinations::GuardedResolver(destinations)));
        if let Some(path) = &config.ca_file {
            let invalid = |message: String| {
                UpstreamError::Config(format!(
                    "upstream \"{}\".ca_file = \"{}\": {message}",
                    config.name,
                    path.display()
                ))
            };
            let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(invalid("no certificate in the file".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            UpstreamError::Config(format!("upstream \"{}\": {}", config.name, error_chain(&e)))
        })?;
        let immutable = regex::RegexSet::new(
            config
                .immutable_tags
                .iter()
                .map(|pattern| format!("^(?:{pattern})$")),
        )
        .map_err(|e| {
            UpstreamError::Config(format!("upstream \"{}\".immutable_tags: {e}", config.name))
        })?;
        Ok(UpstreamClient {
            immutable,
            last_error: std::sync::Mutex::new(None),
            unreachable_until: std::sync::Mutex::new(None),
            rate_limit: std::sync::Mutex::new(None),
            password: config
                .resolved_password()
                .map_err(|e| UpstreamError::Config(e.to_string()))?,
            config,
            http,
            tokens: TokenCache::default(),
            metrics,
            offline,
        })
    }

    /// The configured name (`docker.io`).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The newest rate limit known for this upstream.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate_limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `seen` as the upstream's rate limit if it is newer than what is known (another
    /// replica saw it: the replicas share one egress and one limit), and shows it in the
    /// `regmirror_upstream_ratelimit_*` gauges.
    pub fn learn_rate_limit(&self, seen: RateLimit) {
        {
            let mut known = self.rate_limit.lock().unwrap_or_else(|p| p.into_inner());
            if known.is_some_and(|k| k.seen_ms >= seen.seen_ms) {
                return;
            }
            *known = Some(seen);
        }
        let m = &self.metrics;
        m.ratelimit_limit
            .with_label_values(&[self.name()])
            .set(seen.limit);
        m.ratelimit_remaining
            .with_label_values(&[self.name()])
            .set(seen.remaining);
    }

    /// The last failure talking to the upstream (a network error, a timeout, a 5xx or 429),
    /// and when.
    pub fn last_error(&self) -> Option<(std::time::SystemTime, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the upstream failed to answer within the last [`UNAVAILABLE_BACKOFF`]: cached
    /// tags are then served stale at once instead of waiting for it again.
    pub fn recently_unreachable(&self) -> bool {
        self.unreachable_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether `tag` matches one of `immutable_tags` (the whole tag), so that once cached it
    /// is never revalidated.
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable.is_match(tag)
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v2/{path}",
            self.config.url.as_str().trim_end_matches('/')
        )
    }

    /// Whether `url` is on the upstream's own origin (scheme, host and port).
    fn is_own_origin(&self, url: &url::Url) -> bool {
        url.origin() == self.config.url.origin()
    }

    fn manifest_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(accept) = HeaderValue::from_str(&media::manifest_accept_header()) {
            headers.insert(header::ACCEPT, accept);
        }
        headers
    }

    /// `HEAD` of a manifest, asking for every manifest type.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let response = self
            .send(Method::HEAD, &url, repo, Self::manifest_headers())
            .await?;
        let headers = response.headers();
        Ok(ManifestHead {
            digest: header_str(headers, "docker-content-digest").and_then(|v| v.parse().ok()),
            media_type: header_str(headers, header::CONTENT_TYPE.as_str())
                .map(|v| media::manifest_media_type(Some(v), b"")),
            size: declared_length(headers),
        })
    }

    /// `GET` of a manifest, asking for every manifest type, read whole within `body_timeout`
    /// and at most [`MAX_MANIFEST_BYTES`].
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, UpstreamError> {
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let response = self
            .send(Method::GET, &url, repo, Self::manifest_headers())
            .await?;
        let headers = response.headers();
        let declared_digest =
            header_str(headers, "docker-content-digest").and_then(|v| v.parse().ok());
        let content_type = header_str(headers, header::CONTENT_TYPE.as_str()).map(str::to_owned);
        let bytes = self
            .read_capped(response, MAX_MANIFEST_BYTES, "manifest")
            .await?;
        Ok(FetchedManifest {
            media_type: media::manifest_media_type(content_type.as_deref(), &bytes),
            bytes,
            declared_digest,
        })
    }

    /// `GET` of a blob, optionally from byte `from` on (to resume a cut-off body). The body is
    /// left to the caller, who bounds it by idle time and length.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<ByteStream, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Some(range) =
            from.and_then(|from| HeaderValue::from_str(&format!("bytes={from}-")).ok())
        {
            headers.insert(header::RANGE, range);
        }
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let response = self.send(Method::GET, &url, repo, headers).await?;
        // For a ranged request the body says where it starts (`Content-Range`); a `200`
        // ignored the range and starts at 0.
        Ok(ByteStream::from_response(response))
    }

    /// `HEAD` of a blob: its size, when the upstream declares it.
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let response = self
            .send(Method::HEAD, &url, repo, HeaderMap::new())
            .await?;
        Ok(declared_length(response.headers()))
    }

    /// `GET /v2/<repo>/tags/list` with the client's `n` and `last`, read whole within
    /// `body_timeout` and at most [`MAX_TAG_LIST_BYTES`].
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<TagPage, UpstreamError> {
        let mut url = url::Url::parse(&self.url(&format!("{repo}/tags/list")))
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(n) = n {
                query.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                query.append_pair("last", last);
            }
        }
        let url = url.as_str().trim_end_matches('?').to_owned();
        let response = self.send(Method::GET, &url, repo, HeaderMap::new()).await?;
        let more = response.headers().contains_key(header::LINK);
        let bytes = self
            .read_capped(response, MAX_TAG_LIST_BYTES, "tag list")
            .await?;
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let list: TagList = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Invalid(format!("tag list: {e}")))?;
        Ok(TagPage {
            tags: list.tags.unwrap_or_default(),
            more,
        })
    }

    /// `GET /v2/<repo>/referrers/<digest>?artifactType=<artifact_type>`: the digests of the
    /// manifests that name `digest` as their subject and are of that type, as the upstream
    /// lists them (at most [`MAX_REFERRERS`]). An upstream without the referrers API answers
    /// 404: `Err(NotFound)`. Read whole within `body_timeout`, at most [`MAX_TAG_LIST_BYTES`].
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: &str,
    ) -> Result<Vec<Digest>, UpstreamError> {
        let mut url = url::Url::parse(&self.url(&format!("{repo}/referrers/{digest}")))
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("artifactType", artifact_type);
        let response = self
            .send(Method::GET, url.as_str(), repo, HeaderMap::new())
            .await?;
        let bytes = self
            .read_capped(response, MAX_TAG_LIST_BYTES, "referrers list")
            .await?;
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Listed>,
        }
        #[derive(serde::Deserialize)]
        struct Listed {
            digest: String,
            #[serde(rename = "artifactType", default)]
            artifact_type: Option<String>,
        }
        let index: Index = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Invalid(format!("referrers list: {e}")))?;
        // An upstream that ignores the filter lists everything: filter here too.
        Ok(index
            .manifests
            .into_iter()
            .filter(|m| m.artifact_type.as_deref() == Some(artifact_type))
            .filter_map(|m| m.digest.parse().ok())
            .take(MAX_REFERRERS)
            .collect())
    }

    /// `GET <search_url>/v1/search?q=<query>&n=<n>`: the upstream's `docker search` results;
    /// `Ok(None)` when the upstream has no `search_url`. Anonymous, bounded like a tag list.
    pub async fn search(
        &self,
        query: &str,
        n: u32,
    ) -> Result<Option<Vec<SearchHit>>, UpstreamError> {
        let Some(base) = &self.config.search_url else {
            return Ok(None);
        };
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        let mut url = url::Url::parse(&format!(
            "{}/v1/search",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("q", query)
            .append_pair("n", &n.to_string());
        let response = classify(self.timed(&Method::GET, self.http.get(url)).await?)?;
        let bytes = self
            .read_capped(response, MAX_SEARCH_BYTES, "search answer")
            .await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<SearchHit>,
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Invalid(format!("search answer: {e}")))?;
        Ok(Some(answer.results))
    }

    /// Reads a whole small body: at most `limit` bytes, within `body_timeout`.
    async fn read_capped(
        &self,
        mut response: Response,
        limit: usize,
        what: &'static str,
    ) -> Result<Bytes, UpstreamError> {
        let too_large = UpstreamError::TooLarge {
            what,
            limit: limit as u64,
        };
        if declared_length(response.headers()).is_some_and(|len| len > limit as u64) {
            return Err(too_large);
        }
        let read = async {
            let mut body = BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| UpstreamError::Network(error_chain(&e)))?
            {
                if body.len() + chunk.len() > limit {
                    return Err(too_large);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        match tokio::time::timeout(self.config.body_timeout, read).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(upstream = self.name(), what, timeout = ?self.config.body_timeout, "upstream body too slow; giving up");
                Err(UpstreamError::Timeout)
            }
        }
    }

    /// Sends a request, answering one authentication challenge of the upstream's own, and
    /// maps the status.
    async fn send(
        &self,
        method: Method,
        url: &str,
        repo: &RepoName,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        let scope = format!("repository:{repo}:pull");
        let mut response = self
            .send_once(method.clone(), url, &scope, headers.clone(), false)
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            if !self.is_own_origin(response.url()) {
                // A redirect target (a CDN) wants credentials: ours are not for it, and its
                // challenge must not replace the upstream's.
                tracing::warn!(
                    upstream = self.name(),
                    host = response.url().host_str().unwrap_or("-"),
                    "a redirect target answered 401; not sending it credentials"
                );
                return Err(UpstreamError::Invalid(
                    "a redirect target of the upstream demanded authentication".into(),
                ));
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            if let Some(challenge) = challenge {
                self.check_realm(&challenge)?;
                let known = self.tokens.challenge();
                self.tokens.set_challenge(challenge.clone());
                // Retry once, unless we already answered this very challenge with what we have
                // and were refused anyway.
                let already_answered =
                    known.as_ref() == Some(&challenge) && matches!(challenge, Challenge::Basic);
                if !already_answered {
                    response = self.send_once(method, url, &scope, headers, true).await?;
                }
            }
        }
        classify(response)
    }

    /// A token realm must be an http(s) URL, and not plain HTTP when the upstream is HTTPS
    /// (our credentials would cross the network in clear text).
    fn check_realm(&self, challenge: &Challenge) -> Result<(), UpstreamError> {
        let Challenge::Bearer { realm, .. } = challenge else {
            return Ok(());
        };
        let url = url::Url::parse(realm)
            .map_err(|e| UpstreamError::Invalid(format!("token realm {realm:?}: {e}")))?;
        let refuse = |why: &str| {
            tracing::warn!(upstream = self.name(), %realm, why, "refusing the upstream's token realm");
            Err(UpstreamError::Invalid(format!(
                "token realm {realm:?} refused: {why}"
            )))
        };
        match (url.scheme(), self.config.url.scheme()) {
            ("https", _) | ("http", "http") => Ok(()),
            ("http", _) => refuse("plain HTTP for an HTTPS upstream"),
            _ => refuse("not an http(s) URL"),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        headers: HeaderMap,
        fresh_token: bool,
    ) -> Result<Response, UpstreamError> {
        let mut request = self.http.request(method.clone(), url).headers(headers);
        match self.tokens.challenge() {
            Some(Challenge::Bearer { realm, service }) => {
                let token = match self.tokens.get(scope) {
                    Some(token) if !fresh_token => Some(token),
                    _ => self.fetch_token(&realm, service.as_deref(), scope).await?,
                };
                if let Some(token) = token {
                    request = request.bearer_auth(token);
                }
            }
            Some(Challenge::Basic) => {
                if let Some(user) = &self.config.username {
                    request = request.basic_auth(user, self.password.as_deref());
                }
            }
            None => {}
        }
        self.timed(&method, request).await
    }

    /// Sends `request`, waiting at most `response_timeout` for the response headers.
    async fn timed(
        &self,
        method: &Method,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        let started = Instant::now();
        let limit = self.config.response_timeout;
        let result = match tokio::time::timeout(limit, request.send()).await {
            Ok(result) => result.map_err(network_error),
            Err(_) => {
                tracing::warn!(upstream = self.name(), %method, timeout = ?limit, "upstream sent no response headers in time");
                Err(UpstreamError::Timeout)
            }
        };
        self.record(method, started, &result);
        result
    }

    /// Asks the token endpoint for a token for `scope`; `None` when it gives none.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Option<String>, UpstreamError> {
        let mut url = url::Url::parse(realm)
            .map_err(|e| UpstreamError::Invalid(format!("token realm {realm:?}: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.http.get(url);
        if let Some(user) = &self.config.username {
            request = request.basic_auth(user, self.password.as_deref());
        }
        let response = self.timed(&Method::GET, request).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(UpstreamError::Unauthorized);
            }
            StatusCode::TOO_MANY_REQUESTS => return Err(UpstreamError::TooManyRequests),
            s => return Err(UpstreamError::Status(s.as_u16())),
        }
        let bytes = self
            .read_capped(response, MAX_TOKEN_BYTES, "token answer")
            .await?;
        let body: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
        Ok(body.into_token().map(|(token, lifetime)| {
            self.tokens
                .put(scope, token.clone(), lifetime.min(MAX_TOKEN_LIFETIME));
            token
        }))
    }

    fn record(&self, method: &Method, started: Instant, result: &Result<Response, UpstreamError>) {
        // A closed set of labels: a hostile upstream cannot mint series with odd statuses.
        let status = match result {
            Ok(r) => match r.status().as_u16() {
                s @ (200 | 201 | 202 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308 | 400
                | 401 | 403 | 404 | 405 | 416 | 429 | 500 | 502 | 503 | 504) => s.to_string(),
                _ => "other".to_owned(),
            },
            Err(UpstreamError::Timeout) => "timeout".to_owned(),
            Err(_) => "error".to_owned(),
        };
        let failure = match result {
            Ok(r)
                if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                Some(format!("{method} answered HTTP {}", r.status().as_u16()))
            }
            Ok(_) => None,
            Err(e) => Some(format!("{method}: {e}")),
        };
        if let Some(failure) = failure {
            let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::SystemTime::now();
            // A WARN with the cause when failures start, and again every so often while they
            // go on; the failures in between are DEBUG, so an outage does not flood the log.
            let new_incident = last.as_ref().is_none_or(|(at, _)| {
                now.duration_since(*at)
                    .map_or(true, |ago| ago > FAILURE_WARN_EVERY)
            });
            if new_incident {
                tracing::warn!(upstream = self.name(), error = %failure, "upstream failing");
            } else {
                tracing::debug!(upstream = self.name(), error = %failure, "upstream failing");
            }
            *last = Some((now, failure));
        }
        // Unreachable (no answer at all) backs off; any answer, even an error status, means
        // the upstream is there.
        *self
            .unreachable_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = match result {
            Err(UpstreamError::Timeout | UpstreamError::Network(_)) => {
                Instant::now().checked_add(UNAVAILABLE_BACKOFF)
            }
            _ => None,
        };
        let m = &self.metrics;
        m.upstream_requests
            .with_label_values(&[self.name(), method.as_str(), &status])
            .inc();
        m.upstream_duration
            .with_label_values(&[self.name(), method.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Ok(response) = result {
            let gauge = |name: &str| {
                header_str(response.headers(), name)
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<i64>().ok())
            };
            if let (Some(limit), Some(remaining)) =
                (gauge("ratelimit-limit"), gauge("ratelimit-remaining"))
            {
                let seen_ms = crate::clock::now_ms();
                self.learn_rate_limit(RateLimit {
                    seen_ms,
                    limit,
                    remaining,
                });
            }
        }
    }
}

/// A header's value as text, if present and visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `Content-Length` header. (reqwest's `content_length()` reports the body's size hint,
/// which is 0 for a HEAD response.)
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.trim().parse().ok())
}

fn network_error(e: reqwest::Error) -> UpstreamError {
    if let Some(refused) = super::destinations::refused_in(&e) {
        tracing::warn!(error = %refused, "upstream destination refused");
        UpstreamError::DestinationRefused(refused)
    } else if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Network(error_chain(&e))
    }
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Maps an upstream status to success or an [`UpstreamError`].
fn classify(response: Response) -> Result<Response, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    Err(match status {
        StatusCode::NOT_FOUND => UpstreamError::NotFound,
        StatusCode::UNAUTHORIZED => UpstreamError::Unauthorized,
        StatusCode::FORBIDDEN => UpstreamError::Denied,
        StatusCode::TOO_MANY_REQUESTS => UpstreamError::TooManyRequests,
        StatusCode::RANGE_NOT_SATISFIABLE => UpstreamError::RangeNotSatisfiable,
        s => UpstreamError::Status(s.as_u16()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> UpstreamClient {
        let mut config = UpstreamConfig::docker_hub();
        config.url = url.parse().unwrap();
        UpstreamClient::new(config, false, Arc::new(Metrics::new())).unwrap()
    }

    fn bearer(realm: &str) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: None,
        }
    }

    #[test]
    fn token_realms_must_not_downgrade_to_plain_http() {
        let https = client("https://registry.example");
        assert!(
            https
                .check_realm(&bearer("https://auth.example/token"))
                .is_ok()
        );
        assert!(
            https
                .check_realm(&bearer("http://auth.example/token"))
                .is_err()
        );
        assert!(https.check_realm(&bearer("file:///etc/passwd")).is_err());
        assert!(https.check_realm(&bearer("not a url")).is_err());
        let http = client("http://127.0.0.1:5000");
        assert!(
            http.check_realm(&bearer("http://127.0.0.1:5000/token"))
                .is_ok()
        );
        assert!(http.check_realm(&Challenge::Basic).is_ok());
    }

    #[test]
    fn a_private_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let mut config = UpstreamConfig::docker_hub();
        config.ca_file = Some(empty);
        assert!(UpstreamClient::new(config.clone(), false, Arc::new(Metrics::new())).is_err());
        config.ca_file = Some(dir.path().join("missing.pem"));
        assert!(UpstreamClient::new(config, false, Arc::new(Metrics::new())).is_err());
    }
}

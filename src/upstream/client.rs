//! The HTTP client for one upstream registry: builds `/v2/` URLs, authenticates, records
//! metrics, and maps statuses to [`UpstreamError`].

use std::sync::Arc;
use std::time::Instant;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};

use super::UpstreamError;
use super::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference, RepoName, media};

/// A client for one configured upstream.
pub struct UpstreamClient {
    config: UpstreamConfig,
    password: Option<String>,
    http: reqwest::Client,
    tokens: TokenCache,
    metrics: Arc<Metrics>,
    offline: bool,
}

impl UpstreamClient {
    /// Creates the client for `config`.
    /// With `offline`, every request fails with [`UpstreamError::Offline`] before any I/O.
    pub fn new(
        config: UpstreamConfig,
        offline: bool,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, UpstreamError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
            // Redirects (blob CDNs) are followed; reqwest drops Authorization when the host
            // changes, so our upstream credentials never reach the CDN.
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
            .map_err(|e| UpstreamError::Network(e.to_string()))?;
        Ok(UpstreamClient {
            password: config.resolved_password(),
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

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v2/{path}",
            self.config.url.as_str().trim_end_matches('/')
        )
    }

    /// GET or HEAD of a manifest, asking for every manifest type.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Ok(accept) = HeaderValue::from_str(&media::manifest_accept_header()) {
            headers.insert(header::ACCEPT, accept);
        }
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        self.send(method, &url, repo, headers).await
    }

    /// GET or HEAD of a blob, optionally from byte `from` on (to resume a cut-off body).
    pub async fn blob(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
        from: Option<u64>,
    ) -> Result<Response, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Some(range) =
            from.and_then(|from| HeaderValue::from_str(&format!("bytes={from}-")).ok())
        {
            headers.insert(header::RANGE, range);
        }
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        self.send(method, &url, repo, headers).await
    }

    /// `GET /v2/<repo>/tags/list` with the client's `n` and `last`.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Response, UpstreamError> {
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
        self.send(Method::GET, &url, repo, HeaderMap::new()).await
    }

    /// Sends a request, answering one authentication challenge, and maps the status.
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
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            if let Some(challenge) = challenge {
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
        let started = Instant::now();
        let result = request.send().await;
        self.record(&method, started, &result);
        result.map_err(network_error)
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
        let started = Instant::now();
        let result = request.send().await;
        self.record(&Method::GET, started, &result);
        let response = result.map_err(network_error)?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(UpstreamError::Unauthorized);
            }
            StatusCode::TOO_MANY_REQUESTS => return Err(UpstreamError::TooManyRequests),
            s => return Err(UpstreamError::Status(s.as_u16())),
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
        Ok(body.into_token().map(|(token, lifetime)| {
            self.tokens.put(scope, token.clone(), lifetime);
            token
        }))
    }

    fn record(&self, method: &Method, started: Instant, result: &Result<Response, reqwest::Error>) {
        let status = match result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(_) => "error".to_owned(),
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
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<i64>().ok())
            };
            if let Some(limit) = gauge("ratelimit-limit") {
                m.ratelimit_limit
                    .with_label_values(&[self.name()])
                    .set(limit);
            }
            if let Some(remaining) = gauge("ratelimit-remaining") {
                m.ratelimit_remaining
                    .with_label_values(&[self.name()])
                    .set(remaining);
            }
        }
    }
}

fn network_error(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Network(error_chain(&e))
    }
}

/// The error and its causes on one line (reqwest's top-level message alone says little).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
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

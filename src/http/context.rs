//! What every handler is given and gives back: the HTTP layer's state ([`App`]), the parsed
//! request ([`Ctx`]) and the answer plus what its log line needs ([`Answer`]).

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use super::auth;
use super::body::Body;
use super::errors::ApiError;
use super::routes::Query;
use super::status::Readiness;
use super::uploads;
use crate::proxy::Mirror;
use crate::proxy::{CacheResult, Source};

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
    pub readiness: Arc<Readiness>,
}

impl App {
    fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the peer's, or, behind a trusted proxy, the nearest address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub(super) fn client_addr(
        &self,
        conn: &ConnInfo,
        headers: &http::HeaderMap,
    ) -> std::net::IpAddr {
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
    pub(super) fn external_base(&self, conn: &ConnInfo, parts: &http::request::Parts) -> String {
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
    /// The registry host clients pull from, as `docker pull` wants it (`mirror.example:5000`):
    /// from `public_url` when set, else the request's `Host`.
    pub fn pull_host(&self) -> String {
        if let Some(url) = &self.app.public_url
            && let Ok(url) = url::Url::parse(url)
            && let Some(host) = url.host_str()
        {
            return match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
        }
        self.headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| valid_host(h))
            .unwrap_or("localhost:5000")
            .to_owned()
    }

    /// Who did it, for audit lines: the user, or `anonymous`.
    pub fn actor(&self) -> &str {
        match &self.identity {
            auth::Identity::User(user) => user,
            auth::Identity::Anonymous => "anonymous",
        }
    }

    /// The owner of what this client creates (upload sessions).
    pub fn owner(&self) -> String {
        self.identity.owner(self.client)
    }
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

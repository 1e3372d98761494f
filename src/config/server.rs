//! `[server]`: the listener, TLS, timeouts and caps.

use super::*;

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Never contact any upstream: serve only what is cached.
    #[serde(default)]
    pub offline: bool,
    /// On SIGTERM/SIGINT, how long responses and downloads in flight may take to finish.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On SIGTERM/SIGINT, how long to go on serving first while `/readyz` answers 503, so that
    /// load balancers and Kubernetes Services stop sending new requests before the listener
    /// closes (a `preStop` sleep that works on every Kubernetes version and needs no shell).
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// PEM certificate chain; with `tls_key`, the mirror serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The URL clients reach the mirror at, when a TLS-terminating proxy sits in front of it
    /// (`https://registry.example`): the auth challenge's token realm is built from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<Url>,
    /// Addresses (`10.0.0.5`) or networks (`10.0.0.0/8`) of proxies whose `X-Forwarded-For`,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` headers are believed. Nobody else's are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpNet>,
    /// A client must send a request's whole header within this long once it started sending it.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and nothing received for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A pushed body (blob chunk or manifest) that sends nothing for this long is refused.
    #[serde(default = "default_body_idle_timeout", with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// A response whose client takes none of its bytes for this long (it stopped reading) is
    /// cut: its connection is closed and its file and buffers freed.
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub send_timeout: Duration,
    /// A TLS handshake must finish within this long.
    #[serde(default = "default_tls_handshake_timeout", with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// The most requests one HTTP/2 connection may have in flight at once.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// The most blob bodies (an open file or a fill being followed) sent at once, over every
    /// connection and stream together; further blob GETs wait for one to end.
    #[serde(default = "default_max_blob_readers")]
    pub max_blob_readers: usize,
    /// The most client connections served at once; further ones wait in the listen backlog.
    /// Unset: sized from the open-file limit (raised to its hard limit at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5000))
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_body_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_http2_max_streams() -> u32 {
    32
}
fn default_max_blob_readers() -> usize {
    1024
}
fn default_tls_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            offline: false,
            shutdown_timeout: default_shutdown_timeout(),
            shutdown_delay: Duration::ZERO,
            tls_cert: None,
            tls_key: None,
            public_url: None,
            trusted_proxies: Vec::new(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            body_idle_timeout: default_body_idle_timeout(),
            send_timeout: default_send_timeout(),
            tls_handshake_timeout: default_tls_handshake_timeout(),
            http2_max_streams: default_http2_max_streams(),
            max_blob_readers: default_max_blob_readers(),
            max_connections: None,
        }
    }
}

impl ServerConfig {
    /// Checks what serde cannot, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert".into(),
                "tls_cert and tls_key go together: set both or neither",
            ));
        }
        if let Some(url) = &self.public_url
            && (!matches!(url.scheme(), "http" | "https") || url.host_str().is_none())
        {
            return Err(invalid(
                "server.public_url".into(),
                "must be an http:// or https:// URL with a host, such as \"https://registry.example\"",
            ));
        }
        for (key, value) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.send_timeout", self.send_timeout),
            ("server.tls_handshake_timeout", self.tls_handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key.into(), "must be greater than zero"));
            }
        }
        if self.http2_max_streams == 0 {
            return Err(invalid(
                "server.http2_max_streams".into(),
                "must be at least 1",
            ));
        }
        if self.max_blob_readers == 0 {
            return Err(invalid(
                "server.max_blob_readers".into(),
                "must be at least 1",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(invalid(
                "server.max_connections".into(),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

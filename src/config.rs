//! `mirror.toml`: the settings, their defaults, and validation with messages that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

/// Everything wrong with a configuration, each naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type or format.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// The effective configuration could not be written out as TOML.
    #[error("cannot write the effective config as TOML: {0}")]
    Render(String),
    /// Values that parse but do not make sense together.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The key at fault, e.g. `upstream[1].default`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[storage]`.
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogConfig,
    /// `[auth]`: who may push (and pull).
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[upstream]]`: the registries the mirror may contact. When none is configured the mirror
    /// mirrors Docker Hub.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// `[cluster]`: what replicas sharing one bucket share besides it.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several replicas on one bucket acting as one registry. Its `Debug` hides the
/// secret.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The secret every replica shares: it signs tokens and upload sessions, so that any
    /// replica accepts what another issued. Never written back out. Without it (and without
    /// `secret_env`) each process makes a random one, which suits a single replica only.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub secret: Option<String>,
    /// An environment variable holding the secret (e.g. from a Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// Redis for cluster-wide coordination: one upstream fetch per blob for the whole
    /// cluster, and changes (tags, deletes) announced to every replica at once. A password in
    /// it is never shown (`check-config`, logs, pages).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "redacted_url"
    )]
    pub redis_url: Option<String>,
    /// An environment variable holding the Redis URL, so that its password stays out of the
    /// config file (e.g. from a Kubernetes Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_env: Option<String>,
    /// How the other replicas reach this one (`http://<pod-ip>:5000`), to read a fill it leads.
    /// Default: `http://` + the listen address, or `http://$POD_IP:<port>` when the listen
    /// address is unspecified and `POD_IP` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<Url>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("secret", &self.secret.as_ref().map(|_| HIDDEN))
            .field("secret_env", &self.secret_env)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_url_env", &self.redis_url_env)
            .field("advertise_url", &self.advertise_url)
            .finish()
    }
}

/// A secret given in the config (`value`) or in the environment variable named by `env`
/// (`<key>_env`): the value when set, else the variable's content. A variable that is named but
/// not set is an error naming `<key>_env` and the variable, everywhere: a secret the operator
/// pointed at must be there, never silently replaced by nothing. `None` when neither is set.
pub fn resolve_secret(
    key: &str,
    value: Option<&String>,
    env: Option<&String>,
) -> Result<Option<String>, ConfigError> {
    match (value, env) {
        (Some(value), _) => Ok(Some(value.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                key: format!("{key}_env"),
                message: format!("the environment variable {var} is not set"),
            }),
        (None, None) => Ok(None),
    }
}

/// The fewest random bytes a cluster secret must hold: it signs tokens any replica accepts.
pub const MIN_CLUSTER_SECRET: usize = 32;

/// How an operator makes a cluster secret.
pub const SECRET_COMMAND: &str = "openssl rand -hex 32";

/// The bytes of a cluster secret written as hex or base64 of at least [`MIN_CLUSTER_SECRET`]
/// random bytes; why not, otherwise. Placeholders, words, repeated characters and other values
/// with too few distinct bytes are refused: whoever knows the secret can mint any token.
pub fn parse_cluster_secret(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let text = text.trim();
    let is_hex = !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit());
    let bytes = if is_hex {
        hex::decode(text).ok()
    } else {
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines.iter().find_map(|e| e.decode(text).ok())
    };
    let hint = format!("generate one with `{SECRET_COMMAND}`");
    let Some(bytes) = bytes else {
        return Err(format!(
            "must be at least {MIN_CLUSTER_SECRET} random bytes written as hex or base64 ({hint})"
        ));
    };
    if bytes.len() < MIN_CLUSTER_SECRET {
        return Err(format!(
            "holds {} bytes; it must hold at least {MIN_CLUSTER_SECRET} random bytes ({hint})",
            bytes.len()
        ));
    }
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 16 {
        return Err(format!(
            "is not random: {distinct} distinct byte values in {} bytes ({hint})",
            bytes.len()
        ));
    }
    Ok(bytes)
}

impl ClusterConfig {
    /// The shared secret from the config or the environment; `None` when neither is set.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let key = if self.secret.is_some() {
            "cluster.secret"
        } else {
            "cluster.secret_env"
        };
        let Some(secret) = resolve_secret(
            "cluster.secret",
            self.secret.as_ref(),
            self.secret_env.as_ref(),
        )?
        else {
            return Ok(None);
        };
        parse_cluster_secret(&secret)
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                key: key.into(),
                message,
            })
    }

    /// The Redis URL from the config or the environment; `None` when neither is set.
    pub fn redis_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(url) = resolve_secret(
            "cluster.redis_url",
            self.redis_url.as_ref(),
            self.redis_url_env.as_ref(),
        )?
        else {
            return Ok(None);
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            let key = if self.redis_url.is_some() {
                "cluster.redis_url"
            } else {
                "cluster.redis_url_env"
            };
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: "must be a redis:// or rediss:// URL".into(),
            });
        }
        Ok(Some(url))
    }
}

/// `url` with any password in it replaced by `***`, for output, logs and pages.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL we can take apart: show nothing of what may follow a scheme.
        Err(_) => url
            .split_once("://")
            .map_or_else(|| "***".to_owned(), |(scheme, _)| format!("{scheme}://***")),
    }
}

fn redacted_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

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

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network's address.
    pub addr: std::net::IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let bad = || format!("{s:?} is not an address or network such as \"10.0.0.0/8\"");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where blobs, manifests and tags live: `fs` (under `path`) or `s3` (in `[storage.s3]`).
    #[serde(default)]
    pub backend: BackendKind,
    /// `fs`: the store. `s3`: local staging for fills and uploads, and the hot cache.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// `s3` only: the cap of the local hot cache (least recently read copies go first).
    #[serde(default = "default_cache_size")]
    pub cache_size: ByteSize,
    /// `[storage.s3]`: the bucket, for `backend = "s3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    /// Upper bound of the in-memory index (tag records, blob sizes, small manifests), in MiB.
    #[serde(default = "default_index_mib")]
    pub index_memory_mib: u64,
    /// Whether DELETE of manifests, tags and blobs is allowed.
    #[serde(default)]
    pub delete: bool,
    /// The largest blob a client may push.
    #[serde(default = "default_max_upload")]
    pub max_upload_size: ByteSize,
    /// An upload session with no activity for this long is removed.
    #[serde(default = "default_upload_ttl", with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// The most bytes all unfinished uploads together may hold (they count in `max_size` too).
    #[serde(default = "default_max_uploads_size")]
    pub max_uploads_size: ByteSize,
    /// The most upload sessions one client (a user, or an anonymous address) may have open.
    #[serde(default = "default_max_upload_sessions")]
    pub max_upload_sessions_per_client: usize,
    /// `s3` only: the most chunks (`PATCH`es with data) one upload session may have. Each
    /// chunk is an object in the bucket that every later request of the session lists.
    #[serde(default = "default_max_upload_chunks")]
    pub max_upload_chunks: usize,
    /// A remote backend: whether a blob read from the bucket (by a replica without a local
    /// copy) completes a response only once this machine verified its digest (`true`), or as
    /// soon as its last byte arrives (`false`: the bucket's bytes are trusted as a presigned
    /// URL would hand them out, about 10% faster; a rotten object is still never kept).
    #[serde(default = "default_true")]
    pub verify_reads: bool,
    /// Size cap of the store; cached content is evicted (least recently accessed first) when
    /// a fill pushes the store over it. `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// Eviction frees space down to this fraction of `max_size`.
    #[serde(default = "default_low_water")]
    pub low_water: f64,
    /// How often the online GC runs.
    #[serde(default = "default_gc_interval", with = "humantime_serde")]
    pub gc_interval: Duration,
    /// GC spares anything written more recently than this (pushes and fills in progress).
    #[serde(default = "default_gc_grace", with = "humantime_serde")]
    pub gc_grace: Duration,
}

/// Where the store keeps its objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Files under `[storage] path`.
    #[default]
    Fs,
    /// An S3 bucket (AWS S3, Garage, MinIO, Ceph RGW...).
    S3,
}

/// `[storage.s3]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The endpoint of an S3-compatible store (`http://127.0.0.1:3900`); omit for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Every key goes under this prefix (several mirrors may share a bucket).
    #[serde(default)]
    pub prefix: String,
    /// The access key id; else `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The secret access key; else the variable `secret_access_key_env` names, else
    /// `AWS_SECRET_ACCESS_KEY`. Never written back out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub secret_access_key: Option<String>,
    /// An environment variable holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_env: Option<String>,
    /// Blob GETs answer `307` to a presigned URL of the bucket (manifests stay here).
    #[serde(default)]
    pub redirect: bool,
}

impl S3Config {
    /// The access key id and secret, from the config or the environment.
    pub fn credentials(&self) -> Result<(String, String), ConfigError> {
        let missing = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("storage.s3.{key}"),
            message: message.to_owned(),
        };
        let id = match &self.access_key_id {
            Some(id) => id.clone(),
            None => std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| {
                missing(
                    "access_key_id",
                    "not set, and AWS_ACCESS_KEY_ID is not in the environment",
                )
            })?,
        };
        let secret = match resolve_secret(
            "storage.s3.secret_access_key",
            self.secret_access_key.as_ref(),
            self.secret_access_key_env.as_ref(),
        )? {
            Some(secret) => secret,
            None => std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
                missing(
                    "secret_access_key",
                    "not set, nor secret_access_key_env, and AWS_SECRET_ACCESS_KEY is not in the environment",
                )
            })?,
        };
        Ok((id, secret))
    }
}

fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

fn default_cache_size() -> ByteSize {
    ByteSize(20 * 1024 * 1024 * 1024)
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries (`htpasswd -B`). With it, pushes and deletes need
    /// credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Whether pulls work without credentials when `htpasswd` is set.
    #[serde(default = "default_true")]
    pub anonymous_pull: bool,
    /// Whether clients without credentials may push, mount and delete. Off by default: with it,
    /// anyone who reaches the mirror can replace what everybody pulls.
    #[serde(default)]
    pub anonymous_push: bool,
    /// `[[auth.access]]`: who may push and delete where. With none, every htpasswd user may
    /// push and delete everywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
}

/// One `[[auth.access]]` rule: `users` may do `actions` on `repositories`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// htpasswd users (`"*"`: every user).
    pub users: Vec<String>,
    /// Glob patterns of repository names (`"team/*"`; `*` matches any run of characters,
    /// `/` included), matched against the one name a request's repository resolves to
    /// (`docker.io/library/alpine`): a pattern whose first component is an upstream's name, or
    /// that starts with `*`, as it is; any other as a name on the default upstream.
    pub repositories: Vec<String>,
    /// Any of `"push"`, `"delete"` (every authenticated user may pull).
    pub actions: Vec<Action>,
}

/// What a client may do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs and tags.
    Pull,
    /// Upload blobs, mount them, put manifests.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// The name used in token scopes (`repository:team/app:pull,push`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// A size in bytes, written in the config as a number or with a unit: `"512MiB"`, `"50GiB"`,
/// `"10GB"` (KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (number, unit) = (s[..split].trim(), s[split..].trim());
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as \"512MiB\" or \"50GiB\""))?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
                ));
            }
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    /// In the largest binary unit that holds it exactly (`"20GiB"`), else in bytes.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        match units
            .iter()
            .find(|(_, size)| self.0 != 0 && self.0.is_multiple_of(*size))
        {
            Some((unit, size)) => s.serialize_str(&format!("{}{unit}", self.0 / size)),
            None => s.serialize_u64(self.0),
        }
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("default", &self.default)
            .field("tag_ttl", &self.tag_ttl)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| HIDDEN))
            .field("password_env", &self.password_env)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("ca_file", &self.ca_file)
            .field("fill_idle_timeout", &self.fill_idle_timeout)
            .field("negative_ttl", &self.negative_ttl)
            .field("immutable_tags", &self.immutable_tags)
            .field("search_url", &self.search_url.as_ref().map(Url::as_str))
            .finish()
    }
}

/// What a password is written out as: a config printed by `check-config` lands in terminals
/// and CI logs.
const HIDDEN: &str = "<hidden>";

fn hidden<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(HIDDEN)
}

/// One `[[upstream]]`. Its `Debug` hides the password, like [`Config::to_toml`].
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Matched against `?ns=` and the first component of a repository name.
    pub name: String,
    /// Base URL of the registry (`https://registry-1.docker.io`).
    pub url: Url,
    /// Names with no `ns` or prefix go to the default upstream.
    #[serde(default)]
    pub default: bool,
    /// How long a cached tag is served without asking the upstream.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Username for the upstream (Basic, or for Bearer token requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for the upstream. Prefer `password_env`. Never written back out (see
    /// [`Config::to_toml`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "hidden"
    )]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Connect timeout for requests to this upstream.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long the upstream (and its token endpoint) may take to send response headers.
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long a whole manifest, tag list or token body may take to arrive.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// `host:port`s on loopback or private networks this upstream may send the mirror to
    /// (redirects, token realm): a private registry that redirects blob GETs to its own object
    /// store. Link-local addresses (cloud metadata) are never contacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_allow: Vec<String>,
    /// A PEM bundle of CA certificates to trust for this upstream (a private CA), besides the
    /// system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A blob fill that receives no bytes for this long fails (there is no total deadline:
    /// big layers are slow).
    #[serde(default = "default_fill_idle_timeout", with = "humantime_serde")]
    pub fill_idle_timeout: Duration,
    /// How long an upstream 404 for a manifest is remembered, so a typo in a CI job does not
    /// hammer the upstream. `"0s"` turns it off.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Where `docker search` results of this upstream come from (`GET <search_url>/v1/search`;
    /// Docker Hub: `https://index.docker.io`). Unset: search only lists what the mirror holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_url: Option<Url>,
    /// Regular expressions on the whole tag (`'^v?\d+\.\d+\.\d+$'`): a cached tag that
    /// matches one is never revalidated, as a digest is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5000))
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_storage_path() -> PathBuf {
    PathBuf::from("./data")
}
fn default_index_mib() -> u64 {
    64
}
fn default_max_upload() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_upload_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_uploads_size() -> ByteSize {
    ByteSize(20 << 30)
}
fn default_max_upload_sessions() -> usize {
    64
}
fn default_max_upload_chunks() -> usize {
    10_000
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
fn default_response_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_low_water() -> f64 {
    0.9
}
fn default_gc_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_gc_grace() -> Duration {
    Duration::from_secs(3600)
}
fn default_true() -> bool {
    true
}
fn default_tag_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_fill_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            offline: false,
            shutdown_timeout: default_shutdown_timeout(),
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

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            anonymous_pull: true,
            anonymous_push: false,
            access: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: BackendKind::Fs,
            path: default_storage_path(),
            cache_size: default_cache_size(),
            s3: None,
            index_memory_mib: default_index_mib(),
            delete: false,
            max_upload_size: default_max_upload(),
            upload_ttl: default_upload_ttl(),
            max_uploads_size: default_max_uploads_size(),
            max_upload_sessions_per_client: default_max_upload_sessions(),
            max_upload_chunks: default_max_upload_chunks(),
            verify_reads: true,
            max_size: None,
            low_water: default_low_water(),
            gc_interval: default_gc_interval(),
            gc_grace: default_gc_grace(),
        }
    }
}

impl UpstreamConfig {
    /// Docker Hub, the upstream used when none is configured.
    pub fn docker_hub() -> UpstreamConfig {
        UpstreamConfig {
            name: "docker.io".to_owned(),
            url: Url::parse("https://registry-1.docker.io").unwrap_or_else(|_| unreachable!()),
            default: true,
            tag_ttl: default_tag_ttl(),
            username: None,
            password: None,
            password_env: None,
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            body_timeout: default_body_timeout(),
            redirect_allow: Vec::new(),
            ca_file: None,
            fill_idle_timeout: default_fill_idle_timeout(),
            negative_ttl: default_negative_ttl(),
            immutable_tags: Vec::new(),
            search_url: Url::parse("https://index.docker.io").ok(),
        }
    }

    /// Whether this upstream is Docker Hub, where one-component names mean `library/<name>`.
    pub fn is_docker_hub(&self) -> bool {
        self.name == "docker.io"
    }

    /// The password, from `password` or the variable named by `password_env`, which must be
    /// set (see [`resolve_secret`]; an unset one was silently no password before, and pulls
    /// went anonymous).
    pub fn resolved_password(&self) -> Result<Option<String>, ConfigError> {
        resolve_secret(
            &format!("upstream \"{}\".password", self.name),
            self.password.as_ref(),
            self.password_env.as_ref(),
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            upstreams: vec![UpstreamConfig::docker_hub()],
            cluster: ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        if config.upstreams.is_empty() {
            config.upstreams.push(UpstreamConfig::docker_hub());
        }
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration (defaults filled in) as TOML that [`Config::parse`] reads
    /// back, with passwords written as `"<hidden>"`.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Render(e.to_string()))
    }

    /// Checks what serde cannot: one default, unique names, usable URLs, credentials in pairs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        match (self.storage.backend, &self.storage.s3) {
            (BackendKind::S3, None) => {
                return Err(invalid(
                    "storage.s3".into(),
                    "backend = \"s3\" needs a [storage.s3] section with at least `bucket`",
                ));
            }
            (BackendKind::S3, Some(s3)) => {
                if s3.bucket.is_empty() {
                    return Err(invalid("storage.s3.bucket".into(), "must not be empty"));
                }
                if s3.secret_access_key.is_some() && s3.secret_access_key_env.is_some() {
                    return Err(invalid(
                        "storage.s3.secret_access_key_env".into(),
                        "set secret_access_key or secret_access_key_env, not both",
                    ));
                }
                if let Some(endpoint) = &s3.endpoint
                    && url::Url::parse(endpoint)
                        .map(|u| !matches!(u.scheme(), "http" | "https"))
                        .unwrap_or(true)
                {
                    return Err(invalid(
                        "storage.s3.endpoint".into(),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            (BackendKind::Fs, _) => {}
        }
        let cluster = &self.cluster;
        if cluster.secret.is_some() && cluster.secret_env.is_some() {
            return Err(invalid(
                "cluster.secret_env".into(),
                "set secret or secret_env, not both",
            ));
        }
        if let Some(secret) = &cluster.secret
            && let Err(message) = parse_cluster_secret(secret)
        {
            return Err(invalid("cluster.secret".into(), &message));
        }
        if cluster.redis_url.is_some() && cluster.redis_url_env.is_some() {
            return Err(invalid(
                "cluster.redis_url_env".into(),
                "set redis_url or redis_url_env, not both",
            ));
        }
        if cluster.redis_url.is_some() {
            cluster.redis_url()?;
        }
        let mut seen_default = None;
        for (i, up) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field}");
            if !valid_upstream_name(&up.name) {
                return Err(invalid(
                    key("name"),
                    "must be a registry host name such as \"docker.io\" or \"ghcr.io\" (lower-case letters, digits, '.', '-')",
                ));
            }
            if self.upstreams[..i]
                .iter()
                .any(|other| other.name == up.name)
            {
                return Err(invalid(key("name"), "another upstream has the same name"));
            }
            if !matches!(up.url.scheme(), "http" | "https") || up.url.host_str().is_none() {
                return Err(invalid(
                    key("url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            if up.url.query().is_some() || up.url.fragment().is_some() {
                return Err(invalid(key("url"), "must not have a query or fragment"));
            }
            for (j, entry) in up.redirect_allow.iter().enumerate() {
                let valid = entry
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return Err(invalid(
                        format!("upstream[{i}].redirect_allow[{j}]"),
                        "must be host:port (\"minio.internal:9000\", \"10.0.0.5:9000\")",
                    ));
                }
            }
            if !up.url.username().is_empty() || up.url.password().is_some() {
                return Err(invalid(
                    key("url"),
                    "must not hold credentials: use username and password_env (they are sent only to the upstream's own host and token realm, and never shown)",
                ));
            }
            if up.default {
                if let Some(first) = seen_default {
                    return Err(invalid(
                        key("default"),
                        &format!(
                            "only one upstream may be the default; upstream[{first}] already is"
                        ),
                    ));
                }
                seen_default = Some(i);
            }
            if up.password.is_some() && up.password_env.is_some() {
                return Err(invalid(
                    key("password_env"),
                    "set password or password_env, not both",
                ));
            }
            if (up.password.is_some() || up.password_env.is_some()) && up.username.is_none() {
                return Err(invalid(key("username"), "a password needs a username"));
            }
            if up.connect_timeout.is_zero() {
                return Err(invalid(key("connect_timeout"), "must be greater than zero"));
            }
            if up.response_timeout.is_zero() || up.body_timeout.is_zero() {
                let field = if up.response_timeout.is_zero() {
                    "response_timeout"
                } else {
                    "body_timeout"
                };
                return Err(invalid(key(field), "must be greater than zero"));
            }
            if let Some(url) = &up.search_url
                && (!matches!(url.scheme(), "http" | "https") || url.host_str().is_none())
            {
                return Err(invalid(
                    key("search_url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            for (j, pattern) in up.immutable_tags.iter().enumerate() {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(invalid(
                        key(&format!("immutable_tags[{j}]")),
                        &e.to_string(),
                    ));
                }
            }
            if up.fill_idle_timeout.is_zero() {
                return Err(invalid(
                    key("fill_idle_timeout"),
                    "must be greater than zero",
                ));
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return Err(invalid(
                "server.tls_cert".into(),
                "tls_cert and tls_key go together: set both or neither",
            ));
        }
        if let Some(url) = &self.server.public_url
            && (!matches!(url.scheme(), "http" | "https") || url.host_str().is_none())
        {
            return Err(invalid(
                "server.public_url".into(),
                "must be an http:// or https:// URL with a host, such as \"https://registry.example\"",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.send_timeout", self.server.send_timeout),
            (
                "server.tls_handshake_timeout",
                self.server.tls_handshake_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(invalid(key.into(), "must be greater than zero"));
            }
        }
        if self.server.http2_max_streams == 0 {
            return Err(invalid(
                "server.http2_max_streams".into(),
                "must be at least 1",
            ));
        }
        if self.server.max_blob_readers == 0 {
            return Err(invalid(
                "server.max_blob_readers".into(),
                "must be at least 1",
            ));
        }
        if self.server.max_connections == Some(0) {
            return Err(invalid(
                "server.max_connections".into(),
                "must be at least 1",
            ));
        }
        if self.storage.max_upload_sessions_per_client == 0 {
            return Err(invalid(
                "storage.max_upload_sessions_per_client".into(),
                "must be at least 1",
            ));
        }
        for (i, rule) in self.auth.access.iter().enumerate() {
            if rule.users.is_empty() || rule.repositories.is_empty() || rule.actions.is_empty() {
                return Err(invalid(
                    format!("auth.access[{i}]"),
                    "needs users, repositories and actions, each non-empty",
                ));
            }
        }
        if !self.auth.access.is_empty() && self.auth.htpasswd.is_none() {
            return Err(invalid(
                "auth.access".into(),
                "access rules name htpasswd users: set auth.htpasswd too",
            ));
        }
        if !(self.storage.low_water > 0.0 && self.storage.low_water <= 1.0) {
            return Err(invalid(
                "storage.low_water".into(),
                "must be a fraction of max_size above 0 and at most 1 (e.g. 0.9)",
            ));
        }
        if self.storage.max_size.is_some_and(|m| m.0 == 0) {
            return Err(invalid(
                "storage.max_size".into(),
                "must be greater than zero",
            ));
        }
        if self.storage.gc_interval.is_zero() {
            return Err(invalid(
                "storage.gc_interval".into(),
                "must be greater than zero",
            ));
        }
        if self.storage.index_memory_mib == 0 {
            return Err(invalid(
                "storage.index_memory_mib".into(),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Upstream names are matched against the first path component of repository names and `ns=`
/// values, so they must look like a registry host.
fn valid_upstream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_secrets_must_be_random_bytes() {
        for weak in [
            "replace-me-with-openssl-rand-hex-32",
            "                ",
            &"a".repeat(64),
            &"0123456789abcdef".repeat(4),
            "a cluster secret for the tests, long enough",
            "deadbeef",
            &"ab".repeat(40),
        ] {
            assert!(parse_cluster_secret(weak).is_err(), "{weak:?} accepted");
        }
        for strong in [
            "5f1c2e9a7b3d4c8e0f6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a",
            "8J+Yg8KqzM6Z9x7hT3kLwQpR2sVbNmAeYdFgHjKlOiU=",
        ] {
            assert_eq!(
                parse_cluster_secret(strong).map(|b| b.len()),
                Ok(32),
                "{strong}"
            );
        }
        let config = Config::parse(
            "[cluster]\nsecret = \"replace-me-with-openssl-rand-hex-32\"\n",
            "t",
        );
        let message = config.unwrap_err().to_string();
        assert!(message.contains("cluster.secret"), "{message}");
        assert!(message.contains("openssl rand -hex 32"), "{message}");
    }

    #[test]
    fn a_secret_variable_that_is_not_set_is_an_error_everywhere() {
        let var = "REGMIRROR_TEST_UNSET_SECRET_VARIABLE";
        let config = Config::parse(
            &format!(
                "[cluster]\nsecret_env = \"{var}\"\nredis_url_env = \"{var}\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\nusername = \"u\"\npassword_env = \"{var}\"\n"
            ),
            "t",
        )
        .unwrap();
        let errors = [
            config.cluster.secret().unwrap_err(),
            config.cluster.redis_url().unwrap_err(),
            config.upstreams[0].resolved_password().unwrap_err(),
        ];
        for (error, key) in errors.iter().zip([
            "cluster.secret_env",
            "cluster.redis_url_env",
            "upstream \"docker.io\".password_env",
        ]) {
            let message = error.to_string();
            assert!(message.contains(key) && message.contains(var), "{message}");
        }
    }

    #[test]
    fn passwords_in_urls_are_never_shown() {
        let config = Config::parse(
            "[cluster]\nredis_url = \"redis://:hunter2@redis:6379/0\"\n",
            "t",
        )
        .unwrap();
        let shown = config.to_toml().unwrap() + &format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://:***@redis:6379/0"), "{shown}");
        let upstream = Config::parse(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://u:hunter2@registry-1.docker.io\"\ndefault = true\n",
            "t",
        );
        let message = upstream.unwrap_err().to_string();
        assert!(message.contains("upstream[0].url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            Config::parse(
                "[cluster]\nredis_url = \"redis://r\"\nredis_url_env = \"R\"\n",
                "t"
            )
            .is_err()
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_effective_config_reads_back_as_the_same_settings() {
        let text = r#"
            [server]
            listen = "127.0.0.1:6000"
            tls_cert = "/etc/c.pem"
            tls_key = "/etc/k.pem"
            [storage]
            path = "/var/cache/regmirror"
            max_size = "50GiB"
            max_upload_size = 1000
            upload_ttl = "36h"
            [log]
            format = "json"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            tag_ttl = "90s"
            username = "bot"
            password_env = "GHCR_TOKEN"
        "#;
        let config = Config::parse(text, "test.toml").unwrap();
        let written = config.to_toml().unwrap();
        let read_back = Config::parse(&written, "written").unwrap();
        assert_eq!(format!("{read_back:?}"), format!("{config:?}"), "{written}");
        assert!(written.contains(r#"max_size = "50GiB""#), "{written}");
        assert!(written.contains("max_upload_size = 1000\n"), "{written}");
    }

    #[test]
    fn the_effective_config_never_shows_a_password() {
        let text = r#"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            username = "bob"
            password = "hunter2"
        "#;
        let written = Config::parse(text, "test.toml").unwrap().to_toml().unwrap();
        assert!(!written.contains("hunter2"), "{written}");
        assert!(written.contains(r#"password = "<hidden>""#), "{written}");
        assert!(written.contains(r#"username = "bob""#), "{written}");
        let debug = format!("{:?}", Config::parse(text, "test.toml").unwrap());
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn empty_config_mirrors_docker_hub() {
        let c = Config::parse("", "test.toml").unwrap();
        assert_eq!(c.server.listen.port(), 5000);
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert_eq!(c.upstreams.len(), 1);
        assert!(c.upstreams[0].default && c.upstreams[0].is_docker_hub());
        assert_eq!(c.upstreams[0].url.as_str(), "https://registry-1.docker.io/");
    }

    #[test]
    fn full_config() {
        let c = Config::parse(
            r#"
            [server]
            listen = "127.0.0.1:6000"
            [storage]
            path = "/var/cache/regmirror"
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            tag_ttl = "5m"
            [[upstream]]
            name = "ghcr.io"
            url = "https://ghcr.io"
            username = "me"
            password_env = "GHCR_TOKEN"
            "#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
        assert_eq!(c.upstreams[1].tag_ttl, Duration::from_secs(600));
        assert!(!c.upstreams[1].default);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = err("[server]\nlisten = \"0.0.0.0:5000\"\nlisen = 1\n");
        assert!(unknown.contains("lisen"), "{unknown}");
        let bad_duration =
            err("[[upstream]]\nname = \"a.io\"\nurl = \"http://a\"\ntag_ttl = \"ten minutes\"\n");
        assert!(bad_duration.contains("tag_ttl"), "{bad_duration}");
        let two_defaults = err(
            "[[upstream]]\nname = \"a.io\"\nurl = \"http://a\"\ndefault = true\n[[upstream]]\nname = \"b.io\"\nurl = \"http://b\"\ndefault = true\n",
        );
        assert!(
            two_defaults.contains("upstream[1].default"),
            "{two_defaults}"
        );
        let bad_url = err("[[upstream]]\nname = \"a.io\"\nurl = \"not a url\"\n");
        assert!(bad_url.contains("url"), "{bad_url}");
        let ftp = err("[[upstream]]\nname = \"a.io\"\nurl = \"ftp://a\"\n");
        assert!(ftp.contains("upstream[0].url"), "{ftp}");
        let dup = err(
            "[[upstream]]\nname = \"a.io\"\nurl = \"http://a\"\n[[upstream]]\nname = \"a.io\"\nurl = \"http://b\"\n",
        );
        assert!(dup.contains("upstream[1].name"), "{dup}");
        let bad_name = err("[[upstream]]\nname = \"A/B\"\nurl = \"http://a\"\n");
        assert!(bad_name.contains("upstream[0].name"), "{bad_name}");
    }

    #[test]
    fn sizes() {
        let ok = [
            ("0", 0),
            ("512", 512),
            ("1KiB", 1024),
            ("1.5MiB", 1_572_864),
            ("50GiB", 50 << 30),
            ("10GB", 10_000_000_000),
            ("3 MB", 3_000_000),
            ("2kB", 2000),
        ];
        for (text, bytes) in ok {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in [
            "",
            "GiB",
            "-1GiB",
            "10 parsecs",
            "1e999GiB",
            "five MiB",
            "10gib",
        ] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?}");
        }
        let e = err("[storage]\nmax_upload_size = \"lots\"\n");
        assert!(e.contains("max_upload_size"), "{e}");
        let c = Config::parse("[storage]\nmax_upload_size = 1024\n", "t").unwrap();
        assert_eq!(c.storage.max_upload_size, ByteSize(1024));
        let c = Config::parse("[storage]\nmax_size = \"50GiB\"\nlow_water = 0.8\n", "t").unwrap();
        assert_eq!(c.storage.max_size, Some(ByteSize(50 << 30)));
        for bad in [
            "max_size = \"50 GiBs\"",
            "max_size = \"-5GB\"",
            "max_size = 0",
            "max_size = \"\"",
            "low_water = 1.5",
            "low_water = 0",
        ] {
            let e = err(&format!("[storage]\n{bad}\n"));
            assert!(
                e.contains("max_size") || e.contains("low_water"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn documented_default_config_parses() {
        let text = include_str!("../mirror.toml");
        let c = Config::parse(text, "mirror.toml").unwrap();
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.storage.path, d.storage.path);
        assert_eq!(c.upstreams[0].url, d.upstreams[0].url);
        assert_eq!(c.upstreams[0].tag_ttl, d.upstreams[0].tag_ttl);
        assert_eq!(
            c.upstreams[0].fill_idle_timeout,
            d.upstreams[0].fill_idle_timeout
        );
        assert_eq!(c.upstreams[0].negative_ttl, d.upstreams[0].negative_ttl);
        assert_eq!(c.server.offline, d.server.offline);
        assert_eq!(c.storage.delete, d.storage.delete);
        assert_eq!(c.storage.max_upload_size, d.storage.max_upload_size);
        assert_eq!(c.storage.upload_ttl, d.storage.upload_ttl);
        assert_eq!(c.auth.anonymous_pull, d.auth.anonymous_pull);
        assert_eq!(c.auth.anonymous_push, d.auth.anonymous_push);
        assert_eq!(c.server.trusted_proxies, d.server.trusted_proxies);
        assert_eq!(c.server.header_read_timeout, d.server.header_read_timeout);
        assert_eq!(c.server.idle_timeout, d.server.idle_timeout);
        assert_eq!(
            c.server.tls_handshake_timeout,
            d.server.tls_handshake_timeout
        );
        assert_eq!(c.storage.max_uploads_size, d.storage.max_uploads_size);
        assert_eq!(
            c.storage.max_upload_sessions_per_client,
            d.storage.max_upload_sessions_per_client
        );
        assert_eq!(
            c.upstreams[0].response_timeout,
            d.upstreams[0].response_timeout
        );
        assert_eq!(c.upstreams[0].body_timeout, d.upstreams[0].body_timeout);
    }

    #[test]
    fn security_settings_parse_and_are_checked() {
        let c = Config::parse(
            r#"
            [server]
            public_url = "https://registry.example"
            trusted_proxies = ["10.0.0.0/8", "192.168.1.5", "::1"]
            max_connections = 100
            [auth]
            htpasswd = "/etc/regmirror/htpasswd"
            [[auth.access]]
            users = ["ci"]
            repositories = ["library/*"]
            actions = ["push", "delete"]
            [[upstream]]
            name = "docker.io"
            url = "https://registry-1.docker.io"
            default = true
            ca_file = "/etc/ca.pem"
            "#,
            "t",
        )
        .unwrap();
        let nets = &c.server.trusted_proxies;
        assert!(nets[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!nets[0].contains("11.0.0.1".parse().unwrap()));
        assert!(nets[1].contains("192.168.1.5".parse().unwrap()));
        assert!(!nets[1].contains("192.168.1.6".parse().unwrap()));
        assert!(nets[2].contains("::1".parse().unwrap()));
        assert!(
            nets[0].contains("::ffff:10.0.0.1".parse().unwrap()),
            "v4-mapped"
        );
        assert_eq!(c.auth.access[0].actions, vec![Action::Push, Action::Delete]);
        for (bad, key) in [
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]",
                "trusted_proxies",
            ),
            ("[server]\npublic_url = \"ftp://x\"", "public_url"),
            ("[server]\nmax_connections = 0", "max_connections"),
            (
                "[auth]\n[[auth.access]]\nusers = [\"a\"]\nrepositories = [\"x\"]\nactions = [\"push\"]",
                "auth.access",
            ),
            (
                "[auth]\nhtpasswd = \"/h\"\n[[auth.access]]\nusers = [\"a\"]\nrepositories = [\"x\"]\nactions = [\"fly\"]",
                "actions",
            ),
            (
                "[storage]\nmax_upload_sessions_per_client = 0",
                "max_upload_sessions_per_client",
            ),
            (
                "[[upstream]]\nname = \"a.io\"\nurl = \"http://a\"\nimmutable_tags = ['(']",
                "upstream[0].immutable_tags[0]",
            ),
        ] {
            let e = err(bad);
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}

//! `mirror.toml`: the settings, by section, each with its defaults and validation
//! (`server`, `storage`, `auth`, `upstream`, `cluster`), the value types they are written in
//! (`values`) and how secrets are resolved and hidden (`secrets`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

mod auth;
mod cluster;
mod secrets;
mod server;
mod signatures;
mod storage;
mod upstream;
mod values;

pub use auth::{AccessRule, Action, AuthConfig};
pub use cluster::{ClusterConfig, MIN_CLUSTER_SECRET, SECRET_COMMAND, parse_cluster_secret};
pub use secrets::{redact_url, resolve_secret};
pub use server::ServerConfig;
pub use signatures::{SignatureMode, SignaturePolicy};
pub use storage::{AzureConfig, BackendKind, GcsConfig, S3Config, StorageConfig};
pub use upstream::UpstreamConfig;
pub use values::{ByteSize, IpNet, glob_matches};

use secrets::{HIDDEN, hidden, redacted_url};
use values::default_true;

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
    /// `[[signatures]]`: repositories served only with a valid cosign signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignaturePolicy>,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            upstreams: vec![UpstreamConfig::docker_hub()],
            cluster: ClusterConfig::default(),
            signatures: Vec::new(),
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
            message: with_hint(e.to_string()),
        })?;
        if config.upstreams.is_empty() {
            config.upstreams.push(UpstreamConfig::docker_hub());
        }
        upstream::fill_defaults(&mut config.upstreams);
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
        self.storage.validate()?;
        self.cluster.validate()?;
        upstream::validate(&self.upstreams)?;
        signatures::validate(&self.signatures, &self.upstreams)?;
        self.server.validate()?;
        self.auth.validate()?;
        Ok(())
    }
}

/// The parser's message with the fix for the mistakes people make: a duration without a unit
/// or in words, a URL without a scheme.
fn with_hint(message: String) -> String {
    if message.contains("expected a duration") {
        return format!(
            "{message}\ndurations are a number and a unit: \"30s\", \"10m\", \"1h30m\", \"500ms\""
        );
    }
    if let Some(value) = message
        .split("relative URL without a base: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
    {
        return format!(
            "{message}\nadd the scheme: \"https://{value}\" (or http:// for a plain-HTTP registry)"
        );
    }
    message
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
        let text = include_str!("../../mirror.toml");
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

//! `[[upstream]]`: the registries the mirror may contact, their credentials and timeouts.

use super::*;

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
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("search_url", &self.search_url.as_ref().map(Url::as_str))
            .finish()
    }
}

/// One `[[upstream]]`. Its `Debug` hides the password, like [`Config::to_toml`].
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Matched against `?ns=` and the first component of a repository name.
    pub name: String,
    /// Base URL of the registry (`https://registry-1.docker.io`).
    pub url: Url,
    /// Names with no `ns` or prefix go to the default upstream (a lone upstream is the default).
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
    /// Docker Hub: `https://index.docker.io`, the default for an upstream at
    /// `registry-1.docker.io`). Unset: search only lists what the mirror holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_url: Option<Url>,
    /// Repository patterns on this upstream that may be pulled through (`library/*`; `*`
    /// matches any run of characters, `/` included). Empty: every repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Repository patterns that may not be pulled through; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Regular expressions on the whole tag (`'^v?\d+\.\d+\.\d+$'`): a cached tag that
    /// matches one is never revalidated, as a digest is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_tags: Vec<String>,
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
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
            allow: Vec::new(),
            deny: Vec::new(),
            search_url: Url::parse("https://index.docker.io").ok(),
        }
    }

    /// The rule that keeps `repo` (its name on this upstream) from being pulled through, or
    /// `None` when the lists allow it: a `deny` pattern that matches, or, with an `allow` list,
    /// the absence of any that does.
    pub fn refusal(&self, repo: &str) -> Option<String> {
        if let Some(pattern) = self.deny.iter().find(|p| glob_matches(p, repo)) {
            return Some(format!("upstream \"{}\" deny = \"{pattern}\"", self.name));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| glob_matches(p, repo)) {
            return Some(format!(
                "upstream \"{}\" allow = {:?} does not include it",
                self.name, self.allow
            ));
        }
        None
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

/// Fills in what follows from the rest: a lone upstream is the default (there is no other
/// choice, and without a default every pull without `ns` would be refused), and an upstream
/// that is Docker Hub searches Docker Hub's index unless told otherwise.
pub(super) fn fill_defaults(upstreams: &mut [UpstreamConfig]) {
    if let [only] = upstreams {
        only.default = true;
    }
    for up in upstreams {
        if up.search_url.is_none() && up.url.host_str() == Some("registry-1.docker.io") {
            up.search_url = UpstreamConfig::docker_hub().search_url;
        }
    }
}

/// Checks the upstreams: names, URLs, one default, credentials in pairs, timeouts.
pub(super) fn validate(upstreams: &[UpstreamConfig]) -> Result<(), ConfigError> {
    let invalid = |key: String, message: &str| ConfigError::Invalid {
        key,
        message: message.to_owned(),
    };
    let mut seen_default = None;
    for (i, up) in upstreams.iter().enumerate() {
        let key = |field: &str| format!("upstream[{i}].{field}");
        if !valid_upstream_name(&up.name) {
            return Err(invalid(
                key("name"),
                "must be a registry host name such as \"docker.io\" or \"ghcr.io\" (lower-case letters, digits, '.', '-')",
            ));
        }
        if upstreams[..i].iter().any(|other| other.name == up.name) {
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
        if !matches!(up.url.path(), "" | "/") {
            let base = format!(
                "{}://{}",
                up.url.scheme(),
                up.url.host_str().unwrap_or_default()
            ) + &up.url.port().map(|p| format!(":{p}")).unwrap_or_default();
            return Err(invalid(
                key("url"),
                &format!(
                    "must be the registry's base URL without a path (\"{base}\"): regmirror adds /v2/ itself"
                ),
            ));
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
                    &format!("only one upstream may be the default; upstream[{first}] already is"),
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
        for (field, patterns) in [("allow", &up.allow), ("deny", &up.deny)] {
            for (j, pattern) in patterns.iter().enumerate() {
                if !values::is_repository_pattern(pattern) {
                    return Err(invalid(
                        key(&format!("{field}[{j}]")),
                        values::REPOSITORY_PATTERN_HINT,
                    ));
                }
            }
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
    Ok(())
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

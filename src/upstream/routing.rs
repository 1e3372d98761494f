//! Which upstream a request goes to: `?ns=` (containerd), else a first path component naming an
//! upstream (`/v2/ghcr.io/org/app/...`), else the default upstream. Only configured upstreams
//! are ever contacted.

use std::sync::Arc;

use super::{UpstreamClient, UpstreamError};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::RepoName;

/// Why a name could not be routed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// `?ns=` names no configured upstream.
    #[error("namespace {0:?} is not a configured upstream")]
    UnknownNamespace(String),
    /// No prefix matched and there is no default upstream.
    #[error("repository {0} matches no configured upstream and there is no default upstream")]
    NoUpstream(String),
}

/// The upstream and the repository name as that upstream knows it.
#[derive(Clone)]
pub struct Resolved {
    /// The upstream.
    pub upstream: Arc<UpstreamClient>,
    /// The name on the upstream (prefix stripped, `library/` added for Docker Hub).
    pub repo: RepoName,
}

/// The configured upstreams.
pub struct Upstreams {
    clients: Vec<Arc<UpstreamClient>>,
    default: Option<usize>,
    offline: bool,
}

impl Upstreams {
    /// Builds a client per configured upstream.
    pub fn new(
        configs: &[UpstreamConfig],
        offline: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<Upstreams, UpstreamError> {
        let clients = configs
            .iter()
            .map(|c| UpstreamClient::new(c.clone(), offline, Arc::clone(metrics)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        for config in configs {
            metrics.init_upstream(&config.name);
        }
        Ok(Upstreams {
            default: configs.iter().position(|c| c.default),
            clients,
            offline,
        })
    }

    /// The upstream named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<UpstreamClient>> {
        self.clients.iter().find(|c| c.name() == name)
    }

    /// The default upstream's name.
    pub fn default_name(&self) -> Option<&str> {
        self.default
            .and_then(|i| self.clients.get(i))
            .map(|c| c.name())
    }

    /// Whether the mirror runs offline (no upstream is ever contacted).
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// Every upstream.
    pub fn all(&self) -> &[Arc<UpstreamClient>] {
        &self.clients
    }

    /// Routes a repository name as the client sent it.
    pub fn resolve(&self, ns: Option<&str>, name: &RepoName) -> Result<Resolved, RouteError> {
        let (upstream, repo) = if let Some(ns) = ns {
            let upstream = self
                .by_name(ns)
                .ok_or_else(|| RouteError::UnknownNamespace(ns.to_owned()))?;
            (upstream, name.clone())
        } else if let Some((upstream, rest)) = name
            .split_first()
            .and_then(|(first, rest)| self.by_name(first).map(|u| (u, rest)))
        {
            (upstream, rest)
        } else {
            let upstream = self
                .default
                .and_then(|i| self.clients.get(i))
                .ok_or_else(|| RouteError::NoUpstream(name.to_string()))?;
            (upstream, name.clone())
        };
        let repo = if upstream.config().is_docker_hub() {
            repo.with_library_prefix()
        } else {
            repo
        };
        Ok(Resolved {
            upstream: Arc::clone(upstream),
            repo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn upstreams() -> Upstreams {
        let config = Config::parse(
            r#"
            [[upstream]]
            name = "docker.io"
            url = "http://127.0.0.1:1"
            default = true
            [[upstream]]
            name = "ghcr.io"
            url = "http://127.0.0.1:2"
            "#,
            "test",
        )
        .unwrap();
        Upstreams::new(&config.upstreams, false, &Arc::new(Metrics::new())).unwrap()
    }

    fn route(u: &Upstreams, ns: Option<&str>, name: &str) -> Result<(String, String), RouteError> {
        u.resolve(ns, &name.parse().unwrap())
            .map(|r| (r.upstream.name().to_owned(), r.repo.to_string()))
    }

    #[test]
    fn routes_by_ns_prefix_and_default() {
        let u = upstreams();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            route(&u, None, "alpine").unwrap(),
            pair("docker.io", "library/alpine")
        );
        assert_eq!(
            route(&u, None, "org/app").unwrap(),
            pair("docker.io", "org/app")
        );
        assert_eq!(
            route(&u, None, "ghcr.io/org/app").unwrap(),
            pair("ghcr.io", "org/app")
        );
        assert_eq!(
            route(&u, None, "docker.io/alpine").unwrap(),
            pair("docker.io", "library/alpine")
        );
        assert_eq!(
            route(&u, Some("docker.io"), "alpine").unwrap(),
            pair("docker.io", "library/alpine")
        );
        assert_eq!(
            route(&u, Some("ghcr.io"), "org/app").unwrap(),
            pair("ghcr.io", "org/app")
        );
        // A one-component name equal to an upstream name is a repository, not a prefix.
        assert_eq!(
            route(&u, None, "ghcr.io").unwrap(),
            pair("docker.io", "library/ghcr.io")
        );
        assert!(matches!(
            route(&u, Some("evil.example.com"), "alpine"),
            Err(RouteError::UnknownNamespace(_))
        ));
    }
}

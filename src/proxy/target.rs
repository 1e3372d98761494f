//! The one name of a request's repository. A client names a repository in many ways (`alpine`,
//! `library/alpine?ns=docker.io`, `docker.io/library/alpine`, `library/alpine?ns=quay.io` which
//! is another repository altogether); a [`Target`] is what that name resolves to, worked out
//! once, at the edge. Access rules check its [`Target::canonical`] name, and every read, write,
//! listing and delete acts on that same value: two code paths that each work out "which
//! repository" are how a rule on one namespace ends up granting another.

use std::sync::Arc;

use crate::oci::RepoName;
use crate::upstream::{Resolved, RouteError, UpstreamClient, Upstreams};

/// A repository as every decision about a request sees it. Built only by [`Target::resolve`].
#[derive(Clone)]
pub struct Target {
    /// The name in the URL, as the client sent it (for `Location` headers and challenges).
    sent: RepoName,
    /// The upstream pulls of it go to, and its name there; `None` for a repository that routes
    /// to no upstream (pushed content only).
    route: Option<Resolved>,
    /// `<upstream>/<name on the upstream>`, or the name as sent when it routes nowhere: the
    /// name access rules, pins, pushed tags, referrers and deletes use.
    canonical: RepoName,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("sent", &self.sent.as_str())
            .field("canonical", &self.canonical.as_str())
            .finish()
    }
}

impl Target {
    /// Resolves the repository a client named (with containerd's `ns`, if sent). An `ns` that
    /// names no configured upstream is an error, never a fallback to another namespace.
    pub fn resolve(
        upstreams: &Upstreams,
        ns: Option<&str>,
        name: &RepoName,
    ) -> Result<Target, RouteError> {
        let route = match upstreams.resolve(ns, name) {
            Ok(route) => Some(route),
            Err(e @ RouteError::UnknownNamespace(_)) => return Err(e),
            Err(RouteError::NoUpstream(_)) => None,
        };
        let canonical = match &route {
            Some(r) => r
                .repo
                .under(r.upstream.name())
                .map_err(|_| RouteError::NoUpstream(name.to_string()))?,
            None => name.clone(),
        };
        Ok(Target {
            sent: name.clone(),
            route,
            canonical,
        })
    }

    /// The name as the client sent it.
    pub fn sent(&self) -> &RepoName {
        &self.sent
    }

    /// The one name every decision uses (see [`Target`]).
    pub fn canonical(&self) -> &RepoName {
        &self.canonical
    }

    /// The upstream and the name there, when the repository routes to one.
    pub fn route(&self) -> Option<&Resolved> {
        self.route.as_ref()
    }

    /// The upstream, when the repository routes to one.
    pub fn upstream(&self) -> Option<&Arc<UpstreamClient>> {
        self.route.as_ref().map(|r| &r.upstream)
    }

    /// The upstream's name, or [`crate::store::LOCAL`]: for logs and metric labels.
    pub fn label(&self) -> &str {
        self.upstream()
            .map_or(crate::store::LOCAL, |upstream| upstream.name())
    }

    /// Whether a pin holder (a repository name, or `<repository>@<manifest hex>` for what a
    /// pushed manifest references) is this repository's.
    pub fn holds(&self, holder: &str) -> bool {
        let name = self.canonical.as_str();
        holder == name
            || holder
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('@'))
    }
}

/// An access-rule pattern in the terms of [`Target::canonical`]: a pattern whose first
/// component names a configured upstream, or that starts with `*`, is taken as it is; any other
/// is a name on the default upstream, spelled as a client would (`alpine` and `library/*` on
/// Docker Hub are `docker.io/library/alpine` and `docker.io/library/*`). Without a default
/// upstream it is a name of the local namespace, as it is.
pub fn canonical_pattern(pattern: &str, upstreams: &Upstreams) -> String {
    let first = pattern.split('/').next().unwrap_or_default();
    if pattern.starts_with('*') || upstreams.by_name(first).is_some() {
        return pattern.to_owned();
    }
    let Some(default) = upstreams.default_name().and_then(|n| upstreams.by_name(n)) else {
        return pattern.to_owned();
    };
    if default.config().is_docker_hub() && !pattern.contains('/') {
        format!("{}/library/{pattern}", default.name())
    } else {
        format!("{}/{pattern}", default.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    fn upstreams(default: bool) -> Upstreams {
        let config = Config::parse(
            &format!(
                r#"
            [[upstream]]
            name = "docker.io"
            url = "http://127.0.0.1:1"
            default = {default}
            [[upstream]]
            name = "quay.io"
            url = "http://127.0.0.1:2"
            "#
            ),
            "test",
        )
        .unwrap();
        Upstreams::new(&config.upstreams, false, &Arc::new(Metrics::new())).unwrap()
    }

    fn canonical(u: &Upstreams, ns: Option<&str>, name: &str) -> String {
        Target::resolve(u, ns, &name.parse().unwrap())
            .unwrap()
            .canonical()
            .to_string()
    }

    #[test]
    fn every_spelling_resolves_to_one_name_and_ns_to_its_own() {
        let u = upstreams(true);
        for (ns, name) in [
            (None, "alpine"),
            (None, "library/alpine"),
            (Some("docker.io"), "library/alpine"),
            (None, "docker.io/library/alpine"),
            (None, "docker.io/alpine"),
        ] {
            assert_eq!(canonical(&u, ns, name), "docker.io/library/alpine");
        }
        assert_eq!(
            canonical(&u, Some("quay.io"), "library/alpine"),
            "quay.io/library/alpine"
        );
        assert_eq!(canonical(&u, None, "quay.io/org/app"), "quay.io/org/app");
        assert!(matches!(
            Target::resolve(&u, Some("evil.example"), &"alpine".parse().unwrap()),
            Err(RouteError::UnknownNamespace(_))
        ));
    }

    #[test]
    fn without_a_default_unrouted_names_are_local() {
        let u = upstreams(false);
        let t = Target::resolve(&u, None, &"team/app".parse().unwrap()).unwrap();
        assert!(t.route().is_none());
        assert_eq!(t.canonical().as_str(), "team/app");
        assert_eq!(t.label(), crate::store::LOCAL);
    }

    #[test]
    fn patterns_read_as_canonical_names() {
        let u = upstreams(true);
        assert_eq!(canonical_pattern("library/*", &u), "docker.io/library/*");
        assert_eq!(canonical_pattern("alpine", &u), "docker.io/library/alpine");
        assert_eq!(canonical_pattern("team/*", &u), "docker.io/team/*");
        assert_eq!(canonical_pattern("quay.io/*", &u), "quay.io/*");
        assert_eq!(canonical_pattern("*", &u), "*");
        let local = upstreams(false);
        assert_eq!(canonical_pattern("team/*", &local), "team/*");
    }

    #[test]
    fn holders_are_matched_whole() {
        let u = upstreams(true);
        let t = Target::resolve(&u, None, &"team/app".parse().unwrap()).unwrap();
        assert!(t.holds("docker.io/team/app"));
        assert!(t.holds("docker.io/team/app@abc"));
        assert!(!t.holds("docker.io/team/app2"));
        assert!(!t.holds("docker.io/team/app/x"));
    }
}

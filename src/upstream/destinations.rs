//! Where an upstream's requests may go. An upstream (or whoever sits between it and us) can
//! answer with a redirect or a token realm anywhere: a cloud metadata service, a loopback
//! admin port, another machine on the private network. The mirror would fetch it and stream
//! the answer to its client. So:
//! - link-local addresses (169.254/16, fe80::/10: cloud metadata) are never contacted;
//! - loopback and private addresses (127/8, ::1, 10/8, 172.16/12, 192.168/16, fc00::/7) only
//!   at the upstream's own `host:port`, or a `host:port` listed in its `redirect_allow` (a
//!   private registry that redirects to its own object store);
//! - everything else (Docker Hub's CDN) as before.
//!
//! The check is made on the addresses a name resolves to, in the resolver the HTTP client
//! connects with, so a DNS name cannot smuggle an internal address in; addresses written in a
//! URL are checked by the redirect policy before the client connects.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What kind of place an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// Link-local: never.
    LinkLocal,
    /// Loopback, private, unique-local, unspecified: only where allowed.
    Internal,
    /// The internet.
    Public,
}

/// Classifies an address (IPv4-mapped IPv6 addresses as their IPv4 address).
pub fn classify(ip: IpAddr) -> AddressKind {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => AddressKind::LinkLocal,
        IpAddr::V4(v4)
            if v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_broadcast() =>
        {
            AddressKind::Internal
        }
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => AddressKind::LinkLocal,
        IpAddr::V6(v6)
            if v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00 =>
        {
            AddressKind::Internal
        }
        _ => AddressKind::Public,
    }
}

/// The internal places one upstream may reach.
#[derive(Debug, Clone)]
pub struct Destinations {
    upstream: String,
    /// The upstream's own `host:port` and those of `redirect_allow`, host names lower-case.
    allowed: Vec<(String, u16)>,
}

/// Why a destination was refused; the message names `redirect_allow`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Destinations {
    /// The destinations of the upstream `name` at `url`, with its `redirect_allow` entries
    /// (`host:port`, validated by the config).
    pub fn new(name: &str, url: &url::Url, redirect_allow: &[String]) -> Destinations {
        let mut allowed = Vec::new();
        if let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) {
            allowed.push((normalize(host), port));
        }
        for entry in redirect_allow {
            if let Some((host, port)) = entry.rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                allowed.push((normalize(host), port));
            }
        }
        Destinations {
            upstream: name.to_owned(),
            allowed,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = normalize(host);
        self.allowed.iter().any(|(h, _)| *h == host)
    }

    fn refused(&self, what: &str) -> Refused {
        Refused(format!(
            "upstream {} sent the mirror to {what}, an internal address; it goes there only if that host:port is in the upstream's redirect_allow",
            self.upstream
        ))
    }

    /// Checks a URL the client is about to follow (a redirect): an address in it must be
    /// public, or internal and allowed; names are checked when resolved.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let port = url.port_or_known_default().unwrap_or(0);
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(self.refused("a URL without a host")),
        };
        let shown = SocketAddr::new(ip, port).to_string();
        match classify(ip) {
            AddressKind::Public => Ok(()),
            AddressKind::LinkLocal => Err(self.refused(&shown)),
            AddressKind::Internal => {
                let host = normalize(&ip.to_string());
                if self.allowed.iter().any(|(h, p)| *h == host && *p == port) {
                    Ok(())
                } else {
                    Err(self.refused(&shown))
                }
            }
        }
    }

    /// The addresses of `host` the client may connect to: never link-local ones; internal ones
    /// only for the upstream's own host and `redirect_allow` hosts.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let trusted = self.host_allowed(host);
        let kept: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| match classify(a.ip()) {
                AddressKind::Public => true,
                AddressKind::Internal => trusted,
                AddressKind::LinkLocal => false,
            })
            .collect();
        if kept.is_empty() && !addrs.is_empty() {
            return Err(self.refused(&format!("{host} ({})", addrs[0].ip())));
        }
        Ok(kept)
    }
}

fn normalize(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The resolver of an upstream's HTTP client: the system's, filtered by [`Destinations`].
pub struct GuardedResolver(pub Arc<Destinations>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let destinations = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = destinations.filter(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Whether a reqwest error was a refused destination (a redirect or a resolved address).
pub fn refused_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused.0.clone());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Destinations {
        Destinations::new(
            "up",
            &"http://127.0.0.1:5000".parse().unwrap(),
            &["minio.internal:9000".to_owned(), "10.1.2.3:9000".to_owned()],
        )
    }

    #[test]
    fn addresses_are_classified() {
        for (ip, kind) in [
            ("169.254.169.254", AddressKind::LinkLocal),
            ("fe80::1", AddressKind::LinkLocal),
            ("::ffff:169.254.169.254", AddressKind::LinkLocal),
            ("127.0.0.1", AddressKind::Internal),
            ("10.0.0.1", AddressKind::Internal),
            ("172.16.0.1", AddressKind::Internal),
            ("192.168.1.1", AddressKind::Internal),
            ("::1", AddressKind::Internal),
            ("fd00::1", AddressKind::Internal),
            ("0.0.0.0", AddressKind::Internal),
            ("104.16.0.1", AddressKind::Public),
            ("2606:4700::1", AddressKind::Public),
        ] {
            assert_eq!(classify(ip.parse().unwrap()), kind, "{ip}");
        }
    }

    #[test]
    fn urls_are_checked() {
        let d = d();
        let ok = |u: &str| d.check_url(&u.parse().unwrap()).is_ok();
        assert!(ok("http://127.0.0.1:5000/v2/x"), "the upstream's own");
        assert!(ok("http://10.1.2.3:9000/b"), "listed");
        assert!(
            ok("https://cdn.example.com/x"),
            "a name: checked when resolved"
        );
        assert!(ok("https://104.16.0.1/x"));
        assert!(!ok("http://127.0.0.1:8080/admin"), "another loopback port");
        assert!(!ok("http://169.254.169.254/latest/meta-data/"));
        assert!(!ok("http://10.1.2.3:22/"));
        assert!(!ok("http://[::1]:5000/"));
        let message = d
            .check_url(&"http://169.254.169.254/".parse().unwrap())
            .unwrap_err()
            .0;
        assert!(message.contains("redirect_allow"), "{message}");
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let d = d();
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert!(
            d.filter("evil.example", vec![a("127.0.0.1:0")]).is_err(),
            "a name that resolves to loopback"
        );
        assert_eq!(
            d.filter(
                "cdn.example",
                vec![a("169.254.169.254:0"), a("104.16.0.1:0")]
            )
            .unwrap(),
            vec![a("104.16.0.1:0")]
        );
        assert_eq!(
            d.filter("minio.internal", vec![a("10.9.9.9:0")]).unwrap(),
            vec![a("10.9.9.9:0")],
            "listed"
        );
        assert!(
            d.filter("minio.internal", vec![a("169.254.1.1:0")])
                .is_err()
        );
    }
}

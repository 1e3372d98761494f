//! Upstream authentication: `WWW-Authenticate` challenges, Bearer tokens per scope, Basic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Token auth: ask `realm` for a token for `service` and a scope.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
    },
    /// Username and password on every request.
    Basic,
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
    })
}

/// Parses `key="value", key=value` pairs (values may contain commas inside quotes).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim(), &after[end..]),
                None => (after.trim(), ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The JSON a token endpoint answers with.
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    /// Docker's name for the token.
    pub token: Option<String>,
    /// OAuth2's name for it.
    pub access_token: Option<String>,
    /// Lifetime in seconds (the spec's default is 60).
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token, whichever field carried it.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60));
        self.token
            .or(self.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| (t, lifetime))
    }
}

/// Tokens by scope, each dropped shortly before it expires, and the last challenge seen, so
/// later requests can fetch a token before the upstream has to refuse them.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    challenge: Mutex<Option<Challenge>>,
}

impl TokenCache {
    /// A valid token for `scope`, if one is cached.
    pub fn get(&self, scope: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(scope) {
            Some((token, valid_until)) if Instant::now() < *valid_until => Some(token.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    /// Caches a token until a safety margin before its lifetime ends (10%, 1 to 30 seconds),
    /// so a token never expires between being picked and being used.
    pub fn put(&self, scope: &str, token: String, lifetime: Duration) {
        let margin = (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let usable = lifetime.saturating_sub(margin);
        if usable.is_zero() {
            return;
        }
        // A lifetime too large for the clock (`expires_in: 18446744073709551615`) is not cached
        // rather than overflowing.
        let Some(valid_until) = Instant::now().checked_add(usable) else {
            return;
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.insert(scope.to_owned(), (token, valid_until));
    }

    /// The last challenge the upstream sent.
    pub fn challenge(&self) -> Option<Challenge> {
        self.challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remembers the upstream's challenge.
    pub fn set_challenge(&self, challenge: Challenge) {
        *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = Some(challenge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
    }

    #[test]
    fn parses_basic_and_unquoted() {
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge("bearer realm=http://t/token, service=reg"),
            Some(Challenge::Bearer {
                realm: "http://t/token".into(),
                service: Some("reg".into())
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn token_cache_honours_lifetime() {
        let cache = TokenCache::default();
        cache.put("s", "long".into(), Duration::from_secs(300));
        assert_eq!(cache.get("s").as_deref(), Some("long"));
        cache.put("short", "t".into(), Duration::from_secs(1));
        assert_eq!(cache.get("short"), None);
        // An absurd lifetime neither panics nor is cached forever.
        cache.put("huge", "h".into(), Duration::from_secs(u64::MAX));
        assert_eq!(cache.get("huge"), None);
        assert_eq!(cache.get("other"), None);
    }
}

//! Who a client is and what it may do.
//!
//! - **Identity.** Clients prove who they are with Basic credentials checked against an
//!   htpasswd file (bcrypt), either on each request or once at the token endpoint (`/token`),
//!   which hands out Bearer tokens. The challenge is Bearer, as Docker Hub's is, because that is
//!   the one flow every client handles: dockerd refuses to pull anonymously from a registry
//!   whose challenge is Basic, and neither dockerd nor skopeo sends credentials to a registry
//!   that does not challenge `GET /v2/`.
//! - **Tokens** are self-contained and signed (HMAC-SHA256), and carry their scope as Docker's
//!   token auth does (`repository:team/app:pull,push`): nothing is stored per token, so no
//!   flood of anonymous tokens can push real ones out, and any replica with the key can check
//!   them.
//! - **Permissions.** Reads may be anonymous (`anonymous_pull`); every authenticated user may
//!   pull. Pushes, mounts and deletes need a user allowed by the `[[auth.access]]` rules (every
//!   user, when there are none), or the operator's explicit `anonymous_push = true`.
//! - **Cost.** bcrypt runs on the blocking pool, a few at a time, at most
//!   [`MAX_CONCURRENT_PER_ADDRESS`] for one client address; failed logins are throttled per
//!   client address, the attempt counted *before* bcrypt runs (so a burst of concurrent
//!   guesses gets no more tries than a sequence of them), and per user only from addresses
//!   that have failed themselves: someone guessing a user's password never locks that user
//!   out from elsewhere. An unknown user costs a bcrypt run like a wrong password, so timing
//!   does not tell which users exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::Mac;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::htpasswd::Htpasswd;
use crate::config::{AccessRule, Action, AuthConfig};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials (or an anonymous token).
    Anonymous,
    /// A user from the htpasswd file.
    User(String),
}

impl Identity {
    /// A stable name for what belongs to this identity (upload sessions): the user, or for
    /// anonymous clients their address.
    pub fn owner(&self, client: IpAddr) -> String {
        match self {
            Identity::User(user) => format!("user:{user}"),
            Identity::Anonymous => format!("anonymous:{client}"),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials or a token were sent and are not valid.
    Invalid,
    /// The request needs credentials (or a token with more scope): 401 with a challenge.
    Required,
    /// The client is known, or no credentials could help, and it may not do this: 403.
    Denied(String),
    /// Too many failed logins for this user or from this address: 429.
    Throttled,
}

/// What a request needs.
#[derive(Debug, Clone)]
pub enum Need<'a> {
    /// `GET /v2/`: always answered with a challenge to a client that sent nothing, so that it
    /// learns where to get a token.
    Ping,
    /// Reading something that belongs to no one repository (`_catalog`).
    Read,
    /// `action` on a repository, by the one name it resolved to
    /// ([`crate::proxy::Target::canonical`], e.g. `docker.io/library/alpine`).
    Repository {
        /// The canonical name: what access rules and token grants are matched against.
        name: &'a str,
        /// What the request does.
        action: Action,
    },
}

/// How long issued tokens live.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Failed logins allowed per client address within [`THROTTLE_WINDOW`].
const MAX_FAILURES: u32 = 10;

/// Failed logins for one user (from every address) within [`THROTTLE_WINDOW`] after which
/// addresses that failed for anyone are refused that user; addresses that did not fail are
/// never refused.
const MAX_USER_FAILURES: u32 = 50;

/// Password checks one client address may have running at once.
pub const MAX_CONCURRENT_PER_ADDRESS: u32 = 2;

/// The window of the failed-login throttle.
const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// What a token says: who, and which actions on which repositories, until when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The user, `None` for anonymous tokens.
    pub sub: Option<String>,
    /// What it may do.
    pub access: Vec<Grant>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Actions on one repository, as in Docker's token auth.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// The repository, by its canonical name (the scope's name resolved as a request's is).
    pub name: String,
    /// The actions granted.
    pub actions: Vec<Action>,
}

/// Signs and checks tokens with a secret key.
struct TokenSigner {
    key: Vec<u8>,
}

impl TokenSigner {
    fn mac(&self) -> crate::signing::Mac {
        crate::signing::mac(&self.key, &[])
    }

    fn sign(&self, claims: &Claims) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        format!("{payload}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    fn verify(&self, token: &str, now: u64) -> Option<Claims> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (payload, signature) = token.split_once('.')?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&b64.decode(signature).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&b64.decode(payload).ok()?).ok()?;
        // Never longer than a token is issued for, whatever its claims say (a minute of clock
        // skew between replicas allowed).
        let latest = now + TOKEN_LIFETIME.as_secs() + 60;
        (claims.exp > now && claims.exp <= latest).then_some(claims)
    }
}

use crate::clock::now_secs as unix_now;

/// The authentication and authorization policy.
pub struct Authenticator {
    htpasswd: Option<Arc<Htpasswd>>,
    anonymous_pull: bool,
    anonymous_push: bool,
    rules: Vec<AccessRule>,
    signer: TokenSigner,
    /// Credentials (hashed) verified recently, so a push of dozens of requests runs bcrypt
    /// once.
    verified: moka::sync::Cache<[u8; 32], String>,
    /// Login attempts per `addr:<ip>` (counted before bcrypt, refunded on success) and
    /// failures per `user:<name>`, in the current window.
    failures: moka::sync::Cache<String, u32>,
    /// Password checks running per client address.
    checking: std::sync::Mutex<HashMap<IpAddr, u32>>,
    bcrypt_slots: Arc<Semaphore>,
}

impl Authenticator {
    /// A policy from `[auth]`, with users from `htpasswd` (if any) and tokens signed with `key`.
    pub fn new(config: &AuthConfig, htpasswd: Option<Htpasswd>, key: Vec<u8>) -> Authenticator {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Authenticator {
            htpasswd: htpasswd.map(Arc::new),
            anonymous_pull: config.anonymous_pull,
            anonymous_push: config.anonymous_push,
            rules: config.access.clone(),
            signer: TokenSigner { key },
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(THROTTLE_WINDOW)
                .build(),
            checking: std::sync::Mutex::new(HashMap::new()),
            // Leave at least one core to everything else.
            bcrypt_slots: Arc::new(Semaphore::new((cores / 2).max(1))),
        }
    }

    /// Whether clients authenticate at all (an htpasswd file is configured).
    pub fn has_users(&self) -> bool {
        self.htpasswd.is_some()
    }

    /// Whether `action` on the repository `name` (canonical) is allowed to `identity` by the
    /// configuration (not by a token). Rule patterns are in canonical terms too (see
    /// [`crate::proxy::target::canonical_pattern`]).
    fn allows(&self, identity: &Identity, name: &str, action: Action) -> bool {
        match (identity, action) {
            (Identity::Anonymous, Action::Pull) => self.anonymous_pull || !self.has_users(),
            (Identity::Anonymous, _) => self.anonymous_push,
            (Identity::User(_), Action::Pull) => true,
            (Identity::User(_), _) if self.rules.is_empty() => true,
            (Identity::User(user), _) => self.rules.iter().any(|rule| {
                rule.actions.contains(&action)
                    && rule.users.iter().any(|u| u == "*" || u == user)
                    && rule
                        .repositories
                        .iter()
                        .any(|p| crate::config::glob_matches(p, name))
            }),
        }
    }

    /// Checks Basic credentials (`Authorization: Basic ...`): bcrypt on the blocking pool, a
    /// few at a time, after the throttle.
    async fn check_basic(&self, encoded: &str, client: IpAddr) -> Result<Identity, Refusal> {
        let Some(htpasswd) = &self.htpasswd else {
            return Err(Refusal::Invalid);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| Refusal::Invalid)?;
        let key: [u8; 32] = Sha256::digest(&decoded).into();
        if let Some(user) = self.verified.get(&key) {
            return Ok(Identity::User(user));
        }
        let text = String::from_utf8(decoded).map_err(|_| Refusal::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(Refusal::Invalid)?;
        let attempt = self.reserve_attempt(user, client)?;
        let permit = Arc::clone(&self.bcrypt_slots)
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Invalid)?;
        let (htpasswd, user_owned, password) =
            (Arc::clone(htpasswd), user.to_owned(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            htpasswd.verify(&user_owned, &password)
        })
        .await
        .unwrap_or(false);
        if ok {
            attempt.succeeded();
            self.verified.insert(key, user.to_owned());
            Ok(Identity::User(user.to_owned()))
        } else {
            attempt.failed();
            tracing::info!(%user, %client, "failed login");
            Err(Refusal::Invalid)
        }
    }

    /// Counts a login attempt from `client` before its password is checked, atomically, or
    /// refuses it: the address failed too often, already has its share of checks running, or
    /// (having failed before) tries a user many addresses failed for.
    fn reserve_attempt(&self, user: &str, client: IpAddr) -> Result<Attempt<'_>, Refusal> {
        let addr_key = format!("addr:{client}");
        let failed_here = self.failures.get(&addr_key).unwrap_or(0);
        let user_failures = self.failures.get(&format!("user:{user}")).unwrap_or(0);
        if failed_here > 0 && user_failures >= MAX_USER_FAILURES {
            return Err(Refusal::Throttled);
        }
        {
            let mut checking = self.checking.lock().unwrap_or_else(|p| p.into_inner());
            let running = checking.entry(client).or_insert(0);
            if *running >= MAX_CONCURRENT_PER_ADDRESS {
                return Err(Refusal::Throttled);
            }
            *running += 1;
        }
        let mut attempt = Attempt {
            auth: self,
            client,
            user: user.to_owned(),
            addr_key,
            counted: false,
        };
        let attempts = self
            .failures
            .entry(attempt.addr_key.clone())
            .and_upsert_with(|n| n.map_or(1, |n| n.into_value().saturating_add(1)))
            .into_value();
        attempt.counted = true;
        if attempts > MAX_FAILURES {
            // Over the limit: this one is not tried, and does not count either.
            return Err(Refusal::Throttled);
        }
        Ok(attempt)
    }

    /// Who an `Authorization` header says the client is, and the token's claims if it was a
    /// token.
    async fn identify(
        &self,
        authorization: Option<&str>,
        client: IpAddr,
    ) -> Result<(Identity, Option<Claims>), Refusal> {
        let Some(value) = authorization.map(str::trim) else {
            return Ok((Identity::Anonymous, None));
        };
        if let Some(token) = value.strip_prefix("Bearer ") {
            let claims = self
                .signer
                .verify(token.trim(), unix_now())
                .ok_or(Refusal::Invalid)?;
            let identity = claims
                .sub
                .clone()
                .map_or(Identity::Anonymous, Identity::User);
            return Ok((identity, Some(claims)));
        }
        if let Some(encoded) = value.strip_prefix("Basic ") {
            return Ok((self.check_basic(encoded, client).await?, None));
        }
        Err(Refusal::Invalid)
    }

    /// Whether a request with this `Authorization` header, from `client`, may do what it
    /// `need`s.
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        client: IpAddr,
        need: &Need<'_>,
    ) -> Result<Identity, Refusal> {
        if !self.has_users() {
            // No users to be: credentials are ignored, the policy alone decides.
            return match need {
                Need::Repository { action, .. }
                    if *action != Action::Pull && !self.anonymous_push =>
                {
                    Err(Refusal::Denied(
                        "pushes and deletes are disabled: configure [auth] htpasswd for users, or set [auth] anonymous_push = true".into(),
                    ))
                }
                _ => Ok(Identity::Anonymous),
            };
        }
        let (identity, claims) = self.identify(authorization, client).await?;
        let allowed = match need {
            Need::Ping => authorization.is_some() && self.allows(&identity, "", Action::Pull),
            Need::Read => self.allows(&identity, "", Action::Pull),
            Need::Repository { action, .. } if *action == Action::Pull => {
                self.allows(&identity, "", Action::Pull)
            }
            Need::Repository { name, action } => match &claims {
                // A token allows what its scope says (checked against the rules when issued).
                Some(claims) => claims
                    .access
                    .iter()
                    .any(|grant| grant.name == *name && grant.actions.contains(action)),
                None => self.allows(&identity, name, *action),
            },
        };
        match (allowed, &identity) {
            (true, _) => Ok(identity),
            // Basic credentials that are valid but not enough: asking again will not help.
            (false, Identity::User(user)) if claims.is_none() => Err(Refusal::Denied(format!(
                "user {user} may not do this to this repository"
            ))),
            (false, _) => Err(Refusal::Required),
        }
    }

    /// A token for whoever the Basic credentials (if any) prove, granting of the requested
    /// `scopes` what that identity may do. `canonical` gives the one name a scope's repository
    /// resolves to (`None`: it resolves to none, and is not granted).
    pub async fn issue_token(
        &self,
        authorization: Option<&str>,
        client: IpAddr,
        scopes: &[String],
        canonical: impl Fn(&str) -> Option<String>,
    ) -> Result<String, Refusal> {
        let identity = match authorization.map(str::trim) {
            Some(value) if value.starts_with("Basic ") => {
                self.identify(Some(value), client).await?.0
            }
            _ if self.anonymous_pull => Identity::Anonymous,
            _ => return Err(Refusal::Required),
        };
        let mut access: Vec<Grant> = Vec::new();
        for (name, actions) in scopes.iter().flat_map(|s| parse_scope(s)) {
            let Some(name) = canonical(&name) else {
                continue;
            };
            let granted: Vec<Action> = actions
                .into_iter()
                .filter(|a| self.allows(&identity, &name, *a))
                .collect();
            if !granted.is_empty() {
                access.push(Grant {
                    name,
                    actions: granted,
                });
            }
        }
        let claims = Claims {
            sub: match identity {
                Identity::User(user) => Some(user),
                Identity::Anonymous => None,
            },
            access,
            exp: unix_now() + TOKEN_LIFETIME.as_secs(),
        };
        Ok(self.signer.sign(&claims))
    }
}

/// A login attempt counted against its address (see [`Authenticator::reserve_attempt`]):
/// refunded when the password was right, or when it never got checked.
struct Attempt<'a> {
    auth: &'a Authenticator,
    client: IpAddr,
    user: String,
    addr_key: String,
    /// Whether it is counted in the address's attempts (refunded on drop unless it failed).
    counted: bool,
}

impl Attempt<'_> {
    /// The password was right: the attempt is not held against the address.
    fn succeeded(self) {}

    /// The password was wrong: it stays counted, and counts against the user too.
    fn failed(mut self) {
        self.counted = false;
        self.auth
            .failures
            .entry(format!("user:{}", self.user))
            .and_upsert_with(|n| n.map_or(1, |n| n.into_value().saturating_add(1)));
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.auth
                .failures
                .entry(self.addr_key.clone())
                .and_upsert_with(|n| n.map_or(0, |n| n.into_value().saturating_sub(1)));
        }
        let mut checking = self.auth.checking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = checking.get_mut(&self.client) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                checking.remove(&self.client);
            }
        }
    }
}

/// `repository:<name>:<action>,<action>` scopes in one `scope` parameter (space-separated).
/// Other resource types and unknown actions are ignored.
fn parse_scope(scope: &str) -> Vec<(String, Vec<Action>)> {
    scope
        .split(' ')
        .filter_map(|one| {
            let rest = one.strip_prefix("repository:")?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions = actions
                .split(',')
                .flat_map(|a| match a.trim() {
                    "pull" => &[Action::Pull][..],
                    "push" => &[Action::Push][..],
                    "delete" => &[Action::Delete][..],
                    "*" => &[Action::Pull, Action::Push, Action::Delete][..],
                    _ => &[][..],
                })
                .copied()
                .collect::<Vec<_>>();
            Some((name.to_owned(), actions))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn authenticator(config: &str) -> Authenticator {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let text = format!("u:{hash}\nci:{hash}\n");
        let auth: AuthConfig = toml::from_str(config).unwrap();
        Authenticator::new(
            &auth,
            Some(Htpasswd::parse(&text, "t").unwrap()),
            b"key".to_vec(),
        )
    }

    fn repo(name: &str, action: Action) -> Need<'_> {
        Need::Repository { name, action }
    }

    #[test]
    fn globs() {
        assert!(crate::config::glob_matches("team/*", "team/app"));
        assert!(crate::config::glob_matches("team/*", "team/a/b"));
        assert!(!crate::config::glob_matches("team/*", "teamx/app"));
        assert!(crate::config::glob_matches("*", "anything"));
        assert!(crate::config::glob_matches(
            "library/alp*e",
            "library/alpine"
        ));
        assert!(!crate::config::glob_matches(
            "library/alpine",
            "library/alpine2"
        ));
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:team/app:pull,push repository:x:pull registry:catalog:*"),
            vec![
                ("team/app".to_owned(), vec![Action::Pull, Action::Push]),
                ("x".to_owned(), vec![Action::Pull]),
            ]
        );
    }

    #[test]
    fn tokens_are_signed_and_expire() {
        let signer = TokenSigner { key: b"k".to_vec() };
        let claims = Claims {
            sub: Some("u".into()),
            access: vec![],
            exp: 100,
        };
        let token = signer.sign(&claims);
        assert_eq!(signer.verify(&token, 50), Some(claims.clone()));
        assert_eq!(signer.verify(&token, 100), None, "expired");
        let other = TokenSigner {
            key: b"other".to_vec(),
        };
        assert_eq!(other.verify(&token, 50), None, "another key");
        let (payload, sig) = token.split_once('.').unwrap();
        let forged = format!("{}x.{sig}", payload);
        assert_eq!(signer.verify(&forged, 50), None);
        // Signed with the right key, but claiming to live for ever: refused.
        let forever = Claims {
            exp: 1 << 62,
            ..claims
        };
        assert_eq!(signer.verify(&signer.sign(&forever), 50), None);
    }

    #[tokio::test]
    async fn policy_without_rules() {
        let a = authenticator("");
        let names = "team/app";
        let good = basic("u", "pw");
        assert_eq!(
            a.authorize(None, LOCAL, &repo(names, Action::Pull)).await,
            Ok(Identity::Anonymous)
        );
        assert_eq!(
            a.authorize(None, LOCAL, &Need::Ping).await,
            Err(Refusal::Required)
        );
        assert_eq!(
            a.authorize(None, LOCAL, &repo(names, Action::Push)).await,
            Err(Refusal::Required)
        );
        assert_eq!(
            a.authorize(Some(&good), LOCAL, &repo(names, Action::Push))
                .await,
            Ok(Identity::User("u".into()))
        );
        assert_eq!(
            a.authorize(Some(&basic("u", "no")), LOCAL, &repo(names, Action::Pull))
                .await,
            Err(Refusal::Invalid)
        );
        assert_eq!(
            a.authorize(Some("Bearer forged.x"), LOCAL, &repo(names, Action::Pull))
                .await,
            Err(Refusal::Invalid)
        );
    }

    #[tokio::test]
    async fn tokens_carry_their_scope() {
        let a = authenticator("");
        let names_of = |n: &str| Some(n.to_owned());
        let scope = vec!["repository:team/a:pull,push".to_owned()];
        let token = a
            .issue_token(Some(&basic("u", "pw")), LOCAL, &scope, names_of)
            .await
            .unwrap();
        let bearer = format!("Bearer {token}");
        let a_names = "team/a";
        let b_names = "team/b";
        assert!(
            a.authorize(Some(&bearer), LOCAL, &repo(a_names, Action::Push))
                .await
                .is_ok()
        );
        assert_eq!(
            a.authorize(Some(&bearer), LOCAL, &repo(b_names, Action::Push))
                .await,
            Err(Refusal::Required),
            "a token for team/a does not push to team/b"
        );
        assert!(
            a.authorize(Some(&bearer), LOCAL, &repo(b_names, Action::Pull))
                .await
                .is_ok(),
            "an authenticated user pulls anything"
        );
        let anonymous = a.issue_token(None, LOCAL, &scope, names_of).await.unwrap();
        assert_eq!(
            a.authorize(
                Some(&format!("Bearer {anonymous}")),
                LOCAL,
                &repo(a_names, Action::Push)
            )
            .await,
            Err(Refusal::Required),
            "anonymous tokens do not push"
        );
    }

    #[tokio::test]
    async fn access_rules_limit_writes() {
        let a = authenticator(
            r#"
            [[access]]
            users = ["ci"]
            repositories = ["library/*"]
            actions = ["push"]
            "#,
        );
        let alpine = "library/alpine";
        assert!(
            a.authorize(Some(&basic("ci", "pw")), LOCAL, &repo(alpine, Action::Push))
                .await
                .is_ok()
        );
        assert!(matches!(
            a.authorize(Some(&basic("u", "pw")), LOCAL, &repo(alpine, Action::Push))
                .await,
            Err(Refusal::Denied(_))
        ));
        assert!(matches!(
            a.authorize(
                Some(&basic("ci", "pw")),
                LOCAL,
                &repo(alpine, Action::Delete)
            )
            .await,
            Err(Refusal::Denied(_))
        ));
    }

    #[tokio::test]
    async fn failed_logins_are_throttled() {
        let a = authenticator("");
        let names = "x";
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                a.authorize(Some(&basic("u", "bad")), LOCAL, &repo(names, Action::Pull))
                    .await,
                Err(Refusal::Invalid)
            );
        }
        assert_eq!(
            a.authorize(Some(&basic("u", "bad")), LOCAL, &repo(names, Action::Pull))
                .await,
            Err(Refusal::Throttled)
        );
    }

    /// 100 guesses at once from one address get no more password checks than ten in a row
    /// would: the attempt is counted before bcrypt runs, and only two run at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_guesses_are_counted_before_they_are_checked() {
        let a = Arc::new(authenticator(""));
        let mut guesses = Vec::new();
        for i in 0..100 {
            let a = Arc::clone(&a);
            guesses.push(tokio::spawn(async move {
                let wrong = basic("u", &format!("guess{i}"));
                a.authorize(Some(&wrong), LOCAL, &repo("x", Action::Pull))
                    .await
            }));
        }
        let mut checked = 0;
        for guess in guesses {
            match guess.await.unwrap() {
                Err(Refusal::Invalid) => checked += 1,
                Err(Refusal::Throttled) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(
            (1..=MAX_FAILURES).contains(&checked),
            "{checked} guesses were checked"
        );
    }

    /// Someone guessing a user's password from one address (or many) never locks that user
    /// out from an address that has not failed.
    #[tokio::test]
    async fn guessing_never_locks_the_user_out_elsewhere() {
        let a = authenticator("");
        let attacker: IpAddr = "10.0.0.66".parse().unwrap();
        for _ in 0..MAX_FAILURES + 5 {
            let _ = a
                .authorize(Some(&basic("u", "bad")), attacker, &repo("x", Action::Pull))
                .await;
        }
        assert_eq!(
            a.authorize(Some(&basic("u", "pw")), attacker, &repo("x", Action::Pull))
                .await,
            Err(Refusal::Throttled),
            "the guessing address is throttled"
        );
        // Many addresses guess: the user's own address has not failed and gets in.
        for i in 0..MAX_USER_FAILURES {
            let from = IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8 + 1]);
            let _ = a
                .authorize(Some(&basic("u", "bad")), from, &repo("x", Action::Pull))
                .await;
        }
        assert_eq!(
            a.authorize(Some(&basic("u", "pw")), LOCAL, &repo("x", Action::Pull))
                .await,
            Ok(Identity::User("u".into()))
        );
        // An address that failed once is refused that user once the user is under attack.
        let failed_once: IpAddr = "10.2.0.1".parse().unwrap();
        let _ = a
            .authorize(
                Some(&basic("ci", "bad")),
                failed_once,
                &repo("x", Action::Pull),
            )
            .await;
        assert_eq!(
            a.authorize(
                Some(&basic("u", "guess")),
                failed_once,
                &repo("x", Action::Pull)
            )
            .await,
            Err(Refusal::Throttled)
        );
    }

    #[tokio::test]
    async fn without_users_writes_need_anonymous_push() {
        let names = "x";
        let closed = Authenticator::new(&AuthConfig::default(), None, b"k".to_vec());
        assert!(matches!(
            closed
                .authorize(None, LOCAL, &repo(names, Action::Push))
                .await,
            Err(Refusal::Denied(_))
        ));
        assert!(
            closed
                .authorize(None, LOCAL, &repo(names, Action::Pull))
                .await
                .is_ok()
        );
        let open_config = AuthConfig {
            anonymous_push: true,
            ..AuthConfig::default()
        };
        let open = Authenticator::new(&open_config, None, b"k".to_vec());
        assert!(
            open.authorize(None, LOCAL, &repo(names, Action::Delete))
                .await
                .is_ok()
        );
    }

    #[test]
    fn rejects_non_bcrypt_entries() {
        assert!(Htpasswd::parse("bob:{SHA}abc\n", "test").is_err());
        assert!(Htpasswd::parse("no-colon\n", "test").is_err());
    }
}

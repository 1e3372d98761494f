//! Authorization of one request: what its route and resolved [`Target`] need in the policy's
//! terms ([`auth`] decides), the mount source it also reads, the token endpoint, and the
//! answer to a refusal (401 with a challenge naming our token endpoint, 403 or 429).
//!
//! A request's repository is resolved once, here, into the `Target` that is authorized and
//! that every handler then acts on.

use http::{Method, header};

use super::auth::{Identity, Need, Refusal, TOKEN_LIFETIME};
use super::body::text_response;
use super::context::{Answer, App, ConnInfo};
use super::errors::{self, ApiError};
use super::routes::{Query, Route};
use crate::config::Action;
use crate::oci::ErrorCode;
use crate::proxy::Target;

/// What a request needs, in the authorization policy's terms; `None` for what is always
/// allowed (metrics, health, the token endpoint).
fn need_of<'t>(route: &Route, method: &Method, target: Option<&'t Target>) -> Option<Need<'t>> {
    let read = *method == Method::GET || *method == Method::HEAD;
    // Only what the API offers needs a permission; anything else is answered 405 as it is.
    let action = match (route, method) {
        // Peer requests carry their own signature (checked by the handler).
        (
            Route::Metrics | Route::Health | Route::Ready | Route::Token | Route::PeerBlob { .. },
            _,
        ) => {
            return None;
        }
        (Route::Base, _) => return Some(Need::Ping),
        (Route::Catalog | Route::Search | Route::Ui(_), _) => return Some(Need::Read),
        (Route::V1Ping, _) => return None,
        (Route::Upload { .. }, _) => Action::Push,
        (Route::Manifest { .. }, &Method::PUT) => Action::Push,
        (Route::Manifest { .. } | Route::Blob { .. }, &Method::DELETE) => Action::Delete,
        _ if read => Action::Pull,
        _ => return None,
    };
    let target = target?;
    Some(Need::Repository {
        name: target.canonical().as_str(),
        action,
    })
}

/// The repository a route is about.
fn route_name(route: &Route) -> Option<&crate::oci::RepoName> {
    match route {
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. }
        | Route::TagsList { name } => Some(name),
        _ => None,
    }
}

/// Resolves the repository a route names, once: what access rules check and every handler
/// acts on.
pub(crate) fn resolve_target(
    app: &App,
    route: &Route,
    query: &Query,
) -> Result<Option<Target>, ApiError> {
    let Some(name) = route_name(route) else {
        return Ok(None);
    };
    Target::resolve(&app.mirror.upstreams, query.ns.as_deref(), name)
        .map(Some)
        .map_err(|e| errors::route_error(&e))
}

/// Applies the authorization policy to `target`; who the client is, or the error to answer.
pub(crate) async fn authorize_request(
    app: &App,
    route: &Route,
    target: Option<&Target>,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    client: std::net::IpAddr,
    query: &Query,
) -> Result<Identity, ApiError> {
    let Some(need) = need_of(route, &parts.method, target) else {
        return Ok(Identity::Anonymous);
    };
    let sent = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let identity = app
        .auth
        .authorize(sent, client, &need)
        .await
        .map_err(|refusal| match (route, refusal) {
            // Browsers answer a Basic challenge with a login dialog, not a Bearer one.
            (Route::Ui(_), Refusal::Invalid | Refusal::Required) => {
                ApiError::new(ErrorCode::Unauthorized, "log in to see the mirror").with_header(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"regmirror\", charset=\"UTF-8\"".into(),
                )
            }
            (_, refusal) => refused(app, conn, parts, refusal, target, &need),
        })?;
    // A mount also reads the repository it mounts from, in the same namespace.
    if let (Route::Upload { .. }, Some(from)) = (route, mount_source(app, query)?) {
        let pull = Need::Repository {
            name: from.canonical().as_str(),
            action: Action::Pull,
        };
        app.auth
            .authorize(sent, client, &pull)
            .await
            .map_err(|refusal| refused(app, conn, parts, refusal, Some(&from), &pull))?;
    }
    Ok(identity)
}

/// The repository a cross-repository mount names in `from=`, resolved as the target is.
fn mount_source(app: &App, query: &Query) -> Result<Option<Target>, ApiError> {
    let Some(from) = query.from.as_deref() else {
        return Ok(None);
    };
    let Ok(from) = from.parse::<crate::oci::RepoName>() else {
        return Ok(None);
    };
    Target::resolve(&app.mirror.upstreams, query.ns.as_deref(), &from)
        .map(Some)
        .map_err(|e| errors::route_error(&e))
}

/// The answer to a refused request: 401 with a challenge pointing at our token endpoint,
/// 403, or 429 for a throttled login.
fn refused(
    app: &App,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    refusal: Refusal,
    target: Option<&Target>,
    need: &Need<'_>,
) -> ApiError {
    let message = match refusal {
        Refusal::Denied(message) => return ApiError::new(ErrorCode::Denied, message),
        Refusal::Throttled => {
            return ApiError::new(
                ErrorCode::TooManyRequests,
                "too many failed logins; try again in a minute",
            )
            .with_header(header::RETRY_AFTER, "60".into());
        }
        Refusal::Invalid => "invalid credentials",
        Refusal::Required => "authentication required",
    };
    let mut challenge = format!(
        "Bearer realm=\"{}/token\",service=\"regmirror\"",
        app.external_base(conn, parts)
    );
    if let (Some(target), Need::Repository { action, .. }) = (target, need) {
        let name = target.sent();
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
            Action::Delete => "delete",
        };
        challenge.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
    }
    ApiError::new(ErrorCode::Unauthorized, message).with_header(header::WWW_AUTHENTICATE, challenge)
}

/// `GET /token`: a Bearer token for the Basic credentials sent (or an anonymous one), granting
/// what the identity may do of the requested scopes.
pub(crate) async fn token(
    app: &App,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    client: std::net::IpAddr,
    query: &Query,
) -> Answer {
    if !app.auth.has_users() {
        return ApiError::new(ErrorCode::Unsupported, "authentication is not configured").into();
    }
    let sent = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // A scope names a repository as a client would (no `ns`): its grant holds the one name
    // that repository resolves to, so it grants nothing in another namespace.
    let canonical = |scope_name: &str| {
        let name = scope_name.parse::<crate::oci::RepoName>().ok()?;
        let target = Target::resolve(&app.mirror.upstreams, None, &name).ok()?;
        Some(target.canonical().to_string())
    };
    match app
        .auth
        .issue_token(sent, client, &query.scope, canonical)
        .await
    {
        Ok(token) => {
            let body = serde_json::json!({
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME.as_secs(),
            });
            Answer::plain(text_response(body.to_string(), "application/json"))
        }
        Err(refusal) => refused(app, conn, parts, refusal, None, &Need::Ping).into(),
    }
}

//! Secrets in the config: where they come from (the value, or a variable that must be set),
//! and how they are shown (never).

use super::*;

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

pub(super) fn redacted_url<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// What a password is written out as: a config printed by `check-config` lands in terminals
/// and CI logs.
pub(super) const HIDDEN: &str = "<hidden>";

pub(super) fn hidden<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(HIDDEN)
}

//! API keys with roles. A key is sent as `Authorization: Bearer <key>` (the
//! OpenAI SDKs), `x-api-key: <key>` (the Anthropic SDKs) or `api-key: <key>`
//! (Azure OpenAI clients). Keys are compared by their SHA-256; the one
//! clear copy the process keeps is in the sanitizer's redaction list
//! ([`modelfleet::errors::redact_everywhere`]), so that a key a client puts
//! where it does not belong is never repeated in a message.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use modelfleet::config::{ApiKey, MIN_API_KEY_CHARS, Role};
use sha2::{Digest, Sha256};

use crate::wire::ApiError;

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Completions, models, explain.
    Client,
    /// The admin API.
    Admin,
    /// Metrics.
    Metrics,
    /// Any valid key (health).
    Any,
}

/// The key a request presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The key's name (for per-key budgets); `None` without authentication.
    pub(crate) name: Option<String>,
    /// Whether the key is an admin key (every key is, without authentication).
    pub(crate) admin: bool,
}

/// The configured keys; none means every request is let in.
#[derive(Debug, Default)]
pub(crate) struct Auth {
    keys: HashMap<[u8; 32], (String, Role)>,
}

impl Auth {
    /// Reads each key's value from its variable; a missing or empty one is an
    /// error naming the key and the variable (never the value).
    pub(crate) fn from_config(keys: &[ApiKey], env: &dyn Fn(&str) -> Option<String>) -> Result<Auth, String> {
        let mut auth = Auth::default();
        for (i, key) in keys.iter().enumerate() {
            let value = env(&key.key_env).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!("server.api_keys[{i}].key_env: {} (key {:?}) is not set", key.key_env, key.name)
            })?;
            if value.chars().count() < MIN_API_KEY_CHARS {
                return Err(format!(
                    "server.api_keys[{i}].key_env: {} (key {:?}) holds fewer than {MIN_API_KEY_CHARS} characters",
                    key.key_env, key.name
                ));
            }
            // A client may send it where it does not belong (a body, a
            // model name): it is never repeated in a message.
            modelfleet::errors::redact_everywhere(&value);
            if auth.keys.insert(digest(&value), (key.name.clone(), key.role)).is_some() {
                return Err(format!("server.api_keys[{i}]: key {:?} has the same value as another key", key.name));
            }
        }
        Ok(auth)
    }

    /// Whether any key is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Lets the request in, or says why not (401 no or unknown key, 403 role).
    pub(crate) fn check(&self, headers: &HeaderMap, need: Need) -> Result<Caller, ApiError> {
        if self.keys.is_empty() {
            return Ok(Caller { name: None, admin: true });
        }
        let presented = presented_key(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
                "this gateway needs an API key: send Authorization: Bearer <key> (or x-api-key: <key>)",
            )
        })?;
        let Some((name, role)) = self.keys.get(&digest(presented)) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "the API key is not valid",
            ));
        };
        let allowed = match (role, need) {
            (Role::Admin, _) | (_, Need::Any) => true,
            (Role::Client, need) => need == Need::Client,
            (Role::Metrics, need) => need == Need::Metrics,
        };
        if !allowed {
            let what = match need {
                Need::Client => "completions, models and explanations",
                Need::Admin => "the admin API",
                Need::Metrics => "metrics",
                Need::Any => "this endpoint",
            };
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "insufficient_role",
                format!("key {name:?} has role {} and may not use {what}", role_name(*role)),
            ));
        }
        Ok(Caller { name: Some(name.clone()), admin: *role == Role::Admin })
    }
}

/// The key a request presents: `Authorization: Bearer`, else `x-api-key`,
/// else `api-key`; the first header present decides.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim);
    }
    ["x-api-key", "api-key"].into_iter().find_map(|name| headers.get(name)).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Admin => "admin",
        Role::Metrics => "metrics",
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Auth {
        let keys = [
            ApiKey { name: "app".into(), key_env: "K_APP".into(), role: Role::Client, monthly_budget: None },
            ApiKey { name: "ops".into(), key_env: "K_OPS".into(), role: Role::Admin, monthly_budget: None },
            ApiKey { name: "prom".into(), key_env: "K_PROM".into(), role: Role::Metrics, monthly_budget: None },
        ];
        let env = |v: &str| Some(format!("secret-{v}-0123456789"));
        Auth::from_config(&keys, &env).unwrap()
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn roles_open_exactly_their_endpoints() {
        let auth = keys();
        let ok = |key: &str, need| auth.check(&bearer(key), need).is_ok();
        assert!(
            ok("secret-K_APP-0123456789", Need::Client)
                && !ok("secret-K_APP-0123456789", Need::Admin)
                && !ok("secret-K_APP-0123456789", Need::Metrics)
        );
        assert!(
            ok("secret-K_OPS-0123456789", Need::Client)
                && ok("secret-K_OPS-0123456789", Need::Admin)
                && ok("secret-K_OPS-0123456789", Need::Metrics)
        );
        assert!(ok("secret-K_PROM-0123456789", Need::Metrics) && !ok("secret-K_PROM-0123456789", Need::Client));
        assert!(ok("secret-K_PROM-0123456789", Need::Any));
        let denied = auth.check(&bearer("secret-K_APP-0123456789"), Need::Admin).unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert!(!denied.message.contains("secret"));
        assert_eq!(auth.check(&HeaderMap::new(), Need::Any).unwrap_err().code, "missing_api_key");
        assert_eq!(auth.check(&bearer("nope"), Need::Any).unwrap_err().code, "invalid_api_key");
        assert_eq!(auth.check(&bearer("secret-K_APP-0123456789"), Need::Client).unwrap().name.as_deref(), Some("app"));
    }

    #[test]
    fn the_key_may_come_in_any_of_the_three_headers_the_sdks_use() {
        let auth = keys();
        let with = |pairs: &[(&'static str, &str)]| {
            let headers: HeaderMap = pairs
                .iter()
                .map(|(name, value)| (header::HeaderName::from_static(name), value.parse().unwrap()))
                .collect();
            auth.check(&headers, Need::Client).map(|c| c.name).map_err(|e| e.code)
        };
        let app = Ok(Some("app".to_owned()));
        assert_eq!(with(&[("authorization", "Bearer secret-K_APP-0123456789")]), app);
        assert_eq!(with(&[("authorization", "bearer  secret-K_APP-0123456789 ")]), app);
        assert_eq!(with(&[("x-api-key", "secret-K_APP-0123456789")]), app);
        assert_eq!(with(&[("api-key", "secret-K_APP-0123456789")]), app);
        assert_eq!(with(&[]), Err("missing_api_key"));
        assert_eq!(with(&[("x-api-key", "nope")]), Err("invalid_api_key"));
        // Authorization decides when present, even beside a valid x-api-key.
        assert_eq!(
            with(&[("authorization", "Basic abc"), ("x-api-key", "secret-K_APP-0123456789")]),
            Err("missing_api_key")
        );
        assert_eq!(
            with(&[("authorization", "Bearer nope"), ("x-api-key", "secret-K_APP-0123456789")]),
            Err("invalid_api_key")
        );
    }

    #[test]
    fn a_missing_key_variable_is_named_without_any_value() {
        let keys = [ApiKey { name: "app".into(), key_env: "K_APP".into(), role: Role::Client, monthly_budget: None }];
        let err = Auth::from_config(&keys, &|_| None).unwrap_err();
        assert_eq!(err, "server.api_keys[0].key_env: K_APP (key \"app\") is not set");
        assert!(!Auth::default().enabled());
        let short = Auth::from_config(&keys, &|_| Some("fifteen-chars-x".into())).unwrap_err();
        assert_eq!(short, "server.api_keys[0].key_env: K_APP (key \"app\") holds fewer than 16 characters");
    }
}

//! Bearer keys with roles. Keys are compared by their SHA-256, so the
//! gateway holds no key in the clear after startup.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use modelfleet::config::{ApiKey, Role};
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
            return Ok(Caller { name: None });
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "missing_api_key",
                    "this gateway needs an API key: send Authorization: Bearer <key>",
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
        Ok(Caller { name: Some(name.clone()) })
    }
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
        let env = |v: &str| Some(format!("secret-{v}"));
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
            ok("secret-K_APP", Need::Client) && !ok("secret-K_APP", Need::Admin) && !ok("secret-K_APP", Need::Metrics)
        );
        assert!(
            ok("secret-K_OPS", Need::Client) && ok("secret-K_OPS", Need::Admin) && ok("secret-K_OPS", Need::Metrics)
        );
        assert!(ok("secret-K_PROM", Need::Metrics) && !ok("secret-K_PROM", Need::Client));
        assert!(ok("secret-K_PROM", Need::Any));
        let denied = auth.check(&bearer("secret-K_APP"), Need::Admin).unwrap_err();
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert!(!denied.message.contains("secret"));
        assert_eq!(auth.check(&HeaderMap::new(), Need::Any).unwrap_err().code, "missing_api_key");
        assert_eq!(auth.check(&bearer("nope"), Need::Any).unwrap_err().code, "invalid_api_key");
        assert_eq!(auth.check(&bearer("secret-K_APP"), Need::Client).unwrap().name.as_deref(), Some("app"));
    }

    #[test]
    fn a_missing_key_variable_is_named_without_any_value() {
        let keys = [ApiKey { name: "app".into(), key_env: "K_APP".into(), role: Role::Client, monthly_budget: None }];
        let err = Auth::from_config(&keys, &|_| None).unwrap_err();
        assert_eq!(err, "server.api_keys[0].key_env: K_APP (key \"app\") is not set");
        assert!(!Auth::default().enabled());
    }
}

//! Who may call a gateway without keys, and which web pages may call it at
//! all.
//!
//! A gateway without `[[server.api_keys]]` binds loopback, but binding is not
//! enough: any web page the operator opens can send requests to
//! `127.0.0.1`, and a DNS-rebinding page can do so under its own name. So,
//! unless `allow_unauthenticated_remote` says otherwise, a keyless gateway
//! refuses (403, saying why) every request whose `Host` is not a loopback
//! name or address, and every request carrying an `Origin` not listed in
//! `[server] cors_origins` (a page on another port of this machine too: a
//! dev server or a notebook may show untrusted HTML). Browsers always
//! send `Origin` on a cross-site `POST`, whatever its content type, so a
//! page cannot spend the configured provider keys or edit the catalog.
//!
//! CORS headers are sent only for `cors_origins` (never `*`), with keys or
//! without.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{request_id, wire::ApiError};

/// What the guard checks, fixed at startup.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Keyless and not opened to other machines: check `Host` and `Origin`.
    pub(crate) local_only: bool,
    /// `[server] cors_origins`, as configured.
    pub(crate) cors_origins: Vec<String>,
}

impl Guard {
    /// Why `headers` may not reach this gateway, if they may not.
    pub(crate) fn refusal(&self, headers: &HeaderMap) -> Option<ApiError> {
        if !self.local_only {
            return None;
        }
        // A request without Host (HTTP/1.0) comes from no browser.
        if let Some(host) = headers.get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !is_loopback_host(host) {
                return Some(forbidden(
                    "foreign_host",
                    format!(
                        "Host {host:?} is not this machine: a gateway without [[server.api_keys]] answers loopback \
                         names only (localhost, 127.0.0.1, [::1]); set api_keys, or allow_unauthenticated_remote = true"
                    ),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !self.origin_allowed(origin) {
                return Some(forbidden(
                    "foreign_origin",
                    format!(
                        "Origin {origin:?} may not call a gateway without [[server.api_keys]]: a web page could spend \
                         its provider keys; list the origin in [server] cors_origins, or set api_keys"
                    ),
                ));
            }
        }
        None
    }

    /// Whether a page of `origin` may call a keyless gateway: only one
    /// configured. A page served on this machine is no exception (a dev
    /// server or a notebook may show untrusted HTML): list it.
    fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

fn forbidden(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", code, message)
}

/// Whether `host` (a `Host` header or an origin's authority: a name or an
/// address, with an optional port) names this machine's loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((address, tail)) if tail.is_empty() || is_port(tail) => address,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        },
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `tail` is `:` and a port number.
fn is_port(tail: &str) -> bool {
    tail.strip_prefix(':').is_some_and(|port| port.parse::<u16>().is_ok())
}

/// Why a request's body may not be read as JSON, if it may not: every
/// endpoint that takes a body takes JSON, so a body must say
/// `content-type: application/json` (with or without parameters). A body
/// of another type is what a web page can send without a CORS preflight.
pub(crate) fn body_type_refusal(headers: &HeaderMap) -> Option<ApiError> {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|n| n.trim() != "0");
    if !has_body {
        return None;
    }
    let kind = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
    let json = kind
        .and_then(|k| k.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!("the body must be JSON, sent with content-type: application/json (got {})", kind.unwrap_or("none")),
        )
    })
}

/// The middleware: refuses what [`Guard::refusal`] refuses, before any
/// handler (or authentication) runs.
///
/// The front door, outermost on both ports: it also gives the request its
/// `x-request-id` ([`request_id::assign`]) and echoes it on the response,
/// a refusal's included, and runs the rest in the request's log span.
pub(crate) async fn check(State(guard): State<std::sync::Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let (id, echoed) = request_id::assign(&mut request);
    let refusal = guard.refusal(request.headers()).or_else(|| body_type_refusal(request.headers()));
    let mut response = if let Some(refusal) = refusal {
        refusal.into_response()
    } else {
        let span = request_id::span(&id, &request);
        tracing::Instrument::instrument(next.run(request), span).await
    };
    request_id::echo(&mut response, echoed);
    response
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:80", "127.9.9.9:1", "[::1]", "[::1]:8080"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "0.0.0.0",
            "[::2]:80",
            "[::1]x",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "[::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap())).collect()
    }

    /// The refusal's code for these headers, or "" when they pass.
    fn check(guard: &Guard, pairs: &[(header::HeaderName, &str)]) -> &'static str {
        guard.refusal(&headers(pairs)).map_or("", |e| e.code)
    }

    #[test]
    fn a_body_must_say_it_is_json() {
        let code = |pairs: &[(header::HeaderName, &str)]| body_type_refusal(&headers(pairs)).map_or("", |e| e.code);
        let json = (header::CONTENT_TYPE, "application/json");
        assert_eq!(code(&[]), "", "no body");
        assert_eq!(code(&[(header::CONTENT_LENGTH, "0")]), "", "an empty body");
        assert_eq!(code(&[(header::CONTENT_LENGTH, "12"), json.clone()]), "");
        assert_eq!(
            code(&[(header::CONTENT_LENGTH, "12"), (header::CONTENT_TYPE, "Application/JSON; charset=utf-8")]),
            ""
        );
        assert_eq!(code(&[(header::TRANSFER_ENCODING, "chunked"), json]), "");
        for other in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert_eq!(
                code(&[(header::CONTENT_LENGTH, "12"), (header::CONTENT_TYPE, other)]),
                "unsupported_media_type",
                "{other}"
            );
        }
        assert_eq!(code(&[(header::CONTENT_LENGTH, "12")]), "unsupported_media_type", "no type at all");
        assert_eq!(code(&[(header::TRANSFER_ENCODING, "chunked")]), "unsupported_media_type");
    }

    #[test]
    fn a_keyless_gateway_answers_this_machine_and_listed_origins_only() {
        let guard = Guard { local_only: true, cors_origins: vec!["https://app.example.com".into()] };
        assert_eq!(check(&guard, &[]), "");
        assert_eq!(check(&guard, &[(header::HOST, "127.0.0.1:8080")]), "");
        assert_eq!(check(&guard, &[(header::HOST, "evil.example:8080")]), "foreign_host");
        let local = (header::HOST, "localhost:8080");
        // A page on this machine is a page: only listed origins.
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "http://localhost:3000")]), "foreign_origin");
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "http://127.0.0.1:8080")]), "foreign_origin");
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "HTTPS://APP.EXAMPLE.COM")]), "", "case");
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "https://app.example.com")]), "");
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "http://evil.example")]), "foreign_origin");
        assert_eq!(check(&guard, &[local.clone(), (header::ORIGIN, "null")]), "foreign_origin");
        assert_eq!(check(&guard, &[local, (header::ORIGIN, "http://app.example.com")]), "foreign_origin", "scheme");
        let message = guard.refusal(&headers(&[(header::ORIGIN, "http://evil.example")])).unwrap().message;
        assert!(message.contains("cors_origins") && message.contains("http://evil.example"), "{message}");
        // With keys, or opened on purpose, nothing is refused here (keys decide).
        let open = Guard { local_only: false, cors_origins: Vec::new() };
        assert_eq!(check(&open, &[(header::HOST, "evil.example"), (header::ORIGIN, "http://evil.example")]), "");
    }
}

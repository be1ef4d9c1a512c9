//! Table-driven tests of the classification.

use std::time::Duration;

use super::*;

#[track_caller]
fn check(status: u16, body: &str, expect: ErrorClass) {
    let failure = classify_response(status, body, None);
    assert_eq!(failure.class(), expect, "status {status}, body {body}");
    assert_eq!(failure.status(), Some(status));
}

#[test]
fn status_codes_alone() {
    let table = [
        (400, ErrorClass::BadRequest),
        (401, ErrorClass::Authentication),
        (402, ErrorClass::QuotaExhausted),
        (403, ErrorClass::Authentication),
        (404, ErrorClass::NotFound),
        (408, ErrorClass::Timeout),
        (409, ErrorClass::BadRequest),
        (422, ErrorClass::BadRequest),
        (429, ErrorClass::RateLimited),
        (499, ErrorClass::Cancelled),
        (500, ErrorClass::ServerError),
        (502, ErrorClass::ServerError),
        (503, ErrorClass::ServerError),
        (504, ErrorClass::Timeout),
        (529, ErrorClass::ServerError),
        (200, ErrorClass::Internal),
        (100, ErrorClass::Internal),
        // A redirect is not followed: the upstream failed, fall back.
        (302, ErrorClass::ServerError),
        (307, ErrorClass::ServerError),
        (399, ErrorClass::ServerError),
    ];
    for (status, expect) in table {
        assert_eq!(ErrorClass::from_status(status), expect, "status {status}");
        check(status, "not json at all", expect);
    }
}

#[test]
fn openai_bodies_refine_the_status() {
    let body = |kind: &str, code: &str, message: &str| {
        format!(r#"{{"error": {{"message": "{message}", "type": "{kind}", "code": "{code}", "param": null}}}}"#)
    };
    let table = [
        (400, body("invalid_request_error", "context_length_exceeded", "too long"), ErrorClass::ContextWindowExceeded),
        (
            400,
            body("invalid_request_error", "", "This model's maximum context length is 8192 tokens"),
            ErrorClass::ContextWindowExceeded,
        ),
        (400, body("invalid_request_error", "", "temperature must be <= 2"), ErrorClass::BadRequest),
        (429, body("insufficient_quota", "insufficient_quota", "You exceeded your current quota"), ErrorClass::QuotaExhausted),
        (429, body("requests", "rate_limit_exceeded", "Rate limit reached"), ErrorClass::RateLimited),
        (401, body("invalid_request_error", "invalid_api_key", "Incorrect API key provided"), ErrorClass::Authentication),
        (404, body("invalid_request_error", "model_not_found", "The model does not exist"), ErrorClass::NotFound),
        (400, body("invalid_request_error", "content_policy_violation", "rejected"), ErrorClass::ContentPolicy),
        (500, body("server_error", "", "The server had an error"), ErrorClass::ServerError),
        // Anthropic's shape: the error object sits under "error" too.
        (529, r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#.to_owned(), ErrorClass::ServerError),
        (400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens"}}"#.to_owned(), ErrorClass::ContextWindowExceeded),
        // A bare string error and a numeric code.
        (503, r#"{"error": "upstream overloaded"}"#.to_owned(), ErrorClass::ServerError),
        (400, r#"{"error": {"message": "bad", "code": 1234}}"#.to_owned(), ErrorClass::BadRequest),
        // JSON without an error object falls back to the status.
        (429, r#"{"detail": "slow down"}"#.to_owned(), ErrorClass::RateLimited),
    ];
    for (status, body, expect) in table {
        check(status, &body, expect);
    }
}

#[test]
fn message_is_kept_and_sanitized() {
    let body = r#"{"error": {"message": "Incorrect API key provided: sk-abcdefghijklmnopqrstuvwxyz0123", "type": "invalid_request_error", "code": "invalid_api_key"}}"#;
    let failure = classify_response(401, body, None);
    assert!(failure.message().starts_with("Incorrect API key provided: "), "{failure}");
    assert!(!failure.message().contains("sk-abc"), "{failure}");
    assert!(!failure.to_string().contains("sk-abc"));

    let failure = classify_response(502, "  Bad Gateway from /srv/app/upstream.py  ", None);
    assert_eq!(failure.to_string(), "server_error (HTTP 502): Bad Gateway from [PATH]");
}

#[test]
fn escaped_json_strings_are_decoded() {
    let body = r#"{"error": {"message": "quota \"gpt-4o\" reached\nretry later", "type": "insufficient_quota"}}"#;
    let failure = classify_response(429, body, None);
    assert_eq!(failure.class(), ErrorClass::QuotaExhausted);
    assert_eq!(failure.message(), "quota \"gpt-4o\" reached\nretry later");
    let failure = classify_response(400, r#"{"error": {"message": "Maximum Context Length is 4096"}}"#, None);
    assert_eq!(failure.class(), ErrorClass::ContextWindowExceeded, "the hint is matched ignoring case");
}

#[test]
fn retry_after_header() {
    let failure = classify_response(429, "{}", Some("2"));
    assert_eq!(failure.retry_after(), Some(Duration::from_secs(2)));
    let table = [
        ("0", Some(Duration::ZERO)),
        ("1.5", Some(Duration::from_millis(1500))),
        (" 30 ", Some(Duration::from_secs(30))),
        ("-1", None),
        ("NaN", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("", None),
        ("1e30", None),
    ];
    for (raw, expect) in table {
        assert_eq!(parse_retry_after(raw), expect, "{raw:?}");
    }
}

#[test]
fn handling_table() {
    use CooldownHint::{Escalating, Long, None as NoCooldown, Short};
    // class, retry same model, fall back, cooldown
    let table = [
        (ErrorClass::Timeout, true, true, NoCooldown),
        (ErrorClass::RateLimited, true, true, Short),
        (ErrorClass::QuotaExhausted, false, true, Long),
        (ErrorClass::ServerError, true, true, Escalating),
        (ErrorClass::Connection, true, true, Escalating),
        (ErrorClass::BadRequest, false, false, NoCooldown),
        (ErrorClass::Authentication, false, true, Long),
        (ErrorClass::NotFound, false, true, Long),
        (ErrorClass::ContextWindowExceeded, false, true, NoCooldown),
        (ErrorClass::ContentPolicy, false, true, NoCooldown),
        (ErrorClass::Cancelled, false, false, NoCooldown),
        (ErrorClass::BudgetExceeded, false, true, NoCooldown),
        (ErrorClass::Internal, false, false, NoCooldown),
    ];
    assert_eq!(table.len(), ErrorClass::ALL.len(), "every class is in the table");
    for (class, retry, fallback, cooldown) in table {
        assert_eq!(class.retry_same_model(), retry, "{class} retry");
        assert_eq!(class.fallback(), fallback, "{class} fallback");
        assert_eq!(class.cooldown(), cooldown, "{class} cooldown");
    }
}

#[test]
fn names_round_trip() {
    for (i, class) in ErrorClass::ALL.into_iter().enumerate() {
        assert_eq!(class.index(), i, "{class}");
        assert_eq!(class.as_str().parse::<ErrorClass>(), Ok(class));
        let json = serde_json::to_string(&class).unwrap();
        assert_eq!(json, format!("\"{}\"", class.as_str()));
    }
    let err = "nope".parse::<ErrorClass>().unwrap_err();
    assert!(err.to_string().contains("unknown error class \"nope\""), "{err}");
    assert!(err.to_string().contains("rate_limited"), "{err}");
}

#[test]
fn the_upstreams_code_and_param_are_kept_when_sound() {
    let fields = |body: &str| classify_response(400, body, None).upstream().cloned();
    let openai = r#"{"error":{"message":"bad","type":"invalid_request_error","param":"messages[0].role","code":"invalid_value"}}"#;
    assert_eq!(
        fields(openai),
        Some(UpstreamFields { code: Some("invalid_value".into()), param: Some("messages[0].role".into()) })
    );
    let number_code = r#"{"error":{"message":"bad","code":400,"param":null}}"#;
    assert_eq!(fields(number_code), Some(UpstreamFields { code: Some("400".into()), param: None }));
    // A param that is not a string is ignored; the error object still parses.
    let odd_param = r#"{"error":{"message":"bad","code":"x","param":{"a":1}}}"#;
    assert_eq!(classify_response(400, odd_param, None).message(), "bad");
    assert_eq!(fields(odd_param), Some(UpstreamFields { code: Some("x".into()), param: None }));
    // Codes that are not identifiers, and overlong params, are left out.
    let hostile = format!(r#"{{"error":{{"message":"bad","code":"<script>","param":"{}"}}}}"#, "p".repeat(129));
    assert_eq!(fields(&hostile), None);
    assert_eq!(fields(r#"{"error":"plain"}"#), None);
    assert_eq!(fields("not json"), None);
    // A secret in a param is redacted like one in a message.
    let leaky = r#"{"error":{"message":"bad","param":"sk-proj-abcdefghijklmnopqrstuvwxyz123456"}}"#;
    let param = fields(leaky).and_then(|f| f.param).unwrap();
    assert!(!param.contains("abcdefghijklmnop"), "{param}");
}

#[test]
fn anthropic_bodies() {
    let body = |kind: &str, message: &str| {
        format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"{message}"}},"request_id":"req_011"}}"#)
    };
    let table = [
        (529, body("overloaded_error", "Overloaded"), ErrorClass::ServerError),
        (
            429,
            body("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
            ErrorClass::RateLimited,
        ),
        (
            400,
            body("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
            ErrorClass::ContextWindowExceeded,
        ),
        (
            400,
            body("invalid_request_error", "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000"),
            ErrorClass::ContextWindowExceeded,
        ),
        (400, body("invalid_request_error", "max_tokens: Field required"), ErrorClass::BadRequest),
        (
            400,
            body("invalid_request_error", "Your credit balance is too low to access the Anthropic API."),
            ErrorClass::QuotaExhausted,
        ),
        (401, body("authentication_error", "invalid x-api-key"), ErrorClass::Authentication),
        (403, body("permission_error", "Your API key does not have permission"), ErrorClass::Authentication),
        (402, body("billing_error", "Payment required"), ErrorClass::QuotaExhausted),
        (404, body("not_found_error", "model: claude-9"), ErrorClass::NotFound),
        (413, body("request_too_large", "Request exceeds the maximum allowed number of bytes"), ErrorClass::BadRequest),
        (500, body("api_error", "Internal server error"), ErrorClass::ServerError),
        (504, body("timeout_error", "Request timed out"), ErrorClass::Timeout),
    ];
    for (status, body, expect) in table {
        check(status, &body, expect);
    }
    let failure = classify_response(529, &body("overloaded_error", "Overloaded"), None);
    assert_eq!(failure.message(), "Overloaded");
    assert_eq!(failure.upstream(), None, "Anthropic's bodies have no code");
}

#[test]
fn status_529_is_the_servers_failure_not_the_clients() {
    let failure = classify_response(529, "", None);
    assert_eq!(failure.class(), ErrorClass::ServerError);
    assert!(failure.class().retry_same_model() && failure.class().fallback());
    // Even a body of another type does not make a 529 the request's fault.
    check(529, r#"{"type":"error","error":{"type":"something_new","message":"?"}}"#, ErrorClass::ServerError);
}

#[test]
fn gemini_bodies() {
    let body = |code: u16, status: &str, message: &str| {
        format!(r#"{{"error":{{"code":{code},"message":"{message}","status":"{status}","details":[]}}}}"#)
    };
    let table = [
        (
            429,
            body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
            ErrorClass::RateLimited,
        ),
        (
            400,
            body(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1054016) exceeds the maximum number of tokens allowed (1048576).",
            ),
            ErrorClass::ContextWindowExceeded,
        ),
        (400, body(400, "INVALID_ARGUMENT", "Request contains an invalid argument."), ErrorClass::BadRequest),
        (
            400,
            body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
            ErrorClass::Authentication,
        ),
        (400, body(400, "INVALID_ARGUMENT", "API key expired. Please renew the API key."), ErrorClass::Authentication),
        (403, body(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"), ErrorClass::Authentication),
        (
            401,
            body(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
            ErrorClass::Authentication,
        ),
        (404, body(404, "NOT_FOUND", "models/gemini-9 is not found"), ErrorClass::NotFound),
        (503, body(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), ErrorClass::ServerError),
        (500, body(500, "INTERNAL", "An internal error has occurred."), ErrorClass::ServerError),
        (504, body(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."), ErrorClass::Timeout),
    ];
    for (status, body, expect) in table {
        check(status, &body, expect);
        // The streaming endpoint wraps the same error in an array.
        check(status, &format!("[{body}]"), expect);
    }
    let failure = classify_response(400, &body(400, "INVALID_ARGUMENT", "bad"), None);
    assert_eq!(failure.message(), "bad");
    let code = failure.upstream().and_then(|u| u.code.clone());
    assert_eq!(code.as_deref(), Some("INVALID_ARGUMENT"), "Google's status is the code, not its number");
    assert_eq!(classify_response(400, "[]", None).message(), "[]", "an empty array is no error object");
}

#[test]
fn bodies_modelfleets_translators_write() {
    // `AnswerError::Reported` bodies: OpenAI's shape, Anthropic's type or Google's status as type and code.
    let body =
        |kind: &str, message: &str| format!(r#"{{"error":{{"message":"{message}","type":"{kind}","code":"{kind}"}}}}"#);
    let table = [
        (529, body("overloaded_error", "Overloaded"), ErrorClass::ServerError),
        (429, body("rate_limit_error", "slow down"), ErrorClass::RateLimited),
        (500, body("api_error", "Internal server error"), ErrorClass::ServerError),
        (400, body("invalid_request_error", "prompt is too long"), ErrorClass::ContextWindowExceeded),
        (429, body("RESOURCE_EXHAUSTED", "quota"), ErrorClass::RateLimited),
        (503, body("UNAVAILABLE", "overloaded"), ErrorClass::ServerError),
        (400, body("content_policy_violation", "blocked: SAFETY"), ErrorClass::ContentPolicy),
    ];
    for (status, body, expect) in table {
        check(status, &body, expect);
    }
}

//! The shared classification of failures, and how each class is handled.

use std::{borrow::Cow, fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::sanitize::sanitize;

/// What kind of failure a model call (or anything on the request path) ran into.
///
/// Every layer speaks this vocabulary: the fallback crate decides cooldowns
/// from it, the monitor counts by it, the metrics crate labels by it and the
/// gateway maps it back to an HTTP status. The handling of each class is fixed
/// by [`ErrorClass::retry_same_model`], [`ErrorClass::fallback`] and
/// [`ErrorClass::cooldown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorClass {
    /// The call did not answer in time (HTTP 408 or 504, or a client-side timeout).
    Timeout,
    /// The provider asked us to slow down (HTTP 429), maybe with a retry-after.
    RateLimited,
    /// The account's quota or credit at the provider is used up.
    QuotaExhausted,
    /// The provider failed or is overloaded (HTTP 5xx, Anthropic's 529).
    ServerError,
    /// The connection could not be made or was reset.
    Connection,
    /// The request itself is invalid; another attempt would fail the same way.
    BadRequest,
    /// The credentials were refused or lack permission (HTTP 401, 403).
    Authentication,
    /// The model or endpoint does not exist at the provider (HTTP 404).
    NotFound,
    /// The prompt plus the requested output do not fit the model's context window.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentPolicy,
    /// The caller gave up (client disconnected, request cancelled, HTTP 499).
    Cancelled,
    /// A modelfleet budget refused the spend.
    BudgetExceeded,
    /// A bug or an unexpected state inside modelfleet.
    Internal,
}

/// Whether, and how long, a class should take a model out of rotation.
///
/// The hint is what the class implies; the fallback crate turns it into a
/// concrete duration from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CooldownHint {
    /// The failure says nothing about the model's health.
    None,
    /// A short pause: the provider's retry-after when given, else a short default.
    Short,
    /// A pause that grows while the same failure repeats.
    Escalating,
    /// A long pause: the failure will not heal by itself soon (bad key, no quota).
    Long,
}

impl ErrorClass {
    /// Every class, in declaration order (for tables, metrics labels and tests).
    pub const ALL: [ErrorClass; 13] = [
        ErrorClass::Timeout,
        ErrorClass::RateLimited,
        ErrorClass::QuotaExhausted,
        ErrorClass::ServerError,
        ErrorClass::Connection,
        ErrorClass::BadRequest,
        ErrorClass::Authentication,
        ErrorClass::NotFound,
        ErrorClass::ContextWindowExceeded,
        ErrorClass::ContentPolicy,
        ErrorClass::Cancelled,
        ErrorClass::BudgetExceeded,
        ErrorClass::Internal,
    ];

    /// The class's position in [`ErrorClass::ALL`], for per-class counter arrays.
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            ErrorClass::Timeout => 0,
            ErrorClass::RateLimited => 1,
            ErrorClass::QuotaExhausted => 2,
            ErrorClass::ServerError => 3,
            ErrorClass::Connection => 4,
            ErrorClass::BadRequest => 5,
            ErrorClass::Authentication => 6,
            ErrorClass::NotFound => 7,
            ErrorClass::ContextWindowExceeded => 8,
            ErrorClass::ContentPolicy => 9,
            ErrorClass::Cancelled => 10,
            ErrorClass::BudgetExceeded => 11,
            ErrorClass::Internal => 12,
        }
    }

    /// The stable snake-case name, used as metrics label and in JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::QuotaExhausted => "quota_exhausted",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Connection => "connection",
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Authentication => "authentication",
            ErrorClass::NotFound => "not_found",
            ErrorClass::ContextWindowExceeded => "context_window_exceeded",
            ErrorClass::ContentPolicy => "content_policy",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::BudgetExceeded => "budget_exceeded",
            ErrorClass::Internal => "internal",
        }
    }

    /// Is another attempt on the *same* model worth making?
    ///
    /// True only for transient failures: timeouts, rate limits, server errors
    /// and connection failures.
    #[must_use]
    pub const fn retry_same_model(self) -> bool {
        matches!(self, ErrorClass::Timeout | ErrorClass::RateLimited | ErrorClass::ServerError | ErrorClass::Connection)
    }

    /// May another model take the request after this failure?
    ///
    /// False when the request itself is at fault (bad request), when the
    /// caller is gone (cancelled) and for internal errors. A context-window
    /// failure falls back, but only to a larger window (the fallback crate's rule).
    #[must_use]
    pub const fn fallback(self) -> bool {
        !matches!(self, ErrorClass::BadRequest | ErrorClass::Cancelled | ErrorClass::Internal)
    }

    /// Should the model that failed be put in cooldown, and how?
    #[must_use]
    pub const fn cooldown(self) -> CooldownHint {
        match self {
            ErrorClass::RateLimited => CooldownHint::Short,
            ErrorClass::ServerError | ErrorClass::Connection => CooldownHint::Escalating,
            ErrorClass::QuotaExhausted | ErrorClass::Authentication | ErrorClass::NotFound => CooldownHint::Long,
            ErrorClass::Timeout
            | ErrorClass::BadRequest
            | ErrorClass::ContextWindowExceeded
            | ErrorClass::ContentPolicy
            | ErrorClass::Cancelled
            | ErrorClass::BudgetExceeded
            | ErrorClass::Internal => CooldownHint::None,
        }
    }

    /// The class an HTTP status code implies on its own, without a body.
    ///
    /// A redirect (3xx) is the upstream's failure, [`ErrorClass::ServerError`]:
    /// redirects are not followed (a `POST` and its key would go elsewhere),
    /// so a provider that redirects is misconfigured and its models fall
    /// back. A status that is no error (1xx, 2xx) is
    /// [`ErrorClass::Internal`]: the caller should not have classified it.
    #[must_use]
    pub const fn from_status(status: u16) -> ErrorClass {
        match status {
            408 | 504 => ErrorClass::Timeout,
            429 => ErrorClass::RateLimited,
            401 | 403 => ErrorClass::Authentication,
            404 => ErrorClass::NotFound,
            499 => ErrorClass::Cancelled,
            402 => ErrorClass::QuotaExhausted,
            400..=499 => ErrorClass::BadRequest,
            300..=399 | 500..=599 => ErrorClass::ServerError,
            _ => ErrorClass::Internal,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bare class is an error in its own right (for callers with nothing more to say).
impl std::error::Error for ErrorClass {}

/// The name given to [`ErrorClass::from_str`] is not a class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error class {given:?}; expected one of: {}", ErrorClass::ALL.map(ErrorClass::as_str).join(", "))]
pub struct UnknownClass {
    given: String,
}

impl FromStr for ErrorClass {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorClass::ALL
            .into_iter()
            .find(|class| class.as_str() == s)
            .ok_or_else(|| UnknownClass { given: s.to_owned() })
    }
}

/// Anything that can say which [`ErrorClass`] it belongs to.
///
/// The retry helper and the fallback executor take any error implementing
/// this, so callers keep their own error types.
pub trait Classify {
    /// The class of this failure.
    fn class(&self) -> ErrorClass;

    /// How long the provider asked us to wait before trying again, if it said.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// The error as text safe to log, store and return: its `Display`
    /// through [`sanitize`] by default; a type whose text is sanitized
    /// already (like [`Failure`]) says so and skips the second pass.
    fn sanitized(&self) -> String
    where
        Self: fmt::Display,
    {
        sanitize(&self.to_string()).into_owned()
    }
}

impl Classify for ErrorClass {
    fn class(&self) -> ErrorClass {
        *self
    }
}

/// A classified failure with the facts that came with it.
///
/// Its message has always been through [`sanitize`]: it is safe to log, to
/// return to a client and to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    class: ErrorClass,
    status: Option<u16>,
    retry_after: Option<Duration>,
    message: String,
    #[serde(default)]
    billed: bool,
    /// The upstream's own `code` and `param`, when its error body had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<Box<UpstreamFields>>,
}

/// What an upstream's error object said besides its message: its `code`
/// (`[A-Za-z0-9_.-]`, at most 64 characters, else left out) and `param`
/// (sanitized, at most 128 characters). A gateway relays them to the client
/// with an error the client must act on (a bad request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamFields {
    /// `error.code`.
    pub code: Option<String>,
    /// `error.param`.
    pub param: Option<String>,
}

impl Failure {
    /// A failure of `class` with `message` (sanitized here).
    #[must_use]
    pub fn new(class: ErrorClass, message: &str) -> Failure {
        Failure {
            class,
            status: None,
            retry_after: None,
            message: sanitize(message).into_owned(),
            billed: false,
            upstream: None,
        }
    }

    /// The same failure, noting that the provider may bill the attempt
    /// though it failed (it timed out after the request was sent, or
    /// answered 200 with a body that cannot be read), with its usage unknown:
    /// whoever keeps the money charges the attempt's worst case.
    #[must_use]
    pub fn billed(mut self) -> Failure {
        self.billed = true;
        self
    }

    /// Whether the provider may bill the attempt (see [`Failure::billed`]).
    #[must_use]
    pub fn is_billed(&self) -> bool {
        self.billed
    }

    /// The same failure, noting the HTTP status it came with.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Failure {
        self.status = Some(status);
        self
    }

    /// The same failure, noting how long the provider asked us to wait.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Failure {
        self.retry_after = Some(retry_after);
        self
    }

    /// The HTTP status, when the failure came from an HTTP response.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The sanitized message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The upstream's `code` and `param`, when its error body gave them.
    #[must_use]
    pub fn upstream(&self) -> Option<&UpstreamFields> {
        self.upstream.as_deref()
    }
}

impl Classify for Failure {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Its message went through [`sanitize`] when it was made: the text is
    /// safe as it is.
    fn sanitized(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.class)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

/// Classifies an HTTP error response from a provider.
///
/// `body` is the response body as received. An error object refines the
/// class the status implies: OpenAI's `{"error": {"message", "type",
/// "code"}}` (a 400 whose code is `context_length_exceeded` is a
/// context-window failure; a 429 of type `insufficient_quota` is an
/// exhausted quota, not a rate limit), Anthropic's `{"type": "error",
/// "error": {"type", "message"}}` (`overloaded_error` is a server error,
/// `rate_limit_error` a rate limit, `billing_error` an exhausted quota, a
/// `prompt is too long` a context-window failure) and Google's `{"error":
/// {"code", "message", "status"}}`, alone or in a one-element array
/// (`RESOURCE_EXHAUSTED` is a rate limit, `UNAVAILABLE` a server error,
/// `PERMISSION_DENIED` and `UNAUTHENTICATED` refused credentials, an input
/// that `exceeds the maximum number of tokens` a context-window failure).
/// The OpenAI-shaped bodies modelfleet's translators write for a failure
/// reported inside a stream carry Anthropic's type or Google's status as
/// their type and code, and classify the same. A body that is not JSON is
/// kept as the message. `retry_after` is the raw `Retry-After` header, if
/// any (see [`parse_retry_after`]).
#[must_use]
pub fn classify_response(status: u16, body: &str, retry_after: Option<&str>) -> Failure {
    let parsed = parse_error_body(body);
    let (message, class) = match &parsed {
        Some(err) => (err.message.as_ref(), refine(ErrorClass::from_status(status), err)),
        None => (body.trim(), ErrorClass::from_status(status)),
    };
    let mut failure = Failure::new(class, message).with_status(status);
    if let Some(err) = &parsed {
        let code = (!err.code.is_empty()
            && err.code.len() <= 64
            && err.code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')))
        .then(|| err.code.to_string());
        let param = err
            .param
            .as_deref()
            .filter(|p| !p.is_empty() && p.chars().count() <= 128)
            .map(|p| sanitize(p).into_owned());
        if code.is_some() || param.is_some() {
            failure.upstream = Some(Box::new(UpstreamFields { code, param }));
        }
    }
    if let Some(delay) = retry_after.and_then(parse_retry_after) {
        failure = failure.with_retry_after(delay);
    }
    failure
}

/// Parses a `Retry-After` (or `retry-after-ms`-style) value given in seconds,
/// whole or fractional. HTTP dates are not accepted (they need a clock);
/// they give `None`, as does anything negative, non-finite or unparsable.
#[must_use]
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds).ok()
}

struct ErrorBody<'a> {
    message: Cow<'a, str>,
    kind: Cow<'a, str>,
    code: Cow<'a, str>,
    param: Option<Cow<'a, str>>,
}

/// `{"error": {"message": …, "type": …, "code": …}}` (Google's has a
/// `status` where the others have a `type`), borrowed where the JSON has no
/// escapes (this runs once per failed call).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    error: ErrorObject<'a>,
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Code<'a>>,
    #[serde(borrow, default)]
    param: Option<Param<'a>>,
    /// Google's canonical status (`RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`, …).
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
}

/// `param` is a string (the field at fault); anything else is ignored
/// rather than failing the whole error object.
#[derive(Deserialize)]
#[serde(untagged)]
enum Param<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(serde::de::IgnoredAny),
}

/// OpenAI sends string codes; some compatible servers send numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Code<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Number(serde_json::Number),
}

/// Some providers send `{"error": "plain message"}`.
#[derive(Deserialize)]
struct TextEnvelope<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

fn parse_error_body(body: &str) -> Option<ErrorBody<'_>> {
    // Google's streaming endpoint answers a failure as a JSON array of one
    // error (and serde would read an array as a struct's fields in order).
    let envelope = if body.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<Envelope<'_>>>(body).ok().and_then(|list| list.into_iter().next())
    } else {
        serde_json::from_str::<Envelope<'_>>(body).ok()
    };
    if let Some(Envelope { error }) = envelope {
        // Google's numeric code only repeats the HTTP status; its status names the failure.
        let code = match (error.code, &error.status) {
            (Some(Code::Text(text)), _) => text,
            (Some(Code::Number(_)), Some(status)) => status.clone(),
            (Some(Code::Number(n)), None) => Cow::Owned(n.to_string()),
            (None, _) => Cow::Borrowed(""),
        };
        let param = match error.param {
            Some(Param::Text(text)) => Some(text),
            Some(Param::Other(_)) | None => None,
        };
        return Some(ErrorBody {
            message: error.message.unwrap_or_default(),
            kind: error.kind.or(error.status).unwrap_or_default(),
            code,
            param,
        });
    }
    let TextEnvelope { error } = serde_json::from_str(body).ok()?;
    Some(ErrorBody { message: error, kind: Cow::Borrowed(""), code: Cow::Borrowed(""), param: None })
}

/// The class an error object names, else the status's. The names are
/// OpenAI's codes and types, Anthropic's types and Google's statuses.
fn refine(by_status: ErrorClass, body: &ErrorBody<'_>) -> ErrorClass {
    let is = |needle: &str| body.code == needle || body.kind == needle;
    if is("context_length_exceeded") || mentions(&body.message, &CONTEXT_HINTS) {
        return ErrorClass::ContextWindowExceeded;
    }
    if is("insufficient_quota")
        || is("billing_hard_limit_reached")
        || is("billing_error")
        || mentions(&body.message, &["credit balance is too low"])
    {
        return ErrorClass::QuotaExhausted;
    }
    if is("rate_limit_exceeded") || is("rate_limit_error") || is("RESOURCE_EXHAUSTED") {
        return ErrorClass::RateLimited;
    }
    if is("invalid_api_key")
        || is("authentication_error")
        || is("permission_error")
        || is("PERMISSION_DENIED")
        || is("UNAUTHENTICATED")
        // Google refuses a bad key as INVALID_ARGUMENT, with a 400.
        || mentions(&body.message, &["api key not valid", "api key expired"])
    {
        return ErrorClass::Authentication;
    }
    if is("model_not_found") || is("not_found_error") || is("NOT_FOUND") {
        return ErrorClass::NotFound;
    }
    if is("content_policy_violation") || is("content_filter") {
        return ErrorClass::ContentPolicy;
    }
    if is("overloaded_error") || is("server_error") || is("api_error") || is("UNAVAILABLE") || is("INTERNAL") {
        return ErrorClass::ServerError;
    }
    if is("timeout") || is("request_timeout") || is("timeout_error") || is("DEADLINE_EXCEEDED") {
        return ErrorClass::Timeout;
    }
    by_status
}

/// What providers say when the prompt does not fit: OpenAI, Anthropic
/// ("prompt is too long", "input length and `max_tokens` exceed context
/// limit"), Google ("the input token count … exceeds the maximum number of
/// tokens allowed").
const CONTEXT_HINTS: [&str; 6] = [
    "maximum context length",
    "context window",
    "context_length_exceeded",
    "prompt is too long",
    "exceed context limit",
    "exceeds the maximum number of tokens",
];

/// Whether `message` contains one of `hints`, ignoring ASCII case.
fn mentions(message: &str, hints: &[&str]) -> bool {
    let bytes = message.as_bytes();
    hints.iter().any(|hint| bytes.windows(hint.len()).any(|window| window.eq_ignore_ascii_case(hint.as_bytes())))
}

#[cfg(test)]
mod tests;
